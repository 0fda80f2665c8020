//! The poll loop: claims due tasks in batches across the owned partitions, starts them as
//! slots free (each on a tokio task of its own, tracked in the book so that a step-down can
//! abort it), runs each with its handler under the task timeout, and hands its completion to
//! the completer. It owns no lock: it takes the book's for each decision, and a permit of
//! `permits` for each task it starts (held until the run ends).

use super::{HandlerError, Inner, Running};
use crate::metrics::{seconds, timed};
use crate::store::{ClaimTasks, CompleteTasks, Completion, CompletionOutcome, Inserted};
use crate::{Millis, Task, TaskId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};
use tracing::{info, warn};

/// Claims and starts tasks until `shutdown`.
pub(super) async fn run(
    inner: &Arc<Inner>,
    done: &mpsc::Sender<Completion>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut inserted = inner.store.inserted();
    let concurrency = inner.config.concurrency.max(1);
    while !rota_cluster::stopping(&shutdown) {
        inner.start_queued(done);
        let mut wait_until: Option<Millis> = None;
        let busy = concurrency - inner.permits.available_permits();
        let (claims, want) = {
            let mut book = inner.book();
            let want = book.claim_size(concurrency, inner.config.batch, busy, inner.mono_ms());
            (book.claims(), want)
        };
        if let (false, Some(want), false) = (claims.is_empty(), want, inner.session_in_doubt()) {
            let claimed_at = (inner.now)();
            let (resume_after, generation) = inner.book().resume.points(claimed_at);
            let claim = ClaimTasks {
                owner: inner.config.id.clone(),
                partitions: claims,
                now: claimed_at,
                limit: want,
                lease_ms: inner.config.lease.as_millis() as i64,
                resume_after,
            };
            let result = timed(&inner.metrics.claim_duration, inner.store.claim(claim)).await;
            match result {
                Ok(claimed) => {
                    inner.drop_partitions(&claimed.refused);
                    let full = claimed.tasks.len() == want;
                    tracing::debug!(want, claimed = claimed.tasks.len(), busy, "claim");
                    for t in &claimed.tasks {
                        inner.handler_metrics(t).claimed.inc();
                    }
                    let mut book = inner.book();
                    book.resume.claimed(generation, &claimed.tasks, claimed_at);
                    book.claimed(claimed.tasks, inner.mono_ms());
                    drop(book);
                    if full {
                        continue; // More may be due right now.
                    }
                    wait_until = claimed.next_due;
                }
                Err(e) => warn!(error = %e, "claim failed"),
            }
            inner.start_queued(done);
        }
        let now = (inner.now)();
        let idle = inner.config.max_idle;
        let sleep = wait_until
            .map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64))
            .unwrap_or(idle)
            .min(idle);
        tokio::select! {
            biased;
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.wake.notified() => {}
            _ = inner.insert_into_owned(&mut inserted) => {
                // Under a stream of single inserts, gather a few before claiming: one claim
                // (one commit) for several tasks, for a lag of at most this pause.
                tokio::time::sleep(inner.config.gather).await;
                // The claim that follows sees every insert notified so far (a notification
                // comes after its insert committed): one claim answers them all, rather than
                // one claim per notification (a batch insert notifies each of its partitions).
                loop {
                    match inserted.try_recv() {
                        Ok(n) => inner.book().resume.inserted(Some(n)),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            inner.book().resume.inserted(None);
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}

impl Inner {
    /// How long a claimed task may wait for a slot. The store fences claims, not starts: a task
    /// that waited long might belong to a partition that moved while this worker did not
    /// notice (frozen, cut off), so an old claim is given back rather than started.
    fn max_queue_age(&self) -> Duration {
        let mut age = self.config.step_down_timeout / 2;
        // A store that granted a shorter session than configured shortens it too.
        let granted = self.granted_ms.load(Ordering::Relaxed);
        if granted > 0 {
            age = age.min(Duration::from_millis(granted) / 6);
        }
        age.max(Duration::from_millis(50))
    }

    /// Starts queued tasks while slots are free. A task whose partition is no longer owned is
    /// released, never started: usually its step-down already took it out of the queue, but a
    /// claim that returned while the partition was being given up lands here after that.
    /// Nothing starts while the session is in doubt (a claim sent before the doubt may return
    /// during it: its partition may be granted elsewhere by now); what waits is started once
    /// the session is confirmed, or given back when it grows too old or its partition goes.
    pub(super) fn start_queued(self: &Arc<Self>, done: &mpsc::Sender<Completion>) {
        let max_age = self.max_queue_age().as_millis() as Millis;
        let in_doubt = self.session_in_doubt();
        let mut book = self.book();
        if book.queued() == 0 {
            return;
        }
        // Counted under the book's lock, where every slot is taken: callers that run at once
        // (the poll loop, tasks that just ended) each see only the slots still free.
        let free = if in_doubt {
            0
        } else {
            self.permits.available_permits()
        };
        let found = book.take_startable(free, max_age, self.mono_ms());
        // Started under the book's lock, so that a step-down sees each task in one place.
        for task in found.start {
            let permit = self
                .permits
                .clone()
                .try_acquire_owned()
                .expect("a free slot was counted for it");
            let (partition, id) = (task.partition, task.id);
            let running = self.spawn(task, permit, done.clone());
            book.run(partition, id, running);
        }
        drop(book);
        if !found.stale.is_empty() {
            let inner = self.clone();
            tokio::spawn(async move {
                inner.release(found.stale).await;
                inner.wake.notify_one();
            });
        }
    }

    /// Runs a claimed task on its own tokio task. The caller holds the book's lock and records
    /// the task as running before releasing it, so the task cannot finish (and unregister
    /// itself) before it is registered.
    fn spawn(
        self: &Arc<Self>,
        task: Task,
        permit: OwnedSemaphorePermit,
        done: mpsc::Sender<Completion>,
    ) -> Running {
        let interrupted = Completion::of(&task, CompletionOutcome::Released);
        // Dropped with the future, whether it completes or is aborted.
        let guard = InFlight {
            inner: self.clone(),
            partition: task.partition,
            id: task.id,
            sent: false,
            _permit: permit,
        };
        let inner = self.clone();
        let handle = tokio::spawn(async move {
            let mut guard = guard;
            let completion = inner.execute(&task).await;
            guard.sent = done.send(completion).await.is_ok();
            drop(guard);
            // The slot just freed takes the next queued task at once, rather than when the
            // poll loop next looks (it may be waiting on a claim).
            inner.start_queued(&done);
        });
        (handle.abort_handle(), interrupted)
    }

    /// Waits for a new task in an owned partition (or for lost notifications).
    async fn insert_into_owned(&self, inserted: &mut broadcast::Receiver<Inserted>) {
        loop {
            match inserted.recv().await {
                Ok(n) => {
                    let mut book = self.book();
                    book.resume.inserted(Some(n));
                    if book.owns(n.partition) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.book().resume.inserted(None);
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// Runs `task` with its handler under the task timeout: the completion to write.
    async fn execute(&self, task: &Task) -> Completion {
        let started_at = (self.now)();
        let lag_ms = (started_at - task.scheduled_at).max(0);
        self.metrics.start_lag.observe(lag_ms as f64 / 1000.0);
        let metrics = self.handler_metrics(task);
        let started = tokio::time::Instant::now();
        let result = match self.handlers.for_task(task) {
            Ok(handler) => tokio::time::timeout(self.config.task_timeout, handler.run(task))
                .await
                .unwrap_or_else(|_| {
                    Err(HandlerError::Retry(format!(
                        "timed out after {:?}",
                        self.config.task_timeout
                    )))
                }),
            Err(e) => Err(e),
        };
        metrics.duration.observe(seconds(started.elapsed()));
        let outcome = match result {
            Ok(()) => {
                metrics.completed.inc();
                CompletionOutcome::Succeeded
            }
            Err(failure) => {
                // The error may quote what a receiver sent: keep it storable everywhere.
                let error = failure.message().replace('\0', "\u{FFFD}");
                warn!(
                    task = task.id,
                    name = ?task.name,
                    attempt = task.attempts,
                    of = task.max_attempts,
                    error = ?error,
                    "attempt failed"
                );
                metrics.failed.inc();
                let retried = task.attempts < task.max_attempts;
                let now = (self.now)();
                match failure {
                    HandlerError::Fail(_) => CompletionOutcome::Abandoned { error },
                    HandlerError::RetryAfter { delay, .. } => {
                        metrics.retried.inc_by(u64::from(retried));
                        CompletionOutcome::Failed {
                            error,
                            retry_at: now.saturating_add(delay.as_millis() as Millis),
                        }
                    }
                    HandlerError::Retry(_) => {
                        metrics.retried.inc_by(u64::from(retried));
                        let random = (crate::mix(task.id as u64 ^ u64::from(task.attempts)) >> 11)
                            as f64
                            / (1u64 << 53) as f64;
                        CompletionOutcome::Failed {
                            error,
                            retry_at: self.config.retry.retry_at(now, task.attempts, random),
                        }
                    }
                }
            }
        };
        Completion {
            started_at: Some(started_at),
            ..Completion::of(task, outcome)
        }
    }

    /// Gives claimed tasks that never started back to the store (PENDING, attempt not counted).
    /// If the store cannot be reached they stay claimed, and the partition's next owner takes
    /// them back when it acquires the partition.
    pub(super) async fn release(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let released = CompleteTasks {
            owner: self.config.id.clone(),
            completions: tasks
                .iter()
                .map(|t| Completion::of(t, CompletionOutcome::Released))
                .collect(),
            now: (self.now)(),
        };
        let result = self.store.complete(&released).await;
        {
            let mut book = self.book();
            for t in &tasks {
                book.resume.due_at(t.partition, t.scheduled_at);
            }
        }
        match result {
            Ok(_) => info!(
                count = tasks.len(),
                "released claimed tasks that had not started"
            ),
            Err(e) => warn!(error = %e, count = tasks.len(), "releasing unstarted tasks failed"),
        }
        self.settled(tasks.iter().map(|t| t.partition));
    }
}

/// A task in flight; dropping it (completion or abort) unregisters it and frees its slot.
struct InFlight {
    inner: Arc<Inner>,
    partition: u32,
    id: TaskId,
    /// Its completion went to the completer (which settles it); otherwise it is settled here.
    sent: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.book().ran(self.partition, self.id);
        if !self.sent {
            self.inner.settled([self.partition]);
        }
        self.inner.drained.notify_waiters();
        self.inner.wake.notify_one();
    }
}
