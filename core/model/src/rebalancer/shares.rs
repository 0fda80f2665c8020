//! Fair shares: how many replicas (and top states) each instance should hold.
//!
//! Shares are computed exactly, with rationals, by water-filling: every instance gets a share
//! proportional to its weight, except where a cap binds (an instance holds at most one replica per
//! partition; a zone holds at most its per-partition quota of every partition), in which case the
//! capped party gets its cap and the rest is spread over the others. Zones are filled first, then
//! the instances inside each zone. Real shares are then rounded to targets that are each the floor
//! or the ceiling of the share and sum to the total, preferring to round up where the previous
//! assignment already held more, which is what makes minimal movement and stability possible.

use std::cmp::{Ordering, Reverse};

/// A non-negative rational number, kept reduced.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ratio {
    num: u128,
    den: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ratio {
    pub(crate) fn int(n: u64) -> Self {
        Self {
            num: u128::from(n),
            den: 1,
        }
    }

    fn new(num: u128, den: u128) -> Self {
        let g = gcd(num, den).max(1);
        Self {
            num: num / g,
            den: den / g,
        }
    }

    /// `self * k / d`.
    fn scale(self, k: u64, d: u64) -> Self {
        Self::new(self.num * u128::from(k), self.den * u128::from(d))
    }

    fn sub(self, other: Self) -> Self {
        let den = self.den / gcd(self.den, other.den) * other.den;
        let a = self.num * (den / self.den);
        let b = other.num * (den / other.den);
        Self::new(a.saturating_sub(b), den)
    }

    pub(crate) fn floor(self) -> u64 {
        (self.num / self.den) as u64
    }

    fn is_integer(self) -> bool {
        self.num % self.den == 0
    }

    /// The part after the integer.
    fn fract(self) -> Self {
        Self::new(self.num % self.den, self.den)
    }
}

impl PartialEq for Ratio {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ratio {}
impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ratio {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.num * other.den).cmp(&(other.num * self.den))
    }
}

/// Splits `total` over items in proportion to their weights, no item above its cap.
/// The caps must sum to at least `total` (the caller guarantees feasibility).
pub(crate) fn water_fill(total: Ratio, weights: &[u64], caps: &[Ratio]) -> Vec<Ratio> {
    let mut capped = vec![false; weights.len()];
    loop {
        let (mut rest, mut weight) = (total, 0u64);
        for i in 0..weights.len() {
            if capped[i] {
                rest = rest.sub(caps[i]);
            } else {
                weight += weights[i];
            }
        }
        if weight == 0 {
            return (0..weights.len())
                .map(|i| if capped[i] { caps[i] } else { Ratio::int(0) })
                .collect();
        }
        let share = |i: usize| rest.scale(weights[i], weight);
        let mut changed = false;
        for i in 0..weights.len() {
            if !capped[i] && share(i) > caps[i] {
                capped[i] = true;
                changed = true;
            }
        }
        if !changed {
            return (0..weights.len())
                .map(|i| if capped[i] { caps[i] } else { share(i) })
                .collect();
        }
    }
}

/// Which share is rounded up first, as an ordered value (smaller first): the field order is the
/// priority, the index last as the deterministic tie-break. Rounding up keeps one more previous
/// replica exactly where the previous count reaches the ceiling, so those go first; among those
/// (and among the rest) the larger fractions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RoundUpFirst {
    keeps_previous: Reverse<bool>,
    fraction: Reverse<Ratio>,
    index: usize,
}

/// Rounds real shares to integers that are each the floor or ceiling of their share and sum to
/// `total` (which lies between the sum of floors and the sum of ceilings), keeping as much of
/// `previous` as any such rounding can.
pub(crate) fn round_shares(shares: &[Ratio], total: u64, previous: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = shares.iter().map(|s| s.floor()).collect();
    let floor_sum: u64 = out.iter().sum();
    let mut extra = total.saturating_sub(floor_sum) as usize;
    let mut candidates: Vec<usize> = (0..shares.len())
        .filter(|&i| !shares[i].is_integer())
        .collect();
    candidates.sort_by_key(|&i| RoundUpFirst {
        keeps_previous: Reverse(previous[i] > shares[i].floor()),
        fraction: Reverse(shares[i].fract()),
        index: i,
    });
    for i in candidates {
        if extra == 0 {
            break;
        }
        out[i] += 1;
        extra -= 1;
    }
    debug_assert_eq!(extra, 0, "rounding must reach the total");
    out
}

/// Per-partition quota of replicas a zone may hold: the smallest `q` with
/// `sum(min(q, zone size)) >= replicas`, so 1 whenever there are at least `replicas` zones.
pub(crate) fn zone_quota(zone_sizes: &[usize], replicas: usize) -> usize {
    let mut quota = 1;
    while zone_sizes.iter().map(|&s| s.min(quota)).sum::<usize>() < replicas {
        quota += 1;
    }
    quota
}

/// Real replica shares per node: zones water-filled first (each capped at its per-partition
/// quota, already limited to its size, of every partition), then the nodes of each zone (each capped at one replica per
/// partition).
pub(crate) fn replica_shares(
    partitions: u64,
    replicas: u64,
    zone_of: &[usize],
    zone_quota: &[usize],
    weights: &[u64],
) -> Vec<Ratio> {
    let total = partitions * replicas;
    let mut zone_nodes: Vec<Vec<usize>> = vec![Vec::new(); zone_quota.len()];
    for (node, &zone) in zone_of.iter().enumerate() {
        zone_nodes[zone].push(node);
    }
    let zone_weights: Vec<u64> = zone_nodes
        .iter()
        .map(|nodes| nodes.iter().map(|&n| weights[n]).sum())
        .collect();
    let zone_caps: Vec<Ratio> = zone_quota
        .iter()
        .map(|&quota| Ratio::int(partitions * quota as u64))
        .collect();
    let zone_shares = water_fill(Ratio::int(total), &zone_weights, &zone_caps);
    let mut shares = vec![Ratio::int(0); zone_of.len()];
    for (zone, nodes) in zone_nodes.iter().enumerate() {
        let w: Vec<u64> = nodes.iter().map(|&n| weights[n]).collect();
        let caps = vec![Ratio::int(partitions); nodes.len()];
        for (k, share) in water_fill(zone_shares[zone], &w, &caps)
            .into_iter()
            .enumerate()
        {
            shares[nodes[k]] = share;
        }
    }
    shares
}

/// Real top-state shares per node: `total` spread by weight, none above `caps` (the replicas
/// the node holds).
pub(crate) fn top_shares(total: u64, weights: &[u64], caps: &[u64]) -> Vec<Ratio> {
    let caps: Vec<Ratio> = caps.iter().map(|&c| Ratio::int(c)).collect();
    water_fill(Ratio::int(total), weights, &caps)
}

/// The integer range `[floor, ceil]` of a share.
pub(crate) fn range(share: Ratio) -> (u64, u64) {
    let lo = share.floor();
    (lo, if share.is_integer() { lo } else { lo + 1 })
}

/// A count per node that a balancing pass keeps within each node's [`range`]: what placement
/// does with replicas and leadership with top states.
pub(crate) trait Ranged {
    /// What `node` holds now.
    fn count(&self, node: usize) -> u64;

    /// The range `[lo, hi]` of `node`'s share.
    fn range(&self, node: usize) -> (u64, u64);

    /// The floor of `node`'s share.
    fn lo(&self, node: usize) -> u64 {
        self.range(node).0
    }

    /// The ceiling of `node`'s share.
    fn hi(&self, node: usize) -> u64 {
        self.range(node).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(shares: Vec<Ratio>) -> Vec<(u64, u64)> {
        shares.into_iter().map(range).collect()
    }

    #[test]
    fn uniform_shares_round_to_floor_or_ceil_favouring_previous_holders() {
        let shares = replica_shares(10, 3, &[0, 1, 2, 3], &[1; 4], &[1; 4]);
        assert_eq!(ranges(shares.clone()), vec![(7, 8); 4]);
        assert_eq!(round_shares(&shares, 30, &[0, 0, 9, 0]), vec![8, 7, 8, 7]);
    }

    #[test]
    fn a_small_zone_is_capped_and_the_rest_spread() {
        // Zones: {0}, {1,2}, {3,4}; 3 replicas, 10 partitions: zone 0 must hold all 10.
        let shares = replica_shares(10, 3, &[0, 1, 1, 2, 2], &[1; 3], &[1; 5]);
        assert_eq!(
            ranges(shares),
            vec![(10, 10), (5, 5), (5, 5), (5, 5), (5, 5)]
        );
    }

    #[test]
    fn weights_are_proportional_and_capped_at_one_replica_per_partition() {
        let shares = replica_shares(10, 2, &[0, 1, 2], &[1; 3], &[100, 100, 1000]);
        assert_eq!(ranges(shares), vec![(5, 5), (5, 5), (10, 10)]);
        let tops = top_shares(10, &[1, 1, 1], &[2, 9, 9]);
        assert_eq!(ranges(tops), vec![(2, 2), (4, 4), (4, 4)]);
    }

    #[test]
    fn zone_quota_allows_sharing_only_when_zones_run_out() {
        assert_eq!(zone_quota(&[3, 3, 3], 3), 1);
        assert_eq!(zone_quota(&[3, 3], 3), 2);
        assert_eq!(zone_quota(&[1, 4], 5), 4);
    }
}
