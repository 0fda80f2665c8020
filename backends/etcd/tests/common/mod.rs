//! Helpers of the etcd fault tests.

#![allow(dead_code)] // Each test binary uses its own part.

use rota_cluster::coordination::conformance::next_event;
use rota_cluster::coordination::{Coordination, Session, Watch, WatchEvent};
use rota_etcd::EtcdCoordination;
use std::sync::Arc;
use std::time::Duration;

/// A session on the etcd at `endpoints` (the servers', or a proxy's).
pub async fn session(endpoints: Vec<String>, timeout: Duration) -> Arc<dyn Session> {
    EtcdCoordination::new(endpoints, "")
        .connect(timeout)
        .await
        .expect("connect to etcd")
}

/// The next event, which must come within the deadline, of a watch that must stay open.
pub async fn next(watch: &mut Watch) -> WatchEvent {
    next_event(watch).await.expect("watch open")
}

/// A value that says `n`.
pub fn value(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}
