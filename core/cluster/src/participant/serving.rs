//! One session of a participant: the replicas it holds, the messages it serves (each through
//! the user's handler, one transition at a time per partition, bounded in parallel), the
//! current-state writes that record them (group commit: every transition finished while a
//! write is in flight goes in the next one), and the step-down when the session is in doubt.

use super::{Replica, TransitionHandler, TransitionRequest};
use crate::ClusterError;
use crate::coordination::{CoordError, CreateMode, MAX_TRANSACTION_OPS, Op, Session};
use crate::keys::ClusterKeys;
use rota_model::state_model::{StateModel, StateModelSpec};
use rota_model::{
    CurrentState, Epoch, InstanceId, Message, PartitionCurrent, PartitionId, Record,
    ResourceConfig, StateName,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// State of one session of a participant.
pub(super) struct Serving {
    session: Arc<dyn Session>,
    pub(super) instance: InstanceId,
    keys: ClusterKeys,
    pub(super) handler: Arc<dyn TransitionHandler>,
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
    pub(super) active: AtomicBool,
    highest_leader: AtomicU64,
    permits: Semaphore,
    /// The permit count: holding all of them means no transition is running.
    parallel: u32,
}

/// Messages being processed.
pub(super) type Processing = JoinSet<Processed>;

/// The outcome of processing one message.
pub(super) struct Processed {
    pub(super) key: String,
    /// 0 for the first try.
    pub(super) attempt: u32,
    pub(super) result: Result<(), ClusterError>,
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

impl Serving {
    /// A new session's state: nothing held yet.
    pub(super) fn new(
        session: Arc<dyn Session>,
        instance: InstanceId,
        keys: ClusterKeys,
        handler: Arc<dyn TransitionHandler>,
        max_parallel: usize,
    ) -> Self {
        Self {
            session,
            instance,
            keys,
            handler,
            replicas: Mutex::new(BTreeMap::new()),
            written: SyncMutex::new(BTreeSet::new()),
            recorders: SyncMutex::new(BTreeMap::new()),
            partition_locks: SyncMutex::new(BTreeMap::new()),
            models: Mutex::new(BTreeMap::new()),
            active: AtomicBool::new(true),
            highest_leader: AtomicU64::new(0),
            permits: Semaphore::new(max_parallel.max(1)),
            parallel: max_parallel.max(1) as u32,
        }
    }

    pub(super) fn partition_lock(&self, resource: &str, partition: PartitionId) -> Arc<Mutex<()>> {
        let mut locks = self
            .partition_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks
            .entry((resource.to_owned(), partition))
            .or_default()
            .clone()
    }

    pub(super) async fn model(&self, resource: &str) -> Result<Arc<StateModel>, ClusterError> {
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
    pub(super) async fn process_all(
        self: &Arc<Self>,
        tasks: &mut Processing,
    ) -> Result<(), ClusterError> {
        let dir = self.keys.messages(&self.instance);
        for name in self.session.children(&dir).await? {
            self.spawn_process(tasks, format!("{dir}/{name}"), 0);
        }
        Ok(())
    }

    /// Spawns processing of the message at `key`, after a back-off if this is a retry.
    pub(super) fn spawn_process(
        self: &Arc<Self>,
        tasks: &mut Processing,
        key: String,
        attempt: u32,
    ) {
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

    pub(super) async fn discard(&self, key: &str, why: &str) -> Result<(), ClusterError> {
        debug!(%key, why, "discarding message");
        match self.session.delete(key, None).await {
            Ok(()) | Err(CoordError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn process(self: Arc<Self>, key: &str) -> Result<(), ClusterError> {
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
            // Expected while a cluster converges (a plan made from a current state that has since
            // moved on): the state published again lets the controller plan anew.
            debug!(resource = %t.resource, partition = t.partition, expected = %t.from, actual = %state, "message does not match the replica's state");
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
    pub(super) async fn record_finished(
        &self,
        resource: &str,
        message: &str,
    ) -> Result<(), ClusterError> {
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
    pub(super) async fn publish_deleting(
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

    pub(super) async fn state_of(
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

    pub(super) async fn set_state(
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

    pub(super) async fn publish(&self, resource: &str) -> Result<(), ClusterError> {
        self.publish_with(resource, Vec::new()).await
    }

    /// Writes the current state of `resource` together with `extra` operations, atomically.
    pub(super) async fn publish_with(
        &self,
        resource: &str,
        extra: Vec<Op>,
    ) -> Result<(), ClusterError> {
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

    pub(super) async fn publish_all(&self) -> Result<(), ClusterError> {
        let resources: Vec<String> = self.replicas.lock().await.keys().cloned().collect();
        for resource in resources {
            self.publish(&resource).await?;
        }
        Ok(())
    }

    /// Takes every replica to the initial state through the handler, in parallel up to the
    /// permit count, once transitions in flight have finished. Replicas in ERROR are left
    /// alone: they are not acting.
    pub(super) async fn go_offline(self: &Arc<Self>, deadline: Option<tokio::time::Instant>) {
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

    pub(super) async fn step_down(
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
    pub(super) async fn model_cached(&self, resource: &str) -> Result<Arc<StateModel>, ()> {
        self.models.lock().await.get(resource).cloned().ok_or(())
    }

    pub(super) async fn reset(
        &self,
        resource: &str,
        partition: PartitionId,
    ) -> Result<(), ClusterError> {
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
