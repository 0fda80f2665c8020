//! Helpers of the etcd fault tests.

#![allow(dead_code)] // Each test binary uses its own part.

use rota_cluster::coordination::conformance::next_event;
use rota_cluster::coordination::{Coordination, CreateMode, Session, Watch, WatchEvent};
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

/// Creates `key` holding `value`, for good.
pub async fn put(session: &dyn Session, key: &str, value: Vec<u8>) {
    let created = session.create(key, value, CreateMode::Persistent).await;
    created.expect("create a key");
}

/// Creates `key` holding `value` for as long as `session` lives.
pub async fn hold(session: &dyn Session, key: &str, value: Vec<u8>) {
    let created = session.create(key, value, CreateMode::Ephemeral).await;
    created.expect("create an ephemeral key");
}

/// `owner` announces a live instance (an ephemeral key) and `observer`'s watch sees it come,
/// holding what was written; `owner` closes its session and the watch sees the key go.
pub async fn a_live_instance_comes_and_goes(owner: Arc<dyn Session>, observer: &dyn Session) {
    let key = "/rota/cluster/LIVEINSTANCES/w1";
    let mut watch = observer.watch(key, false).await.unwrap();
    hold(&*owner, key, b"w1".to_vec()).await;
    let created = WatchEvent::Created { key: key.into() };
    assert_eq!(next_event(&mut watch).await, Some(created));
    assert_eq!(observer.get(key).await.unwrap().unwrap().value, b"w1");
    owner.close().await.unwrap();
    let deleted = WatchEvent::Deleted { key: key.into() };
    assert_eq!(next_event(&mut watch).await, Some(deleted));
    assert_eq!(observer.get(key).await.unwrap(), None);
}
