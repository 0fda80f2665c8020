//! Intent, observation and the messages between them.
//!
//! - [`IdealState`]: where the controller wants every replica and in which state (intent).
//! - [`CurrentState`]: what one participant session reports it holds (observation).
//! - [`ExternalView`]: the aggregate of all live current states, for readers.
//! - [`Message`]: a request to one participant session to move one replica one step.

use super::ids::{InstanceId, PartitionId, SessionId, StateName};
use super::resource::RebalanceMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-partition fencing token. It increases every time a top state (MASTER, LEADER, ONLINE) is
/// granted, so that storage can refuse the writes of a holder that has been superseded.
pub type Epoch = u64;

/// The intended replicas of one partition, most preferred first; the first replicas hold the
/// top state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionIntent {
    /// `(instance, target state)` in preference order.
    pub replicas: Vec<(InstanceId, StateName)>,
}

impl PartitionIntent {
    /// The target state of `instance`, if it is meant to hold a replica.
    pub fn state_of(&self, instance: &InstanceId) -> Option<&StateName> {
        self.replicas
            .iter()
            .find(|(id, _)| id == instance)
            .map(|(_, state)| state)
    }

    /// The instances in preference order.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceId> {
        self.replicas.iter().map(|(id, _)| id)
    }
}

/// The controller's intent for one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdealState {
    /// Resource name.
    pub resource: String,
    /// State model the states belong to.
    pub state_model: String,
    /// How this intent was produced.
    pub mode: RebalanceMode,
    /// Intent per partition, indexed by partition id.
    pub partitions: Vec<PartitionIntent>,
}

impl IdealState {
    /// The instances of each partition in preference order, as the rebalancer takes them back as
    /// its previous assignment.
    pub fn preference_lists(&self) -> Vec<Vec<InstanceId>> {
        self.partitions
            .iter()
            .map(|p| p.instances().cloned().collect())
            .collect()
    }
}

/// What one participant reports for one partition replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionCurrent {
    /// The state the replica is in now.
    pub state: StateName,
    /// The epoch of the last transition the participant applied for this partition.
    pub epoch: Epoch,
}

/// What one participant session holds of one resource. Written only by that participant, and
/// only meaningful while its session is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentState {
    /// Reporting instance.
    pub instance: InstanceId,
    /// Reporting session; a current state of an older session is stale.
    pub session: SessionId,
    /// Resource name.
    pub resource: String,
    /// Replicas held, by partition. Replicas in the initial state may be omitted.
    pub partitions: BTreeMap<PartitionId, PartitionCurrent>,
}

/// The observed placement of a resource: the union of the live participants' current states.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalView {
    /// Resource name.
    pub resource: String,
    /// Per partition, each holder's state.
    pub partitions: BTreeMap<PartitionId, BTreeMap<InstanceId, StateName>>,
}

impl ExternalView {
    /// Aggregates the current states of live sessions; `is_live(instance, session)` says which
    /// sessions count.
    pub fn aggregate<'a>(
        resource: &str,
        current: impl IntoIterator<Item = &'a CurrentState>,
        is_live: impl Fn(&InstanceId, &SessionId) -> bool,
    ) -> Self {
        let mut partitions: BTreeMap<PartitionId, BTreeMap<InstanceId, StateName>> =
            BTreeMap::new();
        for cs in current {
            if cs.resource != resource || !is_live(&cs.instance, &cs.session) {
                continue;
            }
            for (&partition, replica) in &cs.partitions {
                partitions
                    .entry(partition)
                    .or_default()
                    .insert(cs.instance.clone(), replica.state.clone());
            }
        }
        Self {
            resource: resource.to_owned(),
            partitions,
        }
    }
}

/// One step of one replica: what the planner decides and a message carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// Resource name.
    pub resource: String,
    /// Partition index.
    pub partition: PartitionId,
    /// Target instance.
    pub instance: InstanceId,
    /// Target session: a participant discards a message for another session.
    pub session: SessionId,
    /// State the replica must be in for the transition to apply.
    pub from: StateName,
    /// State it moves to.
    pub to: StateName,
    /// Partition epoch the transition belongs to; a grant of a top state carries a new, higher one.
    pub epoch: Epoch,
}

/// A state-transition request from the controller to one participant session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id, chosen by the controller.
    pub id: String,
    /// Leader epoch of the controller that sent it; participants ignore older leaders.
    pub leader_epoch: u64,
    /// What to do.
    #[serde(flatten)]
    pub transition: Transition,
}
