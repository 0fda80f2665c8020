//! Property tests of the transition planner: a simulated cluster applies the planned messages in
//! random order and at random times, and at every step no partition has more top-state holders
//! than the bound (counting current and pending states), every promotion goes into a state with
//! room, messages follow legal next hops, throttles hold, top
//! grants carry strictly increasing epochs, and the cluster converges to the target.

mod common;

use proptest::prelude::*;
use rota_model::planner::{PlanInput, ResourcePlan, Throttle, plan};
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::{
    CurrentState, Epoch, IdealState, InstanceConfig, InstanceId, PartitionCurrent, PartitionId,
    ResourceConfig, SessionId, StateModel, Transition,
};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
struct Setup {
    model: &'static str,
    partitions: u32,
    replicas: u32,
    before: Vec<bool>,
    after: Vec<bool>,
    throttle: Throttle,
    /// Per round, which pending transitions complete (by position, cycled).
    completions: Vec<Vec<bool>>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec!["MasterSlave", "LeaderStandby", "OnlineOffline"]),
        1u32..=6,
        1u32..=3,
        prop::collection::vec(any::<bool>(), 5),
        prop::collection::vec(any::<bool>(), 5),
        (
            prop::option::of(1usize..4),
            prop::option::of(1usize..6),
            prop::option::of(1usize..10),
        ),
        prop::collection::vec(prop::collection::vec(any::<bool>(), 1..8), 1..40),
    )
        .prop_map(
            |(model, partitions, replicas, before, after, (i, r, c), completions)| Setup {
                model,
                partitions,
                replicas,
                before,
                after,
                throttle: Throttle {
                    per_instance: i,
                    per_resource: r,
                    cluster: c,
                },
                completions,
            },
        )
}

const RESOURCE: &str = "res";

fn instances(mask: &[bool]) -> Vec<InstanceConfig> {
    mask.iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(i, _)| InstanceConfig::new(format!("i{i}")))
        .collect()
}

struct Sim {
    model: StateModel,
    replicas: u32,
    eligible: u32,
    /// instance -> partition -> replica
    current: BTreeMap<InstanceId, BTreeMap<PartitionId, PartitionCurrent>>,
    pending: Vec<Transition>,
    epochs: BTreeMap<PartitionId, Epoch>,
    sessions: BTreeMap<InstanceId, SessionId>,
    /// Highest epoch granted per partition so far.
    granted: HashMap<PartitionId, Epoch>,
}

impl Sim {
    fn current_states(&self) -> Vec<CurrentState> {
        self.current
            .iter()
            .map(|(id, parts)| CurrentState {
                instance: id.clone(),
                session: self.sessions[id].clone(),
                resource: RESOURCE.into(),
                partitions: parts.clone(),
            })
            .collect()
    }

    fn step(&mut self, target: &IdealState, throttle: Throttle) -> Result<usize, TestCaseError> {
        let current = self.current_states();
        let decided = plan(&PlanInput {
            resources: vec![ResourcePlan {
                resource: RESOURCE,
                state_model: &self.model,
                replicas: self.replicas,
                eligible: self.eligible,
                target,
                current: &current,
                pending: &self.pending,
                epochs: &self.epochs,
            }],
            sessions: &self.sessions,
            throttle,
        });
        let initial = self.model.initial().clone();
        for t in &decided.transitions {
            prop_assert!(
                !self
                    .pending
                    .iter()
                    .any(|p| p.partition == t.partition && p.instance == t.instance),
                "second message for a replica in flight: {:?}",
                t
            );
            let state = self
                .current
                .get(&t.instance)
                .and_then(|m| m.get(&t.partition))
                .map_or(initial.clone(), |r| r.state.clone());
            prop_assert_eq!(&t.from, &state);
            let (from, to) = (
                self.model.index_of(t.from.as_str()).unwrap(),
                self.model.index_of(t.to.as_str()).unwrap(),
            );
            prop_assert!(
                self.model.transition_priority(from, to).is_some(),
                "illegal {:?}",
                t
            );
            if to < from {
                // A promotion: the destination had room, counting current and pending states.
                let held = self
                    .current
                    .values()
                    .filter(|m| m.get(&t.partition).is_some_and(|r| r.state == t.to))
                    .count()
                    + self
                        .pending
                        .iter()
                        .chain(&decided.transitions)
                        .take_while(|x| *x != t)
                        .filter(|x| x.partition == t.partition && x.to == t.to)
                        .count();
                if let Some(bound) = self.model.bound(to).resolve(self.replicas, self.eligible) {
                    prop_assert!(
                        (held as u32) < bound,
                        "promotion {:?} into a full state ({} held)",
                        t,
                        held
                    );
                }
            }
            if to == 0 {
                let last = self.granted.get(&t.partition).copied().unwrap_or(0);
                prop_assert!(
                    t.epoch > last,
                    "top grant epoch {} not above {}",
                    t.epoch,
                    last
                );
                self.granted.insert(t.partition, t.epoch);
            }
        }
        for ((_, p), e) in &decided.epochs {
            self.epochs.insert(*p, *e);
        }
        let sent = decided.transitions.len();
        self.pending.extend(decided.transitions);
        self.check_bounds(true)?;
        let per_instance =
            self.pending
                .iter()
                .fold(HashMap::new(), |mut m: HashMap<&InstanceId, usize>, t| {
                    *m.entry(&t.instance).or_default() += 1;
                    m
                });
        if let Some(limit) = throttle.per_instance {
            prop_assert!(
                per_instance.values().all(|&n| n <= limit),
                "per-instance throttle"
            );
        }
        for limit in [throttle.per_resource, throttle.cluster]
            .into_iter()
            .flatten()
        {
            prop_assert!(self.pending.len() <= limit, "resource/cluster throttle");
        }
        Ok(sent)
    }

    fn complete(&mut self, which: &[bool]) -> Result<(), TestCaseError> {
        let mut keep = Vec::new();
        for (k, t) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if !which[k % which.len()] {
                keep.push(t);
                continue;
            }
            let parts = self.current.entry(t.instance.clone()).or_default();
            if t.to == rota_model::StateName::dropped() {
                parts.remove(&t.partition);
            } else {
                parts.insert(
                    t.partition,
                    PartitionCurrent {
                        state: t.to.clone(),
                        epoch: t.epoch,
                    },
                );
            }
        }
        self.pending = keep;
        self.check_bounds(false)
    }

    /// The top state's bound, over current states only or current plus pending.
    fn check_bounds(&self, with_pending: bool) -> Result<(), TestCaseError> {
        let mut counts: HashMap<(PartitionId, String), u32> = HashMap::new();
        for parts in self.current.values() {
            for (p, r) in parts {
                *counts.entry((*p, r.state.to_string())).or_default() += 1;
            }
        }
        if with_pending {
            for t in &self.pending {
                *counts.entry((t.partition, t.to.to_string())).or_default() += 1;
            }
        }
        for ((p, state), n) in counts {
            let index = self.model.index_of(&state).unwrap();
            if index != 0 {
                continue; // Lower states are checked at each promotion (see `step`).
            }
            if let Some(bound) = self
                .model
                .bound(index)
                .resolve(self.replicas, self.eligible)
            {
                prop_assert!(
                    n <= bound,
                    "partition {} has {} in {} (bound {})",
                    p,
                    n,
                    state,
                    bound
                );
            }
        }
        Ok(())
    }

    fn matches(&self, target: &IdealState) -> bool {
        let mut want: BTreeMap<InstanceId, BTreeMap<PartitionId, String>> = BTreeMap::new();
        for (p, intent) in target.partitions.iter().enumerate() {
            for (id, s) in &intent.replicas {
                want.entry(id.clone())
                    .or_default()
                    .insert(p as PartitionId, s.to_string());
            }
        }
        let have: BTreeMap<InstanceId, BTreeMap<PartitionId, String>> = self
            .current
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.iter().map(|(p, r)| (*p, r.state.to_string())).collect(),
                )
            })
            .collect();
        have == want
    }
}

fn converged_on(
    model: &StateModel,
    ideal: &IdealState,
) -> BTreeMap<InstanceId, BTreeMap<PartitionId, PartitionCurrent>> {
    let mut out: BTreeMap<InstanceId, BTreeMap<PartitionId, PartitionCurrent>> = BTreeMap::new();
    for (p, intent) in ideal.partitions.iter().enumerate() {
        for (id, s) in &intent.replicas {
            let epoch = u64::from(s == model.top_state());
            out.entry(id.clone()).or_default().insert(
                p as PartitionId,
                PartitionCurrent {
                    state: s.clone(),
                    epoch,
                },
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(common::config(0x0070_a7e5))]

    #[test]
    fn plans_are_safe_and_converge(s in setup()) {
        let model = StateModel::builtin(s.model).unwrap();
        let resource = ResourceConfig::new(RESOURCE, s.partitions, s.replicas, s.model);
        let assign = |mask: &[bool], previous: Option<&IdealState>| rebalance(&RebalanceInput {
            resource: &resource, state_model: &model, instances: &instances(mask), previous,
        }).unwrap();
        let old = assign(&s.before, None);
        let target = assign(&s.after, Some(&old));
        // Every instance that ever appears has a live session.
        let all: Vec<bool> = s.before.iter().zip(&s.after).map(|(a, b)| *a || *b).collect();
        let mut sim = Sim {
            replicas: s.replicas,
            // Bounds resolve against the instances eligible for the target.
            eligible: s.after.iter().filter(|b| **b).count() as u32,
            current: converged_on(&model, &old),
            model,
            pending: Vec::new(),
            epochs: BTreeMap::new(),
            sessions: instances(&all).into_iter().map(|i| (i.id.clone(), SessionId::new(format!("s-{}", i.id)))).collect(),
            granted: HashMap::new(),
        };
        for (p, intent) in old.partitions.iter().enumerate() {
            if intent.replicas.iter().any(|(_, st)| st == sim.model.top_state()) {
                sim.epochs.insert(p as PartitionId, 1);
                sim.granted.insert(p as PartitionId, 1);
            }
        }
        // Random completions while planning.
        for which in &s.completions {
            sim.step(&target, s.throttle)?;
            sim.complete(which)?;
        }
        // Then everything completes each round: the cluster must converge.
        let mut rounds = 0;
        loop {
            let sent = sim.step(&target, s.throttle)?;
            let in_flight = sim.pending.len();
            sim.complete(&[true])?;
            if sent == 0 && in_flight == 0 {
                break;
            }
            rounds += 1;
            prop_assert!(rounds < 200, "no convergence after 200 rounds");
        }
        prop_assert!(sim.matches(&target), "converged state differs from target");
    }
}
