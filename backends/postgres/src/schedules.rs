//! Schedules in PostgreSQL: one row per schedule (its definition and recent runs as JSON). A
//! write is one transaction: the schedule's row locked `FOR UPDATE` for the compare-and-set, the
//! partition's owner row locked `FOR SHARE` for the fence (an ownership change waits for the
//! firing, then sees its tasks), and the fired ticks' tasks inserted by their idempotency keys.

use crate::{PostgresTaskStore, backend, seen, task_from};
use rota_scheduler::DueSchedulesQuery;
use rota_scheduler::schedule::{Run, Schedule, ScheduleDef};
use rota_scheduler::{
    DueSchedules, Millis, NewTask, ScheduleWrite, ScheduleWritten, Schedules, StoreError, Task,
    partition_for,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

/// The schedules table (a migration).
pub const MIGRATION: &str = r#"
CREATE TABLE rota_schedules (
    name       TEXT    PRIMARY KEY,
    definition JSON    NOT NULL,
    partition  INTEGER NOT NULL,
    paused     BOOLEAN NOT NULL,
    next_tick  BIGINT,
    last_tick  BIGINT,
    recent     JSON    NOT NULL,
    revision   BIGINT  NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE INDEX rota_schedules_due ON rota_schedules (partition, next_tick)
    WHERE next_tick IS NOT NULL AND NOT paused;
"#;

macro_rules! schedule_columns {
    () => {
        "name, definition::text AS definition, partition, paused, next_tick, last_tick, \
         recent::text AS recent, revision, created_at, updated_at"
    };
}

/// `SELECT` of every schedule column `FROM rota_schedules`, then `$rest` (a literal).
macro_rules! select_schedules {
    ($rest:literal) => {
        concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM rota_schedules ",
            $rest
        )
    };
}

fn decode(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("stored schedule {what} unreadable: {e}"))
}

fn schedule_from(row: &PgRow) -> Result<Schedule, StoreError> {
    let def: String = row.try_get("definition").map_err(backend)?;
    let recent: String = row.try_get("recent").map_err(backend)?;
    Ok(Schedule {
        def: serde_json::from_str::<ScheduleDef>(&def).map_err(|e| decode("definition", e))?,
        partition: row.try_get::<i32, _>("partition").map_err(backend)? as u32,
        paused: row.try_get("paused").map_err(backend)?,
        next_tick: row.try_get("next_tick").map_err(backend)?,
        last_tick: row.try_get("last_tick").map_err(backend)?,
        recent: serde_json::from_str::<Vec<Run>>(&recent).map_err(|e| decode("runs", e))?,
        revision: row.try_get::<i64, _>("revision").map_err(backend)? as u64,
        created_at: row.try_get("created_at").map_err(backend)?,
        updated_at: row.try_get("updated_at").map_err(backend)?,
    })
}

/// One schedule.
pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Schedule>, StoreError> {
    let row = sqlx::query(select_schedules!("WHERE name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(backend)?;
    row.as_ref().map(schedule_from).transpose()
}

/// Schedules by name after `after`.
pub async fn list(
    pool: &PgPool,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Schedule>, StoreError> {
    let rows = sqlx::query(select_schedules!(
        "WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2"
    ))
    .bind(after)
    .bind(limit.max(1) as i64)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter().map(schedule_from).collect()
}

/// The write of [`rota_scheduler::TaskStore::write_schedule`], in the transaction `tx` is in;
/// the caller commits on [`ScheduleWritten::Written`] and rolls back otherwise.
pub async fn write(
    tx: &mut PgConnection,
    now: Option<Millis>,
    write: ScheduleWrite,
) -> Result<ScheduleWritten, StoreError> {
    let partitions = write.partitions;
    let s = &write.schedule;
    let row = sqlx::query(select_schedules!("WHERE name = $1 FOR UPDATE"))
        .bind(&s.def.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    let current = row.as_ref().map(schedule_from).transpose()?;
    if current.as_ref().map(|c| c.revision) != write.expected {
        return Ok(ScheduleWritten::Conflict(current.map(Box::new)));
    }
    if let Some(partition) = write.fenced_partition() {
        let holder: Option<(String, i64)> = sqlx::query_as(
            "SELECT owner, epoch FROM rota_partition_owners WHERE partition = $1 FOR SHARE",
        )
        .bind(partition as i32)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        write.check_fence(holder.as_ref().map(|(o, e)| (o.as_str(), *e as u64)))?;
    }
    let def = serde_json::to_string(&s.def).map_err(|e| StoreError::Backend(e.to_string()))?;
    let recent =
        serde_json::to_string(&s.recent).map_err(|e| StoreError::Backend(e.to_string()))?;
    let written = sqlx::query(
        "INSERT INTO rota_schedules (name, definition, partition, paused, next_tick, last_tick, \
           recent, revision, created_at, updated_at) \
         VALUES ($1, $2::json, $3, $4, $5, $6, $7::json, $8, $9, $10) \
         ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
           partition = excluded.partition, paused = excluded.paused, \
           next_tick = excluded.next_tick, last_tick = excluded.last_tick, \
           recent = excluded.recent, revision = excluded.revision, \
           updated_at = excluded.updated_at \
         WHERE rota_schedules.revision = $11",
    )
    .bind(&s.def.name)
    .bind(def)
    .bind(s.partition as i32)
    .bind(s.paused)
    .bind(s.next_tick)
    .bind(s.last_tick)
    .bind(recent)
    .bind(s.revision as i64)
    .bind(s.created_at)
    .bind(s.updated_at)
    .bind(write.expected.map(|r| r as i64))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    if written.rows_affected() == 0 {
        // Created by a concurrent writer since our read (no row to lock then).
        return Ok(ScheduleWritten::Conflict(None));
    }
    let mut tasks = Vec::with_capacity(write.tasks.len());
    for task in write.tasks {
        tasks.push(insert_one(&mut *tx, task, partitions, now).await?);
    }
    Ok(ScheduleWritten::Written(tasks))
}

/// Inserts one task unless its idempotency key exists (then returns that task). Schedules fire
/// a task or a few at a time: the batch path of `insert` is not needed here.
async fn insert_one(
    tx: &mut PgConnection,
    task: NewTask,
    partitions: u32,
    now: Option<Millis>,
) -> Result<(Task, bool), StoreError> {
    let id: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('rota_tasks', 'id'))")
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    let partition = partition_for(task.partition_key.as_deref(), id, partitions);
    let row = sqlx::query(concat!(
        "INSERT INTO rota_tasks (id, name, payload, handler, partition_key, partition, status, \
           scheduled_at, max_attempts, idempotency_key, created_at) \
         VALUES ($1, $2, $3::json, $4, $5, $6, 'PENDING', $7, $8, $9, ",
        now!(10),
        ") \
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
         RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(&task.name)
    .bind(task.payload.to_string())
    .bind(&task.handler)
    .bind(&task.partition_key)
    .bind(partition as i32)
    .bind(task.scheduled_at)
    .bind(task.max_attempts as i32)
    .bind(&task.idempotency_key)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(backend)?;
    if let Some(row) = row {
        return Ok((task_from(&row).map_err(backend)?, true));
    }
    let row = sqlx::query(select_tasks!("WHERE idempotency_key = $1"))
        .bind(&task.idempotency_key)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    let existing = task_from(&row).map_err(backend)?;
    let existing = seen(&mut *tx, vec![existing]).await?;
    Ok((existing.into_iter().next().expect("one task"), false))
}

/// Deletes a schedule at `revision`.
pub async fn delete(pool: &PgPool, name: &str, revision: u64) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM rota_schedules WHERE name = $1 AND revision = $2")
        .bind(name)
        .bind(revision as i64)
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() > 0)
}

/// The due schedules of some partitions, and the next tick of the others.
pub async fn due(
    pool: &PgPool,
    partitions: &[u32],
    before: Millis,
    limit: usize,
) -> Result<DueSchedules, StoreError> {
    let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
    let rows = sqlx::query(select_schedules!(
        "WHERE partition = ANY($1) AND next_tick IS NOT NULL \
         AND NOT paused AND next_tick <= $2 ORDER BY next_tick, name LIMIT $3"
    ))
    .bind(&partitions)
    .bind(before)
    .bind(limit.max(1) as i64)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    let next_tick: Option<Millis> = sqlx::query_scalar(
        "SELECT min(next_tick) FROM rota_schedules WHERE partition = ANY($1) \
         AND next_tick IS NOT NULL AND NOT paused AND next_tick > $2",
    )
    .bind(&partitions)
    .bind(before)
    .fetch_one(pool)
    .await
    .map_err(backend)?;
    Ok(DueSchedules {
        schedules: rows.iter().map(schedule_from).collect::<Result<_, _>>()?,
        next_tick,
    })
}

#[async_trait::async_trait]
impl Schedules for PostgresTaskStore {
    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        get(&self.pool, name).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        list(&self.pool, after, limit).await
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten, StoreError> {
        write.validate()?;
        let mut tx = self.begin().await?;
        let written = self::write(&mut tx, self.clock(write.now), write).await?;
        if let ScheduleWritten::Written(tasks) = &written {
            tx.commit().await.map_err(backend)?;
            let created = tasks.iter().filter(|(_, created)| *created);
            let notified = rota_scheduler::Inserted::of(created.map(|(t, _)| t));
            self.announce.add(&self.inserted, notified);
        }
        Ok(written)
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        delete(&self.pool, name, revision).await
    }

    async fn due_schedules(&self, query: DueSchedulesQuery) -> Result<DueSchedules, StoreError> {
        let (partitions, before, limit) = (&query.partitions, query.before, query.limit);
        due(&self.pool, partitions, before, limit).await
    }
}
