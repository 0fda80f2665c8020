//! # rota-scheduler
//!
//! The scheduler, built on the framework (`rota-cluster`): tasks are sharded onto the
//! partitions of the `tasks` resource, and the worker leading a partition runs its tasks.
//!
//! - The task model (this module): what a task is, which partition it belongs to
//!   ([`partition_for`]), and when a failed one runs again ([`RetryPolicy`]). Times are
//!   milliseconds since the Unix epoch, UTC ([`Millis`]); the API layer converts to and from
//!   RFC 3339.
//! - [`store`]: the task-store contract (the judge of who may run what, by partition epoch),
//!   which the memory, SQLite and PostgreSQL backends implement, the rules they share, and
//!   one way to wrap a store (a deadline on every call, for one).
//! - [`worker`]: a participant's transition handler that turns partition grants into
//!   ownership, and the loops that claim, run and complete tasks.
//! - [`schedule`]: recurring schedules and the clock that fires their ticks.
//! - [`metrics`]: what every role counts, for `/metrics`.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod metrics;
mod retry;
pub mod schedule;
pub mod store;
pub mod worker;

pub use retry::RetryPolicy;

/// The store traits, for code that calls a concrete store's methods: `use
/// rota_scheduler::prelude::*;`.
pub mod prelude {
    pub use crate::store::{Execution, Schedules, TaskStore, Tasks, Upkeep};
}
pub use store::{
    AcquirePartition, Backlog, CancelOutcome, Claim, ClaimTasks, Claimed, CompleteTasks,
    Completion, CompletionOutcome, Deadlined, DueSchedules, DueSchedulesQuery, ErrorKind,
    Execution, InsertTasks, Inserted, ListFilter, Page, RenewLeases, RequeueExpired, ScheduleWrite,
    ScheduleWritten, Schedules, StoreError, TaskStore, Tasks, Upkeep,
};

use rota_model::{Epoch, InstanceId};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Server-assigned task id, unique in a store.
pub type TaskId = i64;

/// Name of the resource whose partitions tasks are sharded onto.
pub const TASKS_RESOURCE: &str = "tasks";

/// Default attempts before a task is FAILED.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Lifecycle of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Waiting for its due time (or for a retry).
    Pending,
    /// Claimed by a worker and executing.
    Running,
    /// Done.
    Completed,
    /// Failed `max_attempts` times; `last_error` says why.
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

impl TaskStatus {
    /// The status as stored and shown: `PENDING`, `RUNNING`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }

    /// Parses `PENDING`, `RUNNING`, ... (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the task will never run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// A task to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// Name (also selects the handler when `handler` is absent).
    pub name: String,
    /// Any JSON value.
    pub payload: serde_json::Value,
    /// When it is due.
    pub scheduled_at: Millis,
    /// Tasks with the same key land on the same partition (and so run in due order on one
    /// worker); without it the partition follows from the id.
    pub partition_key: Option<String>,
    /// Attempts before FAILED.
    pub max_attempts: u32,
    /// Handler to run it with (default: by name, then `log`).
    pub handler: Option<String>,
    /// A repeat insert with the same key returns the original task instead of a new one.
    pub idempotency_key: Option<String>,
}

impl NewTask {
    /// Checks what every store refuses the same way.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() {
            return Err(StoreError::Invalid("a task needs a non-empty name".into()));
        }
        if self.max_attempts == 0 {
            return Err(StoreError::Invalid("maxAttempts must be at least 1".into()));
        }
        storable_text("name", &self.name)?;
        for (what, text) in [
            ("handler", &self.handler),
            ("partitionKey", &self.partition_key),
            ("idempotencyKey", &self.idempotency_key),
        ] {
            if let Some(text) = text {
                storable_text(what, text)?;
            }
        }
        storable_json("payload", &self.payload)
    }

    /// The task as stored when it is created with `id` in `partition` at `now`: PENDING, no
    /// attempt yet. A store that writes these fields needs not read them back.
    pub fn into_pending(self, id: TaskId, partition: u32, now: Millis) -> Task {
        Task {
            id,
            partition,
            name: self.name,
            payload: self.payload,
            handler: self.handler,
            partition_key: self.partition_key,
            status: TaskStatus::Pending,
            scheduled_at: self.scheduled_at,
            attempts: 0,
            max_attempts: self.max_attempts,
            last_error: None,
            owner: None,
            epoch: None,
            lease_until: None,
            idempotency_key: self.idempotency_key,
            created_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

/// Refuses text that some store cannot hold: PostgreSQL stores no NUL character (U+0000) in
/// text or JSON, so no store takes one, and every store answers the same way.
pub fn storable_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "{what} contains a NUL character (U+0000), which cannot be stored"
        )));
    }
    Ok(())
}

/// [`storable_text`] for every string and object key of a JSON value.
fn storable_json(what: &str, value: &serde_json::Value) -> Result<(), StoreError> {
    match value {
        serde_json::Value::String(s) => storable_text(what, s),
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| storable_json(what, v)),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            storable_text(what, k)?;
            storable_json(what, v)
        }),
        _ => Ok(()),
    }
}

/// A stored task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Server-assigned id.
    pub id: TaskId,
    /// Name.
    pub name: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Handler.
    pub handler: Option<String>,
    /// Partition key.
    pub partition_key: Option<String>,
    /// Partition of the `tasks` resource.
    pub partition: u32,
    /// Status.
    pub status: TaskStatus,
    /// When it is (next) due.
    pub scheduled_at: Millis,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts before FAILED.
    pub max_attempts: u32,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Worker holding the current claim.
    pub owner: Option<InstanceId>,
    /// Partition epoch of the current (or last) claim.
    pub epoch: Option<Epoch>,
    /// The current claim expires at this time unless renewed.
    pub lease_until: Option<Millis>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Start of the last attempt.
    pub started_at: Option<Millis>,
    /// When it reached a final status.
    pub finished_at: Option<Millis>,
}

/// Partition of a task: jump consistent hash (Lamping and Veach) of a 64-bit hash of its
/// partition key, or of its id without one. Growing the partition count from `n` to `n + 1`
/// moves only about `1 / (n + 1)` of the tasks.
pub fn partition_for(partition_key: Option<&str>, id: TaskId, partitions: u32) -> u32 {
    let key = match partition_key {
        Some(k) => fnv1a(k.as_bytes()),
        None => mix(id as u64),
    };
    jump_hash(key, partitions.max(1))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_even_and_moves_little_when_growing() {
        let keys: Vec<u64> = (0..100_000u64).map(mix).collect();
        let mut counts = [0u32; 12];
        for &k in &keys {
            counts[jump_hash(k, 12) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(f64::from(*max) / f64::from(*min) < 1.1, "{counts:?}");
        let moved = keys
            .iter()
            .filter(|&&k| jump_hash(k, 12) != jump_hash(k, 13))
            .count();
        // Ideal: 1/13 of the keys (7.7%).
        assert!((6_500..9_000).contains(&moved), "moved {moved}");
    }

    #[test]
    fn partition_key_decides_the_partition() {
        let a = partition_for(Some("customer-7"), 1, 12);
        assert_eq!(a, partition_for(Some("customer-7"), 999, 12));
        assert!(partition_for(None, 5, 12) < 12);
        assert_eq!(partition_for(None, 5, 1), 0);
        assert_eq!(TaskStatus::parse("pending"), Some(TaskStatus::Pending));
        assert_eq!(TaskStatus::parse("nope"), None);
    }
}
