//! Resources: a named, partitioned, replicated unit of work with a state model.

use super::ids::{InstanceId, PartitionId, StateName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who decides placement and states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RebalanceMode {
    /// The rebalancer chooses the instances and their states.
    #[default]
    FullAuto,
    /// The user gives a preference list per partition; the rebalancer assigns states along it.
    SemiAuto,
    /// The user gives the full instance -> state map per partition; the controller only orders
    /// the transitions.
    Customized,
}

/// Configuration of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Resource name, unique in the cluster.
    pub name: String,
    /// Number of partitions; partition ids are `0..partitions`.
    pub partitions: u32,
    /// Replicas per partition (capped by the number of eligible instances).
    pub replicas: u32,
    /// Name of the state model (a built-in or one registered in the cluster).
    pub state_model: String,
    /// Who decides placement.
    #[serde(default)]
    pub rebalance_mode: RebalanceMode,
    /// After an instance goes away, wait this long before moving its replicas elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_window_ms: Option<u64>,
    /// During the delay window, keep at least this many replicas of each partition active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_active_replicas: Option<u32>,
    /// Only instances carrying this tag host the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_tag: Option<String>,
    /// SEMI_AUTO: the preference list of each partition, most preferred first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub preference_lists: BTreeMap<PartitionId, Vec<InstanceId>>,
    /// CUSTOMIZED: the state of each instance for each partition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_assignment: BTreeMap<PartitionId, BTreeMap<InstanceId, StateName>>,
}

/// A resource configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceConfigError {
    /// The name is empty or has characters that do not fit in a coordination key.
    #[error("resource name {0:?} must be 1-128 characters of [A-Za-z0-9_.-]")]
    BadName(String),
    /// No partitions.
    #[error("resource {0}: partitions must be at least 1")]
    NoPartitions(String),
    /// No replicas.
    #[error("resource {0}: replicas must be at least 1")]
    NoReplicas(String),
    /// A user-given list or map names a partition that does not exist.
    #[error("resource {resource}: partition {partition} is outside 0..{partitions}")]
    UnknownPartition {
        /// Resource name.
        resource: String,
        /// The offending partition.
        partition: PartitionId,
        /// Partition count.
        partitions: u32,
    },
}

impl ResourceConfig {
    /// A FULL_AUTO resource with no delay window.
    pub fn new(
        name: impl Into<String>,
        partitions: u32,
        replicas: u32,
        state_model: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            partitions,
            replicas,
            state_model: state_model.into(),
            rebalance_mode: RebalanceMode::FullAuto,
            delay_window_ms: None,
            min_active_replicas: None,
            instance_tag: None,
            preference_lists: BTreeMap::new(),
            custom_assignment: BTreeMap::new(),
        }
    }

    /// Checks what can be checked without the rest of the cluster.
    pub fn validate(&self) -> Result<(), ResourceConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(ResourceConfigError::BadName(self.name.clone()));
        }
        if self.partitions == 0 {
            return Err(ResourceConfigError::NoPartitions(self.name.clone()));
        }
        if self.replicas == 0 {
            return Err(ResourceConfigError::NoReplicas(self.name.clone()));
        }
        let user_partitions = self
            .preference_lists
            .keys()
            .chain(self.custom_assignment.keys());
        for &partition in user_partitions {
            if partition >= self.partitions {
                return Err(ResourceConfigError::UnknownPartition {
                    resource: self.name.clone(),
                    partition,
                    partitions: self.partitions,
                });
            }
        }
        Ok(())
    }

    /// The display name of a partition, `<resource>_<index>` as in Helix.
    pub fn partition_name(&self, partition: PartitionId) -> String {
        format!("{}_{}", self.name, partition)
    }
}
