//! Reading one consistent-enough picture of a cluster from the coordination store.
//!
//! The controller re-reads everything on every reconcile rather than patching a cache from
//! watch events: simpler, and immune to missed or reordered events. Watches only say *when* to
//! read. A record that cannot be decoded is reported and skipped, never fatal.

use super::keys::ClusterKeys;
use super::records::{ClusterConfig, PartitionEpochs};
use crate::coordination::{CoordError, Session};
use rota_model::state_model::{StateModel, StateModelSpec};
use rota_model::{
    CurrentState, ExternalView, IdealState, InstanceConfig, InstanceId, LiveInstance, Message,
    Record, ResourceConfig,
};
use std::collections::BTreeMap;

/// Everything the controller decides from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Cluster-wide settings.
    pub config: ClusterConfig,
    /// Configured instances.
    pub instances: BTreeMap<InstanceId, InstanceConfig>,
    /// Live instances (their sessions).
    pub live: BTreeMap<InstanceId, LiveInstance>,
    /// Resources.
    pub resources: BTreeMap<String, ResourceConfig>,
    /// Built-in and user-defined state models.
    pub models: BTreeMap<String, StateModel>,
    /// Current states of live sessions only, by resource.
    pub current: BTreeMap<String, Vec<CurrentState>>,
    /// Messages in flight, with their keys.
    pub messages: Vec<(String, Message)>,
    /// Ideal states.
    pub ideal: BTreeMap<String, IdealState>,
    /// Partition epochs.
    pub epochs: BTreeMap<String, PartitionEpochs>,
    /// External views as last written.
    pub external: BTreeMap<String, ExternalView>,
    /// Records that could not be read, as messages for the log.
    pub problems: Vec<String>,
}

async fn read<T: Record>(
    session: &dyn Session,
    key: &str,
    problems: &mut Vec<String>,
) -> Result<Option<T>, CoordError> {
    let Some(node) = session.get(key).await? else {
        return Ok(None);
    };
    match T::decode(&node.value) {
        Ok(value) => Ok(Some(value)),
        Err(e) => {
            problems.push(format!("{key}: {e}"));
            Ok(None)
        }
    }
}

async fn read_all<T: Record>(
    session: &dyn Session,
    parent: &str,
    problems: &mut Vec<String>,
) -> Result<BTreeMap<String, T>, CoordError> {
    let mut out = BTreeMap::new();
    for name in session.children(parent).await? {
        if let Some(value) = read(session, &format!("{parent}/{name}"), problems).await? {
            out.insert(name, value);
        }
    }
    Ok(out)
}

/// Reads the whole cluster.
pub async fn read_snapshot(
    session: &dyn Session,
    keys: &ClusterKeys,
) -> Result<Snapshot, CoordError> {
    let mut s = Snapshot::default();
    let p = &mut s.problems;
    s.config = read(session, &keys.cluster_config(), p)
        .await?
        .unwrap_or_default();
    s.instances = read_all::<InstanceConfig>(session, &keys.instance_configs(), p)
        .await?
        .into_values()
        .map(|i| (i.id.clone(), i))
        .collect();
    s.live = read_all::<LiveInstance>(session, &keys.live_instances(), p)
        .await?
        .into_values()
        .map(|l| (l.id.clone(), l))
        .collect();
    s.resources = read_all(session, &keys.resource_configs(), p).await?;
    for name in StateModel::BUILTINS {
        s.models.insert(
            name.to_owned(),
            StateModel::builtin(name).expect("built-in"),
        );
    }
    for (name, spec) in read_all::<StateModelSpec>(session, &keys.state_models(), p).await? {
        match StateModel::compile(spec) {
            Ok(model) => {
                s.models.insert(name, model);
            }
            Err(e) => p.push(format!("state model {name}: {e}")),
        }
    }
    for live in s.live.values() {
        let dir = format!("{}/{}", keys.current_states(&live.id), live.session);
        for (resource, cs) in read_all::<CurrentState>(session, &dir, p).await? {
            s.current.entry(resource).or_default().push(cs);
        }
    }
    for id in s.instances.keys() {
        let dir = keys.messages(id);
        for (name, message) in read_all::<Message>(session, &dir, p).await? {
            s.messages.push((format!("{dir}/{name}"), message));
        }
    }
    for resource in s.resources.keys() {
        if let Some(ideal) = read(session, &keys.ideal_state(resource), p).await? {
            s.ideal.insert(resource.clone(), ideal);
        }
        if let Some(epochs) = read(session, &keys.epochs(resource), p).await? {
            s.epochs.insert(resource.clone(), epochs);
        }
        if let Some(view) = read(session, &keys.external_view(resource), p).await? {
            s.external.insert(resource.clone(), view);
        }
    }
    Ok(s)
}
