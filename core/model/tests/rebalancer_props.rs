//! Property tests of the rebalancer: validity, evenness, zones, minimal movement, stability and
//! determinism, over random clusters and random changes (joins, leaves, whole zones leaving,
//! weight changes), including the edge cases (no instances, more replicas than instances, one
//! partition, 10k partitions).

mod common;

use proptest::prelude::*;
use rota_model::rebalancer::stats::{lower_bound_moves, measure, per_instance};
use rota_model::rebalancer::{RebalanceInput, rebalance, replica_targets};
use rota_model::{IdealState, InstanceConfig, ResourceConfig, StateModel};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone)]
struct Cluster {
    instances: Vec<InstanceConfig>,
    resource: ResourceConfig,
    model: &'static str,
}

impl Cluster {
    fn model(&self) -> StateModel {
        StateModel::builtin(self.model).unwrap()
    }

    fn assign(&self, previous: Option<&IdealState>) -> IdealState {
        let model = self.model();
        rebalance(&RebalanceInput {
            resource: &self.resource,
            state_model: &model,
            instances: &self.instances,
            previous,
        })
        .expect("valid input")
    }

    fn eligible(&self) -> Vec<InstanceConfig> {
        self.instances
            .iter()
            .filter(|i| i.enabled && i.weight > 0)
            .cloned()
            .collect()
    }
}

fn cluster(
    max_instances: usize,
    max_partitions: u32,
    weighted: bool,
) -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec((1u32..=4, prop::bool::weighted(0.9)), 0..=max_instances),
        0usize..=5,
        1..=max_partitions,
        1u32..=4,
        prop::sample::select(vec!["MasterSlave", "LeaderStandby", "OnlineOffline"]),
    )
        .prop_map(move |(specs, zones, partitions, replicas, model)| Cluster {
            instances: specs
                .into_iter()
                .enumerate()
                .map(|(i, (w, enabled))| {
                    let mut inst = InstanceConfig::new(format!("i{i:03}"))
                        .with_weight(if weighted { w * 100 } else { 100 });
                    if zones > 0 {
                        inst = inst.with_zone(format!("z{}", i % zones));
                    }
                    inst.enabled = enabled;
                    inst
                })
                .collect(),
            resource: ResourceConfig::new("res", partitions, replicas, model),
            model,
        })
}

/// Checks validity, evenness and zone separation of an assignment, independently of the
/// rebalancer's own arithmetic where the expected shares are simple.
fn check(c: &Cluster, ideal: &IdealState) -> Result<(), TestCaseError> {
    let model = c.model();
    let eligible = c.eligible();
    let n = eligible.len();
    let r = (c.resource.replicas as usize).min(n);
    let p_count = c.resource.partitions as usize;
    let zone: HashMap<_, _> = eligible
        .iter()
        .map(|i| (i.id.clone(), i.effective_zone().to_owned()))
        .collect();
    let mut zone_sizes: BTreeMap<String, usize> = BTreeMap::new();
    for z in zone.values() {
        *zone_sizes.entry(z.clone()).or_default() += 1;
    }
    prop_assert_eq!(ideal.partitions.len(), p_count);
    for (p, intent) in ideal.partitions.iter().enumerate() {
        let ids: BTreeSet<_> = intent.instances().collect();
        prop_assert_eq!(
            ids.len(),
            intent.replicas.len(),
            "duplicate in partition {}",
            p
        );
        prop_assert_eq!(intent.replicas.len(), r, "partition {} size", p);
        for id in &ids {
            prop_assert!(
                zone.contains_key(*id),
                "ineligible {} in partition {}",
                id,
                p
            );
        }
        let expected: Vec<_> = model
            .states_by_rank(r as u32, c.resource.replicas, n as u32)
            .into_iter()
            .map(|s| model.name_of(s).clone())
            .collect();
        let states: Vec<_> = intent.replicas.iter().map(|(_, s)| s.clone()).collect();
        prop_assert_eq!(states, expected);
        // Zones: distinct while enough zones exist; otherwise spread as evenly as possible.
        let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &ids {
            *per_zone.entry(zone[*id].as_str()).or_default() += 1;
        }
        let mut quota = 1;
        while zone_sizes.values().map(|&s| s.min(quota)).sum::<usize>() < r {
            quota += 1;
        }
        prop_assert!(
            per_zone.values().all(|&k| k <= quota),
            "partition {} zones {:?} quota {}",
            p,
            per_zone,
            quota
        );
    }
    if n == 0 {
        return Ok(());
    }
    let counts = per_instance(ideal, model.top_state());
    let of = |i: &InstanceConfig| counts.get(&i.id).copied().unwrap_or_default();
    let uniform = eligible.iter().all(|i| i.weight == eligible[0].weight);
    let equal_zones = zone_sizes
        .values()
        .all(|&s| s == zone_sizes.values().next().copied().unwrap());
    if uniform {
        // Within a zone, instances are interchangeable: always within one of each other.
        for z in zone_sizes.keys() {
            let in_zone: Vec<_> = eligible
                .iter()
                .filter(|i| &zone[&i.id] == z)
                .map(of)
                .collect();
            let (lo, hi) = (
                in_zone.iter().map(|c| c.0).min(),
                in_zone.iter().map(|c| c.0).max(),
            );
            prop_assert!(
                hi.unwrap() - lo.unwrap() <= 1,
                "zone {} replicas {:?}",
                z,
                in_zone
            );
        }
        if equal_zones {
            let replicas: Vec<u64> = eligible.iter().map(|i| of(i).0).collect();
            let tops: Vec<u64> = eligible.iter().map(|i| of(i).1).collect();
            let spread = |v: &[u64]| v.iter().max().unwrap() - v.iter().min().unwrap();
            prop_assert!(
                spread(&replicas) <= 1,
                "replicas per instance {:?}",
                replicas
            );
            prop_assert!(spread(&tops) <= 1, "top states per instance {:?}", tops);
        }
    } else if zone_sizes.len() == n {
        // No zones: each instance within one of its weighted share (capped at one per partition).
        let total = (p_count * r) as f64;
        let weights: Vec<f64> = eligible.iter().map(|i| f64::from(i.weight)).collect();
        let shares = water_fill(total, &weights, &vec![p_count as f64; n]);
        within_one("holds", &eligible, |i| of(i).0, &shares)?;
        let total_top: u64 = counts.values().map(|c| c.1).sum();
        let caps: Vec<f64> = eligible.iter().map(|i| of(i).0 as f64).collect();
        let top_shares = water_fill(total_top as f64, &weights, &caps);
        within_one("leads", &eligible, |i| of(i).1, &top_shares)?;
    }
    Ok(())
}

/// Each instance's count is within one of its real share.
fn within_one(
    what: &str,
    eligible: &[InstanceConfig],
    count: impl Fn(&InstanceConfig) -> u64,
    shares: &[f64],
) -> Result<(), TestCaseError> {
    for (inst, share) in eligible.iter().zip(shares) {
        let got = count(inst) as f64;
        prop_assert!(
            (got - share).abs() < 1.0 + 1e-9,
            "{} {} {} share {}",
            inst.id,
            what,
            got,
            share
        );
    }
    Ok(())
}

fn water_fill(total: f64, weights: &[f64], caps: &[f64]) -> Vec<f64> {
    let mut capped = vec![false; weights.len()];
    loop {
        let rest: f64 = total
            - (0..weights.len())
                .filter(|&i| capped[i])
                .map(|i| caps[i])
                .sum::<f64>();
        let w: f64 = (0..weights.len())
            .filter(|&i| !capped[i])
            .map(|i| weights[i])
            .sum();
        let share = |i: usize| if w > 0.0 { rest * weights[i] / w } else { 0.0 };
        let newly: Vec<usize> = (0..weights.len())
            .filter(|&i| !capped[i] && share(i) > caps[i] + 1e-9)
            .collect();
        if newly.is_empty() {
            return (0..weights.len())
                .map(|i| if capped[i] { caps[i] } else { share(i) })
                .collect();
        }
        for i in newly {
            capped[i] = true;
        }
    }
}

/// Moves beyond the lower bound allowed in small random clusters: 1% or 2 replicas. The bound
/// ignores that a replica cannot join a partition its receiver already holds; in clusters of a
/// few instances that sometimes forces a chain of two moves. At scale (see
/// `scale_scenarios_meet_the_bound`) the rebalancer meets the bound exactly.
fn slack(lower_bound: u64) -> u64 {
    (lower_bound / 100).max(2)
}

/// Replicas that must enter configured zones whose share grew: the sum over zones of the zone's
/// target minus what its instances held before.
fn zone_entries(
    after: &Cluster,
    old: &IdealState,
    targets: &BTreeMap<rota_model::InstanceId, u64>,
) -> u64 {
    let held = per_instance(old, after.model().top_state());
    let mut zones: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for inst in after.eligible().iter() {
        let Some(zone) = after
            .instances
            .iter()
            .find(|i| i.id == inst.id)
            .and_then(|i| i.zone.as_deref())
        else {
            continue;
        };
        let entry = zones.entry(zone).or_default();
        entry.0 += targets.get(&inst.id).copied().unwrap_or(0);
        entry.1 += held.get(&inst.id).map_or(0, |c| c.0);
    }
    zones
        .values()
        .map(|(target, held)| target.saturating_sub(*held))
        .sum()
}

fn check_change(before: &Cluster, after: &Cluster, extra_slack: u64) -> Result<(), TestCaseError> {
    let old = before.assign(None);
    let new = after.assign(Some(&old));
    check(after, &new)?;
    let model = after.model();
    let stats = measure(
        Some(&old),
        &new,
        &after.eligible(),
        model.top_state(),
        after.resource.replicas,
    );
    let targets = replica_targets(&RebalanceInput {
        resource: &after.resource,
        state_model: &model,
        instances: &after.instances,
        previous: Some(&old),
    })
    .unwrap();
    let bound = lower_bound_moves(&old, &targets);
    prop_assert!(
        stats.moved_replicas >= bound,
        "moved {} below the lower bound {}",
        stats.moved_replicas,
        bound
    );
    // The bound counts instances only. When configured zones change size, a replica entering a
    // zone may have to go through a partition that already has that zone: one extra move each.
    let zone_entries = zone_entries(after, &old, &targets);
    prop_assert!(
        stats.moved_replicas <= bound + slack(bound) + extra_slack + zone_entries,
        "moved {} replicas, lower bound {}, zone entries {}",
        stats.moved_replicas,
        bound,
        zone_entries
    );
    // Stability after the change.
    prop_assert_eq!(after.assign(Some(&new)), new);
    Ok(())
}

proptest! {
    #![proptest_config(common::config(0x0005_eed0_707a))]

    #[test]
    fn assignments_are_valid_even_and_zone_separated(c in cluster(24, 200, false)) {
        check(&c, &c.assign(None))?;
    }

    #[test]
    fn weighted_assignments_follow_weights(c in cluster(16, 200, true)) {
        check(&c, &c.assign(None))?;
    }

    #[test]
    fn rebalancing_its_own_output_changes_nothing(c in cluster(24, 200, true)) {
        let first = c.assign(None);
        prop_assert_eq!(c.assign(Some(&first)), first);
    }

    #[test]
    fn instance_order_does_not_matter(c in cluster(16, 100, true), seed in any::<u64>()) {
        let mut shuffled = c.clone();
        let len = shuffled.instances.len();
        if len > 1 {
            for i in 0..len {
                let j = (seed.wrapping_mul(i as u64 + 7) % len as u64) as usize;
                shuffled.instances.swap(i, j);
            }
        }
        prop_assert_eq!(shuffled.assign(None), c.assign(None));
    }

    #[test]
    fn leaves_move_only_what_they_must(c in cluster(24, 300, false), leave in prop::collection::vec(any::<prop::sample::Index>(), 1..4)) {
        let mut after = c.clone();
        for index in leave {
            if !after.instances.is_empty() {
                let i = index.index(after.instances.len());
                after.instances.remove(i);
            }
        }
        check_change(&c, &after, 0)?;
    }

    #[test]
    fn a_join_moves_only_what_evenness_needs(c in cluster(24, 300, false), zone in 0usize..6) {
        let mut after = c.clone();
        let mut joiner = InstanceConfig::new("joiner");
        if c.instances.iter().any(|i| i.zone.is_some()) {
            joiner = joiner.with_zone(format!("z{zone}"));
        }
        after.instances.push(joiner);
        check_change(&c, &after, 0)?;
    }

    #[test]
    fn a_whole_zone_leaving_keeps_separation(c in cluster(24, 300, false)) {
        let mut after = c.clone();
        after.instances.retain(|i| i.zone.as_deref() != Some("z0"));
        check_change(&c, &after, 0)?;
    }

    #[test]
    fn weight_changes_move_little(c in cluster(16, 300, true), changes in prop::collection::vec((any::<prop::sample::Index>(), 1u32..=4), 1..3)) {
        let mut after = c.clone();
        for (index, w) in changes {
            if !after.instances.is_empty() {
                let i = index.index(after.instances.len());
                after.instances[i].weight = w * 100;
            }
        }
        // Weight changes shift many instances at once in a small cluster; chains of two moves
        // are then more frequent. Allow 5% more.
        let old = c.assign(None);
        let moved_bound: u64 = old.partitions.iter().map(|p| p.replicas.len() as u64).sum();
        check_change(&c, &after, moved_bound / 20)?;
    }

    #[test]
    fn disabling_instances_empties_them(c in cluster(16, 100, false), index in any::<prop::sample::Index>()) {
        prop_assume!(!c.instances.is_empty());
        let mut after = c.clone();
        let i = index.index(after.instances.len());
        after.instances[i].enabled = false;
        let new = after.assign(Some(&c.assign(None)));
        let id = &after.instances[i].id;
        prop_assert!(new.partitions.iter().all(|p| p.state_of(id).is_none()));
        check_change(&c, &after, 0)?;
    }
}

proptest! {
    #![proptest_config(common::config(0x0005_eed0_707a))]

    #[test]
    fn ten_thousand_partitions_stay_even_and_minimal(
        n in 20usize..60, zones in 3usize..8, leave in 0usize..3, join in 0usize..2,
    ) {
        let make = |count: usize| -> Vec<InstanceConfig> {
            (0..count).map(|i| InstanceConfig::new(format!("n{i:03}")).with_zone(format!("z{}", i % zones))).collect()
        };
        let before = Cluster {
            instances: make(n),
            resource: ResourceConfig::new("big", 10_000, 3, "MasterSlave"),
            model: "MasterSlave",
        };
        let mut after = before.clone();
        after.instances.truncate(n - leave);
        after.instances.extend(make(n + join).into_iter().skip(n));
        check_change(&before, &after, 0)?;
    }
}

#[test]
fn no_instances_gives_empty_partitions() {
    let c = Cluster {
        instances: vec![],
        resource: ResourceConfig::new("res", 5, 3, "MasterSlave"),
        model: "MasterSlave",
    };
    assert!(
        c.assign(None)
            .partitions
            .iter()
            .all(|p| p.replicas.is_empty())
    );
}

#[test]
fn more_replicas_than_instances_uses_every_instance_once() {
    let c = Cluster {
        instances: (0..2)
            .map(|i| InstanceConfig::new(format!("i{i}")))
            .collect(),
        resource: ResourceConfig::new("res", 7, 5, "MasterSlave"),
        model: "MasterSlave",
    };
    let ideal = c.assign(None);
    for p in &ideal.partitions {
        assert_eq!(p.replicas.len(), 2);
        assert_eq!(p.replicas[0].1, "MASTER");
        assert_eq!(p.replicas[1].1, "SLAVE");
    }
}
