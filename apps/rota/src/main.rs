//! The `rota` binary: `rota dev` runs the whole cluster in one process; `rota plan` simulates
//! the rebalancer. The production roles (`init`, `controller`, `api`, `worker`, `admin`) follow.

use clap::{Args, Parser, Subcommand};
use rota::config::Config;
use rota::dev::{self, DevOptions};
use rota::plan;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rota", version, about = "rota: a distributed task scheduler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cluster (API, controller, workers) in one process on a SQLite file.
    Dev(DevArgs),
    /// Simulate a cluster and print the assignment statistics before and after a change.
    Plan(plan::PlanArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Workers to run.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Directory of the SQLite task store.
    #[arg(long, default_value = "./rota-data")]
    data_dir: PathBuf,
    /// Address of the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A TOML configuration file (see configs/); ROTA_* environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan::run(&args),
        Command::Dev(args) => run_dev(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rota: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if args.workers == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    let config = Config::load(args.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let cluster = dev::start(DevOptions {
            workers: args.workers,
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            config,
            handlers: rota::handlers::builtin(),
        })
        .await?;
        let url = format!("http://{}", cluster.addr);
        println!("rota dev: {} workers, tasks in {}", args.workers, args.data_dir.join("tasks.db").display());
        println!("API on {url} (OpenAPI: {url}/openapi.json, cluster: {url}/cluster)");
        println!(
            "try: curl -X POST {url}/tasks -H 'Content-Type: application/json' \
             -d '{{\"name\": \"MyDistributedTask\", \"scheduledTime\": \"2023-12-31T23:59:59\", \"payload\": \"Payload Data\"}}'"
        );
        wait_for_signal().await;
        println!("rota dev: stopping (finishing tasks in flight)");
        cluster.stop().await?;
        println!("rota dev: stopped");
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
