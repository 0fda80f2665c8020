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

mod serving;

use crate::ClusterError;
use crate::coordination::{
    CoordError, Coordination, CreateMode, Session, SessionState, WatchEvent,
};
use crate::keys::ClusterKeys;
use crate::records::InstanceCapabilities;
use async_trait::async_trait;
use rota_model::{
    Epoch, InstanceConfig, InstanceId, LiveInstance, PartitionId, Record, SessionId, StateName,
};
use serving::{Processed, Processing, Serving};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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

enum Ended {
    Shutdown,
    SessionLost,
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
        let serving = Arc::new(Serving::new(
            session.clone(),
            self.config.instance.id.clone(),
            self.keys.clone(),
            self.handler.clone(),
            self.config.max_parallel,
        ));
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
