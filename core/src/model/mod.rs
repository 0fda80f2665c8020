//! The cluster model: what the controller intends, what participants observe, and the messages
//! between them.
//!
//! Intent ([`IdealState`]) and observation ([`CurrentState`], [`ExternalView`]) are distinct types
//! on purpose: the controller reconciles one towards the other from a snapshot and never mistakes
//! a wish for a fact.

mod ids;
mod instance;
mod record;
mod resource;
mod status;

pub use ids::{InstanceId, PartitionId, SessionId, StateName};
pub use instance::{InstanceConfig, LiveInstance};
pub use record::{Record, RecordError};
pub use resource::{RebalanceMode, ResourceConfig, ResourceConfigError};
pub use status::{
    CurrentState, Epoch, ExternalView, IdealState, Message, PartitionCurrent, PartitionIntent,
    Transition,
};
