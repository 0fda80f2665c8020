//! The arguments of the store calls that take several, each call's as one value: a caller names
//! them (a claim's `limit` and `lease_ms` cannot be swapped unnoticed), a store reads them by
//! name, and a [`super::Layer`] sees the very value the store is given ([`super::Call`]; an
//! insert by its size, so that its batch moves to the store uncopied).

use super::{Claim, Completion, StoreError};
use crate::{Millis, NewTask, TaskId};
use rota_model::{Epoch, InstanceId};
use std::collections::BTreeMap;

/// [`super::Tasks::insert`]: a batch of new tasks, inserted all or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertTasks {
    /// The tasks, in order; the results come back in the same order.
    pub tasks: Vec<NewTask>,
    /// How many partitions the cluster's tasks are spread over: each task's partition is
    /// [`crate::partition_for`] its key over this many.
    pub partitions: u32,
    /// The insertion time (`created_at`).
    pub now: Millis,
}

impl InsertTasks {
    /// Refuses the whole batch if any task is not storable ([`NewTask::validate`]): every store
    /// checks this before it writes anything.
    pub fn validate(&self) -> Result<(), StoreError> {
        self.tasks.iter().try_for_each(NewTask::validate)
    }
}

/// [`super::Execution::acquire`]: `owner` takes `partition` under `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquirePartition {
    /// The partition.
    pub partition: u32,
    /// The worker it is granted to.
    pub owner: InstanceId,
    /// The grant's epoch: the fencing token of every later call under this ownership.
    pub epoch: Epoch,
    /// When (the time claims taken back are pending again from).
    pub now: Millis,
}

impl AcquirePartition {
    /// The grant's verdict, given the partition's stored owner and epoch (`None`: nobody owns
    /// it yet): [`StoreError::StaleEpoch`] if a newer epoch is stored, or the same epoch for
    /// another owner. Every store applies this one rule inside its acquire.
    pub fn check(&self, holder: Option<(&str, Epoch)>) -> Result<(), StoreError> {
        let Some((owner, current)) = holder else {
            return Ok(());
        };
        if current > self.epoch || (current == self.epoch && owner != self.owner.as_str()) {
            return Err(StoreError::StaleEpoch {
                partition: self.partition,
                current,
                given: self.epoch,
            });
        }
        Ok(())
    }
}

/// [`super::Execution::claim`]: up to `limit` due tasks of `partitions`, leased for `lease_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimTasks {
    /// The claimant.
    pub owner: InstanceId,
    /// The partitions to claim from, with the epochs the claimant holds them under.
    pub partitions: Vec<Claim>,
    /// The claim's time: tasks due at or before it are taken.
    pub now: Millis,
    /// At most this many tasks, across all the partitions.
    pub limit: usize,
    /// The lease: a claim neither completed nor renewed by `now + lease_ms` is taken back.
    pub lease_ms: i64,
    /// Where each listed partition's scan may resume: the claimant has claimed every due task
    /// of the partition ordered (by due time, then id) at or before this key, except those a
    /// live claim holds, and knows of no task that became due there since. A hint that lets a
    /// store step over the finished tasks a burn-down leaves in its due index; a store may
    /// ignore it (it is never needed for correctness, only for speed).
    pub resume_after: BTreeMap<u32, (Millis, TaskId)>,
}

/// [`super::Execution::complete`]: the ends of attempts claimed by `owner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompleteTasks {
    /// The claimant that ran them.
    pub owner: InstanceId,
    /// One per attempt; the results come back in the same order.
    pub completions: Vec<Completion>,
    /// When they ended.
    pub now: Millis,
}

/// [`super::Execution::renew`]: extends the leases of `owner`'s claims in `partitions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewLeases {
    /// The claimant.
    pub owner: InstanceId,
    /// The partitions, with the epochs the claimant holds them under.
    pub partitions: Vec<Claim>,
    /// The renewal's time (a store whose claims take the database's clock takes it here too).
    pub now: Millis,
    /// The new leases end `lease_ms` after `now`.
    pub lease_ms: i64,
}

/// [`super::Execution::requeue_expired`]: takes back the claims of `partitions` whose lease
/// ended before `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequeueExpired {
    /// The partitions' owner.
    pub owner: InstanceId,
    /// The partitions, with the epochs `owner` holds them under.
    pub partitions: Vec<Claim>,
    /// Leases that ended before this are expired.
    pub now: Millis,
}

/// [`super::Schedules::due_schedules`]: which schedules of `partitions` fire by `before`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueSchedulesQuery {
    /// The partitions whose schedules to read.
    pub partitions: Vec<u32>,
    /// Schedules whose next tick is at or before this are due.
    pub before: Millis,
    /// At most this many due schedules.
    pub limit: usize,
}
