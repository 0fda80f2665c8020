//! # rota-memory
//!
//! In-memory backends: a task store ([`MemoryTaskStore`]) and a [`Coordination`] store: a real backend for `rota dev` and single-process tests,
//! passing the same conformance suite as ZooKeeper and etcd. Session timeouts run on tokio's
//! clock, so tests can use paused time.
//!
//! Fault injection, by session id: [`MemoryCoordination::expire`] (the store ends the session
//! now), [`MemoryCoordination::suspend`] / [`MemoryCoordination::resume`] (the session loses
//! contact; it expires when its timeout passes while suspended), and
//! [`MemoryCoordination::refuse_new_sessions`] (no new client gets through),
//! [`MemoryCoordination::hold_watches`] / [`MemoryCoordination::drop_watches`] (delay or lose
//! watch delivery to one session; a lost event is always replaced by a
//! [`WatchEvent::Resync`], as the contract requires).

mod tasks;

pub use tasks::MemoryTaskStore;

use async_trait::async_trait;
use rota_cluster::coordination::{
    CoordError, Coordination, CreateMode, MAX_VALUE_BYTES, Node, Op, OpResult, Session,
    SessionIdentity, SessionState, WATCH_CAPACITY, Watch, WatchEvent, WatchSender, validate_key,
    validate_transaction, watch_channel,
};
use rota_model::SessionId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The in-memory store. Cloning gives another handle to the same store.
#[derive(Clone, Default)]
pub struct MemoryCoordination {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Stored>,
    sessions: BTreeMap<u64, SessionEntry>,
    watchers: Vec<Watcher>,
    next_session: u64,
    refuse_new_sessions: bool,
}

#[derive(Clone)]
struct Stored {
    value: Vec<u8>,
    version: u64,
    owner: Option<u64>,
}

impl Stored {
    fn node(&self) -> Node {
        Node {
            value: self.value.clone(),
            version: self.version,
            ephemeral: self.owner.is_some(),
        }
    }
}

struct SessionEntry {
    state: watch::Sender<SessionState>,
    timeout: Duration,
    /// Bumped on every suspension, so a stale expiry timer does nothing.
    suspensions: u64,
    /// Watch events are held (not delivered) while set, or while suspended.
    hold: bool,
    /// The next events of this session's watches are lost (replaced by one Resync).
    drop: bool,
    /// The next this many transactions of this session fail with `ConnectionLoss`, unapplied.
    failing_writes: u32,
}

struct Watcher {
    session: u64,
    key: String,
    recursive: bool,
    tx: WatchSender,
    held: Vec<WatchEvent>,
    lost: bool,
}

impl Watcher {
    fn covers(&self, key: &str) -> bool {
        key == self.key
            || (self.recursive
                && key.len() > self.key.len()
                && key.starts_with(&self.key)
                && key.as_bytes()[self.key.len()] == b'/')
    }
}

/// A change to deliver to watches.
enum Change {
    Created(String),
    Changed(String),
    Deleted(String),
}

fn session_number(id: &SessionId) -> Option<u64> {
    id.as_str().strip_prefix("mem-")?.parse().ok()
}

impl MemoryCoordination {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends a session now, as the store does when its timeout passes: its ephemeral keys are
    /// deleted (watchers see it) and its holder sees `Expired`.
    pub fn expire(&self, session: &SessionId) {
        if let Some(n) = session_number(session) {
            self.lock().end(n, SessionState::Expired);
        }
    }

    /// Cuts a session off from the store: calls fail with `ConnectionLoss`, watch events are
    /// held, the holder sees `Suspended`, and the session expires when its timeout passes on
    /// the store's (tokio's) clock unless resumed first.
    pub fn suspend(&self, session: &SessionId) {
        let Some(n) = session_number(session) else {
            return;
        };
        let (generation, timeout) = {
            let mut inner = self.lock();
            let Some(entry) = inner.sessions.get_mut(&n) else {
                return;
            };
            entry.suspensions += 1;
            entry.state.send_replace(SessionState::Suspended);
            (entry.suspensions, entry.timeout)
        };
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let mut inner = store.lock();
            let still = inner.sessions.get(&n).is_some_and(|e| {
                e.suspensions == generation && *e.state.borrow() == SessionState::Suspended
            });
            if still {
                inner.end(n, SessionState::Expired);
            }
        });
    }

    /// Restores contact for a suspended session that has not expired; held watch events are
    /// delivered in order.
    pub fn resume(&self, session: &SessionId) {
        let Some(n) = session_number(session) else {
            return;
        };
        let mut inner = self.lock();
        if let Some(entry) = inner.sessions.get_mut(&n) {
            if *entry.state.borrow() == SessionState::Suspended {
                entry.state.send_replace(SessionState::Connected);
            }
        }
        inner.flush(n);
    }

    /// Holds (`true`) or releases (`false`) watch delivery to one session.
    pub fn hold_watches(&self, session: &SessionId, hold: bool) {
        let Some(n) = session_number(session) else {
            return;
        };
        let mut inner = self.lock();
        if let Some(entry) = inner.sessions.get_mut(&n) {
            entry.hold = hold;
        }
        inner.flush(n);
    }

    /// Loses the held and the next batch of watch events of one session; its watches get a
    /// `Resync` instead (when delivery is not held, at once).
    pub fn drop_watches(&self, session: &SessionId) {
        let Some(n) = session_number(session) else {
            return;
        };
        let mut inner = self.lock();
        if let Some(entry) = inner.sessions.get_mut(&n) {
            entry.drop = true;
        }
        for w in inner.watchers.iter_mut().filter(|w| w.session == n) {
            if !w.held.is_empty() {
                w.held.clear();
                w.lost = true;
            }
        }
        inner.flush(n);
    }

    /// Makes the next `count` writes (creates, sets, deletes, transactions) of a session fail
    /// with `ConnectionLoss` without being applied, the session staying connected: a request
    /// lost on a connection that failed for a moment, as etcd clients see after a member
    /// restarts.
    pub fn fail_writes(&self, session: &SessionId, count: u32) {
        let Some(n) = session_number(session) else {
            return;
        };
        if let Some(entry) = self.lock().sessions.get_mut(&n) {
            entry.failing_writes = count;
        }
    }

    /// While set, [`Coordination::connect`] fails with `ConnectionLoss`, as when the store is
    /// out of reach for new clients (existing sessions are not affected).
    pub fn refuse_new_sessions(&self, refuse: bool) {
        self.lock().refuse_new_sessions = refuse;
    }

    /// Number of keys stored, for tests.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn check_live(&self, session: u64) -> Result<(), CoordError> {
        match self.sessions.get(&session).map(|e| *e.state.borrow()) {
            Some(SessionState::Connected) => Ok(()),
            Some(SessionState::Suspended) => Err(CoordError::ConnectionLoss),
            _ => Err(CoordError::SessionExpired),
        }
    }

    fn end(&mut self, session: u64, state: SessionState) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        if entry.state.borrow().is_final() {
            return;
        }
        entry.state.send_replace(state);
        let owned: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.owner == Some(session))
            .map(|(k, _)| k.clone())
            .collect();
        let changes: Vec<Change> = owned
            .into_iter()
            .map(|k| {
                self.nodes.remove(&k);
                Change::Deleted(k)
            })
            .collect();
        // The ended session's watches end (their senders drop) before others are told.
        self.watchers.retain(|w| w.session != session);
        self.sessions.remove(&session);
        self.publish(changes);
    }

    fn publish(&mut self, changes: Vec<Change>) {
        for change in changes {
            let (key, event) = match change {
                Change::Created(key) => (key.clone(), WatchEvent::Created { key }),
                Change::Changed(key) => (key.clone(), WatchEvent::Changed { key }),
                Change::Deleted(key) => (key.clone(), WatchEvent::Deleted { key }),
            };
            let sessions = &mut self.sessions;
            self.watchers.retain_mut(|w| {
                if !w.covers(&key) {
                    return true;
                }
                let entry = sessions.get_mut(&w.session);
                let (hold, drop) = entry.as_ref().map_or((false, false), |e| {
                    (
                        e.hold || *e.state.borrow() == SessionState::Suspended,
                        e.drop,
                    )
                });
                if drop {
                    // The event is lost; the watcher learns it at once (or when released).
                    w.held.clear();
                    w.lost = true;
                    return hold || deliver_resync(w);
                }
                if hold {
                    w.held.push(event.clone());
                    return true;
                }
                deliver(w, event.clone())
            });
        }
        for entry in self.sessions.values_mut() {
            entry.drop = false;
        }
    }

    /// Delivers held events of one session's watches, if nothing holds them any more.
    fn flush(&mut self, session: u64) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        if entry.hold || *entry.state.borrow() != SessionState::Connected {
            return;
        }
        self.watchers.retain_mut(|w| {
            if w.session != session {
                return true;
            }
            let held = std::mem::take(&mut w.held);
            let mut alive = deliver_resync(w);
            for event in held {
                alive = alive && deliver(w, event);
            }
            alive
        });
    }

    /// Applies a transaction for `session`: validates every operation against the state the
    /// earlier ones leave, then commits all and publishes the changes.
    fn apply(&mut self, session: u64, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        self.check_live(session)?;
        validate_transaction(&ops)?;
        if let Some(entry) = self.sessions.get_mut(&session) {
            if entry.failing_writes > 0 {
                entry.failing_writes -= 1;
                return Err(CoordError::ConnectionLoss);
            }
        }
        let mut overlay: BTreeMap<String, Option<Stored>> = BTreeMap::new();
        let mut results = Vec::with_capacity(ops.len());
        let mut changes = Vec::new();
        for op in ops {
            let key = match &op {
                Op::Check { key, .. }
                | Op::Create { key, .. }
                | Op::Set { key, .. }
                | Op::Delete { key, .. } => key.clone(),
            };
            validate_key(&key)?;
            let current = match overlay.get(&key) {
                Some(v) => v.clone(),
                None => self.nodes.get(&key).cloned(),
            };
            let check = |expected: Option<u64>| match (&current, expected) {
                (None, _) => Err(CoordError::NotFound(key.clone())),
                (Some(n), Some(e)) if n.version != e => Err(CoordError::BadVersion {
                    key: key.clone(),
                    expected: e,
                    actual: Some(n.version),
                }),
                (Some(n), _) => Ok(n.clone()),
            };
            match op {
                Op::Check { version, .. } => {
                    if current.is_none() {
                        return Err(CoordError::BadVersion {
                            key,
                            expected: version,
                            actual: None,
                        });
                    }
                    check(Some(version))?;
                    results.push(OpResult::Checked);
                }
                Op::Create { value, mode, .. } => {
                    if current.is_some() {
                        return Err(CoordError::Exists(key));
                    }
                    too_large(&key, &value)?;
                    let stored = Stored {
                        value,
                        version: 0,
                        owner: (mode == CreateMode::Ephemeral).then_some(session),
                    };
                    changes.push(Change::Created(key.clone()));
                    overlay.insert(key, Some(stored));
                    results.push(OpResult::Created);
                }
                Op::Set {
                    value, expected, ..
                } => {
                    let mut stored = check(expected)?;
                    too_large(&key, &value)?;
                    stored.value = value;
                    stored.version += 1;
                    results.push(OpResult::Set(stored.version));
                    changes.push(Change::Changed(key.clone()));
                    overlay.insert(key, Some(stored));
                }
                Op::Delete { expected, .. } => {
                    check(expected)?;
                    if self.has_children(&key, &overlay) {
                        return Err(CoordError::NotEmpty(key));
                    }
                    changes.push(Change::Deleted(key.clone()));
                    overlay.insert(key, None);
                    results.push(OpResult::Deleted);
                }
            }
        }
        for (key, value) in overlay {
            match value {
                Some(stored) => self.nodes.insert(key, stored),
                None => self.nodes.remove(&key),
            };
        }
        self.publish(changes);
        Ok(results)
    }

    fn has_children(&self, key: &str, overlay: &BTreeMap<String, Option<Stored>>) -> bool {
        let prefix = format!("{key}/");
        let stored = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(k, _)| !matches!(overlay.get(k), Some(None)));
        stored
            || overlay
                .iter()
                .any(|(k, v)| v.is_some() && k.starts_with(&prefix))
    }
}

fn deliver(w: &mut Watcher, event: WatchEvent) -> bool {
    deliver_resync(w) && w.tx.send(event)
}

/// Sends the `Resync` a watcher owes after losing events, if it owes one.
fn deliver_resync(w: &mut Watcher) -> bool {
    if !w.lost {
        return true;
    }
    w.lost = false;
    w.tx.send(WatchEvent::Resync)
}

fn too_large(key: &str, value: &[u8]) -> Result<(), CoordError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(CoordError::TooLarge {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    Ok(())
}

#[async_trait]
impl Coordination for MemoryCoordination {
    async fn connect(&self, timeout: Duration) -> Result<Arc<dyn Session>, CoordError> {
        let mut inner = self.lock();
        if inner.refuse_new_sessions {
            return Err(CoordError::ConnectionLoss);
        }
        inner.next_session += 1;
        let n = inner.next_session;
        let (state, state_rx) = watch::channel(SessionState::Connected);
        inner.sessions.insert(
            n,
            SessionEntry {
                state,
                timeout,
                suspensions: 0,
                hold: false,
                drop: false,
                failing_writes: 0,
            },
        );
        Ok(Arc::new(MemorySession {
            number: n,
            identity: SessionIdentity {
                id: SessionId::new(format!("mem-{n}")),
                timeout,
                state: state_rx,
            },
            store: self.clone(),
        }))
    }
}

struct MemorySession {
    number: u64,
    identity: SessionIdentity,
    store: MemoryCoordination,
}

#[async_trait]
impl Session for MemorySession {
    async fn get(&self, key: &str) -> Result<Option<Node>, CoordError> {
        validate_key(key)?;
        let inner = self.store.lock();
        inner.check_live(self.number)?;
        Ok(inner.nodes.get(key).map(Stored::node))
    }

    async fn children(&self, key: &str) -> Result<Vec<String>, CoordError> {
        validate_key(key)?;
        let inner = self.store.lock();
        inner.check_live(self.number)?;
        let prefix = format!("{key}/");
        let mut names: Vec<String> = inner
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k[prefix.len()..].split('/').next().unwrap_or("").to_owned())
            .collect();
        names.dedup();
        Ok(names)
    }

    async fn transaction(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        self.store.lock().apply(self.number, ops)
    }

    async fn watch(&self, key: &str, recursive: bool) -> Result<Watch, CoordError> {
        validate_key(key)?;
        let mut inner = self.store.lock();
        inner.check_live(self.number)?;
        let (tx, watch) = watch_channel(WATCH_CAPACITY);
        inner.watchers.push(Watcher {
            session: self.number,
            key: key.to_owned(),
            recursive,
            tx,
            held: Vec::new(),
            lost: false,
        });
        Ok(watch)
    }

    async fn close(&self) -> Result<(), CoordError> {
        self.store.lock().end(self.number, SessionState::Closed);
        Ok(())
    }

    fn identity(&self) -> SessionIdentity {
        self.identity.clone()
    }
}

impl Drop for MemorySession {
    fn drop(&mut self) {
        // A dropped handle stops talking to the store, like a crashed process: the session
        // expires when its timeout passes (at once if no tokio runtime is left to time it).
        if tokio::runtime::Handle::try_current().is_ok() {
            self.store.suspend(&self.identity.id);
        } else {
            self.store.lock().end(self.number, SessionState::Expired);
        }
    }
}
