//! The network between one simulated node and the stores: a [`Link`] holds the node's faults,
//! [`SimCoordination`] and [`SimSession`] carry its coordination calls over it. A cut-off node
//! hears nothing from the store (not even that its session expired) until the cut heals, as a
//! partitioned ZooKeeper client learns of its expiry only when it reconnects; a frozen node's
//! calls wait in the network and are delivered when it thaws; a controller's write may be
//! delivered late, after the session that sent it has ended, which only the leader fence can
//! then refuse (the fence is tested on its own, not behind the session's protection).

use crate::history::History;
use async_trait::async_trait;
use rota_cluster::coordination::{
    CoordError, Coordination, CreateMode, Node, Op, OpResult, Session, SessionIdentity,
    SessionState, WATCH_CAPACITY, Watch, watch_channel,
};
use rota_cluster::keys::ClusterKeys;
use rota_memory::MemoryCoordination;
use rota_model::SessionId;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// One node's connection to the stores, and the faults on it.
pub struct Link {
    /// The node's name.
    pub name: String,
    /// Whether the node is a controller (its writes are checked against the leader epoch).
    pub controller: bool,
    /// Cut off from the coordination store.
    cut: watch::Sender<bool>,
    /// Every call of the node (coordination and task store) waits in the network.
    frozen: watch::Sender<bool>,
    /// Task-store calls fail at once as unavailable.
    pub store_down: AtomicBool,
    /// The next this many task-store calls fail (odd ones after being applied).
    pub store_failures: AtomicU32,
    /// The next controller write is delivered this many ms late (0: none).
    pub late_write_ms: AtomicU32,
    /// The node's coordination sessions, newest last.
    sessions: Mutex<Vec<SessionId>>,
}

impl Link {
    /// A healthy link.
    pub fn new(name: &str, controller: bool) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            controller,
            cut: watch::channel(false).0,
            frozen: watch::channel(false).0,
            store_down: AtomicBool::new(false),
            store_failures: AtomicU32::new(0),
            late_write_ms: AtomicU32::new(0),
            sessions: Mutex::new(Vec::new()),
        })
    }

    /// The node's newest session.
    pub fn session(&self) -> Option<SessionId> {
        self.sessions.lock().unwrap().last().cloned()
    }

    /// The node's process died: its sessions are no longer its own (a cut or heal afterwards
    /// cannot revive them; they expire when their timeout passes).
    pub fn crashed(&self) {
        self.sessions.lock().unwrap().clear();
    }

    /// Cuts the node off from the coordination store (its session is suspended; it expires
    /// if the cut outlasts its timeout).
    pub fn cut(&self, store: &MemoryCoordination) {
        self.cut.send_replace(true);
        for s in self.sessions.lock().unwrap().iter() {
            store.suspend(s);
        }
    }

    /// Heals a cut: a session still alive resumes; an expired one is now seen expired.
    pub fn heal(&self, store: &MemoryCoordination) {
        for s in self.sessions.lock().unwrap().iter() {
            store.resume(s);
        }
        self.cut.send_replace(false);
    }

    /// Whether the node is cut off from the coordination store.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// Freezes (`true`) or thaws every call of the node.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Waits while the node is frozen.
    pub async fn pass(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|f| !*f).await;
    }

    async fn until_heard(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|c| !*c).await;
    }
}

/// The coordination store as one node reaches it.
pub struct SimCoordination {
    store: MemoryCoordination,
    link: Arc<Link>,
    history: History,
    /// Where a late write lands once its session is gone: the network delivers it anyway.
    carrier: Arc<dyn Session>,
    keys: ClusterKeys,
}

impl SimCoordination {
    /// `link`'s view of `store`; `carrier` is a session of the simulator's own.
    pub fn new(
        store: MemoryCoordination,
        link: Arc<Link>,
        history: History,
        carrier: Arc<dyn Session>,
        cluster: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            link,
            history,
            carrier,
            keys: ClusterKeys::new(cluster),
        })
    }
}

#[async_trait]
impl Coordination for SimCoordination {
    async fn connect(&self, timeout: Duration) -> Result<Arc<dyn Session>, CoordError> {
        self.link.pass().await;
        if self.link.is_cut() {
            return Err(CoordError::ConnectionLoss);
        }
        let inner = self.store.connect(timeout).await?;
        self.link.sessions.lock().unwrap().push(inner.id());
        // The holder's view of the session's state: an end is heard only once the cut heals.
        let (state_tx, _) = watch::channel(*inner.state().borrow());
        let mut rx = inner.state();
        let (link, tx) = (self.link.clone(), state_tx.clone());
        tokio::spawn(async move {
            loop {
                if rx.changed().await.is_err() {
                    break;
                }
                let state = *rx.borrow_and_update();
                if state.is_final() {
                    link.until_heard().await;
                }
                tx.send_replace(state);
                if state.is_final() {
                    break;
                }
            }
        });
        Ok(Arc::new(SimSession {
            inner,
            store: self.store.clone(),
            state: state_tx,
            link: self.link.clone(),
            history: self.history.clone(),
            carrier: self.carrier.clone(),
            keys: self.keys.clone(),
        }))
    }
}

/// One node's session.
pub struct SimSession {
    inner: Arc<dyn Session>,
    store: MemoryCoordination,
    state: watch::Sender<SessionState>,
    link: Arc<Link>,
    history: History,
    carrier: Arc<dyn Session>,
    keys: ClusterKeys,
}

impl SimSession {
    fn is_election(&self, ops: &[Op]) -> bool {
        ops.iter()
            .any(|op| matches!(op, Op::Create { key, .. } if *key == self.keys.leader()))
    }

    /// After a controller's transaction was applied: check it against the leader epoch.
    async fn applied(&self, ops: &[Op]) {
        if !self.link.controller {
            return;
        }
        let counter = match self.carrier.get(&self.keys.leader_epoch()).await {
            Ok(Some(node)) => String::from_utf8_lossy(&node.value).parse().unwrap_or(0),
            _ => 0,
        };
        if self.is_election(ops) {
            self.history.elected(&self.link.name, counter);
        } else {
            let first = ops
                .iter()
                .find(|op| !matches!(op, Op::Check { .. }))
                .map(|op| op.key().to_owned())
                .unwrap_or_default();
            self.history
                .controller_wrote(&self.link.name, counter, &first);
        }
    }

    fn refused(&self, ops: &[Op], e: &CoordError) {
        if self.link.controller
            && matches!(e, CoordError::BadVersion { key, .. } if *key == self.keys.leader_epoch())
            && !self.is_election(ops)
        {
            self.history.controller_refused(&self.link.name);
        }
    }
}

#[async_trait]
impl Session for SimSession {
    fn identity(&self) -> SessionIdentity {
        SessionIdentity {
            state: self.state.subscribe(),
            ..self.inner.identity()
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Node>, CoordError> {
        self.link.pass().await;
        self.inner.get(key).await
    }

    async fn children(&self, key: &str) -> Result<Vec<String>, CoordError> {
        self.link.pass().await;
        self.inner.children(key).await
    }

    async fn transaction(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        let late = self.link.late_write_ms.load(Ordering::SeqCst);
        let plain = !ops.iter().any(|op| {
            matches!(
                op,
                Op::Create {
                    mode: CreateMode::Ephemeral,
                    ..
                }
            )
        });
        if self.link.controller && late > 0 && plain && !self.is_election(&ops) {
            // The leader stalls with this write in the network: its session is cut off (and
            // expires: another controller takes over), and the write lands afterwards.
            self.link.late_write_ms.store(0, Ordering::SeqCst);
            self.history.fault(format!(
                "{}'s write to {} delayed {late} ms in the network",
                self.link.name,
                ops.last().map(|o| o.key()).unwrap_or("")
            ));
            self.link.cut(&self.store);
            tokio::time::sleep(Duration::from_millis(late as u64)).await;
            let on = if self.inner.state().borrow().is_final() {
                self.carrier.clone()
            } else {
                self.inner.clone()
            };
            let result = on.transaction(ops.clone()).await;
            match &result {
                Ok(_) => self.applied(&ops).await,
                Err(e) => self.refused(&ops, e),
            }
            self.link.heal(&self.store);
            return result;
        }
        self.link.pass().await;
        let result = self.inner.transaction(ops.clone()).await;
        match &result {
            Ok(_) => self.applied(&ops).await,
            Err(e) => self.refused(&ops, e),
        }
        result
    }

    async fn watch(&self, key: &str, recursive: bool) -> Result<Watch, CoordError> {
        self.link.pass().await;
        let mut inner = self.inner.watch(key, recursive).await?;
        // Forwarded in order; the end of the stream (the session's end) is heard only once a
        // cut heals, like the session's state.
        let (tx, rx) = watch_channel(WATCH_CAPACITY);
        let link = self.link.clone();
        tokio::spawn(async move {
            while let Some(event) = inner.next().await {
                if !tx.send(event) {
                    return;
                }
            }
            link.until_heard().await;
        });
        Ok(rx)
    }

    async fn close(&self) -> Result<(), CoordError> {
        self.inner.close().await
    }
}
