//! The production topology as separate OS processes on a real PostgreSQL and a real ZooKeeper or
//! etcd (started by the test harness): `rota init`, two controllers, one API and three workers. 20,000 tasks due
//! over 10 seconds are submitted through the API, each POSTing to a receiver in this test (the
//! built-in `http` handler), which records every execution. Mid-run one worker and the leading
//! controller are killed with SIGKILL and a fourth worker starts. Every task must end COMPLETED,
//! none lost; a task may run twice only if its claim was on the killed worker, never on two
//! workers at once, and its completion must carry the later claim's epoch. The test prints the
//! failover time (kill -> the dead worker's partitions claiming again elsewhere).
//!
//! The same test runs on ZooKeeper and on etcd (the binary must be built with `--features etcd`,
//! as the test script does), one after the other: each takes both cores. Another checks that
//! roles refuse a cluster never initialised, or configured with another partition count; and
//! that two clusters on one database and one ZooKeeper keep apart.

mod common;

use common::{Env, Proc, http, wait_for};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TASKS: usize = 20_000;
const SESSION_MS: u64 = 4_000;

use rota_test_harness::receiver::{Log, assert_one_at_a_time};

/// The receiver on loopback: records each run as it starts, then answers 200 after 5 ms.
async fn receiver(log: Log) -> String {
    rota_test_harness::receiver::start(
        log,
        Duration::from_millis(5),
        std::net::Ipv4Addr::LOCALHOST.into(),
    )
    .await
}

/// One run at a time: each takes both cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_a_worker_and_the_leading_controller_mid_run_on_zookeeper() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let endpoint = rota_test_harness::zookeeper().endpoint();
    kill_a_worker_and_the_leading_controller_mid_run("zookeeper", endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_a_worker_and_the_leading_controller_mid_run_on_etcd() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let endpoint = rota_test_harness::etcd().endpoint();
    kill_a_worker_and_the_leading_controller_mid_run("etcd", endpoint).await;
}

async fn kill_a_worker_and_the_leading_controller_mid_run(backend: &'static str, endpoint: String) {
    let db = rota_test_harness::postgres().fresh_database();
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", rota_test_harness::free_port())
        .parse()
        .unwrap();
    let cluster = format!("mp{}{backend}", std::process::id());
    let vars = vec![
        ("ROTA_COORDINATION__BACKEND", backend.to_owned()),
        ("ROTA_COORDINATION__ENDPOINTS", format!("[\"{endpoint}\"]")),
        (
            "ROTA_COORDINATION__SESSION_TIMEOUT_MS",
            SESSION_MS.to_string(),
        ),
        ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
        ("ROTA_STORAGE__URL", db.clone()),
        ("ROTA_CLUSTER__NAME", cluster),
        ("ROTA_CLUSTER__PARTITIONS", "12".to_owned()),
        ("ROTA_API__LISTEN", api.to_string()),
        ("ROTA_WORKER__CONCURRENCY", "64".to_owned()),
    ];
    let env = Env {
        vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        api,
        tag: backend,
    };

    // init: succeeds, is idempotent, and refuses to change the partition count.
    for _ in 0..2 {
        env.run_ok(&["init"]);
    }
    let refused = env.run_fails(&["init"], "24");
    assert!(refused.contains("partitions"), "{refused}");

    // Each controller and w1 serve their metrics and health (metrics.listen).
    let metrics_port = || -> std::net::SocketAddr {
        format!("127.0.0.1:{}", rota_test_harness::free_port())
            .parse()
            .unwrap()
    };
    let mut controller_metrics: Vec<std::net::SocketAddr> =
        (0..2).map(|_| metrics_port()).collect();
    let mut controllers: Vec<Proc> = controller_metrics
        .iter()
        .map(|addr| {
            let mut c = env.command(&["controller"], None);
            c.env("ROTA_METRICS__LISTEN", addr.to_string());
            Proc(c.spawn().expect("start rota"))
        })
        .collect();
    let _api = env.spawn(&["api"], None);
    let w1_metrics = metrics_port();
    let mut workers: BTreeMap<&str, Proc> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|w| {
            let mut c = env.command(&["worker"], Some(w));
            if w == "w1" {
                c.env("ROTA_METRICS__LISTEN", w1_metrics.to_string());
            }
            (w, Proc(c.spawn().expect("start rota")))
        })
        .collect();
    common::wait_ready(env.api).await;
    common::wait_all_led(env.api).await;

    let log: Log = Arc::default();
    let url = receiver(log.clone()).await;
    // Tasks are due from 10 s to 20 s from now, so submission (a few seconds) ends before the
    // first is due and the kills below land in the middle of the run.
    let start = Instant::now();
    let now = chrono::Utc::now() + chrono::Duration::seconds(10);
    let mut partition_of: HashMap<i64, u64> = HashMap::new();
    for chunk in 0..TASKS / 1_000 {
        let tasks: Vec<Value> = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                let due = now + chrono::Duration::milliseconds((10_000 * n / TASKS) as i64);
                // Most runs take 5 ms, one in twenty 1.5 s: the kill below lands on runs in
                // flight.
                let body = if n % 20 == 0 {
                    json!({"n": n, "work_ms": 1_500})
                } else {
                    json!({"n": n})
                };
                json!({"name": format!("t{n}"), "scheduledTime": due.to_rfc3339(), "handler": "http",
                       "maxAttempts": 5, "payload": {"url": url, "body": body}})
            })
            .collect();
        for t in common::create_batch(env.api, tasks).await {
            partition_of.insert(
                t["id"].as_i64().unwrap(),
                t["partitionId"].as_u64().unwrap(),
            );
        }
    }

    // A one-second schedule whose clock w2 owns (its partition is one w2 leads), so that the
    // SIGKILL below lands on the clock too: every tick must still fire exactly once.
    let (_, c) = http(env.api, "GET", "/cluster", None).await;
    let led_by_w2 = common::led_by(&c, "w2");
    let beat = (0..)
        .map(|i| format!("beat-{i}"))
        .find(|n| {
            let partition = rota_scheduler::schedule::schedule_partition(n, 12);
            led_by_w2.contains(&u64::from(partition))
        })
        .unwrap();
    let (status, body) = http(
        env.api,
        "POST",
        "/schedules",
        Some(
            &json!({"name": beat, "every": "1s", "task": {"name": "beat", "handler": "http",
                    "maxAttempts": 5, "payload": {"url": url, "body": "beat"}}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Mid-run (once w2 has long runs going on, a few seconds after the first task is due):
    // SIGKILL worker w2 and the leading controller, then start w4.
    let submitted = start.elapsed();
    assert!(
        submitted < Duration::from_secs(12),
        "submitting took {submitted:?}"
    );
    wait_for(
        "w2's long runs going on",
        Duration::from_secs(60),
        || async {
            start.elapsed() > Duration::from_secs(12)
                && rota_test_harness::receiver::going_on(&log, Some("w2")) >= 3
        },
    )
    .await;
    let in_flight = rota_test_harness::receiver::going_on(&log, Some("w2"));
    let (_, c) = http(env.api, "GET", "/cluster", None).await;
    let w2_partitions = common::led_by(&c, "w2");
    assert!(!w2_partitions.is_empty(), "w2 leads nothing: {c}");
    let leader = c["leader"]["controller"].as_str().unwrap().to_owned();
    let leader_epoch = c["leader"]["epoch"].as_u64().unwrap();
    let (_, mid_run) = common::http_text(w1_metrics, "GET", "/metrics", None).await;
    let completed = r#"rota_tasks_completed_total{handler="http"}"#;
    let completed_mid_run = common::sample(&mid_run, completed).unwrap_or(0.0);
    let killed_at = Instant::now();
    workers.remove("w2").unwrap().0.kill().unwrap();
    let index = controllers
        .iter()
        .position(|p| leader.ends_with(&format!("-{}", p.0.id())))
        .unwrap_or_else(|| panic!("leader {leader} is not one of ours"));
    controllers.remove(index).0.kill().unwrap();
    controller_metrics.remove(index);
    workers.insert("w4", env.spawn(&["worker"], Some("w4")));

    // Every task completes.
    let pool = env.tasks_pool().await;
    wait_for("every task COMPLETED", Duration::from_secs(120), || async {
        let done = "SELECT count(*) FROM rota_tasks WHERE status = 'COMPLETED' AND name <> 'beat'";
        number(&pool, done).await == TASKS as i64
    })
    .await;
    // The schedule goes on past the failover (w2 fired ticks at most a second ahead of its
    // death; later ones are the new owner's), then stops, and its last ticks' tasks end.
    let killed_ms = chrono::Utc::now().timestamp_millis() - killed_at.elapsed().as_millis() as i64;
    let past_failover = killed_ms + SESSION_MS as i64 + 3_000;
    wait_for(
        "ticks past the failover",
        Duration::from_secs(60),
        || async {
            let last = "SELECT coalesce(max(scheduled_at), 0) FROM rota_tasks WHERE name = 'beat'";
            number(&pool, last).await > past_failover
        },
    )
    .await;
    let path = format!("/schedules/{beat}/pause");
    assert_eq!(http(env.api, "POST", &path, None).await.0, 200);
    wait_for("every tick's task final", Duration::from_secs(60), || async {
        let open = "SELECT count(*) FROM rota_tasks WHERE name = 'beat' AND status IN ('PENDING', 'RUNNING')";
        number(&pool, open).await == 0
    })
    .await;
    // The command line shows the same schedule as the API: paused, its last runs with tasks.
    let mut show = env.command(&["admin", "schedules", "show", &beat], None);
    let out = rota_test_harness::output_of(&mut show, "rota admin schedules show");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["paused"], true, "{shown}");
    let runs = shown["lastRuns"].as_array().unwrap();
    assert_eq!(runs.len(), 10, "{shown}");
    assert!(runs.iter().all(|r| r["taskId"].is_i64()), "{shown}");
    // w1's own metrics moved under the load; the surviving controller reports its leadership.
    let (status, text) = common::http_text(w1_metrics, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let completed_at_end = common::sample(&text, completed).unwrap_or(0.0);
    println!("w1 completed {completed_mid_run} tasks before the kills, {completed_at_end} in all");
    assert!(
        completed_mid_run > 0.0 && completed_at_end > completed_mid_run,
        "w1's completions did not move: {completed_mid_run} then {completed_at_end}\n{text}"
    );
    assert!(
        common::sample(&text, "rota_owned_partitions").is_some_and(|p| p > 0.0),
        "{text}"
    );
    assert!(
        text.contains("rota_task_start_lag_seconds_bucket"),
        "{text}"
    );
    assert_eq!(
        common::http(w1_metrics, "GET", "/readyz", None).await.0,
        200
    );
    let (_, after) = http(env.api, "GET", "/cluster", None).await;
    let (_, survivor) = common::http_text(controller_metrics[0], "GET", "/metrics", None).await;
    assert_eq!(
        common::sample(&survivor, "rota_controller_leader"),
        Some(1.0),
        "{survivor}"
    );
    assert_eq!(
        common::sample(&survivor, "rota_controller_epoch"),
        after["leader"]["epoch"].as_u64().map(|e| e as f64),
        "{survivor}"
    );
    assert!(
        after["leader"]["epoch"]
            .as_u64()
            .is_some_and(|e| e > leader_epoch),
        "{after}"
    );
    assert_ne!(
        after["leader"]["controller"].as_str(),
        Some(leader.as_str()),
        "{after}"
    );

    let beats: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT id, idempotency_key, status, scheduled_at FROM rota_tasks WHERE name = 'beat' ORDER BY scheduled_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let epochs: HashMap<i64, i64> =
        sqlx::query_as::<_, (i64, i64)>("SELECT id, epoch FROM rota_tasks WHERE name <> 'beat'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let log = log.lock().unwrap();
    let mut twice = 0;
    let mut recovered: BTreeMap<u64, Duration> = BTreeMap::new();
    for (id, partition) in &partition_of {
        let mut runs = log
            .get(id)
            .cloned()
            .unwrap_or_else(|| panic!("task {id} never ran"));
        runs.sort_by_key(|e| e.start);
        if runs.len() > 1 {
            twice += 1;
            assert!(
                runs.iter().any(|e| e.worker == "w2"),
                "task {id} ran twice without w2: {runs:?}"
            );
            assert_one_at_a_time(&format!("task {id}"), &runs);
        }
        // The completion recorded is the last claim's: no completion under a stale epoch.
        assert_eq!(
            epochs[id] as u64,
            runs.last().unwrap().epoch,
            "task {id}: {runs:?}"
        );
        if w2_partitions.contains(partition) {
            for e in runs
                .iter()
                .filter(|e| e.worker != "w2" && e.start > killed_at)
            {
                let at = e.start - killed_at;
                let first = recovered.entry(*partition).or_insert(at);
                *first = (*first).min(at);
            }
        }
    }
    // The schedule: one task per tick from its first to its last, none twice, each run once at a
    // time, due at its tick; every tick fired though its clock's worker was killed.
    let ticks: Vec<i64> = beats
        .iter()
        .map(|(_, key, _, due)| {
            let tick: i64 = key.rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(tick, *due, "{key} is not due at its tick");
            tick
        })
        .collect();
    assert!(ticks.len() >= 15, "only {} ticks fired", ticks.len());
    let expected: Vec<i64> = (ticks[0]..=*ticks.last().unwrap()).step_by(1000).collect();
    assert_eq!(ticks, expected, "a tick missing or fired twice");
    assert!(
        ticks.iter().any(|&t| t > past_failover),
        "the schedule did not go on after w2's SIGKILL"
    );
    for (id, key, status, _) in &beats {
        if status == "COMPLETED" {
            let runs = log.get(id).unwrap_or_else(|| panic!("{key} never ran"));
            let mut runs = runs.clone();
            runs.sort_by_key(|e| e.start);
            assert_one_at_a_time(key, &runs);
        } else {
            assert_eq!(status, "CANCELLED", "{key}: {status}");
        }
    }
    println!(
        "{backend}: schedule {beat} fired {} ticks, each once, across w2's SIGKILL",
        ticks.len()
    );
    let failover = recovered.values().max().copied().unwrap_or_default();
    println!(
        "{backend} failover: w2's {} partitions claiming again elsewhere {:.2} s after SIGKILL (session timeout {:.1} s); \
         w2 had {in_flight} runs in flight when killed; {twice} of {TASKS} tasks ran twice",
        w2_partitions.len(),
        failover.as_secs_f64(),
        SESSION_MS as f64 / 1000.0
    );
    assert_eq!(
        recovered.len(),
        w2_partitions.len(),
        "some of w2's partitions never ran again"
    );
}

/// Every role starts from what `rota init` stored: a cluster never initialised, or a
/// configuration whose partition count differs from the cluster's, is refused at start with a
/// message saying what to do (an API taking its own count spread tasks over partitions nobody
/// owns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_refuse_a_cluster_not_initialised_or_configured_otherwise() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = rota_test_harness::postgres().fresh_database();
    let env = Env::on_zookeeper("refused", "never", db);
    let refused = |args: &[&str], partitions: &str| env.run_fails(args, partitions);
    for role in [
        &["api"][..],
        &["worker"],
        &["controller"],
        &["admin", "status"],
    ] {
        let err = refused(role, "12");
        assert!(err.contains("rota init"), "rota {role:?}: {err}");
    }
    env.run_ok(&["init"]);
    for role in [&["api"][..], &["worker"], &["controller"]] {
        let err = refused(role, "24");
        assert!(
            err.contains("12 partitions") && err.contains("24"),
            "rota {role:?}: {err}"
        );
    }
}

/// Two clusters, `staging` and `prod`, initialised on one PostgreSQL database and one
/// ZooKeeper: each runs its own tasks only, lists only its own, and neither's replicas end in
/// ERROR (once, prod's epochs were "stale" against staging's owners in shared tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_share_one_database_and_one_zookeeper_without_seeing_each_other() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = rota_test_harness::postgres().fresh_database();
    let log: Log = Arc::default();
    let url = receiver(log.clone()).await;
    let mut running = Vec::new();
    let mut envs = Vec::new();
    for (name, tag) in [("staging", "staging"), ("prod", "prod")] {
        let env = Env::on_zookeeper(tag, name, db.clone());
        env.run_ok(&["init"]);
        running.push(env.spawn(&["controller"], None));
        running.push(env.spawn(&["api"], None));
        running.push(env.spawn(&["worker"], Some(&format!("{name}-w1"))));
        envs.push((name, env));
    }
    for (_, env) in &envs {
        common::wait_ready(env.api).await;
        common::wait_all_led(env.api).await;
        let cluster = env.var("ROTA_CLUSTER__NAME").to_owned();
        let tasks = (0..20)
            .map(|n| {
                json!({"name": format!("{cluster}-{n}"), "handler": "http",
                       "payload": {"url": url, "body": n}})
            })
            .collect();
        assert_eq!(common::create_batch(env.api, tasks).await.len(), 20);
    }
    for (name, env) in &envs {
        let cluster = env.var("ROTA_CLUSTER__NAME").to_owned();
        wait_for(
            &format!("{cluster}'s tasks COMPLETED"),
            Duration::from_secs(60),
            || async {
                let (_, page) =
                    http(env.api, "GET", "/tasks?status=COMPLETED&limit=100", None).await;
                page["tasks"].as_array().is_some_and(|t| t.len() == 20)
            },
        )
        .await;
        let (_, page) = http(env.api, "GET", "/tasks?limit=100", None).await;
        let names: Vec<&str> = page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 20, "{cluster} lists {names:?}");
        assert!(
            names.iter().all(|n| n.starts_with(&format!("{cluster}-"))),
            "{cluster} lists another cluster's tasks: {names:?}"
        );
        let (_, view) = http(env.api, "GET", "/cluster", None).await;
        assert!(
            !view.to_string().contains("ERROR"),
            "{cluster} has replicas in ERROR: {view}"
        );
        // Its worker ran its own tasks, each once.
        let log = log.lock().unwrap();
        let worker = format!("{name}-w1");
        let ran = log
            .values()
            .flatten()
            .filter(|r| r.worker == worker)
            .count();
        assert_eq!(ran, 20, "{cluster}'s worker ran {ran} runs");
    }
    drop(running);
}

/// The API checks a task's `handler` against what live workers publish: with no worker live
/// it accepts any (nothing to ask); once one is, a handler no worker offers is a 400 that names
/// what is offered, and one that is offered is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_handlers_against_what_live_workers_offer() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = rota_test_harness::postgres().fresh_database();
    let env = Env::on_zookeeper("caps", "caps", db);
    env.run_ok(&["init"]);
    let _controller = env.spawn(&["controller"], None);
    let _api = env.spawn(&["api"], None);
    let create = |handler: &'static str| async move {
        let body =
            json!({"name": "t", "handler": handler, "scheduledTime": "2999-01-01T00:00:00Z"});
        http(env.api, "POST", "/tasks", Some(&body)).await
    };
    wait_for("the API", Duration::from_secs(60), || async {
        http(env.api, "GET", "/healthz", None).await.0 == 200
    })
    .await;
    let (status, body) = create("made-up").await;
    assert_eq!(status, 201, "no worker live: accepted unchecked: {body}");
    let _worker = env.spawn(&["worker"], Some("w1"));
    wait_for(
        "the worker's handlers checked",
        Duration::from_secs(60),
        || async { create("made-up").await.0 == 400 },
    )
    .await;
    let (_, refused) = create("made-up").await;
    assert_eq!(refused["error"], "unknown_handler", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("offered: http, log, noop"), "{message}");
    assert_eq!(create("http").await.0, 201);
}

/// A store that cannot be reached is named, with what stops it, rather than "pool timed out" or
/// "connection lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_stores_are_named_with_the_reason() {
    let closed = rota_test_harness::free_port();
    let env = |endpoints: String, storage: String| Env {
        vars: [
            ("ROTA_COORDINATION__BACKEND", "zookeeper".to_owned()),
            ("ROTA_COORDINATION__ENDPOINTS", endpoints),
            ("ROTA_COORDINATION__SESSION_TIMEOUT_MS", "2000".to_owned()),
            ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
            ("ROTA_STORAGE__URL", storage),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        api: "127.0.0.1:1".parse().unwrap(),
        tag: "unreachable",
    };
    let no_postgres = env(
        rota_test_harness::zookeeper().endpoint(),
        format!("postgres://rota@127.0.0.1:{closed}/rota"),
    );
    let err = no_postgres.run_fails(&["init"], "12");
    assert!(
        err.contains(&format!("PostgreSQL at 127.0.0.1:{closed}")) && err.contains("refused"),
        "{err}"
    );
    let no_zookeeper = env(
        format!("no-such-host.invalid:2181,127.0.0.1:{closed}"),
        rota_test_harness::postgres().fresh_database(),
    );
    let err = no_zookeeper.run_fails(&["worker"], "12");
    assert!(
        err.contains("no-such-host.invalid:2181: the name does not resolve")
            && err.contains(&format!("127.0.0.1:{closed}: Connection refused")),
        "{err}"
    );
}

/// The one number `sql` selects from the task store.
async fn number(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}
