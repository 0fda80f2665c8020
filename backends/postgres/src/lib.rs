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
//! - every insert sends `NOTIFY rota_tasks, '<partition>'`; a listener turns notifications into
//!   [`TaskStore::inserted`] wake-ups, so workers of other processes wake at once.
//!
//! Migrations are embedded and versioned in `rota_schema`; a database with a newer schema than
//! this build knows is refused with a clear error.

use rota_core::task::{
    Backlog, CancelOutcome, Claim, Claimed, Completion, CompletionOutcome, ListFilter, Millis,
    NewTask, Page, StoreError, Task, TaskId, TaskStatus, TaskStore, partition_for,
};
use rota_core::{Epoch, InstanceId};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::broadcast;

const CHANNEL: &str = "rota_tasks";

/// Schema migrations, in order; `rota_schema.version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE rota_tasks (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT    NOT NULL,
    payload         JSONB   NOT NULL,
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
"#];

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

/// The PostgreSQL task store.
pub struct PostgresTaskStore {
    pool: PgPool,
    /// Compare due times with the database's clock (production) rather than the caller's.
    database_clock: bool,
    inserted: broadcast::Sender<u32>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresTaskStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Backend(other.to_string()),
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
    /// Connects (pool of up to 16 connections), migrates, and starts listening for inserts.
    /// Due times, claim and finish times are taken from the database's clock, so workers with
    /// skewed clocks agree on what is due. The URL is never logged (it may hold a password).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, true).await
    }

    /// Like [`Self::connect`], but taking "now" from the caller on every call, as the
    /// conformance suite's synthetic times require.
    pub async fn connect_with_caller_clock(url: &str) -> Result<Self, StoreError> {
        Self::open(url, false).await
    }

    async fn open(url: &str, database_clock: bool) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        migrate(&pool).await?;
        let (inserted, _) = broadcast::channel(1024);
        let listener = tokio::spawn(listen(pool.clone(), inserted.clone()));
        Ok(Self {
            pool,
            database_clock,
            inserted,
            listener,
        })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(backend)
    }

    /// "Now": the database's clock, or the caller's.
    async fn now(&self, given: Millis) -> Result<Millis, StoreError> {
        if !self.database_clock {
            return Ok(given);
        }
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    // One migrator at a time, across processes.
    sqlx::query("SELECT pg_advisory_xact_lock(7402061)")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
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

/// Forwards `NOTIFY rota_tasks` payloads (partition numbers) to the broadcast channel,
/// reconnecting after errors.
async fn listen(pool: PgPool, inserted: broadcast::Sender<u32>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for task inserts; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while let Ok(notification) = listener.recv().await {
            if let Ok(p) = notification.payload().parse::<u32>() {
                let _ = inserted.send(p);
            }
        }
    }
}

/// Splits claims into those whose owner and epoch are current (their owner rows locked
/// `FOR SHARE` until the transaction ends) and the refused partitions.
async fn split_claims(
    tx: &mut Transaction<'static, Postgres>,
    owner: &InstanceId,
    claims: &[Claim],
) -> Result<(Vec<Claim>, Vec<u32>), StoreError> {
    let partitions: Vec<i32> = claims.iter().map(|c| c.partition as i32).collect();
    let rows = sqlx::query(
        "SELECT partition, epoch FROM rota_partition_owners \
         WHERE partition = ANY($1) AND owner = $2 ORDER BY partition FOR SHARE",
    )
    .bind(&partitions)
    .bind(owner.as_str())
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    let current: HashMap<u32, Epoch> = rows
        .iter()
        .map(|r| {
            (
                r.get::<i32, _>("partition") as u32,
                r.get::<i64, _>("epoch") as Epoch,
            )
        })
        .collect();
    let (mut valid, mut refused) = (Vec::new(), Vec::new());
    for c in claims {
        if current.get(&c.partition) == Some(&c.epoch) {
            valid.push(*c);
        } else {
            refused.push(c.partition);
        }
    }
    Ok((valid, refused))
}

#[async_trait::async_trait]
impl TaskStore for PostgresTaskStore {
    async fn insert(
        &self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> Result<Vec<(Task, bool)>, StoreError> {
        let now = self.now(now).await?;
        for t in &tasks {
            t.validate()?;
        }
        let mut tx = self.begin().await?;
        // Existing tasks for the idempotency keys given.
        let keys: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.idempotency_key.clone())
            .collect();
        let mut by_key: HashMap<String, Task> = HashMap::new();
        if !keys.is_empty() {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM rota_tasks WHERE idempotency_key = ANY($1)"
            ))
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            for t in tasks_from(&rows)? {
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
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('rota_tasks', 'id')) FROM generate_series(1, $1)",
        )
        .bind(fresh.len() as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut columns = InsertColumns::default();
        for (&i, &id) in fresh.iter().zip(&ids) {
            columns.push(
                id,
                &tasks[i],
                partition_for(tasks[i].partition_key.as_deref(), id, partitions),
            );
        }
        let rows = sqlx::query(concat!(
            "INSERT INTO rota_tasks (id, name, payload, handler, partition_key, partition, status, \
               scheduled_at, max_attempts, idempotency_key, created_at) \
             SELECT id, name, payload, handler, partition_key, partition, 'PENDING', scheduled_at, \
               max_attempts, idempotency_key, $11 \
             FROM UNNEST($1::bigint[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::int[], \
                         $7::bigint[], $8::int[], $9::text[], $10::bigint[]) \
               AS t(id, name, payload, handler, partition_key, partition, scheduled_at, \
                    max_attempts, idempotency_key, ord) \
             ORDER BY ord \
             ON CONFLICT (idempotency_key) DO NOTHING \
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
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
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
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM rota_tasks WHERE idempotency_key = ANY($1)"
            ))
            .bind(&lost)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            for t in tasks_from(&rows)? {
                by_key.insert(t.idempotency_key.clone().expect("selected by key"), t);
            }
        }
        let notified: BTreeSet<u32> = created.values().map(|t| t.partition).collect();
        for p in &notified {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(p.to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;

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
        for p in notified {
            let _ = self.inserted.send(p);
        }
        Ok(out)
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM rota_tasks WHERE id > $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR name = $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(filter.after.unwrap_or(0))
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.name.as_deref())
        .bind((limit + 1) as i64)
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
        let requeued = sqlx::query(
            "UPDATE rota_tasks SET \
               status = CASE WHEN attempts >= max_attempts THEN 'FAILED' ELSE 'PENDING' END, \
               last_error = CASE WHEN attempts >= max_attempts \
                 THEN 'claim lost: the partition moved to another worker' ELSE last_error END, \
               finished_at = CASE WHEN attempts >= max_attempts THEN $4 ELSE NULL END, \
               owner = NULL, lease_until = NULL \
             WHERE partition = $1 AND status = 'RUNNING' \
               AND (owner IS DISTINCT FROM $2 OR epoch IS DISTINCT FROM $3)",
        )
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
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        let (valid, refused) = split_claims(&mut tx, owner, partitions).await?;
        let mut tasks = Vec::new();
        if !valid.is_empty() {
            let parts: Vec<i32> = valid.iter().map(|c| c.partition as i32).collect();
            let epochs: Vec<i64> = valid.iter().map(|c| c.epoch as i64).collect();
            let rows = sqlx::query(concat!(
                "UPDATE rota_tasks t SET status = 'RUNNING', owner = $1, epoch = c.epoch, \
                   attempts = t.attempts + 1, started_at = $4, lease_until = $5 \
                 FROM ( \
                   SELECT x.id, o.epoch FROM rota_tasks x \
                   JOIN UNNEST($2::int[], $3::bigint[]) AS o(partition, epoch) ON o.partition = x.partition \
                   WHERE (x.status = 'PENDING' AND x.scheduled_at <= $4) \
                      OR (x.status = 'RUNNING' AND x.lease_until < $4) \
                   ORDER BY x.scheduled_at, x.id LIMIT $6 \
                   FOR UPDATE OF x SKIP LOCKED) c \
                 WHERE t.id = c.id RETURNING ",
                columns!(t)
            ))
            .bind(owner.as_str())
            .bind(&parts)
            .bind(&epochs)
            .bind(now)
            .bind(now + lease_ms)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            tasks = tasks_from(&rows)?;
        }
        tx.commit().await.map_err(backend)?;
        tasks.sort_by_key(|t| (t.scheduled_at, t.id));
        Ok(Claimed { tasks, refused })
    }

    async fn complete(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let now = self.now(now).await?;
        let mut ids = Vec::new();
        let mut epochs = Vec::new();
        let mut ok = Vec::new();
        let mut errors: Vec<Option<String>> = Vec::new();
        let mut retry: Vec<i64> = Vec::new();
        for c in completions {
            ids.push(c.id);
            epochs.push(c.epoch as i64);
            match &c.outcome {
                CompletionOutcome::Succeeded => {
                    ok.push(true);
                    errors.push(None);
                    retry.push(0);
                }
                CompletionOutcome::Failed { error, retry_at } => {
                    ok.push(false);
                    errors.push(Some(error.clone()));
                    retry.push(*retry_at);
                }
            }
        }
        let rows = sqlx::query(
            "UPDATE rota_tasks t SET \
               status = CASE WHEN c.ok THEN 'COMPLETED' \
                             WHEN t.attempts >= t.max_attempts THEN 'FAILED' ELSE 'PENDING' END, \
               scheduled_at = CASE WHEN NOT c.ok AND t.attempts < t.max_attempts \
                                   THEN c.retry_at ELSE t.scheduled_at END, \
               finished_at = CASE WHEN c.ok OR t.attempts >= t.max_attempts THEN $6 ELSE NULL END, \
               last_error = CASE WHEN c.ok THEN t.last_error ELSE c.error END, \
               owner = NULL, lease_until = NULL \
             FROM UNNEST($2::bigint[], $3::bigint[], $4::bool[], $5::text[], $7::bigint[]) \
               AS c(id, epoch, ok, error, retry_at) \
             WHERE t.id = c.id AND t.status = 'RUNNING' AND t.owner = $1 AND t.epoch = c.epoch \
               AND EXISTS (SELECT 1 FROM rota_partition_owners o \
                           WHERE o.partition = t.partition AND o.owner = $1 AND o.epoch = c.epoch) \
             RETURNING t.id, t.status",
        )
        .bind(owner.as_str())
        .bind(&ids)
        .bind(&epochs)
        .bind(&ok)
        .bind(&errors)
        .bind(now)
        .bind(&retry)
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

    async fn renew(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        lease_until: Millis,
    ) -> Result<Vec<u32>, StoreError> {
        let mut tx = self.begin().await?;
        let (valid, refused) = split_claims(&mut tx, owner, partitions).await?;
        if !valid.is_empty() {
            let parts: Vec<i32> = valid.iter().map(|c| c.partition as i32).collect();
            let epochs: Vec<i64> = valid.iter().map(|c| c.epoch as i64).collect();
            sqlx::query(
                "UPDATE rota_tasks t SET lease_until = $4 \
                 FROM UNNEST($2::int[], $3::bigint[]) AS o(partition, epoch) \
                 WHERE t.partition = o.partition AND t.epoch = o.epoch \
                   AND t.status = 'RUNNING' AND t.owner = $1",
            )
            .bind(owner.as_str())
            .bind(&parts)
            .bind(&epochs)
            .bind(lease_until)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(refused)
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM rota_partition_owners")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let requeued = sqlx::query(
            "UPDATE rota_tasks SET \
               status = CASE WHEN attempts >= max_attempts THEN 'FAILED' ELSE 'PENDING' END, \
               last_error = CASE WHEN attempts >= max_attempts \
                 THEN 'claim lost: the cluster restarted' ELSE last_error END, \
               finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END, \
               owner = NULL, lease_until = NULL \
             WHERE status = 'RUNNING'",
        )
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
        Ok(sqlx::query(
            "DELETE FROM rota_tasks WHERE id IN (SELECT id FROM rota_tasks \
             WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < $1 LIMIT $2)",
        )
        .bind(finished_before)
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected())
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

    async fn next_due(&self, partitions: &[u32]) -> Result<Option<Millis>, StoreError> {
        let parts: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        sqlx::query_scalar(
            "SELECT min(scheduled_at) FROM rota_tasks WHERE status = 'PENDING' AND partition = ANY($1)",
        )
        .bind(&parts)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
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
    payload: Vec<serde_json::Value>,
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
        self.payload.push(t.payload.clone());
        self.handler.push(t.handler.clone());
        self.partition_key.push(t.partition_key.clone());
        self.partition.push(partition as i32);
        self.scheduled_at.push(t.scheduled_at);
        self.max_attempts.push(t.max_attempts as i32);
        self.idempotency_key.push(t.idempotency_key.clone());
    }
}
