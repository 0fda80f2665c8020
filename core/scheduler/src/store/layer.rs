//! One way to wrap a task store. A [`Layer`] decides what happens around each call (a deadline,
//! an injected outage, a simulated network); [`Layered`] implements every store trait by
//! handing each call, described as a [`Call`] and started as a [`Pending`] future over the
//! inner store, to the layer. A wrapper so writes one method, not one per store method.
//!
//! The inner call is `'static` (it owns its arguments and a handle to the inner store), so a
//! layer may also run it on a task of its own: a request that reached the network is delivered
//! even if its caller gives up.

use super::{
    AcquirePartition, Backlog, CancelOutcome, ClaimTasks, Claimed, CompleteTasks, DueSchedules,
    DueSchedulesQuery, Execution, InsertTasks, ListFilter, Page, RenewLeases, RequeueExpired,
    ScheduleWrite, ScheduleWritten, Schedules, StoreError, Tasks, Upkeep,
};
use crate::schedule::Schedule;
use crate::{Millis, Task, TaskId, TaskStatus};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A call of the inner store, started but not yet polled.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// One call of a task store, with its arguments (those a layer may want to see): a call that
/// takes a request value shows that very value.
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)] // The fields are the methods' arguments, documented there.
pub enum Call<'a> {
    /// [`Tasks::insert`] of `tasks` tasks (the batch itself moves to the inner store: a layer
    /// sees its size, and no copy is made).
    Insert {
        tasks: usize,
        partitions: u32,
        now: Millis,
    },
    /// [`Tasks::get`].
    Get { id: TaskId },
    /// [`Tasks::by_idempotency_keys`].
    ByIdempotencyKeys { keys: &'a [String] },
    /// [`Tasks::list`].
    List { filter: &'a ListFilter },
    /// [`Tasks::cancel`].
    Cancel { id: TaskId, now: Millis },
    /// [`Tasks::backlog`].
    Backlog,
    /// [`Execution::acquire`].
    Acquire(&'a AcquirePartition),
    /// [`Execution::claim`].
    Claim(&'a ClaimTasks),
    /// [`Execution::complete`].
    Complete(&'a CompleteTasks),
    /// [`Execution::renew`].
    Renew(&'a RenewLeases),
    /// [`Execution::requeue_expired`].
    RequeueExpired(&'a RequeueExpired),
    /// [`Schedules::schedule`].
    Schedule { name: &'a str },
    /// [`Schedules::schedules`].
    Schedules {
        after: Option<&'a str>,
        limit: usize,
    },
    /// [`Schedules::write_schedule`].
    WriteSchedule(&'a ScheduleWrite),
    /// [`Schedules::delete_schedule`].
    DeleteSchedule { name: &'a str, revision: u64 },
    /// [`Schedules::due_schedules`].
    DueSchedules(&'a DueSchedulesQuery),
    /// [`Upkeep::purge_finished`].
    PurgeFinished { before: Millis, limit: usize },
    /// [`Upkeep::reset_after_restart`].
    ResetAfterRestart { now: Millis },
}

impl Call<'_> {
    /// The call's name, as logs and the `call` label of `rota_store_errors_total` show it.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Insert { .. } => "insert",
            Call::Get { .. } => "get",
            Call::ByIdempotencyKeys { .. } => "by keys",
            Call::List { .. } => "list",
            Call::Cancel { .. } => "cancel",
            Call::Backlog => "backlog",
            Call::Acquire(_) => "acquire",
            Call::Claim(_) => "claim",
            Call::Complete(_) => "complete",
            Call::Renew(_) => "renew",
            Call::RequeueExpired(_) => "requeue expired",
            Call::Schedule { .. } => "schedule",
            Call::Schedules { .. } => "schedules",
            Call::WriteSchedule(_) => "write schedule",
            Call::DeleteSchedule { .. } => "delete schedule",
            Call::DueSchedules(_) => "due schedules",
            Call::PurgeFinished { .. } => "purge",
            Call::ResetAfterRestart { .. } => "reset",
        }
    }

    /// Whether the call changes what the store holds.
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Call::Get { .. }
                | Call::ByIdempotencyKeys { .. }
                | Call::List { .. }
                | Call::Backlog
                | Call::Schedule { .. }
                | Call::Schedules { .. }
                | Call::DueSchedules(_)
        )
    }
}

/// What a wrapper does around each call of the store it wraps.
#[async_trait]
pub trait Layer: Send + Sync + 'static {
    /// Completes `call`, whose work on the inner store is `inner` (not yet polled: a layer may
    /// run it, run it elsewhere, delay it, or fail without running it).
    async fn around<T: Send + 'static>(
        &self,
        call: Call<'_>,
        inner: Pending<T>,
    ) -> Result<T, StoreError>;
}

/// The store `inner` with `layer` around each of its calls.
pub struct Layered<L, S: ?Sized> {
    layer: L,
    inner: Arc<S>,
}

impl<L, S: ?Sized> Layered<L, S> {
    /// `inner`, each call of which goes through `layer`.
    pub fn new(layer: L, inner: Arc<S>) -> Self {
        Self { layer, inner }
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

impl<L: Layer, S: ?Sized + Send + Sync + 'static> Layered<L, S> {
    /// Hands `call` to the layer, with its work on the inner store started by `start` (given
    /// a handle to the inner store; it owns whatever else it needs).
    async fn forward<T, F>(
        &self,
        call: Call<'_>,
        start: impl FnOnce(Arc<S>) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let inner: Pending<T> = Box::pin(start(self.inner.clone()));
        self.layer.around(call, inner).await
    }
}

#[async_trait]
impl<L: Layer, S: Tasks + ?Sized + 'static> Tasks for Layered<L, S> {
    async fn insert(&self, batch: InsertTasks) -> Result<Vec<(Task, bool)>, StoreError> {
        let (tasks, partitions, now) = (batch.tasks.len(), batch.partitions, batch.now);
        let start = |s: Arc<S>| async move { s.insert(batch).await };
        self.forward(
            Call::Insert {
                tasks,
                partitions,
                now,
            },
            start,
        )
        .await
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let start = move |s: Arc<S>| async move { s.get(id).await };
        self.forward(Call::Get { id }, start).await
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let sent = keys.to_vec();
        let start = |s: Arc<S>| async move { s.by_idempotency_keys(&sent).await };
        self.forward(Call::ByIdempotencyKeys { keys }, start).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let sent = filter.clone();
        let start = |s: Arc<S>| async move { s.list(&sent).await };
        self.forward(Call::List { filter }, start).await
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let start = move |s: Arc<S>| async move { s.cancel(id, now).await };
        self.forward(Call::Cancel { id, now }, start).await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let start = |s: Arc<S>| async move { s.backlog().await };
        self.forward(Call::Backlog, start).await
    }
}

#[async_trait]
impl<L: Layer, S: Execution + ?Sized + 'static> Execution for Layered<L, S> {
    async fn acquire(&self, grant: AcquirePartition) -> Result<u64, StoreError> {
        let sent = grant.clone();
        let start = |s: Arc<S>| async move { s.acquire(sent).await };
        self.forward(Call::Acquire(&grant), start).await
    }

    async fn claim(&self, claim: ClaimTasks) -> Result<Claimed, StoreError> {
        let sent = claim.clone();
        let start = |s: Arc<S>| async move { s.claim(sent).await };
        self.forward(Call::Claim(&claim), start).await
    }

    async fn complete(&self, ends: &CompleteTasks) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let sent = ends.clone();
        let start = |s: Arc<S>| async move { s.complete(&sent).await };
        self.forward(Call::Complete(ends), start).await
    }

    async fn renew(&self, renewal: RenewLeases) -> Result<Vec<u32>, StoreError> {
        let sent = renewal.clone();
        let start = |s: Arc<S>| async move { s.renew(sent).await };
        self.forward(Call::Renew(&renewal), start).await
    }

    async fn requeue_expired(&self, expired: RequeueExpired) -> Result<u64, StoreError> {
        let sent = expired.clone();
        let start = |s: Arc<S>| async move { s.requeue_expired(sent).await };
        self.forward(Call::RequeueExpired(&expired), start).await
    }

    fn inserted(&self) -> broadcast::Receiver<super::Inserted> {
        self.inner.inserted()
    }
}

#[async_trait]
impl<L: Layer, S: Schedules + ?Sized + 'static> Schedules for Layered<L, S> {
    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        let sent = name.to_owned();
        let start = |s: Arc<S>| async move { s.schedule(&sent).await };
        self.forward(Call::Schedule { name }, start).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        let call = Call::Schedules { after, limit };
        let sent = after.map(str::to_owned);
        let start = move |s: Arc<S>| async move { s.schedules(sent.as_deref(), limit).await };
        self.forward(call, start).await
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten, StoreError> {
        let sent = write.clone();
        let start = |s: Arc<S>| async move { s.write_schedule(sent).await };
        self.forward(Call::WriteSchedule(&write), start).await
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        let sent = name.to_owned();
        let start = move |s: Arc<S>| async move { s.delete_schedule(&sent, revision).await };
        self.forward(Call::DeleteSchedule { name, revision }, start)
            .await
    }

    async fn due_schedules(&self, query: DueSchedulesQuery) -> Result<DueSchedules, StoreError> {
        let sent = query.clone();
        let start = |s: Arc<S>| async move { s.due_schedules(sent).await };
        self.forward(Call::DueSchedules(&query), start).await
    }
}

#[async_trait]
impl<L: Layer, S: Upkeep + ?Sized + 'static> Upkeep for Layered<L, S> {
    async fn purge_finished(&self, before: Millis, limit: usize) -> Result<u64, StoreError> {
        let start = move |s: Arc<S>| async move { s.purge_finished(before, limit).await };
        self.forward(Call::PurgeFinished { before, limit }, start)
            .await
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        let start = move |s: Arc<S>| async move { s.reset_after_restart(now).await };
        self.forward(Call::ResetAfterRestart { now }, start).await
    }
}
