//! # rota-zookeeper
//!
//! The [`Coordination`] store on ZooKeeper (>= 3.6), for production.
//!
//! - **Sessions** are ZooKeeper sessions with the requested timeout as the server grants it
//!   (bounded by its `minSessionTimeout` and `maxSessionTimeout`; [`Session::timeout`] reports
//!   the granted one, and a warning says when it differs). The client reports
//!   `Disconnected` as [`SessionState::Suspended`] (the session may come back within its
//!   timeout), and `Expired` / `Closed` as final; a new session is a new client.
//! - **Keys** are znodes; versions are znode data versions (0 at creation). Missing parents are
//!   created as empty persistent znodes (ZooKeeper needs them), outside the transaction that
//!   needs them: they carry no data, so a failed transaction leaves at most empty directories.
//! - **Transactions** are `multi` requests; a failed check is reported as `BadVersion`.
//! - **Watches** are persistent (recursive for subtrees) watches, one per call; ZooKeeper's events
//!   name the node and the kind of change, which is what [`WatchEvent`] carries. After the
//!   client reconnects to its session a watch is set again (the server dropped it with the
//!   connection, and the client library does not restore persistent watches), and since it may
//!   have missed events meanwhile (ZOOKEEPER-4698) it then emits `Resync`.
//!
//! Connect strings may carry a chroot (`host:2181,host2:2181/rota`).

use async_trait::async_trait;
use rota_cluster::coordination::{
    CoordError, Coordination, CreateMode, Node, Op, OpResult, Session, SessionIdentity,
    SessionState, WATCH_CAPACITY, Watch, WatchEvent, WatchSender, validate_key,
    validate_transaction, validate_value, watch_channel,
};
use rota_model::SessionId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use zookeeper_client as zk;

/// A session's credentials and the state its holder sees.
type Known = (zk::SessionInfo, watch::Receiver<SessionState>);

/// A ZooKeeper ensemble to open sessions on.
#[derive(Clone)]
pub struct ZooKeeperCoordination {
    endpoints: String,
    /// `user:password` of ZooKeeper's `digest` scheme: with it, every session authenticates,
    /// and the nodes rota creates are writable by that user only (readable by anyone).
    digest: Option<String>,
    /// Session credentials and states by id, so tests can make the server expire a session.
    sessions: Arc<Mutex<HashMap<SessionId, Known>>>,
}

impl ZooKeeperCoordination {
    /// Sessions will connect to `endpoints` (`host:port[,host:port...][/chroot]`).
    pub fn new(endpoints: impl Into<String>) -> Self {
        Self {
            endpoints: endpoints.into(),
            digest: None,
            sessions: Arc::default(),
        }
    }

    /// Authenticates every session as `user` with `password` (ZooKeeper's `digest` scheme) and
    /// creates every node with an ACL that lets only that user change it and anyone read it,
    /// so other clients of a shared ensemble cannot alter the cluster. Nodes created before
    /// keep the ACL they were created with.
    pub fn with_digest(mut self, user: &str, password: &str) -> Self {
        self.digest = Some(format!("{user}:{password}"));
        self
    }

    /// Makes the server expire a session now: a second client takes the session over and
    /// closes it, as ZooKeeper's own tests do. For fault injection in tests.
    pub async fn expire(&self, session: &SessionId) {
        let known = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .cloned();
        let Some((info, mut state)) = known else {
            return;
        };
        // Until the holder sees its session end: take it over and close it (the server may need
        // more than one try while the holder reconnects).
        for _ in 0..10 {
            if let Ok(client) = zk::Client::connector()
                .with_session(info.clone())
                .connect(&self.endpoints)
                .await
            {
                drop(client);
            }
            let ended = state.wait_for(|s| s.is_final());
            if tokio::time::timeout(Duration::from_secs(3), ended)
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Sets a persistent watch on `key` again after the client reconnected to its session,
/// retrying while the connection comes and goes; `None` once the session has ended (or nobody
/// reads the watch any more).
///
/// The server keeps a connection's watches only as long as the connection; a client is to set
/// them again on reconnecting (`SetWatches`), but zookeeper-client 0.11 leaves persistent
/// watches out of that request, so without this a watch falls silent for the rest of its
/// session after the first lost connection. (The old watcher is dropped once this one is set:
/// the path keeps a watcher of its mode throughout, so the client asks the server to remove
/// nothing.)
async fn renew(
    session: &Mutex<Option<zk::Client>>,
    key: &str,
    mode: zk::AddWatchMode,
    reader: &WatchSender,
) -> Option<zk::PersistentWatcher> {
    let mut pause = Duration::from_millis(50);
    loop {
        // A handle only for this call: the session closes once its owner drops the last one.
        let client = session.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        match client.watch(key, mode).await {
            Ok(watcher) => return Some(watcher),
            Err(
                zk::Error::SessionExpired
                | zk::Error::ClientClosed
                | zk::Error::AuthFailed
                | zk::Error::NoHosts,
            ) => return None,
            Err(e) => tracing::debug!(key, error = %e, "setting a watch again failed; retrying"),
        }
        drop(client);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = reader.closed() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn map_error(e: zk::Error, key: &str) -> CoordError {
    match e {
        zk::Error::NoNode => CoordError::NotFound(key.to_owned()),
        zk::Error::NodeExists => CoordError::Exists(key.to_owned()),
        zk::Error::NotEmpty => CoordError::NotEmpty(key.to_owned()),
        zk::Error::BadVersion => CoordError::BadVersion {
            key: key.to_owned(),
            expected: 0,
            actual: None,
        },
        zk::Error::SessionExpired | zk::Error::ClientClosed => CoordError::SessionExpired,
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::NoHosts => {
            CoordError::ConnectionLoss
        }
        zk::Error::NoAuth => CoordError::Backend(format!(
            "ZooKeeper refused to change {key}: the node's ACL does not admit this client \
             (check coordination.username and coordination.password)"
        )),
        zk::Error::AuthFailed => CoordError::Backend(
            "ZooKeeper refused the credentials (coordination.username and \
             coordination.password)"
                .into(),
        ),
        other => CoordError::Backend(other.to_string()),
    }
}

/// Everything to its authenticated creator, reading to anyone.
static OWNED: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

/// The ACL of the nodes a session creates: open without credentials, owned with them.
fn acls(secured: bool) -> zk::Acls<'static> {
    if secured {
        zk::Acls::new(&OWNED)
    } else {
        zk::Acls::anyone_all()
    }
}

fn parent(key: &str) -> Option<&str> {
    let i = key.rfind('/')?;
    (i > 0).then(|| &key[..i])
}

#[async_trait]
impl Coordination for ZooKeeperCoordination {
    async fn connect(&self, timeout: Duration) -> Result<Arc<dyn Session>, CoordError> {
        let mut connector = zk::Client::connector();
        connector = connector
            .with_session_timeout(timeout)
            .with_connection_timeout(timeout.min(Duration::from_secs(5)));
        if let Some(digest) = &self.digest {
            connector = connector.with_auth("digest", digest.as_bytes());
        }
        let client = connector
            .connect(&self.endpoints)
            .await
            .map_err(|e| match e {
                zk::Error::NoHosts | zk::Error::Timeout | zk::Error::ConnectionLoss => {
                    CoordError::ConnectionLoss
                }
                other => CoordError::Backend(format!("cannot connect to ZooKeeper: {other}")),
            })?;
        let id = SessionId::new(format!("zk-{}", client.session_id()));
        // The server bounds session timeouts (its minSessionTimeout and maxSessionTimeout):
        // every timing derived from the session must use what it granted.
        let granted = client.session_timeout();
        if granted != timeout {
            tracing::warn!(
                requested = ?timeout,
                ?granted,
                "ZooKeeper granted another session timeout than configured; using the granted one"
            );
        }
        let timeout = granted;
        let (state_tx, state_rx) = watch::channel(SessionState::Connected);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (client.session().clone(), state_rx.clone()));
        let mut zk_state = client.state_watcher();
        let forward = state_tx.clone();
        let sessions = self.sessions.clone();
        let forget = id.clone();
        tokio::spawn(async move {
            loop {
                let state = match zk_state.changed().await {
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        SessionState::Connected
                    }
                    zk::SessionState::Disconnected => SessionState::Suspended,
                    zk::SessionState::Closed => SessionState::Closed,
                    zk::SessionState::Expired | zk::SessionState::AuthFailed => {
                        SessionState::Expired
                    }
                };
                let done = state.is_final();
                forward.send_if_modified(|s| {
                    if s.is_final() || *s == state {
                        return false;
                    }
                    *s = state;
                    true
                });
                if done {
                    sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&forget);
                    return;
                }
            }
        });
        Ok(Arc::new(ZooKeeperSession {
            identity: SessionIdentity {
                id,
                timeout,
                state: state_rx,
            },
            client: Arc::new(Mutex::new(Some(client))),
            secured: self.digest.is_some(),
            state: state_tx,
        }))
    }
}

struct ZooKeeperSession {
    identity: SessionIdentity,
    /// Shared with the session's watches, which set themselves again through it; none keeps a
    /// handle of its own, since dropping the last handle is what closes the session.
    client: Arc<Mutex<Option<zk::Client>>>,
    /// Authenticated: create nodes only this user may change.
    secured: bool,
    state: watch::Sender<SessionState>,
}

impl ZooKeeperSession {
    fn client(&self) -> Result<zk::Client, CoordError> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(CoordError::SessionExpired)
    }

    /// Creates the missing parents of `key` as empty persistent znodes.
    async fn ensure_parent(&self, client: &zk::Client, key: &str) -> Result<(), CoordError> {
        let Some(parent) = parent(key) else {
            return Ok(());
        };
        let options = zk::CreateMode::Persistent.with_acls(acls(self.secured));
        client
            .mkdir(parent, &options)
            .await
            .map_err(|e| map_error(e, parent))
    }

    /// Fills in the actual version of a key after a BadVersion.
    async fn bad_version(&self, client: &zk::Client, key: &str, expected: u64) -> CoordError {
        let actual = client
            .check_stat(key)
            .await
            .ok()
            .flatten()
            .map(|s| s.version as u64);
        CoordError::BadVersion {
            key: key.to_owned(),
            expected,
            actual,
        }
    }
}

fn zk_version(v: Option<u64>) -> Option<i32> {
    v.map(|v| v.min(i32::MAX as u64) as i32)
}

#[async_trait]
impl Session for ZooKeeperSession {
    async fn get(&self, key: &str) -> Result<Option<Node>, CoordError> {
        validate_key(key)?;
        match self.client()?.get_data(key).await {
            Ok((value, stat)) => Ok(Some(Node {
                value,
                version: stat.version as u64,
                ephemeral: stat.ephemeral_owner != 0,
            })),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(map_error(e, key)),
        }
    }

    async fn children(&self, key: &str) -> Result<Vec<String>, CoordError> {
        validate_key(key)?;
        match self.client()?.list_children(key).await {
            Ok(mut names) => {
                names.sort();
                Ok(names)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(map_error(e, key)),
        }
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, CoordError> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let client = self.client()?;
        match client.set_data(key, &value, zk_version(expected)).await {
            Ok(stat) => Ok(stat.version as u64),
            Err(zk::Error::BadVersion) => {
                Err(self.bad_version(&client, key, expected.unwrap_or(0)).await)
            }
            Err(e) => Err(map_error(e, key)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), CoordError> {
        validate_key(key)?;
        let client = self.client()?;
        match client.delete(key, zk_version(expected)).await {
            Ok(()) => Ok(()),
            Err(zk::Error::BadVersion) => {
                Err(self.bad_version(&client, key, expected.unwrap_or(0)).await)
            }
            Err(e) => Err(map_error(e, key)),
        }
    }

    async fn transaction(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        let client = self.client()?;
        validate_transaction(&ops)?;
        for op in &ops {
            if let Op::Create { key, .. } = op {
                self.ensure_parent(&client, key).await?;
            }
        }
        let mut multi = client.new_multi_writer();
        for op in &ops {
            let added = match op {
                Op::Check { key, version } => multi.add_check_version(key, *version as i32),
                Op::Create { key, value, mode } => {
                    let mode = match mode {
                        CreateMode::Persistent => zk::CreateMode::Persistent,
                        CreateMode::Ephemeral => zk::CreateMode::Ephemeral,
                    };
                    multi.add_create(key, value, &mode.with_acls(acls(self.secured)))
                }
                Op::Set {
                    key,
                    value,
                    expected,
                } => multi.add_set_data(key, value, zk_version(*expected)),
                Op::Delete { key, expected } => multi.add_delete(key, zk_version(*expected)),
            };
            added.map_err(|e| CoordError::Backend(e.to_string()))?;
        }
        match multi.commit().await {
            Ok(results) => Ok(results
                .into_iter()
                .map(|r| match r {
                    zk::MultiWriteResult::Check => OpResult::Checked,
                    zk::MultiWriteResult::Create { .. } => OpResult::Created,
                    zk::MultiWriteResult::SetData { stat } => OpResult::Set(stat.version as u64),
                    zk::MultiWriteResult::Delete => OpResult::Deleted,
                    _ => OpResult::Checked,
                })
                .collect()),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let op = &ops[index];
                let key = match op {
                    Op::Check { key, .. }
                    | Op::Create { key, .. }
                    | Op::Set { key, .. }
                    | Op::Delete { key, .. } => key.as_str(),
                };
                let expected = match op {
                    Op::Check { version, .. } => Some(*version),
                    Op::Set { expected, .. } | Op::Delete { expected, .. } => *expected,
                    Op::Create { .. } => None,
                };
                match (source, op) {
                    // A check of a missing key fails like a check of the wrong version.
                    (zk::Error::NoNode, Op::Check { version, .. }) => Err(CoordError::BadVersion {
                        key: key.to_owned(),
                        expected: *version,
                        actual: None,
                    }),
                    (zk::Error::BadVersion, _) => {
                        Err(self.bad_version(&client, key, expected.unwrap_or(0)).await)
                    }
                    (e, _) => Err(map_error(e, key)),
                }
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(map_error(source, "")),
        }
    }

    async fn watch(&self, key: &str, recursive: bool) -> Result<Watch, CoordError> {
        validate_key(key)?;
        let client = self.client()?;
        let mode = if recursive {
            zk::AddWatchMode::PersistentRecursive
        } else {
            zk::AddWatchMode::Persistent
        };
        let mut watcher = client
            .watch(key, mode)
            .await
            .map_err(|e| map_error(e, key))?;
        drop(client);
        let (tx, watch) = watch_channel(WATCH_CAPACITY);
        let (key, session) = (key.to_owned(), Arc::clone(&self.client));
        tokio::spawn(async move {
            let mut disconnected = false;
            loop {
                let event = tokio::select! {
                    event = watcher.changed() => event,
                    _ = tx.closed() => return,
                };
                let out = match event.event_type {
                    zk::EventType::NodeCreated => Some(WatchEvent::Created { key: event.path }),
                    zk::EventType::NodeDataChanged => Some(WatchEvent::Changed { key: event.path }),
                    zk::EventType::NodeDeleted => Some(WatchEvent::Deleted { key: event.path }),
                    zk::EventType::NodeChildrenChanged => None,
                    zk::EventType::Session => match event.session_state {
                        zk::SessionState::Disconnected => {
                            disconnected = true;
                            None
                        }
                        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
                            if disconnected =>
                        {
                            // The server forgot this watch with the connection. Set it again
                            // before the resync, so that the re-read it asks for sees every
                            // change the watch will not report.
                            let Some(renewed) = renew(&session, &key, mode, &tx).await else {
                                return;
                            };
                            watcher = renewed;
                            disconnected = false;
                            Some(WatchEvent::Resync)
                        }
                        zk::SessionState::Expired
                        | zk::SessionState::Closed
                        | zk::SessionState::AuthFailed => return,
                        _ => None,
                    },
                };
                if let Some(out) = out {
                    if !tx.send(out) {
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }

    async fn close(&self) -> Result<(), CoordError> {
        // Dropping the last client handle closes the session on the server, deleting its
        // ephemeral znodes.
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(client);
        // The client's session task sends CloseSession once the last handle is gone, then reports
        // Closed: wait for that, so a process that exits right after closing does not leave its
        // session (and ephemeral znodes) behind until the timeout.
        let mut state = self.identity.state.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.is_final())).await;
        self.state.send_if_modified(|s| {
            if s.is_final() {
                return false;
            }
            *s = SessionState::Closed;
            true
        });
        Ok(())
    }

    fn identity(&self) -> SessionIdentity {
        self.identity.clone()
    }
}
