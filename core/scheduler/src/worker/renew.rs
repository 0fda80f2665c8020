//! Lease renewal: one store write per worker for every claimed task (queued, running, or
//! finished with its completion not yet written), three times per lease; then the claims of
//! owned partitions whose lease ran out (claims this worker lost track of) are taken back, so
//! that the claim itself only ever reads pending tasks. It owns no lock: it reads the book's
//! claims and count, and drops the partitions the store refuses.

use super::Inner;
use crate::store::{RenewLeases, RequeueExpired};
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
            let renewal = RenewLeases {
                owner: inner.config.id.clone(),
                partitions: claims.clone(),
                now: (inner.now)(),
                lease_ms: inner.config.lease.as_millis() as i64,
            };
            match inner.store.renew(renewal).await {
                Ok(refused) => inner.drop_partitions(&refused),
                Err(e) => {
                    // Without a renewal, requeueing expired leases could take our own tasks.
                    warn!(error = %e, "lease renewal failed");
                    continue;
                }
            }
        }
        let expired = RequeueExpired {
            owner: inner.config.id.clone(),
            partitions: claims,
            now: (inner.now)(),
        };
        match inner.store.requeue_expired(expired).await {
            Ok(0) => {}
            Ok(n) => {
                warn!(
                    requeued = n,
                    "requeued claims whose lease ran out without a completion"
                );
                inner.book().resume.forget_all();
                inner.wake.notify_one();
            }
            Err(e) => warn!(error = %e, "requeueing expired leases failed"),
        }
    }
}
