//! A watcher cut off from etcd while the history it missed is compacted away recovers by resync
//! without losing a state change. Its own test binary, so its own etcd server: compaction would
//! make the watches of other tests on a shared server resync too.

mod common;

use common::{next, put, session, value};
use etcd_client::{Client, CompactionOptions};
use rota_cluster::coordination::WatchEvent;
use rota_test_harness::{Proxy, etcd};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_behind_a_compaction_resyncs_without_losing_a_state_change() {
    let proxy = Proxy::start(etcd().port);
    let watcher = session(vec![proxy.endpoint()], Duration::from_secs(30)).await;
    let writer = session(vec![etcd().endpoint()], Duration::from_secs(10)).await;
    let dir = format!("/compaction-{}", std::process::id());
    let key = format!("{dir}/state");
    put(&*writer, &key, value(0)).await;
    let mut watch = watcher.watch(&dir, true).await.unwrap();

    // While the watcher is cut off: state changes, then etcd forgets the history of them.
    proxy.partition();
    for n in 1..=10 {
        writer.set(&key, value(n), Some(n - 1)).await.unwrap();
    }
    let gone = format!("{dir}/gone");
    put(&*writer, &gone, vec![]).await;
    writer.delete(&gone, None).await.unwrap();
    let mut admin = Client::connect([etcd().endpoint()], None).await.unwrap();
    let revision = admin
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    admin
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    proxy.heal();

    // The watcher learns that it missed events, and re-reading shows the latest state.
    assert_eq!(next(&mut watch).await, WatchEvent::Resync);
    assert_eq!(watcher.get(&key).await.unwrap().unwrap().value, value(10));
    assert_eq!(watcher.get(&gone).await.unwrap(), None);
    // Events are complete again after the resync.
    writer.set(&key, value(11), Some(10)).await.unwrap();
    loop {
        match next(&mut watch).await {
            WatchEvent::Changed { key: k } if k == key => break,
            // History from the compaction revision on may be replayed: harmless duplicates.
            WatchEvent::Changed { .. }
            | WatchEvent::Created { .. }
            | WatchEvent::Deleted { .. } => {}
            WatchEvent::Resync => panic!("a second resync"),
        }
    }
    assert_eq!(watcher.get(&key).await.unwrap().unwrap().value, value(11));
}
