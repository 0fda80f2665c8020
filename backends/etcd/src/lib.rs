//! # rota-etcd
//!
//! The [`Coordination`] store on etcd (v3 API, >= 3.4), for production.
//!
//! - **Sessions** are leases. Connecting grants a lease whose TTL is the session timeout
//!   (rounded up to whole seconds; etcd raises TTLs below its minimum, and
//!   [`Session::timeout`] reports the TTL granted). A task of the session renews it
//!   ([`keepalive`]): no answered renewal for two thirds of the TTL reports `Suspended`, the
//!   server saying the lease is gone reports `Expired`. Closing revokes the lease.
//! - **Ephemeral keys** are attached to the lease, so etcd deletes them when it expires or is
//!   revoked. Every write of a session is also conditional on a key of its own lease
//!   ([`txn`]), so once the lease is gone nothing the session writes applies — what ZooKeeper
//!   guarantees for an expired session.
//! - **Versions** are etcd's per-key `version` minus one; compare-and-swap compares it in the
//!   same transaction as the write. Within one life of a key that is the same test as comparing
//!   its mod revision (each set bumps both), and it is what the trait's version means: a count
//!   of sets since creation, which callers can hold and compare without knowing revisions.
//! - **Transactions** are etcd transactions: conditions first, then the writes ([`txn`]).
//! - **Watches** are etcd watches on the key (or its subtree) from a known revision, resumed from
//!   the last delivered revision after a lost connection, with an explicit `Resync` only when
//!   that revision was compacted away ([`watch`]).
//! - **Keys** live under a configurable prefix ([`keys`]), so several clusters or tenants can
//!   share an etcd; rota's own keys already start with `/rota/{cluster}`.
//!
//! Every call is bounded by a request timeout (the session timeout, at most 10 s): while no etcd
//! server can be reached, calls fail with [`CoordError::ConnectionLoss`] rather than wait.

mod keepalive;
mod keys;
mod txn;
mod watch;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use keys::{KeySpace, child_name};
use rota_cluster::coordination::{
    CoordError, Coordination, Node, Op, OpResult, Session, SessionIdentity, SessionState, Watch,
    validate_key, validate_transaction,
};
use rota_model::SessionId;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as state_watch;

/// Keys read per request when listing children.
const PAGE: i64 = 1_000;

/// An etcd cluster to open sessions on.
#[derive(Clone)]
pub struct EtcdCoordination {
    endpoints: Vec<String>,
    keys: KeySpace,
    /// User name and password, when etcd has authentication enabled.
    user: Option<(String, String)>,
    /// TLS to the servers: the authority to trust, and the client's certificate.
    tls: Option<etcd_client::TlsOptions>,
}

impl EtcdCoordination {
    /// Sessions will connect to `endpoints` (`host:port` or `http://host:port`) and keep every
    /// key under `prefix` (empty, or `/name[/name...]`).
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            keys: KeySpace::new(prefix),
            user: None,
            tls: None,
        }
    }

    /// Talks TLS to every server (endpoints without a scheme become `https://`), trusting the
    /// PEM authority `ca` and, with `identity` (PEM certificate and key), presenting that client
    /// certificate, as an etcd with `--client-cert-auth` requires.
    pub fn with_tls(mut self, ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Self {
        let mut tls =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        self.tls = Some(tls);
        self
    }

    /// Authenticates every session as `name` (for an etcd with authentication enabled). The
    /// user needs read and write access to the prefix's keys and the session keys beside them.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    async fn client(&self, timeout: Duration) -> Result<Client, CoordError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout.min(Duration::from_secs(5)))
            // Finds a connection that died silently (no reset) while streams wait on it (a
            // session always has its renewal stream open); etcd refuses pings more often than
            // every 5 s, and pings without streams.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from the quorum fails our calls and ends our streams instead of
            // serving stale reads and silent watches; the client moves on to another member.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((name, password)) = &self.user {
            // Tokens expire (etcd's --auth-token-ttl): log in again when one does.
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|e| match map_error(e) {
                CoordError::Backend(message) => {
                    CoordError::Backend(format!("cannot connect to etcd: {message}"))
                }
                other => other,
            })
    }

    /// Makes the server end a session now, as if its lease had run out: revokes the lease. For
    /// fault injection in tests.
    pub async fn expire(&self, session: &SessionId) {
        let Some(lease) = lease_of(session) else {
            return;
        };
        if let Ok(mut client) = self.client(Duration::from_secs(5)).await {
            let _ = bounded(Duration::from_secs(5), client.lease_revoke(lease)).await;
        }
    }
}

/// The lease behind a session id (`etcd-{lease:x}`).
fn lease_of(session: &SessionId) -> Option<i64> {
    let hex = session.as_str().strip_prefix("etcd-")?;
    u64::from_str_radix(hex, 16).ok().map(|l| l as i64)
}

/// What an etcd client error tells the caller.
fn map_error(e: etcd_client::Error) -> CoordError {
    use etcd_client::Error;
    if keepalive::lease_gone(&e) {
        return CoordError::SessionExpired;
    }
    match e {
        Error::GRpcStatus(status) => match status.code() {
            // No connection, or no leader: the call may or may not have been applied.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                CoordError::ConnectionLoss
            }
            // The client's own failures (a broken connection is "transport error"); the
            // server's errors all say "etcdserver: ...".
            tonic::Code::Unknown if !status.message().starts_with("etcdserver:") => {
                CoordError::ConnectionLoss
            }
            _ => CoordError::Backend(format!("etcd: {}", status.message())),
        },
        Error::TransportError(_) | Error::IoError(_) => CoordError::ConnectionLoss,
        other => CoordError::Backend(other.to_string()),
    }
}

/// Runs an etcd call with a deadline: calls wait for a connection while there is none.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(map_error),
        Err(_) => Err(CoordError::ConnectionLoss),
    }
}

#[async_trait]
impl Coordination for EtcdCoordination {
    async fn connect(&self, timeout: Duration) -> Result<Arc<dyn Session>, CoordError> {
        let request_timeout = timeout.clamp(Duration::from_secs(1), Duration::from_secs(10));
        let client = self.client(timeout).await?;
        let ttl = timeout.as_millis().div_ceil(1000).max(1) as i64;
        let mut leases = client.lease_client();
        let grant = bounded(request_timeout, leases.grant(ttl, None)).await?;
        let lease = grant.id();
        let granted = Duration::from_secs(grant.ttl().max(1) as u64);
        // The key every write of the session is conditional on (see `txn`).
        let mut kv = client.kv_client();
        let put = kv.put(
            self.keys.session_key(lease),
            Vec::new(),
            Some(PutOptions::new().with_lease(lease)),
        );
        if let Err(e) = bounded(request_timeout, put).await {
            let _ = bounded(request_timeout, leases.revoke(lease)).await;
            return Err(e);
        }
        let (state, state_rx) = state_watch::channel(SessionState::Connected);
        let state = Arc::new(state);
        let (alive, dropped) = tokio::sync::oneshot::channel();
        tokio::spawn(keepalive::run(
            client.clone(),
            lease,
            granted,
            state.clone(),
            dropped,
        ));
        let identity = SessionIdentity {
            id: SessionId::new(format!("etcd-{:x}", lease as u64)),
            timeout: granted,
            state: state_rx,
        };
        Ok(Arc::new(EtcdSession {
            identity,
            lease,
            request_timeout,
            client,
            keys: self.keys.clone(),
            state,
            _alive: alive,
        }))
    }
}

struct EtcdSession {
    identity: SessionIdentity,
    lease: i64,
    request_timeout: Duration,
    client: Client,
    keys: KeySpace,
    state: Arc<state_watch::Sender<SessionState>>,
    /// Dropped with the last handle: the lease is then no longer renewed.
    _alive: tokio::sync::oneshot::Sender<()>,
}

impl EtcdSession {
    /// Fails once the session is over: its holder must open a new one.
    fn live(&self) -> Result<(), CoordError> {
        if self.identity.state.borrow().is_final() {
            return Err(CoordError::SessionExpired);
        }
        Ok(())
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CoordError> {
        self.live()?;
        bounded(self.request_timeout, call).await
    }

    /// A read, tried again at once (twice at most, all within one request timeout) when it
    /// fails for want of a connection: after an etcd member restarts, the first call on each
    /// connection to it fails although other members can answer. Reads have no effect, so
    /// trying again is always safe.
    async fn read(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, CoordError> {
        self.live()?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut tries = 0;
        loop {
            let mut kv = self.client.kv_client();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match bounded(left, kv.get(key.clone(), options.clone())).await {
                Err(CoordError::ConnectionLoss)
                    if tries < 2 && tokio::time::Instant::now() < deadline =>
                {
                    tries += 1;
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
impl Session for EtcdSession {
    fn identity(&self) -> SessionIdentity {
        self.identity.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Node>, CoordError> {
        validate_key(key)?;
        let response = self.read(self.keys.key(key), None).await?;
        Ok(response.kvs().first().map(|kv| Node {
            value: kv.value().to_vec(),
            version: txn::rota_version(kv.version()),
            ephemeral: kv.lease() != 0,
        }))
    }

    async fn children(&self, key: &str) -> Result<Vec<String>, CoordError> {
        validate_key(key)?;
        let (mut start, end) = self.keys.children_range(key);
        let mut names = BTreeSet::new();
        // Page through the keys below, all pages at the first page's revision.
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = self.read(start.clone(), Some(options)).await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                if let Some(path) = self.keys.path(kv.key()) {
                    if let Some(name) = child_name(key, &path) {
                        names.insert(name.to_owned());
                    }
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(names.into_iter().collect()),
            }
        }
    }

    async fn transaction(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, CoordError> {
        validate_transaction(&ops)?;
        let mut kv = self.client.kv_client();
        let request = txn::build(&self.keys, self.lease, &ops);
        let response = self.call(kv.txn(request)).await?;
        if response.succeeded() {
            return txn::results(&ops, &response);
        }
        let error = txn::failure(&ops, &response);
        if error == CoordError::SessionExpired {
            // The lease is gone: say so now rather than at the next renewal.
            keepalive::set_state(&self.state, SessionState::Expired);
        }
        Err(error)
    }

    async fn watch(&self, key: &str, recursive: bool) -> Result<Watch, CoordError> {
        validate_key(key)?;
        // Everything after the current revision: every change applied once this returns.
        let now = self
            .read(
                self.keys.key(key),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        let revision = now.header().map_or(0, |h| h.revision());
        let (tx, events) =
            rota_cluster::coordination::watch_channel(rota_cluster::coordination::WATCH_CAPACITY);
        let spec = watch::Spec {
            path: key.to_owned(),
            recursive,
            keys: self.keys.clone(),
        };
        tokio::spawn(watch::run(
            self.client.clone(),
            spec,
            revision + 1,
            tx,
            self.identity.state.clone(),
        ));
        Ok(events)
    }

    async fn close(&self) -> Result<(), CoordError> {
        if self.identity.state.borrow().is_final() {
            return Ok(());
        }
        // Revoking deletes the ephemeral keys at once; if etcd cannot be reached, the lease
        // runs out on its own (no renewals follow the Closed state).
        let mut lease = self.client.lease_client();
        if let Err(error) = bounded(self.request_timeout, lease.revoke(self.lease)).await {
            tracing::warn!(session = %self.identity.id, %error, "cannot revoke the etcd lease; it will expire");
        }
        keepalive::set_state(&self.state, SessionState::Closed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_lease() {
        let id = SessionId::new(format!("etcd-{:x}", 0x694d_8a3c_1f2e_0b07_u64));
        assert_eq!(lease_of(&id), Some(0x694d_8a3c_1f2e_0b07));
        assert_eq!(lease_of(&SessionId::new("zk-12")), None);
    }
}
