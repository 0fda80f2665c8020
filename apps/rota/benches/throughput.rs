//! Throughput of `rota dev` (SQLite task store, 3 workers, in-memory coordination): bulk insert
//! of 100,000 no-op tasks due now, then the time until every one has run and been completed.
//!
//! Run with `cargo bench -p rota --bench throughput`.

use async_trait::async_trait;
use rota::config::Config;
use rota::dev::{self, DevOptions};
use rota_core::task::worker::{Handlers, TaskHandler, wall_clock_ms};
use rota_core::task::{ListFilter, NewTask, Task, TaskStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Count(Arc<AtomicU64>);

#[async_trait]
impl TaskHandler for Count {
    async fn run(&self, _: &Task) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

const TASKS: usize = 100_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("rota-throughput-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ran = Arc::new(AtomicU64::new(0));
        let mut handlers = Handlers::default();
        handlers.set_default(Arc::new(Count(ran.clone())));
        let mut config = Config::default();
        config.worker.concurrency = 256;
        config.worker.batch = 1_000;
        let cluster = dev::start(DevOptions {
            workers: 3,
            data_dir: dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            config,
            handlers,
        })
        .await
        .expect("dev cluster");
        // Wait for every partition to have a leader before timing anything.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let now = wall_clock_ms();
        let started = Instant::now();
        for chunk in 0..TASKS / 5_000 {
            let batch: Vec<NewTask> = (0..5_000)
                .map(|i| NewTask {
                    name: format!("t{}", chunk * 5_000 + i),
                    payload: serde_json::Value::Null,
                    scheduled_at: now,
                    partition_key: None,
                    max_attempts: 1,
                    handler: None,
                    idempotency_key: None,
                })
                .collect();
            cluster.tasks.insert(batch, 12, now).await.expect("insert");
        }
        let inserted = started.elapsed();
        while ran.load(Ordering::Relaxed) < TASKS as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let executed = started.elapsed();
        cluster.stop().await.expect("stop");
        let completed = {
            use rota_core::task::TaskStore;
            let store = rota_sqlite::SqliteTaskStore::open(dir.join("tasks.db")).unwrap();
            let filter = ListFilter { status: Some(TaskStatus::Completed), limit: TASKS + 1, ..ListFilter::default() };
            store.list(&filter).await.unwrap().tasks.len()
        };
        println!("tasks:        {TASKS}");
        println!("bulk insert:  {:.0} tasks/s ({:.2} s)", TASKS as f64 / inserted.as_secs_f64(), inserted.as_secs_f64());
        println!("insert + run: {:.0} tasks/s ({:.2} s, all {TASKS} run; {completed} COMPLETED after stop)",
                 TASKS as f64 / executed.as_secs_f64(), executed.as_secs_f64());
        let _ = std::fs::remove_dir_all(&dir);
    });
}
