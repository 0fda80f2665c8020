//! # rota-postgres
//!
//! A task store ([`rota_scheduler::TaskStore`]) on PostgreSQL, for production. Each call is one transaction and, where it
//! matters, one statement:
//! - **insert** reserves ids from the sequence, computes partitions, and inserts the whole batch
//!   with one `INSERT ... SELECT FROM UNNEST(...)`; idempotency keys are unique in the table
//!   (`ON CONFLICT DO NOTHING`, then the originals are read back);
//! - **claim** is one call of the `rota_claim` function: the partitions' claim lock, then one
//!   query that fences (owner rows locked `FOR SHARE`, so an ownership change waits for claims
//!   in progress and then takes back what they claimed), picks the due tasks no live claim
//!   holds, and records one claim row per partition naming them: no task row is written;
//! - **completion** is one `UPDATE ... FROM UNNEST(...)` for the whole batch, fenced by the
//!   owner row and the claim row naming each task, which it takes the task out of;
//! - a partial index covers the pending due tasks per partition;
//! - after every insert commits, the partitions it filled are announced with
//!   `NOTIFY rota_tasks_<cluster>, '<partition>,<partition>...'`, by one background task per store that
//!   gathers whatever inserts committed meanwhile into one statement. (PostgreSQL serialises
//!   every notifying transaction's commit on one lock: notifying from each insert made
//!   concurrent single creates wait on each other.) A listener turns notifications into
//!   [`Execution::inserted`](rota_scheduler::Execution::inserted) wake-ups, so workers of other processes wake at once; a
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
//! [`StoreError::Timeout`] in bounded time rather than a call that never returns.
//!
//! Migrations are embedded and versioned in each cluster's `rota_schema`; a database with a
//! newer schema than this build knows is refused with a clear error.

use notify::Announcements;
use rota_model::{Epoch, InstanceId};
use rota_scheduler::{Millis, StoreError, Task, TaskStatus};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
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

/// The head of a fenced statement: `now` (its clock, `$n` or the database's, as `now.ms`) and
/// `owned`, the partitions a claimant still owns at the given epochs (`$1` owner, `$2`
/// partitions, `$3` epochs), their owner rows locked `FOR SHARE` until the statement ends, so
/// an ownership change waits for it and then sees (and requeues) what it claimed.
macro_rules! owned {
    ($now:literal) => {
        concat!(
            "WITH now AS (SELECT ",
            now!($now),
            " AS ms), owned AS ( \
               SELECT o.partition, o.epoch FROM rota_partition_owners o \
               JOIN UNNEST($2::int[], $3::bigint[]) AS c(partition, epoch) \
                 ON c.partition = o.partition AND c.epoch = o.epoch \
               WHERE o.owner = $1 FOR SHARE OF o)"
        )
    };
}

/// `SELECT` of every task column `FROM rota_tasks`, then `$rest` (a literal: the condition). A
/// task a live claim holds is stored PENDING: [`seen`] shows it as clients see it.
macro_rules! select_tasks {
    ($rest:literal) => {
        concat!("SELECT ", columns!(), " FROM rota_tasks ", $rest)
    };
}

/// Every task a live claim holds (a subquery: `id NOT IN` it, or `ANY(ARRAY` of it).
macro_rules! held {
    () => {
        "(SELECT unnest(tasks) FROM rota_claims)"
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

// After the macros, which they use.
mod execution;
mod notify;
mod schedules;
mod schema;
mod tasks;
mod vacuum;

/// The PostgreSQL task store.
pub struct PostgresTaskStore {
    pool: PgPool,
    /// Compare due times with the database's clock (production) rather than the caller's.
    database_clock: bool,
    inserted: broadcast::Sender<rota_scheduler::Inserted>,
    listener: tokio::task::JoinHandle<()>,
    /// Partitions to announce, gathered for the notifier task (a set: bounded by the
    /// partition count however far the notifier falls behind).
    announce: Arc<Announcements>,
    notifier: tokio::task::JoinHandle<()>,
    /// Vacuums the claim table as claims add up (see [`vacuum`]).
    claim_vacuum: vacuum::ClaimVacuum,
}

impl Drop for PostgresTaskStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    // What happened, by the error and its SQLSTATE: a connection lost, refused, not free in
    // time, or a server shutting down, starting up, in recovery, out of connections or memory
    // (08, 57P, 53: unavailable); a statement cancelled by its deadline (57014) or no pooled
    // connection in time (a timeout); a serialization failure or deadlock, which rolled the
    // transaction back (40: a conflict); a data exception, the input's fault (22: text the
    // encoding cannot hold, a number out of range, bad JSON: invalid). Everything else
    // (constraint violations, schema trouble) stays wrong on a second try. A TLS handshake
    // that failed, or a reply that is not PostgreSQL's protocol (a connection cut in the middle
    // of the opening exchange: "unexpected response from SSLRequest"), is the connection's
    // trouble too: a new connection may well succeed.
    let code = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    let text = match &code {
        Some(code) => format!("{e} (SQLSTATE {code})"),
        None => e.to_string(),
    };
    match (&e, code.as_deref()) {
        (sqlx::Error::PoolTimedOut, _) => StoreError::Timeout(text),
        (
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
            _,
        ) => StoreError::Unavailable(text),
        (_, Some("57014")) => StoreError::Timeout(text),
        (_, Some(c)) if c.starts_with("40") => StoreError::Conflict(text),
        (_, Some(c)) if ["08", "57P", "53"].iter().any(|class| c.starts_with(class)) => {
            StoreError::Unavailable(text)
        }
        (_, Some(c)) if c.starts_with("22") => StoreError::Invalid(text),
        _ => StoreError::Backend(text),
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

/// Tasks as clients see them: a task stored PENDING that a live claim holds is RUNNING under the
/// claim's owner and epoch, its attempt counted, its start and lease the claim's (the claim
/// writes no task row; see `sql/claims.sql`). One query, only when a task is stored PENDING.
async fn seen<'c>(
    db: impl sqlx::PgExecutor<'c>,
    mut tasks: Vec<Task>,
) -> Result<Vec<Task>, StoreError> {
    let pending: Vec<(i64, i32)> = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Pending)
        .map(|t| (t.id, t.partition as i32))
        .collect();
    if pending.is_empty() {
        return Ok(tasks);
    }
    let (ids, partitions): (Vec<i64>, Vec<i32>) = pending.into_iter().unzip();
    let rows = sqlx::query(
        "SELECT m.id, k.owner, k.epoch, k.lease_until, k.claimed_at \
         FROM rota_claims k CROSS JOIN LATERAL unnest(k.tasks) AS m(id) \
         WHERE k.partition = ANY($2) AND m.id = ANY($1)",
    )
    .bind(&ids)
    .bind(&partitions)
    .fetch_all(db)
    .await
    .map_err(backend)?;
    let mut held = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(backend)?;
        held.insert(id, row);
    }
    for task in tasks.iter_mut() {
        let Some(claim) = held
            .get(&task.id)
            .filter(|_| task.status == TaskStatus::Pending)
        else {
            continue;
        };
        task.status = TaskStatus::Running;
        task.attempts += 1;
        task.owner = Some(InstanceId::new(
            claim.try_get::<String, _>("owner").map_err(backend)?,
        ));
        task.epoch = Some(claim.try_get::<i64, _>("epoch").map_err(backend)? as Epoch);
        task.lease_until = Some(claim.try_get("lease_until").map_err(backend)?);
        task.started_at = Some(claim.try_get("claimed_at").map_err(backend)?);
    }
    Ok(tasks)
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
        schema::migrate(&pool, &schema, &settings.cluster).await?;
        let channel = format!("{CHANNEL_PREFIX}{}", settings.cluster);
        let (inserted, _) = broadcast::channel(1024);
        let listener = tokio::spawn(notify::listen(
            pool.clone(),
            channel.clone(),
            inserted.clone(),
        ));
        let announce = Arc::new(Announcements::default());
        let pending = announce.clone();
        let notifier = tokio::spawn(notify::notify(pool.clone(), channel, pending));
        Ok(Self {
            pool,
            database_clock,
            inserted,
            listener,
            announce,
            notifier,
            claim_vacuum: vacuum::ClaimVacuum::default(),
        })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(backend)
    }

    /// The tasks holding these idempotency keys.
    async fn by_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(select_tasks!("WHERE idempotency_key = ANY($1)"))
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        seen(&self.pool, tasks_from(&rows)?).await
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
