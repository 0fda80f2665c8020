//! The task store: where tasks live, and the judge of who may run them.
//!
//! The contract is split by who calls what: [`Tasks`] (what clients do: create, read, list,
//! cancel), [`Execution`] (the worker's fenced path: partition ownership and the claims made
//! under it), [`Schedules`] (recurring schedules) and [`Upkeep`] (retention, a whole-cluster
//! restart). A backend implements all four; [`TaskStore`] names them together, for the roles
//! that are given one store. A store that wraps another ([`Deadlined`], a test's outage, the
//! simulator's network) is a [`Layer`] over [`Layered`], which forwards every call once.
//!
//! # Contract of every implementation
//! - **Atomicity**: every call is atomic. `insert` of a batch inserts all or none.
//! - **Ownership and fencing**: each partition has a current owner and epoch in the store.
//!   [`Execution::acquire`] records a new one only if its epoch is at least the stored one
//!   (equal only for the same owner), and in the same step takes back every claim of that
//!   partition made under any other owner or epoch ([`rules::take_back`]). A claim, completion
//!   or lease renewal is applied only while its owner and epoch are still the partition's
//!   current ones; otherwise it is refused, and refused means **certainly not applied**. The
//!   store is the judge, not the worker's belief.
//! - **Claims** take due tasks (PENDING with `scheduled_at <= now`) in due order
//!   (`scheduled_at`, then id) across all the given partitions, mark them RUNNING under the
//!   claimant's owner and epoch, count the attempt and set the lease. No task is ever claimed
//!   twice under live claims. (A store may record a claim apart from the task rows, one record
//!   per batch, and count the attempt on the row when the claim ends: what any call sees is the
//!   same. See `docs/architecture.md`, "Claims per batch".) A claim's cost depends on the number of tasks it takes and of
//!   partitions it names, never on the size of the backlog or of the finished history.
//! - **Expired leases** are not claimed directly: [`Execution::requeue_expired`] takes them
//!   back on its own schedule, so that the claim's query reads only pending tasks.
//! - **Completion** settles the task by [`rules::settle`]: COMPLETED; PENDING again at the
//!   retry time or FAILED once `max_attempts` attempts have run; FAILED at once for a failure
//!   the handler gave up on; PENDING again without counting the attempt for a release (a
//!   claimed task that never started).
//! - **Idempotency keys** are unique: inserting a task whose key exists returns the existing one
//!   (`created == false`) and changes nothing.
//! - **Schedules** ([`super::schedule`]) are stored by name. [`Schedules::write_schedule`] is
//!   a compare-and-set on the schedule's revision, optionally fenced by the owner and epoch of
//!   the schedule's partition, that inserts the tasks of the ticks it fires (by their
//!   idempotency keys, so a tick's task exists at most once) in the same atomic step: either the
//!   schedule's new state and every task are written, or nothing is.
//! - **Errors** say what happened ([`StoreError::kind`]); [`StoreError::retryable`] says
//!   whether trying again may help, [`StoreError::certainly_not_applied`] whether the call may
//!   have taken effect.

mod deadline;
mod error;
mod layer;
mod requests;
pub mod rules;

pub use deadline::{Deadline, Deadlined};
pub use error::{ErrorKind, StoreError};
pub use layer::{Call, Layer, Layered, Pending};
pub use requests::{
    AcquirePartition, ClaimTasks, CompleteTasks, DueSchedulesQuery, InsertTasks, RenewLeases,
    RequeueExpired,
};

use super::schedule::Schedule;
use super::{Millis, NewTask, Task, TaskId, TaskStatus};
use async_trait::async_trait;
use rota_model::{Epoch, InstanceId};
use std::collections::BTreeMap;
use tokio::sync::broadcast;

/// An owned partition, with the epoch it was granted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    /// Partition.
    pub partition: u32,
    /// Epoch of the grant.
    pub epoch: Epoch,
}

impl Claim {
    /// `partition`, held under `epoch`.
    pub const fn new(partition: u32, epoch: Epoch) -> Self {
        Self { partition, epoch }
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionOutcome {
    /// The handler succeeded.
    Succeeded,
    /// The handler failed; retry at `retry_at` unless attempts are used up.
    Failed {
        /// What went wrong.
        error: String,
        /// When to try again.
        retry_at: Millis,
    },
    /// The handler failed and said not to try again: FAILED now, whatever attempts remain.
    Abandoned {
        /// What went wrong.
        error: String,
    },
    /// The task was claimed but never started (its worker let the partition go first): PENDING
    /// again at once, and the attempt does not count.
    Released,
}

/// The end of one attempt, reported by the worker that claimed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Task.
    pub id: TaskId,
    /// The task's partition, as claimed: with `epoch`, the fencing token checked against the
    /// partition's owner. A completion naming another partition than the task's is refused.
    pub partition: u32,
    /// Epoch of the claim.
    pub epoch: Epoch,
    /// When the handler started, recorded as the task's `started_at` (the claim's time when
    /// `None`): a worker may claim a task a little before it has a free slot for it.
    pub started_at: Option<Millis>,
    /// How it ended.
    pub outcome: CompletionOutcome,
}

impl Completion {
    /// The end of the attempt `task` was claimed for (its partition and claim epoch), with the
    /// handler's start unknown.
    pub fn of(task: &Task, outcome: CompletionOutcome) -> Self {
        Self {
            id: task.id,
            partition: task.partition,
            epoch: task.epoch.unwrap_or(0),
            started_at: None,
            outcome,
        }
    }
}

/// The result of cancelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was PENDING and is now CANCELLED.
    Cancelled(Task),
    /// No such task.
    NotFound,
    /// The task is running or finished; nothing changed.
    Conflict(Task),
}

/// Which tasks to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this name.
    pub name: Option<String>,
    /// Page size (at least 1).
    pub limit: usize,
    /// Only ids greater than this (the previous page's cursor).
    pub after: Option<TaskId>,
}

/// One page of tasks, by increasing id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Cursor of the next page, if there may be one.
    pub next: Option<TaskId>,
}

impl Page {
    /// A page from up to `limit + 1` tasks fetched by increasing id: the extra one, if present,
    /// only says that another page follows.
    pub fn from_fetched(mut tasks: Vec<Task>, limit: usize) -> Self {
        let more = tasks.len() > limit;
        tasks.truncate(limit);
        let next = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Self { tasks, next }
    }
}

/// How many tasks are live: the queue's depth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// PENDING tasks, due or not.
    pub pending: u64,
    /// RUNNING tasks.
    pub running: u64,
}

/// The result of a claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Tasks now RUNNING under the claimant.
    pub tasks: Vec<Task>,
    /// Partitions whose owner or epoch is no longer the claimant's: nothing was claimed there.
    pub refused: Vec<u32>,
    /// The earliest due time of a PENDING task in the claimed partitions that is not due yet
    /// (`None`: none is waiting). Tasks already due may remain when the limit cut the claim; a
    /// store that also cuts each partition's part (to bound what one claim reads) returns a
    /// time not after `now` when it did, so that the caller claims again at once.
    pub next_due: Option<Millis>,
}

/// A write of a schedule: see [`TaskStore::write_schedule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleWrite {
    /// The schedule as it is to be stored, its revision already the next one.
    pub schedule: Schedule,
    /// The revision the writer read (`None`: the schedule must not exist yet).
    pub expected: Option<u64>,
    /// The owner and claim of the schedule's partition, for a firing by its clock: refused
    /// unless they are the partition's current ones and the claim names the schedule's
    /// partition. `None` for writes by an operator (create, edit, pause, trigger).
    pub fence: Option<(InstanceId, Claim)>,
    /// Tasks to insert with it (the fired ticks'), by their idempotency keys.
    pub tasks: Vec<NewTask>,
    /// How many partitions the tasks are spread over, as in [`InsertTasks::partitions`].
    pub partitions: u32,
    /// When the write happens (the tasks' `created_at`).
    pub now: Millis,
}

impl ScheduleWrite {
    /// The fence's verdict, given the stored owner and epoch of the fence's partition (`None`:
    /// nobody owns it): refused unless they are the fence's and the fence names the schedule's
    /// partition. Every store applies this one rule inside its write.
    pub fn check_fence(&self, holder: Option<(&str, Epoch)>) -> Result<(), StoreError> {
        let Some((owner, claim)) = &self.fence else {
            return Ok(());
        };
        let holds = holder.is_some_and(|(o, e)| o == owner.as_str() && e == claim.epoch);
        if claim.partition != self.schedule.partition || !holds {
            return Err(StoreError::StaleEpoch {
                partition: claim.partition,
                current: holder.map_or(0, |(_, e)| e),
                given: claim.epoch,
            });
        }
        Ok(())
    }

    /// Refuses the write if any of its tasks is not storable, as [`InsertTasks::validate`].
    pub fn validate(&self) -> Result<(), StoreError> {
        self.tasks.iter().try_for_each(NewTask::validate)
    }

    /// The partition whose owner the fence names, if fenced.
    pub fn fenced_partition(&self) -> Option<u32> {
        self.fence.as_ref().map(|(_, c)| c.partition)
    }
}

/// The result of a schedule write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleWritten {
    /// Written; the inserted tasks, as [`TaskStore::insert`] returns them.
    Written(Vec<(Task, bool)>),
    /// The stored revision was not the expected one (or the schedule exists, or no longer
    /// does): nothing was written. The schedule as stored now, if it exists.
    Conflict(Option<Box<Schedule>>),
}

/// Schedules due to fire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueSchedules {
    /// Active schedules whose next tick is at or before the given time, by next tick.
    pub schedules: Vec<Schedule>,
    /// The earliest next tick after that time among the given partitions' active schedules.
    pub next_tick: Option<Millis>,
}

/// Tasks as clients see them: create, read, list, cancel, count. The API's part of the store.
#[async_trait]
pub trait Tasks: Send + Sync {
    /// Inserts a batch atomically. Each result is the stored task and whether it was created
    /// (`false`: its idempotency key already named this task). Partitions are assigned with
    /// [`super::partition_for`] over `partitions`.
    async fn insert(&self, batch: InsertTasks) -> Result<Vec<(Task, bool)>, StoreError>;

    /// One task.
    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// The tasks these idempotency keys name (keys that name none are left out), in no order.
    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError>;

    /// A page of tasks by increasing id.
    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError>;

    /// Cancels a PENDING task.
    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError>;

    /// How many tasks are PENDING and RUNNING (cheap: counted over the live tasks' indexes,
    /// not the finished ones).
    async fn backlog(&self) -> Result<Backlog, StoreError>;
}

/// The worker's fenced path: who owns each partition, and the claims made under that
/// ownership. Every call but [`Execution::inserted`] is judged by the partition's stored owner
/// and epoch (see the module documentation).
#[async_trait]
pub trait Execution: Send + Sync {
    /// Records `owner` at `epoch` as the partition's owner and takes back every RUNNING claim
    /// of the partition made under another owner or epoch ([`rules::take_back`]); returns how
    /// many claims it took back. [`StoreError::StaleEpoch`] if a newer epoch is recorded, or
    /// the same epoch for another owner.
    async fn acquire(&self, grant: AcquirePartition) -> Result<u64, StoreError>;

    /// Claims up to `limit` due tasks across `partitions`, in due order, with a lease until
    /// `now + lease_ms`, and tells when the next task of those partitions is due.
    async fn claim(&self, claim: ClaimTasks) -> Result<Claimed, StoreError>;

    /// Ends attempts ([`rules::settle`]). Each result is the task's new status, or `None` if
    /// the completion was refused (the claim is no longer this owner's under this epoch, the
    /// task is not RUNNING under it, or the completion names another partition than the
    /// task's). Taken by reference: a caller keeps its batch, to write it again after an error
    /// that may pass.
    async fn complete(&self, ends: &CompleteTasks) -> Result<Vec<Option<TaskStatus>>, StoreError>;

    /// Extends the lease of every task RUNNING under `owner` in the given partitions to
    /// `lease_ms` from now (one write for all of them), on the same clock as claims: a store
    /// that takes "now" from the database for claims does so here too, so a worker's clock
    /// skew cannot shorten or stretch a lease. Returns the partitions refused as in
    /// [`Execution::claim`].
    async fn renew(&self, renewal: RenewLeases) -> Result<Vec<u32>, StoreError>;

    /// Takes back ([`rules::take_back`]) every task RUNNING in these partitions whose lease
    /// ended before `now`: a claim its worker neither finished nor renewed. Partitions no
    /// longer owned by `owner` at the given epochs are left alone. Returns how many it took
    /// back.
    async fn requeue_expired(&self, expired: RequeueExpired) -> Result<u64, StoreError>;

    /// Partitions that received new tasks, as they are inserted, with the earliest due time
    /// among them (best effort: a receiver that lags sees `Lagged` and should poll).
    fn inserted(&self) -> broadcast::Receiver<Inserted>;
}

/// New tasks in a partition ([`Execution::inserted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// The partition.
    pub partition: u32,
    /// The earliest due time among them; `Millis::MIN` when not known (a notification from
    /// an earlier build).
    pub earliest_due: Millis,
}

impl Inserted {
    /// One notification per partition of `created` tasks, with its earliest due time.
    pub fn of<'a>(created: impl IntoIterator<Item = &'a Task>) -> Vec<Inserted> {
        let mut earliest: BTreeMap<u32, Millis> = BTreeMap::new();
        for t in created {
            let at = earliest.entry(t.partition).or_insert(t.scheduled_at);
            *at = (*at).min(t.scheduled_at);
        }
        earliest
            .into_iter()
            .map(|(partition, earliest_due)| Inserted {
                partition,
                earliest_due,
            })
            .collect()
    }
}

/// Recurring schedules, by name.
#[async_trait]
pub trait Schedules: Send + Sync {
    /// One schedule.
    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError>;

    /// Up to `limit` schedules by name, after `after`.
    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError>;

    /// Writes a schedule if its stored revision is `write.expected` (absent for `None`) and, when
    /// fenced, the fence's owner and epoch hold the schedule's partition; inserts `write.tasks`
    /// in the same atomic step. [`StoreError::StaleEpoch`] when the fence is refused (certainly
    /// not applied); [`ScheduleWritten::Conflict`] when the revision is not the expected one.
    /// `write.partitions` assigns the tasks' partitions as in [`Tasks::insert`].
    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten, StoreError>;

    /// Deletes a schedule (its tasks stay) if its revision is `revision`; `false` if it does
    /// not exist or has another revision.
    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError>;

    /// The active schedules of `partitions` whose next tick is at or before `before`, by next
    /// tick, at most `limit`, and the earliest next tick of the others (cheap: an index on
    /// partition and next tick).
    async fn due_schedules(&self, query: DueSchedulesQuery) -> Result<DueSchedules, StoreError>;
}

/// Upkeep: retention of finished tasks, and a whole cluster's restart.
#[async_trait]
pub trait Upkeep: Send + Sync {
    /// Deletes up to `limit` finished tasks (COMPLETED, FAILED, CANCELLED) that finished before
    /// `before`, with their idempotency keys; returns how many. Keeps the task table
    /// small: the claim's indexes only ever cover live tasks.
    async fn purge_finished(&self, before: Millis, limit: usize) -> Result<u64, StoreError>;

    /// Forgets every partition's owner and takes back every RUNNING claim
    /// ([`rules::take_back`]); returns how many it took back. Only for a cluster restarted
    /// whole whose coordination store starts its epochs again (`rota dev` on in-memory
    /// coordination): never while workers of the cluster may be running.
    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError>;
}

/// A whole task store: what a backend implements (every part) and what a role is given.
pub trait TaskStore: Tasks + Execution + Schedules + Upkeep {}

impl<T: Tasks + Execution + Schedules + Upkeep + ?Sized> TaskStore for T {}
