//! The database's schema: migrations, applied in order at open; `PRAGMA user_version` records
//! how many ran, and a database newer than this build is refused.

use crate::{backend, schedules};
use rota_scheduler::StoreError;
use rusqlite::Connection;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[
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

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
