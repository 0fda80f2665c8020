//! The schedules' clock as the worker runs it: fires the due ticks of the schedules on the
//! partitions this worker leads ([`crate::schedule::clock::fire_due`]), waking at the next
//! known tick's lookahead, when it gains a partition (`clock_wake`), and every `schedule_poll`
//! for schedules created elsewhere. It pauses while the session is in doubt, as claims do (the
//! store's fence would refuse it anyway). It owns no lock: it reads the book's claims and drops
//! the partitions the store refuses.

use super::Inner;
use crate::schedule::clock::fire_due;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;

/// Fires ticks until `shutdown`.
pub(super) async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let poll = inner.config.schedule_poll.max(Duration::from_millis(10));
    while !rota_cluster::stopping(&shutdown) {
        let claims = inner.book().claims();
        let mut sleep = poll;
        if !claims.is_empty() && !inner.session_in_doubt() {
            let now = (inner.now)();
            let fired = fire_due(
                &*inner.store,
                &inner.config.id,
                &claims,
                inner.config.partitions,
                now,
            )
            .await;
            match fired {
                Ok(round) => {
                    let m = &inner.metrics;
                    m.schedule_ticks_fired.inc_by(round.fired);
                    m.schedule_ticks_duplicate.inc_by(round.duplicates);
                    m.schedule_ticks_skipped.inc_by(round.skipped);
                    if round.duplicates > 0 {
                        warn!(
                            duplicates = round.duplicates,
                            "schedule ticks fired again were refused: their tasks existed"
                        );
                    }
                    inner.drop_partitions(&round.refused);
                    if let Some(at) = round.wake_at {
                        let until = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
                        sleep = sleep.min(until).max(Duration::from_millis(5));
                    }
                }
                Err(e) => warn!(error = %e, "reading due schedules failed"),
            }
        }
        tokio::select! {
            biased;
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.clock_wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}
