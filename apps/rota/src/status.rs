//! The cluster's status as `GET /cluster` and `rota admin status` show it, read from the
//! coordination store.

use rota_client::{ClusterStatus, Holder, InstanceStatus, Leader, PartitionStatus};
use rota_cluster::coordination::{CoordError, Session};
use rota_cluster::keys::ClusterKeys;
use rota_cluster::records::LeaderRecord;
use rota_cluster::snapshot::read_snapshot;
use rota_model::Record;
use rota_scheduler::TASKS_RESOURCE;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The coordination view `/cluster`, `/readyz` and the handler catalog read.
#[derive(Clone)]
pub struct ClusterView {
    /// A session on the coordination store.
    pub session: Arc<dyn Session>,
    /// The cluster's keys.
    pub keys: ClusterKeys,
}

/// The cluster as `/cluster` and `rota admin status` show it: leader, instances (liveness,
/// zone, partitions per state) and partitions (holders, states, epoch).
pub async fn cluster_status(
    view: &ClusterView,
    partitions: u32,
    storage: &str,
) -> Result<ClusterStatus, CoordError> {
    let snapshot = read_snapshot(&*view.session, &view.keys).await?;
    let leader = match view.session.get(&view.keys.leader()).await? {
        Some(node) => LeaderRecord::decode(&node.value).ok().map(|l| Leader {
            controller: l.controller.to_string(),
            epoch: l.epoch,
        }),
        None => None,
    };
    let view_of_tasks = snapshot.external.get(TASKS_RESOURCE);
    let epochs = snapshot.epochs.get(TASKS_RESOURCE);
    let mut per_instance: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut partition_list = Vec::new();
    for p in 0..partitions {
        let holders = view_of_tasks
            .and_then(|v| v.partitions.get(&p))
            .cloned()
            .unwrap_or_default();
        for (instance, s) in &holders {
            *per_instance
                .entry(instance.to_string())
                .or_default()
                .entry(s.to_string())
                .or_default() += 1;
        }
        partition_list.push(PartitionStatus {
            partition: p,
            holders: holders
                .iter()
                .map(|(i, s)| Holder {
                    instance: i.to_string(),
                    state: s.to_string(),
                })
                .collect(),
            epoch: epochs.and_then(|e| e.0.get(&p)).copied().unwrap_or(0),
        });
    }
    let instances = snapshot
        .instances
        .values()
        .map(|i| InstanceStatus {
            id: i.id.to_string(),
            live: snapshot.live.contains_key(&i.id),
            enabled: i.enabled,
            zone: i.zone.clone(),
            partitions: per_instance.get(i.id.as_str()).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(ClusterStatus {
        cluster: view.keys.root().to_owned(),
        leader,
        maintenance: snapshot.config.maintenance,
        instances,
        partitions: partition_list,
        storage: storage.to_owned(),
    })
}
