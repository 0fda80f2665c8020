//! The rebalancer: a pure, deterministic function from a resource, its candidate instances and
//! the previous assignment to a new assignment (an [`IdealState`]).
//!
//! For FULL_AUTO resources it guarantees, for every input (and the property tests check it):
//! - **validity**: each partition gets `min(replicas, eligible)` distinct eligible instances;
//! - **evenness**: each instance's replica count is the floor or ceiling of its weighted fair
//!   share, and so is its count of top states (MASTER / LEADER); fair shares already account for
//!   what zone separation forces (see [`shares`]);
//! - **zones**: no two replicas of a partition share a zone while there are at least `replicas`
//!   zones (otherwise replicas are spread over zones as evenly as possible);
//! - **minimal movement**: previous replicas stay where they are unless their instance left or
//!   is above its target; see [`placement`] for why the moves then meet the lower bound;
//! - **stability**: rebalancing its own output changes nothing;
//! - **determinism**: the same input gives the same output, whatever the order of instances.
//!
//! SEMI_AUTO and CUSTOMIZED resources keep the user's placement, restricted to eligible
//! instances, with states assigned (SEMI_AUTO) or validated (CUSTOMIZED) against the state model.

// The rebalancer itself.
mod buckets;
mod leaders;
mod placement;
mod shares;

// Movement and balance statistics of an assignment, not on any controller's path: what the
// property tests (`core/model/tests/rebalancer_props.rs`) and `rota plan` measure with.
pub mod stats;

use crate::state_model::StateModel;
use crate::{
    IdealState, InstanceConfig, InstanceId, PartitionIntent, RebalanceMode, ResourceConfig,
    ResourceConfigError, StateName,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Largest accepted instance weight; keeps the exact share arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Everything the rebalancer looks at.
#[derive(Clone, Copy, Debug)]
pub struct RebalanceInput<'a> {
    /// The resource to place.
    pub resource: &'a ResourceConfig,
    /// Its state model.
    pub state_model: &'a StateModel,
    /// Candidate instances (the live ones). Disabled instances, instances of weight 0 and
    /// instances without the resource's tag are ignored.
    pub instances: &'a [InstanceConfig],
    /// The previous assignment, if any: replicas stay where it put them whenever possible.
    pub previous: Option<&'a IdealState>,
}

/// Why the rebalancer could not produce an assignment. All of these are input mistakes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebalanceError {
    /// The resource configuration is invalid.
    #[error(transparent)]
    Resource(#[from] ResourceConfigError),
    /// The resource names another state model than the one given.
    #[error("resource {resource} uses state model {expected}, not {given}")]
    StateModelMismatch {
        /// Resource.
        resource: String,
        /// Model named by the resource.
        expected: String,
        /// Model passed in.
        given: String,
    },
    /// Two candidate instances share an id.
    #[error("instance {0} is listed twice")]
    DuplicateInstance(InstanceId),
    /// An instance weight is above [`MAX_WEIGHT`].
    #[error("instance {instance} has weight {weight}; the maximum is {MAX_WEIGHT}")]
    WeightTooLarge {
        /// Instance.
        instance: InstanceId,
        /// Its weight.
        weight: u32,
    },
    /// A CUSTOMIZED map names a state the model does not assign.
    #[error(
        "resource {resource} partition {partition}: state {state} is not an assignable state of {model}"
    )]
    UnknownState {
        /// Resource.
        resource: String,
        /// Partition.
        partition: u32,
        /// The state.
        state: StateName,
        /// Model.
        model: String,
    },
    /// A CUSTOMIZED map puts more replicas in a state than its bound allows.
    #[error(
        "resource {resource} partition {partition}: {count} replicas in {state}, bound is {bound}"
    )]
    BoundExceeded {
        /// Resource.
        resource: String,
        /// Partition.
        partition: u32,
        /// The state.
        state: StateName,
        /// Replicas requested in it.
        count: u32,
        /// Its bound.
        bound: u32,
    },
}

/// Computes the assignment of a resource. Pure: no I/O, no clock, no randomness.
pub fn rebalance(input: &RebalanceInput<'_>) -> Result<IdealState, RebalanceError> {
    let resource = input.resource;
    resource.validate()?;
    if resource.state_model != input.state_model.name() {
        return Err(RebalanceError::StateModelMismatch {
            resource: resource.name.clone(),
            expected: resource.state_model.clone(),
            given: input.state_model.name().to_owned(),
        });
    }
    let cluster = Cluster::new(input)?;
    let partitions = match resource.rebalance_mode {
        RebalanceMode::FullAuto => full_auto(input, &cluster),
        RebalanceMode::SemiAuto => semi_auto(input, &cluster),
        RebalanceMode::Customized => customized(input, &cluster)?,
    };
    Ok(IdealState {
        resource: resource.name.clone(),
        state_model: input.state_model.name().to_owned(),
        mode: resource.rebalance_mode,
        partitions,
    })
}

/// Per-instance replica targets for this input (FULL_AUTO): each the floor or ceiling of the
/// instance's fair share, rounded up first where the previous assignment held more. Every even
/// assignment keeps at most `min(previous, target)` replicas per instance, which gives the
/// movement lower bound ([`stats::lower_bound_moves`]).
pub fn replica_targets(
    input: &RebalanceInput<'_>,
) -> Result<BTreeMap<InstanceId, u64>, RebalanceError> {
    input.resource.validate()?;
    let cluster = Cluster::new(input)?;
    let partitions = u64::from(input.resource.partitions);
    let shares = cluster.replica_shares(partitions);
    let previous = counts(&cluster.previous(input).0, cluster.nodes());
    let total = partitions * cluster.replicas as u64;
    let targets = shares::round_shares(&shares, total, &previous);
    Ok(cluster.ids.iter().cloned().zip(targets).collect())
}

/// The eligible instances as indices, sorted by id so that input order never matters.
struct Cluster {
    ids: Vec<InstanceId>,
    index: HashMap<InstanceId, usize>,
    zone_of: Vec<usize>,
    /// Per zone, how many replicas of one partition it may hold.
    zone_quota: Vec<usize>,
    weights: Vec<u64>,
    replicas: usize,
    seed: u64,
}

impl Cluster {
    fn new(input: &RebalanceInput<'_>) -> Result<Self, RebalanceError> {
        let mut seen = HashSet::new();
        for instance in input.instances {
            if !seen.insert(&instance.id) {
                return Err(RebalanceError::DuplicateInstance(instance.id.clone()));
            }
            if instance.weight > MAX_WEIGHT {
                return Err(RebalanceError::WeightTooLarge {
                    instance: instance.id.clone(),
                    weight: instance.weight,
                });
            }
        }
        let tag = input.resource.instance_tag.as_ref();
        let mut eligible: Vec<&InstanceConfig> = input
            .instances
            .iter()
            .filter(|i| i.enabled && i.weight > 0 && tag.is_none_or(|t| i.tags.contains(t)))
            .collect();
        eligible.sort_by(|a, b| a.id.cmp(&b.id));
        let mut zone_names: Vec<&str> = eligible.iter().map(|i| i.effective_zone()).collect();
        zone_names.sort_unstable();
        zone_names.dedup();
        let zone_of: Vec<usize> = eligible
            .iter()
            .map(|i| {
                zone_names
                    .binary_search(&i.effective_zone())
                    .expect("listed")
            })
            .collect();
        let mut zone_sizes = vec![0; zone_names.len()];
        for &z in &zone_of {
            zone_sizes[z] += 1;
        }
        let ids: Vec<InstanceId> = eligible.iter().map(|i| i.id.clone()).collect();
        let replicas = (input.resource.replicas as usize).min(eligible.len());
        let quota = shares::zone_quota(&zone_sizes, replicas);
        Ok(Self {
            zone_quota: zone_sizes.iter().map(|&s| s.min(quota)).collect(),
            index: ids
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, id)| (id, i))
                .collect(),
            ids,
            zone_of,
            weights: eligible.iter().map(|i| u64::from(i.weight)).collect(),
            replicas,
            seed: fnv1a(input.resource.name.as_bytes()),
        })
    }

    fn nodes(&self) -> usize {
        self.ids.len()
    }

    /// Previous holders and previous top holders per partition, as eligible node indices.
    fn previous(&self, input: &RebalanceInput<'_>) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
        let partitions = input.resource.partitions as usize;
        let mut holders = vec![Vec::new(); partitions];
        let mut tops = vec![Vec::new(); partitions];
        let Some(previous) = input.previous else {
            return (holders, tops);
        };
        let top = input.state_model.top_state();
        for (p, intent) in previous.partitions.iter().enumerate().take(partitions) {
            for (id, state) in &intent.replicas {
                let Some(&node) = self.index.get(id) else {
                    continue;
                };
                if holders[p].contains(&node) {
                    continue;
                }
                holders[p].push(node);
                if state == top {
                    tops[p].push(node);
                }
            }
        }
        (holders, tops)
    }

    fn replica_shares(&self, partitions: u64) -> Vec<shares::Ratio> {
        shares::replica_shares(
            partitions,
            self.replicas as u64,
            &self.zone_of,
            &self.zone_quota,
            &self.weights,
        )
    }

    /// Per node, whether it led more partitions before than its fair share of top states now,
    /// estimated with every partition fully replicated and every node at the top of its range.
    fn top_rich(
        &self,
        input: &RebalanceInput<'_>,
        range: &[(u64, u64)],
        previous_top: &[Vec<usize>],
    ) -> Vec<bool> {
        let per_partition = input.state_model.top_count(
            self.replicas as u32,
            input.resource.replicas,
            self.nodes() as u32,
        );
        let total = u64::from(input.resource.partitions) * u64::from(per_partition);
        let caps: Vec<u64> = range.iter().map(|r| r.1).collect();
        shares::top_shares(total, &self.weights, &caps)
            .into_iter()
            .zip(counts(previous_top, self.nodes()))
            .map(|(share, held)| held > share.floor())
            .collect()
    }

    fn intent(&self, holders: &[usize], input: &RebalanceInput<'_>) -> PartitionIntent {
        let model = input.state_model;
        let states = model.states_by_rank(
            holders.len() as u32,
            input.resource.replicas,
            self.nodes() as u32,
        );
        PartitionIntent {
            replicas: holders
                .iter()
                .zip(states)
                .map(|(&n, s)| (self.ids[n].clone(), model.name_of(s).clone()))
                .collect(),
        }
    }
}

fn counts(lists: &[Vec<usize>], nodes: usize) -> Vec<u64> {
    let mut counts = vec![0; nodes];
    for list in lists {
        for &n in list {
            counts[n] += 1;
        }
    }
    counts
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn full_auto(input: &RebalanceInput<'_>, cluster: &Cluster) -> Vec<PartitionIntent> {
    let partitions = input.resource.partitions as usize;
    if cluster.nodes() == 0 {
        return vec![PartitionIntent::default(); partitions];
    }
    let (previous, previous_top) = cluster.previous(input);
    let range: Vec<(u64, u64)> = cluster
        .replica_shares(partitions as u64)
        .into_iter()
        .map(shares::range)
        .collect();
    let top_rich = cluster.top_rich(input, &range, &previous_top);
    let parts = placement::place(&placement::Problem {
        partitions,
        replicas: cluster.replicas,
        zone_of: &cluster.zone_of,
        zone_quota: &cluster.zone_quota,
        range: &range,
        previous: &previous,
        previous_top: &previous_top,
        top_rich: &top_rich,
        seed: cluster.seed,
    });
    let model = input.state_model;
    let eligible = cluster.nodes() as u32;
    let top_count: Vec<usize> = parts
        .iter()
        .map(|holders| {
            model.top_count(holders.len() as u32, input.resource.replicas, eligible) as usize
        })
        .collect();
    let total_top: u64 = top_count.iter().map(|&c| c as u64).sum();
    let top_range: Vec<(u64, u64)> = shares::top_shares(
        total_top,
        &cluster.weights,
        &counts(&parts, cluster.nodes()),
    )
    .into_iter()
    .map(shares::range)
    .collect();
    let tops = leaders::choose_tops(
        &leaders::TopProblem {
            parts: &parts,
            top_count: &top_count,
            range: &top_range,
            previous_top: &previous_top,
        },
        cluster.nodes(),
    );
    parts
        .iter()
        .zip(&tops)
        .map(|(holders, tops)| {
            let ordered: Vec<usize> = holders
                .iter()
                .filter(|n| tops.contains(n))
                .chain(holders.iter().filter(|n| !tops.contains(n)))
                .copied()
                .collect();
            cluster.intent(&ordered, input)
        })
        .collect()
}

fn semi_auto(input: &RebalanceInput<'_>, cluster: &Cluster) -> Vec<PartitionIntent> {
    (0..input.resource.partitions)
        .map(|p| {
            let mut holders: Vec<usize> = Vec::new();
            let listed = input
                .resource
                .preference_lists
                .get(&p)
                .into_iter()
                .flatten();
            for id in listed {
                if let Some(&n) = cluster.index.get(id) {
                    if !holders.contains(&n) && holders.len() < cluster.replicas {
                        holders.push(n);
                    }
                }
            }
            cluster.intent(&holders, input)
        })
        .collect()
}

fn customized(
    input: &RebalanceInput<'_>,
    cluster: &Cluster,
) -> Result<Vec<PartitionIntent>, RebalanceError> {
    let model = input.state_model;
    let resource = input.resource;
    let mut out = vec![PartitionIntent::default(); resource.partitions as usize];
    for (&p, map) in &resource.custom_assignment {
        let mut replicas: Vec<(usize, InstanceId, StateName)> = Vec::new();
        let mut per_state = vec![0u32; model.state_count()];
        for (id, state) in map {
            let index = model
                .index_of(state.as_str())
                .filter(|&s| model.is_active(s) || s == model.initial_index())
                .ok_or_else(|| RebalanceError::UnknownState {
                    resource: resource.name.clone(),
                    partition: p,
                    state: state.clone(),
                    model: model.name().to_owned(),
                })?;
            per_state[index] += 1;
            if let Some(bound) = model
                .bound(index)
                .resolve(resource.replicas, cluster.nodes() as u32)
                .filter(|&b| per_state[index] > b)
            {
                return Err(RebalanceError::BoundExceeded {
                    resource: resource.name.clone(),
                    partition: p,
                    state: state.clone(),
                    count: per_state[index],
                    bound,
                });
            }
            if cluster.index.contains_key(id) {
                replicas.push((index, id.clone(), state.clone()));
            }
        }
        replicas.sort();
        out[p as usize].replicas = replicas.into_iter().map(|(_, id, s)| (id, s)).collect();
    }
    Ok(out)
}
