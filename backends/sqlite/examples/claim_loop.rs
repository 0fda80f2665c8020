//! The SQLite store alone, no worker and no API: inserts 100,000 due tasks into a file in the
//! temp directory (12 partitions, batches of 1,000), then claims 512 at a time from all 12 and
//! completes each claim in one call until none is left, and prints the insert rate, the time a
//! claim and a completion take per task, and the claim-and-complete rate.
//!
//! ```sh
//! cargo run --release -p rota-sqlite --example claim_loop
//! ```

use rota_model::InstanceId;
use rota_scheduler::{AcquirePartition, Claim, ClaimTasks, CompleteTasks, Completion};
use rota_scheduler::{CompletionOutcome, Execution, InsertTasks, NewTask, Tasks};
use std::time::{Duration, Instant};

const TASKS: usize = 100_000;
const PARTITIONS: u32 = 12;
const BATCH: usize = 512;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::temp_dir().join(format!("rota-claim-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp directory");
    let store = rota_sqlite::SqliteTaskStore::open(dir.join("tasks.db"), "bench").expect("open");
    let owner = InstanceId::new("bench");
    for partition in 0..PARTITIONS {
        let grant = AcquirePartition {
            partition,
            owner: owner.clone(),
            epoch: 1,
            now: 0,
        };
        store.acquire(grant).await.expect("acquire");
    }
    let started = Instant::now();
    for _ in 0..TASKS / 1_000 {
        let tasks = (0..1_000)
            .map(|_| NewTask {
                name: "bench".into(),
                payload: serde_json::Value::Null,
                scheduled_at: 1_000,
                partition_key: None,
                max_attempts: 3,
                handler: Some("noop".into()),
                idempotency_key: None,
            })
            .collect();
        let batch = InsertTasks {
            tasks,
            partitions: PARTITIONS,
            now: 0,
        };
        store.insert(batch).await.expect("insert");
    }
    let inserting = started.elapsed();
    let claims: Vec<Claim> = (0..PARTITIONS).map(|p| Claim::new(p, 1)).collect();
    let (mut claiming, mut completing, mut done) = (Duration::ZERO, Duration::ZERO, 0);
    let started = Instant::now();
    loop {
        let at = Instant::now();
        let claim = ClaimTasks {
            owner: owner.clone(),
            partitions: claims.clone(),
            now: 2_000,
            limit: BATCH,
            lease_ms: 30_000,
            resume_after: Default::default(),
        };
        let claimed = store.claim(claim).await.expect("claim");
        claiming += at.elapsed();
        if claimed.tasks.is_empty() {
            break;
        }
        done += claimed.tasks.len();
        let completions = claimed
            .tasks
            .iter()
            .map(|t| Completion {
                id: t.id,
                partition: t.partition,
                epoch: 1,
                started_at: Some(2_001),
                outcome: CompletionOutcome::Succeeded,
            })
            .collect();
        let at = Instant::now();
        let ends = CompleteTasks {
            owner: owner.clone(),
            completions,
            now: 2_002,
        };
        store.complete(&ends).await.expect("complete");
        completing += at.elapsed();
    }
    let total = started.elapsed();
    assert_eq!(done, TASKS, "every task claimed once");
    let per_task = |d: Duration| d.as_secs_f64() * 1e6 / TASKS as f64;
    println!(
        "insert {:.0} tasks/s; claim {:.2} µs and completion {:.2} µs a task; \
         claim and complete {:.0} tasks/s",
        TASKS as f64 / inserting.as_secs_f64(),
        per_task(claiming),
        per_task(completing),
        TASKS as f64 / total.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
