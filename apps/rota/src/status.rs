//! The cluster's status as `GET /cluster` and `rota admin status` show it, read from the
//! coordination store.

use crate::api::ClusterView;
use rota_cluster::snapshot::read_snapshot;
use rota_scheduler::TASKS_RESOURCE;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The cluster as `/cluster` and `rota admin status` show it: leader, instances (liveness,
/// zone, partitions per state) and partitions (holders, states, epoch).
pub async fn cluster_status(
    view: &ClusterView,
    partitions: u32,
    storage: &str,
) -> Result<Value, rota_cluster::coordination::CoordError> {
    let snapshot = read_snapshot(&*view.session, &view.keys).await?;
    let leader = match view.session.get(&view.keys.leader()).await? {
        Some(node) => {
            use rota_model::Record;
            rota_cluster::records::LeaderRecord::decode(&node.value)
                .ok()
                .map(|l| json!({"controller": l.controller, "epoch": l.epoch}))
        }
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
        partition_list.push(json!({
            "partition": p,
            "holders": holders.iter().map(|(i, s)| json!({"instance": i, "state": s})).collect::<Vec<_>>(),
            "epoch": epochs.and_then(|e| e.0.get(&p)).copied().unwrap_or(0),
        }));
    }
    let instances: Vec<Value> = snapshot
        .instances
        .values()
        .map(|i| {
            json!({
                "id": i.id,
                "live": snapshot.live.contains_key(&i.id),
                "enabled": i.enabled,
                "zone": i.zone,
                "partitions": per_instance.get(i.id.as_str()).cloned().unwrap_or_default(),
            })
        })
        .collect();
    Ok(json!({
        "cluster": view.keys.root(),
        "leader": leader,
        "maintenance": snapshot.config.maintenance,
        "instances": instances,
        "partitions": partition_list,
        "storage": storage,
    }))
}
