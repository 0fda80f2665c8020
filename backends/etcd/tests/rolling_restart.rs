//! A rolling restart of a three-member etcd cluster under load, the way etcd is upgraded: each
//! member in turn is stopped, the others carry on, and it comes back on its data. Clients given
//! every member's endpoint must ride through it: no session is even suspended (its holder would
//! step down), its ephemeral key stays, a watch sees every change exactly once and in order,
//! with no resync, and writes go on.

mod common;

use common::{hold, put, session, value};
use rota_cluster::coordination::conformance::DEADLINE;
use rota_cluster::coordination::{CoordError, Session, SessionState, WatchEvent};
use rota_test_harness::EtcdCluster;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Sets `key` to 1, 2, 3, ... until `stop`, retrying calls that fail for want of a member, and
/// counts the sets applied.
async fn write_until(
    session: Arc<dyn Session>,
    key: String,
    stop: Arc<AtomicBool>,
    applied: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::SeqCst) {
        let current = match session.get(&key).await {
            Ok(node) => node.expect("the counter exists"),
            Err(e) if e.retryable() => continue,
            Err(e) => panic!("read failed: {e}"),
        };
        let next = String::from_utf8(current.value)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            + 1;
        match session.set(&key, value(next), Some(current.version)).await {
            Ok(version) => applied.store(version, Ordering::SeqCst),
            // May or may not have been applied: the next read says which.
            Err(CoordError::ConnectionLoss | CoordError::Backend(_)) => {}
            Err(CoordError::BadVersion { .. }) => {}
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

/// The sessions' timeout: etcd's smallest lease TTL but one, renewed every second.
const LEASE: Duration = Duration::from_secs(3);
/// How long each member stays down: renewals and reconnections happen meanwhile.
const DOWN: Duration = Duration::from_secs(3);

async fn wait_for_progress(applied: &AtomicU64, sets: u64) {
    let from = applied.load(Ordering::SeqCst);
    let start = Instant::now();
    while applied.load(Ordering::SeqCst) < from + sets {
        assert!(start.elapsed() < DEADLINE, "writes stopped making progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ride_through_a_rolling_restart() {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .unwrap();
    // A short lease (renewed every second) so that renewals fall while members are down.
    let holder = session(cluster.endpoints(), LEASE).await;
    let watcher = session(cluster.endpoints(), LEASE).await;
    let writer = session(cluster.endpoints(), LEASE).await;
    let (owner, counter) = ("/rolling/owner".to_owned(), "/rolling/counter".to_owned());
    hold(&*holder, &owner, b"holder".to_vec()).await;
    put(&*writer, &counter, value(0)).await;
    let mut watch = watcher.watch(&counter, false).await.unwrap();
    // The watcher keeps up, as a real one does (a watch holds a bounded number of events for
    // a receiver that does not read, then resyncs it): every event it receives, in order.
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(event) = watch.next().await {
                received.lock().unwrap().push(event);
            }
        })
    };
    // Every state the holder's session passes through.
    let mut holder_state = holder.state();
    let states = tokio::spawn(async move {
        let mut seen = Vec::new();
        while holder_state.changed().await.is_ok() {
            let now = *holder_state.borrow_and_update();
            seen.push(now);
            if now.is_final() {
                break;
            }
        }
        seen
    });

    let (stop, applied) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = tokio::spawn(write_until(
        writer.clone(),
        counter.clone(),
        stop.clone(),
        applied.clone(),
    ));
    let cluster = Arc::new(cluster);
    for member in 0..3 {
        wait_for_progress(&applied, 20).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop(member))
            .await
            .unwrap();
        // The two others carry the writes alone, for a while: renewals fall in this time.
        let down = Instant::now();
        wait_for_progress(&applied, 20).await;
        tokio::time::sleep(DOWN.saturating_sub(down.elapsed())).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.restart(member))
            .await
            .unwrap();
    }
    wait_for_progress(&applied, 20).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    // Never suspended: a participant holding this session would not have stepped down.
    assert_eq!(*holder.state().borrow(), SessionState::Connected);

    let node = watcher.get(&owner).await.unwrap();
    assert!(
        node.is_some_and(|n| n.ephemeral),
        "the ephemeral key is gone"
    );
    // One event per set applied (the counter's version counts them), in order, no resync.
    let sets = watcher.get(&counter).await.unwrap().unwrap().version;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (received.lock().unwrap().len() as u64) < sets {
        assert!(
            Instant::now() < deadline,
            "only {} events of {sets} sets arrived",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let received = std::mem::take(&mut *received.lock().unwrap());
    for (n, event) in received.iter().enumerate() {
        match event {
            WatchEvent::Changed { key } => assert_eq!(key, &counter),
            other => panic!("event {} of {sets}: {other:?}", n + 1),
        }
    }
    assert_eq!(received.len() as u64, sets, "more events than sets");
    holder.close().await.unwrap();
    let seen = states.await.unwrap();
    assert_eq!(
        seen,
        vec![SessionState::Closed],
        "the holder's session went through {seen:?}"
    );
    println!("{sets} sets applied through a rolling restart of 3 members");
}
