//! Workers end to end on the in-memory stores, in real time: tasks due over the next seconds are
//! each executed exactly once across three workers, and when one worker is cut off from the
//! coordination store mid-run nothing is lost and no task runs on two workers at once.

use async_trait::async_trait;
use rota_core::cluster::admin::Admin;
use rota_core::cluster::checker::Checker;
use rota_core::cluster::controller::{Controller, ControllerConfig};
use rota_core::cluster::participant::{
    Participant, ParticipantConfig, ParticipantHandle, ParticipantStatus,
};
use rota_core::coordination::Coordination;
use rota_core::task::worker::{Handlers, TaskHandler, Worker, WorkerConfig, wall_clock_ms};
use rota_core::task::{ListFilter, NewTask, TASKS_RESOURCE, Task, TaskId, TaskStatus, TaskStore};
use rota_core::{InstanceConfig, InstanceId, ResourceConfig};
use rota_memory::{MemoryCoordination, MemoryTaskStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const PARTITIONS: u32 = 12;
const SESSION: Duration = Duration::from_secs(2);

/// One execution of a task: which worker, from when to when.
#[derive(Clone, Debug)]
struct Execution {
    worker: String,
    start: Instant,
    end: Instant,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<HashMap<TaskId, Vec<Execution>>>>);

struct Recording {
    worker: String,
    recorder: Recorder,
}

#[async_trait]
impl TaskHandler for Recording {
    async fn run(&self, task: &Task) -> Result<(), String> {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(2 + (task.id % 7) as u64)).await;
        let end = Instant::now();
        let mut map = self.recorder.0.lock().unwrap();
        map.entry(task.id).or_default().push(Execution {
            worker: self.worker.clone(),
            start,
            end,
        });
        Ok(())
    }
}

struct Setup {
    coordination: MemoryCoordination,
    tasks: Arc<MemoryTaskStore>,
    recorder: Recorder,
    checker: Checker,
    stop: watch::Sender<bool>,
    participants: HashMap<String, ParticipantHandle>,
    joins: Vec<tokio::task::JoinHandle<()>>,
}

async fn setup(workers: &[&str]) -> Setup {
    setup_with(workers, None).await
}

async fn setup_with(workers: &[&str], retention: Option<Duration>) -> Setup {
    let coordination = MemoryCoordination::new();
    let store: Arc<dyn Coordination> = Arc::new(coordination.clone());
    let admin = Admin::new(store.connect(SESSION).await.unwrap(), "sched");
    admin
        .add_resource(&ResourceConfig::new(
            TASKS_RESOURCE,
            PARTITIONS,
            2,
            "MasterSlave",
        ))
        .await
        .unwrap();
    let tasks = Arc::new(MemoryTaskStore::new());
    let recorder = Recorder::default();
    let checker = Checker::new("MASTER", 1);
    let (stop, stopped) = watch::channel(false);
    let mut joins = Vec::new();
    let (controller, _) = Controller::new(
        store.clone(),
        ControllerConfig {
            cluster: "sched".into(),
            name: "c1".into(),
            session_timeout: SESSION,
            interval: Duration::from_millis(500),
            settle: Duration::from_millis(5),
        },
    );
    let s = stopped.clone();
    joins.push(tokio::spawn(async move {
        controller.run(s).await.unwrap();
    }));
    let mut participants = HashMap::new();
    for &id in workers {
        let mut handlers = Handlers::default();
        handlers.set_default(Arc::new(Recording {
            worker: id.into(),
            recorder: recorder.clone(),
        }));
        let mut config = WorkerConfig::new(InstanceId::new(id));
        config.step_down_timeout = Duration::from_millis(500);
        config.max_idle = Duration::from_millis(500);
        config.retention = retention;
        let worker = Worker::new(config, tasks.clone(), handlers);
        let (participant, handle) = Participant::new(
            store.clone(),
            ParticipantConfig {
                cluster: "sched".into(),
                instance: InstanceConfig::new(id),
                session_timeout: SESSION,
                max_parallel: 16,
            },
            checker.wrap(worker.transition_handler()),
        );
        participants.insert(id.to_owned(), handle);
        let s = stopped.clone();
        joins.push(tokio::spawn(async move {
            participant.run(s).await.unwrap();
        }));
        let s = stopped.clone();
        joins.push(tokio::spawn(async move { worker.run(s).await }));
    }
    Setup {
        coordination,
        tasks,
        recorder,
        checker,
        stop,
        participants,
        joins,
    }
}

async fn insert_spread(tasks: &dyn TaskStore, count: usize, over: Duration) -> Vec<TaskId> {
    let now = wall_clock_ms();
    let batch: Vec<NewTask> = (0..count)
        .map(|i| NewTask {
            name: format!("task-{i}"),
            payload: serde_json::json!(i),
            scheduled_at: now + (over.as_millis() as i64 * i as i64 / count as i64),
            partition_key: None,
            max_attempts: 5,
            handler: None,
            idempotency_key: None,
        })
        .collect();
    tasks
        .insert(batch, PARTITIONS, now)
        .await
        .unwrap()
        .into_iter()
        .map(|(t, _)| t.id)
        .collect()
}

async fn wait_all_completed(tasks: &dyn TaskStore, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = tasks
            .list(&ListFilter {
                status: Some(TaskStatus::Completed),
                limit: count + 1,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .tasks
            .len();
        if done == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {count} tasks completed in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finish(s: Setup) -> HashMap<TaskId, Vec<Execution>> {
    s.stop.send_replace(true);
    for j in s.joins {
        j.await.unwrap();
    }
    s.checker.assert_ok();
    s.recorder.0.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_runs_exactly_once_across_three_workers() {
    let s = setup(&["w1", "w2", "w3"]).await;
    let ids = insert_spread(&*s.tasks, 3_000, Duration::from_secs(2)).await;
    wait_all_completed(&*s.tasks, ids.len()).await;
    let tasks = s.tasks.clone();
    let runs = finish(s).await;
    for id in &ids {
        assert_eq!(
            runs.get(id).map(Vec::len),
            Some(1),
            "task {id}: {:?}",
            runs.get(id)
        );
        let task = tasks.get(*id).await.unwrap().unwrap();
        assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 1));
    }
    let workers: std::collections::HashSet<_> =
        runs.values().flatten().map(|e| e.worker.clone()).collect();
    assert_eq!(workers.len(), 3, "every worker ran tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_run_loses_nothing_and_never_overlaps() {
    let s = setup(&["w1", "w2", "w3"]).await;
    let ids = insert_spread(&*s.tasks, 3_000, Duration::from_secs(3)).await;
    // Mid-run, cut w2 off from the coordination store: its session expires after the timeout.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let ParticipantStatus::Live(session) = s.participants["w2"].status().borrow().clone() else {
        panic!("w2 not live");
    };
    s.coordination.suspend(&session);
    wait_all_completed(&*s.tasks, ids.len()).await;
    let runs = finish(s).await;
    let mut twice = 0;
    for id in &ids {
        let executions = runs
            .get(id)
            .unwrap_or_else(|| panic!("task {id} never ran"));
        if executions.len() > 1 {
            twice += 1;
            // Only a claim in flight on the cut-off worker may run again, and never at once.
            assert!(
                executions.iter().any(|e| e.worker == "w2"),
                "task {id}: {executions:?}"
            );
            let mut sorted = executions.clone();
            sorted.sort_by_key(|e| e.start);
            for pair in sorted.windows(2) {
                assert!(
                    pair[0].end <= pair[1].start,
                    "task {id} ran on two workers at once: {sorted:?}"
                );
            }
        }
    }
    println!("tasks run twice: {twice} of {}", ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_purged_after_the_retention() {
    let s = setup_with(&["w1", "w2"], Some(Duration::from_secs(1))).await;
    let ids = insert_spread(&*s.tasks, 50, Duration::from_millis(100)).await;
    wait_all_completed(&*s.tasks, ids.len()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = s
            .tasks
            .list(&ListFilter {
                limit: 100,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .tasks
            .len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} finished tasks still stored after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finish(s).await;
}
