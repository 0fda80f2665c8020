//! # rota-sqlite
//!
//! A task store ([`rota_scheduler::TaskStore`]) on SQLite (bundled, WAL): the store of `rota dev` and of single-node
//! deployments. One connection serialises all access (SQLite has one writer anyway); every call
//! runs on tokio's blocking pool so the async workers never wait on disk. Each call is one
//! transaction (`BEGIN IMMEDIATE` for writes), which gives the contract's atomicity; partition
//! ownership lives in the same database, so every claim, completion and renewal is checked
//! against the current owner and epoch inside the transaction that applies it.
//!
//! A file belongs to one cluster, recorded by the first that opens it: another cluster opening
//! it is refused (give each cluster a file of its own), so two clusters never share tasks or
//! partition owners by accident.

mod checkpoint;
mod due;
mod execution;
mod schedules;
mod schema;
mod tasks;

use rota_model::{Epoch, InstanceId};
use rota_scheduler::{Inserted, StoreError, Task, TaskId, TaskStatus};
use rusqlite::{Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const COLUMNS: &str = "id, name, payload, handler, partition_key, partition, status, scheduled_at, \
     attempts, max_attempts, last_error, owner, epoch, lease_until, idempotency_key, created_at, \
     started_at, finished_at";

/// The SQLite task store.
pub struct SqliteTaskStore {
    conn: Arc<Mutex<Connection>>,
    inserted: broadcast::Sender<Inserted>,
    /// Wakes the checkpointer after a call (a file's store; none in memory).
    checkpoints: Option<checkpoint::Checkpointer>,
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
        let mut store = Self::with_connection(conn)?;
        store.checkpoints = Some(checkpoint::Checkpointer::start(
            path,
            &store.conn.lock().unwrap_or_else(|e| e.into_inner()),
        )?);
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
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            inserted: broadcast::channel(1024).0,
            checkpoints: None,
        })
    }

    /// Wakes the workers of the partitions that received new tasks.
    fn announce(&self, results: &[(Task, bool)]) {
        let created = results.iter().filter(|(_, created)| *created);
        for n in Inserted::of(created.map(|(t, _)| t)) {
            let _ = self.inserted.send(n);
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?;
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.wake();
        }
        result
    }
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
