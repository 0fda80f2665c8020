//! # rota-sim
//!
//! A deterministic simulation of a whole rota cluster: controllers, participants with their
//! workers, the memory coordination and task stores, and the API's create path, in one
//! single-threaded tokio runtime on paused time. A seed drives everything random: the workload
//! (tasks through `POST /tasks` with random due times, partition keys, run times and planned
//! failures) and the fault schedule (crashes and restarts, graceful stops, joins, session
//! expiry, cuts from the coordination store, frozen nodes whose calls land late, task-store
//! outages and failed calls, held and lost watch events, controller crashes, cuts and late
//! writes, a lost zone, maintenance, disabled instances).
//!
//! Invariants are checked as the run goes, not only at its end (see [`history`]): no task
//! runs twice at once; the store applies no claim or completion outside the partition's
//! current grant; no controller has a write applied once a newer epoch leads; the transition
//! checker's bound on MASTERs and epochs; every ideal state written and every rebalance of the
//! cluster as it is keeps its constraints. Once the faults stop, every task must reach a final
//! state and the external view converge to the ideal state within [`RECOVERY_BOUND`].
//!
//! [`run`] replays a seed exactly: the same seed gives the same trace (its digest is in the
//! [`Report`]). `ROTA_SIM_SEED=<n>` replays one seed in the tests.

pub mod history;
pub mod net;
pub mod rng;
pub mod store;

use history::History;
use net::{Link, SimCoordination};
use rng::Rng;
use rota_cluster::admin::Admin;
use rota_cluster::checker::Checker;
use rota_cluster::controller::{Controller, ControllerConfig};
use rota_cluster::coordination::{Coordination, Session};
use rota_cluster::harness::{RESOURCE, TestCluster, resource};
use rota_cluster::participant::{Participant, ParticipantConfig, ParticipantHandle};
use rota_cluster::teeth::Teeth;
use rota_memory::{MemoryCoordination, MemoryTaskStore};
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::{InstanceConfig, InstanceId, ResourceConfig, StateModel};
use rota_scheduler::worker::{HandlerError, Handlers, TaskHandler, Worker, WorkerConfig};
use rota_scheduler::{Millis, Task, TaskId, TaskStatus, Tasks};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use store::sim_store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The cluster's name.
pub const CLUSTER: &str = "sim";
/// Partitions of the tasks resource.
pub const PARTITIONS: u32 = 8;
/// Session timeout of every node.
pub const TIMEOUT: Duration = Duration::from_secs(6);
/// Faults happen in this window from the start; then everything is healed.
pub const FAULT_WINDOW: Duration = Duration::from_secs(120);
/// Once the faults stop, every task is final and the view converged within this long: a
/// lease (30 s) and a drain (32 s) may each have to run out, and a session time out.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(120);
/// How often the invariants on the cluster's state are checked (the others at every event).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The wall clock at the start of every run (a fixed instant, so a seed replays exactly).
pub const EPOCH_MS: Millis = 1_800_000_000_000;

/// What one run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Every broken invariant, with its time.
    pub violations: Vec<String>,
    /// Digest of the run's trace: the same seed gives the same digest.
    pub digest: u64,
    /// Tasks created through the API.
    pub tasks: usize,
    /// Handler runs.
    pub runs: u64,
    /// Faults injected.
    pub faults: u64,
    /// Completions and claims the store refused.
    pub refused_completions: u64,
    /// Controller writes the leader fence refused.
    pub refused_controller_writes: u64,
    /// From the end of the faults until every task was final and the view converged.
    pub recovery: Option<Duration>,
    /// The end of the trace, for a failure's message.
    pub trace_tail: String,
}

impl Report {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed with every guarantee intact.
pub fn run(seed: u64) -> Report {
    run_with(seed, Teeth::default())
}

/// Runs one seed with the given guarantees broken on purpose.
pub fn run_with(seed: u64, teeth: Teeth) -> Report {
    rota_cluster::teeth::set(teeth);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let report = runtime.block_on(simulate(seed));
    // Tasks still running (workers, controllers) end with the runtime.
    drop(runtime);
    rota_cluster::teeth::set(Teeth::default());
    report
}

/// The handler every worker runs: takes `payload.ms` of simulated time, fails its first
/// `payload.fail` attempts, and records each run's start and end (an aborted run ends when it
/// is dropped).
struct SimHandler {
    node: String,
    history: History,
}

struct RunGuard {
    history: History,
    task: TaskId,
    index: usize,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.history.run_ended(self.task, self.index);
    }
}

#[async_trait::async_trait]
impl TaskHandler for SimHandler {
    async fn run(&self, task: &Task) -> Result<(), HandlerError> {
        let _guard = RunGuard {
            history: self.history.clone(),
            task: task.id,
            index: self.history.run_started(&self.node, task.id, task.attempts),
        };
        let ms = task.payload["ms"].as_u64().unwrap_or(100);
        let fail = task.payload["fail"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if u64::from(task.attempts) <= fail {
            Err(format!("planned failure of attempt {}", task.attempts).into())
        } else {
            Ok(())
        }
    }
}

struct WorkerNode {
    zone: String,
    stop: watch::Sender<bool>,
    participant: JoinHandle<Result<(), rota_cluster::ClusterError>>,
    run: JoinHandle<()>,
    _handle: ParticipantHandle,
}

struct ControllerNode {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), rota_cluster::ClusterError>>,
}

/// A fault, or the end of one.
#[derive(Clone, Debug)]
enum Action {
    CrashWorker,
    StopWorker,
    RestartWorker(String),
    JoinWorker,
    ExpireWorkerSession,
    CutWorker(Duration),
    HealWorker(String),
    FreezeWorker(Duration),
    ThawWorker(String),
    StoreDown(Duration),
    StoreUp(String),
    StoreFailures(u32),
    ApiStoreFailures(u32),
    HoldWatches(Duration),
    ReleaseWatches(String),
    DropWatches,
    CrashController,
    RestartController(String),
    CutController(Duration),
    HealController(String),
    LateControllerWrite(Duration),
    ZoneLoss(Duration),
    Maintenance(Duration),
    MaintenanceOff,
    Disable(Duration),
    Enable(String),
}

struct Sim {
    rng: Rng,
    history: History,
    coordination: MemoryCoordination,
    tasks: Arc<MemoryTaskStore>,
    carrier: Arc<dyn Session>,
    admin: Admin,
    checker: Checker,
    checker_seen: usize,
    model: StateModel,
    resource: ResourceConfig,
    links: BTreeMap<String, Arc<Link>>,
    workers: BTreeMap<String, Option<WorkerNode>>,
    controllers: BTreeMap<String, Option<ControllerNode>>,
    zones: BTreeMap<String, String>,
    disabled: Vec<String>,
    next_worker: usize,
    start: Instant,
}

fn clock(start: Instant) -> Arc<dyn Fn() -> Millis + Send + Sync> {
    Arc::new(move || EPOCH_MS + start.elapsed().as_millis() as Millis)
}

impl Sim {
    fn link(&mut self, name: &str, controller: bool) -> Arc<Link> {
        self.links
            .entry(name.to_owned())
            .or_insert_with(|| Link::new(name, controller))
            .clone()
    }

    fn coordination_for(&mut self, name: &str, controller: bool) -> Arc<dyn Coordination> {
        let link = self.link(name, controller);
        SimCoordination::new(
            self.coordination.clone(),
            link,
            self.history.clone(),
            self.carrier.clone(),
            CLUSTER,
        )
    }

    fn start_worker(&mut self, id: &str) {
        let zone = self
            .zones
            .entry(id.to_owned())
            .or_insert_with(|| {
                format!(
                    "z{}",
                    id.trim_start_matches('w').parse::<usize>().unwrap_or(0) % 3
                )
            })
            .clone();
        let coordination = self.coordination_for(id, false);
        let link = self.link(id, false);
        let store = sim_store(self.tasks.clone(), link, self.history.clone());
        let mut config = WorkerConfig::new(InstanceId::new(id));
        config.partitions = PARTITIONS;
        let mut handlers = Handlers::default();
        handlers.set_default(Arc::new(SimHandler {
            node: id.to_owned(),
            history: self.history.clone(),
        }));
        let worker = Worker::with_clock(config, store, handlers, Arc::default(), clock(self.start));
        let (participant, handle) = Participant::new(
            coordination,
            ParticipantConfig {
                cluster: CLUSTER.into(),
                instance: InstanceConfig::new(id).with_zone(zone.as_str()),
                session_timeout: TIMEOUT,
                max_parallel: 8,
                capabilities: Vec::new(),
            },
            self.checker.wrap(worker.transition_handler()),
        );
        let (stop, stopped) = watch::channel(false);
        let participant = tokio::spawn(participant.run(stopped.clone()));
        let run = {
            let worker = worker.clone();
            tokio::spawn(async move { worker.run(stopped).await })
        };
        self.history.event(format!("start worker {id} in {zone}"));
        self.workers.insert(
            id.to_owned(),
            Some(WorkerNode {
                zone,
                stop,
                participant,
                run,
                _handle: handle,
            }),
        );
    }

    fn crash_worker(&mut self, id: &str) {
        if let Some(Some(node)) = self.workers.get_mut(id).map(Option::take) {
            node.participant.abort();
            node.run.abort();
            self.links[id].crashed();
            self.checker.crashed(&InstanceId::new(id));
        }
    }

    async fn stop_worker(&mut self, id: &str) {
        if let Some(Some(node)) = self.workers.get_mut(id).map(Option::take) {
            node.stop.send_replace(true);
            let _ = node.participant.await;
            let _ = node.run.await;
        }
    }

    fn start_controller(&mut self, name: &str) {
        let coordination = self.coordination_for(name, true);
        let (controller, _status) = Controller::new(
            coordination,
            ControllerConfig {
                cluster: CLUSTER.into(),
                name: name.into(),
                session_timeout: TIMEOUT,
                interval: Duration::from_secs(1),
                settle: Duration::from_millis(5),
            },
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(controller.run(stopped));
        self.history.event(format!("start controller {name}"));
        self.controllers
            .insert(name.to_owned(), Some(ControllerNode { stop, task }));
    }

    fn running_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A running worker that is not under another fault, if any.
    fn pick_worker(&mut self) -> Option<String> {
        let ids: Vec<String> = self
            .running_workers()
            .into_iter()
            .filter(|id| {
                let link = &self.links[id];
                !link.is_cut() && !link.store_down.load(Ordering::SeqCst)
            })
            .collect();
        (!ids.is_empty()).then(|| self.rng.pick(&ids).clone())
    }

    fn pick_controller(&mut self) -> Option<String> {
        let names: Vec<String> = self
            .controllers
            .iter()
            .filter(|(name, n)| n.is_some() && !self.links[*name].is_cut())
            .map(|(name, _)| name.clone())
            .collect();
        (!names.is_empty()).then(|| self.rng.pick(&names).clone())
    }

    async fn leader(&self) -> Option<String> {
        self.admin
            .leader()
            .await
            .ok()
            .flatten()
            .map(|l| l.controller)
    }

    /// Applies an action; returns the actions that end it, with their delays.
    async fn apply(&mut self, action: Action) -> Option<Vec<(Duration, Action)>> {
        let h = self.history.clone();
        match action {
            Action::CrashWorker => {
                let id = self.pick_worker()?;
                h.fault(format!("crash worker {id}"));
                self.crash_worker(&id);
                let after = Duration::from_millis(self.rng.range(1_000, 20_000));
                Some(vec![(after, Action::RestartWorker(id))])
            }
            Action::StopWorker => {
                let id = self.pick_worker()?;
                h.fault(format!("graceful stop of worker {id}"));
                self.stop_worker(&id).await;
                let after = Duration::from_millis(self.rng.range(1_000, 20_000));
                Some(vec![(after, Action::RestartWorker(id))])
            }
            Action::RestartWorker(id) => {
                if self.workers.get(&id).is_some_and(Option::is_none) {
                    h.event(format!("restart worker {id}"));
                    self.start_worker(&id);
                }
                None
            }
            Action::JoinWorker => {
                let id = format!("w{}", self.next_worker);
                self.next_worker += 1;
                h.fault(format!("worker {id} joins"));
                self.start_worker(&id);
                None
            }
            Action::ExpireWorkerSession => {
                let id = self.pick_worker()?;
                let session = self.links[&id].session()?;
                h.fault(format!("session of worker {id} expires"));
                self.coordination.expire(&session);
                None
            }
            Action::CutWorker(d) => {
                let id = self.pick_worker()?;
                h.fault(format!("worker {id} cut off from coordination for {d:?}"));
                self.links[&id].cut(&self.coordination);
                Some(vec![(d, Action::HealWorker(id))])
            }
            Action::HealWorker(id) => {
                h.event(format!("heal worker {id}"));
                self.links[&id].heal(&self.coordination);
                None
            }
            Action::FreezeWorker(d) => {
                let id = self.pick_worker()?;
                h.fault(format!("worker {id} frozen for {d:?}"));
                let link = self.links[&id].clone();
                link.freeze(true);
                link.cut(&self.coordination);
                Some(vec![(d, Action::ThawWorker(id))])
            }
            Action::ThawWorker(id) => {
                h.event(format!("thaw worker {id}"));
                let link = self.links[&id].clone();
                link.heal(&self.coordination);
                link.freeze(false);
                None
            }
            Action::StoreDown(d) => {
                let id = self.pick_worker()?;
                h.fault(format!("task store down for worker {id} for {d:?}"));
                self.links[&id].store_down.store(true, Ordering::SeqCst);
                Some(vec![(d, Action::StoreUp(id))])
            }
            Action::StoreUp(id) => {
                h.event(format!("task store back for worker {id}"));
                self.links[&id].store_down.store(false, Ordering::SeqCst);
                None
            }
            Action::StoreFailures(n) => {
                let id = self.pick_worker()?;
                h.fault(format!("next {n} task-store calls of worker {id} fail"));
                self.links[&id].store_failures.store(n, Ordering::SeqCst);
                None
            }
            Action::ApiStoreFailures(n) => {
                h.fault(format!("next {n} task-store calls of the API fail"));
                self.links["api"].store_failures.store(n, Ordering::SeqCst);
                None
            }
            Action::HoldWatches(d) => {
                let id = self.pick_worker()?;
                let session = self.links[&id].session()?;
                h.fault(format!("watch events of worker {id} held for {d:?}"));
                self.coordination.hold_watches(&session, true);
                Some(vec![(d, Action::ReleaseWatches(id))])
            }
            Action::ReleaseWatches(id) => {
                if let Some(session) = self.links[&id].session() {
                    self.coordination.hold_watches(&session, false);
                }
                None
            }
            Action::DropWatches => {
                let id = if self.rng.chance(50) {
                    self.pick_worker()?
                } else {
                    self.leader().await?
                };
                let session = self.links[&id].session()?;
                h.fault(format!("watch events of {id} lost"));
                self.coordination.drop_watches(&session);
                None
            }
            Action::CrashController => {
                let name = self.pick_controller()?;
                h.fault(format!("crash controller {name}"));
                if let Some(Some(node)) = self.controllers.get_mut(&name).map(Option::take) {
                    node.task.abort();
                    drop(node.stop);
                    self.links[&name].crashed();
                }
                let after = Duration::from_millis(self.rng.range(1_000, 20_000));
                Some(vec![(after, Action::RestartController(name))])
            }
            Action::RestartController(name) => {
                if self.controllers.get(&name).is_some_and(Option::is_none) {
                    self.start_controller(&name);
                }
                None
            }
            Action::CutController(d) => {
                let name = self.leader().await?;
                h.fault(format!("leading controller {name} cut off for {d:?}"));
                self.links[&name].cut(&self.coordination);
                Some(vec![(d, Action::HealController(name))])
            }
            Action::HealController(name) => {
                h.event(format!("heal controller {name}"));
                self.links[&name].heal(&self.coordination);
                None
            }
            Action::LateControllerWrite(d) => {
                let name = self.leader().await?;
                if self.links[&name].is_cut() {
                    return None;
                }
                h.event(format!("leader {name}'s next write will be {d:?} late"));
                self.links[&name]
                    .late_write_ms
                    .store(d.as_millis() as u32, Ordering::SeqCst);
                None
            }
            Action::ZoneLoss(d) => {
                let zone = format!("z{}", self.rng.range(0, 3));
                let lost: Vec<String> = self
                    .workers
                    .iter()
                    .filter(|(_, n)| n.as_ref().is_some_and(|n| n.zone == zone))
                    .map(|(id, _)| id.clone())
                    .collect();
                h.fault(format!("zone {zone} lost for {d:?}: {lost:?}"));
                for id in &lost {
                    self.crash_worker(id);
                }
                Some(
                    lost.into_iter()
                        .map(|id| (d, Action::RestartWorker(id)))
                        .collect(),
                )
            }
            Action::Maintenance(d) => {
                h.fault(format!("maintenance on for {d:?}"));
                let _ = self.admin.set_maintenance(true).await;
                Some(vec![(d, Action::MaintenanceOff)])
            }
            Action::MaintenanceOff => {
                h.event("maintenance off");
                let _ = self.admin.set_maintenance(false).await;
                None
            }
            Action::Disable(d) => {
                let id = self.pick_worker()?;
                h.fault(format!("instance {id} disabled for {d:?}"));
                let _ = self.admin.set_enabled(&InstanceId::new(&id), false).await;
                self.disabled.push(id.clone());
                Some(vec![(d, Action::Enable(id))])
            }
            Action::Enable(id) => {
                h.event(format!("instance {id} enabled"));
                let _ = self.admin.set_enabled(&InstanceId::new(&id), true).await;
                self.disabled.retain(|d| *d != id);
                None
            }
        }
    }
}

/// One task the workload creates through the API.
struct Planned {
    at: Duration,
    key: String,
    body: serde_json::Value,
}

/// The workload: `n` tasks over the first 100 s, some due at once, some up to 30 s later;
/// most short, some taking seconds; some failing their first attempts; some sharing a
/// partition key.
fn plan_workload(rng: &mut Rng) -> Vec<Planned> {
    let n = rng.range(40, 160);
    let mut planned: Vec<Planned> = (0..n)
        .map(|i| {
            let at = Duration::from_millis(rng.range(0, 100_000));
            let due = EPOCH_MS + at.as_millis() as Millis + rng.range(0, 30_000) as Millis;
            let ms = if rng.chance(30) {
                rng.range(1_000, 5_000)
            } else {
                rng.range(10, 500)
            };
            let fail = if rng.chance(15) { rng.range(1, 3) } else { 0 };
            let mut body = serde_json::json!({
                "name": format!("t{i}"),
                "payload": {"ms": ms, "fail": fail},
                "maxAttempts": 10,
            });
            if rng.chance(70) {
                let due = chrono::DateTime::from_timestamp_millis(due).expect("a time");
                body["scheduledTime"] = due
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    .into();
            }
            if rng.chance(30) {
                body["partitionKey"] = format!("k{}", rng.range(0, 5)).into();
            }
            Planned {
                at,
                key: format!("sim-{i}"),
                body,
            }
        })
        .collect();
    planned.sort_by_key(|p| p.at);
    planned
}

/// The faults: 3 to 12 at random times in the fault window.
fn plan_faults(rng: &mut Rng) -> Vec<(Duration, Action)> {
    let count = rng.range(3, 13);
    let timeout = TIMEOUT.as_millis() as u64;
    (0..count)
        .map(|_| {
            let at =
                Duration::from_millis(rng.range(5_000, FAULT_WINDOW.as_millis() as u64 - 10_000));
            let d = Duration::from_millis(rng.range(500, 3 * timeout));
            let action = match rng.range(0, 17) {
                0 => Action::CrashWorker,
                1 => Action::StopWorker,
                2 => Action::JoinWorker,
                3 => Action::ExpireWorkerSession,
                4 => Action::CutWorker(d),
                5 => Action::FreezeWorker(d.max(TIMEOUT + Duration::from_secs(2))),
                6 => Action::StoreDown(d),
                7 => Action::StoreFailures(rng.range(1, 6) as u32),
                8 => Action::ApiStoreFailures(rng.range(1, 4) as u32),
                9 => Action::HoldWatches(d),
                10 => Action::DropWatches,
                11 => Action::CrashController,
                12 => Action::CutController(d),
                13 => Action::LateControllerWrite(TIMEOUT * 2),
                14 => Action::ZoneLoss(d),
                15 => Action::Maintenance(d),
                _ => Action::Disable(d),
            };
            (at, action)
        })
        .collect()
}

/// Creates the planned tasks through the API's router, each at its time, retrying a 5xx with
/// the same idempotency key as a client would; returns the ids accepted.
async fn client(
    router: axum::Router,
    planned: Vec<Planned>,
    start: Instant,
    history: History,
) -> Vec<TaskId> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut ids = Vec::new();
    for p in planned {
        tokio::time::sleep_until(start + p.at).await;
        loop {
            let request = axum::http::Request::builder()
                .method("POST")
                .uri("/tasks")
                .header("content-type", "application/json")
                .header("idempotency-key", &p.key)
                .body(axum::body::Body::from(p.body.to_string()))
                .expect("a request");
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if status.is_success() {
                let id = json["id"].as_i64().expect("a task id");
                history.event(format!("created task {id} ({})", p.key));
                ids.push(id);
                break;
            }
            if status.is_server_error() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            history.violation(format!(
                "the API refused a valid task with {status}: {}",
                String::from_utf8_lossy(&body)
            ));
            break;
        }
    }
    ids
}

impl Sim {
    fn live_instances(&self) -> Vec<InstanceConfig> {
        self.workers
            .iter()
            .filter(|(id, n)| n.is_some() && !self.disabled.contains(id))
            .map(|(id, n)| {
                InstanceConfig::new(id.as_str()).with_zone(n.as_ref().unwrap().zone.as_str())
            })
            .collect()
    }

    fn check_assignment(
        &self,
        what: &str,
        ideal: &rota_model::IdealState,
        live: Option<&[InstanceConfig]>,
    ) {
        let top = self.model.top_state().as_str();
        for (p, intent) in ideal.partitions.iter().enumerate() {
            let tops = intent
                .replicas
                .iter()
                .filter(|(_, s)| s.as_str() == top)
                .count();
            if intent.replicas.len() > self.resource.replicas as usize || tops > 1 {
                self.history.violation(format!(
                    "{what} puts {} replicas ({tops} {top}) on partition {p}: {:?}",
                    intent.replicas.len(),
                    intent.replicas
                ));
            }
            if let Some(live) = live {
                for (i, _) in &intent.replicas {
                    if !live.iter().any(|l| l.id == *i) {
                        self.history
                            .violation(format!("{what} places partition {p} on {i}, not live"));
                    }
                }
                if tops != 1 {
                    self.history.violation(format!(
                        "{what} leaves partition {p} without a {top} over {} live instances",
                        live.len()
                    ));
                }
            }
        }
    }

    /// The invariants on the cluster's state, checked every [`CHECK_EVERY`].
    async fn check(&mut self) {
        let violations = self.checker.violations();
        for v in &violations[self.checker_seen..] {
            self.history.violation(format!("transition checker: {v}"));
        }
        self.checker_seen = violations.len();
        let Ok(Some(ideal)) = self.admin.ideal_state(RESOURCE).await else {
            return;
        };
        self.check_assignment("the ideal state", &ideal, None);
        let live = self.live_instances();
        if live.is_empty() {
            return;
        }
        match rebalance(&RebalanceInput {
            resource: &self.resource,
            state_model: &self.model,
            instances: &live,
            previous: Some(&ideal),
        }) {
            Ok(next) => self.check_assignment("a rebalance", &next, Some(&live)),
            Err(e) => self.history.violation(format!(
                "the rebalancer failed on {} instances: {e}",
                live.len()
            )),
        }
    }

    /// Advances simulated time to `until`, checking every [`CHECK_EVERY`].
    async fn advance_to(&mut self, until: Instant) {
        while Instant::now() < until {
            let step = (until - Instant::now()).min(CHECK_EVERY);
            tokio::time::sleep(step).await;
            self.check().await;
        }
    }

    /// Converged: the ideal state is the rebalancer's fixed point over the live instances and
    /// the external view equals it.
    async fn converged(&self) -> bool {
        let (Ok(Some(ideal)), Ok(Some(view))) = (
            self.admin.ideal_state(RESOURCE).await,
            self.admin.external_view(RESOURCE).await,
        ) else {
            return false;
        };
        TestCluster::view_map(&view) == TestCluster::ideal_map(&ideal)
            && rebalance(&RebalanceInput {
                resource: &self.resource,
                state_model: &self.model,
                instances: &self.live_instances(),
                previous: Some(&ideal),
            })
            .is_ok_and(|next| next == ideal)
    }
}

async fn simulate(seed: u64) -> Report {
    let start = Instant::now();
    let history = History::new();
    let coordination = MemoryCoordination::new();
    let long = Duration::from_secs(30 * 24 * 3600);
    let carrier = coordination.connect(long).await.expect("a session");
    let admin = Admin::new(
        coordination.connect(long).await.expect("a session"),
        CLUSTER,
    );
    let resource = resource("MasterSlave", PARTITIONS, 2);
    admin.add_resource(&resource).await.expect("the resource");
    let model = StateModel::builtin("MasterSlave").expect("a built-in model");
    let bound = model
        .bound(0)
        .resolve(resource.replicas, 100)
        .expect("a bound") as usize;
    let tasks = Arc::new(MemoryTaskStore::new());
    let mut sim = Sim {
        rng: Rng::new(seed),
        history: history.clone(),
        coordination,
        tasks: tasks.clone(),
        carrier,
        admin,
        checker: Checker::new(model.top_state().as_str(), bound),
        checker_seen: 0,
        model,
        resource,
        links: BTreeMap::new(),
        workers: BTreeMap::new(),
        controllers: BTreeMap::new(),
        zones: BTreeMap::new(),
        disabled: Vec::new(),
        next_worker: 0,
        start,
    };
    for i in 0..sim.rng.range(2, 4) {
        sim.start_controller(&format!("c{i}"));
    }
    let workers = sim.rng.range(3, 6) as usize;
    for i in 0..workers {
        sim.start_worker(&format!("w{i}"));
    }
    sim.next_worker = workers;
    let api_link = sim.link("api", false);
    let router = rota::api::router(
        rota::api::AppState {
            tasks: sim_store(tasks.clone(), api_link, history.clone()),
            partitions: PARTITIONS,
            handlers: rota::api::HandlerCatalog::fixed(["log".to_owned()]),
            cluster: None,
            metrics: Arc::default(),
            storage: "memory (simulated)".into(),
            now: clock(start),
        },
        &rota::config::ApiConfig::default(),
    );
    let planned = plan_workload(&mut sim.rng);
    let client = tokio::spawn(client(router, planned, start, history.clone()));
    // Faults and their ends, in time order (ties in the order they were planned).
    let mut queue: Vec<(Duration, u64, Action)> = plan_faults(&mut sim.rng)
        .into_iter()
        .enumerate()
        .map(|(i, (at, a))| (at, i as u64, a))
        .collect();
    let mut seq = queue.len() as u64;
    loop {
        queue.sort_by_key(|(at, s, _)| (*at, *s));
        if queue.is_empty() {
            break;
        }
        let (at, _, action) = queue.remove(0);
        sim.advance_to(start + at).await;
        for (after, end) in sim.apply(action).await.unwrap_or_default() {
            // Every fault ends within the window.
            let end_at = (at + after).min(FAULT_WINDOW);
            queue.push((end_at, seq, end));
            seq += 1;
        }
    }
    sim.advance_to(start + FAULT_WINDOW).await;
    history.event("faults over");
    let ids = client.await.unwrap_or_default();
    // Recovery: every task final, the view converged.
    let faults_over = Instant::now();
    let mut recovery = None;
    let mut last: Vec<Task> = Vec::new();
    while faults_over.elapsed() <= RECOVERY_BOUND {
        last.clear();
        for id in &ids {
            if let Ok(Some(t)) = tasks.get(*id).await {
                last.push(t);
            }
        }
        let all_final = last.len() == ids.len() && last.iter().all(|t| t.status.is_final());
        if all_final && sim.converged().await {
            recovery = Some(faults_over.elapsed());
            break;
        }
        sim.advance_to(Instant::now() + CHECK_EVERY).await;
    }
    match recovery {
        Some(d) => history.event(format!("recovered in {} ms", d.as_millis())),
        None => {
            let unfinished: Vec<String> = last
                .iter()
                .filter(|t| !t.status.is_final())
                .take(5)
                .map(|t| {
                    format!(
                        "{} {:?} on p{} attempts {}",
                        t.id, t.status, t.partition, t.attempts
                    )
                })
                .collect();
            history.violation(format!(
                "not recovered {} s after the faults: {} of {} tasks not final ({unfinished:?}), \
                 view converged: {}",
                RECOVERY_BOUND.as_secs(),
                last.iter().filter(|t| !t.status.is_final()).count() + ids.len() - last.len(),
                ids.len(),
                sim.converged().await
            ));
        }
    }
    // Nothing lost: every task completed, or failed only with its attempts spent; a completed
    // task ran.
    let runs = history.runs();
    for t in &last {
        let ok = match t.status {
            TaskStatus::Completed => runs.contains_key(&t.id),
            TaskStatus::Failed => t.attempts >= t.max_attempts,
            _ => recovery.is_none(),
        };
        if !ok {
            history.violation(format!(
                "task {} ended {:?} after {} of {} attempts ({} runs recorded)",
                t.id,
                t.status,
                t.attempts,
                t.max_attempts,
                runs.get(&t.id).map_or(0, Vec::len)
            ));
        }
    }
    for (name, node) in std::mem::take(&mut sim.controllers) {
        if let Some(node) = node {
            node.stop.send_replace(true);
            node.task.abort();
        }
        let _ = name;
    }
    let counts = history.counts();
    Report {
        seed,
        violations: history.violations(),
        digest: history.digest(),
        tasks: ids.len(),
        runs: counts.runs,
        faults: counts.faults,
        refused_completions: counts.refused_completions,
        refused_controller_writes: counts.refused_controller_writes,
        recovery,
        trace_tail: history.tail(
            std::env::var("ROTA_SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(60),
        ),
    }
}
