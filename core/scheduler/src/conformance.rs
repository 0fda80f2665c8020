//! The conformance suite every task store must pass (memory, SQLite, PostgreSQL). A backend's
//! tests call [`task_store_conformance!`] with an async function returning a fresh, empty store;
//! the macro expands to one `#[tokio::test]` per case.

mod schedules;
pub use schedules::*;

use super::store::{CancelOutcome, Claim, Completion, CompletionOutcome, ListFilter, TaskStore};
use super::{Millis, NewTask, Task, TaskStatus, partition_for};
use rota_model::InstanceId;
use std::sync::Arc;

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
        store.acquire(p, owner, epoch, NOW).await.unwrap();
    }
}

/// Insert, read back, ids unique, partitions from the key or the id.
pub async fn insert_and_get(store: Arc<dyn TaskStore>) {
    let inserted = store
        .insert(
            vec![task("a", NOW, None), task("b", NOW, Some("customer-1"))],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(inserted.len(), 2);
    let (a, b) = (&inserted[0].0, &inserted[1].0);
    assert!(inserted.iter().all(|(_, created)| *created));
    assert_ne!(a.id, b.id);
    assert_eq!(a.partition, partition_for(None, a.id, PARTITIONS));
    assert_eq!(
        b.partition,
        partition_for(Some("customer-1"), b.id, PARTITIONS)
    );
    assert_eq!(
        (a.status, a.attempts, a.created_at),
        (TaskStatus::Pending, 0, NOW)
    );
    assert_eq!(store.get(a.id).await.unwrap().as_ref(), Some(a));
    assert_eq!(
        store.get(b.id).await.unwrap().unwrap().payload,
        serde_json::json!({"n": "b"})
    );
    assert_eq!(store.get(a.id.max(b.id) + 1000).await.unwrap(), None);
}

/// A repeated idempotency key returns the original task, within a batch and across batches.
pub async fn idempotency_keys(store: Arc<dyn TaskStore>) {
    let mut t = task("once", NOW, None);
    t.idempotency_key = Some("req-1".into());
    let first = store
        .insert(vec![t.clone()], PARTITIONS, NOW)
        .await
        .unwrap();
    let mut changed = t.clone();
    changed.name = "other".into();
    let again = store
        .insert(vec![changed, t.clone()], PARTITIONS, NOW + 5)
        .await
        .unwrap();
    assert!(first[0].1);
    assert_eq!(again[0], (first[0].0.clone(), false));
    assert_eq!(again[1], (first[0].0.clone(), false));
    let page = store
        .list(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 1);
    // Read back by key; a key that names nothing is left out.
    let found = store
        .by_idempotency_keys(&["req-1".into(), "none".into()])
        .await
        .unwrap();
    assert_eq!(found, vec![first[0].0.clone()]);
    assert!(store.by_idempotency_keys(&[]).await.unwrap().is_empty());
}

/// A payload comes back as it was sent, extreme numbers included (a store that normalises
/// numbers may write one back in a form no JSON parser reads as the same number, or at all).
pub async fn payloads_come_back_as_sent(store: Arc<dyn TaskStore>) {
    let payload = serde_json::json!({
        "floats": [f64::MIN, f64::MAX, f64::MIN_POSITIVE, 1e-300, -0.5, 0.1],
        "integers": [i64::MIN, i64::MAX, u64::MAX, 0],
        "text": "caf\u{e9} \u{1f600} \"quoted\" \\ back",
        "nested": {"b": [true, false, null], "a": {}},
    });
    let mut t = task("numbers", NOW, None);
    t.payload = payload.clone();
    let (stored, _) = store
        .insert(vec![t], PARTITIONS, NOW)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(stored.payload, payload, "as inserted");
    let read = store.get(stored.id).await.unwrap().expect("stored");
    assert_eq!(read.payload, payload, "as read back");
    let listed = store
        .list(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.tasks[0].payload, payload, "as listed");
}

/// One claim takes due tasks across partitions in due order; future and unowned ones stay.
pub async fn claim_in_due_order(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let (k0, k1, k2) = (key_for(0), key_for(1), key_for(2));
    let ids: Vec<_> = store
        .insert(
            vec![
                task("late", NOW - 10, Some(&k1)),
                task("early", NOW - 30, Some(&k0)),
                task("middle", NOW - 20, Some(&k1)),
                task("future", NOW + 60_000, Some(&k0)),
                task("elsewhere", NOW - 40, Some(&k2)),
            ],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(t, _)| t.id)
        .collect();
    store.acquire(0, &owner, 1, NOW).await.unwrap();
    store.acquire(1, &owner, 1, NOW).await.unwrap();
    let claims = [
        Claim {
            partition: 0,
            epoch: 1,
        },
        Claim {
            partition: 1,
            epoch: 1,
        },
    ];
    let claimed = store.claim(&owner, &claims, NOW, 10, 30_000).await.unwrap();
    assert!(claimed.refused.is_empty());
    let names: Vec<_> = claimed.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["early", "middle", "late"]);
    for t in &claimed.tasks {
        assert_eq!(t.status, TaskStatus::Running);
        assert_eq!(
            (t.owner.as_ref(), t.epoch, t.attempts),
            (Some(&owner), Some(1), 1)
        );
        assert_eq!(
            (t.started_at, t.lease_until),
            (Some(NOW), Some(NOW + 30_000))
        );
    }
    // Nothing is claimed twice; the limit holds.
    assert!(
        store
            .claim(&owner, &claims, NOW, 10, 30_000)
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    assert_eq!(
        store.get(ids[3]).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    assert_eq!(
        store.get(ids[4]).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    // The claim tells when the next task of its partitions is due; an empty claim too.
    assert_eq!(claimed.next_due, Some(NOW + 60_000));
    assert_eq!(
        store
            .claim(&owner, &claims, NOW, 10, 30_000)
            .await
            .unwrap()
            .next_due,
        Some(NOW + 60_000)
    );
    assert_eq!(
        store.backlog().await.unwrap(),
        super::Backlog {
            pending: 2,
            running: 3
        }
    );
    store.acquire(3, &owner, 1, NOW).await.unwrap();
    let nothing = [Claim {
        partition: 3,
        epoch: 1,
    }];
    let empty = store
        .claim(&owner, &nothing, NOW, 10, 30_000)
        .await
        .unwrap();
    assert_eq!((empty.tasks.len(), empty.next_due), (0, None));
}

/// Batch completion: success, retry, and failure once attempts are used up.
pub async fn batch_completion_and_retries(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let mut last = task("flaky", NOW, None);
    last.max_attempts = 1;
    let inserted = store
        .insert(
            vec![task("ok", NOW, None), task("retry", NOW, None), last],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap();
    own_all(&*store, &owner, 1).await;
    let claimed = store
        .claim(&owner, &all(1), NOW, 10, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(claimed.len(), 3);
    let failed = |t: &Task| Completion {
        id: t.id,
        partition: t.partition,
        epoch: 1,
        started_at: None,
        outcome: CompletionOutcome::Failed {
            error: "boom".into(),
            retry_at: NOW + 1_000,
        },
    };
    let results = store
        .complete(
            &owner,
            &[
                Completion {
                    id: inserted[0].0.id,
                    partition: inserted[0].0.partition,
                    epoch: 1,
                    started_at: None,
                    outcome: CompletionOutcome::Succeeded,
                },
                failed(&inserted[1].0),
                failed(&inserted[2].0),
            ],
            NOW + 10,
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            Some(TaskStatus::Completed),
            Some(TaskStatus::Pending),
            Some(TaskStatus::Failed)
        ]
    );
    let ok = store.get(inserted[0].0.id).await.unwrap().unwrap();
    assert_eq!(
        (ok.status, ok.finished_at),
        (TaskStatus::Completed, Some(NOW + 10))
    );
    let retry = store.get(inserted[1].0.id).await.unwrap().unwrap();
    assert_eq!(
        (retry.status, retry.scheduled_at),
        (TaskStatus::Pending, NOW + 1_000)
    );
    assert_eq!(
        (retry.attempts, retry.last_error.as_deref()),
        (1, Some("boom"))
    );
    assert!(
        store
            .claim(&owner, &all(1), NOW + 999, 10, 30_000)
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    let again = store
        .claim(&owner, &all(1), NOW + 1_000, 10, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    let dead = store.get(inserted[2].0.id).await.unwrap().unwrap();
    assert_eq!(
        (dead.status, dead.last_error.as_deref()),
        (TaskStatus::Failed, Some("boom"))
    );
    // A second completion of a finished attempt is refused.
    let twice = store
        .complete(
            &owner,
            &[Completion {
                id: ok.id,
                partition: ok.partition,
                epoch: 1,
                started_at: None,
                outcome: CompletionOutcome::Succeeded,
            }],
            NOW + 20,
        )
        .await
        .unwrap();
    assert_eq!(twice, [None]);
}

/// A new owner's epoch fences the old one: its claims come back at once, and its claim,
/// completion and renewal are refused.
pub async fn fencing(store: Arc<dyn TaskStore>) {
    let (old, new) = (InstanceId::new("old"), InstanceId::new("new"));
    let k0 = key_for(0);
    store
        .insert(
            vec![task("t", NOW, Some(&k0)), task("u", NOW, Some(&k0))],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap();
    store.acquire(0, &old, 1, NOW).await.unwrap();
    let stale = [Claim {
        partition: 0,
        epoch: 1,
    }];
    let claimed = store
        .claim(&old, &stale, NOW, 1, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(claimed.len(), 1);
    let id = claimed[0].id;

    // The partition moves to `new` with a higher epoch: the in-flight claim is requeued.
    assert_eq!(store.acquire(0, &new, 2, NOW + 1).await.unwrap(), 1);
    let t = store.get(id).await.unwrap().unwrap();
    assert_eq!((t.status, t.owner), (TaskStatus::Pending, None));
    // Everything the old owner tries is refused.
    let refused = store
        .claim(&old, &stale, NOW + 2, 10, 30_000)
        .await
        .unwrap();
    assert_eq!(
        (refused.tasks.len(), refused.refused.as_slice()),
        (0, &[0][..])
    );
    let done = Completion {
        id,
        partition: 0,
        epoch: 1,
        started_at: None,
        outcome: CompletionOutcome::Succeeded,
    };
    assert_eq!(
        store
            .complete(&old, std::slice::from_ref(&done), NOW + 2)
            .await
            .unwrap(),
        [None]
    );
    assert_eq!(store.renew(&old, &stale, NOW, 60_000).await.unwrap(), [0]);
    assert!(matches!(
        store.acquire(0, &old, 1, NOW + 3).await,
        Err(super::StoreError::StaleEpoch {
            partition: 0,
            current: 2,
            given: 1
        })
    ));
    // Same epoch, other owner: refused too.
    assert!(store.acquire(0, &old, 2, NOW + 3).await.is_err());
    // The new owner runs both tasks; the requeued one on its second attempt.
    let fresh = [Claim {
        partition: 0,
        epoch: 2,
    }];
    let claimed = store
        .claim(&new, &fresh, NOW + 4, 10, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(claimed.len(), 2);
    let again = claimed.iter().find(|t| t.id == id).unwrap();
    assert_eq!((again.attempts, again.epoch), (2, Some(2)));
    let done = Completion {
        id,
        partition: 0,
        epoch: 2,
        started_at: None,
        outcome: CompletionOutcome::Succeeded,
    };
    assert_eq!(
        store.complete(&new, &[done], NOW + 5).await.unwrap(),
        [Some(TaskStatus::Completed)]
    );
}

/// Leases: renewal extends them; an expired lease makes the task claimable again.
pub async fn leases(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let k0 = key_for(0);
    store
        .insert(vec![task("long", NOW, Some(&k0))], PARTITIONS, NOW)
        .await
        .unwrap();
    store.acquire(0, &owner, 1, NOW).await.unwrap();
    let claims = [Claim {
        partition: 0,
        epoch: 1,
    }];
    let t = store
        .claim(&owner, &claims, NOW, 1, 1_000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(
        store
            .renew(&owner, &claims, NOW, 5_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get(t.id).await.unwrap().unwrap().lease_until,
        Some(NOW + 5_000)
    );
    // Not requeued before the lease ends; an expired lease is never claimed directly.
    assert_eq!(
        store
            .requeue_expired(&owner, &claims, NOW + 4_999)
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .claim(&owner, &claims, NOW + 5_001, 1, 1_000)
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    // Another owner's epoch requeues nothing; the owner's own sweep does.
    let stale = [Claim {
        partition: 0,
        epoch: 0,
    }];
    assert_eq!(
        store
            .requeue_expired(&owner, &stale, NOW + 5_001)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .requeue_expired(&owner, &claims, NOW + 5_001)
            .await
            .unwrap(),
        1
    );
    let again = store
        .claim(&owner, &claims, NOW + 5_002, 1, 1_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!((again.len(), again[0].attempts), (1, 2));
}

/// A released claim (never started) is PENDING again with its attempt not counted; a
/// completion's start time is recorded as the task's.
pub async fn release_and_start_times(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let k0 = key_for(0);
    let ids: Vec<_> = store
        .insert(
            vec![task("a", NOW, Some(&k0)), task("b", NOW, Some(&k0))],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(t, _)| t.id)
        .collect();
    store.acquire(0, &owner, 1, NOW).await.unwrap();
    let claims = [Claim {
        partition: 0,
        epoch: 1,
    }];
    let claimed = store.claim(&owner, &claims, NOW, 10, 30_000).await.unwrap();
    assert_eq!(claimed.tasks.len(), 2);
    let results = store
        .complete(
            &owner,
            &[
                Completion {
                    id: ids[0],
                    partition: 0,
                    epoch: 1,
                    started_at: Some(NOW + 7),
                    outcome: CompletionOutcome::Succeeded,
                },
                Completion {
                    id: ids[1],
                    partition: 0,
                    epoch: 1,
                    started_at: None,
                    outcome: CompletionOutcome::Released,
                },
            ],
            NOW + 9,
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        [Some(TaskStatus::Completed), Some(TaskStatus::Pending)]
    );
    let a = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (a.started_at, a.finished_at),
        (Some(NOW + 7), Some(NOW + 9))
    );
    let b = store.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(
        (b.status, b.attempts, b.owner),
        (TaskStatus::Pending, 0, None)
    );
    // Released under a stale epoch: refused.
    let again = store
        .claim(&owner, &claims, NOW + 10, 10, 30_000)
        .await
        .unwrap();
    assert_eq!(again.tasks.len(), 1);
    let stale = Completion {
        id: ids[1],
        partition: 0,
        epoch: 0,
        started_at: None,
        outcome: CompletionOutcome::Released,
    };
    assert_eq!(
        store.complete(&owner, &[stale], NOW + 11).await.unwrap(),
        [None]
    );
    // Naming another partition than the task's: refused, even with the right epoch and an
    // owned partition.
    store.acquire(1, &owner, 1, NOW).await.unwrap();
    let elsewhere = Completion {
        id: ids[1],
        partition: 1,
        epoch: 1,
        started_at: None,
        outcome: CompletionOutcome::Succeeded,
    };
    assert_eq!(
        store
            .complete(&owner, &[elsewhere], NOW + 11)
            .await
            .unwrap(),
        [None]
    );
    let b = store.get(ids[1]).await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (TaskStatus::Running, 1));
}

/// Cancel: PENDING only; racing claims, each task ends either cancelled or claimed, never both.
pub async fn cancel_racing_claims(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let inserted = store
        .insert(
            (0..40).map(|i| task(&format!("t{i}"), NOW, None)).collect(),
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .cancel(inserted.last().unwrap().0.id + 1_000, NOW)
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );
    own_all(&*store, &owner, 1).await;
    let claimer = {
        let store = store.clone();
        let owner = owner.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            for _ in 0..40 {
                let batch = store.claim(&owner, &all(1), NOW, 1, 30_000).await.unwrap();
                claimed.extend(batch.tasks.into_iter().map(|t| (t.id, t.partition)));
                tokio::task::yield_now().await;
            }
            claimed
        })
    };
    let mut cancelled = Vec::new();
    for (t, _) in inserted.iter().rev() {
        match store.cancel(t.id, NOW).await.unwrap() {
            CancelOutcome::Cancelled(c) => {
                assert_eq!(c.status, TaskStatus::Cancelled);
                cancelled.push(t.id);
            }
            CancelOutcome::Conflict(c) => assert_eq!(c.status, TaskStatus::Running),
            CancelOutcome::NotFound => panic!("task vanished"),
        }
        tokio::task::yield_now().await;
    }
    let claimed = claimer.await.unwrap();
    assert!(
        claimed.iter().all(|(id, _)| !cancelled.contains(id)),
        "a task was both claimed and cancelled"
    );
    assert_eq!(claimed.len() + cancelled.len(), 40);
    if let Some(&(id, partition)) = claimed.first() {
        let done = Completion {
            id,
            partition,
            epoch: 1,
            started_at: None,
            outcome: CompletionOutcome::Succeeded,
        };
        store.complete(&owner, &[done], NOW).await.unwrap();
        assert!(
            matches!(store.cancel(id, NOW).await.unwrap(), CancelOutcome::Conflict(t) if t.status == TaskStatus::Completed)
        );
    }
}

/// Listing pages by increasing id with filters; every task exactly once.
pub async fn pagination(store: Arc<dyn TaskStore>) {
    let batch: Vec<_> = (0..25)
        .map(|i| task(if i % 2 == 0 { "even" } else { "odd" }, NOW, None))
        .collect();
    store.insert(batch, PARTITIONS, NOW).await.unwrap();
    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = store
            .list(&ListFilter {
                limit: 10,
                after,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted), (25, seen.clone()));
    let odd = store
        .list(&ListFilter {
            name: Some("odd".into()),
            limit: 100,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(odd.tasks.len(), 12);
    assert!(odd.next.is_none());
    let running = store
        .list(&ListFilter {
            status: Some(TaskStatus::Running),
            limit: 100,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(running.tasks.is_empty());

    // Every status filter, alone and with the name, page by page in id order.
    let owner = InstanceId::new("w1");
    own_all(&*store, &owner, 1).await;
    let claimed = store
        .claim(&owner, &all(1), NOW, 9, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(claimed.len(), 9);
    let done: Vec<_> = claimed[..3]
        .iter()
        .map(|t| Completion {
            epoch: 1,
            ..Completion::of(t, CompletionOutcome::Succeeded)
        })
        .collect();
    store.complete(&owner, &done, NOW).await.unwrap();
    let pending: Vec<_> = seen
        .iter()
        .filter(|id| !claimed.iter().any(|t| t.id == **id))
        .copied()
        .collect();
    for &id in &pending[..2] {
        store.cancel(id, NOW).await.unwrap();
    }
    let all_tasks = store
        .list(&ListFilter {
            limit: 100,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .tasks;
    for status in [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ] {
        for name in [None, Some("odd")] {
            let expected: Vec<_> = all_tasks
                .iter()
                .filter(|t| t.status == status && name.is_none_or(|n| t.name == n))
                .map(|t| t.id)
                .collect();
            let (mut listed, mut after) = (Vec::new(), None);
            loop {
                let page = store
                    .list(&ListFilter {
                        status: Some(status),
                        name: name.map(str::to_owned),
                        limit: 2,
                        after,
                    })
                    .await
                    .unwrap();
                assert!(page.tasks.iter().all(|t| t.status == status));
                listed.extend(page.tasks.iter().map(|t| t.id));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
                assert!(listed.len() <= 25, "pagination does not end");
            }
            assert_eq!(listed, expected, "{status:?} {name:?}");
        }
    }
    let count = |s| all_tasks.iter().filter(|t| t.status == s).count();
    assert_eq!(
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Cancelled
        ]
        .map(count),
        [14, 6, 3, 2]
    );
}

/// Text no store can hold (a NUL character, in any field or anywhere in the payload) is refused
/// as invalid input by every store, and a batch holding one such task stores nothing.
pub async fn unstorable_text_is_refused(store: Arc<dyn TaskStore>) {
    let nul = "a\u{0}b";
    let variants: Vec<NewTask> = vec![
        NewTask {
            name: nul.into(),
            ..task("x", NOW, None)
        },
        NewTask {
            payload: serde_json::json!({"deep": [1, {"s": nul}]}),
            ..task("x", NOW, None)
        },
        NewTask {
            payload: serde_json::json!({ nul: 1 }),
            ..task("x", NOW, None)
        },
        NewTask {
            partition_key: Some(nul.into()),
            ..task("x", NOW, None)
        },
        NewTask {
            handler: Some(nul.into()),
            ..task("x", NOW, None)
        },
        NewTask {
            idempotency_key: Some(nul.into()),
            ..task("x", NOW, None)
        },
    ];
    for bad in variants {
        let batch = vec![task("fine", NOW, None), bad.clone()];
        assert!(
            matches!(
                store.insert(batch, PARTITIONS, NOW).await,
                Err(super::StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let stored = store
        .list(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(stored.tasks.is_empty(), "{:?}", stored.tasks);
}

/// A whole-cluster restart forgets owners and takes back every claim.
pub async fn reset_after_restart(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    store
        .insert(
            vec![task("a", NOW, None), task("b", NOW, None)],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap();
    own_all(&*store, &owner, 5).await;
    let claimed = store
        .claim(&owner, &all(5), NOW, 1, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(claimed.len(), 1);
    assert_eq!(store.reset_after_restart(NOW + 1).await.unwrap(), 1);
    let t = store.get(claimed[0].id).await.unwrap().unwrap();
    assert_eq!((t.status, t.owner), (TaskStatus::Pending, None));
    // Epochs start again: epoch 1 is accepted after the reset.
    own_all(&*store, &owner, 1).await;
    assert_eq!(
        store
            .claim(&owner, &all(1), NOW + 2, 10, 30_000)
            .await
            .unwrap()
            .tasks
            .len(),
        2
    );
}

/// Finished tasks older than the cutoff are purged, with their idempotency keys; live ones stay.
pub async fn purge_finished(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let mut keyed = task("keyed", NOW, None);
    keyed.idempotency_key = Some("once".into());
    let inserted = store
        .insert(
            vec![
                keyed.clone(),
                task("cancelled", NOW + 60_000, None),
                task("pending", NOW + 60_000, None),
            ],
            PARTITIONS,
            NOW,
        )
        .await
        .unwrap();
    own_all(&*store, &owner, 1).await;
    let claimed = store
        .claim(&owner, &all(1), NOW, 10, 30_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(claimed.len(), 1);
    let done = Completion {
        id: claimed[0].id,
        partition: claimed[0].partition,
        epoch: 1,
        started_at: None,
        outcome: CompletionOutcome::Succeeded,
    };
    store.complete(&owner, &[done], NOW + 10).await.unwrap();
    store.cancel(inserted[1].0.id, NOW + 20).await.unwrap();
    assert_eq!(
        store.purge_finished(NOW + 10, 100).await.unwrap(),
        0,
        "finished at the cutoff stays"
    );
    assert_eq!(store.purge_finished(NOW + 1_000, 100).await.unwrap(), 2);
    assert_eq!(store.get(inserted[0].0.id).await.unwrap(), None);
    assert_eq!(
        store.get(inserted[2].0.id).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    // The key is free again.
    assert!(
        store
            .insert(vec![keyed], PARTITIONS, NOW + 2_000)
            .await
            .unwrap()[0]
            .1
    );
}

/// Inserts are announced per partition.
pub async fn insert_notifications(store: Arc<dyn TaskStore>) {
    let mut inserted = store.inserted();
    let k3 = key_for(3);
    store
        .insert(vec![task("n", NOW, Some(&k3))], PARTITIONS, NOW)
        .await
        .unwrap();
    assert_eq!(inserted.try_recv().ok(), Some(3));
}

/// Expands to one `#[tokio::test]` per task-store conformance case, each on a fresh store from
/// the given async function.
#[macro_export]
macro_rules! task_store_conformance {
    ($store:path) => {
        $crate::task_store_conformance!(@cases $store;
            insert_and_get, idempotency_keys, claim_in_due_order, batch_completion_and_retries,
            fencing, leases, release_and_start_times, cancel_racing_claims, pagination, insert_notifications,
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
