//! # rota-sqlite
//!
//! A [`TaskStore`] on SQLite (bundled, WAL): the store of `rota dev` and of single-node
//! deployments. One connection serialises all access (SQLite has one writer anyway); every call
//! runs on tokio's blocking pool so the async workers never wait on disk. Each call is one
//! transaction (`BEGIN IMMEDIATE` for writes), which gives the contract's atomicity; partition
//! ownership lives in the same database, so every claim, completion and renewal is checked
//! against the current owner and epoch inside the transaction that applies it.
//!
//! A file belongs to one cluster, recorded by the first that opens it: another cluster opening
//! it is refused (give each cluster a file of its own), so two clusters never share tasks or
//! partition owners by accident.

mod schedules;

use rota_model::{Epoch, InstanceId};
use rota_scheduler::schedule::Schedule;
use rota_scheduler::{
    Backlog, CancelOutcome, Claim, Claimed, Completion, CompletionOutcome, DueSchedules,
    ListFilter, Millis, NewTask, Page, ScheduleWrite, ScheduleWritten, StoreError, Task, TaskId,
    TaskStatus, TaskStore, partition_for,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tasks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    handler         TEXT,
    partition_key   TEXT,
    partition       INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    scheduled_at    INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    last_error      TEXT,
    owner           TEXT,
    epoch           INTEGER,
    lease_until     INTEGER,
    idempotency_key TEXT UNIQUE,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER
);
CREATE INDEX tasks_pending_due ON tasks (partition, scheduled_at, id) WHERE status = 'PENDING';
CREATE INDEX tasks_running ON tasks (partition) WHERE status = 'RUNNING';
CREATE TABLE partition_owners (
    partition INTEGER PRIMARY KEY,
    owner     TEXT    NOT NULL,
    epoch     INTEGER NOT NULL
);
"#,
    // Listing failures or cancellations must not scan the history: an index of those rows only
    // (few, so almost free to keep). SQLite matches a partial index only to the same condition,
    // hence one per status.
    r#"
CREATE INDEX tasks_failed ON tasks (finished_at) WHERE status = 'FAILED';
CREATE INDEX tasks_cancelled ON tasks (finished_at) WHERE status = 'CANCELLED';
"#,
    // The cluster whose tasks the file holds: another cluster opening it is refused.
    r#"
CREATE TABLE cluster (name TEXT NOT NULL);
"#,
    schedules::MIGRATION,
];

const COLUMNS: &str = "id, name, payload, handler, partition_key, partition, status, scheduled_at, \
     attempts, max_attempts, last_error, owner, epoch, lease_until, idempotency_key, created_at, \
     started_at, finished_at";

/// The SQLite task store.
pub struct SqliteTaskStore {
    conn: Arc<Mutex<Connection>>,
    inserted: broadcast::Sender<u32>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

impl SqliteTaskStore {
    /// Opens (creating and migrating if needed) the database at `path` for `cluster`; refused
    /// with [`StoreError::Invalid`] if the file holds another cluster's tasks.
    pub fn open(path: impl AsRef<Path>, cluster: &str) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let store = Self::with_connection(conn)?;
        {
            let conn = store.conn.lock().unwrap_or_else(|e| e.into_inner());
            let holder: Option<String> = conn
                .query_row("SELECT name FROM cluster", [], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            match holder {
                None => {
                    conn.execute("INSERT INTO cluster (name) VALUES (?1)", [cluster])
                        .map_err(backend)?;
                }
                Some(holder) if holder == cluster => {}
                Some(holder) => {
                    return Err(StoreError::Invalid(format!(
                        "{} holds the tasks of cluster {holder:?}, not {cluster:?}: give each \
                         cluster a file of its own (storage.url)",
                        path.display()
                    )));
                }
            }
        }
        Ok(store)
    }

    /// A private database in memory, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn with_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            inserted: broadcast::channel(1024).0,
        })
    }

    /// Wakes the workers of the partitions that received new tasks.
    fn announce(&self, results: &[(Task, bool)]) {
        let mut partitions: Vec<u32> = results
            .iter()
            .filter(|(_, created)| *created)
            .map(|(t, _)| t.partition)
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        for p in partitions {
            let _ = self.inserted.send(p);
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this build's {}; upgrade rota",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

fn status_of(s: &str) -> rusqlite::Result<TaskStatus> {
    TaskStatus::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            6,
            rusqlite::types::Type::Text,
            format!("unknown status {s}").into(),
        )
    })
}

fn task_from(row: &Row<'_>) -> rusqlite::Result<Task> {
    let payload: String = row.get(2)?;
    Ok(Task {
        id: row.get(0)?,
        name: row.get(1)?,
        payload: serde_json::from_str(&payload).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        handler: row.get(3)?,
        partition_key: row.get(4)?,
        partition: row.get(5)?,
        status: status_of(&row.get::<_, String>(6)?)?,
        scheduled_at: row.get(7)?,
        attempts: row.get(8)?,
        max_attempts: row.get(9)?,
        last_error: row.get(10)?,
        owner: row.get::<_, Option<String>>(11)?.map(InstanceId::new),
        epoch: row.get::<_, Option<i64>>(12)?.map(|e| e as Epoch),
        lease_until: row.get(13)?,
        idempotency_key: row.get(14)?,
        created_at: row.get(15)?,
        started_at: row.get(16)?,
        finished_at: row.get(17)?,
    })
}

fn get_task(conn: &Connection, id: TaskId) -> Result<Option<Task>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
        [id],
        task_from,
    )
    .optional()
    .map_err(backend)
}

/// The claims whose owner and epoch are still current, and the refused partitions.
fn split_claims(
    conn: &Connection,
    owner: &InstanceId,
    claims: &[Claim],
) -> Result<(Vec<Claim>, Vec<u32>), StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT owner, epoch FROM partition_owners WHERE partition = ?1")
        .map_err(backend)?;
    let (mut valid, mut refused) = (Vec::new(), Vec::new());
    for claim in claims {
        let current: Option<(String, i64)> = stmt
            .query_row([claim.partition], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)?;
        match current {
            Some((o, e)) if o == owner.as_str() && e as Epoch == claim.epoch => valid.push(*claim),
            _ => refused.push(claim.partition),
        }
    }
    Ok((valid, refused))
}

/// Inserts tasks (validated) in the transaction `tx` holds: the one rule of `insert` and of a
/// schedule's firing.
fn insert_in(
    tx: &Connection,
    tasks: Vec<NewTask>,
    partitions: u32,
    now: Millis,
) -> Result<Vec<(Task, bool)>, StoreError> {
    let mut out = Vec::with_capacity(tasks.len());
    {
        let mut by_key = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?1"
            ))
            .map_err(backend)?;
        // Ids are given, not generated, so that the partition (a hash of the id)
        // is written with the row: one statement per task. The write lock taken by
        // BEGIN IMMEDIATE keeps them ours.
        let mut next_id: TaskId = tx
            .query_row(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence \
                   WHERE name = 'tasks'), 0), coalesce((SELECT max(id) FROM tasks), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO tasks (id, name, payload, handler, partition_key, \
                 partition, status, scheduled_at, max_attempts, idempotency_key, \
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'PENDING', ?7, ?8, ?9, ?10) \
                 RETURNING {COLUMNS}"
            ))
            .map_err(backend)?;
        for t in tasks {
            if let Some(key) = &t.idempotency_key {
                let existing = by_key
                    .query_row([key], task_from)
                    .optional()
                    .map_err(backend)?;
                if let Some(task) = existing {
                    out.push((task, false));
                    continue;
                }
            }
            next_id += 1;
            let partition = partition_for(t.partition_key.as_deref(), next_id, partitions);
            let task = insert
                .query_row(
                    params![
                        next_id,
                        t.name,
                        t.payload.to_string(),
                        t.handler,
                        t.partition_key,
                        partition,
                        t.scheduled_at,
                        t.max_attempts,
                        t.idempotency_key,
                        now
                    ],
                    task_from,
                )
                .map_err(backend)?;
            out.push((task, true));
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl TaskStore for SqliteTaskStore {
    async fn insert(
        &self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> Result<Vec<(Task, bool)>, StoreError> {
        for t in &tasks {
            t.validate()?;
        }
        let results = self
            .run(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let out = insert_in(&tx, tasks, partitions, now)?;
                tx.commit().map_err(backend)?;
                Ok(out)
            })
            .await?;
        self.announce(&results);
        Ok(results)
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.run(move |conn| get_task(conn, id)).await
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let keys = keys.to_vec();
        self.run(move |conn| {
            let mut by_key = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?1"
                ))
                .map_err(backend)?;
            let mut out = Vec::new();
            for key in &keys {
                if let Some(t) = by_key
                    .query_row([key], task_from)
                    .optional()
                    .map_err(backend)?
                {
                    out.push(t);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let filter = filter.clone();
        self.run(move |conn| {
            let limit = filter.limit.max(1);
            // The status is written into the statement (a closed set of literals), and the
            // rows of the rare statuses are taken from their partial index and sorted: left to
            // itself, SQLite walks the ids from the cursor past every finished task. PENDING
            // and COMPLETED walk the ids (the cost grows with the ids passed over).
            let (from, by_status) = match filter.status {
                None => ("tasks", String::new()),
                Some(TaskStatus::Running) => (
                    "tasks INDEXED BY tasks_running",
                    " AND status = 'RUNNING'".into(),
                ),
                Some(TaskStatus::Failed) => (
                    "tasks INDEXED BY tasks_failed",
                    " AND status = 'FAILED'".into(),
                ),
                Some(TaskStatus::Cancelled) => (
                    "tasks INDEXED BY tasks_cancelled",
                    " AND status = 'CANCELLED'".into(),
                ),
                Some(status) => ("tasks", format!(" AND status = '{}'", status.as_str())),
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM {from} WHERE id > ?1{by_status} \
                     AND (?2 IS NULL OR name = ?2) ORDER BY id LIMIT ?3"
                ))
                .map_err(backend)?;
            let tasks = stmt
                .query_map(
                    params![
                        filter.after.unwrap_or(TaskId::MIN),
                        filter.name,
                        (limit + 1) as i64
                    ],
                    task_from,
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(Page::from_fetched(tasks, limit))
        })
        .await
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let changed = tx
                .execute(
                    "UPDATE tasks SET status = 'CANCELLED', finished_at = ?2 \
                     WHERE id = ?1 AND status = 'PENDING'",
                    params![id, now],
                )
                .map_err(backend)?;
            let task = get_task(&tx, id)?;
            tx.commit().map_err(backend)?;
            Ok(match (task, changed) {
                (None, _) => CancelOutcome::NotFound,
                (Some(t), 1) => CancelOutcome::Cancelled(t),
                (Some(t), _) => CancelOutcome::Conflict(t),
            })
        })
        .await
    }

    async fn acquire(
        &self,
        partition: u32,
        owner: &InstanceId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let owner = owner.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let current: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, epoch FROM partition_owners WHERE partition = ?1",
                    [partition],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            if let Some((o, e)) = current {
                let e = e as Epoch;
                if e > epoch || (e == epoch && o != owner.as_str()) {
                    return Err(StoreError::StaleEpoch {
                        partition,
                        current: e,
                        given: epoch,
                    });
                }
            }
            tx.execute(
                "INSERT INTO partition_owners (partition, owner, epoch) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (partition) DO UPDATE SET owner = ?2, epoch = ?3",
                params![partition, owner.as_str(), epoch as i64],
            )
            .map_err(backend)?;
            let requeued = tx
                .execute(
                    concat!(
                        "UPDATE tasks SET ",
                        rota_scheduler::take_back_sql!(
                            "",
                            "claim lost: the partition moved to another worker",
                            "?4"
                        ),
                        " WHERE partition = ?1 AND status = 'RUNNING' \
                           AND NOT (owner IS ?2 AND epoch IS ?3)"
                    ),
                    params![partition, owner.as_str(), epoch as i64, now],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(requeued as u64)
        })
        .await
    }

    async fn claim(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Claimed, StoreError> {
        let (owner, partitions) = (owner.clone(), partitions.to_vec());
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let (valid, refused) = split_claims(&tx, &owner, &partitions)?;
            // Each partition's first `limit` due tasks from its own index range (the cost never
            // depends on other partitions' backlog or on finished tasks), cut to the earliest.
            let mut candidates: Vec<(Millis, TaskId, Epoch)> = Vec::new();
            let mut next_due: Option<Millis> = None;
            {
                let mut due = tx
                    .prepare_cached(
                        "SELECT scheduled_at, id FROM tasks INDEXED BY tasks_pending_due \
                         WHERE partition = ?1 AND status = 'PENDING' AND scheduled_at <= ?2 \
                         ORDER BY scheduled_at, id LIMIT ?3",
                    )
                    .map_err(backend)?;
                let mut next = tx
                    .prepare_cached(
                        "SELECT min(scheduled_at) FROM tasks INDEXED BY tasks_pending_due \
                         WHERE partition = ?1 AND status = 'PENDING' AND scheduled_at > ?2",
                    )
                    .map_err(backend)?;
                for c in &valid {
                    let rows = due
                        .query_map(params![c.partition, now, limit as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, c.epoch))
                        })
                        .map_err(backend)?;
                    for row in rows {
                        candidates.push(row.map_err(backend)?);
                    }
                    let at: Option<Millis> = next
                        .query_row(params![c.partition, now], |r| r.get(0))
                        .map_err(backend)?;
                    next_due = match (next_due, at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            candidates.sort_unstable();
            candidates.truncate(limit);
            let mut tasks = Vec::with_capacity(candidates.len());
            {
                let mut update = tx
                    .prepare_cached(&format!(
                        "UPDATE tasks SET status = 'RUNNING', owner = ?2, epoch = ?3, \
                           attempts = attempts + 1, started_at = ?4, lease_until = ?5 \
                         WHERE id = ?1 AND status = 'PENDING' RETURNING {COLUMNS}"
                    ))
                    .map_err(backend)?;
                for (_, id, epoch) in candidates {
                    let task = update
                        .query_row(
                            params![id, owner.as_str(), epoch as i64, now, now + lease_ms],
                            task_from,
                        )
                        .map_err(backend)?;
                    tasks.push(task);
                }
            }
            tx.commit().map_err(backend)?;
            Ok(Claimed {
                tasks,
                refused,
                next_due,
            })
        })
        .await
    }

    async fn complete(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let (owner, completions) = (owner.clone(), completions.to_vec());
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let mut out = Vec::with_capacity(completions.len());
            {
                // Applied only while the claim is this owner's under this epoch, and the
                // partition is still held by it at that epoch.
                const CURRENT: &str = "id = ?1 AND status = 'RUNNING' AND owner = ?2 AND epoch = ?3 \
                    AND partition = ?4 AND EXISTS (SELECT 1 FROM partition_owners o \
                      WHERE o.partition = ?4 AND o.owner = ?2 AND o.epoch = ?3)";
                let mut succeed = tx
                    .prepare_cached(&format!(
                        "UPDATE tasks SET status = 'COMPLETED', owner = NULL, lease_until = NULL, \
                         finished_at = ?5, started_at = coalesce(?6, started_at) \
                         WHERE {CURRENT} RETURNING status"
                    ))
                    .map_err(backend)?;
                let mut release = tx
                    .prepare_cached(&format!(
                        "UPDATE tasks SET status = 'PENDING', owner = NULL, lease_until = NULL, \
                         attempts = attempts - 1, started_at = NULL \
                         WHERE {CURRENT} RETURNING status"
                    ))
                    .map_err(backend)?;
                let mut fail = tx
                    .prepare_cached(&format!(
                        "UPDATE tasks SET \
                           status = CASE WHEN attempts >= max_attempts THEN 'FAILED' ELSE 'PENDING' END, \
                           scheduled_at = CASE WHEN attempts >= max_attempts THEN scheduled_at ELSE ?6 END, \
                           finished_at = CASE WHEN attempts >= max_attempts THEN ?5 ELSE NULL END, \
                           last_error = ?7, owner = NULL, lease_until = NULL, \
                           started_at = coalesce(?8, started_at) \
                         WHERE {CURRENT} RETURNING status"
                    ))
                    .map_err(backend)?;
                for c in completions {
                    let status: Option<String> = match &c.outcome {
                        CompletionOutcome::Succeeded => succeed
                            .query_row(
                                params![
                                    c.id,
                                    owner.as_str(),
                                    c.epoch as i64,
                                    c.partition,
                                    now,
                                    c.started_at
                                ],
                                |r| r.get(0),
                            )
                            .optional(),
                        CompletionOutcome::Failed { error, retry_at } => fail
                            .query_row(
                                params![
                                    c.id,
                                    owner.as_str(),
                                    c.epoch as i64,
                                    c.partition,
                                    now,
                                    retry_at,
                                    error,
                                    c.started_at
                                ],
                                |r| r.get(0),
                            )
                            .optional(),
                        CompletionOutcome::Released => release
                            .query_row(
                                params![c.id, owner.as_str(), c.epoch as i64, c.partition],
                                |r| r.get(0),
                            )
                            .optional(),
                    }
                    .map_err(backend)?;
                    out.push(status.and_then(|s| TaskStatus::parse(&s)));
                }
            }
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn renew(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        lease_ms: i64,
    ) -> Result<Vec<u32>, StoreError> {
        let lease_until = now + lease_ms;
        let (owner, partitions) = (owner.clone(), partitions.to_vec());
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let (valid, refused) = split_claims(&tx, &owner, &partitions)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE tasks SET lease_until = ?4 WHERE partition = ?1 \
                         AND status = 'RUNNING' AND owner = ?2 AND epoch = ?3",
                    )
                    .map_err(backend)?;
                for c in valid {
                    stmt.execute(params![
                        c.partition,
                        owner.as_str(),
                        c.epoch as i64,
                        lease_until
                    ])
                    .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)?;
            Ok(refused)
        })
        .await
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute("DELETE FROM partition_owners", [])
                .map_err(backend)?;
            let requeued = tx
                .execute(
                    concat!(
                        "UPDATE tasks SET ",
                        rota_scheduler::take_back_sql!(
                            "",
                            "claim lost: the cluster restarted",
                            "?1"
                        ),
                        " WHERE status = 'RUNNING'"
                    ),
                    [now],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(requeued as u64)
        })
        .await
    }

    async fn purge_finished(
        &self,
        finished_before: Millis,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let purged = conn
                .execute(
                    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
                     WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < ?1 \
                     LIMIT ?2)",
                    params![finished_before, limit as i64],
                )
                .map_err(backend)?;
            Ok(purged as u64)
        })
        .await
    }

    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| schedules::get(conn, &name)).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        let after = after.map(str::to_owned);
        self.run(move |conn| schedules::list(conn, after.as_deref(), limit))
            .await
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
        let written = self
            .run(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let written = schedules::write(&tx, write, partitions, now)?;
                if matches!(written, ScheduleWritten::Written(_)) {
                    tx.commit().map_err(backend)?;
                }
                Ok(written)
            })
            .await?;
        if let ScheduleWritten::Written(tasks) = &written {
            self.announce(tasks);
        }
        Ok(written)
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| schedules::delete(conn, &name, revision))
            .await
    }

    async fn due_schedules(
        &self,
        partitions: &[u32],
        before: Millis,
        limit: usize,
    ) -> Result<DueSchedules, StoreError> {
        let partitions = partitions.to_vec();
        self.run(move |conn| schedules::due(conn, &partitions, before, limit))
            .await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.run(|conn| {
            let count = |status: &str| -> Result<u64, StoreError> {
                conn.prepare_cached("SELECT count(*) FROM tasks WHERE status = ?1")
                    .and_then(|mut s| s.query_row([status], |r| r.get::<_, i64>(0)))
                    .map(|n| n as u64)
                    .map_err(backend)
            };
            Ok(Backlog {
                pending: count("PENDING")?,
                running: count("RUNNING")?,
            })
        })
        .await
    }

    async fn requeue_expired(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (owner, partitions) = (owner.clone(), partitions.to_vec());
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let (valid, _) = split_claims(&tx, &owner, &partitions)?;
            let mut requeued = 0;
            {
                let mut stmt = tx
                    .prepare_cached(concat!(
                        "UPDATE tasks SET ",
                        rota_scheduler::take_back_sql!(
                            "",
                            "lease expired: the worker neither finished nor renewed it",
                            "?2"
                        ),
                        " WHERE partition = ?1 AND status = 'RUNNING' AND lease_until < ?2"
                    ))
                    .map_err(backend)?;
                for c in valid {
                    requeued += stmt.execute(params![c.partition, now]).map_err(backend)? as u64;
                }
            }
            tx.commit().map_err(backend)?;
            Ok(requeued)
        })
        .await
    }

    fn inserted(&self) -> broadcast::Receiver<u32> {
        self.inserted.subscribe()
    }
}
