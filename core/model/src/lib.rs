//! # rota-model
//!
//! rota's Helix-style model and the pure decisions made over it; no I/O, no runtime.
//!
//! - The model types: instances, resources, ideal state (intent), current state (observation),
//!   external view, live instances and state-transition messages, with versioned serialized
//!   forms ([`Record`]). Intent ([`IdealState`]) and observation ([`CurrentState`],
//!   [`ExternalView`]) are distinct types on purpose: the controller reconciles one towards the
//!   other from a snapshot and never mistakes a wish for a fact.
//! - [`state_model`]: state model definitions (states, bounds, transitions, next-hop routing), the
//!   built-in OnlineOffline, MasterSlave and LeaderStandby, and validation of user-defined ones.
//! - [`rebalancer`]: a pure, deterministic function from (resource, instances, previous
//!   assignment) to a new assignment that is even, zone-aware and moves as little as possible.
//! - [`planner`]: a pure function from (current states, pending messages, target) to the next
//!   state-transition messages, never exceeding a state's bound and fencing top-state grants
//!   with a per-partition epoch.
//!
//! Layers above: `rota-cluster` (the coordination trait, controller and participants) and
//! `rota-scheduler` (tasks and the worker). Nothing here imports from them.

mod ids;
mod instance;
mod record;
mod resource;
mod status;

pub mod planner;
pub mod rebalancer;
pub mod state_model;

pub use ids::{InstanceId, PartitionId, SessionId, StateName};
pub use instance::{InstanceConfig, LiveInstance};
pub use record::{Record, RecordError};
pub use resource::{RebalanceMode, ResourceConfig, ResourceConfigError};
pub use state_model::{Bound, StateModel, StateModelError, StateModelSpec};
pub use status::{
    CurrentState, Epoch, ExternalView, IdealState, Message, PartitionCurrent, PartitionIntent,
    Transition,
};
