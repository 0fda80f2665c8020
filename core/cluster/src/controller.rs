//! The controller: any number of candidates, one leader.
//!
//! **Election.** A candidate wins by creating the ephemeral leader key and advancing the leader
//! epoch counter in one transaction. **Fencing.** Every write of a leader is a transaction that
//! starts with a check of the epoch counter's version as it left it: once another candidate has
//! won (and advanced the counter), every late write of the deposed leader is refused by the
//! store itself, whatever the deposed leader believes (the lesson of Helix #1027).
//!
//! **Reconcile.** The leader watches the cluster subtree; each batch of events (coalesced: all
//! queued events are drained first), each timer tick and each end of a delay window triggers one
//! reconcile: read a snapshot, decide ([`super::reconcile`]), write the decisions.
//!
//! Leadership pauses while the session is suspended (nothing can be written anyway) and resumes
//! if contact returns; it ends when the session expires (the store hands the key to someone
//! else), when a fenced write is refused, or at shutdown (the session is closed, so a standby
//! takes over at once).

use super::keys::ClusterKeys;
use super::reconcile::{Decisions, reconcile};
use super::records::{ControllerHistory, LeaderRecord, LeadershipChange, message_id};
use super::snapshot::{Snapshot, read_snapshot};
use super::{ClusterError, monotonic_ms, now_ms};
use crate::coordination::{CoordError, Coordination, CreateMode, Op, Session, SessionState};
use crate::metrics::{ClusterMetrics, seconds};
use rota_model::{InstanceId, Message, Record};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How a controller runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Cluster name.
    pub cluster: String,
    /// This controller's name (for the leader record and history).
    pub name: String,
    /// Coordination session timeout.
    pub session_timeout: Duration,
    /// Reconcile at least this often, events or not.
    pub interval: Duration,
    /// After a change, wait this long for more before reconciling (a few milliseconds).
    pub settle: Duration,
}

/// What a controller is doing, for status reports and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerStatus {
    /// Connecting or waiting for the leader key.
    Standby,
    /// Leading with this epoch.
    Leader {
        /// Leader epoch.
        epoch: u64,
    },
    /// Shut down.
    Stopped,
}

/// Delay before retrying a reconcile whose read or write failed.
const RETRY_MS: u64 = 100;

/// Operations per transaction besides the fence: as many as every backend takes in one call.
const CHUNK: usize = crate::coordination::MAX_TRANSACTION_OPS - 1;

/// A won leadership: the session and the epoch counter version every write is fenced by.
pub struct LeaderLease {
    session: Arc<dyn Session>,
    keys: ClusterKeys,
    epoch: u64,
    epoch_version: u64,
}

impl LeaderLease {
    /// Tries to become leader on `session`: creates the ephemeral leader key and advances the
    /// epoch counter atomically. `Ok(None)` if another controller leads.
    pub async fn acquire(
        session: Arc<dyn Session>,
        keys: &ClusterKeys,
        controller: &str,
    ) -> Result<Option<Self>, CoordError> {
        loop {
            let counter = session.get(&keys.leader_epoch()).await?;
            let (epoch, ops_counter) = match &counter {
                None => (
                    1,
                    Op::Create {
                        key: keys.leader_epoch(),
                        value: b"1".to_vec(),
                        mode: CreateMode::Persistent,
                    },
                ),
                Some(node) => {
                    let n: u64 = String::from_utf8_lossy(&node.value).parse().unwrap_or(0);
                    (
                        n + 1,
                        Op::Set {
                            key: keys.leader_epoch(),
                            value: (n + 1).to_string().into_bytes(),
                            expected: Some(node.version),
                        },
                    )
                }
            };
            let record = LeaderRecord {
                controller: controller.to_owned(),
                session: session.id(),
                epoch,
            };
            let ops = vec![
                Op::Create {
                    key: keys.leader(),
                    value: record.encode(),
                    mode: CreateMode::Ephemeral,
                },
                ops_counter,
            ];
            match session.transaction(ops).await {
                Ok(_) => {
                    let epoch_version = counter.map_or(0, |n| n.version + 1);
                    return Ok(Some(Self {
                        session,
                        keys: keys.clone(),
                        epoch,
                        epoch_version,
                    }));
                }
                Err(CoordError::Exists(_)) => return Ok(None),
                // Another candidate advanced the counter between our read and write: re-read.
                Err(CoordError::BadVersion { .. }) | Err(CoordError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The leader epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The session holding the lease.
    pub fn session(&self) -> &Arc<dyn Session> {
        &self.session
    }

    /// Applies `ops` in fenced transactions of at most [`CHUNK`] operations each. Fails with
    /// [`ClusterError::Deposed`] if another leader has been elected since this one.
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), ClusterError> {
        let fence = Op::Check {
            key: self.keys.leader_epoch(),
            version: self.epoch_version,
        };
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let mut chunk = if crate::teeth::get().unfenced_controller_writes {
                Vec::new()
            } else {
                vec![fence.clone()]
            };
            chunk.extend(ops.by_ref().take(CHUNK));
            match self.session.transaction(chunk).await {
                Ok(_) => {}
                Err(CoordError::BadVersion { key, .. }) if key == self.keys.leader_epoch() => {
                    return Err(ClusterError::Deposed { epoch: self.epoch });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A controller candidate.
pub struct Controller {
    store: Arc<dyn Coordination>,
    config: ControllerConfig,
    keys: ClusterKeys,
    status: watch::Sender<ControllerStatus>,
    metrics: Arc<ClusterMetrics>,
}

impl Controller {
    /// A candidate; the receiver reports its status.
    pub fn new(
        store: Arc<dyn Coordination>,
        config: ControllerConfig,
    ) -> (Self, watch::Receiver<ControllerStatus>) {
        let (status, rx) = watch::channel(ControllerStatus::Standby);
        let keys = ClusterKeys::new(&config.cluster);
        (
            Self {
                store,
                config,
                keys,
                status,
                metrics: Arc::default(),
            },
            rx,
        )
    }

    /// Counts into the process's `metrics` (leadership, epoch, reconcile durations).
    pub fn with_metrics(mut self, metrics: Arc<ClusterMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Campaigns and leads until `shutdown` becomes true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ClusterError> {
        let timeout = self.config.session_timeout;
        while !super::stopping(&shutdown) {
            self.status.send_replace(ControllerStatus::Standby);
            let Some(session) =
                super::connect(&*self.store, timeout, &mut shutdown, "controller").await
            else {
                break;
            };
            match self.campaign(session.clone(), &mut shutdown).await {
                Ok(Some(lease)) => {
                    self.metrics.controller_leader.set(1);
                    self.metrics.controller_epoch.set(lease.epoch as i64);
                    let outcome = self.lead(&lease, &mut shutdown).await;
                    self.metrics.controller_leader.set(0);
                    self.metrics.controller_epoch.set(0);
                    if let Err(e) = outcome {
                        warn!(error = %e, epoch = lease.epoch, "leadership ended");
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, "campaign interrupted"),
            }
            // This session is done with (shutdown, lost contact, deposed): closing it releases
            // the leader key at once where the store is reachable, so a standby takes over.
            let _ = session.close().await;
        }
        self.status.send_replace(ControllerStatus::Stopped);
        Ok(())
    }

    /// Waits until this candidate leads (`Some`), its session ends, or shutdown (`None`).
    async fn campaign(
        &self,
        session: Arc<dyn Session>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<LeaderLease>, CoordError> {
        let mut state = session.state();
        loop {
            let mut leader = session.watch(&self.keys.leader(), false).await?;
            if let Some(lease) =
                LeaderLease::acquire(session.clone(), &self.keys, &self.config.name).await?
            {
                return Ok(Some(lease));
            }
            // Someone leads: wait for the key to change (deleted, or a resync), then try again.
            tokio::select! {
                biased;
                _ = leader.next() => {}
                _ = state.changed() => {
                    if *state.borrow() != SessionState::Connected {
                        return Ok(None);
                    }
                }
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }

    async fn lead(
        &self,
        lease: &LeaderLease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        info!(controller = %self.config.name, epoch = lease.epoch, "leading");
        self.status
            .send_replace(ControllerStatus::Leader { epoch: lease.epoch });
        let session = lease.session.clone();
        let mut events = session.watch(self.keys.root(), true).await?;
        self.record_history(lease).await?;
        let mut state = session.state();
        let mut offline_since: BTreeMap<InstanceId, u64> = BTreeMap::new();
        let mut sequence = 0u64;
        loop {
            // A failed read or write is retried by the next reconcile; only a refused fence or
            // a lost session ends leadership (a transient error must not cause an election).
            let mut wake_at = None;
            let started = tokio::time::Instant::now();
            let outcome = match read_snapshot(&*session, &self.keys).await {
                Ok(snapshot) => {
                    let now = monotonic_ms();
                    track_offline(&snapshot, &mut offline_since, now);
                    let decisions = reconcile(&snapshot, &offline_since, now);
                    for problem in &decisions.problems {
                        warn!(%problem, "reconcile");
                    }
                    self.metrics
                        .reconcile_problems
                        .inc_by(decisions.problems.len() as u64);
                    wake_at = decisions.wake_at_ms;
                    self.write(lease, &snapshot, decisions, &mut sequence).await
                }
                Err(e) => Err(e.into()),
            };
            self.metrics
                .reconcile_duration
                .observe(seconds(started.elapsed()));
            match outcome {
                Ok(()) => {}
                Err(e @ ClusterError::Deposed { .. }) => return Err(e),
                Err(_) if session.state().borrow().is_final() => {
                    return Err(CoordError::SessionExpired.into());
                }
                Err(e) => {
                    warn!(error = %e, epoch = lease.epoch, "reconcile failed; retrying");
                    wake_at = Some(monotonic_ms() + RETRY_MS);
                }
            }

            let wait = wake_at
                .map(|at| Duration::from_millis(at.saturating_sub(monotonic_ms()).max(1)))
                .unwrap_or(self.config.interval)
                .min(self.config.interval);
            tokio::select! {
                biased;
                event = events.next() => {
                    if event.is_none() {
                        return Err(CoordError::SessionExpired.into());
                    }
                    // Coalesce: let a burst of changes (participants reporting transitions one
                    // by one) settle briefly, then one reconcile covers all of them.
                    tokio::time::sleep(self.config.settle).await;
                    while events.try_next().is_some() {}
                }
                _ = tokio::time::sleep(wait) => {}
                _ = state.changed() => {
                    // Out of contact: pause. The session (and the leader key with it) may come
                    // back; if it expires instead, someone else is elected and the fence refuses
                    // anything this controller still tries to write.
                    let now = *state.borrow_and_update();
                    if now == SessionState::Suspended {
                        info!(epoch = lease.epoch, "lost contact with the store; pausing");
                        tokio::select! {
                            biased;
                            back = state.wait_for(|s| *s != SessionState::Suspended) => {
                                let back = back.map(|s| *s).unwrap_or(SessionState::Expired);
                                if back != SessionState::Connected {
                                    return Err(CoordError::SessionExpired.into());
                                }
                                info!(epoch = lease.epoch, "contact restored; leading again");
                            }
                            _ = shutdown.changed() => return Ok(()),
                        }
                    } else if now.is_final() {
                        return Err(CoordError::SessionExpired.into());
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    async fn record_history(&self, lease: &LeaderLease) -> Result<(), ClusterError> {
        let key = self.keys.history();
        let existing = lease.session.get(&key).await?;
        let mut history = existing
            .as_ref()
            .and_then(|n| ControllerHistory::decode(&n.value).ok())
            .unwrap_or_default();
        history.push(LeadershipChange {
            epoch: lease.epoch,
            controller: self.config.name.clone(),
            at_ms: now_ms(),
        });
        lease
            .write(vec![put(&key, existing.is_some(), history.encode())])
            .await
    }

    async fn write(
        &self,
        lease: &LeaderLease,
        snapshot: &Snapshot,
        decisions: Decisions,
        sequence: &mut u64,
    ) -> Result<(), ClusterError> {
        let keys = &self.keys;
        // Epochs first: a persisted epoch is never below one a message carries.
        let mut ops: Vec<Op> = decisions
            .epochs
            .iter()
            .map(|(r, e)| put(&keys.epochs(r), snapshot.epochs.contains_key(r), e.encode()))
            .collect();
        for transition in decisions.transitions {
            *sequence += 1;
            let id = message_id(lease.epoch, *sequence);
            let key = keys.message(&transition.instance, &id);
            let message = Message {
                id,
                leader_epoch: lease.epoch,
                transition,
            };
            ops.push(Op::Create {
                key,
                value: message.encode(),
                mode: CreateMode::Persistent,
            });
        }
        for (r, ideal) in &decisions.ideal_states {
            ops.push(put(
                &keys.ideal_state(r),
                snapshot.ideal.contains_key(r),
                ideal.encode(),
            ));
        }
        for (r, view) in &decisions.external_views {
            let exists = snapshot.external.contains_key(r);
            ops.push(put(&keys.external_view(r), exists, view.encode()));
        }
        lease.write(ops).await?;
        // Stale messages one by one: their instance may delete them at the same moment.
        for key in decisions.stale_messages {
            match lease
                .write(vec![Op::Delete {
                    key,
                    expected: None,
                }])
                .await
            {
                Ok(()) | Err(ClusterError::Coordination(CoordError::NotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A create or an unconditional set, depending on whether the key exists.
fn put(key: &str, exists: bool, value: Vec<u8>) -> Op {
    if exists {
        Op::Set {
            key: key.to_owned(),
            value,
            expected: None,
        }
    } else {
        Op::Create {
            key: key.to_owned(),
            value,
            mode: CreateMode::Persistent,
        }
    }
}

/// Remembers when each configured instance was first seen gone; forgets it once live again.
fn track_offline(snapshot: &Snapshot, offline_since: &mut BTreeMap<InstanceId, u64>, now: u64) {
    offline_since.retain(|id, _| !snapshot.live.contains_key(id));
    for id in snapshot.instances.keys() {
        if !snapshot.live.contains_key(id) {
            offline_since.entry(id.clone()).or_insert(now);
        }
    }
}
