//! The cluster machinery over a [`Coordination`](crate::coordination::Coordination) store: key
//! layout, the controller, participants, operator actions, and (for tests) the invariant
//! checker. Decisions stay pure ([`reconcile`]); everything here around them is I/O.

pub mod admin;
#[cfg(any(test, feature = "testing"))]
pub mod checker;
pub mod controller;
#[cfg(any(test, feature = "testing"))]
pub mod harness;
pub mod keys;
pub mod participant;
pub mod reconcile;
pub mod records;
pub mod snapshot;

use crate::coordination::CoordError;
use crate::model::RecordError;
use std::sync::OnceLock;

/// Errors of the cluster machinery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The coordination store refused or failed a call.
    #[error(transparent)]
    Coordination(#[from] CoordError),
    /// A newer leader has been elected: this controller's writes are refused.
    #[error("controller with leader epoch {epoch} was deposed; its writes are refused")]
    Deposed {
        /// The deposed leader's epoch.
        epoch: u64,
    },
    /// A stored record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An operator request that cannot be carried out.
    #[error("{0}")]
    Invalid(String),
}

/// Wall-clock milliseconds since the Unix epoch, for records people read.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Monotonic milliseconds on tokio's clock (so tests can pause and advance time), for measuring
/// windows inside one process.
pub fn monotonic_ms() -> u64 {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(base)
        .as_millis() as u64
}
