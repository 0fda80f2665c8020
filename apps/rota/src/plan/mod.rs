//! `rota plan`: what would the assignment be if instances left, joined, or a zone failed?
//! (Helix users asked for this in Helix issue #1746.) Runs the real rebalancer on a synthetic
//! cluster and prints evenness, movement and timing; `--out` writes the assignments so anyone
//! can check the figures independently.

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, ValueEnum};
pub mod baseline;
pub mod scenario;

use rota_model::{IdealState, ResourceConfig, StateModel};
use scenario::{Change, Outcome, Scenario, Strategy};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("change").args(["remove", "add", "remove_zone"])))]
/// Arguments of `rota plan`.
pub struct PlanArgs {
    /// Instances in the cluster before the change.
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Fault zones; instances are dealt to zones round-robin (0: no zones).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// Partitions of the resource.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// State model: OnlineOffline, MasterSlave or LeaderStandby.
    #[arg(long, default_value = "MasterSlave")]
    state_model: String,
    /// Remove K instances (spread over the instance list).
    #[arg(long, value_name = "K")]
    remove: Option<usize>,
    /// Add K instances.
    #[arg(long, value_name = "K")]
    add: Option<usize>,
    /// Remove every instance of one zone.
    #[arg(long)]
    remove_zone: bool,
    /// Placement strategy: rota's rebalancer, or a baseline for comparison.
    #[arg(long, value_enum, default_value_t = StrategyArg::Rota)]
    strategy: StrategyArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write instances.json, before.json and after.json into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StrategyArg {
    Rota,
    Modulo,
    Ring,
}

/// Runs `rota plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let model = StateModel::builtin(&args.state_model).with_context(|| {
        format!(
            "unknown state model {:?}; built-ins are {}",
            args.state_model,
            StateModel::BUILTINS.join(", ")
        )
    })?;
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    if args.partitions == 0 || args.replicas == 0 {
        bail!("--partitions and --replicas must be at least 1");
    }
    if args.remove_zone && args.zones == 0 {
        bail!("--remove-zone needs --zones");
    }
    let change = match (args.remove, args.add, args.remove_zone) {
        (Some(k), _, _) if k > args.instances => {
            bail!("--remove {k} is more than the {} instances", args.instances)
        }
        (Some(k), _, _) => Change::Remove(k),
        (_, Some(k), _) => Change::Add(k),
        (_, _, true) => Change::RemoveZone,
        _ => Change::None,
    };
    let strategy = match args.strategy {
        StrategyArg::Rota => Strategy::Rota,
        StrategyArg::Modulo => Strategy::Modulo,
        StrategyArg::Ring => Strategy::Ring,
    };
    let scenario = Scenario {
        instances: args.instances,
        zones: args.zones,
        resource: ResourceConfig::new("tasks", args.partitions, args.replicas, model.name()),
        change,
    };
    let outcome = scenario.run(&model, strategy)?;
    if let Some(dir) = &args.out {
        write_files(dir, &outcome)?;
    }
    let mut report = serde_json::to_value(&outcome)?;
    if let Value::Object(map) = &mut report {
        map.insert("strategy".into(), json!(strategy));
        map.insert("change".into(), json!(change));
        map.insert(
            "instances_before".into(),
            json!(outcome.instances_before.len()),
        );
        map.insert(
            "instances_after".into(),
            json!(outcome.instances_after.len()),
        );
        map.insert("partitions".into(), json!(args.partitions));
        map.insert("replicas".into(), json!(args.replicas));
        map.insert("state_model".into(), json!(model.name()));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&outcome, &report);
    }
    Ok(())
}

fn print_table(outcome: &Outcome, report: &Value) {
    let s = &outcome.stats;
    let pct = |n: u64| 100.0 * n as f64 / s.total_replicas.max(1) as f64;
    println!(
        "{:<24} {}",
        "strategy",
        report["strategy"].as_str().unwrap_or("")
    );
    println!("{:<24} {}", "change", report["change"]);
    println!(
        "{:<24} {} -> {}",
        "instances",
        outcome.instances_before.len(),
        outcome.instances_after.len()
    );
    println!("{:<24} {}", "replicas placed", s.total_replicas);
    println!(
        "{:<24} {} .. {}",
        "replicas per instance", s.replicas_min, s.replicas_max
    );
    println!(
        "{:<24} {} .. {}",
        "top states per instance", s.top_states_min, s.top_states_max
    );
    println!(
        "{:<24} {} ({:.2}%)",
        "replicas moved",
        s.moved_replicas,
        pct(s.moved_replicas)
    );
    println!(
        "{:<24} {} ({:.2}%)",
        "lower bound on moves",
        outcome.lower_bound_moves,
        pct(outcome.lower_bound_moves)
    );
    println!("{:<24} {}", "top states changed", s.changed_top_states);
    println!("{:<24} {}", "zone violations", s.zone_violations);
    println!(
        "{:<24} {:.1} ms",
        "compute (after change)", outcome.compute_ms
    );
    println!(
        "{:<24} {:.1} ms",
        "compute (from scratch)", outcome.initial_compute_ms
    );
}

fn write_files(dir: &PathBuf, outcome: &Outcome) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let zones: BTreeMap<&str, &str> = outcome
        .instances_before
        .iter()
        .chain(&outcome.instances_after)
        .map(|i| (i.id.as_str(), i.effective_zone()))
        .collect();
    let lists = |ideal: &IdealState| -> BTreeMap<usize, Vec<String>> {
        ideal
            .partitions
            .iter()
            .enumerate()
            .map(|(p, intent)| (p, intent.instances().map(|i| i.to_string()).collect()))
            .collect()
    };
    let write = |name: &str, value: Value| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))
    };
    write("instances.json", json!(zones))?;
    write("before.json", json!(lists(&outcome.before)))?;
    write("after.json", json!(lists(&outcome.after)))?;
    Ok(())
}
