//! # rota-postgres
//!
//! A [`TaskStore`] on PostgreSQL, for production. Each call is one transaction and, where it
//! matters, one statement:
//! - **insert** reserves ids from the sequence, computes partitions, and inserts the whole batch
//!   with one `INSERT ... SELECT FROM UNNEST(...)`; idempotency keys are unique in the table
//!   (`ON CONFLICT DO NOTHING`, then the originals are read back);
//! - **claim** is one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)` joined with the
//!   partition-ownership fence (owner rows locked `FOR SHARE`, so an ownership change waits for
//!   claims in progress and then requeues them);
//! - **completion** is one `UPDATE ... FROM UNNEST(...)` for the whole batch, fenced the same way;
//! - a partial index covers the pending due tasks per partition;
//! - after every insert commits, the partitions it filled are announced with
//!   `NOTIFY rota_tasks_<cluster>, '<partition>,<partition>...'`, by one background task per store that
//!   gathers whatever inserts committed meanwhile into one statement. (PostgreSQL serialises
//!   every notifying transaction's commit on one lock: notifying from each insert made
//!   concurrent single creates wait on each other.) A listener turns notifications into
//!   [`TaskStore::inserted`] wake-ups, so workers of other processes wake at once; a
//!   notification lost to a crash right after an insert costs its workers at most their idle
//!   backstop.
//!
//! **Clusters apart**: each cluster's tables live in a schema of their own, `rota_<cluster>`
//! (every connection's `search_path`), and its inserts are announced on a channel of its own, so
//! several clusters share one database without seeing each other's tasks or owners. Tables of
//! an earlier rota, unscoped in `public`, are adopted by the first cluster that opens the
//! database (with a warning naming it).
//!
//! **Deadlines**: every statement runs under the configured `statement_timeout`, and waiting for
//! a pooled connection is bounded by the same time, so a hung or unreachable database gives
//! [`StoreError::Unavailable`] in bounded time rather than a call that never returns.
//!
//! Migrations are embedded and versioned in each cluster's `rota_schema`; a database with a
//! newer schema than this build knows is refused with a clear error.

use rota_model::{Epoch, InstanceId};
use rota_scheduler::schedule::Schedule;
use rota_scheduler::{
    Backlog, CancelOutcome, Claim, Claimed, Completion, CompletionOutcome, DueSchedules,
    ListFilter, Millis, NewTask, Page, ScheduleWrite, ScheduleWritten, StoreError, Task, TaskId,
    TaskStatus, TaskStore, partition_for,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The channel of a cluster's insert notifications is this and the cluster's name.
const CHANNEL_PREFIX: &str = "rota_tasks_";

/// How to open the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The cluster whose tasks the store holds (letters, digits, `-`, `_`, `.`; its schema name,
    /// `rota_<cluster>`, must fit PostgreSQL's 63 bytes).
    pub cluster: String,
    /// Longest a statement may run, and a connection may be waited for, before the call fails
    /// as [`StoreError::Unavailable`].
    pub statement_timeout: Duration,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl Settings {
    /// The defaults for `cluster`: 10 s per statement, 16 connections.
    pub fn for_cluster(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            statement_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }

    /// The cluster's schema, as a quoted identifier; refused if PostgreSQL could not hold it.
    fn schema(&self) -> Result<String, StoreError> {
        let valid = !self.cluster.is_empty()
            && self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let name = format!("rota_{}", self.cluster);
        if !valid || name.len() > 63 {
            return Err(StoreError::Invalid(format!(
                "cluster name {:?} cannot name a PostgreSQL schema: use at most 58 letters, \
                 digits, '-', '_' or '.'",
                self.cluster
            )));
        }
        Ok(format!("\"{name}\""))
    }
}

/// Schema migrations, in order; `rota_schema.version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE rota_tasks (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT    NOT NULL,
    payload         JSONB   NOT NULL, -- JSON since migration 4
    handler         TEXT,
    partition_key   TEXT,
    partition       INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    scheduled_at    BIGINT  NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    last_error      TEXT,
    owner           TEXT,
    epoch           BIGINT,
    lease_until     BIGINT,
    idempotency_key TEXT UNIQUE,
    created_at      BIGINT  NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT
);
CREATE INDEX rota_tasks_pending_due ON rota_tasks (partition, scheduled_at, id) WHERE status = 'PENDING';
CREATE INDEX rota_tasks_running ON rota_tasks (partition) WHERE status = 'RUNNING';
CREATE TABLE rota_partition_owners (
    partition INTEGER PRIMARY KEY,
    owner     TEXT    NOT NULL,
    epoch     BIGINT  NOT NULL
);
"#,
    // Most tasks have no idempotency key: index only those that do, instead of writing a NULL entry
    // for every version of every task.
    r#"
CREATE UNIQUE INDEX rota_tasks_idempotency_key ON rota_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE rota_tasks DROP CONSTRAINT rota_tasks_idempotency_key_key;
"#,
    // Listing failures must not scan the history: the failed and cancelled tasks by id (few
    // rows, so almost free to keep; an index of every finished task by finish time, for the
    // purge, cost 6% of the burn-down rate, see docs/performance.md).
    r#"
CREATE INDEX rota_tasks_failed ON rota_tasks (id) WHERE status IN ('FAILED', 'CANCELLED');
"#,
    // Payloads kept as the text rota wrote (JSON), not normalised (JSONB): JSONB writes a number
    // such as -1.7976931348623157e308 back as 309 digits, which no JSON parser reads as a
    // float again, so the task could no longer be read. (Rows already normalised stay so.)
    r#"
ALTER TABLE rota_tasks ALTER COLUMN payload TYPE JSON USING payload::json;
"#,
    schedules::MIGRATION,
];

/// The database's clock in milliseconds, or the caller's when one is bound (`$n` is NULL in
/// production): `now!(6)` is `COALESCE($6::bigint, <clock>)`.
macro_rules! now {
    ($n:literal) => {
        concat!(
            "COALESCE($",
            $n,
            "::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
        )
    };
}

/// The partitions a claimant still owns at the given epochs (`$1` owner, `$2` partitions, `$3`
/// epochs), their owner rows locked `FOR SHARE` until the statement ends, so an ownership
/// change waits for it and then sees (and requeues) what it claimed.
macro_rules! owned {
    () => {
        "owned AS ( \
           SELECT o.partition, o.epoch FROM rota_partition_owners o \
           JOIN UNNEST($2::int[], $3::bigint[]) AS c(partition, epoch) \
             ON c.partition = o.partition AND c.epoch = o.epoch \
           WHERE o.owner = $1 FOR SHARE OF o)"
    };
}

/// The task columns, in the order [`task_from`] reads them by name (a macro, so that queries stay
/// `&'static str` literals, which sqlx accepts without an injection audit).
macro_rules! columns {
    () => {
        "id, name, payload, handler, partition_key, partition, status, scheduled_at, attempts, \
         max_attempts, last_error, owner, epoch, lease_until, idempotency_key, created_at, \
         started_at, finished_at"
    };
    (t) => {
        "t.id, t.name, t.payload, t.handler, t.partition_key, t.partition, t.status, \
         t.scheduled_at, t.attempts, t.max_attempts, t.last_error, t.owner, t.epoch, \
         t.lease_until, t.idempotency_key, t.created_at, t.started_at, t.finished_at"
    };
}

// After the macros, which it uses.
mod schedules;

/// The PostgreSQL task store.
pub struct PostgresTaskStore {
    pool: PgPool,
    /// Compare due times with the database's clock (production) rather than the caller's.
    database_clock: bool,
    inserted: broadcast::Sender<u32>,
    listener: tokio::task::JoinHandle<()>,
    /// Partitions to announce, gathered for the notifier task (a set: bounded by the
    /// partition count however far the notifier falls behind).
    announce: Arc<Announcements>,
    notifier: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresTaskStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    // What may pass if the call is made again: a connection lost, refused or not free in time;
    // a server shutting down, starting up or in recovery (SQLSTATE 08, 57P); a statement
    // cancelled by its deadline (57014); too many connections or no memory (53); a
    // serialization failure or deadlock (40). Everything else (constraint violations, bad
    // input, schema trouble) stays wrong on a second try. A TLS handshake that failed, or a
    // reply that is not PostgreSQL's protocol (a connection cut in the middle of the opening
    // exchange: "unexpected response from SSLRequest"), is the connection's trouble too: a new
    // connection may well succeed.
    let (retryable, code) = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => (true, None),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned());
            let retryable = code.as_deref().is_some_and(|code| {
                ["08", "57P", "53", "40"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || code == "57014"
            });
            (retryable, code)
        }
        _ => (false, None),
    };
    // A data exception (class 22: text the encoding cannot hold, a number out of range, bad
    // JSON) is the input's fault, not the store's: the caller gets it back as invalid.
    let invalid = code.as_deref().is_some_and(|c| c.starts_with("22"));
    let text = match code {
        Some(code) => format!("{e} (SQLSTATE {code})"),
        None => e.to_string(),
    };
    if invalid {
        return StoreError::Invalid(text);
    }
    if retryable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

fn task_from(row: &PgRow) -> Result<Task, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Task {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        payload: row.try_get("payload")?,
        handler: row.try_get("handler")?,
        partition_key: row.try_get("partition_key")?,
        partition: row.try_get::<i32, _>("partition")? as u32,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status}").into()))?,
        scheduled_at: row.try_get("scheduled_at")?,
        attempts: row.try_get::<i32, _>("attempts")? as u32,
        max_attempts: row.try_get::<i32, _>("max_attempts")? as u32,
        last_error: row.try_get("last_error")?,
        owner: row
            .try_get::<Option<String>, _>("owner")?
            .map(InstanceId::new),
        epoch: row.try_get::<Option<i64>, _>("epoch")?.map(|e| e as Epoch),
        lease_until: row.try_get("lease_until")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn tasks_from(rows: &[PgRow]) -> Result<Vec<Task>, StoreError> {
    rows.iter()
        .map(task_from)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

impl PostgresTaskStore {
    /// Connects, migrates the cluster's schema, and starts listening for inserts. Due times,
    /// claim and finish times are taken from the database's clock, so workers with skewed
    /// clocks agree on what is due. The URL is never logged (it may hold a password).
    pub async fn connect(url: &str, settings: &Settings) -> Result<Self, StoreError> {
        Self::open(url, settings, true).await
    }

    /// Like [`Self::connect`], but taking "now" from the caller on every call, as the
    /// conformance suite's synthetic times require.
    pub async fn connect_with_caller_clock(
        url: &str,
        settings: &Settings,
    ) -> Result<Self, StoreError> {
        Self::open(url, settings, false).await
    }

    async fn open(
        url: &str,
        settings: &Settings,
        database_clock: bool,
    ) -> Result<Self, StoreError> {
        let schema = settings.schema()?;
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Invalid(format!("storage.url is not a PostgreSQL URL: {e}"))
        })?;
        // One connection first, to report why none can be made (the pool only says it timed
        // out): refused, unknown host, bad password, no such database.
        let server = format!("{}:{}", options.get_host(), options.get_port());
        match tokio::time::timeout(
            settings.statement_timeout,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {server}: {e}"
                )));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no answer from PostgreSQL at {server} within {:?}",
                    settings.statement_timeout
                )));
            }
        }
        let timeout_ms = settings.statement_timeout.as_millis().max(1);
        // Every connection works in the cluster's schema, under the statement deadline.
        let setup = format!("SET search_path TO {schema}; SET statement_timeout = {timeout_ms}");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(settings.statement_timeout)
            .after_connect(move |conn, _| {
                let setup = setup.clone();
                Box::pin(async move {
                    sqlx::raw_sql(AssertSqlSafe(setup)).execute(conn).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        migrate(&pool, &schema, &settings.cluster).await?;
        let channel = format!("{CHANNEL_PREFIX}{}", settings.cluster);
        let (inserted, _) = broadcast::channel(1024);
        let listener = tokio::spawn(listen(pool.clone(), channel.clone(), inserted.clone()));
        let announce = Arc::new(Announcements::default());
        let pending = announce.clone();
        let notifier = tokio::spawn(notify(pool.clone(), channel, pending));
        Ok(Self {
            pool,
            database_clock,
            inserted,
            listener,
            announce,
            notifier,
        })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(backend)
    }

    /// The tasks holding these idempotency keys.
    async fn by_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM rota_tasks WHERE idempotency_key = ANY($1)"
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        tasks_from(&rows)
    }

    /// "Now": the database's clock, or the caller's (one round trip; the hot paths use
    /// [`now!`] in their statement instead).
    async fn now(&self, given: Millis) -> Result<Millis, StoreError> {
        match self.clock(given) {
            Some(now) => Ok(now),
            None => sqlx::query_scalar(concat!("SELECT ", now!(1)))
                .bind(None::<i64>)
                .fetch_one(&self.pool)
                .await
                .map_err(backend),
        }
    }

    /// The caller's "now" to bind, or `None` to use the database's clock (see [`now!`]).
    fn clock(&self, given: Millis) -> Option<Millis> {
        (!self.database_clock).then_some(given)
    }
}

async fn migrate(pool: &PgPool, schema: &str, cluster: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    // One migrator at a time, across processes and clusters; a migration may take longer than
    // a statement is allowed to in service (an index on a large table).
    sqlx::raw_sql("SELECT pg_advisory_xact_lock(7402061); SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    adopt_unscoped_tables(&mut tx, schema, cluster).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS rota_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let version: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM rota_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    let version = version.unwrap_or(0) as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this build's {}; upgrade rota",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO rota_schema (version) VALUES ($1)")
            .bind((i + 1) as i32)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

/// Tables of a rota from before clusters had schemas of their own live in `public`: the first
/// cluster to open the database takes them over (a database of that age held one cluster's tasks).
async fn adopt_unscoped_tables(
    tx: &mut Transaction<'static, Postgres>,
    schema: &str,
    cluster: &str,
) -> Result<(), StoreError> {
    let (legacy, scoped): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('public.rota_schema') IS NOT NULL, \
                to_regclass('rota_schema') IS NOT NULL",
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    if !legacy || scoped {
        return Ok(());
    }
    tracing::warn!(
        cluster,
        "adopting the tasks of an earlier rota (tables in the public schema) into this cluster's schema"
    );
    let moves: String = ["rota_tasks", "rota_partition_owners", "rota_schema"]
        .iter()
        .map(|t| format!("ALTER TABLE IF EXISTS public.{t} SET SCHEMA {schema};"))
        .collect();
    sqlx::raw_sql(AssertSqlSafe(moves))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Forwards the cluster's notification payloads (partition numbers) to the broadcast channel,
/// reconnecting after errors.
async fn listen(pool: PgPool, channel: String, inserted: broadcast::Sender<u32>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for task inserts; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while let Ok(notification) = listener.recv().await {
            for p in notification.payload().split(',') {
                if let Ok(p) = p.parse::<u32>() {
                    let _ = inserted.send(p);
                }
            }
        }
    }
}

/// Partitions waiting to be announced.
#[derive(Default)]
struct Announcements {
    partitions: std::sync::Mutex<BTreeSet<u32>>,
    added: tokio::sync::Notify,
}

impl Announcements {
    fn add(&self, partitions: impl IntoIterator<Item = u32>) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(partitions);
        self.added.notify_one();
    }

    async fn take(&self) -> BTreeSet<u32> {
        loop {
            let taken =
                std::mem::take(&mut *self.partitions.lock().unwrap_or_else(|e| e.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.added.notified().await;
        }
    }
}

/// Announces inserted partitions: one `NOTIFY` for everything that arrived since the last one.
async fn notify(pool: PgPool, channel: String, pending: Arc<Announcements>) {
    loop {
        let partitions = pending.take().await;
        let payload = partitions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel)
            .bind(&payload)
            .execute(&pool)
            .await
        {
            // The workers' idle backstop still finds these tasks.
            tracing::warn!(error = %e, "cannot announce inserted tasks");
        }
    }
}

/// The partitions of a claim that the statement's `owned` CTE did not find still owned.
fn refused(partitions: &[Claim], owned: &[i32]) -> Vec<u32> {
    partitions
        .iter()
        .map(|c| c.partition)
        .filter(|&p| !owned.contains(&(p as i32)))
        .collect()
}

/// The parallel arrays (`$2` partitions, `$3` epochs) that [`owned!`] reads.
fn claim_arrays(partitions: &[Claim]) -> (Vec<i32>, Vec<i64>) {
    partitions
        .iter()
        .map(|c| (c.partition as i32, c.epoch as i64))
        .unzip()
}

#[async_trait::async_trait]
impl TaskStore for PostgresTaskStore {
    async fn insert(
        &self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> Result<Vec<(Task, bool)>, StoreError> {
        for t in &tasks {
            t.validate()?;
        }
        // No explicit transaction: the batch is one INSERT statement (atomic), ids come from the
        // sequence beforehand, and a key taken by a concurrent insert is read back afterwards.
        let keys: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.idempotency_key.clone())
            .collect();
        let mut by_key: HashMap<String, Task> = HashMap::new();
        if !keys.is_empty() {
            for t in self.by_keys(&keys).await? {
                by_key.insert(t.idempotency_key.clone().expect("selected by key"), t);
            }
        }
        // New tasks: the first of each key within the batch, and those without a key.
        let mut fresh: Vec<usize> = Vec::new();
        let mut batch_keys = BTreeSet::new();
        for (i, t) in tasks.iter().enumerate() {
            match &t.idempotency_key {
                Some(k) if by_key.contains_key(k) || !batch_keys.insert(k.clone()) => {}
                _ => fresh.push(i),
            }
        }
        let ids: Vec<i64> = if fresh.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT nextval(pg_get_serial_sequence('rota_tasks', 'id')) \
                 FROM generate_series(1, $1)",
            )
            .bind(fresh.len() as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
        };
        let mut columns = InsertColumns::default();
        for (&i, &id) in fresh.iter().zip(&ids) {
            columns.push(
                id,
                &tasks[i],
                partition_for(tasks[i].partition_key.as_deref(), id, partitions),
            );
        }
        let rows = if fresh.is_empty() {
            Vec::new()
        } else {
            sqlx::query(concat!(
                "INSERT INTO rota_tasks (id, name, payload, handler, partition_key, partition, \
                   status, scheduled_at, max_attempts, idempotency_key, created_at) \
                 SELECT id, name, payload::json, handler, partition_key, partition, 'PENDING', \
                   scheduled_at, max_attempts, idempotency_key, ",
                now!(11),
                " FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::int[], $7::bigint[], $8::int[], $9::text[], $10::bigint[]) \
                     AS t(id, name, payload, handler, partition_key, partition, scheduled_at, \
                          max_attempts, idempotency_key, ord) \
                 ORDER BY ord \
                 ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
                 RETURNING ",
                columns!()
            ))
            .bind(&columns.id)
            .bind(&columns.name)
            .bind(&columns.payload)
            .bind(&columns.handler)
            .bind(&columns.partition_key)
            .bind(&columns.partition)
            .bind(&columns.scheduled_at)
            .bind(&columns.max_attempts)
            .bind(&columns.idempotency_key)
            .bind(&columns.ord)
            .bind(self.clock(now))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
        };
        let mut created: HashMap<i64, Task> =
            tasks_from(&rows)?.into_iter().map(|t| (t.id, t)).collect();
        // A concurrent insert may have taken a key between our read and write: read it back.
        let lost: Vec<String> = fresh
            .iter()
            .zip(&ids)
            .filter(|(_, id)| !created.contains_key(id))
            .filter_map(|(&i, _)| tasks[i].idempotency_key.clone())
            .collect();
        if !lost.is_empty() {
            for t in self.by_keys(&lost).await? {
                by_key.insert(t.idempotency_key.clone().expect("selected by key"), t);
            }
        }
        let notified: BTreeSet<u32> = created.values().map(|t| t.partition).collect();

        let mut out = Vec::with_capacity(tasks.len());
        let mut fresh_ids = fresh
            .iter()
            .zip(&ids)
            .map(|(&i, &id)| (i, id))
            .collect::<HashMap<_, _>>();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(task) = fresh_ids.remove(&i).and_then(|id| created.remove(&id)) {
                if let Some(k) = &task.idempotency_key {
                    by_key.insert(k.clone(), task.clone());
                }
                out.push((task, true));
                continue;
            }
            let key = t
                .idempotency_key
                .as_ref()
                .expect("only keyed tasks are not inserted");
            let task = by_key
                .get(key)
                .cloned()
                .ok_or_else(|| StoreError::Backend(format!("idempotency key {key} vanished")))?;
            out.push((task, false));
        }
        for &p in &notified {
            let _ = self.inserted.send(p);
        }
        self.announce.add(notified);
        Ok(out)
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.by_keys(keys).await
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM rota_tasks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(task_from).transpose().map_err(backend)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.max(1);
        // The status is written into the statement (a closed set of literals), so the planner
        // can use the partial indexes: RUNNING tasks are found by their index and sorted (`id
        // + 0` keeps the planner from walking the primary key past every finished task),
        // FAILED and CANCELLED by theirs in id order; COMPLETED and PENDING walk the primary
        // key (the cost grows with the ids passed over; see docs/performance.md).
        let by_status = match filter.status {
            None => "",
            Some(TaskStatus::Pending) => " AND status = 'PENDING'",
            Some(TaskStatus::Running) => " AND status = 'RUNNING'",
            Some(TaskStatus::Completed) => " AND status = 'COMPLETED'",
            Some(TaskStatus::Failed) => " AND status = 'FAILED'",
            Some(TaskStatus::Cancelled) => " AND status = 'CANCELLED'",
        };
        let by_name = if filter.name.is_some() {
            " AND name = $3"
        } else {
            " AND $3::text IS NULL"
        };
        let order = if filter.status == Some(TaskStatus::Running) {
            "id + 0"
        } else {
            "id"
        };
        let sql = format!(
            concat!(
                "SELECT ",
                columns!(),
                " FROM rota_tasks WHERE id > $1{}{} ORDER BY {} LIMIT $2"
            ),
            by_status, by_name, order
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(filter.after.unwrap_or(0))
            .bind((limit + 1) as i64)
            .bind(filter.name.as_deref())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Page::from_fetched(tasks_from(&rows)?, limit))
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        let cancelled = sqlx::query(concat!(
            "UPDATE rota_tasks SET status = 'CANCELLED', finished_at = $2 \
             WHERE id = $1 AND status = 'PENDING' RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let outcome = match cancelled {
            Some(row) => CancelOutcome::Cancelled(task_from(&row).map_err(backend)?),
            None => {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM rota_tasks WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
                match row {
                    Some(row) => CancelOutcome::Conflict(task_from(&row).map_err(backend)?),
                    None => CancelOutcome::NotFound,
                }
            }
        };
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn acquire(
        &self,
        partition: u32,
        owner: &InstanceId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        // Insert the row if missing, then lock it: ownership changes are serialised per partition.
        sqlx::query(
            "INSERT INTO rota_partition_owners (partition, owner, epoch) VALUES ($1, $2, $3) \
             ON CONFLICT (partition) DO NOTHING",
        )
        .bind(partition as i32)
        .bind(owner.as_str())
        .bind(epoch as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let row = sqlx::query(
            "SELECT owner, epoch FROM rota_partition_owners WHERE partition = $1 FOR UPDATE",
        )
        .bind(partition as i32)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let (current_owner, current): (String, i64) = (row.get("owner"), row.get("epoch"));
        let current = current as Epoch;
        if current > epoch || (current == epoch && current_owner != owner.as_str()) {
            return Err(StoreError::StaleEpoch {
                partition,
                current,
                given: epoch,
            });
        }
        sqlx::query("UPDATE rota_partition_owners SET owner = $2, epoch = $3 WHERE partition = $1")
            .bind(partition as i32)
            .bind(owner.as_str())
            .bind(epoch as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let requeued = sqlx::query(concat!(
            "UPDATE rota_tasks SET ",
            rota_scheduler::take_back_sql!(
                "",
                "claim lost: the partition moved to another worker",
                "$4"
            ),
            " WHERE partition = $1 AND status = 'RUNNING' \
               AND (owner IS DISTINCT FROM $2 OR epoch IS DISTINCT FROM $3)"
        ))
        .bind(partition as i32)
        .bind(owner.as_str())
        .bind(epoch as i64)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        tx.commit().await.map_err(backend)?;
        Ok(requeued)
    }

    async fn claim(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Claimed, StoreError> {
        let (parts, epochs) = claim_arrays(partitions);
        // One statement, one round trip: the fence, the pick, the update and the next due time.
        // Each owned partition gives its first `limit` due tasks from its own index range (so the
        // cost never depends on other partitions' backlog or on finished tasks); the union is
        // cut to the `limit` earliest. Rows are picked without locks and updated only if still
        // PENDING, so a concurrent cancel wins cleanly.
        let rows = sqlx::query(concat!(
            "WITH now AS (SELECT ",
            now!(6),
            " AS ms), ",
            owned!(),
            ", picked AS ( \
               SELECT x.id, owned.epoch FROM owned CROSS JOIN now CROSS JOIN LATERAL ( \
                 SELECT id, scheduled_at FROM rota_tasks \
                 WHERE partition = owned.partition AND status = 'PENDING' \
                   AND scheduled_at <= now.ms \
                 ORDER BY scheduled_at, id LIMIT $4) x \
               ORDER BY x.scheduled_at, x.id LIMIT $4), \
             claimed AS ( \
               UPDATE rota_tasks t SET status = 'RUNNING', owner = $1, epoch = picked.epoch, \
                 attempts = t.attempts + 1, started_at = now.ms, lease_until = now.ms + $5 \
               FROM picked, now WHERE t.id = picked.id AND t.status = 'PENDING' \
               RETURNING ",
            columns!(t),
            "), next AS ( \
               SELECT min(n.scheduled_at) AS at FROM owned CROSS JOIN now CROSS JOIN LATERAL ( \
                 SELECT scheduled_at FROM rota_tasks \
                 WHERE partition = owned.partition AND status = 'PENDING' \
                   AND scheduled_at > now.ms \
                 ORDER BY scheduled_at, id LIMIT 1) n) \
             SELECT (SELECT array_agg(partition) FROM owned) AS owned_partitions, \
                    (SELECT at FROM next) AS next_due, c.* \
             FROM (SELECT 1) one LEFT JOIN claimed c ON true"
        ))
        .bind(owner.as_str())
        .bind(&parts)
        .bind(&epochs)
        .bind(limit as i64)
        .bind(lease_ms)
        .bind(self.clock(now))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let first = rows.first().ok_or_else(|| {
            StoreError::Backend("the claim returned no row (expected at least one)".into())
        })?;
        let owned: Vec<i32> = first
            .try_get::<Option<Vec<i32>>, _>("owned_partitions")
            .map_err(backend)?
            .unwrap_or_default();
        let next_due: Option<Millis> = first.try_get("next_due").map_err(backend)?;
        let refused = refused(partitions, &owned);
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<Option<i64>, _>("id")
                .map_err(backend)?
                .is_some()
            {
                tasks.push(task_from(row).map_err(backend)?);
            }
        }
        tasks.sort_by_key(|t| (t.scheduled_at, t.id));
        Ok(Claimed {
            tasks,
            refused,
            next_due,
        })
    }

    async fn complete(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let n = completions.len();
        let mut ids = Vec::with_capacity(n);
        let mut epochs = Vec::with_capacity(n);
        // 0: succeeded, 1: failed, 2: released.
        let mut outcomes: Vec<i16> = Vec::with_capacity(n);
        let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
        let mut retry: Vec<i64> = Vec::with_capacity(n);
        let mut started: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut partitions: Vec<i32> = Vec::with_capacity(n);
        for c in completions {
            ids.push(c.id);
            partitions.push(c.partition as i32);
            epochs.push(c.epoch as i64);
            started.push(c.started_at);
            let (outcome, error, retry_at) = match &c.outcome {
                CompletionOutcome::Succeeded => (0, None, 0),
                CompletionOutcome::Failed { error, retry_at } => {
                    (1, Some(error.clone()), *retry_at)
                }
                CompletionOutcome::Released => (2, None, 0),
            };
            outcomes.push(outcome);
            errors.push(error);
            retry.push(retry_at);
        }
        // Each completion names its task's partition, so the fence is an exact join with that
        // partition's owner row and the task is looked up by primary key. (A fence correlated
        // with the task row, found by the task's own partition, misled the planner: given the
        // arrays' real length it scanned every RUNNING row once per completion, 15-26 ms for
        // 250 completions with 500 tasks running, where the lookups take 2 ms.)
        let rows = sqlx::query(concat!(
            "WITH now AS (SELECT ",
            now!(6),
            " AS ms) \
             UPDATE rota_tasks t SET \
               status = CASE WHEN c.outcome = 0 THEN 'COMPLETED' \
                             WHEN c.outcome = 1 AND t.attempts >= t.max_attempts THEN 'FAILED' \
                             ELSE 'PENDING' END, \
               attempts = CASE WHEN c.outcome = 2 THEN t.attempts - 1 ELSE t.attempts END, \
               scheduled_at = CASE WHEN c.outcome = 1 AND t.attempts < t.max_attempts \
                                   THEN c.retry_at ELSE t.scheduled_at END, \
               finished_at = CASE WHEN c.outcome = 0 \
                                    OR (c.outcome = 1 AND t.attempts >= t.max_attempts) \
                                  THEN now.ms ELSE NULL END, \
               started_at = CASE WHEN c.outcome = 2 THEN NULL \
                                 ELSE COALESCE(c.started_at, t.started_at) END, \
               last_error = CASE WHEN c.outcome = 1 THEN c.error ELSE t.last_error END, \
               owner = NULL, lease_until = NULL \
             FROM now, rota_partition_owners o, \
               UNNEST($2::bigint[], $3::bigint[], $4::smallint[], $5::text[], $7::bigint[], \
                      $8::bigint[], $9::int[]) \
               AS c(id, epoch, outcome, error, retry_at, started_at, partition) \
             WHERE t.id = c.id AND t.partition = c.partition AND t.status = 'RUNNING' \
               AND t.owner = $1 AND t.epoch = c.epoch \
               AND o.partition = c.partition AND o.owner = $1 AND o.epoch = c.epoch \
             RETURNING t.id, t.status"
        ))
        .bind(owner.as_str())
        .bind(&ids)
        .bind(&epochs)
        .bind(&outcomes)
        .bind(&errors)
        .bind(self.clock(now))
        .bind(&retry)
        .bind(&started)
        .bind(&partitions)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let applied: HashMap<i64, TaskStatus> = rows
            .iter()
            .filter_map(|r| {
                let status: String = r.get("status");
                TaskStatus::parse(&status).map(|s| (r.get::<i64, _>("id"), s))
            })
            .collect();
        Ok(ids.iter().map(|id| applied.get(id).copied()).collect())
    }

    async fn requeue_expired(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (parts, epochs) = claim_arrays(partitions);
        Ok(sqlx::query(concat!(
            "WITH now AS (SELECT ",
            now!(4),
            " AS ms), ",
            owned!(),
            " UPDATE rota_tasks t SET ",
            rota_scheduler::take_back_sql!(
                "t.",
                "lease expired: the worker neither finished nor renewed it",
                "now.ms"
            ),
            " FROM owned, now \
             WHERE t.partition = owned.partition AND t.status = 'RUNNING' \
               AND t.lease_until < now.ms"
        ))
        .bind(owner.as_str())
        .bind(&parts)
        .bind(&epochs)
        .bind(self.clock(now))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected())
    }

    async fn renew(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        lease_ms: i64,
    ) -> Result<Vec<u32>, StoreError> {
        let (parts, epochs) = claim_arrays(partitions);
        // One statement, fenced like the claim, on the clock the claim used.
        let row = sqlx::query(concat!(
            "WITH now AS (SELECT ",
            now!(5),
            " AS ms), ",
            owned!(),
            ", renewed AS ( \
               UPDATE rota_tasks t SET lease_until = now.ms + $4 FROM owned, now \
               WHERE t.partition = owned.partition AND t.epoch = owned.epoch \
                 AND t.status = 'RUNNING' AND t.owner = $1 RETURNING 1) \
             SELECT (SELECT array_agg(partition) FROM owned) AS owned_partitions, \
                    (SELECT count(*) FROM renewed) AS renewed"
        ))
        .bind(owner.as_str())
        .bind(&parts)
        .bind(&epochs)
        .bind(lease_ms)
        .bind(self.clock(now))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let owned: Vec<i32> = row
            .try_get::<Option<Vec<i32>>, _>("owned_partitions")
            .map_err(backend)?
            .unwrap_or_default();
        Ok(refused(partitions, &owned))
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM rota_partition_owners")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let requeued = sqlx::query(concat!(
            "UPDATE rota_tasks SET ",
            rota_scheduler::take_back_sql!("", "claim lost: the cluster restarted", "$1"),
            " WHERE status = 'RUNNING'"
        ))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        tx.commit().await.map_err(backend)?;
        Ok(requeued)
    }

    async fn purge_finished(
        &self,
        finished_before: Millis,
        limit: usize,
    ) -> Result<u64, StoreError> {
        // The ids as an array, so that the delete looks them up by primary key (as
        // `IN (subquery)` it hash-joined a scan of the whole table: 155 ms a batch at 1.1M
        // rows, 13 ms now). Finding them scans the table, oldest pages first; the worker purges
        // rarely (see `purge_finished` in the worker) rather than index every finished task.
        Ok(sqlx::query(
            "DELETE FROM rota_tasks WHERE id = ANY(ARRAY( \
               SELECT id FROM rota_tasks \
               WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < $1 \
               LIMIT $2))",
        )
        .bind(finished_before)
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected())
    }

    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        schedules::get(&self.pool, name).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        schedules::list(&self.pool, after, limit).await
    }

    async fn write_schedule(
        &self,
        write: ScheduleWrite,
        partitions: u32,
        now: Millis,
    ) -> Result<ScheduleWritten, StoreError> {
        for t in &write.tasks {
            t.validate()?;
        }
        let mut tx = self.begin().await?;
        let written = schedules::write(&mut tx, write, partitions, self.clock(now)).await?;
        if let ScheduleWritten::Written(tasks) = &written {
            tx.commit().await.map_err(backend)?;
            let notified: BTreeSet<u32> = tasks
                .iter()
                .filter(|(_, created)| *created)
                .map(|(t, _)| t.partition)
                .collect();
            for &p in &notified {
                let _ = self.inserted.send(p);
            }
            self.announce.add(notified);
        }
        Ok(written)
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        schedules::delete(&self.pool, name, revision).await
    }

    async fn due_schedules(
        &self,
        partitions: &[u32],
        before: Millis,
        limit: usize,
    ) -> Result<DueSchedules, StoreError> {
        schedules::due(&self.pool, partitions, before, limit).await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let (pending, running): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM rota_tasks WHERE status = 'PENDING'), \
                    (SELECT count(*) FROM rota_tasks WHERE status = 'RUNNING')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Backlog {
            pending: pending as u64,
            running: running as u64,
        })
    }

    fn inserted(&self) -> broadcast::Receiver<u32> {
        self.inserted.subscribe()
    }
}

/// Column arrays for the bulk insert.
#[derive(Default)]
struct InsertColumns {
    id: Vec<i64>,
    name: Vec<String>,
    /// As text, bound as `text[]` and cast to JSON in the statement: bound as JSONB (sqlx's
    /// default for a JSON value), PostgreSQL would normalise it on the way.
    payload: Vec<String>,
    handler: Vec<Option<String>>,
    partition_key: Vec<Option<String>>,
    partition: Vec<i32>,
    scheduled_at: Vec<i64>,
    max_attempts: Vec<i32>,
    idempotency_key: Vec<Option<String>>,
    ord: Vec<i64>,
}

impl InsertColumns {
    fn push(&mut self, id: i64, t: &NewTask, partition: u32) {
        self.ord.push(self.id.len() as i64);
        self.id.push(id);
        self.name.push(t.name.clone());
        self.payload.push(t.payload.to_string());
        self.handler.push(t.handler.clone());
        self.partition_key.push(t.partition_key.clone());
        self.partition.push(partition as i32);
        self.scheduled_at.push(t.scheduled_at);
        self.max_attempts.push(t.max_attempts as i32);
        self.idempotency_key.push(t.idempotency_key.clone());
    }
}
