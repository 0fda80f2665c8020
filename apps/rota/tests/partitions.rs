//! Network partitions across hosts. Every role runs on a host of its own (a Linux network
//! namespace on one bridge; the test needs root, as CI has): ZooKeeper, PostgreSQL, two
//! controllers, the API and three workers; the webhook receiver the tasks call is this test, on
//! the bridge. A client in the test submits a steady stream of tasks through the API, each
//! taking 2 s at the receiver, while links fail the way real networks fail, silently (packets
//! dropped, nobody told), one fault at a time with runs in flight:
//!
//! 1. a worker cut off from ZooKeeper but not from PostgreSQL (the zombie: its session expires
//!    on the server while it can still reach the database);
//! 2. the leading controller cut off from everything, and a worker SIGKILLed meanwhile (only a
//!    controller can move its partitions: the other one must take over);
//! 3. a worker cut off from PostgreSQL only;
//! 4. a lossy link (30% of packets dropped both ways) between a worker and both stores;
//! 5. PostgreSQL crashed (immediate stop) and restarted;
//! 6. ZooKeeper killed and restarted.
//!
//! A history is recorded throughout: the receiver records each run's task, worker, epoch, start
//! and when the worker stopped waiting for it (its answer, or the connection dropped under an
//! aborted run); triggers in PostgreSQL record every applied claim, completion, requeue and
//! change of a partition's owner with the partition's grant at that instant. Checked afterwards:
//! no task lost (every one COMPLETED), no two runs of a task overlapping, no claim or completion
//! applied outside the partition's current grant, grants' epochs only rising, every run made
//! under a claim the store applied, no run after the task's completion, the completion being
//! the last run's; and after each heal the cluster whole again (every worker live, every
//! partition led by a live instance, no due task waiting) within [`RECOVERY_BOUND`].

mod common;

use common::{Env, Proc, http, wait_for};
use rota_test_harness::netns::{Host, Network, NsPostgres, NsZooKeeper};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SESSION_MS: u64 = 4_000;
/// How long each run takes at the receiver.
const WORK: Duration = Duration::from_secs(2);
const PARTITIONS: u32 = 12;
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];
/// Tasks the client submits per second, each due at once.
const RATE: u64 = 10;
/// How long a link stays cut.
const CUT: Duration = Duration::from_secs(12);
/// How long a crashed store stays down.
const RESTART: Duration = Duration::from_secs(3);
/// After a fault heals, the cluster is whole again within this (docs/testing.md): a worker
/// reconnects and rejoins (its old session has ended: a new one), the controller moves
/// partitions back, each move waiting for the runs in flight (2 s here), and a store call that
/// hung on a dead connection gives up after `storage.timeout_ms` (10 s).
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// While a worker or the leader is cut off, the rest of the cluster takes its work over within
/// this: its session expires (4 s), the controller moves its partitions (the leader's own
/// session first, when the leader is the one cut off).
const FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// Runs going on at the receiver before each fault strikes (about 20 at the steady rate).
const IN_FLIGHT: usize = 10;
/// A due task counts as waiting once it is this late.
const LATE_MS: i64 = 2_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

use rota_test_harness::receiver::{Log, Run};

/// The receiver, on the test's own address on the network: records each run (its times in ms
/// since the epoch compare with PostgreSQL's clock) and answers 200 after [`WORK`].
async fn receiver(log: Log, on: std::net::Ipv4Addr) -> String {
    rota_test_harness::receiver::start(log, WORK, on.into()).await
}

/// Waits until the receiver has at least `count` runs going on (of `worker`, or of any): a fault
/// strikes work in flight.
async fn runs_going_on(log: &Log, worker: Option<&str>, count: usize) {
    wait_for("runs going on", Duration::from_secs(60), || async {
        rota_test_harness::receiver::going_on(log, worker) >= count
    })
    .await;
}

/// The client: submits [`RATE`] tasks a second, each due at once, until told to stop; a batch
/// the API refuses with a 5xx (or cannot be reached) is sent again with the same idempotency
/// keys, as a client would. Records every created task's id and due time.
async fn client(
    api: std::net::SocketAddr,
    url: String,
    created: Arc<Mutex<BTreeMap<i64, i64>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let task = json!({"name": format!("t{n}"), "handler": "http", "maxAttempts": 20,
                          "idempotencyKey": format!("feed-{n}"),
                          "payload": {"url": url, "body": n}});
        n += 1;
        loop {
            let (status, body) = http(
                api,
                "POST",
                "/tasks/batch",
                Some(&json!({ "tasks": [task] })),
            )
            .await;
            if status == 201 {
                let t = &body["tasks"][0];
                let due =
                    chrono::DateTime::parse_from_rfc3339(t["scheduledTime"].as_str().unwrap())
                        .unwrap()
                        .timestamp_millis();
                created
                    .lock()
                    .unwrap()
                    .insert(t["id"].as_i64().unwrap(), due);
                break;
            }
            assert!(
                status == 0 || status >= 500,
                "the API refused a task: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Triggers recording every applied claim, end of a claim (completion, release, take-back) and
/// change of a partition's owner, each with the partition's grant at that instant, in the
/// store's own order. Claims are recorded per batch (a row of `rota_claims` naming its tasks;
/// no task row is written): each claim row becomes one PENDING -> RUNNING change per task, and
/// a task row written with a new `last_claim` ends that claim (RUNNING -> its new status, under
/// the claim's owner and epoch, kept in `rota_test_claims` since the claim row may be gone).
const HISTORY: &str = r#"
CREATE TABLE rota_test_history (
    seq         BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    task        BIGINT,
    partition   INTEGER NOT NULL,
    old_status  TEXT,
    new_status  TEXT,
    old_owner   TEXT,
    old_epoch   BIGINT,
    new_owner   TEXT,
    new_epoch   BIGINT,
    grant_owner TEXT,
    grant_epoch BIGINT
);
CREATE TABLE rota_test_claims (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, epoch BIGINT NOT NULL);
CREATE FUNCTION rota_test_claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rota_test_claims VALUES (NEW.id, NEW.owner, NEW.epoch);
    INSERT INTO rota_test_history (task, partition, old_status, new_status, new_owner,
        new_epoch, grant_owner, grant_epoch)
    SELECT m.id, NEW.partition, 'PENDING', 'RUNNING', NEW.owner, NEW.epoch, o.owner, o.epoch
    FROM unnest(NEW.tasks) AS m(id)
    LEFT JOIN rota_partition_owners o ON o.partition = NEW.partition;
    RETURN NULL;
END $$;
CREATE TRIGGER rota_test_claimed AFTER INSERT ON rota_claims FOR EACH ROW
    EXECUTE FUNCTION rota_test_claimed();
CREATE FUNCTION rota_test_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended BOOLEAN := OLD.last_claim IS DISTINCT FROM NEW.last_claim;
BEGIN
    INSERT INTO rota_test_history (task, partition, old_status, new_status, old_owner,
        old_epoch, new_owner, new_epoch, grant_owner, grant_epoch)
    SELECT NEW.id, NEW.partition, CASE WHEN ended THEN 'RUNNING' ELSE OLD.status END,
        NEW.status, k.owner, k.epoch, NULL, NEW.epoch, o.owner, o.epoch
    FROM (SELECT 1) one
    LEFT JOIN rota_partition_owners o ON o.partition = NEW.partition
    LEFT JOIN rota_test_claims k ON ended AND k.id = NEW.last_claim;
    RETURN NULL;
END $$;
CREATE TRIGGER rota_test_task_changed AFTER UPDATE ON rota_tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.last_claim IS DISTINCT FROM NEW.last_claim)
    EXECUTE FUNCTION rota_test_task_changed();
CREATE FUNCTION rota_test_granted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rota_test_history (partition, new_owner, new_epoch, grant_owner, grant_epoch)
    VALUES (NEW.partition, NEW.owner, NEW.epoch, NEW.owner, NEW.epoch);
    RETURN NULL;
END $$;
CREATE TRIGGER rota_test_granted AFTER INSERT OR UPDATE ON rota_partition_owners FOR EACH ROW
    EXECUTE FUNCTION rota_test_granted();
"#;

/// A task not yet COMPLETED: id, partition, status, due time, attempts, owner, last error.
type OpenTask = (i64, i32, String, i64, i32, Option<String>, Option<String>);

/// One row of the store's history.
#[derive(Debug)]
struct Change {
    #[allow(dead_code)] // Shown in failure messages: the store's order.
    seq: i64,
    at_ms: i64,
    task: Option<i64>,
    partition: i32,
    old_status: Option<String>,
    new_status: Option<String>,
    old_owner: Option<String>,
    old_epoch: Option<i64>,
    new_owner: Option<String>,
    new_epoch: Option<i64>,
    grant_owner: Option<String>,
    grant_epoch: Option<i64>,
}

impl Change {
    fn from_row(row: &sqlx::postgres::PgRow) -> Change {
        use sqlx::Row;
        Change {
            seq: row.get("seq"),
            at_ms: row.get("at_ms"),
            task: row.get("task"),
            partition: row.get("partition"),
            old_status: row.get("old_status"),
            new_status: row.get("new_status"),
            old_owner: row.get("old_owner"),
            old_epoch: row.get("old_epoch"),
            new_owner: row.get("new_owner"),
            new_epoch: row.get("new_epoch"),
            grant_owner: row.get("grant_owner"),
            grant_epoch: row.get("grant_epoch"),
        }
    }
}

/// The cluster under test and what the test needs to reach it.
struct Cluster {
    env: Env,
    pool: sqlx::PgPool,
    workers: BTreeMap<&'static str, (Host, Option<Proc>)>,
    controllers: Vec<(Host, Proc)>,
}

impl Cluster {
    fn start_worker(&mut self, name: &'static str) {
        let (host, proc) = self.workers.get_mut(name).unwrap();
        let started = self.env.command_on(host, &["worker"], Some(name)).spawn();
        *proc = Some(Proc(started.expect("start rota")));
    }

    fn worker(&self, name: &str) -> &Host {
        &self.workers[name].0
    }

    /// Whether the cluster is whole: each of `live` live and none of `gone`, every partition's
    /// MASTER on a live instance, and no due task waiting longer than [`LATE_MS`]; if not, what
    /// is missing.
    async fn whole(&self, live: &[&str], gone: &[&str]) -> Result<(), String> {
        let (status, c) = http(self.env.api, "GET", "/cluster", None).await;
        if status != 200 {
            return Err(format!("GET /cluster: {status} {c}"));
        }
        let alive: Vec<&str> = c["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["live"] == true)
            .filter_map(|i| i["id"].as_str())
            .collect();
        if let Some(w) = live.iter().find(|w| !alive.contains(w)) {
            return Err(format!("{w} is not live"));
        }
        if let Some(w) = gone.iter().find(|w| alive.contains(w)) {
            return Err(format!("{w} is still live"));
        }
        let unled: Vec<&Value> = c["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                !p["holders"].as_array().unwrap().iter().any(|h| {
                    h["state"] == "MASTER" && alive.contains(&h["instance"].as_str().unwrap_or(""))
                })
            })
            .collect();
        if !unled.is_empty() {
            return Err(format!("partitions without a live MASTER: {unled:?}"));
        }
        let waiting: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, count(*) FROM rota_tasks WHERE status = 'PENDING' \
             AND scheduled_at < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1 \
             AND id NOT IN (SELECT unnest(tasks) FROM rota_claims) \
             GROUP BY partition ORDER BY partition",
        )
        .bind(LATE_MS)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("PostgreSQL: {e}"))?;
        if !waiting.is_empty() {
            return Err(format!("due tasks waiting (partition, count): {waiting:?}"));
        }
        Ok(())
    }

    /// Polls until the cluster is whole (see [`Cluster::whole`]); how long that took, failing
    /// past `bound`.
    async fn until_whole(
        &self,
        what: &str,
        live: &[&str],
        gone: &[&str],
        bound: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let Err(missing) = self.whole(live, gone).await else {
                break;
            };
            assert!(
                start.elapsed() < bound,
                "{what}: the cluster was not whole within {bound:?}: {missing}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = start.elapsed();
        eprintln!("{what}: whole after {:.1} s", took.as_secs_f64());
        took
    }

    /// Once a fault has healed: waits until the cluster is whole again with every worker live,
    /// within [`RECOVERY_BOUND`], and returns what the phase saw.
    /// A fault the cluster waits out: strikes it, holds it `held`, heals it, and waits until
    /// the cluster is whole again.
    async fn waited_out<T>(
        &self,
        name: &'static str,
        hit: Option<&'static str>,
        held: Duration,
        strike: impl FnOnce() -> T,
        heal: impl FnOnce(),
    ) -> Phase {
        let at_ms = now_ms();
        strike();
        tokio::time::sleep(held).await;
        heal();
        self.healed(name, hit, at_ms, None).await
    }

    async fn healed(
        &self,
        name: &'static str,
        hit: Option<&'static str>,
        at_ms: i64,
        failover: Option<Duration>,
    ) -> Phase {
        let what = format!("{name}, healed");
        let recovery = self.until_whole(&what, &WORKERS, &[], RECOVERY_BOUND).await;
        Phase {
            name,
            hit,
            at_ms,
            failover,
            recovery,
        }
    }

    /// The host and process index of the leading controller, and its epoch.
    async fn leader(&self) -> (usize, String, u64) {
        let (_, c) = http(self.env.api, "GET", "/cluster", None).await;
        let name = c["leader"]["controller"].as_str().unwrap().to_owned();
        let epoch = c["leader"]["epoch"].as_u64().unwrap();
        let index = self
            .controllers
            .iter()
            .position(|(_, p)| name.ends_with(&format!("-{}", p.0.id())))
            .unwrap_or_else(|| panic!("leader {name} is not one of ours"));
        (index, name, epoch)
    }
}

/// What one fault did: how long the rest of the cluster took to take the work over while it
/// lasted, and how long the cluster took to be whole again after it healed.
struct Phase {
    name: &'static str,
    /// The worker the fault hit (`None`: every worker), and when (ms since the epoch).
    hit: Option<&'static str>,
    at_ms: i64,
    failover: Option<Duration>,
    recovery: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_between_hosts_lose_nothing_and_never_run_a_task_twice_at_once() {
    let net = Network::new();
    let zk_host = net.host("zk");
    let pg_host = net.host("pg");
    let zk = NsZooKeeper::start(&net, &zk_host);
    let pg = NsPostgres::start(&net, &pg_host);
    let api_host = net.host("api");
    let api: std::net::SocketAddr = (api_host.addr, 8080).into();
    let vars = [
        ("ROTA_COORDINATION__BACKEND", "zookeeper".to_owned()),
        (
            "ROTA_COORDINATION__ENDPOINTS",
            format!("[\"{}\"]", zk.endpoint()),
        ),
        (
            "ROTA_COORDINATION__SESSION_TIMEOUT_MS",
            SESSION_MS.to_string(),
        ),
        ("ROTA_STORAGE__BACKEND", "postgres".to_owned()),
        ("ROTA_STORAGE__URL", pg.fresh_database()),
        ("ROTA_CLUSTER__NAME", "partitions".to_owned()),
        ("ROTA_CLUSTER__PARTITIONS", PARTITIONS.to_string()),
        ("ROTA_API__LISTEN", api.to_string()),
        // A network of the test's own, reached by nothing else.
        ("ROTA_API__ALLOW_UNAUTHENTICATED", "true".to_owned()),
        ("RUST_LOG", "info,sqlx=warn".to_owned()),
    ];
    let env = Env {
        vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        api,
        tag: "partitions",
    };
    env.run_ok(&["init"]);
    let pool = env.tasks_pool().await;
    sqlx::raw_sql(HISTORY).execute(&pool).await.unwrap();

    let controllers = ["c1", "c2"]
        .map(|name| {
            let host = net.host(name);
            let proc = Proc(
                env.command_on(&host, &["controller"], None)
                    .spawn()
                    .unwrap(),
            );
            (host, proc)
        })
        .into();
    let _api = Proc(env.command_on(&api_host, &["api"], None).spawn().unwrap());
    let workers = WORKERS.map(|name| (name, (net.host(name), None))).into();
    let mut cluster = Cluster {
        env,
        pool,
        workers,
        controllers,
    };
    for w in WORKERS {
        cluster.start_worker(w);
    }
    common::wait_ready(api).await;
    cluster
        .until_whole("start", &WORKERS, &[], Duration::from_secs(60))
        .await;

    let log: Log = Arc::default();
    let url = receiver(log.clone(), net.gateway()).await;
    let created: Arc<Mutex<BTreeMap<i64, i64>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let feeding = tokio::spawn(client(api, url, created.clone(), stopped));

    let mut phases = Vec::new();
    let [w1, w3] = ["w1", "w3"].map(|w| cluster.worker(w).clone());
    let (w1, w3, zk_host, pg_host) = (&w1, &w3, &zk_host, &pg_host);

    runs_going_on(&log, Some("w1"), 3).await;
    // 1. The zombie: w1 cut off from ZooKeeper, not from PostgreSQL.
    let (cut, at_ms) = (Instant::now(), now_ms());
    net.cut(w1, zk_host);
    let failover = cluster
        .until_whole(
            "w1 cut off from ZooKeeper",
            &["w2", "w3"],
            &["w1"],
            FAILOVER_BOUND,
        )
        .await;
    tokio::time::sleep(CUT.saturating_sub(cut.elapsed())).await;
    net.heal(w1, zk_host);
    let what = "a worker cut off from ZooKeeper, not from PostgreSQL";
    let healed = cluster.healed(what, Some("w1"), at_ms, Some(failover));
    phases.push(healed.await);

    runs_going_on(&log, Some("w2"), 3).await;
    // 2. The leading controller cut off from everything; w2 SIGKILLed a second later, which
    //    only a leading controller can answer (its partitions must move).
    let (index, old_leader, old_epoch) = cluster.leader().await;
    let leader_host = cluster.controllers[index].0.clone();
    let cut = Instant::now();
    net.isolate(&leader_host);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w2 = cluster.workers.get_mut("w2").unwrap();
    let at_ms = now_ms();
    drop(w2.1.take()); // SIGKILL
    let failover = cluster
        .until_whole(
            "the leader cut off and w2 killed",
            &["w1", "w3"],
            &["w2"],
            FAILOVER_BOUND,
        )
        .await;
    let (_, new_leader, new_epoch) = cluster.leader().await;
    assert_ne!(new_leader, old_leader, "the cut-off controller still leads");
    assert!(new_epoch > old_epoch, "{new_epoch} after {old_epoch}");
    cluster.start_worker("w2");
    tokio::time::sleep(CUT.saturating_sub(cut.elapsed())).await;
    net.heal_host(&leader_host);
    let what = "the leading controller cut off, a worker SIGKILLed meanwhile";
    let healed = cluster.healed(what, Some("w2"), at_ms, Some(failover));
    phases.push(healed.await);

    runs_going_on(&log, Some("w3"), 3).await;
    // 3. w3 cut off from PostgreSQL only.
    let what = "a worker cut off from PostgreSQL only";
    let (strike, heal) = (|| net.cut(w3, pg_host), || net.heal(w3, pg_host));
    phases.push(
        cluster
            .waited_out(what, Some("w3"), CUT, strike, heal)
            .await,
    );

    runs_going_on(&log, Some("w1"), 3).await;
    // 4. A lossy link between w1 and both stores.
    let what = "30% packet loss between a worker and both stores";
    let strike = || [zk_host, pg_host].map(|store| net.lossy(w1, store, 0.3));
    let heal = || net.heal_host(w1);
    phases.push(
        cluster
            .waited_out(what, Some("w1"), CUT, strike, heal)
            .await,
    );

    runs_going_on(&log, None, IN_FLIGHT).await;
    // 5. PostgreSQL crashed and restarted.
    let what = "PostgreSQL crashed, restarted 3 s later";
    let (strike, heal) = (|| pg.crash(), || pg.start_again());
    phases.push(cluster.waited_out(what, None, RESTART, strike, heal).await);

    runs_going_on(&log, None, IN_FLIGHT).await;
    // 6. ZooKeeper killed and restarted.
    let what = "ZooKeeper killed, restarted 3 s later";
    let (strike, heal) = (|| zk.crash(), || zk.start_again());
    phases.push(cluster.waited_out(what, None, RESTART, strike, heal).await);

    // The client stops; every task it created must complete.
    stop.send(true).unwrap();
    feeding.await.unwrap();
    let created = created.lock().unwrap().clone();
    let pool = &cluster.pool;
    let start = Instant::now();
    loop {
        let open: Vec<OpenTask> = sqlx::query_as(
            "SELECT id, partition, status, scheduled_at, attempts, owner, last_error \
                 FROM rota_tasks WHERE status <> 'COMPLETED' ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if open.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let (_, c) = http(api, "GET", "/cluster", None).await;
            panic!(
                "{} tasks not COMPLETED 120 s after the last fault (id, partition, status, due, \
                 attempts, owner, error): {:?}\ncluster: {c}",
                open.len(),
                &open[..open.len().min(20)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, name, idempotency_key FROM rota_tasks ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let unknown: Vec<_> = stored
        .iter()
        .filter(|(id, ..)| !created.contains_key(id))
        .collect();
    assert!(
        unknown.is_empty() && stored.len() == created.len(),
        "{} tasks stored, {} created; stored but never answered to the client: {unknown:?}",
        stored.len(),
        created.len()
    );

    let history: Vec<Change> = sqlx::query("SELECT * FROM rota_test_history ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(Change::from_row)
        .collect();
    let log = log.lock().unwrap().clone();
    let figures = check(&created, &log, &history);
    for p in &phases {
        // Each fault hit work in flight: runs its worker had started and not ended.
        let in_flight = log
            .values()
            .flatten()
            .filter(|r| p.hit.is_none_or(|w| r.worker == w))
            .filter(|r| r.start_ms <= p.at_ms && r.caller_done_ms.is_none_or(|end| end > p.at_ms))
            .count();
        assert!(in_flight > 0, "{}: no run in flight when it struck", p.name);
        let failover = p
            .failover
            .map(|f| format!("work taken over in {:.1} s, ", f.as_secs_f64()))
            .unwrap_or_default();
        println!(
            "{}: {in_flight} runs in flight when it struck, {failover}whole {:.1} s after the \
             heal",
            p.name,
            p.recovery.as_secs_f64()
        );
    }
    println!("{figures}");
}

/// Checks the recorded history; a summary of what it held.
fn check(created: &BTreeMap<i64, i64>, log: &HashMap<i64, Vec<Run>>, history: &[Change]) -> String {
    // Grants: each partition's epochs only rise (a grant written again, by its owner at its
    // epoch, changes nothing).
    let mut grants: HashMap<i32, (i64, String)> = HashMap::new();
    let mut claims: HashMap<(i64, String, i64), i64> = HashMap::new();
    let mut completions: HashMap<i64, &Change> = HashMap::new();
    let (mut requeues, mut grant_count) = (0, 0);
    for c in history {
        let Some(task) = c.task else {
            let grant = (c.new_epoch.unwrap(), c.new_owner.clone().unwrap());
            if let Some(before) = grants.insert(c.partition, grant.clone()) {
                assert!(
                    grant.0 > before.0 || grant == before,
                    "partition {}: {grant:?} granted after {before:?}: {c:?}",
                    c.partition
                );
            }
            grant_count += 1;
            continue;
        };
        let grant = (c.grant_owner.as_deref(), c.grant_epoch);
        match (c.old_status.as_deref(), c.new_status.as_deref()) {
            (Some("PENDING"), Some("RUNNING")) => {
                assert_eq!(
                    (c.new_owner.as_deref(), c.new_epoch),
                    grant,
                    "a claim applied outside the partition's grant: {c:?}"
                );
                claims.insert(
                    (task, c.new_owner.clone().unwrap(), c.new_epoch.unwrap()),
                    c.at_ms,
                );
            }
            (Some("RUNNING"), Some("COMPLETED" | "FAILED")) => {
                assert_eq!(
                    (c.old_owner.as_deref(), c.old_epoch),
                    grant,
                    "a completion applied outside the partition's grant: {c:?}"
                );
                assert!(
                    completions.insert(task, c).is_none(),
                    "task {task} completed twice"
                );
            }
            (Some("RUNNING"), Some("PENDING")) => {
                // Released or failed by its owner under the grant, or taken back by a newer
                // grant; never by an older one.
                assert!(
                    c.old_epoch <= c.grant_epoch,
                    "a claim taken back under an older grant: {c:?}"
                );
                requeues += 1;
            }
            other => panic!("an unexpected change {other:?}: {c:?}"),
        }
    }

    let (mut reruns, mut aborted) = (0, 0);
    let mut worst_start = 0;
    for (id, due) in created {
        let mut runs = log
            .get(id)
            .cloned()
            .unwrap_or_else(|| panic!("task {id} never ran"));
        runs.sort_by_key(|r| r.start_ms);
        let completion = completions
            .get(id)
            .unwrap_or_else(|| panic!("task {id}: no completion applied"));
        assert_eq!(
            completion.new_status.as_deref(),
            Some("COMPLETED"),
            "task {id}"
        );
        for r in &runs {
            assert!(
                claims.contains_key(&(*id, r.worker.clone(), r.epoch as i64)),
                "task {id}: a run on {} at epoch {} without a claim the store applied: {runs:?}",
                r.worker,
                r.epoch
            );
            assert!(
                r.start_ms <= completion.at_ms,
                "task {id} ran after its completion was applied ({completion:?}): {runs:?}"
            );
        }
        for pair in runs.windows(2) {
            let ended = pair[0]
                .caller_done_ms
                .unwrap_or_else(|| panic!("task {id}: a run never ended: {runs:?}"));
            assert!(
                ended <= pair[1].start_ms,
                "task {id} ran twice at once: {runs:?}"
            );
            aborted += 1;
        }
        let last = runs.last().unwrap();
        assert_eq!(
            (completion.old_owner.as_deref(), completion.old_epoch),
            (Some(last.worker.as_str()), Some(last.epoch as i64)),
            "task {id}: the completion is not its last run's: {runs:?}"
        );
        if runs.len() > 1 {
            reruns += 1;
        }
        worst_start = worst_start.max(runs[0].start_ms - due);
    }
    format!(
        "history: {} tasks, {} runs ({reruns} tasks ran again after {aborted} runs cut short), \
         {} claims, {} completions, {requeues} claims given back or taken back, {grant_count} \
         grants; the latest first start {:.1} s after its due time",
        created.len(),
        log.values().map(Vec::len).sum::<usize>(),
        claims.len(),
        completions.len(),
        worst_start as f64 / 1000.0
    )
}
