//! The coordination backends side by side, on real servers started by the test harness (one
//! ZooKeeper, one etcd) and the in-memory store, each measured the same way:
//!
//! - `set`: one compare-and-swap set after another on one key (latency per call);
//! - `txn`: transactions of 49 sets plus a version check, the shape of the controller's fenced
//!   writes (latency per transaction);
//! - `watch`: from a set being sent to its event reaching a watcher on another session;
//! - `converge`: a one-process cluster, 1,000 partitions x 3 replicas (MasterSlave) over 5
//!   participants, from nothing, then after a sixth joins.
//!
//! Run with `cargo bench -p rota --features etcd --bench coordination`.

use rota_cluster::coordination::{Coordination, CreateMode, MAX_TRANSACTION_OPS, Op};
use rota_cluster::harness::time_convergence_and_join;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SETS: usize = 2_000;
const TXNS: usize = 200;
const WATCHED: usize = 500;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let stores: Vec<(&str, Arc<dyn Coordination>)> = vec![
        ("memory", Arc::new(rota_memory::MemoryCoordination::new())),
        (
            "zookeeper",
            Arc::new(rota_zookeeper::ZooKeeperCoordination::new(
                rota_test_harness::zookeeper().endpoint(),
            )),
        ),
        (
            "etcd",
            Arc::new(rota_etcd::EtcdCoordination::new(
                vec![rota_test_harness::etcd().endpoint()],
                "",
            )),
        ),
    ];
    println!(
        "backend     set p50/p99 (ms)   txn of {MAX_TRANSACTION_OPS} p50/p99 (ms)   set->event p50/p99 (ms)   converge 5 / join 6th (ms)"
    );
    for (name, store) in stores {
        let set = sets(&*store).await;
        let txn = transactions(&*store).await;
        let watch = watch_latency(&*store).await;
        let (initial, join) = convergence(store.clone()).await;
        println!(
            "{name:<10}  {:>6.2} / {:>6.2}    {:>8.2} / {:>8.2}       {:>6.2} / {:>6.2}      {:>6.0} / {:>6.0}",
            set.0, set.1, txn.0, txn.1, watch.0, watch.1, initial, join
        );
    }
}

/// Median and 99th percentile, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

fn key(store: &str) -> String {
    format!("/bench-{}-{store}", std::process::id())
}

async fn sets(store: &dyn Coordination) -> (f64, f64) {
    let s = store.connect(Duration::from_secs(10)).await.unwrap();
    let k = format!("{}/set", key("s"));
    s.create(&k, vec![0; 100], CreateMode::Persistent)
        .await
        .unwrap();
    let mut samples = Vec::with_capacity(SETS);
    for version in 0..SETS as u64 {
        let start = Instant::now();
        s.set(&k, vec![1; 100], Some(version)).await.unwrap();
        samples.push(start.elapsed());
    }
    s.close().await.unwrap();
    percentiles(samples)
}

async fn transactions(store: &dyn Coordination) -> (f64, f64) {
    let s = store.connect(Duration::from_secs(10)).await.unwrap();
    let root = key("t");
    let fence = format!("{root}/fence");
    s.create(&fence, vec![], CreateMode::Persistent)
        .await
        .unwrap();
    let keys: Vec<String> = (0..MAX_TRANSACTION_OPS - 1)
        .map(|i| format!("{root}/k{i}"))
        .collect();
    for k in &keys {
        s.create(k, vec![], CreateMode::Persistent).await.unwrap();
    }
    let mut samples = Vec::with_capacity(TXNS);
    for _ in 0..TXNS {
        let mut ops = vec![Op::Check {
            key: fence.clone(),
            version: 0,
        }];
        ops.extend(keys.iter().map(|k| Op::Set {
            key: k.clone(),
            value: vec![7; 1_000],
            expected: None,
        }));
        let start = Instant::now();
        s.transaction(ops).await.unwrap();
        samples.push(start.elapsed());
    }
    s.close().await.unwrap();
    percentiles(samples)
}

async fn watch_latency(store: &dyn Coordination) -> (f64, f64) {
    let writer = store.connect(Duration::from_secs(10)).await.unwrap();
    let watcher = store.connect(Duration::from_secs(10)).await.unwrap();
    let k = format!("{}/watched", key("w"));
    writer
        .create(&k, vec![], CreateMode::Persistent)
        .await
        .unwrap();
    let mut watch = watcher.watch(&k, false).await.unwrap();
    let mut samples = Vec::with_capacity(WATCHED);
    for _ in 0..WATCHED {
        let start = Instant::now();
        writer.set(&k, vec![1], None).await.unwrap();
        watch.next().await.expect("watch open");
        samples.push(start.elapsed());
    }
    writer.close().await.unwrap();
    watcher.close().await.unwrap();
    percentiles(samples)
}

async fn convergence(store: Arc<dyn Coordination>) -> (f64, f64) {
    let (initial, join) = time_convergence_and_join(store).await;
    (initial.as_secs_f64() * 1e3, join.as_secs_f64() * 1e3)
}
