//! Graceful handovers on the production topology, as separate OS processes on a real
//! ZooKeeper and PostgreSQL (started by the test harness): one controller, the API and three
//! workers. Tasks take seconds at a webhook receiver in this test (the built-in `http`
//! handler), which records when each run starts and ends and, like a real receiver, finishes a
//! run whose caller went away. While runs are under way a worker gets SIGTERM and a fourth one
//! starts; in a second wave an instance is disabled; in a third, leaving maintenance moves
//! partitions onto a fifth. No task may run twice, so none runs twice at once either: a worker
//! giving a partition up must wait for its runs and write their completions before the next
//! owner takes over. Other cases: a task-store outage, a frozen worker coming back, a worker cut
//! off from a ZooKeeper that caps session timeouts, a worker cut off from ZooKeeper while
//! PostgreSQL is frozen (SIGSTOP).

mod common;

use common::{Env, Proc, http, led_by, wait_for};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SESSION_MS: u64 = 4_000;
/// How long each run takes at the receiver: most of the session timeout, so a worker that
/// gave runs up after a fraction of the session (as the drain once did) would show.
const WORK: Duration = Duration::from_secs(3);
const WAVE: usize = 24;

use rota_test_harness::receiver::{Log, assert_one_at_a_time};

/// The receiver on loopback, each run taking `work`.
async fn receiver(log: Log, work: Duration) -> String {
    rota_test_harness::receiver::start(log, work, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// Submits a wave of tasks due now; returns their ids.
async fn wave(env: &Env, url: &str, name: &str) -> Vec<i64> {
    let due = chrono::Utc::now().to_rfc3339();
    let tasks: Vec<Value> = (0..WAVE)
        .map(|n| {
            json!({"name": format!("{name}-{n}"), "scheduledTime": due, "handler": "http",
                   "payload": {"url": url, "body": n}})
        })
        .collect();
    common::create_batch(env.api, tasks)
        .await
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect()
}

/// Waits until `count` of `ids` have started at the receiver.
async fn started(log: &Log, ids: &[i64], count: usize) {
    wait_for("runs under way", Duration::from_secs(30), || async {
        let log = log.lock().unwrap();
        ids.iter().filter(|id| log.contains_key(id)).count() >= count
    })
    .await;
}

async fn all_completed(pool: &sqlx::PgPool, count: usize) {
    wait_for("every task COMPLETED", Duration::from_secs(90), || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rota_tasks WHERE status = 'COMPLETED'")
                .fetch_one(pool)
                .await
                .unwrap();
        done == count as i64
    })
    .await;
}

/// SIGTERM, then waits for the process to exit (its drain included).
fn terminate(mut worker: Proc) {
    let pid = worker.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a cluster under test runs on: one controller, the API and workers w1-w3 on this
/// PostgreSQL database and ZooKeeper; a worker may have settings of its own (a store or
/// ZooKeeper reached through a proxy).
struct Topology {
    tag: &'static str,
    db: String,
    zookeeper: String,
    session_ms: u64,
    worker_vars: HashMap<&'static str, Vec<(&'static str, String)>>,
}

impl Topology {
    fn new(tag: &'static str) -> Self {
        Self {
            tag,
            db: rota_test_harness::postgres().fresh_database(),
            zookeeper: rota_test_harness::zookeeper().endpoint(),
            session_ms: SESSION_MS,
            worker_vars: HashMap::new(),
        }
    }
}

/// A running cluster.
struct Cluster {
    env: Env,
    workers: BTreeMap<&'static str, Proc>,
    _others: Vec<Proc>,
}

async fn cluster(topology: Topology) -> Cluster {
    let Topology {
        tag,
        db,
        zookeeper: endpoint,
        session_ms,
        worker_vars,
    } = topology;
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", rota_test_harness::free_port())
        .parse()
        .unwrap();
    let vars = vec![
        ("ROTA_COORDINATION__BACKEND", "zookeeper".to_owned()),
        ("ROTA_COORDINATION__ENDPOINTS", format!("[\"{endpoint}\"]")),
        (
            "ROTA_COORDINATION__SESSION_TIMEOUT_MS",
            session_ms.to_string(),
        ),
        ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
        ("ROTA_STORAGE__URL", db),
        ("ROTA_CLUSTER__NAME", format!("{tag}{}", std::process::id())),
        ("ROTA_CLUSTER__PARTITIONS", "12".to_owned()),
        ("ROTA_API__LISTEN", api.to_string()),
    ];
    let env = Env {
        vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        api,
        tag,
    };
    env.run_ok(&["init"]);
    let others = vec![env.spawn(&["controller"], None), env.spawn(&["api"], None)];
    let workers = ["w1", "w2", "w3"]
        .into_iter()
        .map(|w| {
            let mut c = env.command(&["worker"], Some(w));
            for (key, value) in worker_vars.get(w).into_iter().flatten() {
                c.env(key, value);
            }
            (w, Proc(c.spawn().expect("start rota")))
        })
        .collect();
    common::wait_ready(env.api).await;
    common::wait_all_led(env.api).await;
    Cluster {
        env,
        workers,
        _others: others,
    }
}

/// Every task of `ids` ran exactly once, to its end at the receiver; the workers that ran them.
fn ran_once_each(log: &Log, ids: &[i64]) -> std::collections::BTreeSet<String> {
    let log = log.lock().unwrap();
    let repeated: Vec<_> = ids
        .iter()
        .filter(|id| log.get(id).map_or(0, Vec::len) != 1)
        .map(|id| (id, log.get(id)))
        .collect();
    let workers: std::collections::BTreeSet<_> =
        log.values().flatten().map(|r| r.worker.clone()).collect();
    println!(
        "runs by worker: {workers:?}; tasks run more than once: {}",
        repeated.len()
    );
    assert!(
        repeated.is_empty(),
        "{} of {} tasks ran more than once (or never): {repeated:?}",
        repeated.len(),
        ids.len()
    );
    assert!(
        log.values()
            .flatten()
            .all(|r| r.end.is_some_and(|end| end - r.start >= WORK)),
        "a run did not finish at the receiver"
    );
    workers
}

/// One cluster at a time: each takes both cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_handovers_run_nothing_twice_on_zookeeper() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Cluster {
        env,
        mut workers,
        _others,
    } = cluster(Topology::new("handover")).await;
    let pool = env.tasks_pool().await;
    let log: Log = Arc::default();
    let url = receiver(log.clone(), WORK).await;

    // Wave 1: a worker stops (SIGTERM) and another joins while runs are under way.
    let first = wave(&env, &url, "first").await;
    started(&log, &first, WAVE / 2).await;
    terminate(workers.remove("w2").unwrap());
    workers.insert("w4", env.spawn(&["worker"], Some("w4")));
    all_completed(&pool, WAVE).await;
    leading(&env, "w4").await;

    // Wave 2: an instance is disabled while runs are under way.
    let second = wave(&env, &url, "second").await;
    started(&log, &second, WAVE / 2).await;
    admin(&env, &["disable", "w3"]);
    all_completed(&pool, 2 * WAVE).await;

    // Wave 3: in maintenance a fifth worker joins and gets nothing; leaving maintenance while
    // runs are under way rebalances onto it.
    admin(&env, &["maintenance", "on"]);
    workers.insert("w5", env.spawn(&["worker"], Some("w5")));
    let third = wave(&env, &url, "third").await;
    started(&log, &third, WAVE / 2).await;
    admin(&env, &["maintenance", "off"]);
    all_completed(&pool, 3 * WAVE).await;
    leading(&env, "w5").await;

    let ids: Vec<i64> = first.iter().chain(&second).chain(&third).copied().collect();
    let workers_seen = ran_once_each(&log, &ids);
    for w in ["w2", "w3", "w4"] {
        assert!(
            workers_seen.contains(w),
            "{w} ran nothing: {workers_seen:?}"
        );
    }
}

/// Whether `worker` leads a partition now, as `/cluster` shows it.
async fn leads(env: &Env, worker: &str) -> bool {
    let (_, c) = http(env.api, "GET", "/cluster", None).await;
    c["partitions"].is_array() && !led_by(&c, worker).is_empty()
}

/// Whether a grant of a top state to `worker` waits in its message queue (the controller sent
/// it; the worker has not finished the transition), read from ZooKeeper.
async fn grant_in_flight(env: &Env, worker: &str) -> bool {
    use rota_cluster::coordination::Coordination;
    use rota_model::Record;
    let endpoints: Vec<String> =
        serde_json::from_str(env.var("ROTA_COORDINATION__ENDPOINTS")).unwrap();
    let store = rota_zookeeper::ZooKeeperCoordination::new(endpoints.join(","));
    let session = store.connect(Duration::from_secs(10)).await.unwrap();
    let keys = rota_cluster::keys::ClusterKeys::new(env.var("ROTA_CLUSTER__NAME"));
    let dir = keys.messages(&rota_model::InstanceId::new(worker));
    let mut found = false;
    for child in session.children(&dir).await.unwrap_or_default() {
        if let Ok(Some(node)) = session.get(&format!("{dir}/{child}")).await {
            let message = rota_model::Message::decode(&node.value).unwrap();
            found |= message.transition.to == "MASTER";
        }
    }
    let _ = session.close().await;
    found
}

/// Waits until `worker` leads a partition.
async fn leading(env: &Env, worker: &str) {
    wait_for(
        &format!("{worker} leading a partition"),
        Duration::from_secs(60),
        || async { leads(env, worker).await },
    )
    .await;
}

/// `rota admin ARGS`, which must succeed.
fn admin(env: &Env, args: &[&str]) {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    env.run_ok(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_survive_a_20_s_postgres_outage_on_zookeeper() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut topology = Topology::new("outage");
    // The workers reach PostgreSQL through a proxy that the test cuts.
    let db = topology.db.clone();
    let port = db
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(port, _)| port.parse::<u16>().unwrap())
        .unwrap();
    let proxy = rota_test_harness::Proxy::start(port);
    let worker_db = db.replacen(&format!(":{port}/"), &format!(":{}/", proxy.port), 1);
    for w in ["w1", "w2", "w3"] {
        topology
            .worker_vars
            .insert(w, vec![("ROTA_STORAGE__URL", worker_db.clone())]);
    }
    let cluster = cluster(topology).await;
    let pool = cluster.env.tasks_pool().await;
    let log: Log = Arc::default();
    let url = receiver(log.clone(), WORK).await;
    let ids = wave(&cluster.env, &url, "outage").await;
    started(&log, &ids, WAVE / 2).await;
    // The runs under way end during the outage: their completions cannot be written then.
    let cut = Instant::now();
    proxy.partition();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let healed = Instant::now();
    proxy.heal();
    all_completed(&pool, WAVE).await;
    ran_once_each(&log, &ids);
    // The outage struck completions: runs that ended (their worker's wait over) while the
    // store was out of reach.
    let ended_in_outage = log
        .lock()
        .unwrap()
        .values()
        .flatten()
        .filter(|r| {
            r.caller_done
                .is_some_and(|done| done > cut && done < healed)
        })
        .count();
    println!("{ended_in_outage} runs ended during the outage");
    assert!(ended_in_outage > 0, "no run ended during the outage");
    drop(cluster);
}

/// Sends `signal` to a process.
fn signal(worker: &Proc, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_coming_back_takes_nothing_still_running() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = cluster(Topology::new("frozen")).await;
    let pool = cluster.env.tasks_pool().await;
    let log: Log = Arc::default();
    let url = receiver(log.clone(), WORK).await;
    // Wave 1 under way, then w2 freezes for 10 s (its session, 4 s, expires meanwhile: its
    // partitions move, and its runs are run again elsewhere, after they ended at the receiver).
    let first = wave(&cluster.env, &url, "first").await;
    started(&log, &first, WAVE / 2).await;
    wait_for("w2's runs going on", Duration::from_secs(30), || async {
        rota_test_harness::receiver::going_on(&log, Some("w2")) > 0
    })
    .await;
    let in_flight = rota_test_harness::receiver::going_on(&log, Some("w2"));
    let frozen = &cluster.workers["w2"];
    signal(frozen, "-STOP");
    // Until its session has expired and every partition it led has moved.
    wait_for("w2's partitions moved", Duration::from_secs(30), || async {
        !leads(&cluster.env, "w2").await
    })
    .await;
    println!("w2 had {in_flight} runs going on when frozen");
    // Wave 2 starts on the other workers; w2 comes back while it runs, and its partitions move
    // back to it: their runs must be over first.
    let second = wave(&cluster.env, &url, "second").await;
    started(&log, &second, WAVE / 2).await;
    signal(frozen, "-CONT");
    all_completed(&pool, 2 * WAVE).await;
    ran_once_each(&log, &second);
    let log = log.lock().unwrap();
    for id in &first {
        let mut runs = log[id].clone();
        runs.sort_by_key(|r| r.start);
        assert!(
            runs.len() <= 2,
            "task {id} ran {} times: {runs:?}",
            runs.len()
        );
        for pair in runs.windows(2) {
            assert!(
                pair[0].end.is_some_and(|end| end <= pair[1].start),
                "task {id} ran twice at once: {runs:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_a_capped_zookeeper_stops_before_its_tasks_move() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The server grants at most 4 s; the cluster asks for 30 s. A worker timing its step-down
    // from the 30 s it asked for would still be running when its partitions move.
    let zookeeper = rota_test_harness::zookeeper_capped(Duration::from_secs(4));
    let proxy = rota_test_harness::Proxy::start(zookeeper.port);
    let mut topology = Topology::new("capped");
    topology.zookeeper = zookeeper.endpoint();
    topology.session_ms = 30_000;
    topology.worker_vars.insert(
        "w2",
        vec![(
            "ROTA_COORDINATION__ENDPOINTS",
            format!("[\"{}\"]", proxy.endpoint()),
        )],
    );
    let cluster = cluster(topology).await;
    let pool = cluster.env.tasks_pool().await;
    let log: Log = Arc::default();
    // Runs longer than the granted session: the cut-off worker must give them up in time.
    let url = receiver(log.clone(), Duration::from_secs(8)).await;
    let ids = wave(&cluster.env, &url, "capped").await;
    started(&log, &ids, WAVE / 2).await;
    wait_for("w2's runs going on", Duration::from_secs(30), || async {
        rota_test_harness::receiver::going_on(&log, Some("w2")) > 0
    })
    .await;
    println!(
        "w2 had {} runs going on when cut off",
        rota_test_harness::receiver::going_on(&log, Some("w2"))
    );
    proxy.partition();
    all_completed(&pool, WAVE).await;
    let log = log.lock().unwrap();
    let mut moved = 0;
    for id in &ids {
        let mut runs = log[id].clone();
        runs.sort_by_key(|r| r.start);
        // The receiver may still be busy with the first run (its request was out), but the old
        // owner must have stopped waiting for it before the new owner started.
        moved += runs.len().saturating_sub(1);
        assert_one_at_a_time(&format!("task {id}"), &runs);
    }
    println!("runs given up by the cut-off worker and run again: {moved}");
    assert!(moved > 0, "nothing of w2's ran again elsewhere");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_while_postgres_is_frozen_stops_within_its_session() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A server of this test's own: it is frozen (SIGSTOP) under load.
    let postgres = rota_test_harness::private_postgres();
    let zookeeper = rota_test_harness::zookeeper();
    let proxy = rota_test_harness::Proxy::start(zookeeper.port);
    let mut topology = Topology::new("frozen-pg");
    topology.db = postgres.fresh_database();
    topology.worker_vars.insert(
        "w2",
        vec![(
            "ROTA_COORDINATION__ENDPOINTS",
            format!("[\"{}\"]", proxy.endpoint()),
        )],
    );
    let mut cluster = cluster(topology).await;
    let pool = cluster.env.tasks_pool().await;
    let log: Log = Arc::default();
    // Runs far longer than the session: the cut-off worker's are under way when it expires.
    let url = receiver(log.clone(), Duration::from_secs(20)).await;
    let ids = wave(&cluster.env, &url, "frozen-pg").await;
    started(&log, &ids, WAVE / 2).await;
    // The database stops answering, and w3 dies: once its session expires, its partitions are
    // granted to w1 and w2, whose ownership records hang in the frozen store. Then w2 loses
    // ZooKeeper with such a grant in flight: its step-down waits for the grant, and cannot
    // reach the store anyway; yet it must stop its runs before its session can expire.
    postgres.freeze();
    cluster.workers.remove("w3").unwrap().0.kill().unwrap();
    // Until w3's session has expired and a grant of one of its partitions to w2 is in flight:
    // its message waits in w2's queue while the ownership record hangs in the frozen store.
    wait_for(
        "a grant to w2 in flight",
        Duration::from_secs(30),
        || async { grant_in_flight(&cluster.env, "w2").await },
    )
    .await;
    let cut = Instant::now();
    proxy.partition();
    tokio::time::sleep(Duration::from_secs(8)).await;
    postgres.thaw();
    all_completed(&pool, WAVE).await;
    let session = Duration::from_millis(SESSION_MS);
    let log = log.lock().unwrap();
    let mut stopped_by_w2 = 0;
    for id in &ids {
        let mut runs = log[id].clone();
        runs.sort_by_key(|r| r.start);
        for run in runs.iter().filter(|r| r.worker == "w2") {
            // It cannot know it is cut off before its client notices; by its suspension
            // deadline (half the session) it starts nothing more.
            assert!(
                run.start < cut + session / 2,
                "task {id}: w2 started a run {:?} after it was cut off",
                run.start.saturating_duration_since(cut)
            );
            let done = run.caller_done.expect("the caller's end");
            assert!(
                done <= cut + session,
                "task {id}: w2 still waited on its run {:?} after it was cut off: {runs:?}",
                done - cut
            );
            stopped_by_w2 += usize::from(run.end.is_none_or(|end| end > done));
        }
        assert_one_at_a_time(&format!("task {id}"), &runs);
    }
    println!("runs the cut-off worker gave up: {stopped_by_w2}");
    assert!(
        stopped_by_w2 > 0,
        "w2 had no run under way when it was cut off"
    );
    drop(cluster);
}
