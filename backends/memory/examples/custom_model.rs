//! Embedding rota's cluster framework for something other than the scheduler: a replicated
//! cache whose partitions have one PRIMARY (takes writes), up to R-1 REPLICAs (serve reads) and
//! may be OFFLINE. The state model is user-defined; the controller, the rebalancer and the
//! participants are rota's. Runs on the in-memory store; with ZooKeeper or etcd only the store
//! changes.
//!
//! Run with `cargo run -p rota-memory --example custom_model`.

use async_trait::async_trait;
use rota_cluster::admin::Admin;
use rota_cluster::controller::{Controller, ControllerConfig};
use rota_cluster::coordination::Coordination;
use rota_cluster::participant::{
    Participant, ParticipantConfig, TransitionHandler, TransitionRequest,
};
use rota_memory::MemoryCoordination;
use rota_model::state_model::StateModelSpec;
use rota_model::{InstanceConfig, ResourceConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The cache node's side of a transition: load a partition, start or stop taking writes.
struct CacheNode;

#[async_trait]
impl TransitionHandler for CacheNode {
    async fn on_transition(&self, t: &TransitionRequest) -> Result<(), String> {
        match (t.from.as_str(), t.to.as_str()) {
            ("OFFLINE", "REPLICA") => {
                println!("{}: load partition {} from peers", t.instance, t.partition)
            }
            ("REPLICA", "PRIMARY") => println!(
                "{}: accept writes for partition {} (fencing token {})",
                t.instance, t.partition, t.epoch
            ),
            ("PRIMARY", "REPLICA") => {
                println!("{}: stop writes for partition {}", t.instance, t.partition)
            }
            (from, to) => println!("{}: partition {} {from} -> {to}", t.instance, t.partition),
        }
        Ok(())
    }
}

const CHAIN: &str = r#"{
  "name": "PrimaryReplica", "initial": "OFFLINE",
  "states": [{"name": "PRIMARY", "bound": 1}, {"name": "REPLICA", "bound": "R"}, {"name": "OFFLINE"}],
  "transitions": [
    {"from": "OFFLINE", "to": "REPLICA", "priority": 3}, {"from": "REPLICA", "to": "PRIMARY", "priority": 2},
    {"from": "PRIMARY", "to": "REPLICA", "priority": 1}, {"from": "REPLICA", "to": "OFFLINE", "priority": 4}
  ]
}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn Coordination> = Arc::new(MemoryCoordination::new());
    let timeout = Duration::from_secs(5);

    // Operator side: the state model and the resource.
    let admin = Admin::new(store.connect(timeout).await?, "cache");
    admin
        .add_state_model(serde_json::from_str::<StateModelSpec>(CHAIN)?)
        .await?;
    admin
        .add_resource(&ResourceConfig::new("sessions", 6, 2, "PrimaryReplica"))
        .await?;

    // One controller and three cache nodes.
    let (stop, stopped) = watch::channel(false);
    let (controller, _status) = Controller::new(
        store.clone(),
        ControllerConfig {
            cluster: "cache".into(),
            name: "controller-1".into(),
            session_timeout: timeout,
            interval: Duration::from_secs(1),
            settle: Duration::from_millis(5),
        },
    );
    let mut tasks = vec![tokio::spawn(controller.run(stopped.clone()))];
    for node in ["cache-a", "cache-b", "cache-c"] {
        let (participant, _handle) = Participant::new(
            store.clone(),
            ParticipantConfig {
                cluster: "cache".into(),
                instance: InstanceConfig::new(node).with_zone(format!("rack-{node}")),
                session_timeout: timeout,
                max_parallel: 4,
                capabilities: Vec::new(),
            },
            Arc::new(CacheNode),
        );
        tasks.push(tokio::spawn(participant.run(stopped.clone())));
    }

    // Wait (polling, with a deadline) until every partition has its PRIMARY and REPLICA.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = admin.external_view("sessions").await?;
        let ready = view.as_ref().is_some_and(|v| {
            (0..6).all(|p| {
                v.partitions.get(&p).is_some_and(|m| {
                    m.values().filter(|s| *s == "PRIMARY").count() == 1
                        && m.values().filter(|s| *s == "REPLICA").count() == 1
                })
            })
        });
        if ready {
            for (p, holders) in view.expect("ready").partitions {
                println!("partition {p}: {holders:?}");
            }
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the cache did not converge in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop.send_replace(true);
    for task in tasks {
        task.await??;
    }
    Ok(())
}
