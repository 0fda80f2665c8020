//! The coordination conformance suite against a real etcd server, started by the test harness
//! from the machine's installed etcd (a fresh root key per case).

use async_trait::async_trait;
use rota_cluster::coordination::conformance::{Faults, Harness};
use rota_etcd::EtcdCoordination;
use rota_model::SessionId;
use std::sync::Arc;

struct EtcdFaults(EtcdCoordination);

#[async_trait]
impl Faults for EtcdFaults {
    async fn expire(&self, session: &SessionId) {
        self.0.expire(session).await;
    }
}

async fn harness() -> Harness {
    let store = EtcdCoordination::new(vec![rota_test_harness::etcd().endpoint()], "");
    Harness::fresh(Arc::new(store.clone()), Arc::new(EtcdFaults(store)))
}

rota_cluster::coordination_conformance!(harness);
