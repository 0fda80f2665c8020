//! A small smoke run of `rota-bench`, every scenario, on `dev` and on a throwaway production
//! cluster (ZooKeeper + PostgreSQL from the installed binaries): the command runs to the end,
//! prints its table and writes JSON with every figure. The figures are printed, not asserted:
//! speed is measured by running the benchmark itself, not by tests. The clusters are processes
//! of the `rota` binary next to `rota-bench` (`cargo test --workspace` builds both).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// `rota-bench`, after checking that the `rota` it starts is built next to it.
fn rota_bench() -> Command {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_rota-bench"));
    let rota = bench.with_file_name("rota");
    assert!(
        rota.is_file(),
        "{} is missing: build it first (cargo build -p rota, or cargo test --workspace)",
        rota.display()
    );
    Command::new(bench)
}

fn bench(args: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!(
        "rota-bench-smoke-{}-{}.json",
        std::process::id(),
        args.join("_").replace(['/', ','], "-")
    ));
    let out = rota_bench()
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("rota-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rota-bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    assert!(stdout.contains("| burn-down 500 "), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("--json written"))
        .expect("the JSON parses");
    let _ = std::fs::remove_file(&json);
    report
}

/// The value `name` of the figure whose name starts with `prefix`.
fn number(report: &Value, prefix: &str, name: &str) -> f64 {
    let value = &figure(report, prefix)["values"][name];
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{prefix}: no number {name:?}"))
}

fn figure<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .find(|f| f["figure"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no figure {prefix:?} in {report}"))
}

/// Runs one after the other: each takes both cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_scenario_runs_on_dev() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = bench(&["--tasks", "500", "--rate", "200", "--seconds", "2"]);
    assert!(number(&report, "insert 500", "tasks/s") > 0.0);
    assert!(number(&report, "burn-down 500", "tasks/s") > 0.0);
    assert!(number(&report, "burn-down 500", "tasks/s by stopwatch") > 0.0);
    let lag = &figure(&report, "latency")["values"];
    assert!(lag["p50 ms"].as_f64().unwrap() <= lag["max ms"].as_f64().unwrap());
    assert!(number(&report, "peak RSS", "MB") > 1.0);
    // A dev cluster has no worker process to kill: asking for failover is a clear error.
    let out = rota_bench()
        .args(["--scenarios", "failover"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--target production"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_scenario_runs_on_production() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = bench(&[
        "--target",
        "production",
        "--tasks",
        "500",
        "--rate",
        "200",
        "--seconds",
        "2",
        "--scenarios",
        "insert,burn-down,latency,failover,cost",
    ]);
    assert!(number(&report, "burn-down 500", "tasks/s") > 0.0);
    // Every task was inserted once and updated once (its completion): the claim writes one
    // claim row per batch, not the task, so its WAL per task is a fraction of the insert's.
    let whole = &figure(&report, "cost: the whole database")["values"];
    let (inserted, updated) = (
        whole["rows inserted/task"].as_f64().unwrap(),
        whole["rows updated/task"].as_f64().unwrap(),
    );
    assert_eq!(inserted, 1.0, "{whole}");
    assert!((1.0..1.01).contains(&updated), "{whole}");
    for class in ["insert", "claim", "completion"] {
        assert!(number(&report, &format!("cost: {class}"), "WAL B/task") > 0.0);
    }
    let wal = |class: &str| number(&report, &format!("cost: {class}"), "WAL B/task");
    assert!(wal("claim") < wal("insert") / 4.0, "{report}");
    let failover = &figure(&report, "failover")["values"];
    // The killed worker's partitions ran again: the figure exists and is a real time.
    assert!(failover["s"].as_f64().unwrap() > 0.0, "{failover}");
    assert!(number(&report, "peak RSS api", "MB") > 1.0);
}
