//! The conformance suite every task store must pass (memory, SQLite, PostgreSQL). A backend's
//! tests call [`task_store_conformance!`] with an async function returning a fresh, empty store;
//! the macro expands to one `#[tokio::test]` per case.

pub mod calls;
mod execution;
pub mod recorder;
mod schedules;
mod tasks;
pub use execution::*;
pub use schedules::*;
pub use tasks::*;

use super::store::{Claim, Claimed, Completion, ListFilter, TaskStore};
use super::{Millis, NewTask, Task, TaskId, TaskStatus, partition_for};
use calls::*;
use rota_model::InstanceId;

const PARTITIONS: u32 = 4;
const NOW: Millis = 1_700_000_000_000;

fn task(name: &str, due: Millis, key: Option<&str>) -> NewTask {
    NewTask {
        name: name.to_owned(),
        payload: serde_json::json!({"n": name}),
        scheduled_at: due,
        partition_key: key.map(str::to_owned),
        max_attempts: 3,
        handler: None,
        idempotency_key: None,
    }
}

/// A partition key that lands on `partition`.
fn key_for(partition: u32) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| partition_for(Some(k), 0, PARTITIONS) == partition)
        .expect("some key lands on every partition")
}

fn all(epoch: u64) -> Vec<Claim> {
    (0..PARTITIONS)
        .map(|partition| Claim { partition, epoch })
        .collect()
}

async fn own_all(store: &dyn TaskStore, owner: &InstanceId, epoch: u64) {
    for p in 0..PARTITIONS {
        store.acquire(grant(p, owner, epoch, NOW)).await.unwrap();
    }
}

/// Inserts `tasks` at `now`; the stored tasks, in order.
async fn inserted(store: &dyn TaskStore, tasks: Vec<NewTask>, now: Millis) -> Vec<Task> {
    let inserted = store
        .insert(inserting(tasks, PARTITIONS, now))
        .await
        .unwrap();
    inserted.into_iter().map(|(t, _)| t).collect()
}

/// Inserts `tasks` at `now`; their ids, in order.
async fn insert(store: &dyn TaskStore, tasks: Vec<NewTask>, now: Millis) -> Vec<TaskId> {
    let tasks = inserted(store, tasks, now).await;
    tasks.into_iter().map(|t| t.id).collect()
}

/// Tasks named `names`, due now on partition 0, which `owner` then holds at epoch 1; their ids.
async fn held_on_zero(store: &dyn TaskStore, owner: &InstanceId, names: &[&str]) -> Vec<TaskId> {
    let k0 = key_for(0);
    let tasks = names.iter().map(|n| task(n, NOW, Some(&k0))).collect();
    let ids = insert(store, tasks, NOW).await;
    store.acquire(grant(0, owner, 1, NOW)).await.unwrap();
    ids
}

/// `owner`'s claim of up to `limit` due tasks of `partitions` at `now`, leased for `lease_ms`.
async fn claim(
    store: &dyn TaskStore,
    owner: &InstanceId,
    partitions: &[Claim],
    now: Millis,
    limit: usize,
    lease_ms: i64,
) -> Claimed {
    let claim = claiming(owner, partitions, now, limit, lease_ms);
    store.claim(claim).await.unwrap()
}

/// `owner`'s completions at `now`: each task's new status, `None` where refused.
async fn complete(
    store: &dyn TaskStore,
    owner: &InstanceId,
    completions: &[Completion],
    now: Millis,
) -> Vec<Option<TaskStatus>> {
    store
        .complete(&ends(owner, completions, now))
        .await
        .unwrap()
}

/// How many expired claims of `partitions` `owner`'s sweep at `now` requeues.
async fn requeue(
    store: &dyn TaskStore,
    owner: &InstanceId,
    partitions: &[Claim],
    now: Millis,
) -> u64 {
    let sweep = expiry(owner, partitions, now);
    store.requeue_expired(sweep).await.unwrap()
}

/// Claims up to `limit` due tasks of every partition, held at `epoch`, with a 30 s lease.
async fn claim_all(
    store: &dyn TaskStore,
    owner: &InstanceId,
    epoch: u64,
    now: Millis,
    limit: usize,
) -> Vec<Task> {
    let claim = claiming(owner, &all(epoch), now, limit, 30_000);
    store.claim(claim).await.unwrap().tasks
}

/// The first ten tasks of `store`, by id.
async fn first_ten(store: &dyn TaskStore) -> Vec<Task> {
    let ten = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    store.list(&ten).await.unwrap().tasks
}

/// Waits until exactly `count` tasks of `store` are COMPLETED; panics after `within`, saying
/// how many were. For tests that run a cluster over a store.
pub async fn wait_completed(store: &dyn TaskStore, count: usize, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let completed = ListFilter {
        status: Some(TaskStatus::Completed),
        limit: count + 1,
        ..ListFilter::default()
    };
    loop {
        let done = store.list(&completed).await.unwrap().tasks.len();
        if done == count {
            return;
        }
        let late = tokio::time::Instant::now() >= deadline;
        assert!(!late, "{done} of {count} tasks completed within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Expands to one `#[tokio::test]` per task-store conformance case, each on a fresh store from
/// the given async function.
#[macro_export]
macro_rules! task_store_conformance {
    ($store:path) => {
        $crate::task_store_conformance!(@cases $store;
            insert_and_get, idempotency_keys, claim_in_due_order, claims_cut_short_say_more_is_due,
            claims_resume_after_their_points,
            batch_completion_and_retries,
            failures_given_up_and_retried_later, fencing, leases, release_and_start_times, cancel_racing_claims, pagination, insert_notifications,
            reset_after_restart, purge_finished, unstorable_text_is_refused,
            payloads_come_back_as_sent, schedules_round_trip, schedule_writes_compare_and_set,
            firing_is_fenced_and_once_per_tick, due_schedules, trigger_pause_resume);
    };
    (@cases $store:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($store().await).await;
            }
        )*
    };
}
