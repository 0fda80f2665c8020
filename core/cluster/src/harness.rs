//! A cluster in one process for tests and benchmarks, over any coordination store: controllers
//! and participants as tokio tasks, every participant's handler wrapped by the invariant
//! [`Checker`], and convergence checks against the rebalancer's fixed point. Waits are polls with
//! a deadline on tokio's clock, so paused-time tests run fast.

use super::ClusterError;
use super::admin::Admin;
use super::checker::Checker;
use super::controller::{Controller, ControllerConfig, ControllerStatus};
use super::participant::{
    Participant, ParticipantConfig, ParticipantHandle, TransitionHandler, TransitionRequest,
};
use crate::coordination::Coordination;
use async_trait::async_trait;
use rota_model::rebalancer::{RebalanceInput, rebalance};
use rota_model::state_model::StateModel;
use rota_model::{ExternalView, IdealState, InstanceConfig, InstanceId, ResourceConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Cluster name used by the harness.
pub const CLUSTER: &str = "test";
/// The harness's one resource.
pub const RESOURCE: &str = "res";
/// Session timeout of every controller and participant.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of every wait, on tokio's clock.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A test controller's configuration: a reconcile every second, 5 ms to settle.
pub fn controller_config(cluster: &str, name: &str, session_timeout: Duration) -> ControllerConfig {
    ControllerConfig {
        cluster: cluster.into(),
        name: name.into(),
        session_timeout,
        interval: Duration::from_secs(1),
        settle: Duration::from_millis(5),
    }
}

/// A handler that takes `delay` (on tokio's clock) per transition.
pub struct Work {
    /// Time per transition.
    pub delay: Duration,
}

#[async_trait]
impl TransitionHandler for Work {
    async fn on_transition(&self, _: &TransitionRequest) -> Result<(), String> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}

/// A running controller or participant.
pub struct Running<H> {
    /// Its task.
    pub task: JoinHandle<Result<(), ClusterError>>,
    /// Set to stop it gracefully.
    pub stop: watch::Sender<bool>,
    /// Its status handle.
    pub handle: H,
}

/// Controllers and participants of one cluster with one resource.
pub struct TestCluster {
    /// The store.
    pub store: Arc<dyn Coordination>,
    /// Operator access.
    pub admin: Admin,
    /// The invariant checker every participant's handler is wrapped in.
    pub checker: Checker,
    /// The resource's state model.
    pub model: StateModel,
    /// The resource.
    pub resource: ResourceConfig,
    /// Time each transition takes.
    pub work: Duration,
    /// Running controllers by name.
    pub controllers: BTreeMap<String, Running<watch::Receiver<ControllerStatus>>>,
    /// Running participants by id.
    pub participants: BTreeMap<String, Running<ParticipantHandle>>,
}

impl TestCluster {
    /// A cluster with `resource` (of a built-in `model`) created and nothing running.
    pub async fn new(
        store: Arc<dyn Coordination>,
        model: &str,
        resource: ResourceConfig,
        work: Duration,
    ) -> Self {
        let session = store.connect(TIMEOUT).await.unwrap();
        let admin = Admin::new(session, CLUSTER);
        admin.add_resource(&resource).await.unwrap();
        let model = StateModel::builtin(model).unwrap();
        let bound = model.bound(0).resolve(resource.replicas, 100).unwrap() as usize;
        Self {
            checker: Checker::new(model.top_state().as_str(), bound),
            store,
            admin,
            model,
            resource,
            work,
            controllers: BTreeMap::new(),
            participants: BTreeMap::new(),
        }
    }

    /// Starts a controller candidate.
    pub fn start_controller(&mut self, name: &str) {
        let (controller, status) = Controller::new(
            self.store.clone(),
            controller_config(CLUSTER, name, TIMEOUT),
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(controller.run(stopped));
        self.controllers.insert(
            name.into(),
            Running {
                task,
                stop,
                handle: status,
            },
        );
    }

    /// Starts a participant with a stable id.
    pub fn start_participant(&mut self, id: &str) {
        let work = Arc::new(Work { delay: self.work });
        self.start_participant_with(id, work);
    }

    /// Starts a participant with its own handler (wrapped by the checker).
    pub fn start_participant_with(&mut self, id: &str, handler: Arc<dyn TransitionHandler>) {
        let handler = self.checker.wrap(handler);
        let (participant, handle) = Participant::new(
            self.store.clone(),
            ParticipantConfig {
                cluster: CLUSTER.into(),
                instance: InstanceConfig::new(id),
                session_timeout: TIMEOUT,
                max_parallel: 8,
                capabilities: Vec::new(),
            },
            handler,
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(participant.run(stopped));
        self.participants
            .insert(id.into(), Running { task, stop, handle });
    }

    /// Graceful stop: replicas offline, session closed.
    pub async fn stop_participant(&mut self, id: &str) {
        let p = self.participants.remove(id).unwrap();
        p.stop.send_replace(true);
        p.task.await.unwrap().unwrap();
    }

    /// A crash: the task dies; its session expires after the timeout.
    pub fn kill_participant(&mut self, id: &str) {
        self.participants.remove(id).unwrap().task.abort();
        self.checker.crashed(&InstanceId::new(id));
    }

    /// Aborts a controller's task: its session expires after the timeout.
    pub fn kill_controller(&mut self, name: &str) {
        self.controllers.remove(name).unwrap().task.abort();
    }

    /// The leading controller and its epoch, if any.
    pub async fn leader(&self) -> Option<(String, u64)> {
        for (name, c) in &self.controllers {
            if let ControllerStatus::Leader { epoch } = *c.handle.borrow() {
                return Some((name.clone(), epoch));
            }
        }
        None
    }

    /// Instances of the running participants.
    pub fn live_instances(&self) -> Vec<InstanceConfig> {
        self.participants
            .keys()
            .map(|id| InstanceConfig::new(id.as_str()))
            .collect()
    }

    /// The external view as a map partition -> instance -> state.
    /// An external view as partition -> instance -> state, empty partitions left out.
    pub fn view_map(view: &ExternalView) -> BTreeMap<u32, BTreeMap<String, String>> {
        view.partitions
            .iter()
            .map(|(p, m)| {
                (
                    *p,
                    m.iter()
                        .map(|(i, s)| (i.to_string(), s.to_string()))
                        .collect(),
                )
            })
            .filter(|(_, m): &(u32, BTreeMap<String, String>)| !m.is_empty())
            .collect()
    }

    /// An ideal state as partition -> instance -> state, empty partitions left out.
    pub fn ideal_map(ideal: &IdealState) -> BTreeMap<u32, BTreeMap<String, String>> {
        ideal
            .partitions
            .iter()
            .enumerate()
            .map(|(p, intent)| {
                (
                    p as u32,
                    intent
                        .replicas
                        .iter()
                        .map(|(i, s)| (i.to_string(), s.to_string()))
                        .collect(),
                )
            })
            .filter(|(_, m): &(u32, BTreeMap<String, String>)| !m.is_empty())
            .collect()
    }

    /// Converged: the ideal state is the best possible assignment over the given instances (the
    /// rebalancer's fixed point), and the external view equals it.
    pub async fn converged_over(&self, instances: &[InstanceConfig]) -> bool {
        let (Some(ideal), Some(view)) = (
            self.admin.ideal_state(RESOURCE).await.unwrap(),
            self.admin.external_view(RESOURCE).await.unwrap(),
        ) else {
            return false;
        };
        Self::settled(&self.resource, &self.model, instances, &ideal, &view)
    }

    /// Whether `view` shows `ideal` and `ideal` is the rebalancer's fixed point over
    /// `instances`: what converged means, for any cluster under test.
    pub fn settled(
        resource: &ResourceConfig,
        model: &StateModel,
        instances: &[InstanceConfig],
        ideal: &IdealState,
        view: &ExternalView,
    ) -> bool {
        // The cheap comparison first: the rebalance is the costly part of a check.
        Self::view_map(view) == Self::ideal_map(ideal)
            && rebalance(&RebalanceInput {
                resource,
                state_model: model,
                instances,
                previous: Some(ideal),
            })
            .is_ok_and(|next| next == *ideal)
    }

    /// Waits until converged over the running participants, checking each time the external
    /// view is written rather than on a poll: the moment of convergence to within one store
    /// event, for timing (checker asserted).
    pub async fn wait_converged_on_events(&self) {
        let instances = self.live_instances();
        let key = self.admin.keys().external_view(RESOURCE);
        let mut view = self.admin.session().watch(&key, false).await.unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        // The watch is registered before the first check, so no write can fall in between.
        while !self.converged_over(&instances).await {
            tokio::time::timeout_at(deadline, view.next())
                .await
                .expect("no convergence within the deadline")
                .expect("the watch ended");
        }
        self.checker.assert_ok();
    }

    /// Waits until converged over the running participants (checker asserted).
    pub async fn wait_converged(&self) {
        let instances = self.live_instances();
        self.wait_for("convergence", || self.converged_over(&instances))
            .await;
    }

    /// Waits until more than `calls` transitions have been called: transitions are under way.
    pub async fn wait_transitions(&self, calls: usize) {
        let under_way = || async { self.checker.calls().len() > calls };
        self.wait_for("transitions in flight", under_way).await;
    }

    /// Polls `condition` until it holds (checker asserted), failing at the deadline.
    pub async fn wait_for<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !condition().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.checker.assert_ok();
    }

    /// Stops everything gracefully and asserts the checker.
    pub async fn shutdown(mut self) {
        for (_, p) in std::mem::take(&mut self.participants) {
            p.stop.send_replace(true);
            let _ = p.task.await;
        }
        for (_, c) in std::mem::take(&mut self.controllers) {
            c.stop.send_replace(true);
            let _ = c.task.await;
        }
        self.checker.assert_ok();
    }
}

/// A resource named [`RESOURCE`].
pub fn resource(model: &str, partitions: u32, replicas: u32) -> ResourceConfig {
    ResourceConfig::new(RESOURCE, partitions, replicas, model)
}

/// The scenario every production coordination backend runs against its real server: for each
/// built-in state model, a leader and a standby controller, three participants converge, a
/// fourth joins, one leaves gracefully, the leader is killed and a new one takes over with a
/// higher epoch, and a fifth participant joins under it — converged (and checked by the
/// invariant checker) after every step.
pub async fn builtin_models_converge_and_fail_over(store: Arc<dyn Coordination>) {
    for model in StateModel::BUILTINS {
        let mut c = TestCluster::new(
            store.clone(),
            model,
            resource(model, 12, 2),
            Duration::from_millis(2),
        )
        .await;
        c.start_controller("c1");
        c.wait_for("a leader", || async { c.leader().await.is_some() })
            .await;
        c.start_controller("c2");
        for id in ["p1", "p2", "p3"] {
            c.start_participant(id);
        }
        c.wait_converged().await;
        c.start_participant("p4");
        c.wait_converged().await;
        c.stop_participant("p1").await;
        c.wait_converged().await;
        let (old, epoch) = c.leader().await.expect("a leader");
        c.kill_controller(&old);
        c.wait_for("a new leader", || async {
            c.leader().await.is_some_and(|(_, e)| e > epoch)
        })
        .await;
        c.start_participant("p5");
        c.wait_converged().await;
        c.shutdown().await;
    }
}

/// The convergence benchmark's scenario, in real time: 1,000 partitions x 3 replicas
/// (MasterSlave) over 5 participants with no-op transitions and one controller. Returns the
/// time to converge from nothing, and then after a sixth participant joins.
pub async fn time_convergence_and_join(store: Arc<dyn Coordination>) -> (Duration, Duration) {
    let mut c = TestCluster::new(
        store,
        "MasterSlave",
        resource("MasterSlave", 1000, 3),
        Duration::ZERO,
    )
    .await;
    let started = std::time::Instant::now();
    c.start_controller("c1");
    for id in ["p1", "p2", "p3", "p4", "p5"] {
        c.start_participant(id);
    }
    c.wait_converged_on_events().await;
    let initial = started.elapsed();
    let joined = std::time::Instant::now();
    c.start_participant("p6");
    c.wait_converged_on_events().await;
    let join = joined.elapsed();
    c.shutdown().await;
    (initial, join)
}
