//! Convergence time of a one-process cluster on the in-memory store, in real time: 1,000
//! partitions x 3 replicas (MasterSlave) over 5 participants, no-op transitions, one controller.
//! Prints the time to converge from nothing, and after a sixth participant joins, per run.
//!
//! Run with `cargo bench -p rota-memory --bench convergence`.

use rota_core::cluster::harness::{TestCluster, resource};
use rota_memory::MemoryCoordination;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        println!("run  initial (5 participants)  after a join (6th)");
        for run in 1..=5 {
            let store = MemoryCoordination::new();
            let mut c = TestCluster::new(
                Arc::new(store),
                "MasterSlave",
                resource("MasterSlave", 1000, 3),
                Duration::ZERO,
            )
            .await;
            let started = Instant::now();
            c.start_controller("c1");
            for id in ["p1", "p2", "p3", "p4", "p5"] {
                c.start_participant(id);
            }
            c.wait_converged().await;
            let initial = started.elapsed();
            let joined = Instant::now();
            c.start_participant("p6");
            c.wait_converged().await;
            let join = joined.elapsed();
            println!(
                "{run:>3}  {:>10.0} ms               {:>10.0} ms",
                initial.as_secs_f64() * 1e3,
                join.as_secs_f64() * 1e3
            );
            c.shutdown().await;
        }
    });
}
