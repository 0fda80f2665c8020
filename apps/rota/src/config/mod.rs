//! Configuration: built-in defaults, then a TOML file (`--config`), then environment variables
//! `ROTA_<SECTION>__<KEY>` (for example `ROTA_API__LISTEN=127.0.0.1:9000`), each overriding the
//! one before. Invalid configuration fails at start with a message naming the key.

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// REST API.
    pub api: ApiConfig,
    /// The cluster.
    pub cluster: ClusterConfig,
    /// The coordination store.
    pub coordination: CoordinationConfig,
    /// The task store.
    pub storage: StorageConfig,
    /// Workers.
    pub worker: WorkerSection,
    /// Metrics and health of `rota worker` and `rota controller`.
    pub metrics: MetricsConfig,
    /// The `http` handler.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Recurring schedules the deployment carries (`[[schedules]]`), applied by `rota init` and
    /// at start.
    pub schedules: Vec<crate::crontab::ScheduleEntry>,
}

/// `[http]`: where the `http` handler may send requests, and how it signs them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Networks (`10.0.0.0/8`), addresses and host names (`hooks.example.com`,
    /// `*.example.com`) the handler may call; empty: anything but link-local and cloud metadata
    /// addresses. A list, or one comma-separated string (`ROTA_HTTP__ALLOW=10.0.0.0/8,...`).
    #[serde(deserialize_with = "list_or_commas")]
    pub allow: Vec<String>,
    /// With it, each request carries `X-Rota-Signature` (HMAC-SHA256 of its time and body).
    /// Give it in `ROTA_HTTP__SECRET`, not a file.
    pub secret: Option<String>,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("HttpConfig")
            .field("allow", &self.allow)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HttpConfig {
    /// The parsed allow-list.
    pub fn destinations(&self) -> anyhow::Result<crate::destinations::Destinations> {
        crate::destinations::Destinations::parse(&self.allow)
            .map_err(|e| anyhow::anyhow!("invalid configuration: http.allow: {e}"))
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `rota worker` and `rota controller` serve `/metrics`, `/healthz` and `/readyz`
    /// (`ROTA_METRICS__LISTEN=0.0.0.0:9100`); unset: not served. (`rota api` and `rota dev`
    /// serve them on the API's address.)
    pub listen: Option<SocketAddr>,
}

/// Log line formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` (`ROTA_LOG__FORMAT=json`). Levels come from `RUST_LOG`.
    pub format: LogFormat,
}

/// `[api]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The tokens the API admits (`rota admin token create` prints an entry). With none, every
    /// route is open, which `rota api` and `rota dev` accept only on a loopback address.
    pub tokens: Vec<crate::tokens::TokenEntry>,
    /// Serve without tokens on a non-loopback address (anyone who reaches it may create and
    /// cancel tasks): for a network where something in front authenticates.
    pub allow_unauthenticated: bool,
    /// `/metrics` without a token (for scrapers that cannot send one); otherwise it needs `read`.
    pub open_metrics: bool,
    /// Requests per second per token (per client address when no tokens are configured), bursts
    /// up to a second's worth; 429 past it. 0: no limit. A token's own
    /// `rate_limit_per_second` overrides it.
    pub rate_limit_per_second: u32,
    /// Longest a client may take to finish the TLS handshake, and then to send each request's
    /// headers, before its connection is closed. (A body slower than its `Content-Length` falls
    /// under `request_timeout_ms`: 408.)
    pub header_read_timeout_ms: u64,
    /// HTTPS: the certificate chain and private key (PEM files); unset: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take, its body's arrival included (408 past it).
    pub request_timeout_ms: u64,
    /// Requests served at once; more are answered 503 at once rather than queued.
    pub max_concurrent_requests: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            max_body_bytes: 1 << 20,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 1_024,
            tokens: Vec::new(),
            allow_unauthenticated: false,
            open_metrics: false,
            rate_limit_per_second: 0,
            header_read_timeout_ms: 10_000,
            tls: None,
        }
    }
}

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

impl ApiConfig {
    /// Refuses to serve every route to anyone on an address others can reach, unless told to.
    pub fn check_exposure(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if self.tokens.is_empty() && !listen.ip().is_loopback() && !self.allow_unauthenticated {
            bail!(
                "refusing to serve the API on {listen} without tokens: anyone who can reach it \
                 could create and cancel tasks. Create one with `rota admin token create --name \
                 NAME --scopes read,write` and add its [[api.tokens]] entry, listen on a loopback \
                 address, or set api.allow_unauthenticated = true \
                 (ROTA_API__ALLOW_UNAUTHENTICATED=true) if something in front authenticates"
            );
        }
        Ok(())
    }
}

/// `[cluster]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Cluster name (a key prefix in the coordination store).
    pub name: String,
    /// Partitions of the `tasks` resource.
    pub partitions: u32,
    /// Replicas per partition: one leads (runs the tasks), the others stand by.
    pub replicas: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "rota".into(),
            partitions: 12,
            replicas: 2,
        }
    }
}

/// Coordination backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoordinationBackend {
    /// In this process only.
    Memory,
    /// ZooKeeper.
    Zookeeper,
    /// etcd.
    Etcd,
}

/// A list of strings, or one string of comma-separated items.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        One(String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(items) => items,
        Form::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `[coordination]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// Backend.
    pub backend: CoordinationBackend,
    /// Servers (`host:port`). ZooKeeper accepts a chroot on the last (`host:2181/rota`). A list,
    /// or one string of comma-separated servers (`ROTA_COORDINATION__ENDPOINTS=h1:2181,h2:2181`).
    #[serde(deserialize_with = "list_or_commas")]
    pub endpoints: Vec<String>,
    /// Session timeout: ZooKeeper's session timeout, etcd's lease TTL (rounded up to seconds).
    /// A process cut off from the store longer than this loses its session; a crashed one is
    /// replaced after it.
    pub session_timeout_ms: u64,
    /// etcd only: a key prefix (`/name[/name...]`) under which everything is kept, so several
    /// tenants can share one etcd. Empty: keys start at `/rota/{cluster}`.
    pub prefix: String,
    /// The user to log in as: etcd's user (when etcd has authentication enabled), or
    /// ZooKeeper's `digest` user, which then owns every node rota creates (others may only read
    /// them).
    pub username: Option<String>,
    /// That user's password (give it in `ROTA_COORDINATION__PASSWORD`, not a file).
    pub password: Option<String>,
    /// etcd only: TLS to the servers.
    pub tls: Option<CoordinationTls>,
}

/// `[coordination.tls]`: PEM files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationTls {
    /// The authority that signed the servers' certificates.
    pub ca: std::path::PathBuf,
    /// This client's certificate (for servers that require one, like etcd's
    /// `--client-cert-auth`); with `key`.
    pub cert: Option<std::path::PathBuf>,
    /// This client's private key; with `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        Self {
            backend: CoordinationBackend::Memory,
            endpoints: Vec::new(),
            session_timeout_ms: 10_000,
            prefix: String::new(),
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// Task-store backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// In this process only; lost at exit.
    Memory,
    /// A SQLite file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// `[storage]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Backend.
    pub backend: StorageBackend,
    /// SQLite path or PostgreSQL URL.
    pub url: String,
    /// Finished tasks are deleted after this long (0: kept forever).
    pub retention_ms: u64,
    /// Longest a task-store call may take before it fails as unavailable (and is retried where
    /// that is safe); PostgreSQL's `statement_timeout` and its wait for a pooled connection.
    pub timeout_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            url: "rota-data/tasks.db".into(),
            retention_ms: 7 * 24 * 3600 * 1000,
            timeout_ms: 10_000,
        }
    }
}

/// `[worker]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Stable instance id (default: the host name), so a restart keeps its partitions.
    pub id: Option<String>,
    /// Tasks running at once.
    pub concurrency: usize,
    /// Tasks claimed per store call.
    pub batch: usize,
    /// Claim lease.
    pub lease_ms: u64,
    /// Per-task timeout.
    pub task_timeout_ms: u64,
    /// On giving a partition up gracefully (moved by the controller, or the worker stopping),
    /// how long its tasks in flight may still finish before they are aborted and reported
    /// interrupted; default: the task timeout and 2 s more, so every task reaches its own
    /// timeout first.
    pub drain_timeout_ms: Option<u64>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            id: None,
            concurrency: 16,
            batch: 512,
            lease_ms: 30_000,
            task_timeout_ms: 30_000,
            drain_timeout_ms: None,
        }
    }
}

/// Whether the variable `ROTA_<key>` is a setting. Two kinds are not, and may well be set in the
/// shell that starts a role: `ROTA_TOKEN`, the API token clients such as `rota bench` send, and
/// the simulator's `ROTA_SIM_*`. Any other unknown `ROTA_*` variable is refused, naming it: a
/// mistyped setting must not pass unnoticed.
fn is_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key != "token" && !key.starts_with("sim_")
}

impl Config {
    /// Defaults, then the TOML file (if any), then `ROTA_*` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let settings = Env::prefixed("ROTA_")
            .filter(|key| is_setting(key.as_str()))
            .split("__");
        Self::extract(figment.merge(settings))
    }

    /// A warning if the configuration file at `path` holds a secret (a password in
    /// `storage.url`, `coordination.password`, `http.secret`) and every user of the machine may
    /// read it.
    pub fn secrets_readable_by_all(path: &Path) -> Option<String> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            if mode & 0o004 == 0 {
                return None;
            }
            let file: serde_json::Value = Figment::from(Toml::file(path)).extract().ok()?;
            let text = |section: &str, key: &str| file[section][key].as_str().map(str::to_owned);
            let url_password = text("storage", "url").is_some_and(|url| {
                url.split_once("://")
                    .and_then(|(_, rest)| rest.split_once('@'))
                    .is_some_and(|(credentials, _)| credentials.contains(':'))
            });
            let secrets: Vec<&str> = [
                ("storage.url", url_password),
                (
                    "coordination.password",
                    text("coordination", "password").is_some(),
                ),
                ("http.secret", text("http", "secret").is_some()),
            ]
            .into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect();
            (!secrets.is_empty()).then(|| {
                format!(
                    "{} holds {} and every user of this machine may read it: chmod o-r it, or \
                     give secrets in ROTA_* environment variables",
                    path.display(),
                    secrets.join(", ")
                )
            })
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }

    /// Extracts and validates; errors name the offending key.
    pub fn extract(figment: Figment) -> anyhow::Result<Self> {
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::crontab::validate(&self.schedules, rota_scheduler::worker::wall_clock_ms())?;
        let positive = [
            ("cluster.partitions", u64::from(self.cluster.partitions)),
            ("cluster.replicas", u64::from(self.cluster.replicas)),
            ("worker.concurrency", self.worker.concurrency as u64),
            ("worker.batch", self.worker.batch as u64),
            ("worker.lease_ms", self.worker.lease_ms),
            ("worker.task_timeout_ms", self.worker.task_timeout_ms),
            (
                "coordination.session_timeout_ms",
                self.coordination.session_timeout_ms,
            ),
            ("api.max_body_bytes", self.api.max_body_bytes as u64),
            ("api.request_timeout_ms", self.api.request_timeout_ms),
            (
                "api.max_concurrent_requests",
                self.api.max_concurrent_requests as u64,
            ),
            ("storage.timeout_ms", self.storage.timeout_ms),
            (
                "api.header_read_timeout_ms",
                self.api.header_read_timeout_ms,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("invalid configuration: {key} must be at least 1");
            }
        }
        // At most 58: PostgreSQL names the cluster's schema `rota_<name>`, in 63 bytes.
        let name_ok = (1..=58).contains(&self.cluster.name.len())
            && self
                .cluster
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            bail!(
                "invalid configuration: cluster.name must be 1 to 58 letters, digits, '-', '_' \
                 or '.'"
            );
        }
        let prefix = &self.coordination.prefix;
        if !prefix.is_empty() {
            if self.coordination.backend != CoordinationBackend::Etcd {
                bail!(
                    "invalid configuration: coordination.prefix is for etcd; for ZooKeeper put a \
                     chroot on the endpoint (host:2181/prefix)"
                );
            }
            if rota_cluster::coordination::validate_key(prefix).is_err() {
                bail!(
                    "invalid configuration: coordination.prefix must look like /name or \
                     /name/name, not {prefix:?}"
                );
            }
        }
        let (user, password) = (&self.coordination.username, &self.coordination.password);
        if user.is_some() || password.is_some() {
            if self.coordination.backend == CoordinationBackend::Memory {
                bail!(
                    "invalid configuration: coordination.username and coordination.password are \
                     for etcd and ZooKeeper"
                );
            }
            if user.is_none() || password.is_none() {
                bail!(
                    "invalid configuration: give both coordination.username and \
                     coordination.password, or neither"
                );
            }
        }
        if let Some(tls) = &self.coordination.tls {
            if self.coordination.backend != CoordinationBackend::Etcd {
                bail!("invalid configuration: coordination.tls is for etcd");
            }
            if tls.cert.is_some() != tls.key.is_some() {
                bail!(
                    "invalid configuration: give both coordination.tls.cert and \
                     coordination.tls.key, or neither"
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for token in &self.api.tokens {
            token
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid configuration: api.tokens: {e}"))?;
            if !names.insert(&token.name) {
                bail!(
                    "invalid configuration: api.tokens: two tokens are named {:?}",
                    token.name
                );
            }
        }
        self.http.destinations()?;
        if self.http.secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("invalid configuration: http.secret must have at least 16 characters");
        }
        if self.storage.url.is_empty() && self.storage.backend != StorageBackend::Memory {
            bail!("invalid configuration: storage.url is required for this storage.backend");
        }
        if self.storage.backend == StorageBackend::Postgres
            && !["postgres://", "postgresql://"]
                .iter()
                .any(|scheme| self.storage.url.starts_with(scheme))
        {
            bail!(
                "invalid configuration: storage.url must be a PostgreSQL URL \
                 (postgres://user:password@host:port/database) for storage.backend = \"postgres\", \
                 not {:?}",
                redact_url(&self.storage.url)
            );
        }
        Ok(())
    }

    /// The coordination session timeout.
    pub fn session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.coordination.session_timeout_ms)
    }

    /// A worker's settings for instance `id`: the `[worker]` section, the retention, and a
    /// queue age of a sixth of the session timeout (at most half the task timeout), so a task
    /// claimed by a worker cut off from the store is not started after its session can expire.
    pub fn worker_config(&self, id: &str) -> rota_scheduler::worker::WorkerConfig {
        use std::time::Duration;
        let mut w = rota_scheduler::worker::WorkerConfig::new(rota_model::InstanceId::new(id));
        w.concurrency = self.worker.concurrency;
        w.batch = self.worker.batch;
        w.lease = Duration::from_millis(self.worker.lease_ms);
        w.task_timeout = Duration::from_millis(self.worker.task_timeout_ms);
        w.drain_timeout = self.worker.drain_timeout_ms.map_or(
            w.task_timeout + Duration::from_secs(2),
            Duration::from_millis,
        );
        w.step_down_timeout = (self.session_timeout() / 3).min(w.task_timeout);
        w.retention = self.retention();
        w.partitions = self.cluster.partitions;
        // An embedded store commits in microseconds: nothing to gather.
        if self.storage.backend != StorageBackend::Postgres {
            w.gather = Duration::ZERO;
        }
        w
    }

    /// The built-in handlers as this configuration sets them up.
    pub fn handlers(&self) -> anyhow::Result<rota_scheduler::worker::Handlers> {
        Ok(crate::handlers::builtin_with(
            std::time::Duration::from_millis(self.worker.task_timeout_ms),
            self.http.destinations()?,
            self.http.secret.clone(),
        ))
    }

    /// The deadline of every task-store call.
    pub fn store_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.storage.timeout_ms)
    }

    /// The retention of finished tasks, `None` to keep them.
    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.storage.retention_ms > 0)
            .then(|| std::time::Duration::from_millis(self.storage.retention_ms))
    }

    /// The worker id: configured, or the host name.
    pub fn worker_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.worker.id {
            return Ok(id.clone());
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .context("worker.id is not set and the host name is unknown")?;
        Ok(host)
    }
}

/// A URL with any password replaced by `***`, for logs and status pages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own large error type.
mod tests;
