//! Tasks as clients see them ([`Tasks`]): the bulk insert (ids reserved from the sequence,
//! partitions computed, one `INSERT ... SELECT FROM UNNEST(...)`), reads, lists, cancel, count.

use crate::{PostgresTaskStore, backend, seen, task_from, tasks_from};
use rota_scheduler::{
    Backlog, CancelOutcome, ListFilter, Millis, NewTask, Page, StoreError, Task, TaskId,
    TaskStatus, Tasks, partition_for,
};
use rota_scheduler::{InsertTasks, Inserted};
use sqlx::AssertSqlSafe;
use std::collections::{BTreeSet, HashMap};

#[async_trait::async_trait]
impl Tasks for PostgresTaskStore {
    async fn insert(&self, batch: InsertTasks) -> Result<Vec<(Task, bool)>, StoreError> {
        batch.validate()?;
        let (tasks, partitions, now) = (batch.tasks, batch.partitions, batch.now);
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
            // One row (an array), not one per id: a thousand rows cost this process more
            // than the database's work for them.
            sqlx::query_scalar(
                "SELECT array_agg(nextval(pg_get_serial_sequence('rota_tasks', 'id'))) \
                 FROM generate_series(1, $1)",
            )
            .bind(fresh.len() as i64)
            .fetch_one(&self.pool)
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
        // Only the ids written (a key taken meanwhile writes none) and their creation time come
        // back, as two arrays in one row: the rest is what was sent, and reading it back (or a
        // row per task) cost the database and this process more than the insert's own work.
        let (written, created_at): (Vec<i64>, Vec<i64>) = if fresh.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            sqlx::query_as(concat!(
                "WITH written AS (INSERT INTO rota_tasks (id, name, payload, handler, partition_key, partition, \
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
                 RETURNING id, created_at) \
                 SELECT COALESCE(array_agg(id), '{}'), COALESCE(array_agg(created_at), '{}') \
                 FROM written"
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
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?
        };
        let mut written: HashMap<i64, Millis> = written.into_iter().zip(created_at).collect();
        // A concurrent insert may have taken a key between our read and write: read it back.
        let lost: Vec<String> = fresh
            .iter()
            .zip(&ids)
            .filter(|(_, id)| !written.contains_key(id))
            .filter_map(|(&i, _)| tasks[i].idempotency_key.clone())
            .collect();
        if !lost.is_empty() {
            for t in self.by_keys(&lost).await? {
                by_key.insert(t.idempotency_key.clone().expect("selected by key"), t);
            }
        }

        let mut out = Vec::with_capacity(tasks.len());
        // Each new task's id and partition, as sent, by its place in the batch.
        let mut fresh_at: HashMap<usize, (i64, u32)> = fresh
            .iter()
            .zip(columns.id.iter().zip(&columns.partition))
            .map(|(&i, (&id, &partition))| (i, (id, partition as u32)))
            .collect();
        for (i, t) in tasks.iter().enumerate() {
            let created = fresh_at.remove(&i).and_then(|(id, partition)| {
                let at = written.remove(&id)?;
                Some(t.clone().into_pending(id, partition, at))
            });
            if let Some(task) = created {
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
        let notified = Inserted::of(out.iter().filter(|(_, new)| *new).map(|(t, _)| t));
        self.announce.add(&self.inserted, notified);
        Ok(out)
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(select_tasks!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let task = row.as_ref().map(task_from).transpose().map_err(backend)?;
        Ok(seen(&self.pool, task.into_iter().collect()).await?.pop())
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.by_keys(keys).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.max(1);
        // The status is written into the statement (a closed set of literals), so the planner
        // can use the partial indexes: RUNNING tasks are the live claims' (looked up by id from
        // the claim rows), FAILED and CANCELLED are found by their index in id order; COMPLETED
        // and PENDING walk the primary key (the cost grows with the ids passed over; see
        // docs/performance.md). A task a live claim names is stored PENDING and seen RUNNING.
        let by_status = match filter.status {
            None => "",
            Some(TaskStatus::Pending) => concat!(" AND status = 'PENDING' AND id NOT IN ", held!()),
            Some(TaskStatus::Running) => {
                concat!(" AND status = 'PENDING' AND id = ANY(ARRAY", held!(), ")")
            }
            Some(TaskStatus::Completed) => " AND status = 'COMPLETED'",
            Some(TaskStatus::Failed) => " AND status = 'FAILED'",
            Some(TaskStatus::Cancelled) => " AND status = 'CANCELLED'",
        };
        let by_name = if filter.name.is_some() {
            " AND name = $3"
        } else {
            " AND $3::text IS NULL"
        };
        let sql = format!(
            select_tasks!("WHERE id > $1{}{} ORDER BY id LIMIT $2"),
            by_status, by_name
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(filter.after.unwrap_or(0))
            .bind((limit + 1) as i64)
            .bind(filter.name.as_deref())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let tasks = seen(&self.pool, tasks_from(&rows)?).await?;
        Ok(Page::from_fetched(tasks, limit))
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        // Under the partition's claim lock (see `rota_claim`): a claim in progress finishes
        // first and the cancel sees its claim row, or the claim waits and sees the cancel.
        let partition: Option<i32> = sqlx::query_scalar(
            "SELECT t.partition FROM rota_tasks t CROSS JOIN LATERAL \
               (SELECT pg_advisory_xact_lock(hashtext(current_schema()), t.partition)) l \
             WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if partition.is_none() {
            return Ok(CancelOutcome::NotFound);
        }
        let cancelled = sqlx::query(concat!(
            "UPDATE rota_tasks t SET status = 'CANCELLED', finished_at = $2 \
             WHERE id = $1 AND status = 'PENDING' AND NOT EXISTS (SELECT 1 FROM rota_claims k \
               WHERE k.partition = t.partition AND t.id = ANY(k.tasks)) \
             RETURNING ",
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
                let row = sqlx::query(select_tasks!("WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                match row {
                    Some(row) => {
                        let task = task_from(&row).map_err(backend)?;
                        let seen = seen(&mut *tx, vec![task]).await?;
                        CancelOutcome::Conflict(seen.into_iter().next().expect("one task"))
                    }
                    None => CancelOutcome::NotFound,
                }
            }
        };
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        // The tasks in flight are what the claim rows name; the pending count is of the task
        // rows stored PENDING, which include them.
        let (pending, running): (i64, i64) = sqlx::query_as(
            "WITH running AS (SELECT coalesce(sum(cardinality(tasks)), 0)::bigint AS n \
               FROM rota_claims) \
             SELECT (SELECT count(*) FROM rota_tasks WHERE status = 'PENDING') - running.n, \
                    running.n FROM running",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Backlog {
            pending: pending as u64,
            running: running as u64,
        })
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
