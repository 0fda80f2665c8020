//! The simulated cluster: its nodes (controllers, and participants with their workers, each
//! behind its own link to the stores), the handler every worker runs, and the faults applied to
//! them, with the checks made as the run goes.

use crate::history::History;
use crate::net::{Link, SimCoordination};
use crate::rng::Rng;
use crate::store::sim_store;
use crate::{CHECK_EVERY, CLUSTER, EPOCH_MS, PARTITIONS, TIMEOUT};
use rota_cluster::admin::Admin;
use rota_cluster::checker::Checker;
use rota_cluster::controller::Controller;
use rota_cluster::coordination::{Coordination, Session};
use rota_cluster::harness::{RESOURCE, TestCluster, controller_config};
use rota_cluster::participant::{Participant, ParticipantConfig, ParticipantHandle};
use rota_memory::{MemoryCoordination, MemoryTaskStore};
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::{InstanceConfig, InstanceId, ResourceConfig, StateModel};
use rota_scheduler::worker::{HandlerError, Handlers, TaskHandler, Worker, WorkerConfig};
use rota_scheduler::{Millis, Task, TaskId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The handler every worker runs: takes `payload.ms` of simulated time, fails its first
/// `payload.fail` attempts, and records each run's start and end (an aborted run ends when it
/// is dropped).
pub(crate) struct SimHandler {
    node: String,
    history: History,
}

pub(crate) struct RunGuard {
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

pub(crate) struct WorkerNode {
    pub(crate) zone: String,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) participant: JoinHandle<Result<(), rota_cluster::ClusterError>>,
    pub(crate) run: JoinHandle<()>,
    pub(crate) _handle: ParticipantHandle,
}

pub(crate) struct ControllerNode {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<Result<(), rota_cluster::ClusterError>>,
}

/// A fault, or the end of one.
#[derive(Clone, Debug)]
pub(crate) enum Action {
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

pub(crate) struct Sim {
    pub(crate) rng: Rng,
    pub(crate) history: History,
    pub(crate) coordination: MemoryCoordination,
    pub(crate) tasks: Arc<MemoryTaskStore>,
    pub(crate) carrier: Arc<dyn Session>,
    pub(crate) admin: Admin,
    pub(crate) checker: Checker,
    pub(crate) checker_seen: usize,
    pub(crate) model: StateModel,
    pub(crate) resource: ResourceConfig,
    pub(crate) links: BTreeMap<String, Arc<Link>>,
    pub(crate) workers: BTreeMap<String, Option<WorkerNode>>,
    pub(crate) controllers: BTreeMap<String, Option<ControllerNode>>,
    pub(crate) zones: BTreeMap<String, String>,
    pub(crate) disabled: Vec<String>,
    pub(crate) next_worker: usize,
    pub(crate) start: Instant,
}

pub(crate) fn clock(start: Instant) -> Arc<dyn Fn() -> Millis + Send + Sync> {
    Arc::new(move || EPOCH_MS + start.elapsed().as_millis() as Millis)
}

impl Sim {
    pub(crate) fn link(&mut self, name: &str, controller: bool) -> Arc<Link> {
        self.links
            .entry(name.to_owned())
            .or_insert_with(|| Link::new(name, controller))
            .clone()
    }

    pub(crate) fn coordination_for(
        &mut self,
        name: &str,
        controller: bool,
    ) -> Arc<dyn Coordination> {
        let link = self.link(name, controller);
        SimCoordination::new(
            self.coordination.clone(),
            link,
            self.history.clone(),
            self.carrier.clone(),
            CLUSTER,
        )
    }

    pub(crate) fn start_worker(&mut self, id: &str) {
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

    pub(crate) fn crash_worker(&mut self, id: &str) {
        if let Some(Some(node)) = self.workers.get_mut(id).map(Option::take) {
            node.participant.abort();
            node.run.abort();
            self.links[id].crashed();
            self.checker.crashed(&InstanceId::new(id));
        }
    }

    pub(crate) async fn stop_worker(&mut self, id: &str) {
        if let Some(Some(node)) = self.workers.get_mut(id).map(Option::take) {
            node.stop.send_replace(true);
            let _ = node.participant.await;
            let _ = node.run.await;
        }
    }

    pub(crate) fn start_controller(&mut self, name: &str) {
        let coordination = self.coordination_for(name, true);
        let (controller, _status) =
            Controller::new(coordination, controller_config(CLUSTER, name, TIMEOUT));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(controller.run(stopped));
        self.history.event(format!("start controller {name}"));
        self.controllers
            .insert(name.to_owned(), Some(ControllerNode { stop, task }));
    }

    pub(crate) fn running_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A running worker that is not under another fault, if any.
    pub(crate) fn pick_worker(&mut self) -> Option<String> {
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

    pub(crate) fn pick_controller(&mut self) -> Option<String> {
        let names: Vec<String> = self
            .controllers
            .iter()
            .filter(|(name, n)| n.is_some() && !self.links[*name].is_cut())
            .map(|(name, _)| name.clone())
            .collect();
        (!names.is_empty()).then(|| self.rng.pick(&names).clone())
    }

    pub(crate) async fn leader(&self) -> Option<String> {
        self.admin
            .leader()
            .await
            .ok()
            .flatten()
            .map(|l| l.controller)
    }

    /// Cuts `node` off from the coordination store, recording the fault as `what`.
    fn cut(&self, node: &str, what: String) {
        self.history.fault(what);
        self.links[node].cut(&self.coordination);
    }

    /// Heals `node`'s link to the coordination store, recording the event as `what`; nothing
    /// follows.
    fn heal(&self, node: &str, what: String) -> Option<Vec<(Duration, Action)>> {
        self.history.event(what);
        self.links[node].heal(&self.coordination);
        None
    }

    /// Applies an action; returns the actions that end it, with their delays.
    pub(crate) async fn apply(&mut self, action: Action) -> Option<Vec<(Duration, Action)>> {
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
                let what = format!("worker {id} cut off from coordination for {d:?}");
                self.cut(&id, what);
                Some(vec![(d, Action::HealWorker(id))])
            }
            Action::HealWorker(id) => self.heal(&id, format!("heal worker {id}")),
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
                let what = format!("leading controller {name} cut off for {d:?}");
                self.cut(&name, what);
                Some(vec![(d, Action::HealController(name))])
            }
            Action::HealController(name) => self.heal(&name, format!("heal controller {name}")),
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

impl Sim {
    pub(crate) fn live_instances(&self) -> Vec<InstanceConfig> {
        self.workers
            .iter()
            .filter(|(id, n)| n.is_some() && !self.disabled.contains(id))
            .map(|(id, n)| {
                InstanceConfig::new(id.as_str()).with_zone(n.as_ref().unwrap().zone.as_str())
            })
            .collect()
    }

    pub(crate) fn check_assignment(
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
    pub(crate) async fn check(&mut self) {
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
    pub(crate) async fn advance_to(&mut self, until: Instant) {
        while Instant::now() < until {
            let step = (until - Instant::now()).min(CHECK_EVERY);
            tokio::time::sleep(step).await;
            self.check().await;
        }
    }

    /// Converged: the ideal state is the rebalancer's fixed point over the live instances and
    /// the external view equals it.
    pub(crate) async fn converged(&self) -> bool {
        let (Ok(Some(ideal)), Ok(Some(view))) = (
            self.admin.ideal_state(RESOURCE).await,
            self.admin.external_view(RESOURCE).await,
        ) else {
            return false;
        };
        let instances = self.live_instances();
        TestCluster::settled(&self.resource, &self.model, &instances, &ideal, &view)
    }
}
