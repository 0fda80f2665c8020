//! Schedules in SQLite: one row per schedule (its definition and recent runs as JSON), read and
//! written inside the caller's transaction, so that a firing's compare-and-set, fence and task
//! inserts commit together.

use crate::tasks::insert_in;
use crate::{SqliteTaskStore, backend};
use rota_scheduler::DueSchedulesQuery;
use rota_scheduler::schedule::{Run, Schedule, ScheduleDef};
use rota_scheduler::{
    DueSchedules, Millis, ScheduleWrite, ScheduleWritten, Schedules, StoreError, Task,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

/// The schedules table (a migration).
pub const MIGRATION: &str = r#"
CREATE TABLE schedules (
    name       TEXT    PRIMARY KEY,
    definition TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    paused     INTEGER NOT NULL,
    next_tick  INTEGER,
    last_tick  INTEGER,
    recent     TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX schedules_due ON schedules (partition, next_tick) WHERE next_tick IS NOT NULL;
"#;

const COLUMNS: &str = "name, definition, partition, paused, next_tick, last_tick, recent, revision, created_at, updated_at";

fn json_error(column: usize, e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
}

fn schedule_from(row: &Row<'_>) -> rusqlite::Result<Schedule> {
    let def: String = row.get(1)?;
    let recent: String = row.get(6)?;
    Ok(Schedule {
        def: serde_json::from_str::<ScheduleDef>(&def).map_err(|e| json_error(1, e))?,
        partition: row.get(2)?,
        paused: row.get(3)?,
        next_tick: row.get(4)?,
        last_tick: row.get(5)?,
        recent: serde_json::from_str::<Vec<Run>>(&recent).map_err(|e| json_error(6, e))?,
        revision: row.get::<_, i64>(7)? as u64,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

/// One schedule.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Schedule>, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"))
        .and_then(|mut s| s.query_row([name], schedule_from).optional())
        .map_err(backend)
}

/// Schedules by name after `after`.
pub fn list(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Schedule>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE (?1 IS NULL OR name > ?1) ORDER BY name LIMIT ?2"
        ))
        .map_err(backend)?;
    stmt.query_map(params![after, limit.max(1) as i64], schedule_from)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)
}

/// The write of [`rota_scheduler::TaskStore::write_schedule`], in the transaction `tx` holds.
pub fn write(tx: &Connection, write: ScheduleWrite) -> Result<ScheduleWritten, StoreError> {
    let (partitions, now) = (write.partitions, write.now);
    let s = &write.schedule;
    let current = get(tx, &s.def.name)?;
    if current.as_ref().map(|c| c.revision) != write.expected {
        return Ok(ScheduleWritten::Conflict(current.map(Box::new)));
    }
    if let Some(partition) = write.fenced_partition() {
        let holder: Option<(String, i64)> = tx
            .prepare_cached("SELECT owner, epoch FROM partition_owners WHERE partition = ?1")
            .and_then(|mut st| {
                st.query_row([partition], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        write.check_fence(holder.as_ref().map(|(o, e)| (o.as_str(), *e as u64)))?;
    }
    let def = serde_json::to_string(&s.def).map_err(|e| StoreError::Backend(e.to_string()))?;
    let recent =
        serde_json::to_string(&s.recent).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO schedules (name, definition, partition, paused, next_tick, last_tick, \
         recent, revision, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
         partition = excluded.partition, paused = excluded.paused, \
         next_tick = excluded.next_tick, last_tick = excluded.last_tick, \
         recent = excluded.recent, revision = excluded.revision, \
         updated_at = excluded.updated_at",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.def.name,
            def,
            s.partition,
            s.paused,
            s.next_tick,
            s.last_tick,
            recent,
            s.revision as i64,
            s.created_at,
            s.updated_at
        ])
    })
    .map_err(backend)?;
    let tasks: Vec<(Task, bool)> = insert_in(tx, write.tasks, partitions, now)?;
    Ok(ScheduleWritten::Written(tasks))
}

/// Deletes a schedule at `revision`.
pub fn delete(conn: &Connection, name: &str, revision: u64) -> Result<bool, StoreError> {
    conn.execute(
        "DELETE FROM schedules WHERE name = ?1 AND revision = ?2",
        params![name, revision as i64],
    )
    .map(|n| n > 0)
    .map_err(backend)
}

/// The due schedules of some partitions, and the next tick of the others.
pub fn due(
    conn: &Connection,
    partitions: &[u32],
    before: Millis,
    limit: usize,
) -> Result<DueSchedules, StoreError> {
    let partitions = serde_json::to_string(partitions).expect("integers serialize");
    let schedules = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE partition IN (SELECT value FROM json_each(?1)) \
             AND next_tick IS NOT NULL AND NOT paused AND next_tick <= ?2 \
             ORDER BY next_tick, name LIMIT ?3"
        ))
        .and_then(|mut st| {
            st.query_map(
                params![partitions, before, limit.max(1) as i64],
                schedule_from,
            )?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(backend)?;
    let next_tick: Option<Millis> = conn
        .prepare_cached(
            "SELECT min(next_tick) FROM schedules WHERE partition IN (SELECT value FROM json_each(?1)) \
             AND next_tick IS NOT NULL AND NOT paused AND next_tick > ?2",
        )
        .and_then(|mut st| st.query_row(params![partitions, before], |r| r.get(0)))
        .map_err(backend)?;
    Ok(DueSchedules {
        schedules,
        next_tick,
    })
}

#[async_trait::async_trait]
impl Schedules for SqliteTaskStore {
    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| get(conn, &name)).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        let after = after.map(str::to_owned);
        self.run(move |conn| list(conn, after.as_deref(), limit))
            .await
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten, StoreError> {
        write.validate()?;
        let written = self
            .run(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let written = self::write(&tx, write)?;
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
        self.run(move |conn| delete(conn, &name, revision)).await
    }

    async fn due_schedules(&self, query: DueSchedulesQuery) -> Result<DueSchedules, StoreError> {
        let (partitions, before, limit) = (&query.partitions, query.before, query.limit);
        let partitions = partitions.to_vec();
        self.run(move |conn| due(conn, &partitions, before, limit))
            .await
    }
}
