//! Operator actions on a cluster: resources, state models, instances, maintenance, throttles,
//! and reads of what the controller decided. Configuration is not fenced (it is intent, not a
//! controller decision), but every read-modify-write is a compare-and-swap.

use super::ClusterError;
use super::keys::ClusterKeys;
use super::records::{ClusterConfig, ControllerHistory, LeaderRecord};
use crate::coordination::{CoordError, CreateMode, Session};
use rota_model::planner::Throttle;
use rota_model::state_model::{StateModel, StateModelSpec};
use rota_model::{ExternalView, IdealState, InstanceConfig, InstanceId, Record, ResourceConfig};
use std::sync::Arc;

/// Operator access to one cluster.
#[derive(Clone)]
pub struct Admin {
    session: Arc<dyn Session>,
    keys: ClusterKeys,
}

impl Admin {
    /// Operates on `cluster` through `session`.
    pub fn new(session: Arc<dyn Session>, cluster: &str) -> Self {
        Self {
            session,
            keys: ClusterKeys::new(cluster),
        }
    }

    /// Operates on the cluster whose keys are `keys` through `session`.
    pub fn with_keys(session: Arc<dyn Session>, keys: ClusterKeys) -> Self {
        Self { session, keys }
    }

    /// The cluster's keys.
    pub fn keys(&self) -> &ClusterKeys {
        &self.keys
    }

    /// The session it operates through.
    pub fn session(&self) -> &Arc<dyn Session> {
        &self.session
    }

    async fn get<T: Record>(&self, key: &str) -> Result<Option<(T, u64)>, ClusterError> {
        match self.session.get(key).await? {
            Some(node) => Ok(Some((T::decode(&node.value)?, node.version))),
            None => Ok(None),
        }
    }

    /// Reads, changes and writes a record with compare-and-swap, retrying on conflicts.
    async fn update<T: Record + Default>(
        &self,
        key: &str,
        change: impl Fn(&mut T),
    ) -> Result<(), ClusterError> {
        loop {
            let result = match self.get::<T>(key).await? {
                Some((mut value, version)) => {
                    change(&mut value);
                    self.session
                        .set(key, value.encode(), Some(version))
                        .await
                        .map(|_| ())
                }
                None => {
                    let mut value = T::default();
                    change(&mut value);
                    self.session
                        .create(key, value.encode(), CreateMode::Persistent)
                        .await
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(CoordError::BadVersion { .. } | CoordError::Exists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Registers a user-defined state model (validated first).
    pub async fn add_state_model(&self, spec: StateModelSpec) -> Result<(), ClusterError> {
        let model = StateModel::compile(spec).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        if StateModel::builtin(model.name()).is_some() {
            return Err(ClusterError::Invalid(format!(
                "{} is a built-in state model",
                model.name()
            )));
        }
        let key = self.keys.state_model(model.name());
        let value = model.spec().encode();
        match self
            .session
            .create(&key, value.clone(), CreateMode::Persistent)
            .await
        {
            Err(CoordError::Exists(_)) => {
                self.session.set(&key, value, None).await?;
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Adds a resource. Refuses an invalid one, an unknown state model, and a change of the
    /// partition count of an existing resource.
    pub async fn add_resource(&self, resource: &ResourceConfig) -> Result<(), ClusterError> {
        resource
            .validate()
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let builtin = StateModel::builtin(&resource.state_model).is_some();
        if !builtin
            && self
                .session
                .get(&self.keys.state_model(&resource.state_model))
                .await?
                .is_none()
        {
            return Err(ClusterError::Invalid(format!(
                "resource {}: unknown state model {}",
                resource.name, resource.state_model
            )));
        }
        let key = self.keys.resource_config(&resource.name);
        match self.get::<ResourceConfig>(&key).await? {
            Some((existing, _)) if existing.partitions != resource.partitions => {
                Err(ClusterError::Invalid(format!(
                    "resource {} has {} partitions; changing it to {} is not supported",
                    resource.name, existing.partitions, resource.partitions
                )))
            }
            Some((_, version)) => {
                self.session
                    .set(&key, resource.encode(), Some(version))
                    .await?;
                Ok(())
            }
            None => Ok(self
                .session
                .create(&key, resource.encode(), CreateMode::Persistent)
                .await?),
        }
    }

    /// Adds an instance, or leaves an existing one as it is (`false`).
    pub async fn add_instance(&self, instance: &InstanceConfig) -> Result<bool, ClusterError> {
        let key = self.keys.instance_config(&instance.id);
        match self
            .session
            .create(&key, instance.encode(), CreateMode::Persistent)
            .await
        {
            Ok(()) => Ok(true),
            Err(CoordError::Exists(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Enables or disables an instance: a disabled instance keeps its session but is given no
    /// replicas.
    pub async fn set_enabled(&self, id: &InstanceId, enabled: bool) -> Result<(), ClusterError> {
        let key = self.keys.instance_config(id);
        loop {
            let Some((mut instance, version)) = self.get::<InstanceConfig>(&key).await? else {
                return Err(ClusterError::Invalid(format!("unknown instance {id}")));
            };
            instance.enabled = enabled;
            match self
                .session
                .set(&key, instance.encode(), Some(version))
                .await
            {
                Ok(_) => return Ok(()),
                Err(CoordError::BadVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Turns maintenance mode on or off.
    pub async fn set_maintenance(&self, on: bool) -> Result<(), ClusterError> {
        self.update::<ClusterConfig>(&self.keys.cluster_config(), |c| c.maintenance = on)
            .await
    }

    /// Asks the leading controller to reconcile now: a write under the cluster's root, which
    /// wakes it (`now_ms` is recorded, for people reading the store).
    pub async fn request_rebalance(&self, now_ms: u64) -> Result<(), ClusterError> {
        let key = self.keys.rebalance_request();
        let stamp = now_ms.to_string().into_bytes();
        match self.session.set(&key, stamp.clone(), None).await {
            Err(CoordError::NotFound(_)) => {
                self.session
                    .create(&key, stamp, CreateMode::Persistent)
                    .await?;
                Ok(())
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Sets the limits on transitions in flight.
    pub async fn set_throttle(&self, throttle: Throttle) -> Result<(), ClusterError> {
        self.update::<ClusterConfig>(&self.keys.cluster_config(), |c| c.throttle = throttle)
            .await
    }

    /// The external view of a resource.
    pub async fn external_view(
        &self,
        resource: &str,
    ) -> Result<Option<ExternalView>, ClusterError> {
        Ok(self
            .get(&self.keys.external_view(resource))
            .await?
            .map(|(v, _)| v))
    }

    /// The ideal state of a resource.
    pub async fn ideal_state(&self, resource: &str) -> Result<Option<IdealState>, ClusterError> {
        Ok(self
            .get(&self.keys.ideal_state(resource))
            .await?
            .map(|(v, _)| v))
    }

    /// The current leader.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>, ClusterError> {
        Ok(self.get(&self.keys.leader()).await?.map(|(v, _)| v))
    }

    /// Leadership history.
    pub async fn history(&self) -> Result<ControllerHistory, ClusterError> {
        Ok(self
            .get(&self.keys.history())
            .await?
            .map(|(v, _)| v)
            .unwrap_or_default())
    }
}
