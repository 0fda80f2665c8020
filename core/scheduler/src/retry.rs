//! When a failed task runs again: exponential backoff with jitter, capped.

use super::Millis;
use serde::{Deserialize, Serialize};

/// Exponential backoff: attempt `n` (1-based) waits `base * 2^(n-1)`, capped at `max`, of which
/// a random fraction up to `jitter` is taken off so that retries of many tasks failing together
/// spread out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay after the first failure, in ms.
    pub base_ms: u64,
    /// Largest delay, in ms.
    pub max_ms: u64,
    /// Fraction of the delay that is random, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            max_ms: 300_000,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt after `attempts` failed ones; `random` is uniform in `[0, 1)`.
    pub fn delay_ms(&self, attempts: u32, random: f64) -> u64 {
        let exponent = attempts.saturating_sub(1).min(40);
        let full = self
            .base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        let jitter = (full as f64 * self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0)) as u64;
        full - jitter
    }

    /// When the next attempt is due after a failure at `now`.
    pub fn retry_at(&self, now: Millis, attempts: u32, random: f64) -> Millis {
        now.saturating_add(self.delay_ms(attempts, random) as Millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let p = RetryPolicy {
            base_ms: 100,
            max_ms: 1_000,
            jitter: 0.5,
        };
        assert_eq!(p.delay_ms(1, 0.0), 100);
        assert_eq!(p.delay_ms(2, 0.0), 200);
        assert_eq!(p.delay_ms(3, 0.0), 400);
        assert_eq!(p.delay_ms(10, 0.0), 1_000);
        assert_eq!(p.delay_ms(2, 0.999_999), 101);
        assert_eq!(p.delay_ms(u32::MAX, 0.0), 1_000);
    }
}
