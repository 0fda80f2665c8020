//! The task store as one node reaches it: the memory store behind the node's [`Link`]. A call,
//! once sent, is delivered even if its caller gives up (a request in the network does not
//! vanish when the client times out); a frozen node's calls wait and land when it thaws, after
//! whatever happened meanwhile; injected failures come before the call is applied or after
//! (the caller cannot tell which). Every claim and completion the store applies is checked
//! against the partition's latest grant, at the moment it is applied.

use crate::history::History;
use crate::net::Link;
use async_trait::async_trait;
use rota_memory::MemoryTaskStore;
use rota_model::{Epoch, InstanceId};
use rota_scheduler::schedule::Schedule;
use rota_scheduler::{
    Backlog, CancelOutcome, Claim, Claimed, Completion, DueSchedules, ListFilter, Millis, NewTask,
    Page, ScheduleWrite, ScheduleWritten, StoreError, Task, TaskId, TaskStatus, TaskStore,
};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::broadcast;

/// One node's task store.
pub struct SimTaskStore {
    inner: Arc<MemoryTaskStore>,
    link: Arc<Link>,
    history: History,
}

impl SimTaskStore {
    /// `link`'s view of `inner`.
    pub fn new(inner: Arc<MemoryTaskStore>, link: Arc<Link>, history: History) -> Arc<Self> {
        Arc::new(Self {
            inner,
            link,
            history,
        })
    }

    /// Sends a call over the link: it waits while the node is frozen, fails at once while the
    /// store is down, and may fail before or after being applied. `after` runs on the result
    /// the store gave, before any injected failure (for the checks).
    async fn send<T, F, A>(&self, call: F, after: A) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let link = self.link.clone();
        let delivery = tokio::spawn(async move {
            link.pass().await;
            if link.store_down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(
                    "task store down (simulated)".into(),
                ));
            }
            let failing = link
                .store_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .ok();
            if failing.is_some_and(|n| n % 2 == 0) {
                return Err(StoreError::Unavailable(
                    "connection reset before the call (simulated)".into(),
                ));
            }
            let result = call.await;
            if let Ok(value) = &result {
                after(value);
            }
            if failing.is_some() {
                return Err(StoreError::Unavailable(
                    "connection reset after the call (simulated)".into(),
                ));
            }
            result
        });
        delivery
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(format!("delivery failed: {e}"))))
    }

    /// A read: waits while frozen, fails while down, no delivery after the caller gives up.
    async fn read(&self) -> Result<(), StoreError> {
        self.link.pass().await;
        if self.link.store_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "task store down (simulated)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl TaskStore for SimTaskStore {
    async fn insert(
        &self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> Result<Vec<(Task, bool)>, StoreError> {
        let inner = self.inner.clone();
        self.send(
            async move { inner.insert(tasks, partitions, now).await },
            |_| {},
        )
        .await
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.read().await?;
        self.inner.get(id).await
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        self.read().await?;
        self.inner.by_idempotency_keys(keys).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        self.read().await?;
        self.inner.list(filter).await
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let inner = self.inner.clone();
        self.send(async move { inner.cancel(id, now).await }, |_| {})
            .await
    }

    async fn acquire(
        &self,
        partition: u32,
        owner: &InstanceId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (inner, history, who) = (self.inner.clone(), self.history.clone(), owner.clone());
        let me = owner.clone();
        self.send(
            async move { inner.acquire(partition, &who, epoch, now).await },
            move |_| history.acquired(partition, &me, epoch),
        )
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
        let (inner, history, who) = (self.inner.clone(), self.history.clone(), owner.clone());
        let (me, partitions) = (owner.clone(), partitions.to_vec());
        self.send(
            async move { inner.claim(&who, &partitions, now, limit, lease_ms).await },
            move |claimed: &Claimed| history.claimed(&me, &claimed.tasks),
        )
        .await
    }

    async fn complete(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let (inner, history, who) = (self.inner.clone(), self.history.clone(), owner.clone());
        let (me, completions) = (owner.clone(), completions.to_vec());
        let checked = completions.clone();
        self.send(
            async move { inner.complete(&who, &completions, now).await },
            move |results: &Vec<Option<TaskStatus>>| history.completed(&me, &checked, results),
        )
        .await
    }

    async fn renew(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        lease_ms: i64,
    ) -> Result<Vec<u32>, StoreError> {
        let (inner, who, partitions) = (self.inner.clone(), owner.clone(), partitions.to_vec());
        self.send(
            async move { inner.renew(&who, &partitions, now, lease_ms).await },
            |_| {},
        )
        .await
    }

    async fn requeue_expired(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (inner, who, partitions) = (self.inner.clone(), owner.clone(), partitions.to_vec());
        self.send(
            async move { inner.requeue_expired(&who, &partitions, now).await },
            |_| {},
        )
        .await
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        self.inner.reset_after_restart(now).await
    }

    async fn purge_finished(
        &self,
        finished_before: Millis,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.send(
            async move { inner.purge_finished(finished_before, limit).await },
            |_| {},
        )
        .await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.read().await?;
        self.inner.backlog().await
    }

    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        self.read().await?;
        self.inner.schedule(name).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        self.read().await?;
        self.inner.schedules(after, limit).await
    }

    async fn write_schedule(
        &self,
        write: ScheduleWrite,
        partitions: u32,
        now: Millis,
    ) -> Result<ScheduleWritten, StoreError> {
        let inner = self.inner.clone();
        self.send(
            async move { inner.write_schedule(write, partitions, now).await },
            |_| {},
        )
        .await
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        self.send(
            async move { inner.delete_schedule(&name, revision).await },
            |_| {},
        )
        .await
    }

    async fn due_schedules(
        &self,
        partitions: &[u32],
        before: Millis,
        limit: usize,
    ) -> Result<DueSchedules, StoreError> {
        self.read().await?;
        self.inner.due_schedules(partitions, before, limit).await
    }

    fn inserted(&self) -> broadcast::Receiver<u32> {
        self.inner.inserted()
    }
}
