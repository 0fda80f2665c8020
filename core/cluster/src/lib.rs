//! # rota-cluster
//!
//! rota's coordination framework, usable on its own: the [`coordination`] trait (sessions,
//! ephemeral keys, versions, transactions, gap-free watches) that ZooKeeper, etcd and memory
//! backends implement, and over it the cluster machinery: key layout, the controller,
//! participants, operator actions, and (for tests) the invariant checker and an in-process
//! cluster harness. Decisions stay pure ([`reconcile`], over `rota-model`'s rebalancer and
//! planner); everything here around them is I/O. The scheduler (`rota-scheduler`) is one user
//! of it: a participant's transition handler; nothing here knows of tasks.

pub mod admin;
#[cfg(any(test, feature = "testing"))]
pub mod checker;
pub mod controller;
pub mod coordination;
#[cfg(any(test, feature = "testing"))]
pub mod harness;
pub mod keys;
pub mod metrics;
pub mod participant;
pub mod reconcile;
pub mod records;
pub mod snapshot;
pub mod teeth;

use crate::coordination::{CoordError, Coordination, Session};
use rota_model::RecordError;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

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

impl ClusterError {
    /// Trying again may succeed: the store could not be reached or failed for a moment.
    pub fn retryable(&self) -> bool {
        matches!(self, ClusterError::Coordination(e) if e.retryable())
    }
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

/// Whether a shutdown signal says stop: it is set, or its sender is gone (then nobody can ever
/// set it, and a loop that waits on `changed()` would spin: it returns at once from then on).
pub fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Opens a session, retrying every second while the store is unreachable; `None` once
/// `shutdown` becomes true.
async fn connect(
    store: &dyn Coordination,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
    who: &str,
) -> Option<Arc<dyn Session>> {
    loop {
        if stopping(shutdown) {
            return None;
        }
        match store.connect(timeout).await {
            Ok(session) => return Some(session),
            Err(e) => {
                tracing::warn!(error = %e, "{who} cannot connect; retrying");
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}
