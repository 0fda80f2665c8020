//! Network faults between one client and a real etcd, through the harness's TCP proxy: a watch
//! resumes from its last revision without losing an event, and a lease that runs out while its
//! holder is cut off ends the session (suspended first, then expired) and fences its writes.
//! (Compaction has its own test binary, so its own server: it would make every other watch of a
//! shared server resync.)

mod common;

use common::{hold, next, put, session, value};
use etcd_client::Client;
use rota_cluster::coordination::conformance::wait_state;
use rota_cluster::coordination::{CoordError, Coordination, Session, SessionState, WatchEvent};
use rota_etcd::EtcdCoordination;
use rota_test_harness::{Proxy, etcd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn root(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/faults-{}-{}/{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A session of `timeout` through a proxy the test can cut, and one straight to the server.
async fn cut_and_direct(timeout: Duration) -> (Proxy, Arc<dyn Session>, Arc<dyn Session>) {
    let proxy = Proxy::start(etcd().port);
    let through = session(vec![proxy.endpoint()], timeout).await;
    let direct = session(vec![etcd().endpoint()], Duration::from_secs(10)).await;
    (proxy, through, direct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_partition_without_losing_an_event() {
    let (proxy, watcher, writer) = cut_and_direct(Duration::from_secs(30)).await;
    let key = root("resume");
    put(&*writer, &key, value(0)).await;
    let mut watch = watcher.watch(&key, false).await.unwrap();

    proxy.partition();
    for n in 1..=20 {
        writer.set(&key, value(n), Some(n - 1)).await.unwrap();
    }
    proxy.heal();
    writer.set(&key, value(21), Some(20)).await.unwrap();

    // Every change made while cut off, then the one after, each once, and no resync.
    for _ in 1..=21 {
        assert_eq!(
            next(&mut watch).await,
            WatchEvent::Changed { key: key.clone() }
        );
    }
    assert_eq!(watch.try_next(), None);
    assert_eq!(watcher.get(&key).await.unwrap().unwrap().value, value(21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_while_cut_off_is_session_expiry_and_fences_writes() {
    let (proxy, holder, observer) = cut_and_direct(Duration::from_secs(3)).await;
    let dir = root("lease");
    let (ephemeral, persistent) = (format!("{dir}/owner"), format!("{dir}/data"));
    hold(&*holder, &ephemeral, b"me".to_vec()).await;
    put(&*holder, &persistent, value(0)).await;
    let mut watch = observer.watch(&ephemeral, false).await.unwrap();

    proxy.partition();
    // The holder suspends itself before etcd can expire the lease...
    wait_state(&*holder, SessionState::Suspended).await;
    assert!(
        observer.get(&ephemeral).await.unwrap().is_some(),
        "the lease ran out before its holder suspended"
    );
    assert_eq!(
        holder.get(&persistent).await,
        Err(CoordError::ConnectionLoss)
    );
    // ...then etcd expires it and deletes the ephemeral key.
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::Deleted {
            key: ephemeral.clone()
        }
    );
    proxy.heal();
    wait_state(&*holder, SessionState::Expired).await;
    let refused = holder.set(&persistent, value(1), None).await;
    assert_eq!(refused, Err(CoordError::SessionExpired));
    assert_eq!(
        observer.get(&persistent).await.unwrap().unwrap().value,
        value(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_a_session_whose_lease_is_gone_never_apply() {
    // The holder does not yet know its lease is gone (no renewal since): the write must still
    // be refused, by the condition on the session's key, and the holder then knows. A session
    // renews its lease once as it starts; on a busy machine that renewal may come back after
    // the revocation and tell the holder first, so the case is tried again until its premise
    // holds.
    for _ in 0..5 {
        let holder = session(vec![etcd().endpoint()], Duration::from_secs(30)).await;
        let key = root("fenced");
        put(&*holder, &key, value(0)).await;
        EtcdCoordination::new(vec![etcd().endpoint()], "")
            .expire(&holder.id())
            .await;
        if *holder.state().borrow() != SessionState::Connected {
            continue; // Its first renewal learnt of the revocation before the write.
        }
        assert_eq!(
            holder.set(&key, value(1), Some(0)).await,
            Err(CoordError::SessionExpired)
        );
        assert_eq!(*holder.state().borrow(), SessionState::Expired);
        let observer = session(vec![etcd().endpoint()], Duration::from_secs(10)).await;
        assert_eq!(observer.get(&key).await.unwrap().unwrap().value, value(0));
        return;
    }
    panic!("in 5 tries the holder always learnt of the revocation before it wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_under_the_configured_prefix() {
    let a = EtcdCoordination::new(vec![etcd().endpoint()], "/tenant-a")
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    let b = EtcdCoordination::new(vec![etcd().endpoint()], "/tenant-b")
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    let key = root("shared-name");
    put(&*a, &key, b"a".to_vec()).await;
    assert_eq!(b.get(&key).await.unwrap(), None);
    put(&*b, &key, b"b".to_vec()).await;
    assert_eq!(a.get(&key).await.unwrap().unwrap().value, b"a".to_vec());
    let mut raw = Client::connect([etcd().endpoint()], None).await.unwrap();
    let stored = raw.get(format!("/tenant-a{key}"), None).await.unwrap();
    assert_eq!(stored.kvs()[0].value(), b"a");
}
