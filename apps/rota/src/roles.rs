//! The production roles, one per process: `init`, `controller`, `api`, `worker` and `admin`,
//! built from the configuration's coordination store (ZooKeeper or etcd) and task store
//! (PostgreSQL or SQLite). Every long-running role stops gracefully when its shutdown signal is
//! set.

use crate::api::{self, AppState, ClusterView};
use crate::config::{Config, CoordinationBackend, StorageBackend, redact_url};
use anyhow::{Context, bail};
use rota_cluster::admin::Admin;
use rota_cluster::controller::{Controller, ControllerConfig, ControllerStatus};
use rota_cluster::coordination::reconnecting::Reconnecting;
use rota_cluster::coordination::{Coordination, Session};
use rota_cluster::keys::ClusterKeys;
use rota_cluster::participant::{Participant, ParticipantConfig, ParticipantStatus};
use rota_model::{InstanceConfig, ResourceConfig};
use rota_scheduler::metrics::Metrics;
use rota_scheduler::worker::{Worker, wall_clock_ms};
use rota_scheduler::{Deadlined, TASKS_RESOURCE, TaskStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;

/// The coordination store the configuration names.
pub fn coordination(config: &Config) -> anyhow::Result<Arc<dyn Coordination>> {
    match config.coordination.backend {
        CoordinationBackend::Zookeeper => {
            if config.coordination.endpoints.is_empty() {
                bail!("coordination.endpoints is empty: give the ZooKeeper servers as host:port");
            }
            let mut store =
                rota_zookeeper::ZooKeeperCoordination::new(config.coordination.endpoints.join(","));
            if let (Some(user), Some(password)) =
                (&config.coordination.username, &config.coordination.password)
            {
                store = store.with_digest(user, password);
            }
            Ok(Arc::new(store))
        }
        CoordinationBackend::Memory => bail!(
            "coordination.backend = \"memory\" lives inside one process: use `rota dev`, or \
             set coordination.backend = \"zookeeper\" or \"etcd\" for separate processes"
        ),
        CoordinationBackend::Etcd => etcd(config),
    }
}

#[cfg(feature = "etcd")]
fn etcd(config: &Config) -> anyhow::Result<Arc<dyn Coordination>> {
    if config.coordination.endpoints.is_empty() {
        bail!("coordination.endpoints is empty: give the etcd servers as host:port");
    }
    let mut store = rota_etcd::EtcdCoordination::new(
        config.coordination.endpoints.clone(),
        &config.coordination.prefix,
    );
    if let (Some(user), Some(password)) =
        (&config.coordination.username, &config.coordination.password)
    {
        store = store.with_user(user, password);
    }
    if let Some(tls) = &config.coordination.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .with_context(|| format!("cannot read {} (coordination.tls)", path.display()))
        };
        let ca = read(&tls.ca)?;
        let identity = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        store = store.with_tls(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        );
    }
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
fn etcd(_: &Config) -> anyhow::Result<Arc<dyn Coordination>> {
    bail!(
        "coordination.backend = \"etcd\", but this rota was built without etcd support: rebuild \
         with `cargo build --release -p rota --features etcd` (needs protoc: \
         `bash scripts/install-deps.sh` installs it)"
    )
}

/// The task store the configuration names (connecting migrates it), each call bounded by
/// `storage.timeout_ms`.
pub async fn task_store(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn TaskStore>> {
    let url = &config.storage.url;
    let store: Arc<dyn TaskStore> = match config.storage.backend {
        StorageBackend::Postgres => Arc::new(
            rota_postgres::PostgresTaskStore::connect(url, &postgres_settings(config))
                .await
                .with_context(|| format!("task store {}", redact_url(url)))?,
        ),
        StorageBackend::Sqlite => Arc::new(
            rota_sqlite::SqliteTaskStore::open(url, &config.cluster.name)
                .with_context(|| format!("task store {url}"))?,
        ),
        StorageBackend::Memory => bail!(
            "storage.backend = \"memory\" lives inside one process: use `rota dev`, or \
             postgres for separate processes"
        ),
    };
    Ok(Arc::new(
        Deadlined::with_deadline(store, config.store_timeout()).counting_errors(metrics.clone()),
    ))
}

/// The PostgreSQL store's settings: the cluster's schema, the call deadline as its statement
/// timeout.
fn postgres_settings(config: &Config) -> rota_postgres::Settings {
    let mut settings = rota_postgres::Settings::for_cluster(&config.cluster.name);
    settings.statement_timeout = config.store_timeout();
    settings
}

fn timeout(config: &Config) -> Duration {
    config.session_timeout()
}

pub(crate) async fn session(config: &Config) -> anyhow::Result<Arc<dyn Session>> {
    let store = coordination(config)?;
    let session = store.connect(timeout(config)).await;
    match session {
        Ok(session) => Ok(session),
        // Say what is wrong with each server, which the client's own error does not.
        Err(e) => Err(anyhow::anyhow!(
            "cannot reach the coordination store ({e}): {}; check coordination.endpoints and \
             that the servers run",
            unreachable(&config.coordination.endpoints).await
        )),
    }
}

/// What stops a TCP connection to each `host:port` (a ZooKeeper chroot after the port is
/// ignored): the name does not resolve, the connection is refused, no answer.
async fn unreachable(endpoints: &[String]) -> String {
    if endpoints.is_empty() {
        return "no endpoints are configured".into();
    }
    let mut why = Vec::new();
    for endpoint in endpoints {
        let address = endpoint.split('/').next().unwrap_or(endpoint);
        let probe = async {
            let resolved: Vec<_> = match tokio::net::lookup_host(address).await {
                Ok(found) => found.collect(),
                Err(e) => return format!("{address}: the name does not resolve ({e})"),
            };
            let Some(first) = resolved.first() else {
                return format!("{address}: the name resolves to no address");
            };
            match tokio::net::TcpStream::connect(first).await {
                Ok(_) => format!("{address}: reachable, but no session could be opened"),
                Err(e) => format!("{address}: {e}"),
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(3), probe)
            .await
            .unwrap_or_else(|_| format!("{address}: no answer within 3 s"));
        why.push(answer);
    }
    why.join("; ")
}

/// The cluster's `tasks` resource as `rota init` stored it: every role starts from it, refusing a
/// cluster that was never initialised and a configuration whose partitions or replicas differ
/// from the cluster's (an API that spread tasks over partitions nobody owns would lose them).
pub(crate) async fn initialised(config: &Config) -> anyhow::Result<ResourceConfig> {
    let session = session(config).await?;
    let keys = ClusterKeys::new(&config.cluster.name);
    let stored = session.get(&keys.resource_config(TASKS_RESOURCE)).await;
    let _ = session.close().await;
    let Some(node) = stored.context("cannot read the cluster's configuration")? else {
        bail!(
            "cluster {:?} is not initialised on {}: run `rota init` with the same configuration \
             first",
            config.cluster.name,
            config.coordination.endpoints.join(",")
        );
    };
    let resource = <ResourceConfig as rota_model::Record>::decode(&node.value)
        .context("cannot read the cluster's configuration")?;
    if resource.partitions != config.cluster.partitions
        || resource.replicas != config.cluster.replicas
    {
        bail!(
            "cluster {:?} has {} partitions x {} replicas, but this configuration says {} x {}: \
             set cluster.partitions and cluster.replicas to the cluster's (they cannot change \
             after `rota init`)",
            config.cluster.name,
            resource.partitions,
            resource.replicas,
            config.cluster.partitions,
            config.cluster.replicas
        );
    }
    Ok(resource)
}

/// Stores the configuration's `[[schedules]]` (idempotent: what is stored already stays as is).
async fn apply_schedules(
    config: &Config,
    tasks: &dyn rota_scheduler::TaskStore,
    partitions: u32,
) -> anyhow::Result<()> {
    crate::crontab::apply(
        tasks,
        &config.schedules,
        partitions,
        rota_scheduler::worker::wall_clock_ms(),
    )
    .await
}

/// The tasks resource as the configuration describes it: `cluster.partitions` partitions of
/// `cluster.replicas` replicas, one MASTER each.
pub fn tasks_resource(config: &Config) -> ResourceConfig {
    let cluster = &config.cluster;
    let model = "MasterSlave";
    ResourceConfig::new(TASKS_RESOURCE, cluster.partitions, cluster.replicas, model)
}

/// `rota init`: creates the cluster's `tasks` resource and migrates the task store. Idempotent;
/// refuses to change the partition count of an existing cluster.
pub async fn init(config: &Config) -> anyhow::Result<()> {
    let tasks = task_store(config, &Arc::default()).await?;
    crate::crontab::apply(
        &*tasks,
        &config.schedules,
        config.cluster.partitions,
        rota_scheduler::worker::wall_clock_ms(),
    )
    .await?;
    let admin = Admin::new(session(config).await?, &config.cluster.name);
    admin
        .add_resource(&tasks_resource(config))
        .await
        .context("cannot create the tasks resource")?;
    println!(
        "rota init: cluster {} ready ({} partitions x {} replicas); task store {} migrated",
        config.cluster.name,
        config.cluster.partitions,
        config.cluster.replicas,
        redact_url(&config.storage.url)
    );
    Ok(())
}

fn process_name(kind: &str, config: &Config) -> String {
    let host = config
        .worker_id()
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{kind}-{host}-{}", std::process::id())
}

/// `rota controller`: campaigns, leads while elected, hands over at shutdown.
pub async fn controller(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    initialised(config).await?;
    let metrics = Arc::new(Metrics::default());
    let (controller, status) = Controller::new(
        coordination(config)?,
        ControllerConfig {
            cluster: config.cluster.name.clone(),
            name: process_name("controller", config),
            session_timeout: timeout(config),
            interval: Duration::from_secs(1),
            settle: Duration::from_millis(5),
        },
    );
    let ready = move || !matches!(*status.borrow(), ControllerStatus::Stopped);
    serve_metrics(config, metrics.clone(), ready, shutdown.clone()).await?;
    controller
        .with_metrics(metrics.cluster.clone())
        .run(shutdown)
        .await?;
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` (200 while `ready`, else 503) on
/// `metrics.listen`, if set, until shutdown.
async fn serve_metrics(
    config: &Config,
    metrics: Arc<Metrics>,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let Some(listen) = config.metrics.listen else {
        return Ok(());
    };
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { api::metrics_response(&metrics) }
            }),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"})))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({"error": {"code": "unavailable",
                                "message": "not serving: no live session with the coordination store"}})),
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (metrics.listen)"))?;
    info!(%listen, "metrics and health served");
    tokio::spawn(async move {
        let listening = api::Listening::plain(Duration::from_secs(10));
        if let Err(e) = api::serve(listener, router, listening, shutdown).await {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// `rota api`: serves the REST API until shutdown.
pub async fn api(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.api.check_exposure(config.api.listen)?;
    let resource = initialised(config).await?;
    let metrics = Arc::new(Metrics::default());
    let tasks = task_store(config, &metrics).await?;
    apply_schedules(config, &*tasks, resource.partitions).await?;
    // The API only reads the cluster: it opens a new session when one ends, rather than
    // answering 503 until restarted.
    let session = Reconnecting::connect(coordination(config)?, timeout(config))
        .await
        .with_context(|| {
            format!(
                "cannot reach the coordination store at {}",
                config.coordination.endpoints.join(",")
            )
        })?;
    let session: Arc<dyn Session> = Arc::new(session);
    let view = ClusterView {
        session,
        keys: ClusterKeys::new(&config.cluster.name),
    };
    let state = AppState {
        tasks,
        partitions: resource.partitions,
        handlers: api::HandlerCatalog::live(view.clone(), shutdown.clone()).await,
        cluster: Some(view),
        metrics,
        storage: format!(
            "{:?} {}",
            config.storage.backend,
            redact_url(&config.storage.url)
        ),
        now: Arc::new(wall_clock_ms),
    };
    let listening = api::Listening::from_config(&config.api)?;
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))?;
    info!(
        url = %api::server::url(&listening, config.api.listen),
        tokens = config.api.tokens.len(),
        "API serving"
    );
    api::serve(
        listener,
        api::router(state, &config.api),
        listening,
        shutdown,
    )
    .await?;
    Ok(())
}

/// `rota worker`: a participant of the `tasks` resource running its partitions' tasks, with a
/// stable id (configured, or the host name) so a restart keeps its partitions.
pub async fn worker(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let id = config.worker_id()?;
    let resource = initialised(config).await?;
    let metrics = Arc::new(Metrics::default());
    let tasks = task_store(config, &metrics).await?;
    apply_schedules(config, &*tasks, resource.partitions).await?;
    let handlers = config.handlers()?;
    let handler_names = handlers.names();
    let worker = Worker::with_metrics(config.worker_config(&id), tasks, handlers, metrics.clone());
    let (participant, handle) = Participant::new(
        coordination(config)?,
        ParticipantConfig {
            cluster: config.cluster.name.clone(),
            instance: InstanceConfig::new(id.as_str()),
            session_timeout: timeout(config),
            max_parallel: 16,
            capabilities: handler_names,
        },
        metrics
            .cluster
            .count_transitions(worker.transition_handler()),
    );
    let status = handle.status();
    let ready = move || matches!(*status.borrow(), ParticipantStatus::Live(_));
    serve_metrics(config, metrics, ready, shutdown.clone()).await?;
    info!(worker = %id, "worker starting");
    let runner = {
        let (w, s) = (worker.clone(), shutdown.clone());
        tokio::spawn(async move { w.run(s).await })
    };
    // The participant steps down (letting tasks in flight finish) and closes its session on
    // shutdown, so its partitions move at once instead of after the session timeout.
    participant.run(shutdown).await?;
    runner.await?;
    Ok(())
}
