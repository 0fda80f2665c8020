//! Convergence time of a one-process cluster on the in-memory store, in real time: 1,000
//! partitions x 3 replicas (MasterSlave) over 5 participants, no-op transitions, one controller.
//! Prints the time to converge from nothing, and after a sixth participant joins, per run.
//!
//! Run with `cargo bench -p rota-memory --bench convergence`.

use rota_cluster::harness::time_convergence_and_join;
use rota_memory::MemoryCoordination;
use std::sync::Arc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("run  initial (5 participants)  after a join (6th)");
    for run in 1..=5 {
        let store = Arc::new(MemoryCoordination::new());
        let (initial, join) = time_convergence_and_join(store).await;
        println!(
            "{run:>3}  {:>10.0} ms               {:>10.0} ms",
            initial.as_secs_f64() * 1e3,
            join.as_secs_f64() * 1e3
        );
    }
}
