//! The API against its own OpenAPI document, by schemathesis (property-based: thousands of
//! generated requests, valid and invalid, stateful sequences included), on both deployments:
//! `rota dev` (SQLite, no tokens) and `rota api` on PostgreSQL with ZooKeeper (with tokens,
//! schemathesis sending an admin token). Every response must be a
//! documented status with a body matching the document, and no request may produce a 5xx.
//!
//! Two checks are left out, for reasons the document cannot express: `positive_data_acceptance`
//! (a schema-valid request may still be refused: a handler no live worker offers, a time the
//! RFC 3339 parser refuses, a reused idempotency key) and `use_after_free` (`DELETE /tasks/{id}`
//! cancels a task, which stays readable as CANCELLED).
//!
//! schemathesis comes from PyPI into `.tools/schemathesis` (`bash scripts/install-deps.sh`).

mod common;

use common::{Env, Proc};
use std::path::PathBuf;
use std::process::Command;

fn schemathesis() -> PathBuf {
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/schemathesis/bin/st");
    assert!(
        st.exists(),
        "schemathesis is not installed at {}: run `bash scripts/install-deps.sh`",
        st.display()
    );
    st
}

/// Runs schemathesis against the API at `api`; fails the test with its report unless every
/// check passed.
fn run_against(api: std::net::SocketAddr, tag: &str, token: Option<&str>) {
    let dir = std::env::temp_dir().join(format!("rota-st-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(schemathesis())
        .current_dir(&dir)
        .args(["run", &format!("http://{api}/openapi.json")])
        .args(["--checks", "all"])
        .args([
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        // One worker: with several, this schemathesis version sometimes fails on its own
        // generator cache (a KeyError), which says nothing about the API. The seed is random
        // and printed in the report, so a failure can be replayed (`--seed`).
        .args(["--max-examples", "50", "--workers", "1"])
        .arg("--continue-on-failure")
        .args(token.map_or_else(Vec::new, |t| {
            vec!["-H".to_owned(), format!("Authorization: Bearer {t}")]
        }))
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.len() < 120 && (l.contains("generated") || l.contains("passed")))
        .collect();
    println!("{tag}: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "schemathesis found problems on {tag}:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_api_matches_its_document_and_never_answers_5xx() {
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", rota_test_harness::free_port())
        .parse()
        .unwrap();
    let data = std::env::temp_dir().join(format!("rota-st-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let _dev = Proc(
        Command::new(env!("CARGO_BIN_EXE_rota"))
            .args(["dev", "--listen", &api.to_string(), "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start rota dev"),
    );
    common::wait_ready(api).await;
    run_against(api, "dev", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_api_matches_its_document_and_never_answers_5xx() {
    let db = rota_test_harness::postgres().fresh_database();
    let mut env = Env::on_zookeeper("schemathesis", "st", db);
    // With tokens, as production runs: schemathesis sends an admin token, and its checks that
    // authentication is enforced see 401s without it.
    let token = rota::api::auth::generate_token().unwrap();
    let entry = format!(
        "[{{name=\"schemathesis\", scopes=[\"admin\"], sha256=\"{}\"}}]",
        rota::api::auth::token_sha256(&token)
    );
    env.vars.push(("ROTA_API__TOKENS".into(), entry));
    env.run_ok(&["init"]);
    let _roles = [
        env.spawn(&["controller"], None),
        env.spawn(&["worker"], Some("w1")),
        env.spawn(&["api"], None),
    ];
    common::wait_ready(env.api).await;
    run_against(env.api, "production", Some(&token));
}
