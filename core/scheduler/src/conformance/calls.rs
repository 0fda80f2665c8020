//! The store calls' arguments in the order tests read best (the stores take them by name):
//! for the conformance cases and for tests that drive a store directly.

use crate::store::{
    AcquirePartition, Claim, ClaimTasks, CompleteTasks, Completion, CompletionOutcome,
    DueSchedulesQuery, InsertTasks, RenewLeases, RequeueExpired,
};
use crate::{Millis, NewTask, TaskId};
use rota_model::{Epoch, InstanceId};

/// [`InsertTasks`] of `tasks`.
pub fn inserting(tasks: Vec<NewTask>, partitions: u32, now: Millis) -> InsertTasks {
    InsertTasks {
        tasks,
        partitions,
        now,
    }
}

/// [`AcquirePartition`] of `partition` to `owner`.
pub fn grant(partition: u32, owner: &InstanceId, epoch: Epoch, now: Millis) -> AcquirePartition {
    AcquirePartition {
        partition,
        owner: owner.clone(),
        epoch,
        now,
    }
}

/// [`ClaimTasks`] by `owner`.
pub fn claiming(
    owner: &InstanceId,
    partitions: &[Claim],
    now: Millis,
    limit: usize,
    lease_ms: i64,
) -> ClaimTasks {
    ClaimTasks {
        owner: owner.clone(),
        partitions: partitions.to_vec(),
        now,
        limit,
        lease_ms,
        resume_after: Default::default(),
    }
}

/// [`CompleteTasks`] by `owner`.
pub fn ends(owner: &InstanceId, completions: &[Completion], now: Millis) -> CompleteTasks {
    CompleteTasks {
        owner: owner.clone(),
        completions: completions.to_vec(),
        now,
    }
}

/// A [`Completion`] of task `id`, claimed on `partition` at `epoch`, that does not say when it
/// started.
pub fn ended(id: TaskId, partition: u32, epoch: Epoch, outcome: CompletionOutcome) -> Completion {
    Completion {
        id,
        partition,
        epoch,
        started_at: None,
        outcome,
    }
}

/// [`RenewLeases`] of `owner`.
pub fn renewal(
    owner: &InstanceId,
    partitions: &[Claim],
    now: Millis,
    lease_ms: i64,
) -> RenewLeases {
    RenewLeases {
        owner: owner.clone(),
        partitions: partitions.to_vec(),
        now,
        lease_ms,
    }
}

/// [`RequeueExpired`] for `owner`'s partitions.
pub fn expiry(owner: &InstanceId, partitions: &[Claim], now: Millis) -> RequeueExpired {
    RequeueExpired {
        owner: owner.clone(),
        partitions: partitions.to_vec(),
        now,
    }
}

/// [`DueSchedulesQuery`] of `partitions`.
pub fn due_by(partitions: &[u32], before: Millis, limit: usize) -> DueSchedulesQuery {
    DueSchedulesQuery {
        partitions: partitions.to_vec(),
        before,
        limit,
    }
}
