//! State model definitions: which states a replica can be in, how many replicas of a partition
//! may be in each, which transitions are allowed, and how to route from any state to any other.
//!
//! A [`StateModelSpec`] is what users write (in config or code); [`StateModel::compile`] validates
//! it and precomputes the next-hop table. Every model has the two extra states of Helix:
//! [`ERROR`] (entered when a transition handler fails) and [`DROPPED`] (a replica removed from an
//! instance), added when the spec does not declare them.

pub use crate::ids::{DROPPED, ERROR};
use crate::{Record, StateName};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fmt;

// Stored by the controller and operators: versioned like every record.
impl Record for StateModelSpec {
    const KIND: &'static str = "StateModel";
}

/// Upper bound on how many replicas of one partition may be in a state at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// No limit (written `-1`, or omitted).
    Unbounded,
    /// A fixed number (written as the number).
    Count(u32),
    /// The resource's replica count (written `"R"`).
    Replicas,
    /// The number of eligible instances (written `"N"`).
    Eligible,
}

impl Bound {
    /// The bound as a number for a resource with `replicas` replicas over `eligible` instances;
    /// `None` when unbounded.
    pub fn resolve(self, replicas: u32, eligible: u32) -> Option<u32> {
        match self {
            Bound::Unbounded => None,
            Bound::Count(n) => Some(n),
            Bound::Replicas => Some(replicas),
            Bound::Eligible => Some(eligible),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Unbounded => f.write_str("-1"),
            Bound::Count(n) => write!(f, "{n}"),
            Bound::Replicas => f.write_str("R"),
            Bound::Eligible => f.write_str("N"),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BoundRepr {
    Number(i64),
    Text(String),
}

impl Serialize for Bound {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Bound::Unbounded => BoundRepr::Number(-1),
            Bound::Count(n) => BoundRepr::Number(i64::from(*n)),
            Bound::Replicas => BoundRepr::Text("R".into()),
            Bound::Eligible => BoundRepr::Text("N".into()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match BoundRepr::deserialize(deserializer)? {
            BoundRepr::Number(-1) => Ok(Bound::Unbounded),
            BoundRepr::Number(n) => u32::try_from(n).map(Bound::Count).map_err(|_| {
                D::Error::custom(format!(
                    "bound {n} must be -1, a count >= 0, \"R\" or \"N\""
                ))
            }),
            BoundRepr::Text(t) => match t.as_str() {
                "R" => Ok(Bound::Replicas),
                "N" => Ok(Bound::Eligible),
                "-1" => Ok(Bound::Unbounded),
                other => other.parse::<u32>().map(Bound::Count).map_err(|_| {
                    D::Error::custom(format!(
                        "bound {other:?} must be -1, a count >= 0, \"R\" or \"N\""
                    ))
                }),
            },
        }
    }
}

fn unbounded() -> Bound {
    Bound::Unbounded
}

/// One state of a model as written by users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// State name, such as `MASTER`.
    pub name: StateName,
    /// Upper bound per partition.
    #[serde(default = "unbounded")]
    pub bound: Bound,
}

/// One allowed transition as written by users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionSpec {
    /// Source state.
    pub from: StateName,
    /// Destination state.
    pub to: StateName,
    /// Lower runs first when several transitions compete for a throttle slot or a route.
    #[serde(default)]
    pub priority: u32,
}

/// A state model as written by users: states in priority order (highest first), the initial
/// state and the allowed transitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateModelSpec {
    /// Model name, such as `MasterSlave`.
    pub name: String,
    /// States, highest priority first. The states above the initial state are the ones the
    /// rebalancer assigns, in this order; the first one is the top state.
    pub states: Vec<StateSpec>,
    /// The state of a replica that has just been placed on an instance.
    pub initial: StateName,
    /// Allowed transitions.
    pub transitions: Vec<TransitionSpec>,
}

/// Why a state model spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateModelError {
    /// Empty name.
    #[error("state model has an empty name")]
    EmptyName,
    /// No state above the initial state, so nothing can ever be active.
    #[error("state model {model}: no state is listed before the initial state {initial}")]
    NoActiveState {
        /// Model.
        model: String,
        /// Initial state.
        initial: String,
    },
    /// A state is declared twice.
    #[error("state model {model}: state {state} is declared twice")]
    DuplicateState {
        /// Model.
        model: String,
        /// State.
        state: String,
    },
    /// The initial state is not declared.
    #[error("state model {model}: initial state {initial} is not one of its states")]
    MissingInitial {
        /// Model.
        model: String,
        /// Initial state.
        initial: String,
    },
    /// The initial state has a bound, so replicas could not always be placed.
    #[error("state model {model}: initial state {initial} must be unbounded (bound -1)")]
    BoundedInitial {
        /// Model.
        model: String,
        /// Initial state.
        initial: String,
    },
    /// A state other than the terminal ones has bound 0 and could never be entered.
    #[error("state model {model}: state {state} has bound 0 and could never be entered")]
    ZeroBound {
        /// Model.
        model: String,
        /// State.
        state: String,
    },
    /// A transition names an undeclared state.
    #[error("state model {model}: transition {from} -> {to} names undeclared state {state}")]
    UnknownState {
        /// Model.
        model: String,
        /// Source.
        from: String,
        /// Destination.
        to: String,
        /// The undeclared one.
        state: String,
    },
    /// A transition that makes no sense (self loop, out of DROPPED, into ERROR) or is repeated.
    #[error("state model {model}: transition {from} -> {to} is not allowed ({reason})")]
    BadTransition {
        /// Model.
        model: String,
        /// Source.
        from: String,
        /// Destination.
        to: String,
        /// Why.
        reason: &'static str,
    },
    /// A state cannot be reached from the initial state.
    #[error("state model {model}: state {state} cannot be reached from initial state {initial}")]
    Unreachable {
        /// Model.
        model: String,
        /// State.
        state: String,
        /// Initial state.
        initial: String,
    },
    /// A state has no way back to the initial state, so its replicas could never be moved.
    #[error("state model {model}: state {state} has no path back to initial state {initial}")]
    NoWayBack {
        /// Model.
        model: String,
        /// State.
        state: String,
        /// Initial state.
        initial: String,
    },
}

/// A validated state model with its routing table. Cheap to clone behind an `Arc` if needed.
#[derive(Clone, Debug)]
pub struct StateModel {
    spec: StateModelSpec,
    /// State names by index; index order is priority order (ERROR and DROPPED last).
    names: Vec<StateName>,
    bounds: Vec<Bound>,
    index: HashMap<StateName, usize>,
    initial: usize,
    /// Number of assignable states: indices `0..active` are above the initial state.
    active: usize,
    /// `next_hop[from][to]`: the first step on a shortest legal path, `None` if unreachable.
    next_hop: Vec<Vec<Option<usize>>>,
    /// `transition_priority[from][to]` for allowed transitions.
    transition_priority: Vec<Vec<Option<u32>>>,
}

impl StateModel {
    /// Validates a spec and precomputes routing.
    pub fn compile(spec: StateModelSpec) -> Result<Self, StateModelError> {
        let model = spec.name.clone();
        if model.trim().is_empty() {
            return Err(StateModelError::EmptyName);
        }
        let mut names: Vec<StateName> = Vec::new();
        let mut bounds = Vec::new();
        let mut index = HashMap::new();
        let declared = spec
            .states
            .iter()
            .filter(|s| s.name != ERROR && s.name != DROPPED);
        for state in declared {
            if index.insert(state.name.clone(), names.len()).is_some() {
                return Err(StateModelError::DuplicateState {
                    model,
                    state: state.name.to_string(),
                });
            }
            names.push(state.name.clone());
            bounds.push(state.bound);
        }
        for terminal in [ERROR, DROPPED] {
            index.insert(StateName::new(terminal), names.len());
            names.push(StateName::new(terminal));
            bounds.push(Bound::Unbounded);
        }
        let Some(&initial) = index.get(&spec.initial) else {
            return Err(StateModelError::MissingInitial {
                model,
                initial: spec.initial.to_string(),
            });
        };
        let (error, dropped) = (names.len() - 2, names.len() - 1);
        if initial >= error {
            return Err(StateModelError::MissingInitial {
                model,
                initial: spec.initial.to_string(),
            });
        }
        if bounds[initial] != Bound::Unbounded {
            return Err(StateModelError::BoundedInitial {
                model,
                initial: spec.initial.to_string(),
            });
        }
        if initial == 0 {
            return Err(StateModelError::NoActiveState {
                model,
                initial: spec.initial.to_string(),
            });
        }
        if let Some(i) = (0..error).find(|&i| bounds[i] == Bound::Count(0)) {
            return Err(StateModelError::ZeroBound {
                model,
                state: names[i].to_string(),
            });
        }

        let n = names.len();
        let mut priority: Vec<Vec<Option<u32>>> = vec![vec![None; n]; n];
        for t in &spec.transitions {
            let lookup = |state: &StateName| {
                index
                    .get(state)
                    .copied()
                    .ok_or_else(|| StateModelError::UnknownState {
                        model: model.clone(),
                        from: t.from.to_string(),
                        to: t.to.to_string(),
                        state: state.to_string(),
                    })
            };
            let (from, to) = (lookup(&t.from)?, lookup(&t.to)?);
            let bad = |reason| StateModelError::BadTransition {
                model: model.clone(),
                from: t.from.to_string(),
                to: t.to.to_string(),
                reason,
            };
            if from == to {
                return Err(bad("a state cannot transition to itself"));
            }
            if from == dropped {
                return Err(bad("DROPPED is terminal"));
            }
            if to == error {
                return Err(bad("ERROR is entered only when a handler fails"));
            }
            if priority[from][to].replace(t.priority).is_some() {
                return Err(bad("declared twice"));
            }
        }
        // Every model can drop an idle or failed replica.
        let last = spec
            .transitions
            .iter()
            .map(|t| t.priority)
            .max()
            .unwrap_or(0);
        priority[initial][dropped].get_or_insert(last.saturating_add(1));
        priority[error][dropped].get_or_insert(last.saturating_add(1));

        let dist_to = |target: usize| -> Vec<Option<u32>> {
            // Reverse BFS: distance from every state to `target`.
            let mut dist = vec![None; n];
            dist[target] = Some(0);
            let mut queue = VecDeque::from([target]);
            while let Some(to) = queue.pop_front() {
                for from in 0..n {
                    if priority[from][to].is_some() && dist[from].is_none() {
                        dist[from] = dist[to].map(|d| d + 1);
                        queue.push_back(from);
                    }
                }
            }
            dist
        };
        let mut next_hop = vec![vec![None; n]; n];
        for (to, _) in names.iter().enumerate() {
            let dist = dist_to(to);
            for from in 0..n {
                let Some(d) = dist[from] else { continue };
                if d == 0 {
                    continue;
                }
                next_hop[from][to] = (0..n)
                    .filter(|&via| priority[from][via].is_some() && dist[via] == Some(d - 1))
                    .min_by_key(|&via| (priority[from][via], via));
            }
        }
        for state in 0..error {
            if state != initial && next_hop[initial][state].is_none() {
                return Err(StateModelError::Unreachable {
                    model,
                    state: names[state].to_string(),
                    initial: spec.initial.to_string(),
                });
            }
            if state != initial && next_hop[state][initial].is_none() {
                return Err(StateModelError::NoWayBack {
                    model,
                    state: names[state].to_string(),
                    initial: spec.initial.to_string(),
                });
            }
        }
        Ok(Self {
            spec,
            names,
            bounds,
            index,
            initial,
            active: initial,
            next_hop,
            transition_priority: priority,
        })
    }

    /// A built-in model by name: `OnlineOffline`, `MasterSlave` or `LeaderStandby`.
    pub fn builtin(name: &str) -> Option<Self> {
        let spec = match name {
            "OnlineOffline" => two_level(name, "ONLINE", Bound::Replicas, None),
            "MasterSlave" => two_level(name, "MASTER", Bound::Count(1), Some("SLAVE")),
            "LeaderStandby" => two_level(name, "LEADER", Bound::Count(1), Some("STANDBY")),
            _ => return None,
        };
        Some(Self::compile(spec).expect("built-in state models are valid"))
    }

    /// Names of the built-in models.
    pub const BUILTINS: [&'static str; 3] = ["OnlineOffline", "MasterSlave", "LeaderStandby"];

    /// The spec this model was compiled from.
    pub fn spec(&self) -> &StateModelSpec {
        &self.spec
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Number of states, ERROR and DROPPED included.
    pub fn state_count(&self) -> usize {
        self.names.len()
    }

    /// Index of a state; indices are in priority order.
    pub fn index_of(&self, state: &str) -> Option<usize> {
        self.index.get(state).copied()
    }

    /// Name of a state index.
    pub fn name_of(&self, index: usize) -> &StateName {
        &self.names[index]
    }

    /// The initial state.
    pub fn initial(&self) -> &StateName {
        &self.names[self.initial]
    }

    /// Index of the initial state.
    pub fn initial_index(&self) -> usize {
        self.initial
    }

    /// Index of ERROR.
    pub fn error_index(&self) -> usize {
        self.names.len() - 2
    }

    /// Index of DROPPED.
    pub fn dropped_index(&self) -> usize {
        self.names.len() - 1
    }

    /// The highest-priority state, such as MASTER or LEADER. Granting it advances the epoch.
    pub fn top_state(&self) -> &StateName {
        &self.names[0]
    }

    /// The assignable states (above the initial one), top first.
    pub fn active_states(&self) -> &[StateName] {
        &self.names[..self.active]
    }

    /// Whether a state index is an assignable (active) state.
    pub fn is_active(&self, state: usize) -> bool {
        state < self.active
    }

    /// The bound of a state index.
    pub fn bound(&self, state: usize) -> Bound {
        self.bounds[state]
    }

    /// How many replicas of one partition hold the top state when `holders` replicas are placed.
    pub fn top_count(&self, holders: u32, replicas: u32, eligible: u32) -> u32 {
        self.bounds[0]
            .resolve(replicas, eligible)
            .map_or(holders, |b| b.min(holders))
    }

    /// The first step from `from` towards `to`, `None` if `from == to` or unreachable.
    pub fn next_hop(&self, from: usize, to: usize) -> Option<usize> {
        self.next_hop[from][to]
    }

    /// The priority of an allowed transition (lower first), `None` if not allowed.
    pub fn transition_priority(&self, from: usize, to: usize) -> Option<u32> {
        self.transition_priority[from][to]
    }

    /// State indices for `holders` replicas in preference order: each active state in turn takes
    /// up to its bound; replicas beyond every bound stay in the initial state.
    pub fn states_by_rank(&self, holders: u32, replicas: u32, eligible: u32) -> Vec<usize> {
        let mut states = Vec::with_capacity(holders as usize);
        for state in 0..self.active {
            let room = self.bounds[state]
                .resolve(replicas, eligible)
                .unwrap_or(u32::MAX);
            let take = (holders as usize - states.len()).min(room as usize);
            states.extend(std::iter::repeat_n(state, take));
        }
        states.resize(holders as usize, self.initial);
        states
    }
}

/// A model `TOP > [SECOND >] OFFLINE` with the usual transitions, demotions first.
fn two_level(name: &str, top: &str, top_bound: Bound, second: Option<&str>) -> StateModelSpec {
    let state = |name: &str, bound| StateSpec {
        name: StateName::new(name),
        bound,
    };
    let t = |from: &str, to: &str, priority| TransitionSpec {
        from: StateName::new(from),
        to: StateName::new(to),
        priority,
    };
    let mut states = vec![state(top, top_bound)];
    let transitions = match second {
        Some(second) => {
            states.push(state(second, Bound::Replicas));
            vec![
                t(top, second, 1),
                t(second, top, 2),
                t("OFFLINE", second, 3),
                t(second, "OFFLINE", 4),
                t("OFFLINE", DROPPED, 5),
            ]
        }
        None => vec![
            t(top, "OFFLINE", 1),
            t("OFFLINE", top, 2),
            t("OFFLINE", DROPPED, 3),
        ],
    };
    states.push(state("OFFLINE", Bound::Unbounded));
    StateModelSpec {
        name: name.to_owned(),
        states,
        initial: StateName::new("OFFLINE"),
        transitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(m: &StateModel, s: &str) -> usize {
        m.index_of(s).unwrap()
    }

    #[test]
    fn builtins_route_through_intermediate_states() {
        let m = StateModel::builtin("MasterSlave").unwrap();
        assert_eq!(m.top_state(), "MASTER");
        let (master, slave, offline, dropped) = (
            idx(&m, "MASTER"),
            idx(&m, "SLAVE"),
            idx(&m, "OFFLINE"),
            idx(&m, DROPPED),
        );
        assert_eq!(m.next_hop(offline, master), Some(slave));
        assert_eq!(m.next_hop(master, dropped), Some(slave));
        assert_eq!(m.next_hop(slave, dropped), Some(offline));
        assert_eq!(m.next_hop(idx(&m, ERROR), dropped), Some(dropped));
        assert_eq!(m.next_hop(idx(&m, ERROR), master), None);
        assert_eq!(m.states_by_rank(3, 3, 5), vec![master, slave, slave]);
        let oo = StateModel::builtin("OnlineOffline").unwrap();
        assert_eq!(oo.top_count(3, 3, 5), 3);
        assert!(StateModel::builtin("Nope").is_none());
    }

    #[test]
    fn user_models_are_validated_with_clear_errors() {
        let parse = |json: &str| {
            StateModel::compile(serde_json::from_str::<StateModelSpec>(json).unwrap())
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let ok = r#"{"name":"Chain","initial":"OFFLINE",
            "states":[{"name":"PRIMARY","bound":1},{"name":"REPLICA","bound":"R"},{"name":"OFFLINE"}],
            "transitions":[{"from":"OFFLINE","to":"REPLICA"},{"from":"REPLICA","to":"PRIMARY"},
                           {"from":"PRIMARY","to":"REPLICA"},{"from":"REPLICA","to":"OFFLINE"}]}"#;
        assert_eq!(parse(ok), Ok(()));
        let unreachable = ok.replace(r#"{"from":"REPLICA","to":"PRIMARY"},"#, "");
        assert!(
            parse(&unreachable)
                .unwrap_err()
                .contains("PRIMARY cannot be reached")
        );
        let no_way_back = ok.replace(r#",{"from":"REPLICA","to":"OFFLINE"}"#, "");
        assert!(parse(&no_way_back).unwrap_err().contains("no path back"));
        let missing = ok.replace(r#""initial":"OFFLINE""#, r#""initial":"IDLE""#);
        assert!(parse(&missing).unwrap_err().contains("initial state IDLE"));
        let unknown = ok.replace(r#""to":"PRIMARY"}"#, r#""to":"BOSS"}"#);
        assert!(
            parse(&unknown)
                .unwrap_err()
                .contains("undeclared state BOSS")
        );
        let zero = ok.replace(r#""bound":1"#, r#""bound":0"#);
        assert!(parse(&zero).unwrap_err().contains("bound 0"));
        let into_error = ok.replace(
            r#"{"from":"REPLICA","to":"OFFLINE"}"#,
            r#"{"from":"REPLICA","to":"OFFLINE"},{"from":"OFFLINE","to":"ERROR"}"#,
        );
        assert!(
            parse(&into_error)
                .unwrap_err()
                .contains("ERROR is entered only")
        );
        assert!(
            serde_json::from_str::<StateModelSpec>(&ok.replace(r#""bound":1"#, r#""bound":"X""#))
                .unwrap_err()
                .to_string()
                .contains("bound \"X\"")
        );
    }
}
