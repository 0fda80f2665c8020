//! The same controller and participant code as the one-process tests, on a real etcd:
//! every built-in model converges with a standby controller, absorbs a join and a graceful
//! leave, and survives the leader being killed, under the invariant checker.

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_model_converges_and_fails_over_on_etcd() {
    let store = rota_etcd::EtcdCoordination::new(vec![rota_test_harness::etcd().endpoint()], "");
    rota_cluster::harness::builtin_models_converge_and_fail_over(Arc::new(store)).await;
}
