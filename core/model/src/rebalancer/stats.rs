//! Measurements of an assignment: evenness, movement against a previous one, zone separation.
//! Used by `rota plan`, the property tests and the benchmarks, so that all three report the same
//! figures computed the same way.

use crate::{IdealState, InstanceConfig, InstanceId, StateName};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Figures describing an assignment, and its change from a previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AssignmentStats {
    /// Fewest replicas held by an eligible instance.
    pub replicas_min: u64,
    /// Most replicas held by an instance.
    pub replicas_max: u64,
    /// Fewest top states held by an eligible instance.
    pub top_states_min: u64,
    /// Most top states held by an instance.
    pub top_states_max: u64,
    /// Replicas placed on an instance that did not hold that partition before.
    pub moved_replicas: u64,
    /// Top states granted to an instance that was not top for that partition before.
    pub changed_top_states: u64,
    /// Partitions with two replicas in one zone although enough zones exist.
    pub zone_violations: u64,
    /// Total replicas placed.
    pub total_replicas: u64,
}

/// Replicas and top states per instance.
pub fn per_instance(ideal: &IdealState, top: &StateName) -> BTreeMap<InstanceId, (u64, u64)> {
    let mut out: BTreeMap<InstanceId, (u64, u64)> = BTreeMap::new();
    for intent in &ideal.partitions {
        for (id, state) in &intent.replicas {
            let entry = out.entry(id.clone()).or_default();
            entry.0 += 1;
            if state == top {
                entry.1 += 1;
            }
        }
    }
    out
}

/// Measures `after` over the `eligible` instances, and its movement from `before`.
pub fn measure(
    before: Option<&IdealState>,
    after: &IdealState,
    eligible: &[InstanceConfig],
    top: &StateName,
    replicas: u32,
) -> AssignmentStats {
    let counts = per_instance(after, top);
    let of = |id: &InstanceId| counts.get(id).copied().unwrap_or_default();
    let replica_counts = eligible.iter().map(|i| of(&i.id).0);
    let top_counts = eligible.iter().map(|i| of(&i.id).1);
    let zone: HashMap<&InstanceId, &str> = eligible
        .iter()
        .map(|i| (&i.id, i.effective_zone()))
        .collect();
    let zones: HashSet<&str> = zone.values().copied().collect();
    let enough_zones = zones.len() >= replicas as usize;

    let mut stats = AssignmentStats {
        replicas_min: replica_counts.clone().min().unwrap_or(0),
        replicas_max: replica_counts.max().unwrap_or(0),
        top_states_min: top_counts.clone().min().unwrap_or(0),
        top_states_max: top_counts.max().unwrap_or(0),
        ..AssignmentStats::default()
    };
    for (p, intent) in after.partitions.iter().enumerate() {
        stats.total_replicas += intent.replicas.len() as u64;
        if enough_zones {
            let mut seen = HashSet::new();
            let shared = intent
                .instances()
                .filter_map(|id| zone.get(id))
                .any(|z| !seen.insert(*z));
            stats.zone_violations += u64::from(shared);
        }
        let old = before.and_then(|b| b.partitions.get(p));
        for (id, state) in &intent.replicas {
            let old_state = old.and_then(|o| o.state_of(id));
            if old_state.is_none() {
                stats.moved_replicas += 1;
            }
            if state == top && old_state != Some(top) {
                stats.changed_top_states += 1;
            }
        }
    }
    stats
}

/// The fewest replica moves any assignment meeting `targets` needs, starting from `before`:
/// every replica beyond what each instance can keep (`min(previous, target)`) must be placed anew.
pub fn lower_bound_moves(before: &IdealState, targets: &BTreeMap<InstanceId, u64>) -> u64 {
    let mut previous: HashMap<&InstanceId, u64> = HashMap::new();
    for intent in &before.partitions {
        for id in intent.instances() {
            *previous.entry(id).or_default() += 1;
        }
    }
    let total: u64 = targets.values().sum();
    let keepable: u64 = targets
        .iter()
        .map(|(id, &t)| previous.get(id).copied().unwrap_or(0).min(t))
        .sum();
    total - keepable
}
