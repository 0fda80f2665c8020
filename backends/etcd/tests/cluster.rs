//! The same controller and participant code as the one-process tests, on a real etcd:
//! every built-in model converges with a standby controller, absorbs a join and a graceful
//! leave, and survives the leader being killed, under the invariant checker.

use rota_core::StateModel;
use rota_core::cluster::harness::{TestCluster, resource};
use rota_etcd::EtcdCoordination;
use std::sync::Arc;
use std::time::Duration;

async fn cluster(model: &str) -> TestCluster {
    let store = EtcdCoordination::new(vec![rota_test_harness::etcd().endpoint()], "");
    TestCluster::new(
        Arc::new(store),
        model,
        resource(model, 12, 2),
        Duration::from_millis(2),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_model_converges_and_fails_over_on_etcd() {
    for model in StateModel::BUILTINS {
        let mut c = cluster(model).await;
        c.start_controller("c1");
        c.wait_for("a leader", || async { c.leader().await.is_some() })
            .await;
        c.start_controller("c2");
        for id in ["p1", "p2", "p3"] {
            c.start_participant(id);
        }
        c.wait_converged().await;
        c.start_participant("p4");
        c.wait_converged().await;
        c.stop_participant("p1").await;
        c.wait_converged().await;
        let (old, epoch) = c.leader().await.unwrap();
        c.kill_controller(&old);
        c.wait_for("a new leader", || async {
            c.leader().await.is_some_and(|(_, e)| e > epoch)
        })
        .await;
        c.start_participant("p5");
        c.wait_converged().await;
        c.shutdown().await;
    }
}
