//! What-if scenarios: a synthetic cluster, an assignment, a change (instances leave or join, a
//! zone fails) and the assignment after it, measured. Shared by `rota plan` and the rebalancer's
//! benchmark (`apps/rota/benches/rebalance.rs`).

use super::baseline;
use rota_model::rebalancer::stats::{self, AssignmentStats};
use rota_model::rebalancer::{RebalanceError, RebalanceInput, rebalance, replica_targets};
use rota_model::{IdealState, InstanceConfig, ResourceConfig, StateModel};
use serde::Serialize;
use std::time::Instant;

/// A change applied to the cluster between the two assignments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Nothing changes (measures the initial assignment and stability).
    None,
    /// `k` instances leave, spread evenly over the instance list.
    Remove(usize),
    /// `k` new instances join, zones assigned round-robin.
    Add(usize),
    /// Every instance of the first zone leaves.
    RemoveZone,
}

/// Placement strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// rota's rebalancer.
    Rota,
    /// Modulo hashing baseline.
    Modulo,
    /// Consistent-hash ring baseline.
    Ring,
}

/// A synthetic cluster and a change.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Instances before the change.
    pub instances: usize,
    /// Zones (instances are dealt to zones round-robin); 0 means no zones.
    pub zones: usize,
    /// The resource.
    pub resource: ResourceConfig,
    /// The change.
    pub change: Change,
}

/// The result of running a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Measurements after the change, movement counted from the assignment before it.
    #[serde(flatten)]
    pub stats: AssignmentStats,
    /// The fewest replica moves any even assignment needs for this change.
    pub lower_bound_moves: u64,
    /// Milliseconds to compute the assignment after the change.
    pub compute_ms: f64,
    /// Milliseconds to compute the assignment before the change (from scratch).
    pub initial_compute_ms: f64,
    /// Instances after the change.
    #[serde(skip)]
    pub instances_after: Vec<InstanceConfig>,
    /// Instances before the change.
    #[serde(skip)]
    pub instances_before: Vec<InstanceConfig>,
    /// Assignment before.
    #[serde(skip)]
    pub before: IdealState,
    /// Assignment after.
    #[serde(skip)]
    pub after: IdealState,
}

/// `count` instances named `node-0000`..., dealt round-robin to `zones` zones starting at `first`.
pub fn synthetic_instances(first: usize, count: usize, zones: usize) -> Vec<InstanceConfig> {
    (first..first + count)
        .map(|i| {
            let instance = InstanceConfig::new(format!("node-{i:04}"));
            if zones == 0 {
                instance
            } else {
                instance.with_zone(format!("zone-{:02}", i % zones))
            }
        })
        .collect()
}

impl Scenario {
    /// Instances after the change.
    pub fn changed_instances(&self, before: &[InstanceConfig]) -> Vec<InstanceConfig> {
        match self.change {
            Change::None => before.to_vec(),
            Change::Remove(k) => {
                let k = k.min(before.len());
                let gone: Vec<usize> = (0..k).map(|j| j * before.len() / k.max(1)).collect();
                before
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !gone.contains(i))
                    .map(|(_, inst)| inst.clone())
                    .collect()
            }
            Change::Add(k) => {
                let mut all = before.to_vec();
                all.extend(synthetic_instances(before.len(), k, self.zones));
                all
            }
            Change::RemoveZone => {
                let first = before.first().map(|i| i.effective_zone().to_owned());
                before
                    .iter()
                    .filter(|i| Some(i.effective_zone()) != first.as_deref())
                    .cloned()
                    .collect()
            }
        }
    }

    /// Runs the scenario with a strategy.
    pub fn run(&self, model: &StateModel, strategy: Strategy) -> Result<Outcome, RebalanceError> {
        let before_instances = synthetic_instances(0, self.instances, self.zones);
        let after_instances = self.changed_instances(&before_instances);
        let assign = |instances: &[InstanceConfig], previous: Option<&IdealState>| {
            let started = Instant::now();
            let ideal = match strategy {
                Strategy::Rota => rebalance(&RebalanceInput {
                    resource: &self.resource,
                    state_model: model,
                    instances,
                    previous,
                })?,
                Strategy::Modulo => baseline::modulo(&self.resource, model, instances),
                Strategy::Ring => baseline::ring(&self.resource, model, instances),
            };
            Ok::<_, RebalanceError>((ideal, started.elapsed().as_secs_f64() * 1e3))
        };
        let (before, initial_compute_ms) = assign(&before_instances, None)?;
        let (after, compute_ms) = assign(&after_instances, Some(&before))?;
        let targets = replica_targets(&RebalanceInput {
            resource: &self.resource,
            state_model: model,
            instances: &after_instances,
            previous: Some(&before),
        })?;
        Ok(Outcome {
            stats: stats::measure(
                Some(&before),
                &after,
                &after_instances,
                model.top_state(),
                self.resource.replicas,
            ),
            lower_bound_moves: stats::lower_bound_moves(&before, &targets),
            compute_ms,
            initial_compute_ms,
            instances_after: after_instances,
            instances_before: before_instances,
            before,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenarios of the documentation, at full scale: 100 instances in 10 zones, 10,240
    /// partitions x 3 replicas.
    #[test]
    fn scale_scenarios_meet_the_bound() {
        let model = StateModel::builtin("MasterSlave").unwrap();
        for change in [Change::Remove(7), Change::Add(1), Change::RemoveZone] {
            let scenario = Scenario {
                instances: 100,
                zones: 10,
                resource: ResourceConfig::new("tasks", 10_240, 3, "MasterSlave"),
                change,
            };
            let out = scenario.run(&model, Strategy::Rota).unwrap();
            let s = &out.stats;
            assert!(s.replicas_max - s.replicas_min <= 1, "{change:?}: {s:?}");
            assert!(
                s.top_states_max - s.top_states_min <= 1,
                "{change:?}: {s:?}"
            );
            assert_eq!(s.zone_violations, 0, "{change:?}");
            assert!(
                s.moved_replicas <= out.lower_bound_moves + out.lower_bound_moves / 100,
                "{change:?}: moved {} bound {}",
                s.moved_replicas,
                out.lower_bound_moves
            );
            if let Change::Remove(k) = change {
                // Exactly the replicas the leavers held: 30,720 * k / 100.
                assert_eq!(out.lower_bound_moves, 30_720 * k as u64 / 100 + 1);
            }
        }
    }
}
