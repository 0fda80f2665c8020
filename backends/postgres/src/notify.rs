//! Insert notifications across processes: after an insert commits, the partitions it filled
//! are announced with `NOTIFY` by one background task per store that gathers whatever committed
//! meanwhile into one statement (PostgreSQL serialises every notifying transaction's commit on
//! one lock: notifying from each insert made concurrent single creates wait on each other), and
//! a listener turns the cluster's notifications into
//! [`Execution::inserted`](rota_scheduler::Execution::inserted) wake-ups.

use rota_scheduler::{Inserted, Millis};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Forwards the cluster's notification payloads (`partition:earliest due`, comma-separated; a
/// bare partition number from an earlier build) to the broadcast channel, reconnecting after
/// errors.
pub(crate) async fn listen(pool: PgPool, channel: String, inserted: broadcast::Sender<Inserted>) {
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
            for n in notification.payload().split(',').filter_map(parse) {
                let _ = inserted.send(n);
            }
        }
    }
}

/// One notification of a payload: `partition:earliest due`, or a bare partition number.
fn parse(item: &str) -> Option<Inserted> {
    let (partition, earliest_due) = match item.split_once(':') {
        Some((p, at)) => (p.parse().ok()?, at.parse().ok()?),
        None => (item.parse().ok()?, Millis::MIN),
    };
    Some(Inserted {
        partition,
        earliest_due,
    })
}

/// Partitions waiting to be announced, with the earliest due time inserted into each.
#[derive(Default)]
pub(crate) struct Announcements {
    partitions: std::sync::Mutex<BTreeMap<u32, Millis>>,
    added: tokio::sync::Notify,
}

impl Announcements {
    /// Sends `inserted` to this process's receivers, and queues it for the others.
    pub(crate) fn add(&self, local: &broadcast::Sender<Inserted>, inserted: Vec<Inserted>) {
        {
            let mut pending = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for n in &inserted {
                let at = pending.entry(n.partition).or_insert(n.earliest_due);
                *at = (*at).min(n.earliest_due);
            }
        }
        for n in inserted {
            let _ = local.send(n);
        }
        self.added.notify_one();
    }

    async fn take(&self) -> BTreeMap<u32, Millis> {
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

/// Announces inserted partitions: one statement for everything that arrived since the last one,
/// its payloads cut to fit the server's limit on one notification (8,000 bytes).
pub(crate) async fn notify(pool: PgPool, channel: String, pending: Arc<Announcements>) {
    loop {
        let payloads = payloads(&pending.take().await);
        if let Err(e) = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(&channel)
            .bind(&payloads)
            .execute(&pool)
            .await
        {
            // The workers' idle backstop still finds these tasks.
            tracing::warn!(error = %e, "cannot announce inserted tasks");
        }
    }
}

/// The longest payload sent, well under the server's limit.
const PAYLOAD_BYTES: usize = 7_000;

/// `partition:earliest due` items, comma-separated, in payloads of at most [`PAYLOAD_BYTES`].
fn payloads(partitions: &BTreeMap<u32, Millis>) -> Vec<String> {
    let mut out = vec![String::new()];
    for (p, at) in partitions {
        let item = format!("{p}:{at}");
        let last = out.last_mut().expect("one at least");
        if !last.is_empty() && last.len() + 1 + item.len() > PAYLOAD_BYTES {
            out.push(item);
        } else {
            if !last.is_empty() {
                last.push(',');
            }
            last.push_str(&item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_fit_the_servers_limit_and_parse_back() {
        let many: BTreeMap<u32, Millis> = (0..2_000)
            .map(|p| (p, 1_700_000_000_000 + i64::from(p)))
            .collect();
        let payloads = payloads(&many);
        assert!(payloads.len() > 1);
        let mut back = BTreeMap::new();
        for payload in &payloads {
            assert!(payload.len() <= PAYLOAD_BYTES, "{} bytes", payload.len());
            for n in payload.split(',').map(|i| parse(i).expect("parses")) {
                back.insert(n.partition, n.earliest_due);
            }
        }
        assert_eq!(back, many);
        // An earlier build's bare partition number: due time unknown.
        assert_eq!(parse("7").map(|n| n.earliest_due), Some(Millis::MIN));
        assert_eq!(parse("x:1"), None);
    }
}
