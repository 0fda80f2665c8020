//! Ownership: the participant's transitions of the `tasks` resource, turned into partitions the
//! worker owns. A grant of the top state records the ownership in the store (fencing the
//! previous owner); leaving it gives the partition up, draining its claims first. The session's
//! fence ends everything the worker runs once the participant's session can no longer be
//! relied on. It takes the book's lock for each change, never across an `await`; it owns the
//! session deadline's sender (set by the participant through [`TransitionHandler`]).

use super::{Inner, RETRY_FIRST, RETRY_MAX};
use crate::store::AcquirePartition;
use async_trait::async_trait;
use rota_cluster::participant::{TransitionHandler, TransitionRequest};
use rota_model::Epoch;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The participant's handler of the `tasks` resource.
pub(super) struct Ownership {
    inner: Arc<Inner>,
}

impl Ownership {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl TransitionHandler for Ownership {
    async fn on_transition(&self, t: &TransitionRequest) -> Result<(), String> {
        let (top, was_top) = (t.to == t.top, t.from == t.top);
        let inner = &self.inner;
        if top {
            // Granted again under a new epoch while still holding the partition under an older
            // one (its grant renewed without a step-down here): the acquisition below takes
            // back every claim not of the new epoch, so what runs under the old one is let go
            // first, as at a step-down, or it would be claimed again while it still runs.
            if inner.book().held_under_another_epoch(t.partition, t.epoch) {
                info!(
                    partition = t.partition,
                    epoch = t.epoch,
                    "granted again under a new epoch: letting the old epoch's claims go first"
                );
                inner.let_go(t).await;
            }
            let requeued = inner.acquire(t.partition, t.epoch).await?;
            if requeued > 0 {
                info!(
                    partition = t.partition,
                    requeued, "took back the previous owner's claims"
                );
            }
            if inner.book().gain(t.partition, t.epoch) {
                inner.metrics.partitions_owned.inc();
            }
            inner.wake.notify_one();
            inner.clock_wake.notify_one();
        } else if was_top {
            inner.let_go(t).await;
        }
        Ok(())
    }

    fn session_deadline(&self, deadline: Option<tokio::time::Instant>) {
        self.inner.session_deadline.send_replace(deadline);
        // A session that has ended: abort now, not when the fence's timer next runs (by then
        // a new session may have cleared the deadline and been granted the partitions again).
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            self.inner.abort_all();
        }
        // Claims paused while the session was in doubt go on.
        self.inner.wake.notify_one();
    }

    fn session_timeout(&self, granted: Duration) {
        self.inner
            .granted_ms
            .store(granted.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Inner {
    /// Gives the transition's partition up: no more claims, its queued tasks given back, its
    /// running ones drained (until the transition's deadline, or the drain timeout).
    async fn let_go(self: &Arc<Self>, t: &TransitionRequest) {
        // Held (leaving) while no longer owned, so completions in flight are still retried.
        let (was_owned, queued) = self.book().give_up(t.partition);
        if was_owned {
            self.metrics.partitions_owned.dec();
        }
        let deadline = t
            .deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + self.config.drain_timeout);
        // The release settles its tasks whenever the store answers; the drain waits for
        // that no longer than for anything else.
        let releasing = {
            let inner = self.clone();
            tokio::spawn(async move { inner.release(queued).await })
        };
        let _ = tokio::time::timeout_at(deadline, releasing).await;
        self.drain(t.partition, deadline).await;
        self.book().left(t.partition);
    }

    /// Records this worker as the partition's owner at `epoch`. A failure that may pass (the
    /// store unreachable or slow) is tried again with a growing pause, since a transition that
    /// failed would leave the replica in ERROR, until the session can no longer be relied on
    /// (the participant is then stepping down, and waits for this transition first).
    async fn acquire(&self, partition: u32, epoch: Epoch) -> Result<u64, String> {
        let mut session = self.session_deadline.subscribe();
        let mut pause = RETRY_FIRST;
        loop {
            let grant = AcquirePartition {
                partition,
                owner: self.config.id.clone(),
                epoch,
                now: (self.now)(),
            };
            let error = match self.store.acquire(grant).await {
                Ok(requeued) => return Ok(requeued),
                Err(e) if e.retryable() && session.borrow_and_update().is_none() => e,
                Err(e) => return Err(e.to_string()),
            };
            warn!(partition, epoch, error = %error, retry_in = ?pause, "recording the partition's ownership failed; retrying");
            tokio::select! {
                biased;
                _ = tokio::time::sleep(pause) => {}
                _ = session.changed() => {}
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Gives `partition` up: waits until every claim of it has ended in the store (the queued
    /// ones were released before; running ones finish and their completions are written), until
    /// `deadline` or the session's deadline, whichever comes first. Then it aborts what still
    /// runs and reports it interrupted (a failed attempt, retried while attempts remain), so
    /// that the next owner runs it again only once this worker has let it go.
    async fn drain(&self, partition: u32, deadline: tokio::time::Instant) {
        let mut session = self.session_deadline.subscribe();
        let mut announced = false;
        loop {
            let drained = self.drained.notified();
            let left = self.book().unsettled(partition);
            if left == 0 {
                if announced {
                    info!(partition, "partition drained");
                }
                return;
            }
            let until = match *session.borrow_and_update() {
                Some(forced) => forced.min(deadline),
                None => deadline,
            };
            if !announced {
                announced = true;
                info!(
                    partition,
                    tasks = left,
                    limit = ?until.saturating_duration_since(tokio::time::Instant::now()),
                    "giving the partition up: waiting for its tasks in flight to finish"
                );
            }
            tokio::select! {
                biased;
                _ = drained => {}
                _ = session.changed() => {}
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let aborted = self.book().take_running(partition);
        if aborted.is_empty() {
            warn!(
                partition,
                "giving the partition up with completions not yet written"
            );
            return;
        }
        warn!(
            partition,
            count = aborted.len(),
            "drain limit reached: aborting the partition's tasks and reporting them interrupted"
        );
        self.interrupt(aborted, "its partition was given up").await;
    }

    /// The session's deadline has passed: aborts every task in flight (reported interrupted)
    /// and releases the queued ones. Synchronous, so that nothing this worker runs outlives
    /// the call: a session that has ended may be replaced and its partitions granted again at
    /// once, and a new claim must never find the old attempt still running.
    fn abort_all(self: &Arc<Self>) {
        let (aborted, queued) = {
            let mut book = self.book();
            (book.take_all_running(), book.take_queue())
        };
        if !aborted.is_empty() {
            warn!(
                count = aborted.len(),
                "session deadline passed: aborting every task in flight"
            );
            for (handle, _) in &aborted {
                handle.abort();
            }
            let inner = self.clone();
            tokio::spawn(async move {
                inner
                    .interrupt(aborted, "the worker's session was lost")
                    .await;
            });
        }
        if !queued.is_empty() {
            let inner = self.clone();
            tokio::spawn(async move { inner.release(queued).await });
        }
    }
}

/// Once the participant's session can no longer be relied on, nothing of this worker may run
/// past the session's deadline, whatever the step-down is waiting on (a store that hangs, a
/// transition in flight): at the deadline every task in flight is aborted and reported
/// interrupted, and queued claims are given back.
pub(super) async fn fence_session(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut session = inner.session_deadline.subscribe();
    loop {
        let deadline = *session.borrow_and_update();
        if let Some(deadline) = deadline {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(deadline) => {
                    inner.abort_all();
                    // Until the session is back or replaced.
                    tokio::select! {
                        biased;
                        _ = session.changed() => {}
                        _ = shutdown.changed() => return,
                    }
                }
                _ = session.changed() => {}
                _ = shutdown.changed() => return,
            }
        } else {
            tokio::select! {
                biased;
                _ = session.changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
