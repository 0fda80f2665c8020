//! Baseline placement strategies, measured by the same harness as the rebalancer so that the
//! comparison in the docs is like for like. Not used by the controller.
//!
//! - [`modulo`]: partition `p` starts at instance `hash(p) mod n` and takes the next instances
//!   (the original system's `abs(hashCode % N)` idea, extended to replicas).
//! - [`ring`]: a consistent-hash ring with 100 virtual nodes per instance; a partition's
//!   replicas are the first distinct instances (in distinct zones while possible) clockwise.

use rota_model::{IdealState, InstanceConfig, PartitionIntent, ResourceConfig, StateModel};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn ideal(
    resource: &ResourceConfig,
    model: &StateModel,
    eligible: u32,
    lists: Vec<Vec<&InstanceConfig>>,
) -> IdealState {
    IdealState {
        resource: resource.name.clone(),
        state_model: model.name().to_owned(),
        mode: resource.rebalance_mode,
        partitions: lists
            .into_iter()
            .map(|list| {
                let states = model.states_by_rank(list.len() as u32, resource.replicas, eligible);
                PartitionIntent {
                    replicas: list
                        .into_iter()
                        .zip(states)
                        .map(|(i, s)| (i.id.clone(), model.name_of(s).clone()))
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Modulo hashing: partition `p` goes to instances `hash(p) mod n`, `+1`, `+2`, ...
pub fn modulo(
    resource: &ResourceConfig,
    model: &StateModel,
    instances: &[InstanceConfig],
) -> IdealState {
    let n = instances.len();
    let r = (resource.replicas as usize).min(n);
    let lists = (0..resource.partitions)
        .map(|p| {
            if n == 0 {
                return Vec::new();
            }
            let start = (mix(u64::from(p)) % n as u64) as usize;
            (0..r).map(|k| &instances[(start + k) % n]).collect()
        })
        .collect();
    ideal(resource, model, n as u32, lists)
}

/// Consistent-hash ring with 100 virtual nodes per instance.
pub fn ring(
    resource: &ResourceConfig,
    model: &StateModel,
    instances: &[InstanceConfig],
) -> IdealState {
    const VNODES: u64 = 100;
    let mut points: Vec<(u64, usize)> = instances
        .iter()
        .enumerate()
        .flat_map(|(i, inst)| {
            let h = hash_str(inst.id.as_str());
            (0..VNODES).map(move |v| (mix(h ^ mix(v)), i))
        })
        .collect();
    points.sort_unstable();
    let n = instances.len();
    let r = (resource.replicas as usize).min(n);
    let zones: std::collections::HashSet<&str> =
        instances.iter().map(|i| i.effective_zone()).collect();
    let separate_zones = zones.len() >= r;
    let lists = (0..resource.partitions)
        .map(|p| {
            let mut list: Vec<&InstanceConfig> = Vec::new();
            if n == 0 {
                return list;
            }
            let key = mix(u64::from(p) ^ hash_str(&resource.name));
            let start = points.partition_point(|&(h, _)| h < key);
            for k in 0..points.len() {
                if list.len() == r {
                    break;
                }
                let inst = &instances[points[(start + k) % points.len()].1];
                let clash = list.iter().any(|l| {
                    l.id == inst.id
                        || (separate_zones && l.effective_zone() == inst.effective_zone())
                });
                if !clash {
                    list.push(inst);
                }
            }
            list
        })
        .collect();
    ideal(resource, model, n as u32, lists)
}
