//! Workers end to end on the in-memory stores, in real time: tasks due over the next seconds are
//! each executed exactly once across three workers, and when one worker is cut off from the
//! coordination store mid-run nothing is lost and no task runs on two workers at once.
//!
//! The handover tests (on tokio's paused clock: seconds of work take no time) run tasks of
//! seconds through a "receiver" that, like a webhook's, goes on
//! with a run its caller gave up on, and records when each run starts and ends: a graceful stop,
//! a worker joining, an instance disabled and a task-store outage at completion time must cause
//! neither an overlapping run nor a second one.

use async_trait::async_trait;
use rota_cluster::admin::Admin;
use rota_cluster::checker::Checker;
use rota_cluster::controller::{Controller, ControllerConfig};
use rota_cluster::coordination::Coordination;
use rota_cluster::participant::{
    Participant, ParticipantConfig, ParticipantHandle, ParticipantStatus,
};
use rota_memory::{MemoryCoordination, MemoryTaskStore};
use rota_model::{InstanceConfig, InstanceId, ResourceConfig};
use rota_scheduler::conformance::calls::inserting;
use rota_scheduler::conformance::recorder::{
    Recorder, Runs, assert_one_at_a_time, assert_only_cut_off_runs_repeat, assert_ran_once_each,
};
use rota_scheduler::prelude::*;
use rota_scheduler::store::{Call, Layer, Layered, Pending};
use rota_scheduler::worker::{Handlers, Worker, WorkerConfig, wall_clock_ms};
use rota_scheduler::{
    Deadlined, ListFilter, NewTask, StoreError, TASKS_RESOURCE, TaskId, TaskStatus,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock: real time in most tests, paused (and advanced at will) in the handover ones.
use tokio::sync::watch;
use tokio::time::Instant;

const PARTITIONS: u32 = 12;
const SESSION: Duration = Duration::from_secs(2);
/// The deadline of the workers' task-store calls.
const STORE_DEADLINE: Duration = Duration::from_secs(3);

/// What makes a task store unreachable: while `down`, every call fails as a lost connection
/// would; while `hung`, every call waits (a frozen database) and goes on once it thaws.
#[derive(Default)]
struct Outage {
    down: std::sync::atomic::AtomicBool,
    hung: std::sync::atomic::AtomicBool,
    /// The calls refused while down, by call.
    refused: Mutex<HashMap<&'static str, usize>>,
}

#[async_trait]
impl Layer for Outage {
    async fn around<T: Send + 'static>(
        &self,
        call: Call<'_>,
        inner: Pending<T>,
    ) -> Result<T, StoreError> {
        while self.hung.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            *self.refused.lock().unwrap().entry(call.name()).or_default() += 1;
            return Err(StoreError::Unavailable(
                "connection refused (outage)".into(),
            ));
        }
        inner.await
    }
}

struct Setup {
    coordination: MemoryCoordination,
    admin: Admin,
    /// The store as the workers see it.
    tasks: Arc<Layered<Outage, MemoryTaskStore>>,
    recorder: Recorder,
    checker: Checker,
    stop: watch::Sender<bool>,
    participants: HashMap<String, ParticipantHandle>,
    joins: Vec<tokio::task::JoinHandle<()>>,
    options: Options,
    /// Each worker's own stop (its participant and its poll loop).
    worker_stops: HashMap<String, watch::Sender<bool>>,
}

#[derive(Clone, Default)]
struct Options {
    retention: Option<Duration>,
    /// How long each run takes (default: a few milliseconds).
    work: Option<Duration>,
}

async fn setup(workers: &[&str]) -> Setup {
    setup_with(workers, None).await
}

async fn setup_with(workers: &[&str], retention: Option<Duration>) -> Setup {
    setup_options(
        workers,
        Options {
            retention,
            ..Options::default()
        },
    )
    .await
}

async fn setup_options(workers: &[&str], options: Options) -> Setup {
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
    let tasks = Arc::new(Layered::new(
        Outage::default(),
        Arc::new(MemoryTaskStore::new()),
    ));
    let recorder = options
        .work
        .map_or_else(Recorder::default, Recorder::taking);
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
    let mut s = Setup {
        coordination,
        admin,
        tasks,
        recorder,
        checker,
        stop,
        participants: HashMap::new(),
        joins,
        options,
        worker_stops: HashMap::new(),
    };
    for &id in workers {
        s.start_worker(id);
    }
    s
}

impl Setup {
    /// Starts a worker (participant and poll loop) with its own stop.
    fn start_worker(&mut self, id: &str) {
        let store: Arc<dyn Coordination> = Arc::new(self.coordination.clone());
        let mut handlers = Handlers::default();
        handlers.set_default(Arc::new(self.recorder.clone()));
        let mut config = WorkerConfig::new(InstanceId::new(id));
        config.step_down_timeout = Duration::from_millis(500);
        config.max_idle = Duration::from_millis(500);
        config.retention = self.options.retention;
        // As in production, every store call has a deadline.
        let tasks = Arc::new(Deadlined::with_deadline(self.tasks.clone(), STORE_DEADLINE));
        let worker = Worker::new(config, tasks, handlers);
        let (participant, handle) = Participant::new(
            store,
            ParticipantConfig {
                cluster: "sched".into(),
                instance: InstanceConfig::new(id),
                session_timeout: SESSION,
                max_parallel: 16,
                capabilities: Vec::new(),
            },
            self.checker.wrap(worker.transition_handler()),
        );
        self.participants.insert(id.to_owned(), handle);
        // Stopped by its own switch or the whole setup's.
        let (own, mut stopped) = watch::channel(false);
        let mut all = self.stop.subscribe();
        let (either, s) = watch::channel(false);
        self.joins.push(tokio::spawn(async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = all.wait_for(|s| *s) => {}
            }
            either.send_replace(true);
            // Keep the sender alive until both loops have seen it.
            either.closed().await;
        }));
        self.worker_stops.insert(id.to_owned(), own);
        let p = s.clone();
        self.joins.push(tokio::spawn(async move {
            participant.run(p).await.unwrap();
        }));
        self.joins
            .push(tokio::spawn(async move { worker.run(s).await }));
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
        .insert(inserting(batch, PARTITIONS, now))
        .await
        .unwrap()
        .into_iter()
        .map(|(t, _)| t.id)
        .collect()
}

async fn wait_all_completed(tasks: &dyn TaskStore, count: usize) {
    rota_scheduler::conformance::wait_completed(tasks, count, Duration::from_secs(60)).await;
}

/// Waits until the tasks `ids` have completed, then [`stop`]s.
async fn finish(s: Setup, ids: &[TaskId]) -> Runs {
    wait_all_completed(&*s.tasks, ids.len()).await;
    stop(s).await
}

/// Stops everything and checks the transitions; the runs recorded.
async fn stop(s: Setup) -> Runs {
    s.stop.send_replace(true);
    for j in s.joins {
        j.await.unwrap();
    }
    s.checker.assert_ok();
    s.recorder.runs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_runs_exactly_once_across_three_workers() {
    let s = setup(&["w1", "w2", "w3"]).await;
    let ids = insert_spread(&*s.tasks, 3_000, Duration::from_secs(2)).await;
    let tasks = s.tasks.clone();
    let runs = finish(s, &ids).await;
    assert_ran_once_each(&runs, &ids);
    for id in &ids {
        let task = tasks.get(*id).await.unwrap().unwrap();
        assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 1));
    }
    let workers: std::collections::HashSet<_> =
        runs.values().flatten().map(|e| e.worker.clone()).collect();
    assert_eq!(workers.len(), 3, "every worker ran tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_run_loses_nothing_and_never_overlaps() {
    // Runs of a second, so that w2 has runs going on when it is cut off.
    let s = setup_options(
        &["w1", "w2", "w3"],
        Options {
            work: Some(Duration::from_secs(1)),
            ..Options::default()
        },
    )
    .await;
    let ids = insert_spread(&*s.tasks, 300, Duration::from_secs(3)).await;
    // Mid-run, cut w2 off from the coordination store: its session expires after the timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.recorder.going_on("w2") < 4 {
        assert!(Instant::now() < deadline, "w2 never had 4 runs going on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "w2 had {} runs going on when cut off",
        s.recorder.going_on("w2")
    );
    let ParticipantStatus::Live(session) = s.participants["w2"].status().borrow().clone() else {
        panic!("w2 not live");
    };
    s.coordination.suspend(&session);
    let runs = finish(s, &ids).await;
    let twice = assert_only_cut_off_runs_repeat(&runs, &ids, "w2");
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
    stop(s).await;
}

/// Three workers start 24 tasks of two seconds each, all due now; returns once a dozen runs
/// are under way.
async fn long_runs_under_way() -> (Setup, Vec<TaskId>) {
    runs_under_way(Duration::from_secs(2)).await
}

/// Three workers start 24 tasks of `work` each, all due now; returns once a dozen runs are
/// under way.
async fn runs_under_way(work: Duration) -> (Setup, Vec<TaskId>) {
    let s = setup_options(
        &["w1", "w2", "w3"],
        Options {
            work: Some(work),
            ..Options::default()
        },
    )
    .await;
    let ids = insert_spread(&*s.tasks, 24, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.recorder.started() < 12 {
        assert!(Instant::now() < deadline, "the runs did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (s, ids)
}

/// Waits until `worker` leads a partition (`true`) or leads none (`false`), as the external
/// view shows it.
async fn wait_until_leading(s: &Setup, worker: &str, leading: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = s.admin.external_view(TASKS_RESOURCE).await.unwrap();
        let leads = view.is_some_and(|v| {
            v.partitions.values().any(|holders| {
                holders
                    .iter()
                    .any(|(i, st)| i.as_str() == worker && st == "MASTER")
            })
        });
        if leads == leading {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{worker} still {} a partition",
            if leading { "does not lead" } else { "leads" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Once `worker` leads a partition (`leading`) or none, the setup finishes its tasks: each ran
/// exactly once, to its end, across the handover.
async fn handed_over(s: Setup, ids: &[TaskId], worker: &str, leading: bool) {
    wait_until_leading(&s, worker, leading).await;
    ran_once_each(&finish(s, ids).await, ids);
}

/// Every task ran exactly once, to its end.
fn ran_once_each(runs: &Runs, ids: &[TaskId]) {
    assert_ran_once_each(runs, ids);
    assert!(runs.values().flatten().all(|e| e.end.is_some()));
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_waits_for_runs_in_flight() {
    let (s, ids) = long_runs_under_way().await;
    s.worker_stops["w2"].send_replace(true);
    let runs = finish(s, &ids).await;
    ran_once_each(&runs, &ids);
    assert!(runs.values().flatten().any(|e| e.worker == "w2"));
}

#[tokio::test(start_paused = true)]
async fn a_joining_worker_takes_partitions_only_once_their_runs_ended() {
    let (mut s, ids) = long_runs_under_way().await;
    s.start_worker("w4");
    handed_over(s, &ids, "w4", true).await;
}

#[tokio::test(start_paused = true)]
async fn disabling_an_instance_moves_its_partitions_after_their_runs() {
    let (s, ids) = long_runs_under_way().await;
    s.admin
        .set_enabled(&InstanceId::new("w2"), false)
        .await
        .unwrap();
    handed_over(s, &ids, "w2", false).await;
}

#[tokio::test(start_paused = true)]
async fn completions_survive_a_task_store_outage() {
    let (s, ids) = long_runs_under_way().await;
    // The runs under way end during the outage: their completions cannot be written.
    s.tasks
        .layer()
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.tasks
        .layer()
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let refused = s.tasks.layer().refused.lock().unwrap().clone();
    assert!(
        refused.get("complete").is_some_and(|&n| n > 0),
        "no completion was tried during the outage: {refused:?}"
    );
    ran_once_each(&finish(s, &ids).await, &ids);
}

#[tokio::test(start_paused = true)]
async fn a_worker_cut_off_while_the_store_hangs_stops_its_runs_within_its_session() {
    // Runs longer than the session, so that the cut-off worker's are still under way when its
    // session expires.
    let (s, ids) = runs_under_way(Duration::from_secs(20)).await;
    s.tasks
        .layer()
        .hung
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ParticipantStatus::Live(session) = s.participants["w2"].status().borrow().clone() else {
        panic!("w2 not live");
    };
    let cut = Instant::now();
    s.coordination.suspend(&session);
    // The store stays frozen well past w2's session, then thaws: whatever waited on it goes on.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let thaw = Instant::now();
    s.tasks
        .layer()
        .hung
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let runs = finish(s, &ids).await;
    let mut cut_off = 0;
    for (id, executions) in &runs {
        for e in executions
            .iter()
            .filter(|e| e.worker == "w2" && e.start < cut)
        {
            if e.end.is_some_and(|end| end <= cut + SESSION) {
                continue;
            }
            cut_off += 1;
            // Its step-down could not reach the store, yet w2 stopped waiting on the run
            // before its session could expire (and the partition move elsewhere).
            let stopped = e.caller_done.expect("a caller's end");
            assert!(
                stopped <= cut + SESSION,
                "task {id}: w2 still ran it {:?} after it was cut off",
                stopped - cut
            );
        }
        // (Once the store thaws, w2, back with a new session, may be given partitions again.)
        assert!(
            executions
                .iter()
                .all(|e| e.worker != "w2" || e.start < cut || e.start >= thaw),
            "task {id}: w2 started a run while cut off: {executions:?}"
        );
        assert_one_at_a_time(*id, executions);
    }
    assert!(cut_off > 0, "w2 had no run under way when it was cut off");
}
