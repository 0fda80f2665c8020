//! `rota dev`: the whole cluster in one process. In-memory coordination, a SQLite task store in
//! the data directory, one controller, N workers and the API. Stopping it stops claiming, lets
//! tasks in flight finish (or releases them), takes partitions offline and exits; starting it
//! again resumes the pending tasks from the SQLite file.

use crate::api::{self, AppState, ClusterView};
use crate::config::{Config, redact_url};
use anyhow::Context;
use rota_cluster::admin::Admin;
use rota_cluster::controller::{Controller, ControllerConfig};
use rota_cluster::coordination::Coordination;
use rota_cluster::keys::ClusterKeys;
use rota_cluster::participant::{Participant, ParticipantConfig, ParticipantHandle};
use rota_memory::MemoryCoordination;
use rota_model::InstanceConfig;
use rota_scheduler::metrics::Metrics;
use rota_scheduler::worker::{Handlers, Worker, wall_clock_ms};
use rota_scheduler::{Deadlined, TaskStore};
use rota_sqlite::SqliteTaskStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// What `rota dev` runs.
pub struct DevOptions {
    /// Workers to start.
    pub workers: usize,
    /// Where the SQLite file lives.
    pub data_dir: PathBuf,
    /// Where the API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Cluster, worker and API settings.
    pub config: Config,
    /// Task handlers of the workers.
    pub handlers: Handlers,
}

/// A running dev cluster.
pub struct DevCluster {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The API's URL (`https://` when it serves TLS).
    pub url: String,
    /// The task store.
    pub tasks: Arc<dyn TaskStore>,
    /// The coordination store (for fault injection in tests).
    pub coordination: MemoryCoordination,
    /// Workers' participants, by id.
    pub participants: Vec<(String, ParticipantHandle)>,
    stop: watch::Sender<bool>,
    joins: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a dev cluster.
pub async fn start(options: DevOptions) -> anyhow::Result<DevCluster> {
    let config = &options.config;
    config.api.check_exposure(options.listen)?;
    let listening = api::Listening::from_config(&config.api)?;
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating data directory {}", options.data_dir.display()))?;
    let db = options.data_dir.join("tasks.db");
    // One process: one set of metrics for the API, the controller and every worker.
    let metrics = Arc::new(Metrics::default());
    let tasks: Arc<dyn TaskStore> = Arc::new(
        Deadlined::with_deadline(
            Arc::new(
                SqliteTaskStore::open(&db, &config.cluster.name)
                    .with_context(|| format!("opening {}", db.display()))?,
            ),
            config.store_timeout(),
        )
        .counting_errors(metrics.clone()),
    );
    // The coordination store starts empty, and its epochs start again: forget the previous
    // run's owners and take back its claims.
    let requeued = tasks.reset_after_restart(wall_clock_ms()).await?;
    crate::crontab::apply(
        &*tasks,
        &config.schedules,
        config.cluster.partitions,
        wall_clock_ms(),
    )
    .await?;
    if requeued > 0 {
        info!(
            requeued,
            "requeued tasks that were running when the previous run stopped"
        );
    }

    let coordination = MemoryCoordination::new();
    let store: Arc<dyn Coordination> = Arc::new(coordination.clone());
    let timeout = config.session_timeout();
    let cluster = config.cluster.name.clone();
    let admin_session = store.connect(timeout).await?;
    let admin = Admin::new(admin_session.clone(), &cluster);
    admin
        .add_resource(&crate::roles::tasks_resource(config))
        .await?;

    let (stop, stopped) = watch::channel(false);
    let mut joins: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    let (controller, _) = Controller::new(
        store.clone(),
        ControllerConfig {
            cluster: cluster.clone(),
            name: "dev-controller".into(),
            session_timeout: timeout,
            interval: Duration::from_secs(1),
            settle: Duration::from_millis(5),
        },
    );
    let s = stopped.clone();
    let controller = controller.with_metrics(metrics.cluster.clone());
    joins.push(tokio::spawn(async move { Ok(controller.run(s).await?) }));

    let mut participants = Vec::new();
    for n in 1..=options.workers {
        let id = format!("worker-{n}");
        let worker = Worker::with_metrics(
            config.worker_config(&id),
            tasks.clone(),
            options.handlers.clone(),
            metrics.clone(),
        );
        let (participant, handle) = Participant::new(
            store.clone(),
            ParticipantConfig {
                cluster: cluster.clone(),
                instance: InstanceConfig::new(id.as_str()),
                session_timeout: timeout,
                max_parallel: 16,
                capabilities: options.handlers.names(),
            },
            metrics
                .cluster
                .count_transitions(worker.transition_handler()),
        );
        participants.push((id, handle));
        let s = stopped.clone();
        joins.push(tokio::spawn(async move { Ok(participant.run(s).await?) }));
        let (w, s) = (worker.clone(), stopped.clone());
        joins.push(tokio::spawn(async move {
            w.run(s).await;
            Ok(())
        }));
    }

    // Every in-process worker runs the same handlers.
    let state = AppState {
        tasks: tasks.clone(),
        partitions: config.cluster.partitions,
        handlers: api::HandlerCatalog::fixed(options.handlers.names()),
        cluster: Some(ClusterView {
            session: admin_session,
            keys: ClusterKeys::new(&cluster),
        }),
        metrics,
        storage: format!("sqlite {}", redact_url(&db.display().to_string())),
        now: Arc::new(wall_clock_ms),
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let url = api::server::url(&listening, addr);
    let router = api::router(state, &config.api);
    let s = stopped.clone();
    joins.push(tokio::spawn(async move {
        api::serve(listener, router, listening, s).await?;
        Ok(())
    }));
    Ok(DevCluster {
        addr,
        url,
        tasks,
        coordination,
        participants,
        stop,
        joins,
    })
}

impl DevCluster {
    /// Stops claiming, lets tasks in flight finish, takes partitions offline, stops.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        for join in self.joins {
            join.await.context("a dev-cluster task panicked")??;
        }
        Ok(())
    }
}
