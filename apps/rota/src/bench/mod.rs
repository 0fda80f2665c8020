//! `rota bench`: how fast a cluster drains a backlog and starts tasks on time, measured the way a
//! user would: tasks go in through the public API (`POST /tasks/batch`, `POST /tasks`), run on
//! the cluster's workers with the default configuration and the built-in `noop` handler, and
//! every figure is computed from the tasks as the API reports them afterwards (their due,
//! start and finish times), so nothing is counted that the store did not record.
//!
//! Scenarios: `insert` (N tasks through `/tasks/batch` from several clients), `burn-down` (N tasks
//! due at one moment: tasks/s from that moment to the last completion, at each N), `latency` (a
//! steady rate of single creates due when sent: start - due percentiles), `failover` (SIGKILL of
//! a worker process under load: time until its partitions' due tasks start again) and the peak
//! memory of the processes.

mod client;
mod cluster;
mod plot;
mod report;

use anyhow::{Context, bail};
use client::Client;
use cluster::{Cluster, CoordinationKind, Target};
use report::{Figure, Report};
use rota_scheduler::worker::wall_clock_ms;
use serde_json::json;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A scenario of `rota bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Tasks through `POST /tasks/batch`, 1,000 a request, from several clients.
    Insert,
    /// Tasks all due at one moment: tasks/s from that moment to the last completion.
    BurnDown,
    /// A steady rate of `POST /tasks` due when sent: start - due.
    Latency,
    /// SIGKILL of a worker process under load (production only).
    Failover,
}

/// `rota bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The cluster to start and measure.
    #[arg(long, value_enum, default_value = "dev")]
    pub target: Target,
    /// Coordination store of a production target.
    #[arg(long, value_enum, default_value = "zookeeper")]
    pub coordination: CoordinationKind,
    /// Measure a running cluster at this API address (host:port) instead of starting one. It
    /// should be otherwise idle: the backlog it reports is the whole cluster's. An API with
    /// tokens needs one with the read and write scopes in `ROTA_TOKEN`.
    #[arg(long)]
    pub url: Option<String>,
    /// Scenarios to run, comma-separated (default: all the target supports).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Backlog sizes of the insert and burn-down scenarios, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    pub tasks: Vec<usize>,
    /// Workers of a started cluster (default: 3 for dev, 2 for production).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Concurrent API clients of the insert phase.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Tasks per second of the latency and failover scenarios.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Seconds of steady load in the latency scenario.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the burn-down rates and the lag distribution as SVG files in this directory
    /// (`burn-down.svg`, `latency.svg`).
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.tasks.contains(&0) {
        bail!("--tasks: every backlog size must be at least 1");
    }
    if args.rate == 0 || args.seconds == 0 || args.clients == 0 {
        bail!("--rate, --seconds and --clients must be at least 1");
    }
    if args.workers == Some(0) {
        bail!("--workers must be at least 1");
    }
    let mut cluster = match &args.url {
        Some(url) => Cluster::remote(parse_addr(url)?).await?,
        None => match args.target {
            Target::Dev => Cluster::dev(args.workers.unwrap_or(3)).await?,
            Target::Production => {
                Cluster::production(args.coordination, args.workers.unwrap_or(2)).await?
            }
        },
    };
    let killable = !cluster.worker_ids().is_empty();
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        let mut all = vec![Scenario::Insert, Scenario::BurnDown, Scenario::Latency];
        if killable {
            all.push(Scenario::Failover);
        }
        all
    } else {
        args.scenarios.clone()
    };
    if scenarios.contains(&Scenario::Failover) && !killable {
        bail!("the failover scenario needs worker processes to kill: use --target production");
    }
    eprintln!("rota bench: {}", cluster.description);
    let mut report = Report::new(&cluster.description);
    let run_id = wall_clock_ms();
    let mut insert_rate = 50_000.0;
    let mut rates: Vec<(String, f64)> = Vec::new();
    let mut lags: Vec<i64> = Vec::new();
    if scenarios.contains(&Scenario::Insert) || scenarios.contains(&Scenario::BurnDown) {
        for &n in &args.tasks {
            let name = format!("bench-{run_id}-burn-down-{n}");
            let outcome = burn_down(&cluster, &name, n, args.clients, insert_rate).await?;
            insert_rate = outcome.insert_per_s;
            if scenarios.contains(&Scenario::Insert) {
                report.push(
                    Figure::new(format!("insert {}", thousands(n)))
                        .value("tasks/s", outcome.insert_per_s)
                        .note(format!("{} clients, batches of 1,000", args.clients)),
                );
            }
            if scenarios.contains(&Scenario::BurnDown) {
                report.push(outcome.figure(n));
                rates.push((thousands(n), outcome.per_s));
            }
        }
    }
    if scenarios.contains(&Scenario::Latency) {
        let name = format!("bench-{run_id}-latency");
        let (figure, sorted) = latency(&cluster, &name, args.rate, args.seconds).await?;
        report.push(figure);
        lags = sorted;
    }
    if scenarios.contains(&Scenario::Failover) {
        let name = format!("bench-{run_id}-failover");
        report.push(failover(&mut cluster, &name, args.rate.min(1_000)).await?);
    }
    for (process, bytes) in cluster.peak_rss() {
        report.push(Figure::new(format!("peak RSS {process}")).value("MB", bytes as f64 / 1e6));
    }
    report.print();
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let what = &cluster.description;
        if !rates.is_empty() {
            let svg = plot::burn_down(what, &rates);
            std::fs::write(dir.join("burn-down.svg"), svg)?;
        }
        if !lags.is_empty() {
            let title = format!(
                "Start - due of {} tasks sent at {} a second",
                thousands(lags.len()),
                thousands(args.rate as usize)
            );
            let svg = plot::lag_distribution(&title, what, &lags);
            std::fs::write(dir.join("latency.svg"), svg)?;
        }
        eprintln!("plots written to {}", dir.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    cluster.stop().await
}

fn parse_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    use std::net::ToSocketAddrs;
    rest.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("--url {url:?} is not host:port (http:// only)"))
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What one burn-down measured.
struct BurnDown {
    insert_per_s: f64,
    per_s: f64,
    seconds: f64,
    insert_overran: bool,
}

impl BurnDown {
    fn figure(&self, n: usize) -> Figure {
        let mut f = Figure::new(format!("burn-down {}", thousands(n)))
            .value("tasks/s", self.per_s)
            .value("s", self.seconds);
        if self.insert_overran {
            f = f.note("the insert ran past the due time: timed from the last insert");
        }
        f
    }
}

/// Inserts `n` tasks due at one moment (after the insert is expected to end), waits for all to
/// finish, and times the burn-down from the due moment (or the last insert, if later) to the
/// last completion.
async fn burn_down(
    cluster: &Cluster,
    name: &str,
    n: usize,
    clients: usize,
    expected_insert_per_s: f64,
) -> anyhow::Result<BurnDown> {
    let lead = Duration::from_secs_f64(n as f64 / expected_insert_per_s * 1.5 + 1.0);
    let due = wall_clock_ms() + lead.as_millis() as i64;
    let due_text = crate::api::time::format(due);
    let started = Instant::now();
    let batches = n.div_ceil(1_000);
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Progress::new(format!("insert {}", thousands(n)), n);
    let mut joins = Vec::new();
    for _ in 0..clients.min(batches) {
        let (next, progress, name, due_text) = (
            next.clone(),
            progress.clone(),
            name.to_owned(),
            due_text.clone(),
        );
        let addr = cluster.api;
        joins.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut first_id = i64::MAX;
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(first_id);
                }
                let size = (n - b * 1_000).min(1_000);
                let task = json!({"name": name, "scheduledTime": due_text, "handler": "noop"});
                let body = json!({"tasks": vec![task; size]}).to_string();
                let (status, answer) = client
                    .request("POST", "/tasks/batch", Some(body.as_bytes()))
                    .await?;
                if status != 201 {
                    bail!("POST /tasks/batch: HTTP {status}: {answer}");
                }
                if let Some(id) = answer["tasks"][0]["id"].as_i64() {
                    first_id = first_id.min(id);
                }
                progress.add(size);
            }
        }));
    }
    let mut first_id = i64::MAX;
    for join in joins {
        first_id = first_id.min(join.await??);
    }
    let inserted = started.elapsed();
    progress.finish();
    let insert_end = wall_clock_ms();
    let insert_per_s = n as f64 / inserted.as_secs_f64();
    let until_due = (due - wall_clock_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(until_due)).await;
    wait_for_backlog(cluster.api, format!("burn-down {}", thousands(n)), n).await?;
    let tasks = read_tasks(cluster.api, name, first_id - 1, n).await?;
    let last_finish = tasks.iter().map(|t| t.finished).max().unwrap_or(due);
    let from = due.max(insert_end);
    let seconds = (last_finish - from).max(1) as f64 / 1000.0;
    Ok(BurnDown {
        insert_per_s,
        per_s: n as f64 / seconds,
        seconds,
        insert_overran: insert_end > due,
    })
}

/// A finished task's times, as the API reports them.
struct Times {
    partition: u32,
    due: i64,
    started: i64,
    finished: i64,
}

/// Reads back the `n` tasks named `name` with ids above `after`; every one must be COMPLETED.
async fn read_tasks(
    api: SocketAddr,
    name: &str,
    after: i64,
    n: usize,
) -> anyhow::Result<Vec<Times>> {
    let mut client = Client::new(api);
    let mut out = Vec::with_capacity(n);
    let mut cursor = after.max(0);
    loop {
        let path = if cursor > 0 {
            format!("/tasks?name={name}&limit=1000&cursor={cursor}")
        } else {
            format!("/tasks?name={name}&limit=1000")
        };
        let page = client.get(&path).await?;
        let tasks = page["tasks"].as_array().context("a page of tasks")?;
        for t in tasks {
            if t["status"] != "COMPLETED" {
                bail!(
                    "task {} ended {} (expected COMPLETED): {t}",
                    t["id"],
                    t["status"]
                );
            }
            let time = |key: &str| -> anyhow::Result<i64> {
                let text = t[key]
                    .as_str()
                    .with_context(|| format!("task without {key}: {t}"))?;
                crate::api::time::parse(text).map_err(anyhow::Error::msg)
            };
            out.push(Times {
                partition: t["partitionId"].as_u64().unwrap_or(0) as u32,
                due: time("scheduledTime")?,
                started: time("startedAt")?,
                finished: time("finishedAt")?,
            });
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.parse().context("a cursor")?,
            None => break,
        }
    }
    if out.len() != n {
        bail!(
            "{} tasks named {name} were found, {n} were created",
            out.len()
        );
    }
    Ok(out)
}

/// Polls `/tasks/backlog` until nothing is pending or running, showing progress over `n` tasks.
/// Fails if the backlog stops shrinking for a minute.
async fn wait_for_backlog(api: SocketAddr, label: String, n: usize) -> anyhow::Result<()> {
    let mut client = Client::new(api);
    let progress = Progress::new(label, n);
    let mut last = (u64::MAX, Instant::now());
    loop {
        let backlog = client.get("/tasks/backlog").await?;
        let live =
            backlog["pending"].as_u64().unwrap_or(0) + backlog["running"].as_u64().unwrap_or(0);
        progress.set(n.saturating_sub(live as usize));
        if live == 0 {
            progress.finish();
            return Ok(());
        }
        if live < last.0 {
            last = (live, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("the backlog has stayed at {live} tasks for a minute");
        }
        // Counting is not free on the store: poll gently (the figures come from the tasks'
        // own times, not from when this loop notices the end).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sends `rate` single creates a second for `seconds`, each due when the API receives it, then
/// reports start - due over all of them.
async fn latency(
    cluster: &Cluster,
    name: &str,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<(Figure, Vec<i64>)> {
    let (ids, sent_per_s) =
        steady_load(cluster.api, name, rate, Duration::from_secs(seconds), None).await?;
    let n = ids.len();
    wait_for_backlog(cluster.api, "latency: finishing".into(), n).await?;
    let first = ids.iter().min().copied().unwrap_or(1);
    let tasks = read_tasks(cluster.api, name, first - 1, n).await?;
    let mut lags: Vec<i64> = tasks.iter().map(|t| t.started - t.due).collect();
    lags.sort_unstable();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize] as f64;
    let figure = Figure::new(format!(
        "latency at {} tasks/s for {seconds} s",
        thousands(rate as usize)
    ))
    .value("p50 ms", pct(0.5))
    .value("p99 ms", pct(0.99))
    .value("max ms", *lags.last().unwrap_or(&0) as f64)
    .note(format!(
        "start - due over {} tasks, sent at {sent_per_s:.0}/s",
        thousands(n)
    ));
    Ok((figure, lags))
}

/// Sends `rate` creates a second for `length` from 32 clients on a fixed schedule (a late client
/// catches up rather than lowering the rate); `at_half` runs once, half way. Returns the created
/// ids and the rate achieved.
async fn steady_load(
    api: SocketAddr,
    name: &str,
    rate: u32,
    length: Duration,
    mut at_half: Option<&mut (dyn FnMut() -> anyhow::Result<()> + Send)>,
) -> anyhow::Result<(Vec<i64>, f64)> {
    const CLIENTS: u32 = 32;
    let total = (u64::from(rate) * length.as_millis() as u64 / 1000) as usize;
    let progress = Progress::new(format!("steady load {rate}/s"), total);
    let start = tokio::time::Instant::now();
    let mut joins = Vec::new();
    for c in 0..CLIENTS {
        let (addr, name, progress) = (api, name.to_owned(), progress.clone());
        joins.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let body = json!({"name": name, "handler": "noop"}).to_string();
            let mut ids = Vec::new();
            let mut k = c as usize;
            while k < total {
                let at = start + Duration::from_secs_f64(k as f64 / f64::from(rate));
                tokio::time::sleep_until(at).await;
                let (status, answer) = client
                    .request("POST", "/tasks", Some(body.as_bytes()))
                    .await?;
                if status != 201 {
                    bail!("POST /tasks: HTTP {status}: {answer}");
                }
                ids.push(answer["id"].as_i64().context("an id")?);
                progress.add(1);
                k += CLIENTS as usize;
            }
            anyhow::Ok(ids)
        }));
    }
    if let Some(action) = at_half.as_mut() {
        tokio::time::sleep_until(start + length / 2).await;
        action()?;
    }
    let mut ids = Vec::with_capacity(total);
    for join in joins {
        ids.extend(join.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish();
    Ok((ids, total as f64 / elapsed))
}

/// Under a steady load, SIGKILLs one worker half way and measures, for each partition it led,
/// how long after the kill that partition's tasks started running again elsewhere.
async fn failover(cluster: &mut Cluster, name: &str, rate: u32) -> anyhow::Result<Figure> {
    let victim = cluster
        .worker_ids()
        .first()
        .cloned()
        .context("a worker to kill")?;
    let mut client = Client::new(cluster.api);
    let status = client.get("/cluster").await?;
    let led: Vec<u32> = status["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .filter(|p| {
            p["holders"].as_array().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h["instance"] == victim.as_str() && h["state"] == "MASTER")
            })
        })
        .filter_map(|p| p["partition"].as_u64().map(|p| p as u32))
        .collect();
    if led.is_empty() {
        bail!("worker {victim} leads no partition: nothing to fail over");
    }
    let timeout = cluster.session_timeout;
    let length = (timeout * 2).max(Duration::from_secs(10)) + Duration::from_secs(4);
    let api = cluster.api;
    let mut killed_at = 0i64;
    let (ids, _) = {
        let mut kill = || -> anyhow::Result<()> {
            killed_at = wall_clock_ms();
            cluster.kill_worker(&victim)
        };
        steady_load(api, name, rate, length, Some(&mut kill)).await?
    };
    let n = ids.len();
    wait_for_backlog(cluster.api, "failover: finishing".into(), n).await?;
    let first = ids.iter().min().copied().unwrap_or(1);
    let tasks = read_tasks(cluster.api, name, first - 1, n).await?;
    // Per partition of the victim: the first start, after the kill, of a task due after it.
    let mut back: std::collections::BTreeMap<u32, i64> = Default::default();
    let mut worst_lag = 0i64;
    for t in tasks
        .iter()
        .filter(|t| led.contains(&t.partition) && t.due >= killed_at)
    {
        let at = back.entry(t.partition).or_insert(t.started);
        *at = (*at).min(t.started);
        worst_lag = worst_lag.max(t.started - t.due);
    }
    if back.len() != led.len() {
        bail!("some of {victim}'s partitions ran nothing after the kill");
    }
    let failover = back.values().map(|&at| at - killed_at).max().unwrap_or(0);
    Ok(Figure::new(format!(
        "failover after SIGKILL of a worker ({} partitions)",
        led.len()
    ))
    .value("s", failover as f64 / 1000.0)
    .value("session timeout s", timeout.as_secs_f64())
    .value("worst lag s", worst_lag as f64 / 1000.0)
    .note(format!("steady load of {rate} tasks/s")))
}

/// A progress bar on standard error (a line every few seconds when it is not a terminal).
#[derive(Clone)]
struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    label: String,
    total: usize,
    done: AtomicUsize,
    start: Instant,
    shown: std::sync::Mutex<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(label: String, total: usize) -> Self {
        Self(Arc::new(ProgressInner {
            label,
            total: total.max(1),
            done: AtomicUsize::new(0),
            start: Instant::now(),
            shown: std::sync::Mutex::new(Instant::now()),
            terminal: std::io::stderr().is_terminal(),
        }))
    }

    fn add(&self, n: usize) {
        let done = self.0.done.fetch_add(n, Ordering::Relaxed) + n;
        self.show(done, false);
    }

    fn set(&self, done: usize) {
        self.0.done.store(done, Ordering::Relaxed);
        self.show(done, false);
    }

    fn finish(&self) {
        self.show(self.0.done.load(Ordering::Relaxed), true);
    }

    fn show(&self, done: usize, last: bool) {
        let p = &self.0;
        {
            let mut shown = p.shown.lock().unwrap_or_else(|e| e.into_inner());
            let every = if p.terminal { 100 } else { 5_000 };
            if !last && shown.elapsed() < Duration::from_millis(every) {
                return;
            }
            *shown = Instant::now();
        }
        let fraction = (done as f64 / p.total as f64).min(1.0);
        let width = 30;
        let filled = (fraction * width as f64) as usize;
        let rate = done as f64 / p.start.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "{:<28} [{}{}] {:>3.0}% {}/{} {:.0}/s",
            p.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            fraction * 100.0,
            thousands(done),
            thousands(p.total),
            rate
        );
        if p.terminal {
            eprint!("\r{line}{}", if last { "\n" } else { "" });
        } else {
            eprintln!("{line}");
        }
    }
}
