//! The `rota` binary: `rota dev` runs the whole cluster in one process; `init`, `controller`,
//! `api`, `worker` and `admin` are the production roles, one per process; `rota plan` simulates
//! the rebalancer.

use clap::{Args, Parser, Subcommand};
use rota::config::{Config, LogFormat};
use rota::dev::{self, DevOptions};
use rota::plan;
use rota::roles;
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
    /// Create the cluster and migrate the task store (idempotent).
    Init(ConfigArg),
    /// Run a controller candidate (run two or more: one leads, the others stand by).
    Controller(ConfigArg),
    /// Serve the REST API.
    Api(ConfigArg),
    /// Run a worker.
    Worker(ConfigArg),
    /// Operate the cluster: through its API with --url (any cluster, `rota dev` too; the
    /// token in ROTA_TOKEN), else straight on the stores of --config.
    Admin {
        #[command(flatten)]
        config: ConfigArg,
        /// The cluster's API (http://host:port, https://..., or host:port): every action goes
        /// through it instead of the stores.
        #[arg(long, global = true)]
        url: Option<String>,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Simulate a cluster and print the assignment statistics before and after a change.
    Plan(plan::PlanArgs),
    /// Measure insert, burn-down, start lag, failover and memory on a throwaway cluster (or a
    /// running one with --url), through the public API: runs the rota-bench program next to
    /// this one with the same arguments (`rota bench --help` lists them).
    Bench {
        /// rota-bench's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// A TOML configuration file (see configs/); ROTA_* environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Print the cluster's status (leader, instances, partitions) as JSON.
    Status,
    /// Give an instance replicas again.
    Enable {
        /// Instance id.
        id: String,
    },
    /// Move every replica off an instance (it stays connected).
    Disable {
        /// Instance id.
        id: String,
    },
    /// Maintenance mode: nothing moves except to restore lost top states.
    Maintenance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Ask the leading controller to reconcile now.
    Rebalance,
    /// API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Recurring schedules (the same as /schedules of the API, straight on the task store).
    Schedules {
        #[command(subcommand)]
        action: ScheduleAction,
    },
}

#[derive(Subcommand)]
enum ScheduleAction {
    /// Print every schedule as JSON.
    List,
    /// Print a schedule with its next fire times and its last runs.
    Show {
        /// Schedule name.
        name: String,
    },
    /// Create or replace a schedule.
    Put(Box<PutSchedule>),
    /// Delete a schedule (its tasks stay).
    Delete {
        /// Schedule name.
        name: String,
    },
    /// Pause a schedule: no tick fires until resumed.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Resume a schedule at its first tick from now.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Fire a schedule once, now.
    Trigger {
        /// Schedule name.
        name: String,
    },
}

#[derive(Args)]
struct PutSchedule {
    /// Unique name (letters, digits, '-', '_', '.', ':').
    #[arg(long)]
    name: String,
    /// Cron expression: 5 fields, or 6 with seconds first.
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    cron: Option<String>,
    /// Or an interval: 30s, 5m, 2h, 1d.
    #[arg(long)]
    every: Option<String>,
    /// IANA time zone of the cron expression.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// Name of the task each tick creates.
    #[arg(long)]
    task_name: String,
    /// Its payload, as JSON.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Its handler.
    #[arg(long)]
    handler: Option<String>,
    /// Its attempts before FAILED.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Its partition key.
    #[arg(long)]
    partition_key: Option<String>,
    /// Missed ticks (older than 60 s): skip, run-once or run-all.
    #[arg(long, default_value = "run-once")]
    missed_ticks: String,
    /// With run-all: the most missed ticks run.
    #[arg(long, default_value_t = 10)]
    catch_up: u32,
    /// Each tick's task is due up to this many ms after its tick.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
}

impl PutSchedule {
    fn entry(self) -> anyhow::Result<rota::crontab::ScheduleEntry> {
        use anyhow::Context;
        let payload = serde_json::from_str(&self.payload)
            .with_context(|| format!("--payload {:?} is not JSON", self.payload))?;
        Ok(rota::crontab::ScheduleEntry {
            name: self.name,
            cron: self.cron,
            every: self.every,
            time_zone: self.time_zone,
            task: rota::crontab::TaskEntry {
                name: self.task_name,
                payload,
                handler: self.handler,
                max_attempts: self.max_attempts,
                partition_key: self.partition_key,
            },
            missed_ticks: self.missed_ticks,
            catch_up: self.catch_up,
            jitter_ms: self.jitter_ms,
        })
    }
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a new random token (once: it is stored nowhere), then the [[api.tokens]] entry
    /// that admits it, holding only its SHA-256.
    Create {
        /// Who will hold it (letters, digits, '-', '_', '.'), for logs and messages.
        #[arg(long)]
        name: String,
        /// What it may do: read, write, admin (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<rota::api::auth::Scope>,
    },
}

#[derive(Args)]
struct DevArgs {
    /// Workers to run.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Directory of the SQLite task store.
    #[arg(long, default_value = "./rota-data")]
    data_dir: PathBuf,
    /// Address of the API [default: api.listen of the configuration, 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A TOML configuration file (see configs/); ROTA_* environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan::run(&args),
        Command::Dev(args) => run_dev(args),
        Command::Bench { args } => run_bench(args),
        Command::Init(c) => run_role(
            c,
            None,
            |config, _| async move { roles::init(&config).await },
        ),
        Command::Controller(c) => run_role(c, Some("controller"), |config, stop| async move {
            roles::controller(&config, stop).await
        }),
        Command::Api(c) => run_role(c, Some("api"), |config, stop| async move {
            roles::api(&config, stop).await
        }),
        Command::Worker(c) => run_role(c, Some("worker"), |config, stop| async move {
            roles::worker(&config, stop).await
        }),
        Command::Admin {
            action: AdminAction::Token { action },
            ..
        } => match action {
            TokenAction::Create { name, scopes } => create_token(name, scopes),
        },
        Command::Admin {
            config,
            url,
            action,
        } => {
            use rota::admin::AdminCommand;
            let command = match action {
                AdminAction::Schedules { action } => {
                    use rota::admin::ScheduleCommand as C;
                    AdminCommand::Schedules(match action {
                        ScheduleAction::List => C::List,
                        ScheduleAction::Show { name } => C::Show(name),
                        ScheduleAction::Put(put) => match (*put).entry() {
                            Ok(entry) => C::Put(Box::new(entry)),
                            Err(e) => {
                                eprintln!("rota: {e:#}");
                                return ExitCode::FAILURE;
                            }
                        },
                        ScheduleAction::Delete { name } => C::Delete(name),
                        ScheduleAction::Pause { name } => C::Pause(name),
                        ScheduleAction::Resume { name } => C::Resume(name),
                        ScheduleAction::Trigger { name } => C::Trigger(name),
                    })
                }
                AdminAction::Status => AdminCommand::Status,
                AdminAction::Enable { id } => AdminCommand::Enable(id, true),
                AdminAction::Disable { id } => AdminCommand::Enable(id, false),
                AdminAction::Maintenance { state } => AdminCommand::Maintenance(state == "on"),
                AdminAction::Rebalance => AdminCommand::Rebalance,
                AdminAction::Token { .. } => unreachable!("handled above"),
            };
            match url {
                Some(url) => admin_through_api(&url, command),
                None => run_role(config, None, move |config, _| async move {
                    rota::admin::direct(&config, command).await
                }),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rota: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `rota admin token create`: the token alone on the first line (for `| head -1`), then the
/// entry to configure.
fn create_token(name: String, mut scopes: Vec<rota::api::auth::Scope>) -> anyhow::Result<()> {
    use rota::api::auth::{TokenEntry, generate_token, token_sha256};
    scopes.sort();
    scopes.dedup();
    let token = generate_token()?;
    let entry = TokenEntry {
        name,
        scopes,
        sha256: token_sha256(&token),
        rate_limit_per_second: None,
    };
    entry.validate().map_err(anyhow::Error::msg)?;
    // The name was validated: letters, digits and '-', '_', '.', nothing to escape.
    let scopes: Vec<String> = entry
        .scopes
        .iter()
        .map(|s| format!("\"{}\"", s.name()))
        .collect();
    let scopes = scopes.join(", ");
    println!("{token}");
    println!(
        "# The token above is shown once and stored nowhere: give it to {name:?}, who sends it as\n\
         # `Authorization: Bearer <token>`. Admit it in the configuration of every `rota api`\n\
         # (and `rota dev`), then restart them:\n\
         [[api.tokens]]\n\
         name = \"{name}\"\n\
         scopes = [{scopes}]\n\
         sha256 = \"{sha}\"\n\
         # or in the environment (one variable holds every token):\n\
         # ROTA_API__TOKENS='[{{name=\"{name}\", scopes=[{scopes}], sha256=\"{sha}\"}}]'",
        name = entry.name,
        sha = entry.sha256,
    );
    Ok(())
}

/// Logs go to stderr, so that what a command prints for machines (`rota admin status`) is alone
/// on stdout.
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            // The clients' own chatter (sessions opened, statements' notices) only when asked.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,zookeeper_client=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only, not for a file or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Warns if the configuration file holds secrets every user may read.
fn warn_about_readable_secrets(file: Option<&std::path::Path>) {
    if let Some(warning) = file.and_then(Config::secrets_readable_by_all) {
        tracing::warn!("{warning}");
    }
}

/// Runs a role with its configuration until it ends or SIGTERM / Ctrl-C sets the shutdown flag.
/// Runs a role with the configuration, until it ends or a signal stops it. A long-running
/// role (`Some(name)`) says when it begins to stop and when it has.
fn run_role<F, Fut>(
    args: ConfigArg,
    long_running: Option<&'static str>,
    role: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Config, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = Config::load(args.config.as_deref())?;
    init_logging(config.log.format);
    warn_about_readable_secrets(args.config.as_deref());
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            if let Some(name) = long_running {
                tracing::info!("rota {name}: stopping");
            }
            stop.send_replace(true);
        });
        role(config, stopped).await
    });
    if let (Some(name), Ok(())) = (long_running, &result) {
        tracing::info!("rota {name}: stopped");
    }
    result
}

fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    if args.workers == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    let config = Config::load(args.config.as_deref())?;
    init_logging(config.log.format);
    warn_about_readable_secrets(args.config.as_deref());
    let tokens = config.api.tokens.len();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let cluster = dev::start(DevOptions {
            workers: args.workers,
            data_dir: args.data_dir.clone(),
            listen: args.listen.unwrap_or(config.api.listen),
            handlers: config.handlers()?,
            config,
        })
        .await?;
        let url = cluster.url.clone();
        println!("rota dev: {} workers, tasks in {}", args.workers, args.data_dir.join("tasks.db").display());
        println!("API on {url} (OpenAPI: {url}/openapi.json, cluster: {url}/cluster)");
        println!(
            "try: curl -X POST {url}/tasks -H 'Content-Type: application/json' \
             -d '{{\"name\": \"MyDistributedTask\", \"scheduledTime\": \"2023-12-31T23:59:59\", \"payload\": \"Payload Data\"}}'"
        );
        if tokens > 0 {
            println!(
                "{tokens} API token(s) configured: add -H 'Authorization: Bearer <token>' to \
                 every request but /healthz, /readyz and /openapi.json"
            );
        }
        wait_for_signal().await;
        println!("rota dev: stopping (finishing tasks in flight)");
        cluster.stop().await?;
        println!("rota dev: stopped");
        Ok(())
    })
}

/// `rota admin --url ...`: through the API, with the token in `ROTA_TOKEN`.
fn admin_through_api(url: &str, command: rota::admin::AdminCommand) -> anyhow::Result<()> {
    let client = rota_client::Client::builder(url)
        .token(std::env::var("ROTA_TOKEN").ok())
        .build()?;
    tokio::runtime::Runtime::new()?.block_on(rota::admin::through_api(&client, command))
}

/// `rota bench`: the benchmark is a program of its own (`rota-bench`, which starts throwaway
/// servers and plots: nothing the server needs to carry), run from here with this `rota` as
/// the binary whose clusters it starts, because the command users know is `rota bench`.
fn run_bench(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use anyhow::Context;
    let this = std::env::current_exe().context("cannot find this program's path")?;
    let bench = this.with_file_name("rota-bench");
    if !bench.is_file() {
        anyhow::bail!(
            "rota bench runs {}, which is missing: build it next to rota with \
             `cargo build --release -p rota -p rota-bench`",
            bench.display()
        );
    }
    let mut command = std::process::Command::new(&bench);
    if !args
        .iter()
        .any(|a| a == "--rota" || a.to_string_lossy().starts_with("--rota="))
    {
        command.arg("--rota").arg(&this);
    }
    let status = command
        .args(&args)
        .status()
        .with_context(|| format!("cannot run {}", bench.display()))?;
    if status.success() {
        Ok(())
    } else {
        std::process::exit(status.code().unwrap_or(1))
    }
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
