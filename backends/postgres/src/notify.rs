//! Insert notifications across processes: after an insert commits, the partitions it filled
//! are announced with `NOTIFY` by one background task per store that gathers whatever committed
//! meanwhile into one statement (PostgreSQL serialises every notifying transaction's commit on
//! one lock: notifying from each insert made concurrent single creates wait on each other), and
//! a listener turns the cluster's notifications into
//! [`Execution::inserted`](rota_scheduler::Execution::inserted) wake-ups.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Forwards the cluster's notification payloads (partition numbers) to the broadcast channel,
/// reconnecting after errors.
pub(crate) async fn listen(pool: PgPool, channel: String, inserted: broadcast::Sender<u32>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for task inserts; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while let Ok(notification) = listener.recv().await {
            for p in notification.payload().split(',') {
                if let Ok(p) = p.parse::<u32>() {
                    let _ = inserted.send(p);
                }
            }
        }
    }
}

/// Partitions waiting to be announced.
#[derive(Default)]
pub(crate) struct Announcements {
    partitions: std::sync::Mutex<BTreeSet<u32>>,
    added: tokio::sync::Notify,
}

impl Announcements {
    pub(crate) fn add(&self, partitions: impl IntoIterator<Item = u32>) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(partitions);
        self.added.notify_one();
    }

    async fn take(&self) -> BTreeSet<u32> {
        loop {
            let taken =
                std::mem::take(&mut *self.partitions.lock().unwrap_or_else(|e| e.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.added.notified().await;
        }
    }
}

/// Announces inserted partitions: one `NOTIFY` for everything that arrived since the last one.
pub(crate) async fn notify(pool: PgPool, channel: String, pending: Arc<Announcements>) {
    loop {
        let partitions = pending.take().await;
        let payload = partitions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel)
            .bind(&payload)
            .execute(&pool)
            .await
        {
            // The workers' idle backstop still finds these tasks.
            tracing::warn!(error = %e, "cannot announce inserted tasks");
        }
    }
}
