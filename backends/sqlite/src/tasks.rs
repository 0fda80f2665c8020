//! Tasks as clients see them ([`Tasks`]): insert, read, list, cancel, count; and the insert
//! that a schedule's firing shares.

use crate::{COLUMNS, SqliteTaskStore, backend, get_task, task_from};
use rota_scheduler::InsertTasks;
use rota_scheduler::{
    Backlog, CancelOutcome, ListFilter, Millis, NewTask, Page, StoreError, Task, TaskId,
    TaskStatus, Tasks, partition_for,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Inserts tasks (validated) in the transaction `tx` holds: the one rule of `insert` and of a
/// schedule's firing.
pub(crate) fn insert_in(
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
            .prepare_cached(
                "INSERT INTO tasks (id, name, payload, handler, partition_key, \
                 partition, status, scheduled_at, max_attempts, idempotency_key, \
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'PENDING', ?7, ?8, ?9, ?10)",
            )
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
            insert
                .execute(params![
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
                ])
                .map_err(backend)?;
            let task = t.into_pending(next_id, partition, now);
            out.push((task, true));
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Tasks for SqliteTaskStore {
    async fn insert(&self, batch: InsertTasks) -> Result<Vec<(Task, bool)>, StoreError> {
        batch.validate()?;
        let (tasks, partitions, now) = (batch.tasks, batch.partitions, batch.now);
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
}
