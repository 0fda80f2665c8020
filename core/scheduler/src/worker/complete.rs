//! The completer: writes the ends of attempts to the store in batches (whatever has arrived
//! since the last write), and settles them in the book once written. It owns the receiving end
//! of the completion channel; it takes the book's lock only to settle and to ask whether a
//! partition is still held.

use super::{Inner, RETRY_FIRST, RETRY_MAX, Running};
use crate::metrics::timed;
use crate::store::{CompleteTasks, Completion, CompletionOutcome};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::warn;

/// Sends completions to the store in batches, one write at a time. (Two writers, each for its own
/// half of the partitions, ran a 100,000-task burn-down up to a tenth faster, but under a steady
/// 2,000 tasks/s each wrote half-size batches, twice the statements, and the start-due lag rose
/// by 15%: see docs/performance.md, issue 23.) A write that fails for a reason that may pass
/// (the store unreachable) is tried again, with a growing pause, for as long as the worker
/// holds the tasks' partitions: a task must not run again because its completion was lost.
/// (The store's fence refuses it if the claim has moved on meanwhile.)
pub(super) async fn in_batches(inner: Arc<Inner>, mut done: mpsc::Receiver<Completion>) {
    let mut batch = Vec::new();
    while let Some(first) = done.recv().await {
        batch.push(first);
        let drain = |batch: &mut Vec<Completion>, done: &mut mpsc::Receiver<Completion>| {
            while batch.len() < 1024 {
                match done.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch, &mut done);
        if batch.len() < 64 {
            // A trickle: wait a moment for more, so a steady stream of tasks costs one commit
            // per several completions rather than one each (nobody waits on a completion).
            tokio::time::sleep(inner.config.gather).await;
            drain(&mut batch, &mut done);
        }
        let mut pause = RETRY_FIRST;
        let mut ends = CompleteTasks {
            owner: inner.config.id.clone(),
            completions: std::mem::take(&mut batch),
            now: 0,
        };
        loop {
            ends.now = (inner.now)();
            let metric = &inner.metrics.completion_duration;
            let result = timed(metric, inner.store.complete(&ends)).await;
            match result {
                Ok(results) => {
                    let refused = results.iter().filter(|r| r.is_none()).count() as u64;
                    inner.metrics.completions_refused.inc_by(refused);
                    break;
                }
                Err(e) if e.retryable() => {
                    let (kept, gone): (Vec<_>, Vec<_>) = {
                        let book = inner.book();
                        let all = ends.completions.drain(..);
                        all.partition(|c| book.holds(c.partition))
                    };
                    inner.settled(gone.iter().map(|c| c.partition));
                    ends.completions = kept;
                    if ends.completions.is_empty() {
                        break;
                    }
                    let count = ends.completions.len();
                    warn!(error = %e, count, retry_in = ?pause, "completion failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                // Not worth retrying: the claims stay RUNNING, and the tasks run again once
                // their lease expires.
                Err(e) => {
                    warn!(error = %e, count = ends.completions.len(), "completion failed");
                    break;
                }
            }
        }
        inner.settled(ends.completions.iter().map(|c| c.partition));
        // The batch's allocation serves the next one.
        batch = ends.completions;
        batch.clear();
    }
}

impl Inner {
    /// Aborts tasks in flight and reports them interrupted: a failed attempt, retried at once
    /// while attempts remain.
    pub(super) async fn interrupt(&self, aborted: Vec<Running>, why: &str) {
        let now = (self.now)();
        let completions = aborted
            .into_iter()
            .map(|(handle, c)| {
                handle.abort();
                Completion {
                    outcome: CompletionOutcome::Failed {
                        error: format!("interrupted: {why} before it finished"),
                        retry_at: now,
                    },
                    ..c
                }
            })
            .collect();
        let interrupted = CompleteTasks {
            owner: self.config.id.clone(),
            completions,
            now,
        };
        if let Err(e) = self.store.complete(&interrupted).await {
            warn!(error = %e, "reporting interrupted tasks failed; their leases will expire");
        }
    }
}
