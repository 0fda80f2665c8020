//! Cluster-level records kept in the coordination store besides the model types.

use rota_model::planner::Throttle;
use rota_model::{Epoch, InstanceId, PartitionId, Record, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Cluster-wide settings, changed by operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// In maintenance, the controller moves nothing except to restore lost top states.
    #[serde(default)]
    pub maintenance: bool,
    /// Limits on transitions in flight.
    #[serde(default)]
    pub throttle: Throttle,
}

/// The highest epoch granted per partition of one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionEpochs(pub BTreeMap<PartitionId, Epoch>);

/// Who leads the controllers (stored under the ephemeral leader key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderRecord {
    /// Name of the controller process.
    pub controller: String,
    /// Its session.
    pub session: SessionId,
    /// Its leader epoch.
    pub epoch: u64,
}

/// One change of leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadershipChange {
    /// Leader epoch that began.
    pub epoch: u64,
    /// Controller that won it.
    pub controller: String,
    /// Milliseconds since the Unix epoch, on the winner's clock.
    pub at_ms: u64,
}

/// The most recent leadership changes, newest last (bounded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerHistory {
    /// Changes, oldest first.
    pub changes: Vec<LeadershipChange>,
}

impl ControllerHistory {
    /// How many changes are kept.
    pub const KEEP: usize = 100;

    /// Appends a change, dropping the oldest beyond [`Self::KEEP`].
    pub fn push(&mut self, change: LeadershipChange) {
        self.changes.push(change);
        let excess = self.changes.len().saturating_sub(Self::KEEP);
        self.changes.drain(..excess);
    }
}

/// What a live instance offers (for the `tasks` resource: the handlers its worker can run),
/// under an ephemeral key of its session beside its live-instance key, so that readers that do
/// not know this record (earlier builds) are unaffected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCapabilities {
    /// Which instance.
    pub id: InstanceId,
    /// Names it offers, sorted.
    pub handlers: Vec<String>,
}

/// A message id: `{leader epoch}-{sequence}`, unique across leaders and sorted by age.
pub fn message_id(leader_epoch: u64, sequence: u64) -> String {
    format!("{leader_epoch:010}-{sequence:012}")
}

impl Record for ClusterConfig {
    const KIND: &'static str = "ClusterConfig";
}
impl Record for PartitionEpochs {
    const KIND: &'static str = "PartitionEpochs";
}
impl Record for LeaderRecord {
    const KIND: &'static str = "LeaderRecord";
}
impl Record for ControllerHistory {
    const KIND: &'static str = "ControllerHistory";
}
impl Record for InstanceCapabilities {
    const KIND: &'static str = "InstanceCapabilities";
}
