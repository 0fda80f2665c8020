//! The transition planner: a pure function from (state models, current states, pending
//! messages, targets, throttle limits) to the next state-transition messages to send.
//!
//! Guarantees (checked by the property tests):
//! - **bounds**: a promotion into a state is sent only while the replicas in that state, counted
//!   over current *and* pending states, are below the state's bound. A replica leaving a state
//!   still counts in it until its transition completes, so demotions always finish before the
//!   promotions they make room for are sent (demote before promote). Nothing is ever demoted into
//!   the top state, so the top state's bound (one MASTER, one LEADER) is never exceeded, at any
//!   moment. Demotions are not held back by the bound of the state below (as in Helix): a lower
//!   state may briefly hold one replica more than its bound while two replicas trade places,
//!   which is what keeps such trades from deadlocking;
//! - **routing**: each message is one legal step on a shortest path to the target state;
//! - **one step at a time**: no replica gets a message while one is pending for it;
//! - **throttling**: messages in flight (pending plus new) never exceed the per-instance,
//!   per-resource or cluster limits. Restoring a partition's missing top state goes first, then
//!   demotions, then the rest, by transition priority;
//! - **fencing**: every grant of a top state carries a new epoch, greater than any the partition
//!   has seen (persisted, reported in current states, or carried by pending messages).
//!
//! Replicas in ERROR get no message except ERROR -> DROPPED when they are no longer wanted; a
//! failed replica is otherwise left for an operator's reset.

use crate::state_model::StateModel;
use crate::{CurrentState, Epoch, IdealState, InstanceId, PartitionId, SessionId, Transition};
use std::collections::{BTreeMap, HashMap};

/// Limits on transitions in flight; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Throttle {
    /// Per instance, across all resources.
    pub per_instance: Option<usize>,
    /// Per resource.
    pub per_resource: Option<usize>,
    /// In the whole cluster.
    pub cluster: Option<usize>,
}

/// One resource to plan for.
#[derive(Clone, Copy, Debug)]
pub struct ResourcePlan<'a> {
    /// Resource name.
    pub resource: &'a str,
    /// Its state model.
    pub state_model: &'a StateModel,
    /// Configured replicas (resolves `R` bounds).
    pub replicas: u32,
    /// Eligible instances (resolves `N` bounds).
    pub eligible: u32,
    /// Where replicas should end up.
    pub target: &'a IdealState,
    /// Current states of live sessions only.
    pub current: &'a [CurrentState],
    /// Transitions sent and not yet completed.
    pub pending: &'a [Transition],
    /// The highest epoch persisted per partition.
    pub epochs: &'a BTreeMap<PartitionId, Epoch>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// Resources to plan.
    pub resources: Vec<ResourcePlan<'a>>,
    /// Live sessions: only these instances can receive messages.
    pub sessions: &'a BTreeMap<InstanceId, SessionId>,
    /// Limits on transitions in flight.
    pub throttle: Throttle,
}

/// The planner's decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Transitions to send now.
    pub transitions: Vec<Transition>,
    /// New highest epoch of each partition whose epoch advanced, by (resource, partition).
    /// Persist these together with the messages.
    pub epochs: BTreeMap<(String, PartitionId), Epoch>,
}

/// Why a transition is sent before another when throttled: lower first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Urgency {
    /// Grants the top state to a partition that has none.
    RestoreTop,
    /// Moves a replica to a lower-priority state.
    Demote,
    /// Anything else.
    Other,
}

struct Candidate {
    urgency: Urgency,
    priority: u32,
    resource: usize,
    partition: PartitionId,
    instance: InstanceId,
    from: usize,
    to: usize,
}

/// Per-partition view used while planning.
struct PartitionView {
    /// Instance -> (current state index, pending target state index).
    replicas: BTreeMap<InstanceId, (usize, Option<usize>)>,
    /// Replicas counted per state (current or pending).
    counts: Vec<u32>,
    epoch: Epoch,
}

/// Plans the next transitions. Pure: no I/O, no clock.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut views: Vec<BTreeMap<PartitionId, PartitionView>> = Vec::new();
    let mut candidates = Vec::new();
    let mut in_flight_instance: HashMap<InstanceId, usize> = HashMap::new();
    let mut in_flight_resource = vec![0usize; input.resources.len()];
    for (r, res) in input.resources.iter().enumerate() {
        for t in res.pending {
            *in_flight_instance.entry(t.instance.clone()).or_default() += 1;
            in_flight_resource[r] += 1;
        }
        let partitions = observe(res);
        for (&p, view) in &partitions {
            candidates.extend(candidates_for(res, r, p, view, input.sessions));
        }
        views.push(partitions);
    }
    let mut in_flight_cluster: usize = in_flight_resource.iter().sum();
    candidates.sort_by(|a, b| {
        (a.urgency, a.priority, a.resource, a.partition, &a.instance).cmp(&(
            b.urgency,
            b.priority,
            b.resource,
            b.partition,
            &b.instance,
        ))
    });

    let limit = |limit: Option<usize>, used: usize| limit.is_none_or(|l| used < l);
    let mut out = Plan::default();
    for c in candidates {
        let res = &input.resources[c.resource];
        let model = res.state_model;
        let view = views[c.resource]
            .get_mut(&c.partition)
            .expect("candidates come from views");
        // Promotions respect bounds; demotions never wait for room below, so two replicas trading
        // places can never deadlock, and the top state, which nothing is demoted into, is never
        // over its bound.
        let promotion = c.to < c.from;
        let bound = model.bound(c.to).resolve(res.replicas, res.eligible);
        if promotion && bound.is_some_and(|b| view.counts[c.to] >= b) {
            continue;
        }
        let instance_used = in_flight_instance.get(&c.instance).copied().unwrap_or(0);
        if !limit(input.throttle.per_instance, instance_used)
            || !limit(input.throttle.per_resource, in_flight_resource[c.resource])
            || !limit(input.throttle.cluster, in_flight_cluster)
        {
            continue;
        }
        view.counts[c.to] += 1;
        if let Some(replica) = view.replicas.get_mut(&c.instance) {
            replica.1 = Some(c.to);
        }
        if c.to == 0 {
            view.epoch += 1;
            out.epochs
                .insert((res.resource.to_owned(), c.partition), view.epoch);
        }
        *in_flight_instance.entry(c.instance.clone()).or_default() += 1;
        in_flight_resource[c.resource] += 1;
        in_flight_cluster += 1;
        out.transitions.push(Transition {
            resource: res.resource.to_owned(),
            partition: c.partition,
            instance: c.instance.clone(),
            session: input.sessions[&c.instance].clone(),
            from: model.name_of(c.from).clone(),
            to: model.name_of(c.to).clone(),
            epoch: view.epoch,
        });
    }
    out
}

/// Builds the per-partition view of current and pending states.
fn observe(res: &ResourcePlan<'_>) -> BTreeMap<PartitionId, PartitionView> {
    let model = res.state_model;
    let mut views: BTreeMap<PartitionId, PartitionView> = BTreeMap::new();
    fn view<'v>(
        views: &'v mut BTreeMap<PartitionId, PartitionView>,
        res: &ResourcePlan<'_>,
        p: PartitionId,
    ) -> &'v mut PartitionView {
        views.entry(p).or_insert_with(|| PartitionView {
            replicas: BTreeMap::new(),
            counts: vec![0; res.state_model.state_count()],
            epoch: res.epochs.get(&p).copied().unwrap_or(0),
        })
    }
    for (p, intent) in res.target.partitions.iter().enumerate() {
        let v = view(&mut views, res, p as PartitionId);
        for id in intent.instances() {
            v.replicas.insert(id.clone(), (model.initial_index(), None));
        }
    }
    for cs in res.current {
        for (&p, replica) in &cs.partitions {
            let v = view(&mut views, res, p);
            // An unknown state is treated as ERROR: never promoted, only dropped.
            let state = model
                .index_of(replica.state.as_str())
                .unwrap_or(model.error_index());
            v.replicas.insert(cs.instance.clone(), (state, None));
            v.epoch = v.epoch.max(replica.epoch);
        }
    }
    for t in res.pending {
        let v = view(&mut views, res, t.partition);
        let from = model
            .index_of(t.from.as_str())
            .unwrap_or(model.error_index());
        let to = model.index_of(t.to.as_str()).unwrap_or(model.error_index());
        let entry = v.replicas.entry(t.instance.clone()).or_insert((from, None));
        entry.1 = Some(to);
        v.epoch = v.epoch.max(t.epoch);
    }
    for v in views.values_mut() {
        for &(state, pending) in v.replicas.values() {
            v.counts[state] += 1;
            if let Some(to) = pending.filter(|&to| to != state) {
                v.counts[to] += 1;
            }
        }
    }
    views
}

fn candidates_for(
    res: &ResourcePlan<'_>,
    resource: usize,
    partition: PartitionId,
    view: &PartitionView,
    sessions: &BTreeMap<InstanceId, SessionId>,
) -> Vec<Candidate> {
    let model = res.state_model;
    let intent = res.target.partitions.get(partition as usize);
    let has_top = view.counts[0] > 0;
    let mut out = Vec::new();
    let dropped = model.dropped_index();
    for (instance, &(state, pending)) in &view.replicas {
        if pending.is_some() || !sessions.contains_key(instance) {
            continue;
        }
        let goal = match intent.and_then(|i| i.state_of(instance)) {
            Some(s) => model.index_of(s.as_str()).unwrap_or(dropped),
            None => dropped,
        };
        if state == goal || state == dropped {
            continue;
        }
        if state == model.error_index() && goal != dropped {
            continue; // Needs an operator's reset.
        }
        let Some(next) = model.next_hop(state, goal) else {
            continue;
        };
        let urgency = if next == 0 && !has_top {
            Urgency::RestoreTop
        } else if next > state {
            Urgency::Demote
        } else {
            Urgency::Other
        };
        out.push(Candidate {
            urgency,
            priority: model.transition_priority(state, next).unwrap_or(u32::MAX),
            resource,
            partition,
            instance: instance.clone(),
            from: state,
            to: next,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PartitionCurrent, RebalanceMode, StateName};

    fn replica(state: &str, epoch: Epoch) -> PartitionCurrent {
        PartitionCurrent {
            state: StateName::new(state),
            epoch,
        }
    }

    #[test]
    fn drops_unwanted_replicas_step_by_step() {
        let model = StateModel::builtin("MasterSlave").unwrap();
        let target = IdealState {
            resource: "r".into(),
            state_model: "MasterSlave".into(),
            mode: RebalanceMode::FullAuto,
            partitions: vec![Default::default()],
        };
        let sessions = BTreeMap::from([(InstanceId::new("a"), SessionId::new("s"))]);
        let mut state = "MASTER".to_owned();
        let mut seen = vec![state.clone()];
        for _ in 0..5 {
            let current = vec![CurrentState {
                instance: InstanceId::new("a"),
                session: SessionId::new("s"),
                resource: "r".into(),
                partitions: BTreeMap::from([(0, replica(&state, 1))]),
            }];
            let decided = plan(&PlanInput {
                resources: vec![ResourcePlan {
                    resource: "r",
                    state_model: &model,
                    replicas: 1,
                    eligible: 0,
                    target: &target,
                    current: &current,
                    pending: &[],
                    epochs: &BTreeMap::new(),
                }],
                sessions: &sessions,
                throttle: Throttle::default(),
            });
            let Some(t) = decided.transitions.first() else {
                break;
            };
            state = t.to.to_string();
            seen.push(state.clone());
        }
        assert_eq!(seen, ["MASTER", "SLAVE", "OFFLINE", "DROPPED"]);
    }
}
