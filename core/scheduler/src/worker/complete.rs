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

/// Completion writers, each for its own share of the partitions (a partition's completions
/// always go by the same writer, so two writes never wait on one another in the store): while
/// one commits, the other writes. Each gathers a trickle for `WRITERS` times the worker's
/// `gather`, so that under a steady low rate the writers together make no more statements than
/// one would (measured: with the single `gather`, two writers at 2,000 tasks/s made twice the
/// statements and 15% more start-due lag; see docs/performance.md, issue 23).
const WRITERS: u32 = 2;

/// Sends completions to the store in batches, up to [`WRITERS`] writes at once. A write that
/// fails for a reason that may pass (the store unreachable) is tried again, with a growing
/// pause, for as long as the worker holds the tasks' partitions: a task must not run again
/// because its completion was lost. (The store's fence refuses it if the claim has moved on
/// meanwhile.) Returns once the channel is closed and every write has ended.
pub(super) async fn in_batches(inner: Arc<Inner>, mut done: mpsc::Receiver<Completion>) {
    let (lanes, writers): (Vec<_>, Vec<_>) = (0..WRITERS)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel::<Completion>();
            (tx, tokio::spawn(lane(inner.clone(), rx)))
        })
        .unzip();
    // Dropping this task (the worker killed) ends the writers with it.
    let _writers = AbortOnDrop(writers.iter().map(|w| w.abort_handle()).collect());
    while let Some(c) = done.recv().await {
        let _ = lanes[(c.partition % WRITERS) as usize].send(c);
    }
    drop(lanes);
    for writer in writers {
        let _ = writer.await;
    }
}

/// Aborts tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// One writer: gathers what has arrived since its last write, writes it, settles it.
async fn lane(inner: Arc<Inner>, mut done: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::new();
    while let Some(first) = done.recv().await {
        batch.push(first);
        let drain = |batch: &mut Vec<Completion>,
                     done: &mut mpsc::UnboundedReceiver<Completion>| {
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
            tokio::time::sleep(inner.config.gather * WRITERS).await;
            drain(&mut batch, &mut done);
        }
        batch = write(&inner, std::mem::take(&mut batch)).await;
        batch.clear();
    }
}

/// Writes one batch of completions, retried as [`in_batches`] says, and settles them; gives
/// the batch's allocation back for the next one.
async fn write(inner: &Arc<Inner>, completions: Vec<Completion>) -> Vec<Completion> {
    let mut pause = RETRY_FIRST;
    let mut ends = CompleteTasks {
        owner: inner.config.id.clone(),
        completions,
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
    inner.book().resume.ended(&ends.completions);
    inner.settled(ends.completions.iter().map(|c| c.partition));
    ends.completions
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
        self.book().resume.ended(&interrupted.completions);
    }
}
