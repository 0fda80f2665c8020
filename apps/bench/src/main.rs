//! `rota-bench` (also run as `rota bench`): how fast a cluster drains a backlog and starts tasks
//! on time, measured the way a user would: tasks go in through the public API
//! (`POST /tasks/batch`, `POST /tasks`, with the typed client `rota-client`), run on the
//! cluster's workers with the default configuration and the built-in `noop` handler, and every
//! figure is computed from the tasks as the API reports them afterwards (their due, start and
//! finish times), so nothing is counted that the store did not record. The clusters it starts
//! are separate processes of the `rota` binary: `rota dev`, or one process per role on
//! throwaway servers.
//!
//! Scenarios: `insert` (N tasks through `/tasks/batch` from several clients), `burn-down` (N tasks
//! due at one moment: tasks/s from that moment to the last completion, at each N), `latency` (a
//! steady rate of single creates due when sent: start - due percentiles), `failover` (SIGKILL of
//! a worker process under load: time until its partitions' due tasks start again) and the peak
//! memory of the processes.
//!
//! The started processes log at `RUST_LOG` of the benchmark's environment (default: warnings
//! only); with `--keep-logs`, a production cluster's logs are kept and their directory printed
//! at the end.

mod cluster;
mod cost;
mod plot;
mod progress;
mod report;
mod scenarios;
mod time;

use anyhow::{Context, bail};
use clap::Parser;
use cluster::{Cluster, CoordinationKind, Target};
use report::{Figure, Report};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// What one task costs the database (WAL, blocks dirtied) by statement: its insert, claim
    /// and completion, over a burn-down of the first `--tasks` size (production only, not by
    /// default: its PostgreSQL preloads `pg_stat_statements`).
    Cost,
}

/// Measure insert, burn-down, start lag, failover and memory on a throwaway cluster (or a
/// running one with --url), through the public API.
#[derive(Debug, Parser)]
#[command(name = "rota bench", version)]
pub struct BenchArgs {
    /// The `rota` binary whose clusters it starts [default: the one next to this program]
    #[arg(long)]
    pub rota: Option<PathBuf>,
    /// The cluster to start and measure.
    #[arg(long, value_enum, default_value = "dev")]
    pub target: Target,
    /// Coordination store of a production target.
    #[arg(long, value_enum, default_value = "zookeeper")]
    pub coordination: CoordinationKind,
    /// Measure a running cluster at this API address (host:port, http:// or https://) instead
    /// of starting one. It should be otherwise idle: the backlog it reports is the whole
    /// cluster's. An API with tokens needs one with the read and write scopes in `ROTA_TOKEN`.
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
    /// Keep a started production cluster's process logs (their directory is printed at the
    /// end); their level is `RUST_LOG`'s, warnings only by default.
    #[arg(long)]
    pub keep_logs: bool,
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the benchmark.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.tasks.contains(&0) {
        bail!("--tasks: every backlog size must be at least 1");
    }
    if args.rate == 0 || args.seconds == 0 || args.clients == 0 {
        bail!("--rate, --seconds and --clients must be at least 1");
    }
    if args.workers == Some(0) {
        bail!("--workers must be at least 1");
    }
    let cost = args.scenarios.contains(&Scenario::Cost);
    if cost && (args.url.is_some() || args.target != Target::Production) {
        bail!("the cost scenario reads the task store's statistics: use --target production");
    }
    let _ = cluster::KEEP_LOGS.set(args.keep_logs);
    let mut cluster = match &args.url {
        Some(url) => Cluster::remote(url).await?,
        None => {
            let rota = cluster::rota_binary(args.rota.as_deref())?;
            match args.target {
                Target::Dev => Cluster::dev(&rota, args.workers.unwrap_or(3)).await?,
                Target::Production => {
                    let workers = args.workers.unwrap_or(2);
                    Cluster::production(&rota, args.coordination, workers, cost).await?
                }
            }
        }
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
            let outcome =
                scenarios::burn_down(&cluster, &name, n, args.clients, insert_rate).await?;
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
        let (figure, sorted) = scenarios::latency(&cluster, &name, args.rate, args.seconds).await?;
        report.push(figure);
        lags = sorted;
    }
    if cost {
        let name = format!("bench-{run_id}-cost");
        let n = args.tasks[0];
        report.extend(cost::cost(&cluster, &name, n, args.clients).await?);
    }
    if scenarios.contains(&Scenario::Failover) {
        let name = format!("bench-{run_id}-failover");
        report.push(scenarios::failover(&mut cluster, &name, args.rate.min(1_000)).await?);
    }
    for (process, bytes) in cluster.peak_rss() {
        report.push(Figure::new(format!("peak RSS {process}")).value("MB", bytes as f64 / 1e6));
    }
    report.print();
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let what = &cluster.description;
        if !rates.is_empty() {
            let svg = plot::burn_down(what, &rates)?;
            std::fs::write(dir.join("burn-down.svg"), svg)?;
        }
        if !lags.is_empty() {
            let title = format!(
                "Start - due of {} tasks sent at {} a second",
                thousands(lags.len()),
                thousands(args.rate as usize)
            );
            let svg = plot::lag_distribution(&title, what, &lags)?;
            std::fs::write(dir.join("latency.svg"), svg)?;
        }
        eprintln!("plots written to {}", dir.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    cluster.stop();
    Ok(())
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
