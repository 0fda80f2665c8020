//! What the multi-process tests share: processes of the `rota` binary under test with an
//! environment of settings, each logging to its own file, and an HTTP client.

#![allow(dead_code)] // Each test binary uses its own part.

use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The settings and API address of one cluster under test.
pub struct Env {
    /// `ROTA_*` settings of every process.
    pub vars: Vec<(String, String)>,
    /// The API's address.
    pub api: std::net::SocketAddr,
    /// Names this run's log files.
    pub tag: &'static str,
}

impl Env {
    /// Cluster `name` (made unique to this test process) on the harness's ZooKeeper and the
    /// PostgreSQL database `db`, its API on a free port.
    pub fn on_zookeeper(tag: &'static str, name: &str, db: String) -> Env {
        let api: std::net::SocketAddr = format!("127.0.0.1:{}", rota_test_harness::free_port())
            .parse()
            .expect("an address");
        let vars = [
            ("ROTA_COORDINATION__BACKEND", "zookeeper".to_owned()),
            (
                "ROTA_COORDINATION__ENDPOINTS",
                rota_test_harness::zookeeper().endpoint(),
            ),
            ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
            ("ROTA_STORAGE__URL", db),
            (
                "ROTA_CLUSTER__NAME",
                format!("{name}{}", std::process::id()),
            ),
            ("ROTA_API__LISTEN", api.to_string()),
        ];
        Env {
            vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            api,
            tag,
        }
    }

    /// A setting of this cluster's processes.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} is not set"))
    }

    /// A connection pool to the cluster's PostgreSQL database, working in the cluster's
    /// schema (`rota_<cluster>`) as rota's own connections do.
    pub async fn tasks_pool(&self) -> sqlx::PgPool {
        use std::str::FromStr;
        let cluster = self.var("ROTA_CLUSTER__NAME").to_owned();
        let options = sqlx::postgres::PgConnectOptions::from_str(self.var("ROTA_STORAGE__URL"))
            .expect("a PostgreSQL URL")
            .options([("search_path", format!("rota_{cluster}"))]);
        sqlx::PgPool::connect_with(options)
            .await
            .expect("connect to the cluster's database")
    }

    /// `rota ARGS` with the settings (and `worker` as the worker id), logging to a file named
    /// after its role.
    pub fn command(&self, args: &[&str], worker: Option<&str>) -> Command {
        let name = format!("{}-{}", args[0], worker.unwrap_or("x"));
        self.configure(
            Command::new(env!("CARGO_BIN_EXE_rota")),
            args,
            worker,
            &name,
        )
    }

    /// [`Env::command`] on `host`, a host of a test network, logging to a file named after the
    /// host.
    pub fn command_on(
        &self,
        host: &rota_test_harness::netns::Host,
        args: &[&str],
        worker: Option<&str>,
    ) -> Command {
        let command = host.command(env!("CARGO_BIN_EXE_rota"));
        self.configure(command, args, worker, &host.name)
    }

    fn configure(
        &self,
        mut c: Command,
        args: &[&str],
        worker: Option<&str>,
        name: &str,
    ) -> Command {
        // Warnings and errors, unless the settings say otherwise.
        c.args(args)
            .env("RUST_LOG", "warn")
            .envs(self.vars.iter().cloned());
        if let Some(w) = worker {
            c.env("ROTA_WORKER__ID", w);
        }
        // Each process logs to its own file in the temporary directory.
        let log = std::env::temp_dir().join(format!(
            "rota-mp-{}-{}-{name}.log",
            std::process::id(),
            self.tag
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        c.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        c
    }

    /// Runs `rota ARGS` to its end, which must be a success.
    pub fn run_ok(&self, args: &[&str]) {
        let out = self
            .command(args, None)
            .stderr(Stdio::piped())
            .output()
            .expect("run rota");
        assert!(
            out.status.success(),
            "rota {args:?} on {} failed: {}",
            self.tag,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `rota ARGS` (as worker `w1`, with `partitions`), which must fail; its stderr.
    pub fn run_fails(&self, args: &[&str], partitions: &str) -> String {
        let out = self
            .command(args, Some("w1"))
            .env("ROTA_CLUSTER__PARTITIONS", partitions)
            .stderr(Stdio::piped())
            .output()
            .expect("run rota");
        assert!(!out.status.success(), "rota {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts `rota ARGS`.
    pub fn spawn(&self, args: &[&str], worker: Option<&str>) -> Proc {
        Proc(self.command(args, worker).spawn().expect("start rota"))
    }
}

/// One HTTP/1.1 request: the status and JSON body, or `(0, Null)` if nothing listens yet.
pub async fn http(at: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, text) = http_text(at, method, path, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One HTTP request (reqwest, as the `http` handler uses): the status and body as text, or
/// `(0, "")` if nothing listens yet.
pub async fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()), // not listening yet
    }
}

/// The value of the sample `name` (with its labels, as exposed) in a `/metrics` text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls until `ready`, failing at the deadline.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ready().await {
        assert!(start.elapsed() < deadline, "no {what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the API at `api` says it is ready.
pub async fn wait_ready(api: std::net::SocketAddr) {
    wait_for("a ready API", Duration::from_secs(60), || async {
        http(api, "GET", "/readyz", None).await.0 == 200
    })
    .await;
}

/// The instances holding `partition` (one of `/cluster`'s `partitions`) as MASTER.
pub fn masters(partition: &Value) -> Vec<&str> {
    let holders = partition["holders"].as_array().expect("holders");
    let leading = holders.iter().filter(|h| h["state"] == "MASTER");
    leading.filter_map(|h| h["instance"].as_str()).collect()
}

/// The partitions `worker` holds as MASTER in `cluster` (a `/cluster` answer).
pub fn led_by(cluster: &Value, worker: &str) -> Vec<u64> {
    let partitions = cluster["partitions"].as_array().expect("partitions");
    let led = partitions.iter().filter(|p| masters(p).contains(&worker));
    led.filter_map(|p| p["partition"].as_u64()).collect()
}

/// Waits until every partition has a MASTER.
pub async fn wait_all_led(api: SocketAddr) {
    wait_for("every partition led", Duration::from_secs(60), || async {
        let (_, c) = http(api, "GET", "/cluster", None).await;
        let partitions = c["partitions"].as_array();
        partitions.is_some_and(|ps| ps.iter().all(|p| !masters(p).is_empty()))
    })
    .await;
}

/// Creates `tasks` with one `POST /tasks/batch` (asserting `201`); the created tasks.
pub async fn create_batch(api: std::net::SocketAddr, tasks: Vec<Value>) -> Vec<Value> {
    let (status, body) = http(
        api,
        "POST",
        "/tasks/batch",
        Some(&serde_json::json!({ "tasks": tasks })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["tasks"].as_array().cloned().unwrap_or_default()
}
