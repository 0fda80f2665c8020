//! `rota dev` end to end over real HTTP: 10,000 tasks due over 5 seconds are each executed
//! exactly once by 3 workers; with one worker cut off from the coordination store mid-run none is
//! lost and none runs on two workers at once; a restart resumes pending tasks from the SQLite
//! file; `/cluster` shows the leader, instances and partitions.

mod common;

use common::http;
use rota::config::Config;
use rota::dev::{self, DevCluster, DevOptions};
use rota_cluster::participant::ParticipantStatus;
use rota_scheduler::conformance::recorder::{
    Recorder, assert_only_cut_off_runs_repeat, assert_ran_once_each,
};
use rota_scheduler::worker::{Handlers, wall_clock_ms};
use rota_scheduler::{ListFilter, TaskId, TaskStatus};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rota-dev-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &std::path::Path, recorder: &Recorder) -> DevCluster {
    let mut config = Config::default();
    config.coordination.session_timeout_ms = 3_000;
    let mut handlers = Handlers::default();
    handlers.set_default(Arc::new(recorder.clone()));
    dev::start(DevOptions {
        workers: 3,
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        handlers,
    })
    .await
    .unwrap()
}

/// Creates `count` tasks due evenly over `over` through `POST /tasks/batch`.
async fn create(cluster: &DevCluster, count: usize, over: Duration) -> Vec<TaskId> {
    let now = wall_clock_ms();
    let mut ids = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(1_000) {
        let tasks: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let due = now + (over.as_millis() as i64 * i as i64 / count as i64);
                let time = chrono::DateTime::from_timestamp_millis(due)
                    .unwrap()
                    .to_rfc3339();
                json!({"name": format!("task-{i}"), "scheduledTime": time, "payload": i})
            })
            .collect();
        let (status, body) = http(
            cluster.addr,
            "POST",
            "/tasks/batch",
            Some(&json!({"tasks": tasks})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.extend(
            body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_i64().unwrap()),
        );
    }
    ids
}

async fn wait_completed(cluster: &DevCluster, count: usize) {
    let within = Duration::from_secs(90);
    rota_scheduler::conformance::wait_completed(&*cluster.tasks, count, within).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_each_run_exactly_once() {
    let (dir, recorder) = (data_dir("exactly-once"), Recorder::default());
    let cluster = start(&dir, &recorder).await;
    let ids = create(&cluster, 10_000, Duration::from_secs(5)).await;
    wait_completed(&cluster, ids.len()).await;
    let (status, view) = http(cluster.addr, "GET", "/cluster", None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["leader"]["controller"], "dev-controller");
    assert_eq!(view["instances"].as_array().unwrap().len(), 3);
    assert!(
        view["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["epoch"].as_u64().unwrap() >= 1)
    );
    cluster.stop().await.unwrap();
    let runs = recorder.runs();
    assert_ran_once_each(&runs, &ids);
    let workers: std::collections::BTreeSet<_> =
        runs.values().flatten().map(|e| e.worker.clone()).collect();
    assert_eq!(workers.len(), 3, "all workers ran tasks: {workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_run_loses_nothing_and_never_overlaps() {
    // Runs of a second: the cut-off worker has runs going on when it is cut off, and its
    // session's end must abort them before anyone runs them again.
    let dir = data_dir("cut-off");
    let recorder = Recorder::taking(Duration::from_secs(1));
    let cluster = start(&dir, &recorder).await;
    let ids = create(&cluster, 400, Duration::from_secs(5)).await;
    let (victim, handle) = cluster.participants[1].clone();
    let going_on = || recorder.going_on(&victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    while going_on() < 8 {
        assert!(
            Instant::now() < deadline,
            "{victim} never had 8 runs going on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = going_on();
    let ParticipantStatus::Live(session) = handle.status().borrow().clone() else {
        panic!("{victim} not live");
    };
    cluster.coordination.suspend(&session);
    wait_completed(&cluster, ids.len()).await;
    cluster.stop().await.unwrap();
    let runs = recorder.runs();
    let twice = assert_only_cut_off_runs_repeat(&runs, &ids, &victim);
    println!(
        "{victim} had {in_flight} runs going on when cut off; {twice} of {} tasks ran twice",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_pending_tasks_from_the_file() {
    let (dir, recorder) = (data_dir("restart"), Recorder::default());
    let cluster = start(&dir, &recorder).await;
    let ids = create(&cluster, 200, Duration::from_secs(4)).await;
    // Stop at once: most tasks are still pending (due in the next seconds).
    cluster.stop().await.unwrap();
    let pending_before = {
        let store = rota_sqlite::SqliteTaskStore::open(dir.join("tasks.db"), "rota").unwrap();
        use rota_scheduler::Tasks;
        let filter = ListFilter {
            status: Some(TaskStatus::Pending),
            limit: 1_000,
            ..ListFilter::default()
        };
        store.list(&filter).await.unwrap().tasks.len()
    };
    assert!(
        pending_before > 100,
        "only {pending_before} pending at the stop"
    );
    let cluster = start(&dir, &recorder).await;
    wait_completed(&cluster, ids.len()).await;
    cluster.stop().await.unwrap();
    assert_ran_once_each(&recorder.runs(), &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_handler_posts_the_payload_and_retries_on_errors() {
    use axum::routing::post;
    // A receiver that fails the first request of each task, then accepts.
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let record = record.clone();
                async move {
                    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                    let mut seen = record.lock().unwrap();
                    let first = !seen.iter().any(|(k, _)| *k == key);
                    seen.push((key, body.0));
                    if first {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = data_dir("http");
    let mut config = Config::default();
    config.coordination.session_timeout_ms = 3_000;
    let cluster = dev::start(DevOptions {
        workers: 1,
        data_dir: dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        handlers: rota::handlers::builtin(Duration::from_secs(30)),
    })
    .await
    .unwrap();
    let task = json!({"name": "notify", "handler": "http", "maxAttempts": 3,
                      "payload": {"url": hook, "body": {"order": 17}}});
    let (status, created) = http(cluster.addr, "POST", "/tasks", Some(&task)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = http(cluster.addr, "GET", &format!("/tasks/{id}"), None).await;
        if t["status"] == "COMPLETED" {
            assert_eq!(t["attempts"], 2, "{t}");
            break;
        }
        assert!(Instant::now() < deadline, "not completed: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop().await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|(k, b)| *k == format!("rota-task-{id}") && *b == json!({"order": 17}))
    );
}

/// Waits until task `id` has a failed attempt; its last error.
async fn last_error(cluster: &DevCluster, id: i64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = http(cluster.addr, "GET", &format!("/tasks/{id}"), None).await;
        if let Some(e) = t["lastError"].as_str() {
            return e.to_owned();
        }
        assert!(Instant::now() < deadline, "no failed attempt: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_handler_refuses_what_http_allow_does_not_permit_and_signs_what_it_sends() {
    const SECRET: &str = "a-secret-of-the-receiver";
    // A receiver that checks the signature as the docs tell receivers to.
    let verified: Arc<Mutex<Vec<bool>>> = Arc::default();
    let record = verified.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let header = headers["x-rota-signature"].to_str().unwrap().to_owned();
                let t: i64 = header
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .unwrap()
                    .parse()
                    .unwrap();
                let fresh = (wall_clock_ms() - t).abs() < 60_000;
                let ok = fresh && header == rota::handlers::signature(SECRET, t, &body);
                record.lock().unwrap().push(ok);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = Config::default();
    // Only loopback by address, and one host name that is not this one.
    config.http.allow = vec!["127.0.0.0/8".into(), "hooks.example.com".into()];
    config.http.secret = Some(SECRET.into());
    let cluster = dev::start(DevOptions {
        workers: 1,
        data_dir: data_dir("http-allow"),
        listen: "127.0.0.1:0".parse().unwrap(),
        handlers: config.handlers().unwrap(),
        config,
    })
    .await
    .unwrap();
    let create = |url: String| {
        let task = json!({"name": "hook", "handler": "http", "maxAttempts": 1,
                          "payload": {"url": url, "body": {"n": 1}}});
        async move {
            let (status, created) = http(cluster.addr, "POST", "/tasks", Some(&task)).await;
            assert_eq!(status, 201, "{created}");
            created["id"].as_i64().unwrap()
        }
    };
    // The metadata address (refused whatever the list says); an address no listed network holds
    // (::1); and `localhost`, which resolves to 127.0.0.1, in a listed network: signed and sent.
    let metadata = create("http://169.254.169.254/latest/meta-data/".into()).await;
    let unlisted = create(format!("http://[::1]:{port}/hook")).await;
    let signed = create(format!("http://localhost:{port}/hook")).await;
    let err = last_error(&cluster, metadata).await;
    assert!(
        err.contains("refused") && err.contains("169.254.169.254"),
        "{err}"
    );
    let err = last_error(&cluster, unlisted).await;
    assert!(
        err.contains("refused") && err.contains("not in http.allow"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = http(cluster.addr, "GET", &format!("/tasks/{signed}"), None).await;
        if t["status"] == "COMPLETED" {
            break;
        }
        assert!(Instant::now() < deadline, "not completed: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop().await.unwrap();
    assert_eq!(
        *verified.lock().unwrap(),
        vec![true],
        "the receiver verified one request"
    );
}

/// `rota admin --url` reaches `rota dev` through its API: status, an instance disabled and
/// enabled again, maintenance, a reconcile, and a schedule put, shown, paused and triggered;
/// `--config` is taken after the subcommand too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rota_admin_reaches_dev_through_its_api() {
    let (dir, recorder) = (data_dir("admin"), Recorder::default());
    let cluster = start(&dir, &recorder).await;
    let url = format!("http://{}", cluster.addr);
    let admin = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rota"))
            .args(["admin", "--url", &url])
            .args(args)
            .env_remove("ROTA_TOKEN")
            .output()
            .expect("rota admin runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "rota admin {args:?}: {stdout}{stderr}"
        );
        stdout
    };
    let status: Value = serde_json::from_str(&admin(&["status"])).unwrap();
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3, "{status}");
    assert_eq!(status["partitions"].as_array().unwrap().len(), 12);
    let first = instances[0]["id"].as_str().unwrap().to_owned();
    assert!(admin(&["disable", &first]).contains("disabled"));
    let status: Value = serde_json::from_str(&admin(&["status"])).unwrap();
    let instance = |s: &Value| {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == first.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(instance(&status)["enabled"], false);
    admin(&["enable", &first]);
    let status: Value = serde_json::from_str(&admin(&["status"])).unwrap();
    assert_eq!(instance(&status)["enabled"], true);
    assert!(admin(&["maintenance", "on"]).contains("maintenance on"));
    assert_eq!(
        serde_json::from_str::<Value>(&admin(&["status"])).unwrap()["maintenance"],
        true
    );
    admin(&["maintenance", "off"]);
    assert!(admin(&["rebalance"]).contains("rebalance requested"));
    let put: Value = serde_json::from_str(&admin(&[
        "schedules",
        "put",
        "--name",
        "beat",
        "--every",
        "1h",
        "--task-name",
        "beat",
    ]))
    .unwrap();
    assert_eq!(
        (put["name"].as_str(), put["every"].as_str()),
        (Some("beat"), Some("1h"))
    );
    let paused: Value = serde_json::from_str(&admin(&["schedules", "pause", "beat"])).unwrap();
    assert_eq!(paused["paused"], true);
    let task: Value = serde_json::from_str(&admin(&["schedules", "trigger", "beat"])).unwrap();
    assert_eq!(task["name"], "beat");
    let list: Value = serde_json::from_str(&admin(&["schedules", "list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let shown: Value = serde_json::from_str(&admin(&["schedules", "show", "beat"])).unwrap();
    assert_eq!(shown["lastRuns"][0]["taskId"], task["id"]);
    // An unknown instance is the API's 404, said as such.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["admin", "--url", &url, "disable", "nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("HTTP 404") && error.contains("unknown instance"),
        "{error}"
    );
    // --config after the subcommand is the option, not a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["admin", "status", "--config", "/nonexistent/rota.toml"])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && error.contains("/nonexistent/rota.toml"),
        "{error}"
    );
    assert!(!error.contains("unexpected argument"), "{error}");
    cluster.stop().await.unwrap();
}
