//! The coordination store: what the controller and participants need from ZooKeeper, etcd or
//! the in-memory backend, and nothing more.
//!
//! # Model
//! - **Keys** are absolute paths (`/rota/cluster/LIVEINSTANCES/node-1`). Parents are implicit: a
//!   key can be created without creating its parent first, and [`Session::children`] lists the
//!   next path segment of every key below a prefix. Backends may materialise missing parents as
//!   empty keys (ZooKeeper must), so portable code never creates a key that already has
//!   children, nor reads a parent as a record.
//! - **Values** are bytes with a **version**: 0 when created, +1 on every set. Deleting and
//!   re-creating a key starts again at 0, so a version only identifies a value together with the
//!   key's creation; code that needs a counter across re-creations keeps one in a persistent key.
//! - **Sessions** have a timeout. A session that stays out of contact with the store for longer
//!   than its timeout expires, and the store deletes its **ephemeral** keys. A session that is
//!   closed deletes them at once.
//!
//! # Contract of every backend
//! - **Atomicity**: each call is atomic; a [`Session::transaction`] applies all its operations or
//!   none, and its checks see the state the writes apply to. A transaction carries at most
//!   [`MAX_TRANSACTION_OPS`] operations and names a key again only if no earlier operation of it
//!   wrote that key (etcd evaluates all conditions before any write); backends refuse others with
//!   [`CoordError::Unsupported`] ([`validate_transaction`]).
//! - **Order**: writes are linearizable; every watch sees the changes to its keys in the order
//!   they were applied, each exactly once, from the moment [`Session::watch`] returns — or
//!   receives [`WatchEvent::Resync`], which says "events may have been missed: re-read what you
//!   care about". A watch never has a silent gap.
//! - **Errors** say what the caller may assume: see [`CoordError::certainly_not_applied`] and
//!   [`CoordError::retryable`].
//! - **Session state** is observable as a stream ([`Session::state`]): `Connected`, `Suspended`
//!   (no contact: calls fail with [`CoordError::ConnectionLoss`], the session may still come
//!   back), `Expired` and `Closed` (final: ephemeral keys are gone, open a new session).
//!
//! `async-trait` rather than native async trait methods: backends are chosen at run time from
//! configuration, so callers hold `Arc<dyn Coordination>`, which native async methods do not
//! allow yet, and the returned futures must be `Send` to be spawned on tokio.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod reconnecting;

use async_trait::async_trait;
use rota_model::SessionId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Largest value every backend accepts (ZooKeeper's default limit is 1 MiB including overhead).
pub const MAX_VALUE_BYTES: usize = 1_000_000;

/// Most operations one [`Session::transaction`] may carry. etcd refuses transactions of more
/// than 128 comparisons by default (`--max-txn-ops`), and its backend needs up to two per
/// operation plus one for the session; every backend enforces the same limit so that code
/// tested on one runs on all.
pub const MAX_TRANSACTION_OPS: usize = 50;

/// A stored value and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The bytes.
    pub value: Vec<u8>,
    /// 0 at creation, +1 per set.
    pub version: u64,
    /// Whether the key belongs to a session and vanishes with it.
    pub ephemeral: bool,
}

/// Lifetime of a created key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    /// Stays until deleted.
    Persistent,
    /// Deleted when the creating session ends or expires.
    Ephemeral,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Fails the transaction unless `key` exists at `version`.
    Check {
        /// Key.
        key: String,
        /// Expected version.
        version: u64,
    },
    /// Creates `key`; fails if it exists.
    Create {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lifetime.
        mode: CreateMode,
    },
    /// Replaces the value of an existing key, if its version is `expected` (any, if `None`).
    Set {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Expected version.
        expected: Option<u64>,
    },
    /// Deletes an existing key without children, if its version is `expected` (any, if `None`).
    Delete {
        /// Key.
        key: String,
        /// Expected version.
        expected: Option<u64>,
    },
}

impl Op {
    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            Op::Check { key, .. }
            | Op::Create { key, .. }
            | Op::Set { key, .. }
            | Op::Delete { key, .. } => key,
        }
    }
}

/// What a successful operation of a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The check held.
    Checked,
    /// Created at version 0.
    Created,
    /// The new version.
    Set(u64),
    /// Deleted.
    Deleted,
}

/// A change seen by a watch. Events name the key and the kind of change, not the value (as
/// ZooKeeper's watches do): read the key to see its value now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created.
    Created {
        /// Key.
        key: String,
    },
    /// The key's value was set.
    Changed {
        /// Key.
        key: String,
    },
    /// The key was deleted (explicitly, or with its session).
    Deleted {
        /// Key.
        key: String,
    },
    /// Events may have been lost (the watcher fell behind, or the backend reconnected): re-read
    /// everything the watch covers. Events after this one are again complete.
    Resync,
}

impl WatchEvent {
    /// The key the event is about (`None` for `Resync`).
    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Created { key }
            | WatchEvent::Changed { key }
            | WatchEvent::Deleted { key } => Some(key),
            WatchEvent::Resync => None,
        }
    }
}

/// State of a session, as seen by its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// In contact with the store.
    Connected,
    /// Out of contact; the session may come back until its timeout passes on the store's clock.
    /// Holders of anything tied to the session must act as if they had lost it.
    Suspended,
    /// The store ended the session; its ephemeral keys are gone. Final.
    Expired,
    /// The holder closed the session; its ephemeral keys are gone. Final.
    Closed,
}

impl SessionState {
    /// Whether the session can never be used again.
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Expired | SessionState::Closed)
    }
}

/// Errors of coordination calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    /// The key does not exist. Certainly not applied.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The key exists already. Certainly not applied.
    #[error("{0} exists already")]
    Exists(String),
    /// The key's version is not the expected one. Certainly not applied.
    #[error("{key} is at version {actual:?}, expected {expected}")]
    BadVersion {
        /// Key.
        key: String,
        /// Expected version.
        expected: u64,
        /// Actual version (`None` if the key does not exist).
        actual: Option<u64>,
    },
    /// The key has children and cannot be deleted. Certainly not applied.
    #[error("{0} has children")]
    NotEmpty(String),
    /// The key is not a valid path. Certainly not applied.
    #[error("invalid key {0:?}: keys are absolute paths of non-empty segments")]
    InvalidKey(String),
    /// The value is larger than [`MAX_VALUE_BYTES`]. Certainly not applied.
    #[error("value of {key} has {len} bytes; the limit is {MAX_VALUE_BYTES}")]
    TooLarge {
        /// Key.
        key: String,
        /// Size of the value.
        len: usize,
    },
    /// The request is valid but more than every backend can do as one call (see
    /// [`validate_transaction`]). Certainly not applied.
    #[error("unsupported request: {0}")]
    Unsupported(String),
    /// No contact with the store. The call **may have been applied**: re-read before retrying a
    /// write that is not idempotent. The session may still recover.
    #[error("connection to the coordination store lost")]
    ConnectionLoss,
    /// The session expired or was closed. A call in flight at that moment may have been applied;
    /// later calls were not. Open a new session.
    #[error("coordination session expired or closed")]
    SessionExpired,
    /// Anything else the backend reports. May have been applied.
    #[error("coordination backend error: {0}")]
    Backend(String),
}

impl CoordError {
    /// The store certainly did not apply the call.
    pub fn certainly_not_applied(&self) -> bool {
        !matches!(
            self,
            CoordError::ConnectionLoss | CoordError::SessionExpired | CoordError::Backend(_)
        )
    }

    /// Retrying the same call on the same session may succeed (after re-reading, for writes).
    pub fn retryable(&self) -> bool {
        matches!(self, CoordError::ConnectionLoss | CoordError::Backend(_))
    }
}

/// Checks that `key` is an absolute path of non-empty segments without `.` or `..`.
pub fn validate_key(key: &str) -> Result<(), CoordError> {
    let ok = key.len() > 1
        && key.starts_with('/')
        && key[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0'));
    if ok {
        Ok(())
    } else {
        Err(CoordError::InvalidKey(key.to_owned()))
    }
}

/// Checks what every backend checks before applying a transaction: valid keys, values within
/// [`MAX_VALUE_BYTES`], at most [`MAX_TRANSACTION_OPS`] operations, and no key named again after
/// an operation of the same transaction wrote it.
pub fn validate_transaction(ops: &[Op]) -> Result<(), CoordError> {
    if ops.len() > MAX_TRANSACTION_OPS {
        return Err(CoordError::Unsupported(format!(
            "a transaction of {} operations; the limit is {MAX_TRANSACTION_OPS}",
            ops.len()
        )));
    }
    let mut written = std::collections::HashSet::new();
    for op in ops {
        let key = op.key();
        validate_key(key)?;
        if let Op::Create { value, .. } | Op::Set { value, .. } = op {
            validate_value(key, value)?;
        }
        if written.contains(key) {
            return Err(CoordError::Unsupported(format!(
                "{key} is named again after an earlier operation of the same transaction wrote it"
            )));
        }
        if !matches!(op, Op::Check { .. }) {
            written.insert(key);
        }
    }
    Ok(())
}

/// Checks that a value fits in [`MAX_VALUE_BYTES`].
pub fn validate_value(key: &str, value: &[u8]) -> Result<(), CoordError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(CoordError::TooLarge {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    Ok(())
}

/// Events a watch holds for its receiver before it gives up on keeping them: past this, the
/// events that do not fit are dropped and the receiver gets one [`WatchEvent::Resync`] instead,
/// so a receiver that falls behind (a flood of changes) costs bounded memory.
pub const WATCH_CAPACITY: usize = 1024;

/// A watch channel: a bounded queue of events whose overflow turns into a
/// [`WatchEvent::Resync`]. The sending half is the backend's.
pub fn watch_channel(capacity: usize) -> (WatchSender, Watch) {
    let (events, receiver) = mpsc::channel(capacity.max(1));
    let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (
        WatchSender {
            events,
            overflowed: overflowed.clone(),
        },
        Watch {
            events: receiver,
            overflowed,
        },
    )
}

/// The sending half of a watch: never blocks, and never holds more than its capacity.
#[derive(Clone)]
pub struct WatchSender {
    events: mpsc::Sender<WatchEvent>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
}

impl WatchSender {
    /// Queues an event; if the queue is full, drops it and marks the watch for a
    /// [`WatchEvent::Resync`]. `false` once the receiver is gone.
    pub fn send(&self, event: WatchEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Completes once the receiver is gone.
    pub async fn closed(&self) {
        self.events.closed().await
    }
}

/// Stream of watch events. Ends (`None`) when the session ends.
pub struct Watch {
    events: mpsc::Receiver<WatchEvent>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
}

impl Watch {
    /// The next event, or `None` once the session has ended. After an overflow, the events
    /// still queued are dropped and a [`WatchEvent::Resync`] comes in their place.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        if let Some(resync) = self.after_overflow() {
            return Some(resync);
        }
        let event = self.events.recv().await?;
        // It may have been queued before an overflow that happened while we waited.
        Some(self.after_overflow().unwrap_or(event))
    }

    /// An event if one is ready now.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        if let Some(resync) = self.after_overflow() {
            return Some(resync);
        }
        self.events.try_recv().ok()
    }

    /// Whether events were dropped since the last one received (the next is a resync).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Events waiting to be received (at most the watch's capacity).
    pub fn queued(&self) -> usize {
        self.events.len()
    }

    /// A resync in place of everything queued, if events were dropped.
    fn after_overflow(&mut self) -> Option<WatchEvent> {
        if !self
            .overflowed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        while self.events.try_recv().is_ok() {}
        Some(WatchEvent::Resync)
    }
}

/// A coordination store that sessions can be opened on.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Opens a session with the given timeout. Fails with [`CoordError::ConnectionLoss`] if the
    /// store cannot be reached.
    async fn connect(&self, timeout: Duration) -> Result<Arc<dyn Session>, CoordError>;
}

/// What a session is, apart from its calls: a backend's session keeps one from its start and
/// answers [`Session::identity`] with it.
#[derive(Clone, Debug)]
pub struct SessionIdentity {
    /// Unique for the store's lifetime.
    pub id: SessionId,
    /// The timeout the store granted.
    pub timeout: Duration,
    /// The session's state, as a stream.
    pub state: watch::Receiver<SessionState>,
}

/// One session with the store. All calls made through it are tied to it: ephemeral keys it
/// creates live as long as it does.
#[async_trait]
pub trait Session: Send + Sync {
    /// The session's id, timeout and state (a wrapper's: those of the session it stands for
    /// now).
    fn identity(&self) -> SessionIdentity;

    /// The session's id, unique for the store's lifetime.
    fn id(&self) -> SessionId {
        self.identity().id
    }

    /// The session's timeout.
    fn timeout(&self) -> Duration {
        self.identity().timeout
    }

    /// The session's state, as a stream: the receiver sees every change of state (it may skip
    /// intermediate states if it reads slowly, but never misses the latest).
    fn state(&self) -> watch::Receiver<SessionState> {
        self.identity().state
    }

    /// The value of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<Node>, CoordError>;

    /// The names of the next path segment of every key strictly below `key`, sorted.
    async fn children(&self, key: &str) -> Result<Vec<String>, CoordError>;

    /// Creates `key`. Fails with [`CoordError::Exists`] if it exists. (By default, a
    /// transaction of one operation.)
    async fn create(&self, key: &str, value: Vec<u8>, mode: CreateMode) -> Result<(), CoordError> {
        let key = key.to_owned();
        let op = Op::Create { key, value, mode };
        self.transaction(vec![op]).await.map(|_| ())
    }

    /// Sets an existing key, if its version is `expected` (any if `None`); returns the new
    /// version. Fails with [`CoordError::NotFound`] or [`CoordError::BadVersion`]. (By default,
    /// a transaction of one operation.)
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, CoordError> {
        let key = key.to_owned();
        let op = Op::Set {
            key,
            value,
            expected,
        };
        match self.transaction(vec![op]).await?.as_slice() {
            [OpResult::Set(version)] => Ok(*version),
            other => Err(CoordError::Backend(format!("a set answered {other:?}"))),
        }
    }

    /// Deletes an existing key without children, if its version is `expected` (any if `None`).
    /// (By default, a transaction of one operation.)
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), CoordError> {
        let op = Op::Delete {
            key: key.to_owned(),
            expected,
        };
        self.transaction(vec![op]).await.map(|_| ())
    }

    /// Applies all operations atomically, or none. The error is that of the first operation
    /// that failed.
    async fn transaction(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError>;

    /// Watches `key` (and, if `recursive`, every key below it). Every change applied after this
    /// returns is delivered in order, or a [`WatchEvent::Resync`] takes the place of lost ones.
    async fn watch(&self, key: &str, recursive: bool) -> Result<Watch, CoordError>;

    /// Ends the session: its ephemeral keys are deleted and its watches end.
    async fn close(&self) -> Result<(), CoordError>;
}
