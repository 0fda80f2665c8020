//! A participant: one instance that holds partition replicas and moves them between states
//! when the controller asks.
//!
//! Per session it registers (auto-joins the cluster with its stable id, clears the current
//! states of its own earlier sessions, publishes its ephemeral live-instance key), then serves
//! the messages addressed to it: each runs the user's [`TransitionHandler`] (bounded
//! parallelism, one transition at a time per partition) and then, in one transaction, records
//! the new state in its current state and deletes the message. Transitions that finish while
//! such a write is in flight are recorded together by the next one (group commit: one write for
//! many transitions, never a wait for a batch to fill). A failing handler leaves the replica in
//! ERROR until [`ParticipantHandle::reset`].
//!
//! Messages for another session, from an older leader, or whose `from` state is not the
//! replica's state are discarded.
//!
//! **No zombie keeps acting.** When the session is suspended (no contact with the store) the
//! participant at once stops starting transitions and takes every replica it holds to the
//! initial state through the handler. The store cannot expire the session, and the controller
//! cannot grant those replicas elsewhere, before the session timeout has passed since contact
//! was lost; the participant starts stepping down at that moment, so it has stopped unless its
//! handler takes about as long as the whole timeout. If contact returns in time it reports the
//! replicas as offline and the controller brings them back; if the session expires it
//! registers again with a new one.

use super::ClusterError;
use super::keys::ClusterKeys;
use super::records::InstanceCapabilities;
use crate::coordination::{
    CoordError, Coordination, CreateMode, MAX_TRANSACTION_OPS, Op, Session, SessionState,
    WatchEvent,
};
use async_trait::async_trait;
use rota_model::state_model::{StateModel, StateModelSpec};
use rota_model::{
    CurrentState, Epoch, InstanceConfig, InstanceId, LiveInstance, Message, PartitionCurrent,
    PartitionId, Record, ResourceConfig, SessionId, StateName,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// One state transition of one replica, as handed to the user's handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionRequest {
    /// This instance.
    pub instance: InstanceId,
    /// Resource.
    pub resource: String,
    /// Partition.
    pub partition: PartitionId,
    /// State the replica is in.
    pub from: StateName,
    /// State to move it to.
    pub to: StateName,
    /// The state model's top state (the one that leads: `MASTER`, `LEADER`, `ONLINE`), so a
    /// handler need not know the model's names.
    pub top: StateName,
    /// Partition epoch: a grant of the top state carries a new, higher one. Pass it to storage
    /// with every write the replica's role allows, so that writes of a superseded holder fail.
    pub epoch: Epoch,
    /// When the transition must be over, if it is a step-down forced by the session: the
    /// participant lost contact with the store (its session may expire, and the replica be
    /// granted elsewhere, from then on) or the session has ended (the deadline is now). `None`
    /// when the controller asked for the transition, or the participant is shutting down: the
    /// next holder is not promoted before this transition is over, so the handler may take the
    /// time it needs.
    pub deadline: Option<tokio::time::Instant>,
}

/// The user's code: what moving a replica from one state to another means.
#[async_trait]
pub trait TransitionHandler: Send + Sync + 'static {
    /// Performs the transition. An error puts the replica in ERROR.
    async fn on_transition(&self, request: &TransitionRequest) -> Result<(), String>;

    /// The session can no longer be relied on (`Some`: lost contact, or ended): every transition
    /// in flight, including one the controller asked for with no deadline, must be over by
    /// then. `None`: contact is back. By default nothing happens.
    fn session_deadline(&self, deadline: Option<tokio::time::Instant>) {
        let _ = deadline;
    }

    /// A session began with this timeout, as the store granted it (which may differ from the
    /// one asked for). By default nothing happens.
    fn session_timeout(&self, granted: Duration) {
        let _ = granted;
    }
}

/// How a participant runs.
#[derive(Clone, Debug)]
pub struct ParticipantConfig {
    /// Cluster name.
    pub cluster: String,
    /// This instance (registered if the cluster does not know it yet).
    pub instance: InstanceConfig,
    /// Coordination session timeout.
    pub session_timeout: Duration,
    /// Transitions run at the same time, at most.
    pub max_parallel: usize,
    /// What this instance offers (a worker: the handlers it can run), published under an
    /// ephemeral key for as long as its session lives; empty: nothing published.
    pub capabilities: Vec<String>,
}

/// What a participant is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantStatus {
    /// Connecting or registering.
    Connecting,
    /// Registered and serving on this session.
    Live(SessionId),
    /// Out of contact with the store; replicas taken offline.
    Suspended,
    /// Shut down.
    Stopped,
}

/// Handle to a running participant.
#[derive(Clone)]
pub struct ParticipantHandle {
    status: watch::Receiver<ParticipantStatus>,
    resets: mpsc::UnboundedSender<(String, PartitionId)>,
}

impl ParticipantHandle {
    /// The participant's status.
    pub fn status(&self) -> watch::Receiver<ParticipantStatus> {
        self.status.clone()
    }

    /// Asks the participant to reset a replica in ERROR to the initial state.
    pub fn reset(&self, resource: &str, partition: PartitionId) {
        let _ = self.resets.send((resource.to_owned(), partition));
    }
}

/// A participant.
pub struct Participant {
    store: Arc<dyn Coordination>,
    config: ParticipantConfig,
    handler: Arc<dyn TransitionHandler>,
    keys: ClusterKeys,
    status: watch::Sender<ParticipantStatus>,
    resets: mpsc::UnboundedReceiver<(String, PartitionId)>,
}

/// A replica of this instance: (resource, partition).
type Replica = (String, PartitionId);

/// State of one session of a participant.
struct Serving {
    session: Arc<dyn Session>,
    instance: InstanceId,
    keys: ClusterKeys,
    handler: Arc<dyn TransitionHandler>,
    /// The replicas held, by resource: the participant's own truth, kept as the records its
    /// current-state writes encode (no copy per write).
    replicas: Mutex<BTreeMap<String, CurrentState>>,
    /// Resources whose current-state key exists in this session.
    written: SyncMutex<BTreeSet<String>>,
    /// Per resource, the finished transitions waiting for their current-state write.
    recorders: SyncMutex<BTreeMap<String, Arc<Recorder>>>,
    partition_locks: SyncMutex<BTreeMap<Replica, Arc<Mutex<()>>>>,
    models: Mutex<BTreeMap<String, Arc<StateModel>>>,
    /// False while suspended or stopping: no transition starts.
    active: AtomicBool,
    highest_leader: AtomicU64,
    permits: Semaphore,
    /// The permit count: holding all of them means no transition is running.
    parallel: u32,
}

enum Ended {
    Shutdown,
    SessionLost,
}

/// Messages being processed.
type Processing = JoinSet<Processed>;

/// The outcome of processing one message.
struct Processed {
    key: String,
    /// 0 for the first try.
    attempt: u32,
    result: Result<(), ClusterError>,
}

/// First wait before processing a message again after a failed store call; it doubles per
/// attempt up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A finished transition waiting for its state to be written: the message to delete with it,
/// and the channel that reports the write.
type Finished = (String, oneshot::Sender<Result<(), ClusterError>>);

/// The current-state writes of one resource: one at a time, each for every transition that
/// finished before it started.
#[derive(Default)]
struct Recorder {
    waiting: SyncMutex<Vec<Finished>>,
    writing: Mutex<()>,
}

impl Participant {
    /// A participant running `handler`; the handle reports status and accepts resets.
    pub fn new(
        store: Arc<dyn Coordination>,
        config: ParticipantConfig,
        handler: Arc<dyn TransitionHandler>,
    ) -> (Self, ParticipantHandle) {
        let (status, status_rx) = watch::channel(ParticipantStatus::Connecting);
        let (resets_tx, resets) = mpsc::unbounded_channel();
        let keys = ClusterKeys::new(&config.cluster);
        (
            Self {
                store,
                config,
                handler,
                keys,
                status,
                resets,
            },
            ParticipantHandle {
                status: status_rx,
                resets: resets_tx,
            },
        )
    }

    /// Serves until `shutdown` becomes true; then takes its replicas offline and leaves.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ClusterError> {
        while !super::stopping(&shutdown) {
            self.status.send_replace(ParticipantStatus::Connecting);
            let Some(session) = super::connect(
                &*self.store,
                self.config.session_timeout,
                &mut shutdown,
                "participant",
            )
            .await
            else {
                break;
            };
            match self.serve(session.clone(), &mut shutdown).await {
                Ok(Ended::Shutdown) => {
                    let _ = session.close().await;
                    break;
                }
                Ok(Ended::SessionLost) => {}
                Err(e) => {
                    debug!(error = %e, "session ended");
                    if super::stopping(&shutdown) {
                        let _ = session.close().await;
                        break;
                    }
                }
            }
            // Whatever ended the session (an expiry, a call that found it gone), nothing the
            // handler runs may outlive it: the next session may be granted the same partitions.
            self.handler
                .session_deadline(Some(tokio::time::Instant::now()));
            if !session.state().borrow().is_final() {
                // Not expired yet (for instance a refused registration): give it up.
                let _ = session.close().await;
            }
        }
        self.status.send_replace(ParticipantStatus::Stopped);
        Ok(())
    }

    /// Publishes what this instance offers, under an ephemeral key of `session` (created once
    /// the live-instance key is, so an earlier session's is gone by then).
    async fn publish_capabilities(
        &self,
        session: &dyn Session,
        id: &InstanceId,
    ) -> Result<(), ClusterError> {
        if self.config.capabilities.is_empty() {
            return Ok(());
        }
        let mut handlers = self.config.capabilities.clone();
        handlers.sort();
        handlers.dedup();
        let record = InstanceCapabilities {
            id: id.clone(),
            handlers,
        }
        .encode();
        let (dir, key) = (self.keys.capabilities(), self.keys.capability(id));
        match session
            .create(&dir, Vec::new(), CreateMode::Persistent)
            .await
        {
            Ok(()) | Err(CoordError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match session
            .create(&key, record.clone(), CreateMode::Ephemeral)
            .await
        {
            Ok(()) => Ok(()),
            Err(CoordError::Exists(_)) => Ok(session.set(&key, record, None).await.map(|_| ())?),
            Err(e) => Err(e.into()),
        }
    }

    async fn register(&self, session: &Arc<dyn Session>) -> Result<(), ClusterError> {
        let id = &self.config.instance.id;
        match session
            .create(
                &self.keys.instance_config(id),
                self.config.instance.encode(),
                CreateMode::Persistent,
            )
            .await
        {
            Ok(()) | Err(CoordError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Current states of earlier sessions are stale: remove them.
        let dir = self.keys.current_states(id);
        for old in session.children(&dir).await? {
            if old == session.id().as_str() {
                continue;
            }
            for resource in session.children(&format!("{dir}/{old}")).await? {
                match session
                    .delete(&format!("{dir}/{old}/{resource}"), None)
                    .await
                {
                    Ok(()) | Err(CoordError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let live = LiveInstance {
            id: id.clone(),
            session: session.id(),
            host: self.config.instance.host.clone(),
            started_at_ms: super::now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let key = self.keys.live_instance(id);
        let mut state = session.state();
        loop {
            // Watch first, so the deletion of a previous session's key cannot be missed.
            let mut previous = session.watch(&key, false).await?;
            match session
                .create(&key, live.encode(), CreateMode::Ephemeral)
                .await
            {
                Ok(()) => return self.publish_capabilities(&**session, id).await,
                Err(CoordError::Exists(_)) => {
                    info!(instance = %id, "an earlier session is still live; waiting for it to end");
                    tokio::select! {
                        biased;
                        _ = previous.next() => {}
                        _ = state.changed() => {
                            if *state.borrow() != SessionState::Connected {
                                return Err(CoordError::ConnectionLoss.into());
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn serve(
        &mut self,
        session: Arc<dyn Session>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, ClusterError> {
        let messages_dir = self.keys.messages(&self.config.instance.id);
        let mut messages = session.watch(&messages_dir, true).await?;
        self.register(&session).await?;
        let serving = Arc::new(Serving {
            session: session.clone(),
            instance: self.config.instance.id.clone(),
            keys: self.keys.clone(),
            handler: self.handler.clone(),
            replicas: Mutex::new(BTreeMap::new()),
            written: SyncMutex::new(BTreeSet::new()),
            recorders: SyncMutex::new(BTreeMap::new()),
            partition_locks: SyncMutex::new(BTreeMap::new()),
            models: Mutex::new(BTreeMap::new()),
            active: AtomicBool::new(true),
            highest_leader: AtomicU64::new(0),
            permits: Semaphore::new(self.config.max_parallel.max(1)),
            parallel: self.config.max_parallel.max(1) as u32,
        });
        self.status
            .send_replace(ParticipantStatus::Live(session.id()));
        self.handler.session_deadline(None);
        self.handler.session_timeout(session.timeout());
        info!(instance = %serving.instance, session = %session.id(), timeout = ?session.timeout(), "participant live");
        let mut tasks = Processing::new();
        serving.process_all(&mut tasks).await?;
        let mut state = session.state();
        loop {
            tokio::select! {
                biased;
                event = messages.next() => match event {
                    // Only the messages themselves: a backend may report the creation of the
                    // messages directory too (ZooKeeper materialises it), which is no message.
                    Some(WatchEvent::Created { key } | WatchEvent::Changed { key })
                        if key.rsplit_once('/').is_some_and(|(dir, _)| dir == messages_dir) =>
                    {
                        serving.spawn_process(&mut tasks, key, 0);
                    }
                    Some(WatchEvent::Created { .. } | WatchEvent::Changed { .. } | WatchEvent::Deleted { .. }) => {}
                    Some(WatchEvent::Resync) => serving.process_all(&mut tasks).await?,
                    // The session ended (its watches end with it), maybe before its state
                    // says so: step down at once, as for an expiry, before a new session can be
                    // granted the same partitions.
                    None => {
                        serving.active.store(false, Ordering::SeqCst);
                        let now = tokio::time::Instant::now();
                        serving.handler.session_deadline(Some(now));
                        serving.go_offline(Some(now)).await;
                        return Ok(Ended::SessionLost);
                    }
                },
                _ = state.changed() => {
                    let now = *state.borrow();
                    debug!(instance = %serving.instance, state = ?now, "session state");
                    match now {
                        SessionState::Suspended if crate::teeth::get().suspended_keeps_partitions => {
                            self.status.send_replace(ParticipantStatus::Suspended);
                        }
                        SessionState::Suspended => {
                            self.status.send_replace(ParticipantStatus::Suspended);
                            warn!(instance = %serving.instance, "session suspended: taking replicas offline");
                            serving.active.store(false, Ordering::SeqCst);
                            // The store may expire the session once its timeout has passed since
                            // the last contact, which was before we noticed: be done by half of it.
                            let deadline = tokio::time::Instant::now() + session.timeout() / 2;
                            serving.handler.session_deadline(Some(deadline));
                            serving.go_offline(Some(deadline)).await;
                        }
                        SessionState::Connected => {
                            // Contact is back within the session: report the truth and serve again.
                            serving.handler.session_deadline(None);
                            serving.active.store(true, Ordering::SeqCst);
                            serving.publish_all().await?;
                            serving.process_all(&mut tasks).await?;
                            self.status.send_replace(ParticipantStatus::Live(session.id()));
                        }
                        SessionState::Expired | SessionState::Closed => {
                            serving.active.store(false, Ordering::SeqCst);
                            let now = tokio::time::Instant::now();
                            serving.handler.session_deadline(Some(now));
                            serving.go_offline(Some(now)).await;
                            return Ok(Ended::SessionLost);
                        }
                    }
                }
                Some((resource, partition)) = self.resets.recv() => {
                    serving.reset(&resource, partition).await?;
                }
                Some(result) = tasks.join_next(), if !tasks.is_empty() => {
                    match result {
                        // A store call failed, maybe for a moment: no event will bring this
                        // message back, so try it again (a transition that already ran is
                        // then recorded, since the replica is no longer in its from-state).
                        Ok(Processed { key, attempt, result: Err(e) })
                            if e.retryable() && serving.active.load(Ordering::SeqCst) =>
                        {
                            debug!(%key, attempt, error = %e, "message not processed; retrying");
                            serving.spawn_process(&mut tasks, key, attempt + 1);
                        }
                        Ok(Processed { key, result: Err(e), .. }) => {
                            debug!(%key, error = %e, "message not processed");
                        }
                        Err(e) => warn!(error = %e, "message task failed"),
                        Ok(Processed { result: Ok(()), .. }) => {}
                    }
                }
                _ = shutdown.changed() => {
                    serving.active.store(false, Ordering::SeqCst);
                    while tasks.join_next().await.is_some() {}
                    serving.go_offline(None).await;
                    // Best effort: tell the controller before leaving.
                    let _ = serving.publish_all().await;
                    return Ok(Ended::Shutdown);
                }
            }
        }
    }
}

impl Serving {
    fn partition_lock(&self, resource: &str, partition: PartitionId) -> Arc<Mutex<()>> {
        let mut locks = self
            .partition_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks
            .entry((resource.to_owned(), partition))
            .or_default()
            .clone()
    }

    async fn model(&self, resource: &str) -> Result<Arc<StateModel>, ClusterError> {
        if let Some(model) = self.models.lock().await.get(resource) {
            return Ok(model.clone());
        }
        let node = self
            .session
            .get(&self.keys.resource_config(resource))
            .await?
            .ok_or_else(|| ClusterError::Invalid(format!("unknown resource {resource}")))?;
        let config = ResourceConfig::decode(&node.value)?;
        let model = match StateModel::builtin(&config.state_model) {
            Some(model) => model,
            None => {
                let node = self
                    .session
                    .get(&self.keys.state_model(&config.state_model))
                    .await?
                    .ok_or_else(|| {
                        ClusterError::Invalid(format!("unknown state model {}", config.state_model))
                    })?;
                StateModel::compile(StateModelSpec::decode(&node.value)?)
                    .map_err(|e| ClusterError::Invalid(e.to_string()))?
            }
        };
        let model = Arc::new(model);
        self.models
            .lock()
            .await
            .insert(resource.to_owned(), model.clone());
        Ok(model)
    }

    /// Spawns processing of every message present.
    async fn process_all(self: &Arc<Self>, tasks: &mut Processing) -> Result<(), ClusterError> {
        let dir = self.keys.messages(&self.instance);
        for name in self.session.children(&dir).await? {
            self.spawn_process(tasks, format!("{dir}/{name}"), 0);
        }
        Ok(())
    }

    /// Spawns processing of the message at `key`, after a back-off if this is a retry.
    fn spawn_process(self: &Arc<Self>, tasks: &mut Processing, key: String, attempt: u32) {
        let s = self.clone();
        tasks.spawn(async move {
            if attempt > 0 {
                let backoff = RETRY_BASE
                    .saturating_mul(1 << attempt.min(6))
                    .min(RETRY_MAX);
                tokio::time::sleep(backoff).await;
            }
            let result = s.process(&key).await;
            Processed {
                key,
                attempt,
                result,
            }
        });
    }

    async fn discard(&self, key: &str, why: &str) -> Result<(), ClusterError> {
        debug!(%key, why, "discarding message");
        match self.session.delete(key, None).await {
            Ok(()) | Err(CoordError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn process(self: Arc<Self>, key: &str) -> Result<(), ClusterError> {
        let permit = self.permits.acquire().await.expect("never closed");
        let Some(node) = self.session.get(key).await? else {
            return Ok(()); // Already processed.
        };
        let message = match Message::decode(&node.value) {
            Ok(m) => m,
            Err(e) => return self.discard(key, &e.to_string()).await,
        };
        let t = &message.transition;
        if t.session != self.session.id() {
            return self.discard(key, "addressed to another session").await;
        }
        let highest = self
            .highest_leader
            .fetch_max(message.leader_epoch, Ordering::SeqCst);
        if message.leader_epoch < highest {
            return self.discard(key, "from a deposed leader").await;
        }
        let lock = self.partition_lock(&t.resource, t.partition);
        let _guard = lock.lock().await;
        if !self.active.load(Ordering::SeqCst) || self.session.get(key).await?.is_none() {
            return Ok(());
        }
        let model = self.model(&t.resource).await?;
        let state = self.state_of(&t.resource, t.partition, &model).await;
        if state != t.from {
            warn!(resource = %t.resource, partition = t.partition, expected = %t.from, actual = %state, "message does not match the replica's state");
            self.discard(key, "from-state does not match").await?;
            return self.publish(&t.resource).await;
        }
        let request = TransitionRequest {
            instance: self.instance.clone(),
            resource: t.resource.clone(),
            partition: t.partition,
            from: t.from.clone(),
            to: t.to.clone(),
            top: model.top_state().clone(),
            epoch: t.epoch,
            deadline: None,
        };
        let reached = match self.handler.on_transition(&request).await {
            Ok(()) => t.to.clone(),
            Err(error) => {
                warn!(resource = %t.resource, partition = t.partition, from = %t.from, to = %t.to, %error, "transition failed; replica in ERROR");
                StateName::error()
            }
        };
        self.set_state(&t.resource, t.partition, reached, t.epoch)
            .await;
        // The permit bounds handlers running at once, not writes waiting: released here, the
        // transitions that finish while a current-state write is in flight all join the next
        // one (the partition's lock stays held until its transition is recorded).
        drop(permit);
        self.record_finished(&t.resource, key).await
    }

    /// Writes the current state of `resource` and deletes `message`, together with whatever
    /// other transitions of the resource finished meanwhile: the first to find no write in
    /// flight writes for all that are waiting.
    async fn record_finished(&self, resource: &str, message: &str) -> Result<(), ClusterError> {
        let (done, outcome) = oneshot::channel();
        let recorder = self
            .recorders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(resource.to_owned())
            .or_default()
            .clone();
        let waiting = || recorder.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting().push((message.to_owned(), done));
        // Let the transitions finishing at the same moment join this write: on a store that
        // answers at once nothing else would get a turn before it starts, and every write
        // encodes the resource's whole current state.
        tokio::task::yield_now().await;
        {
            let _turn = recorder.writing.lock().await;
            // Empty if an earlier writer took ours along.
            let batch = std::mem::take(&mut *waiting());
            if !batch.is_empty() {
                let (messages, waiters): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
                let written = self.publish_deleting(resource, messages).await;
                for waiter in waiters {
                    let _ = waiter.send(written.clone());
                }
            }
        }
        // No answer means the writer was cancelled mid-write: the outcome is unknown.
        outcome.await.unwrap_or_else(|_| {
            Err(ClusterError::Coordination(CoordError::Backend(
                "the write recording this transition was abandoned".into(),
            )))
        })
    }

    /// Writes the current state of `resource` with the deletion of `messages`, in as many
    /// transactions as the store's limit needs (each one writes the state too, so a deleted
    /// message always has its result recorded).
    async fn publish_deleting(
        &self,
        resource: &str,
        messages: Vec<String>,
    ) -> Result<(), ClusterError> {
        for chunk in messages.chunks(MAX_TRANSACTION_OPS - 1) {
            let deletes = chunk
                .iter()
                .map(|key| Op::Delete {
                    key: key.clone(),
                    expected: None,
                })
                .collect();
            self.publish_with(resource, deletes).await?;
        }
        Ok(())
    }

    async fn state_of(
        &self,
        resource: &str,
        partition: PartitionId,
        model: &StateModel,
    ) -> StateName {
        self.replicas
            .lock()
            .await
            .get(resource)
            .and_then(|c| c.partitions.get(&partition))
            .map_or_else(|| model.initial().clone(), |r| r.state.clone())
    }

    async fn set_state(
        &self,
        resource: &str,
        partition: PartitionId,
        state: StateName,
        epoch: Epoch,
    ) {
        let mut replicas = self.replicas.lock().await;
        let map = &mut replicas
            .entry(resource.to_owned())
            .or_insert_with(|| CurrentState {
                instance: self.instance.clone(),
                session: self.session.id(),
                resource: resource.to_owned(),
                partitions: BTreeMap::new(),
            })
            .partitions;
        if state == StateName::dropped() {
            map.remove(&partition);
        } else {
            map.insert(partition, PartitionCurrent { state, epoch });
        }
    }

    async fn publish(&self, resource: &str) -> Result<(), ClusterError> {
        self.publish_with(resource, Vec::new()).await
    }

    /// Writes the current state of `resource` together with `extra` operations, atomically.
    async fn publish_with(&self, resource: &str, extra: Vec<Op>) -> Result<(), ClusterError> {
        let value = {
            let replicas = self.replicas.lock().await;
            match replicas.get(resource) {
                Some(current) => current.encode(),
                None => CurrentState {
                    instance: self.instance.clone(),
                    session: self.session.id(),
                    resource: resource.to_owned(),
                    partitions: BTreeMap::new(),
                }
                .encode(),
            }
        };
        let key = self
            .keys
            .current_state(&self.instance, &self.session.id(), resource);
        let exists = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(resource);
        let write = if exists {
            Op::Set {
                key,
                value,
                expected: None,
            }
        } else {
            Op::Create {
                key,
                value,
                mode: CreateMode::Persistent,
            }
        };
        let mut ops = vec![write];
        ops.extend(extra);
        self.session.transaction(ops).await?;
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(resource.to_owned());
        Ok(())
    }

    async fn publish_all(&self) -> Result<(), ClusterError> {
        let resources: Vec<String> = self.replicas.lock().await.keys().cloned().collect();
        for resource in resources {
            self.publish(&resource).await?;
        }
        Ok(())
    }

    /// Takes every replica to the initial state through the handler, in parallel up to the
    /// permit count, once transitions in flight have finished. Replicas in ERROR are left
    /// alone: they are not acting.
    async fn go_offline(self: &Arc<Self>, deadline: Option<tokio::time::Instant>) {
        // Let transitions already running finish first (none starts any more): a replica whose
        // first grant is in flight is not in `replicas` until it completes.
        drop(self.permits.acquire_many(self.parallel).await);
        let held: Vec<(String, PartitionId)> = self
            .replicas
            .lock()
            .await
            .iter()
            .flat_map(|(r, c)| c.partitions.keys().map(move |p| (r.clone(), *p)))
            .collect();
        let mut steps = JoinSet::new();
        for (resource, partition) in held {
            let s = self.clone();
            steps.spawn(async move { s.step_down(&resource, partition, deadline).await });
        }
        while steps.join_next().await.is_some() {}
    }

    async fn step_down(
        &self,
        resource: &str,
        partition: PartitionId,
        deadline: Option<tokio::time::Instant>,
    ) {
        let _permit = self.permits.acquire().await.expect("never closed");
        let lock = self.partition_lock(resource, partition);
        let _guard = lock.lock().await;
        let Ok(model) = self.model_cached(resource).await else {
            return;
        };
        loop {
            let (state, epoch) = {
                let replicas = self.replicas.lock().await;
                match replicas
                    .get(resource)
                    .and_then(|c| c.partitions.get(&partition))
                {
                    Some(r) => (r.state.clone(), r.epoch),
                    None => return,
                }
            };
            let (Some(from), initial) = (model.index_of(state.as_str()), model.initial_index())
            else {
                return;
            };
            if from == initial || from == model.error_index() {
                return;
            }
            let Some(next) = model.next_hop(from, initial) else {
                return;
            };
            let request = TransitionRequest {
                instance: self.instance.clone(),
                resource: resource.to_owned(),
                partition,
                from: state,
                to: model.name_of(next).clone(),
                top: model.top_state().clone(),
                epoch,
                deadline,
            };
            let reached = match self.handler.on_transition(&request).await {
                Ok(()) => request.to.clone(),
                Err(_) => StateName::error(),
            };
            self.set_state(resource, partition, reached, epoch).await;
        }
    }

    /// The model of a resource from the cache only (no store access while suspended).
    async fn model_cached(&self, resource: &str) -> Result<Arc<StateModel>, ()> {
        self.models.lock().await.get(resource).cloned().ok_or(())
    }

    async fn reset(&self, resource: &str, partition: PartitionId) -> Result<(), ClusterError> {
        let model = self.model(resource).await?;
        let lock = self.partition_lock(resource, partition);
        let _guard = lock.lock().await;
        if self.state_of(resource, partition, &model).await != StateName::error() {
            return Ok(());
        }
        self.set_state(resource, partition, model.initial().clone(), 0)
            .await;
        self.publish(resource).await
    }
}
