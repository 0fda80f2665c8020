//! The coordination conformance suite against a real ZooKeeper server, started by the test
//! harness from the machine's installed ZooKeeper (a fresh root key per case).

use async_trait::async_trait;
use rota_cluster::coordination::conformance::{Faults, Harness};
use rota_model::SessionId;
use rota_zookeeper::ZooKeeperCoordination;
use std::sync::Arc;

/// A fresh root on the harness's server, with its fault injection.
async fn harness() -> Harness {
    let store = ZooKeeperCoordination::new(rota_test_harness::zookeeper().endpoint());
    Harness::fresh(Arc::new(store.clone()), Arc::new(ZkFaults(store)))
}

struct ZkFaults(ZooKeeperCoordination);

#[async_trait]
impl Faults for ZkFaults {
    async fn expire(&self, session: &SessionId) {
        self.0.expire(session).await;
    }
}

rota_cluster::coordination_conformance!(harness);
