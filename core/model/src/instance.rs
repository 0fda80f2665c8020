//! Participants: their configuration (set by operators, persistent) and their liveness
//! (published by the participant itself, ephemeral).

use super::ids::{InstanceId, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Default placement weight of an instance. Weights are relative: an instance of weight 200
/// receives twice the replicas of one of weight 100.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Configuration of one participant instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Stable identity.
    pub id: InstanceId,
    /// Host (or host:port) where the instance runs, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Fault zone (rack, availability zone). Replicas of one partition are kept in distinct zones.
    /// An instance without a zone is a zone of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Relative placement weight (capacity); 0 means the instance takes no replicas.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A disabled instance keeps its session but is given no replicas.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Free-form tags; a resource may restrict itself to instances carrying a tag.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_enabled() -> bool {
    true
}

impl InstanceConfig {
    /// An enabled instance of default weight, without zone, host or tags.
    pub fn new(id: impl Into<InstanceId>) -> Self {
        Self {
            id: id.into(),
            host: None,
            zone: None,
            weight: DEFAULT_WEIGHT,
            enabled: true,
            tags: BTreeSet::new(),
        }
    }

    /// Sets the fault zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the placement weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The zone used for placement: the configured one, or the instance's own id.
    pub fn effective_zone(&self) -> &str {
        self.zone.as_deref().unwrap_or(self.id.as_str())
    }
}

/// A participant that is connected right now. Stored under an ephemeral key tied to its
/// coordination session, so it disappears when the session ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveInstance {
    /// Which instance.
    pub id: InstanceId,
    /// The session that owns the ephemeral key; messages carry it as their target.
    pub session: SessionId,
    /// Host of the process, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Milliseconds since the Unix epoch when this session registered.
    pub started_at_ms: u64,
    /// Version of the rota build the participant runs.
    pub version: String,
}
