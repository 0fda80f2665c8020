//! A deadline on every call of a task store: [`Deadlined`] wraps any [`TaskStore`] so that a
//! call with no answer in time fails as [`StoreError::Unavailable`] (which means "may have been
//! applied": the caller treats it as it treats a lost connection). A store that hangs (a frozen
//! database, a half-open connection) so never holds a worker, an API request or a step-down
//! for longer than the deadline; the backend's own limits (PostgreSQL's `statement_timeout`)
//! end the work on the server side too.

use super::schedule::Schedule;
use super::store::{
    Backlog, CancelOutcome, Claim, Claimed, Completion, DueSchedules, ListFilter, Page,
    ScheduleWrite, ScheduleWritten, StoreError, TaskStore,
};
use super::{Millis, NewTask, Task, TaskId, TaskStatus};
use crate::metrics::Metrics;
use async_trait::async_trait;
use rota_model::{Epoch, InstanceId};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// A task store whose every call ends within `limit`.
pub struct Deadlined {
    inner: Arc<dyn TaskStore>,
    limit: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl Deadlined {
    /// `inner`, with each call bounded by `limit`.
    pub fn new(inner: Arc<dyn TaskStore>, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            metrics: None,
        }
    }

    /// Counts every failed call (by call and kind) in `metrics`.
    pub fn counting_errors(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn within<T>(
        &self,
        call: &str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.limit, f).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{call}: no answer from the task store within {:?}",
                self.limit
            ))),
        };
        if let (Err(e), Some(metrics)) = (&result, &self.metrics) {
            metrics.store_error(call, e);
        }
        result
    }
}

#[async_trait]
impl TaskStore for Deadlined {
    async fn insert(
        &self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> Result<Vec<(Task, bool)>, StoreError> {
        self.within("insert", self.inner.insert(tasks, partitions, now))
            .await
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.within("get", self.inner.get(id)).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        self.within("list", self.inner.list(filter)).await
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        self.within("by keys", self.inner.by_idempotency_keys(keys))
            .await
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        self.within("cancel", self.inner.cancel(id, now)).await
    }

    async fn acquire(
        &self,
        partition: u32,
        owner: &InstanceId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<u64, StoreError> {
        self.within("acquire", self.inner.acquire(partition, owner, epoch, now))
            .await
    }

    async fn claim(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Claimed, StoreError> {
        self.within(
            "claim",
            self.inner.claim(owner, partitions, now, limit, lease_ms),
        )
        .await
    }

    async fn complete(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        self.within("complete", self.inner.complete(owner, completions, now))
            .await
    }

    async fn renew(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        lease_ms: i64,
    ) -> Result<Vec<u32>, StoreError> {
        self.within("renew", self.inner.renew(owner, partitions, now, lease_ms))
            .await
    }

    async fn requeue_expired(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
    ) -> Result<u64, StoreError> {
        self.within(
            "requeue expired",
            self.inner.requeue_expired(owner, partitions, now),
        )
        .await
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        self.within("reset", self.inner.reset_after_restart(now))
            .await
    }

    async fn purge_finished(
        &self,
        finished_before: Millis,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.within("purge", self.inner.purge_finished(finished_before, limit))
            .await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.within("backlog", self.inner.backlog()).await
    }

    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        self.within("schedule", self.inner.schedule(name)).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        self.within("schedules", self.inner.schedules(after, limit))
            .await
    }

    async fn write_schedule(
        &self,
        write: ScheduleWrite,
        partitions: u32,
        now: Millis,
    ) -> Result<ScheduleWritten, StoreError> {
        self.within(
            "write schedule",
            self.inner.write_schedule(write, partitions, now),
        )
        .await
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        self.within(
            "delete schedule",
            self.inner.delete_schedule(name, revision),
        )
        .await
    }

    async fn due_schedules(
        &self,
        partitions: &[u32],
        before: Millis,
        limit: usize,
    ) -> Result<DueSchedules, StoreError> {
        self.within(
            "due schedules",
            self.inner.due_schedules(partitions, before, limit),
        )
        .await
    }

    fn inserted(&self) -> broadcast::Receiver<u32> {
        self.inner.inserted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose every call hangs.
    struct Hung;

    #[async_trait]
    impl TaskStore for Hung {
        async fn insert(
            &self,
            _: Vec<NewTask>,
            _: u32,
            _: Millis,
        ) -> Result<Vec<(Task, bool)>, StoreError> {
            std::future::pending().await
        }
        async fn get(&self, _: TaskId) -> Result<Option<Task>, StoreError> {
            std::future::pending().await
        }
        async fn list(&self, _: &ListFilter) -> Result<Page, StoreError> {
            std::future::pending().await
        }
        async fn by_idempotency_keys(&self, _: &[String]) -> Result<Vec<Task>, StoreError> {
            std::future::pending().await
        }
        async fn cancel(&self, _: TaskId, _: Millis) -> Result<CancelOutcome, StoreError> {
            std::future::pending().await
        }
        async fn acquire(
            &self,
            _: u32,
            _: &InstanceId,
            _: Epoch,
            _: Millis,
        ) -> Result<u64, StoreError> {
            std::future::pending().await
        }
        async fn claim(
            &self,
            _: &InstanceId,
            _: &[Claim],
            _: Millis,
            _: usize,
            _: i64,
        ) -> Result<Claimed, StoreError> {
            std::future::pending().await
        }
        async fn complete(
            &self,
            _: &InstanceId,
            _: &[Completion],
            _: Millis,
        ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
            std::future::pending().await
        }
        async fn renew(
            &self,
            _: &InstanceId,
            _: &[Claim],
            _: Millis,
            _: i64,
        ) -> Result<Vec<u32>, StoreError> {
            std::future::pending().await
        }
        async fn requeue_expired(
            &self,
            _: &InstanceId,
            _: &[Claim],
            _: Millis,
        ) -> Result<u64, StoreError> {
            std::future::pending().await
        }
        async fn reset_after_restart(&self, _: Millis) -> Result<u64, StoreError> {
            std::future::pending().await
        }
        async fn purge_finished(&self, _: Millis, _: usize) -> Result<u64, StoreError> {
            std::future::pending().await
        }
        async fn backlog(&self) -> Result<Backlog, StoreError> {
            std::future::pending().await
        }
        async fn schedule(&self, _: &str) -> Result<Option<Schedule>, StoreError> {
            std::future::pending().await
        }
        async fn schedules(&self, _: Option<&str>, _: usize) -> Result<Vec<Schedule>, StoreError> {
            std::future::pending().await
        }
        async fn write_schedule(
            &self,
            _: ScheduleWrite,
            _: u32,
            _: Millis,
        ) -> Result<ScheduleWritten, StoreError> {
            std::future::pending().await
        }
        async fn delete_schedule(&self, _: &str, _: u64) -> Result<bool, StoreError> {
            std::future::pending().await
        }
        async fn due_schedules(
            &self,
            _: &[u32],
            _: Millis,
            _: usize,
        ) -> Result<DueSchedules, StoreError> {
            std::future::pending().await
        }
        fn inserted(&self) -> broadcast::Receiver<u32> {
            broadcast::channel(1).1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_fails_as_unavailable_at_the_deadline() {
        let store = Deadlined::new(Arc::new(Hung), Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let owner = InstanceId::new("w");
        let err = store.acquire(0, &owner, 1, 0).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(err.retryable() && !err.certainly_not_applied(), "{err}");
        assert!(err.to_string().contains("acquire"), "{err}");
        assert!(
            store
                .claim(&owner, &[], 0, 1, 1)
                .await
                .unwrap_err()
                .retryable()
        );
        assert!(store.backlog().await.unwrap_err().retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_calls_are_counted_by_call_and_kind() {
        let metrics = Arc::new(Metrics::default());
        let store =
            Deadlined::new(Arc::new(Hung), Duration::from_secs(1)).counting_errors(metrics.clone());
        let _ = store.backlog().await;
        let _ = store.backlog().await;
        let text = metrics.encode();
        assert!(
            text.contains(r#"rota_store_errors_total{call="backlog",kind="timeout"} 2"#),
            "{text}"
        );
    }
}
