//! Keeps the claim table compact. Every claim inserts a row per partition into `rota_claims`
//! and every settled claim deletes its row: hundreds of rows a second in a burn-down. The
//! space of deleted rows is reused only once a vacuum has seen it, and autovacuum visits a
//! database about once a minute (its default `autovacuum_naptime`); meanwhile the table grows
//! (by some 860 pages over a burn-down of 1,000,000 tasks), and the statements that scan it
//! (the completion's join with the claim rows, the claim's set of held tasks) slow down with
//! it: 1,000,000 tasks burned down at 37,000-43,000 tasks/s in some runs instead of 51,000-61,000
//! (see docs/performance.md). So the store vacuums the table itself, in the background, once
//! it has made [`EVERY`] claim rows since its last vacuum. A vacuum of a table this small takes
//! milliseconds and blocks no other statement.

use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tracing::{debug, warn};

/// Claim rows made between two vacuums of the claim table.
pub(crate) const EVERY: u64 = 1_000;

/// Counts the claim rows this store made and vacuums the claim table every [`EVERY`] of them.
#[derive(Default)]
pub(crate) struct ClaimVacuum {
    made: AtomicU64,
    running: Arc<AtomicBool>,
    warned: Arc<AtomicBool>,
}

impl ClaimVacuum {
    /// Records `rows` claim rows made; starts a vacuum in the background when they add up to
    /// [`EVERY`] and none is running.
    pub(crate) fn made(&self, rows: u64, pool: &PgPool) {
        if rows == 0 || self.made.fetch_add(rows, Ordering::Relaxed) + rows < EVERY {
            return;
        }
        self.made.store(0, Ordering::Relaxed);
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, running, warned) = (pool.clone(), self.running.clone(), self.warned.clone());
        tokio::spawn(async move {
            // SKIP_LOCKED: if another process is vacuuming it, this one has nothing to add.
            // TRUNCATE false: giving empty pages at the table's end back to the system takes
            // an exclusive lock, which would hold claims and completions up for a moment; the
            // space is reused anyway.
            match sqlx::query("VACUUM (SKIP_LOCKED, TRUNCATE false) rota_claims")
                .execute(&pool)
                .await
            {
                Ok(_) => debug!("claim table vacuumed"),
                // Not fatal (autovacuum still comes), but worth saying once: a role that may
                // not vacuum the table, say.
                Err(e) if !warned.swap(true, Ordering::Relaxed) => {
                    warn!(error = %e, "cannot vacuum the claim table; claims may slow down until autovacuum runs")
                }
                Err(e) => debug!(error = %e, "cannot vacuum the claim table"),
            }
            running.store(false, Ordering::Release);
        });
    }
}
