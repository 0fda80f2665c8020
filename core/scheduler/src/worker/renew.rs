//! Lease renewal: one store write per worker for every claimed task (queued, running, or
//! finished with its completion not yet written), three times per lease; then the claims of
//! owned partitions whose lease ran out (claims this worker lost track of) are taken back, so
//! that the claim itself only ever reads pending tasks. It owns no lock: it reads the book's
//! claims and count, and drops the partitions the store refuses.

use super::Inner;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::warn;

/// Renews until `shutdown`.
pub(super) async fn leases(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let period = inner.config.lease / 3;
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let (claims, busy) = {
            let book = inner.book();
            (book.claims(), book.outstanding() > 0)
        };
        if claims.is_empty() {
            continue;
        }
        if busy {
            let lease = inner.config.lease.as_millis() as i64;
            match inner
                .store
                .renew(&inner.config.id, &claims, (inner.now)(), lease)
                .await
            {
                Ok(refused) => inner.drop_partitions(&refused),
                Err(e) => {
                    // Without a renewal, requeueing expired leases could take our own tasks.
                    warn!(error = %e, "lease renewal failed");
                    continue;
                }
            }
        }
        match inner
            .store
            .requeue_expired(&inner.config.id, &claims, (inner.now)())
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                warn!(
                    requeued = n,
                    "requeued claims whose lease ran out without a completion"
                );
                inner.wake.notify_one();
            }
            Err(e) => warn!(error = %e, "requeueing expired leases failed"),
        }
    }
}
