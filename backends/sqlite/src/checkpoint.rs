//! The checkpointer: copies the write-ahead log back into the database file from a connection
//! and a thread of its own, so that the one connection every call waits for never does it.
//! (SQLite's automatic checkpoint runs inside the commit that crosses its threshold: measured
//! on a 100,000-task burn-down, a twelfth of that connection's time.)

use crate::backend;
use rota_scheduler::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// How long the checkpointer lets writes gather before it copies them: a busy store is
/// checkpointed about this often, an idle one not at all.
const GATHER: Duration = Duration::from_millis(50);

/// The log size (pages) past which a commit checkpoints by itself after all, as SQLite does by
/// default at 1,000: a bound on the log should the checkpointer fall behind.
const FALLBACK_PAGES: u32 = 20_000;

/// The handle of the checkpointer thread; dropping it ends the thread.
pub(crate) struct Checkpointer {
    wake: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (whose log the store's own connection
    /// leaves to it up to [`FALLBACK_PAGES`]).
    pub(crate) fn start(path: &Path, store: &Connection) -> Result<Self, StoreError> {
        store
            .pragma_update(None, "wal_autocheckpoint", FALLBACK_PAGES)
            .map_err(backend)?;
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        let (wake, woken) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("rota-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &woken))
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
        Ok(Self { wake })
    }

    /// Says that a call has ended (it may have written).
    pub(crate) fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

fn run(conn: &Connection, woken: &mpsc::Receiver<()>) {
    while woken.recv().is_ok() {
        std::thread::sleep(GATHER);
        while woken.try_recv().is_ok() {}
        // PASSIVE: copies what no reader still needs and never waits for the writer; what it
        // leaves, the next round takes. A failure is left to the next round too (and to the
        // fallback above).
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}
