//! The `rota` binary. Today it carries the what-if planner (`rota plan`); the cluster roles
//! (`dev`, `init`, `controller`, `api`, `worker`, `admin`) join it as they are built.

mod plan;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rota", version, about = "rota: a distributed task scheduler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a cluster and print the assignment statistics before and after a change.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rota: {error:#}");
            ExitCode::FAILURE
        }
    }
}
