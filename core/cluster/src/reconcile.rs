//! One reconcile, as a pure function: snapshot in, decisions out.
//!
//! Per resource: choose the candidate instances (live and enabled, plus those within their
//! delay window after going away), run the rebalancer (or, in maintenance, keep the previous
//! ideal state), derive the planner's target from it over the live instances only, and plan the
//! next transitions. The controller writes what this returns, fenced by its leader epoch.

use super::records::PartitionEpochs;
use super::snapshot::Snapshot;
use rota_model::planner::{PlanInput, ResourcePlan, plan};
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::state_model::StateModel;
use rota_model::{
    ExternalView, IdealState, InstanceConfig, InstanceId, PartitionIntent, SessionId, Transition,
};
use std::collections::{BTreeMap, BTreeSet};

/// What the controller should write.
#[derive(Clone, Debug, Default)]
pub struct Decisions {
    /// Ideal states that changed.
    pub ideal_states: BTreeMap<String, IdealState>,
    /// Transitions to send.
    pub transitions: Vec<Transition>,
    /// Partition epochs that advanced (whole records, per resource).
    pub epochs: BTreeMap<String, PartitionEpochs>,
    /// External views that changed.
    pub external_views: BTreeMap<String, ExternalView>,
    /// Keys of messages addressed to sessions that are gone.
    pub stale_messages: Vec<String>,
    /// When to reconcile again at the latest (a delay window ends), on the `now_ms` clock.
    pub wake_at_ms: Option<u64>,
    /// Problems worth logging (unknown state model, invalid resource, ...).
    pub problems: Vec<String>,
}

/// Decides one reconcile. `offline_since` holds, for configured instances that are not live,
/// when the controller first saw them gone, and `now_ms` the current time, on one monotonic
/// clock.
pub fn reconcile(
    snapshot: &Snapshot,
    offline_since: &BTreeMap<InstanceId, u64>,
    now_ms: u64,
) -> Decisions {
    let mut out = Decisions {
        problems: snapshot.problems.clone(),
        ..Decisions::default()
    };
    let sessions: BTreeMap<InstanceId, SessionId> = snapshot
        .live
        .values()
        .map(|l| (l.id.clone(), l.session.clone()))
        .collect();
    let live_sessions: BTreeSet<(&InstanceId, &SessionId)> = sessions.iter().collect();
    let mut pending: BTreeMap<&str, Vec<Transition>> = BTreeMap::new();
    for (key, message) in &snapshot.messages {
        let t = &message.transition;
        if live_sessions.contains(&(&t.instance, &t.session)) {
            pending
                .entry(t.resource.as_str())
                .or_default()
                .push(t.clone());
        } else {
            out.stale_messages.push(key.clone());
        }
    }

    let no_current = Vec::new();
    let mut targets = Vec::new();
    for (name, resource) in &snapshot.resources {
        let Some(model) = snapshot.models.get(&resource.state_model) else {
            out.problems.push(format!(
                "resource {name}: unknown state model {}",
                resource.state_model
            ));
            continue;
        };
        let tagged = |i: &&InstanceConfig| {
            resource
                .instance_tag
                .as_ref()
                .is_none_or(|t| i.tags.contains(t))
        };
        let live: Vec<InstanceConfig> = snapshot
            .instances
            .values()
            .filter(|i| sessions.contains_key(&i.id) && i.enabled)
            .filter(tagged)
            .cloned()
            .collect();
        let window = resource.delay_window_ms.unwrap_or(0);
        let mut candidates = live.clone();
        for instance in snapshot.instances.values().filter(tagged) {
            let Some(&since) = offline_since.get(&instance.id) else {
                continue;
            };
            if instance.enabled && !sessions.contains_key(&instance.id) && now_ms < since + window {
                candidates.push(instance.clone());
                let ends = since + window;
                out.wake_at_ms = Some(out.wake_at_ms.map_or(ends, |w| w.min(ends)));
            }
        }
        let previous = snapshot.ideal.get(name);
        let ideal = if snapshot.config.maintenance {
            previous.cloned()
        } else {
            // A rebalancer that fails (or breaks one of its own invariants and panics) on this
            // snapshot would fail the same way in every controller that takes over: keep the
            // previous ideal state instead, go on reconciling toward it, and say why.
            let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rebalance(&RebalanceInput {
                    resource,
                    state_model: model,
                    instances: &candidates,
                    previous,
                })
            }));
            match computed {
                Ok(Ok(ideal)) => Some(ideal),
                Ok(Err(e)) => {
                    out.problems.push(format!(
                        "resource {name}: {e}; keeping its previous ideal state"
                    ));
                    previous.cloned()
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    out.problems.push(format!(
                        "resource {name}: the rebalancer failed ({why}); keeping its previous \
                         ideal state"
                    ));
                    previous.cloned()
                }
            }
        };
        let Some(ideal) = ideal else { continue };
        if previous != Some(&ideal) {
            out.ideal_states.insert(name.clone(), ideal.clone());
        }
        let min_active = if snapshot.config.maintenance {
            0
        } else {
            resource.min_active_replicas.unwrap_or(1) as usize
        };
        let target = live_target(&ideal, &live, model, resource.replicas, min_active);
        let current = snapshot.current.get(name).unwrap_or(&no_current);
        let view = ExternalView::aggregate(name, current, |_, _| true);
        if snapshot.external.get(name) != Some(&view) {
            out.external_views.insert(name.clone(), view);
        }
        targets.push((name, resource, model, target, live.len() as u32));
    }

    let empty = BTreeMap::new();
    let no_pending = Vec::new();
    let decided = plan(&PlanInput {
        resources: targets
            .iter()
            .map(|(name, resource, model, target, eligible)| ResourcePlan {
                resource: name.as_str(),
                state_model: model,
                replicas: resource.replicas,
                eligible: *eligible,
                target,
                current: snapshot.current.get(name.as_str()).unwrap_or(&no_current),
                pending: pending.get(name.as_str()).unwrap_or(&no_pending),
                epochs: snapshot.epochs.get(name.as_str()).map_or(&empty, |e| &e.0),
            })
            .collect(),
        sessions: &sessions,
        throttle: snapshot.config.throttle,
    });
    for ((resource, partition), epoch) in decided.epochs {
        let record = out
            .epochs
            .entry(resource.clone())
            .or_insert_with(|| snapshot.epochs.get(&resource).cloned().unwrap_or_default());
        record.0.insert(partition, epoch);
    }
    out.transitions = decided.transitions;
    out
}

/// The planner's target: the ideal state over live instances only. Where a partition has fewer
/// live holders than `min_active` (its other holders are within a delay window), live instances
/// holding the fewest replicas are added; states are then assigned by rank, so a live holder
/// takes over a top state whose holder is gone.
fn live_target(
    ideal: &IdealState,
    live: &[InstanceConfig],
    model: &StateModel,
    replicas: u32,
    min_active: usize,
) -> IdealState {
    let live_ids: BTreeSet<&InstanceId> = live.iter().map(|i| &i.id).collect();
    let mut load: BTreeMap<&InstanceId, usize> = live_ids.iter().map(|&id| (id, 0)).collect();
    let mut lists: Vec<Vec<InstanceId>> = ideal
        .partitions
        .iter()
        .map(|p| {
            p.instances()
                .filter(|id| live_ids.contains(id))
                .cloned()
                .collect()
        })
        .collect();
    for list in &lists {
        for id in list {
            if let Some(n) = load.get_mut(id) {
                *n += 1;
            }
        }
    }
    let wanted = min_active.min(live_ids.len()).min(replicas as usize);
    for list in &mut lists {
        while list.len() < wanted {
            let Some((&id, _)) = load
                .iter()
                .filter(|(id, _)| !list.contains(id))
                .min_by_key(|(id, n)| (**n, **id))
            else {
                break;
            };
            list.push(id.clone());
            *load.get_mut(id).expect("listed") += 1;
        }
    }
    let eligible = live_ids.len() as u32;
    IdealState {
        resource: ideal.resource.clone(),
        state_model: ideal.state_model.clone(),
        mode: ideal.mode,
        partitions: lists
            .into_iter()
            .map(|list| {
                let states = model.states_by_rank(list.len() as u32, replicas, eligible);
                PartitionIntent {
                    replicas: list
                        .into_iter()
                        .zip(states)
                        .map(|(id, s)| (id, model.name_of(s).clone()))
                        .collect(),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_model::{LiveInstance, ResourceConfig};

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for name in ["w1", "w2"] {
            let id = InstanceId::new(name);
            s.instances.insert(id.clone(), InstanceConfig::new(name));
            s.live.insert(
                id.clone(),
                LiveInstance {
                    id,
                    session: SessionId::new(format!("s-{name}")),
                    host: None,
                    started_at_ms: 0,
                    version: "test".into(),
                },
            );
        }
        let resource = ResourceConfig::new("tasks", 4, 2, "MasterSlave");
        s.resources.insert("tasks".into(), resource);
        s.models.insert(
            "MasterSlave".into(),
            StateModel::builtin("MasterSlave").unwrap(),
        );
        s
    }

    #[test]
    fn a_rebalancer_failure_keeps_the_previous_ideal_state_and_goes_on() {
        let mut s = snapshot();
        let first = reconcile(&s, &BTreeMap::new(), 0);
        let ideal = first.ideal_states["tasks"].clone();
        s.ideal.insert("tasks".into(), ideal);
        // An instance the rebalancer refuses (a weight past its maximum).
        s.instances.get_mut(&InstanceId::new("w2")).unwrap().weight = u32::MAX;
        let second = reconcile(&s, &BTreeMap::new(), 0);
        assert!(
            second
                .problems
                .iter()
                .any(|p| p.contains("weight") && p.contains("keeping its previous ideal state")),
            "{:?}",
            second.problems
        );
        assert!(second.ideal_states.is_empty(), "the ideal state was kept");
        assert!(
            !second.transitions.is_empty(),
            "reconciling toward the previous ideal state goes on"
        );
    }
}
