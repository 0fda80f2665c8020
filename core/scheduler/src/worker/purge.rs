//! Retention: deletes finished tasks past the retention, a batch at a time, from the one
//! worker that leads partition 0 (so the cluster purges once, not once per worker), every tenth
//! of the retention but at most hourly: finding what is past the retention may scan the whole
//! table (an index of finished tasks would cost every completion), so it is done rarely: a task
//! outlives its retention by at most one period (an hour for the 7-day default). It owns no
//! lock: it asks the book whether partition 0 is owned.

use super::Inner;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Tasks deleted per store call.
const BATCH: usize = 10_000;

/// Purges until `shutdown`.
pub(super) async fn finished(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let Some(retention) = inner.config.retention else {
        return;
    };
    let period = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        if !inner.book().owns(0) {
            continue;
        }
        let cutoff = (inner.now)() - retention.as_millis() as i64;
        loop {
            match inner.store.purge_finished(cutoff, BATCH).await {
                Ok(n) if n as usize == BATCH => continue,
                Ok(n) => {
                    if n > 0 {
                        info!(purged = n, "deleted finished tasks past their retention");
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "purging finished tasks failed");
                    break;
                }
            }
        }
    }
}
