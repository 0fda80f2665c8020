//! The cluster a benchmark measures: `rota dev` in this process, a throwaway production cluster
//! (ZooKeeper or etcd + PostgreSQL started from the machine's installed binaries, one OS process
//! per role, each with the default configuration), or a running cluster at a URL.

use crate::config::Config;
use crate::dev::{self, DevCluster, DevOptions};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::Client;

/// Which cluster to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `rota dev` in this process: in-memory coordination, SQLite.
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
    /// The API's address.
    pub api: SocketAddr,
    /// What it is, for the report.
    pub description: String,
    /// The session timeout its processes use.
    pub session_timeout: Duration,
    kind: Kind,
}

enum Kind {
    Dev(Box<DevCluster>, PathBuf),
    Production(Production),
    Remote,
}

/// The processes and servers of a throwaway production cluster.
struct Production {
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

impl Cluster {
    /// `rota dev` with `workers` workers and the default configuration, in this process.
    pub async fn dev(workers: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("rota-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config::default();
        let session_timeout = config.session_timeout();
        let cluster = dev::start(DevOptions {
            workers,
            data_dir: dir.clone(),
            listen: "127.0.0.1:0".parse().expect("an address"),
            handlers: crate::handlers::builtin(Duration::from_millis(
                config.worker.task_timeout_ms,
            )),
            config,
        })
        .await?;
        let api = cluster.addr;
        let this = Self {
            api,
            description: format!("rota dev: memory coordination + SQLite, {workers} workers"),
            session_timeout,
            kind: Kind::Dev(Box::new(cluster), dir),
        };
        this.wait_until_led().await?;
        Ok(this)
    }

    /// A running cluster whose API is at `addr`.
    pub async fn remote(addr: SocketAddr) -> anyhow::Result<Self> {
        let this = Self {
            api: addr,
            description: format!("the cluster at http://{addr}"),
            session_timeout: Config::default().session_timeout(),
            kind: Kind::Remote,
        };
        this.wait_until_led().await?;
        Ok(this)
    }

    /// A throwaway production cluster: the coordination store and a PostgreSQL with its
    /// default (durable) settings, then `rota init`, a controller, the API and `workers`
    /// workers as separate processes of this binary, all with the default configuration.
    pub async fn production(
        coordination: CoordinationKind,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the rota binary")?;
        let mut servers: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        eprintln!("starting PostgreSQL and {coordination:?} from the installed binaries ...");
        let pg = tokio::task::spawn_blocking(rota_test_harness::durable_postgres).await?;
        let url = pg.fresh_database();
        servers.push(Box::new(pg));
        let (backend, endpoint) = match coordination {
            CoordinationKind::Zookeeper => (
                "zookeeper",
                tokio::task::spawn_blocking(|| rota_test_harness::zookeeper().endpoint()).await?,
            ),
            CoordinationKind::Etcd => {
                if !cfg!(feature = "etcd") {
                    bail!(
                        "this rota was built without etcd support: rebuild with \
                         `cargo build --release -p rota --features etcd`"
                    );
                }
                (
                    "etcd",
                    tokio::task::spawn_blocking(|| rota_test_harness::etcd().endpoint()).await?,
                )
            }
        };
        let api: SocketAddr = format!("127.0.0.1:{}", rota_test_harness::free_port()).parse()?;
        let logs = std::env::temp_dir().join(format!("rota-bench-logs-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;
        let vars = [
            ("ROTA_COORDINATION__BACKEND", backend.to_owned()),
            ("ROTA_COORDINATION__ENDPOINTS", format!("[\"{endpoint}\"]")),
            ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
            ("ROTA_STORAGE__URL", url),
            ("ROTA_API__LISTEN", api.to_string()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let spawn = |role: &str, id: Option<&str>| -> anyhow::Result<Child> {
            let log = logs.join(format!(
                "{role}{}.log",
                id.map(|i| format!("-{i}")).unwrap_or_default()
            ));
            let file = std::fs::File::create(&log)?;
            let mut c = Command::new(&exe);
            c.arg(role)
                .envs(vars.iter().cloned())
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file);
            if let Some(id) = id {
                c.env("ROTA_WORKER__ID", id);
            }
            c.spawn()
                .with_context(|| format!("cannot start rota {role}"))
        };
        let mut init = spawn("init", None)?;
        let status = tokio::task::spawn_blocking(move || init.wait()).await??;
        if !status.success() {
            let log = std::fs::read_to_string(logs.join("init.log")).unwrap_or_default();
            bail!("rota init failed:\n{log}");
        }
        let controller = Proc(spawn("controller", None)?);
        let api_proc = Proc(spawn("api", None)?);
        let mut worker_procs = Vec::new();
        for n in 1..=workers {
            let id = format!("bench-worker-{n}");
            worker_procs.push((id.clone(), Proc(spawn("worker", Some(&id))?)));
        }
        let this = Self {
            api,
            description: format!(
                "production: {backend} + PostgreSQL (default settings), 1 controller, 1 API, \
                 {workers} workers, one process each"
            ),
            session_timeout: Config::default().session_timeout(),
            kind: Kind::Production(Production {
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
        let mut client = Client::new(self.api);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = matches!(client.request("GET", "/readyz", None).await, Ok((200, _)));
            if ready {
                if let Ok(status) = client.get("/cluster").await {
                    let led = status["partitions"].as_array().is_some_and(|ps| {
                        !ps.is_empty()
                            && ps.iter().all(|p| {
                                p["holders"]
                                    .as_array()
                                    .is_some_and(|hs| hs.iter().any(|h| h["state"] == "MASTER"))
                            })
                    });
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
            _ => String::new(),
        }
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
    /// production target, or this whole process for `dev`.
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
            Kind::Dev(..) => peak_rss_of(std::process::id())
                .map(|b| vec![("rota dev (whole process, with the benchmark)".into(), b)])
                .unwrap_or_default(),
            Kind::Remote => Vec::new(),
        }
    }

    /// Stops the cluster (gracefully for `dev`), removing its data.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Dev(cluster, dir) => {
                cluster.stop().await?;
                let _ = std::fs::remove_dir_all(dir);
            }
            Kind::Production(p) => {
                let logs = p.logs.clone();
                drop(p);
                let _ = std::fs::remove_dir_all(logs);
            }
            Kind::Remote => {}
        }
        Ok(())
    }
}

/// `VmHWM` of a process, in bytes.
fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
