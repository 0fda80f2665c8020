//! The cluster a benchmark measures: `rota dev` as a process of its own, a throwaway production
//! cluster (ZooKeeper or etcd + PostgreSQL started from the machine's installed binaries, one
//! OS process per role, each with the default configuration), or a running cluster at a URL.
//! Every process is the `rota` binary, with the default configuration.

use anyhow::{Context, bail};
use rota_client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default `coordination.session_timeout_ms` of a started cluster's processes.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Which cluster to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `rota dev`: in-memory coordination, SQLite, in one process.
    Dev,
    /// One process per role on ZooKeeper (or etcd, `--coordination etcd`) and PostgreSQL.
    Production,
}

/// The coordination store of a production target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CoordinationKind {
    /// ZooKeeper.
    Zookeeper,
    /// etcd (needs a rota built with `--features etcd`).
    Etcd,
}

/// A cluster under measurement.
pub struct Cluster {
    /// A client of its API.
    pub client: Client,
    /// What it is, for the report.
    pub description: String,
    /// The session timeout its processes use.
    pub session_timeout: Duration,
    kind: Kind,
}

enum Kind {
    Dev { process: Proc, dir: PathBuf },
    Production(Production),
    Remote,
}

/// The processes and servers of a throwaway production cluster.
struct Production {
    /// The task store's server and database (its URL), when its statements are counted.
    database: Option<(Arc<rota_test_harness::Postgres>, String)>,
    workers: Vec<(String, Proc)>,
    api: Proc,
    _controller: Proc,
    _servers: Vec<Box<dyn std::any::Any + Send>>,
    logs: PathBuf,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `rota` binary to start: `given`, or the one next to this program.
pub fn rota_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("rota"),
    };
    if !path.is_file() {
        bail!(
            "no rota binary at {}: build it next to rota-bench (cargo build --release -p rota \
             -p rota-bench) or name it with --rota",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    rota_test_harness::free_port()
}

/// Whether a production cluster's process logs outlive it (`--keep-logs`).
pub static KEEP_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// The processes' log filter: `RUST_LOG` of the benchmark's environment, else warnings only
/// (a busy worker's debug log would cost time the figures should not include).
fn log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// Starts `rota <role>` with `vars`, its output in `logs/<role>[-<id>].log`.
fn spawn(
    rota: &Path,
    logs: &Path,
    args: &[&str],
    vars: &[(&str, String)],
    id: Option<&str>,
) -> anyhow::Result<Child> {
    let log = logs.join(format!(
        "{}{}.log",
        args[0],
        id.map(|i| format!("-{i}")).unwrap_or_default()
    ));
    let file = std::fs::File::create(&log)?;
    let mut c = Command::new(rota);
    c.args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    if let Some(id) = id {
        c.env("ROTA_WORKER__ID", id);
    }
    c.spawn()
        .with_context(|| format!("cannot start rota {}", args[0]))
}

impl Cluster {
    /// `rota dev` with `workers` workers and the default configuration, as a process.
    pub async fn dev(rota: &Path, workers: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("rota-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let process = Proc(spawn(
            rota,
            &dir,
            &[
                "dev",
                "--workers",
                &workers.to_string(),
                "--data-dir",
                &dir.join("data").display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
            &[("RUST_LOG", log_level())],
            None,
        )?);
        let this = Self {
            client: Client::new(&format!("127.0.0.1:{port}"))?,
            description: format!(
                "rota dev: memory coordination + SQLite, {workers} workers, one process"
            ),
            session_timeout: SESSION_TIMEOUT,
            kind: Kind::Dev { process, dir },
        };
        this.wait_until_led().await?;
        Ok(this)
    }

    /// A running cluster whose API is at `url`.
    pub async fn remote(url: &str) -> anyhow::Result<Self> {
        let client = Client::builder(url)
            .token(std::env::var("ROTA_TOKEN").ok())
            .build()
            .with_context(|| format!("--url {url:?}"))?;
        let this = Self {
            description: format!("the cluster at {}", client.base()),
            client,
            session_timeout: SESSION_TIMEOUT,
            kind: Kind::Remote,
        };
        this.wait_until_led().await?;
        Ok(this)
    }

    /// A throwaway production cluster: the coordination store and a PostgreSQL with its
    /// default (durable) settings, then `rota init`, a controller, the API and `workers`
    /// workers as separate processes, all with the default configuration. With `statements`,
    /// PostgreSQL also counts what each statement costs (`pg_stat_statements`).
    pub async fn production(
        rota: &Path,
        coordination: CoordinationKind,
        workers: usize,
        statements: bool,
    ) -> anyhow::Result<Self> {
        let mut servers: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        eprintln!("starting PostgreSQL and {coordination:?} from the installed binaries ...");
        let pg = Arc::new(
            tokio::task::spawn_blocking(move || match statements {
                true => rota_test_harness::durable_postgres_with_statements(),
                false => rota_test_harness::durable_postgres(),
            })
            .await?,
        );
        let url = pg.fresh_database();
        let database = statements.then(|| (pg.clone(), url.clone()));
        servers.push(Box::new(pg));
        let (backend, endpoint) = match coordination {
            CoordinationKind::Zookeeper => (
                "zookeeper",
                tokio::task::spawn_blocking(|| rota_test_harness::zookeeper().endpoint()).await?,
            ),
            CoordinationKind::Etcd => (
                "etcd",
                tokio::task::spawn_blocking(|| rota_test_harness::etcd().endpoint()).await?,
            ),
        };
        let api = format!("127.0.0.1:{}", free_port());
        let logs = std::env::temp_dir().join(format!("rota-bench-logs-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;
        let vars = [
            ("ROTA_COORDINATION__BACKEND", backend.to_owned()),
            ("ROTA_COORDINATION__ENDPOINTS", format!("[\"{endpoint}\"]")),
            ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
            ("ROTA_STORAGE__URL", url),
            ("ROTA_API__LISTEN", api.clone()),
            ("RUST_LOG", log_level()),
        ];
        let mut init = spawn(rota, &logs, &["init"], &vars, None)?;
        let status = tokio::task::spawn_blocking(move || init.wait()).await??;
        if !status.success() {
            let log = std::fs::read_to_string(logs.join("init.log")).unwrap_or_default();
            if log.contains("built without etcd") || log.contains("--features etcd") {
                bail!("this rota was built without etcd support: rebuild it with --features etcd");
            }
            bail!("rota init failed:\n{log}");
        }
        let controller = Proc(spawn(rota, &logs, &["controller"], &vars, None)?);
        let api_proc = Proc(spawn(rota, &logs, &["api"], &vars, None)?);
        let mut worker_procs = Vec::new();
        for n in 1..=workers {
            let id = format!("bench-worker-{n}");
            worker_procs.push((
                id.clone(),
                Proc(spawn(rota, &logs, &["worker"], &vars, Some(&id))?),
            ));
        }
        let this = Self {
            client: Client::new(&api)?,
            description: format!(
                "production: {backend} + PostgreSQL (default settings{}), 1 controller, 1 API, \
                 {workers} workers, one process each",
                if statements {
                    ", pg_stat_statements preloaded"
                } else {
                    ""
                }
            ),
            session_timeout: SESSION_TIMEOUT,
            kind: Kind::Production(Production {
                database,
                workers: worker_procs,
                api: api_proc,
                _controller: controller,
                _servers: servers,
                logs,
            }),
        };
        this.wait_until_led().await?;
        Ok(this)
    }

    /// Waits until the API is ready and every partition has a leader.
    async fn wait_until_led(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.client.readyz().await.is_ok() {
                if let Ok(status) = self.client.cluster().await {
                    let led = !status.partitions.is_empty()
                        && status
                            .partitions
                            .iter()
                            .all(|p| p.holders.iter().any(|h| h.state == "MASTER"));
                    if led {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster did not become ready within 60 s{}",
                    self.log_hint()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_hint(&self) -> String {
        match &self.kind {
            Kind::Production(p) => format!(" (process logs in {})", p.logs.display()),
            Kind::Dev { dir, .. } => format!(" (its log in {})", dir.display()),
            Kind::Remote => String::new(),
        }
    }

    /// The rows `sql` returns in the task store's database, one line each, columns separated
    /// by `|` (a production target started with its statements counted only).
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        let Kind::Production(Production {
            database: Some((pg, url)),
            ..
        }) = &self.kind
        else {
            bail!("only a production target started to count statements has a database to ask");
        };
        let (pg, url, sql) = (pg.clone(), url.clone(), sql.to_owned());
        Ok(tokio::task::spawn_blocking(move || pg.query(&url, &sql)).await?)
    }

    /// The ids of the worker processes this target can kill (none for dev or a remote cluster).
    pub fn worker_ids(&self) -> Vec<String> {
        match &self.kind {
            Kind::Production(p) => p.workers.iter().map(|(id, _)| id.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// SIGKILLs the worker `id` (production targets only).
    pub fn kill_worker(&mut self, id: &str) -> anyhow::Result<()> {
        let Kind::Production(p) = &mut self.kind else {
            bail!("only a production target has worker processes to kill");
        };
        let i = p
            .workers
            .iter()
            .position(|(w, _)| w == id)
            .with_context(|| format!("no worker {id}"))?;
        let (_, mut proc) = p.workers.remove(i);
        proc.0.kill()?;
        let _ = proc.0.wait();
        Ok(())
    }

    /// Peak resident memory (bytes) of each measured process: the workers and the API of a
    /// production target, or the `rota dev` process.
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        match &self.kind {
            Kind::Production(p) => {
                let mut out: Vec<(String, u64)> = p
                    .workers
                    .iter()
                    .filter_map(|(id, proc)| peak_rss_of(proc.0.id()).map(|b| (id.clone(), b)))
                    .collect();
                if let Some(b) = peak_rss_of(p.api.0.id()) {
                    out.push(("api".into(), b));
                }
                out
            }
            Kind::Dev { process, .. } => peak_rss_of(process.0.id())
                .map(|b| vec![("rota dev (the whole cluster)".into(), b)])
                .unwrap_or_default(),
            Kind::Remote => Vec::new(),
        }
    }

    /// Stops the cluster, removing its data.
    pub fn stop(self) {
        match self.kind {
            Kind::Dev { process, dir } => {
                drop(process);
                let _ = std::fs::remove_dir_all(dir);
            }
            Kind::Production(p) => {
                let logs = p.logs.clone();
                drop(p);
                if KEEP_LOGS.get().copied().unwrap_or(false) {
                    eprintln!("the processes' logs are kept in {}", logs.display());
                } else {
                    let _ = std::fs::remove_dir_all(logs);
                }
            }
            Kind::Remote => {}
        }
    }
}

/// `VmHWM` of a process, in bytes.
fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
