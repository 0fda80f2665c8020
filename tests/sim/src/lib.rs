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

mod cluster;
pub mod history;
pub mod net;
pub mod rng;
pub mod store;
mod workload;

use cluster::{Action, Sim, clock};
use workload::{client, plan_faults, plan_workload};

use history::History;
use rng::Rng;
use rota_cluster::admin::Admin;
use rota_cluster::checker::Checker;
use rota_cluster::coordination::Coordination;
use rota_cluster::harness::resource;
use rota_cluster::teeth::Teeth;
use rota_memory::{MemoryCoordination, MemoryTaskStore};
use rota_model::StateModel;
use rota_scheduler::{Millis, Task, TaskStatus, Tasks};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::sim_store;
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
    // A client that panicked created some tasks and not the rest: the seed checked too little.
    let ids = client.await.unwrap_or_else(|e| {
        history.violation(format!("the simulated client failed: {e}"));
        Vec::new()
    });
    if ids.is_empty() {
        history.violation("the simulated client created no task");
    }
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
