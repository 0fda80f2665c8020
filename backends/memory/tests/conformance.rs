//! The coordination conformance suite on the in-memory backend, plus its fault injection.

use async_trait::async_trait;
use rota_cluster::coordination::conformance::{Faults, Harness};
use rota_cluster::coordination::{Coordination, CreateMode, Session, SessionState, WatchEvent};
use rota_memory::MemoryCoordination;
use rota_model::SessionId;
use std::sync::Arc;
use std::time::Duration;

struct MemoryFaults(MemoryCoordination);

#[async_trait]
impl Faults for MemoryFaults {
    async fn expire(&self, session: &SessionId) {
        self.0.expire(session);
    }
}

async fn harness() -> Harness {
    let store = MemoryCoordination::new();
    Harness {
        store: Arc::new(store.clone()),
        faults: Arc::new(MemoryFaults(store)),
        root: "/conformance".into(),
    }
}

rota_cluster::coordination_conformance!(harness);

/// A fresh store with two sessions of `timeout`, `a` and `b`; `a` holds the ephemeral `/k`.
async fn ephemeral_of_a(
    timeout: Duration,
) -> (MemoryCoordination, Arc<dyn Session>, Arc<dyn Session>) {
    let store = MemoryCoordination::new();
    let a = store.connect(timeout).await.unwrap();
    let b = store.connect(timeout).await.unwrap();
    a.create("/k", vec![], CreateMode::Ephemeral).await.unwrap();
    (store, a, b)
}

#[tokio::test(start_paused = true)]
async fn suspended_session_expires_after_its_timeout_unless_resumed() {
    let (store, a, b) = ephemeral_of_a(Duration::from_secs(10)).await;

    store.suspend(&a.id());
    assert_eq!(*a.state().borrow(), SessionState::Suspended);
    assert!(a.get("/k").await.unwrap_err().retryable());
    tokio::time::sleep(Duration::from_secs(9)).await;
    store.resume(&a.id());
    assert_eq!(*a.state().borrow(), SessionState::Connected);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        b.get("/k").await.unwrap().is_some(),
        "resumed in time: key stays"
    );

    store.suspend(&a.id());
    let mut state = a.state();
    state
        .wait_for(|s| *s == SessionState::Expired)
        .await
        .unwrap();
    assert!(
        b.get("/k").await.unwrap().is_none(),
        "expired: ephemeral key gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_expires_after_its_timeout() {
    let (_store, a, b) = ephemeral_of_a(Duration::from_secs(3)).await;
    let mut watch = b.watch("/k", false).await.unwrap();
    drop(a);
    assert!(
        b.get("/k").await.unwrap().is_some(),
        "not gone before the timeout"
    );
    assert_eq!(
        watch.next().await,
        Some(WatchEvent::Deleted { key: "/k".into() })
    );
}

#[tokio::test]
async fn held_watch_events_arrive_in_order_and_dropped_ones_become_resync() {
    let store = MemoryCoordination::new();
    let writer = store.connect(Duration::from_secs(10)).await.unwrap();
    let reader = store.connect(Duration::from_secs(10)).await.unwrap();
    let mut watch = reader.watch("/w", true).await.unwrap();

    store.hold_watches(&reader.id(), true);
    writer
        .create("/w/a", vec![], CreateMode::Persistent)
        .await
        .unwrap();
    writer
        .create("/w/b", vec![], CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(watch.try_next(), None, "held");
    store.hold_watches(&reader.id(), false);
    let keys: Vec<_> = [watch.try_next(), watch.try_next()]
        .into_iter()
        .map(|e| match e {
            Some(WatchEvent::Created { key }) => key,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(keys, ["/w/a", "/w/b"]);

    store.drop_watches(&reader.id());
    writer
        .create("/w/c", vec![], CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(
        watch.try_next(),
        Some(WatchEvent::Resync),
        "a lost event is announced"
    );
    writer
        .create("/w/d", vec![], CreateMode::Persistent)
        .await
        .unwrap();
    assert!(matches!(watch.try_next(), Some(WatchEvent::Created { key }) if key == "/w/d"));
}

/// A reconnecting session outlives the expiry of its session: the next call opens a new one.
#[tokio::test]
async fn a_reconnecting_session_replaces_an_expired_one() {
    use rota_cluster::coordination::reconnecting::Reconnecting;
    let store = MemoryCoordination::new();
    let writer = store.connect(Duration::from_secs(10)).await.unwrap();
    writer
        .create("/k", b"v".to_vec(), CreateMode::Persistent)
        .await
        .unwrap();
    let reader = Reconnecting::connect(Arc::new(store.clone()), Duration::from_secs(10))
        .await
        .unwrap();
    let first = reader.id();
    store.expire(&first);
    let node = reader.get("/k").await.unwrap().unwrap();
    assert_eq!(node.value, b"v".to_vec());
    assert_ne!(reader.id(), first, "the expired session was not replaced");
    assert_eq!(*reader.state().borrow(), SessionState::Connected);
    reader.set("/k", b"w".to_vec(), Some(0)).await.unwrap();
    assert_eq!(
        writer.get("/k").await.unwrap().unwrap().value,
        b"w".to_vec()
    );
}
