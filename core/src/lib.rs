//! # rota-core
//!
//! The heart of rota: a Helix-style cluster model and the pure decisions made over it.
//!
//! - [`coordination`]: the coordination-store trait (sessions, ephemeral keys, versions,
//!   transactions, gap-free watches) that ZooKeeper, etcd and memory backends implement.
//! - [`model`]: instances, resources, ideal state (intent), current state (observation), external
//!   view, live instances and state-transition messages, with versioned serialized forms.
//! - [`state_model`]: state model definitions (states, bounds, transitions, next-hop routing), the
//!   built-in OnlineOffline, MasterSlave and LeaderStandby, and validation of user-defined ones.
//! - [`rebalancer`]: a pure, deterministic function from (resource, instances, previous assignment)
//!   to a new assignment that is even, zone-aware and moves as little as possible.
//! - [`planner`]: a pure function from (current states, pending messages, target) to the next
//!   state-transition messages, never exceeding a state's bound and fencing top-state grants with
//!   a per-partition epoch.
//!
//! - [`cluster`]: the controller, participant and admin over the coordination trait; each
//!   reconcile reads a snapshot, decides by the pure functions above, writes what they return.
//! - [`task`]: the scheduler's task model, the task-store trait and the worker that runs tasks.
//! - [`metrics`]: what every role counts, for `/metrics`.
//!
//! The decisions (rebalancer, planner, reconcile) perform no I/O; the controller, participant
//! and worker do theirs only through the coordination and task-store traits, which the
//! backends implement.

pub mod cluster;
pub mod coordination;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod rebalancer;
pub mod state_model;
pub mod task;
pub mod teeth;

pub use model::*;
pub use state_model::{Bound, StateModel, StateModelError, StateModelSpec};
