//! One way to wrap a task store. A [`Layer`] decides what happens around each call (a deadline,
//! an injected outage, a simulated network); [`Layered`] implements every store trait by
//! handing each call, described as a [`Call`] and started as a [`Pending`] future over the
//! inner store, to the layer. A wrapper so writes one method, not one per store method.
//!
//! The inner call is `'static` (it owns its arguments and a handle to the inner store), so a
//! layer may also run it on a task of its own: a request that reached the network is delivered
//! even if its caller gives up.

use super::{
    Backlog, CancelOutcome, Claim, Claimed, Completion, DueSchedules, Execution, ListFilter, Page,
    ScheduleWrite, ScheduleWritten, Schedules, StoreError, Tasks, Upkeep,
};
use crate::schedule::Schedule;
use crate::{Millis, NewTask, Task, TaskId, TaskStatus};
use async_trait::async_trait;
use rota_model::{Epoch, InstanceId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A call of the inner store, started but not yet polled.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// One call of a task store, with its arguments (those a layer may want to see).
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)] // The fields are the methods' arguments, documented there.
pub enum Call<'a> {
    /// [`Tasks::insert`] of `tasks` tasks.
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
    Acquire {
        partition: u32,
        owner: &'a InstanceId,
        epoch: Epoch,
        now: Millis,
    },
    /// [`Execution::claim`].
    Claim {
        owner: &'a InstanceId,
        partitions: &'a [Claim],
        now: Millis,
        limit: usize,
        lease_ms: i64,
    },
    /// [`Execution::complete`].
    Complete {
        owner: &'a InstanceId,
        completions: &'a [Completion],
        now: Millis,
    },
    /// [`Execution::renew`].
    Renew {
        owner: &'a InstanceId,
        partitions: &'a [Claim],
        now: Millis,
        lease_ms: i64,
    },
    /// [`Execution::requeue_expired`].
    RequeueExpired {
        owner: &'a InstanceId,
        partitions: &'a [Claim],
        now: Millis,
    },
    /// [`Schedules::schedule`].
    Schedule { name: &'a str },
    /// [`Schedules::schedules`].
    Schedules {
        after: Option<&'a str>,
        limit: usize,
    },
    /// [`Schedules::write_schedule`].
    WriteSchedule {
        write: &'a ScheduleWrite,
        partitions: u32,
        now: Millis,
    },
    /// [`Schedules::delete_schedule`].
    DeleteSchedule { name: &'a str, revision: u64 },
    /// [`Schedules::due_schedules`].
    DueSchedules {
        partitions: &'a [u32],
        before: Millis,
        limit: usize,
    },
    /// [`Upkeep::purge_finished`].
    PurgeFinished {
        finished_before: Millis,
        limit: usize,
    },
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
            Call::Acquire { .. } => "acquire",
            Call::Claim { .. } => "claim",
            Call::Complete { .. } => "complete",
            Call::Renew { .. } => "renew",
            Call::RequeueExpired { .. } => "requeue expired",
            Call::Schedule { .. } => "schedule",
            Call::Schedules { .. } => "schedules",
            Call::WriteSchedule { .. } => "write schedule",
            Call::DeleteSchedule { .. } => "delete schedule",
            Call::DueSchedules { .. } => "due schedules",
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
                | Call::DueSchedules { .. }
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

#[async_trait]
impl<L: Layer, S: Tasks + ?Sized + 'static> Tasks for Layered<L, S> {
    async fn insert(
        &self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> Result<Vec<(Task, bool)>, StoreError> {
        let (call, s) = (
            Call::Insert {
                tasks: tasks.len(),
                partitions,
                now,
            },
            self.inner.clone(),
        );
        let inner = Box::pin(async move { s.insert(tasks, partitions, now).await });
        self.layer.around(call, inner).await
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let s = self.inner.clone();
        let inner = Box::pin(async move { s.get(id).await });
        self.layer.around(Call::Get { id }, inner).await
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let (s, k) = (self.inner.clone(), keys.to_vec());
        let inner = Box::pin(async move { s.by_idempotency_keys(&k).await });
        self.layer
            .around(Call::ByIdempotencyKeys { keys }, inner)
            .await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let (s, f) = (self.inner.clone(), filter.clone());
        let inner = Box::pin(async move { s.list(&f).await });
        self.layer.around(Call::List { filter }, inner).await
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let s = self.inner.clone();
        let inner = Box::pin(async move { s.cancel(id, now).await });
        self.layer.around(Call::Cancel { id, now }, inner).await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let s = self.inner.clone();
        let inner = Box::pin(async move { s.backlog().await });
        self.layer.around(Call::Backlog, inner).await
    }
}

#[async_trait]
impl<L: Layer, S: Execution + ?Sized + 'static> Execution for Layered<L, S> {
    async fn acquire(
        &self,
        partition: u32,
        owner: &InstanceId,
        epoch: Epoch,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (s, o) = (self.inner.clone(), owner.clone());
        let inner = Box::pin(async move { s.acquire(partition, &o, epoch, now).await });
        let call = Call::Acquire {
            partition,
            owner,
            epoch,
            now,
        };
        self.layer.around(call, inner).await
    }

    async fn claim(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Claimed, StoreError> {
        let (s, o, p) = (self.inner.clone(), owner.clone(), partitions.to_vec());
        let inner = Box::pin(async move { s.claim(&o, &p, now, limit, lease_ms).await });
        let call = Call::Claim {
            owner,
            partitions,
            now,
            limit,
            lease_ms,
        };
        self.layer.around(call, inner).await
    }

    async fn complete(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        now: Millis,
    ) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let (s, o, c) = (self.inner.clone(), owner.clone(), completions.to_vec());
        let inner = Box::pin(async move { s.complete(&o, &c, now).await });
        let call = Call::Complete {
            owner,
            completions,
            now,
        };
        self.layer.around(call, inner).await
    }

    async fn renew(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
        lease_ms: i64,
    ) -> Result<Vec<u32>, StoreError> {
        let (s, o, p) = (self.inner.clone(), owner.clone(), partitions.to_vec());
        let inner = Box::pin(async move { s.renew(&o, &p, now, lease_ms).await });
        let call = Call::Renew {
            owner,
            partitions,
            now,
            lease_ms,
        };
        self.layer.around(call, inner).await
    }

    async fn requeue_expired(
        &self,
        owner: &InstanceId,
        partitions: &[Claim],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (s, o, p) = (self.inner.clone(), owner.clone(), partitions.to_vec());
        let inner = Box::pin(async move { s.requeue_expired(&o, &p, now).await });
        let call = Call::RequeueExpired {
            owner,
            partitions,
            now,
        };
        self.layer.around(call, inner).await
    }

    fn inserted(&self) -> broadcast::Receiver<u32> {
        self.inner.inserted()
    }
}

#[async_trait]
impl<L: Layer, S: Schedules + ?Sized + 'static> Schedules for Layered<L, S> {
    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        let (s, n) = (self.inner.clone(), name.to_owned());
        let inner = Box::pin(async move { s.schedule(&n).await });
        self.layer.around(Call::Schedule { name }, inner).await
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        let (s, a) = (self.inner.clone(), after.map(str::to_owned));
        let inner = Box::pin(async move { s.schedules(a.as_deref(), limit).await });
        self.layer
            .around(Call::Schedules { after, limit }, inner)
            .await
    }

    async fn write_schedule(
        &self,
        write: ScheduleWrite,
        partitions: u32,
        now: Millis,
    ) -> Result<ScheduleWritten, StoreError> {
        let (s, w) = (self.inner.clone(), write.clone());
        let inner = Box::pin(async move { s.write_schedule(w, partitions, now).await });
        let call = Call::WriteSchedule {
            write: &write,
            partitions,
            now,
        };
        self.layer.around(call, inner).await
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        let (s, n) = (self.inner.clone(), name.to_owned());
        let inner = Box::pin(async move { s.delete_schedule(&n, revision).await });
        self.layer
            .around(Call::DeleteSchedule { name, revision }, inner)
            .await
    }

    async fn due_schedules(
        &self,
        partitions: &[u32],
        before: Millis,
        limit: usize,
    ) -> Result<DueSchedules, StoreError> {
        let (s, p) = (self.inner.clone(), partitions.to_vec());
        let inner = Box::pin(async move { s.due_schedules(&p, before, limit).await });
        let call = Call::DueSchedules {
            partitions,
            before,
            limit,
        };
        self.layer.around(call, inner).await
    }
}

#[async_trait]
impl<L: Layer, S: Upkeep + ?Sized + 'static> Upkeep for Layered<L, S> {
    async fn purge_finished(
        &self,
        finished_before: Millis,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let s = self.inner.clone();
        let inner = Box::pin(async move { s.purge_finished(finished_before, limit).await });
        let call = Call::PurgeFinished {
            finished_before,
            limit,
        };
        self.layer.around(call, inner).await
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        let s = self.inner.clone();
        let inner = Box::pin(async move { s.reset_after_restart(now).await });
        self.layer
            .around(Call::ResetAfterRestart { now }, inner)
            .await
    }
}
