//! Where everything of one cluster lives in the coordination store.
//!
//! ```text
//! {root}/CONFIGS/CLUSTER                          ClusterConfig
//! {root}/CONFIGS/INSTANCES/{instance}             InstanceConfig
//! {root}/CONFIGS/RESOURCES/{resource}             ResourceConfig
//! {root}/STATEMODELS/{name}                       StateModelSpec (user-defined models)
//! {root}/LIVEINSTANCES/{instance}                 LiveInstance (ephemeral)
//! {root}/INSTANCES/{instance}/CURRENTSTATES/{session}/{resource}   CurrentState
//! {root}/INSTANCES/{instance}/MESSAGES/{id}       Message
//! {root}/IDEALSTATES/{resource}                   IdealState
//! {root}/EXTERNALVIEW/{resource}                  ExternalView
//! {root}/EPOCHS/{resource}                        PartitionEpochs
//! {root}/CONTROLLER/LEADER                        LeaderRecord (ephemeral)
//! {root}/CONTROLLER/EPOCH                         leader epoch counter; its version fences
//! {root}/CONTROLLER/HISTORY                       ControllerHistory
//! {root}/CONTROLLER/REBALANCE                     when an operator last asked for a reconcile
//! ```

use rota_model::{InstanceId, SessionId};

/// Key builder for one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterKeys {
    root: String,
}

impl ClusterKeys {
    /// Keys under `/rota/{cluster}`.
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("/rota/{cluster}"),
        }
    }

    /// The cluster's root key.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Cluster-wide settings.
    pub fn cluster_config(&self) -> String {
        format!("{}/CONFIGS/CLUSTER", self.root)
    }

    /// Parent of instance configs.
    pub fn instance_configs(&self) -> String {
        format!("{}/CONFIGS/INSTANCES", self.root)
    }

    /// One instance's config.
    pub fn instance_config(&self, id: &InstanceId) -> String {
        format!("{}/{id}", self.instance_configs())
    }

    /// Parent of resource configs.
    pub fn resource_configs(&self) -> String {
        format!("{}/CONFIGS/RESOURCES", self.root)
    }

    /// One resource's config.
    pub fn resource_config(&self, resource: &str) -> String {
        format!("{}/{resource}", self.resource_configs())
    }

    /// Parent of user-defined state models.
    pub fn state_models(&self) -> String {
        format!("{}/STATEMODELS", self.root)
    }

    /// One user-defined state model.
    pub fn state_model(&self, name: &str) -> String {
        format!("{}/{name}", self.state_models())
    }

    /// Parent of live instances.
    pub fn live_instances(&self) -> String {
        format!("{}/LIVEINSTANCES", self.root)
    }

    /// One live instance (ephemeral).
    pub fn live_instance(&self, id: &InstanceId) -> String {
        format!("{}/{id}", self.live_instances())
    }

    /// Everything of one instance.
    pub fn instance(&self, id: &InstanceId) -> String {
        format!("{}/INSTANCES/{id}", self.root)
    }

    /// Parent of an instance's current states, by session.
    pub fn current_states(&self, id: &InstanceId) -> String {
        format!("{}/CURRENTSTATES", self.instance(id))
    }

    /// One session's current state of one resource.
    pub fn current_state(&self, id: &InstanceId, session: &SessionId, resource: &str) -> String {
        format!("{}/{session}/{resource}", self.current_states(id))
    }

    /// Parent of an instance's messages.
    pub fn messages(&self, id: &InstanceId) -> String {
        format!("{}/MESSAGES", self.instance(id))
    }

    /// One message.
    pub fn message(&self, id: &InstanceId, message: &str) -> String {
        format!("{}/{message}", self.messages(id))
    }

    /// Parent of ideal states.
    pub fn ideal_states(&self) -> String {
        format!("{}/IDEALSTATES", self.root)
    }

    /// One resource's ideal state.
    pub fn ideal_state(&self, resource: &str) -> String {
        format!("{}/{resource}", self.ideal_states())
    }

    /// One resource's external view.
    pub fn external_view(&self, resource: &str) -> String {
        format!("{}/EXTERNALVIEW/{resource}", self.root)
    }

    /// One resource's partition epochs.
    pub fn epochs(&self, resource: &str) -> String {
        format!("{}/EPOCHS/{resource}", self.root)
    }

    /// The leader's ephemeral key.
    pub fn leader(&self) -> String {
        format!("{}/CONTROLLER/LEADER", self.root)
    }

    /// The leader epoch counter.
    pub fn leader_epoch(&self) -> String {
        format!("{}/CONTROLLER/EPOCH", self.root)
    }

    /// Leadership history.
    pub fn history(&self) -> String {
        format!("{}/CONTROLLER/HISTORY", self.root)
    }

    /// Written by an operator who asks for a reconcile now (any change under the root wakes
    /// the leading controller).
    pub fn rebalance_request(&self) -> String {
        format!("{}/CONTROLLER/REBALANCE", self.root)
    }

    /// What live instances offer (ephemeral, one per instance).
    pub fn capabilities(&self) -> String {
        format!("{}/CAPABILITIES", self.root)
    }

    /// What one live instance offers.
    pub fn capability(&self, id: &InstanceId) -> String {
        format!("{}/CAPABILITIES/{id}", self.root)
    }
}
