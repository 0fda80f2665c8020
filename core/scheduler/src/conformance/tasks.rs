//! Conformance cases of [`Tasks`](crate::Tasks): insert, read, idempotency, payloads, listing,
//! cancel, text no store can hold, insert notifications.

use super::*;
use crate::store::{CancelOutcome, Completion, CompletionOutcome, ListFilter, TaskStore};
use crate::{NewTask, TaskStatus, partition_for};
use rota_model::InstanceId;
use std::sync::Arc;

/// Insert, read back, ids unique, partitions from the key or the id.
pub async fn insert_and_get(store: Arc<dyn TaskStore>) {
    let inserted = store
        .insert(inserting(
            vec![task("a", NOW, None), task("b", NOW, Some("customer-1"))],
            PARTITIONS,
            NOW,
        ))
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
        .insert(inserting(vec![t.clone()], PARTITIONS, NOW))
        .await
        .unwrap();
    let mut changed = t.clone();
    changed.name = "other".into();
    let again = store
        .insert(inserting(vec![changed, t.clone()], PARTITIONS, NOW + 5))
        .await
        .unwrap();
    assert!(first[0].1);
    assert_eq!(again[0], (first[0].0.clone(), false));
    assert_eq!(again[1], (first[0].0.clone(), false));
    assert_eq!(first_ten(&*store).await.len(), 1);
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
        .insert(inserting(vec![t], PARTITIONS, NOW))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(stored.payload, payload, "as inserted");
    let read = store.get(stored.id).await.unwrap().expect("stored");
    assert_eq!(read.payload, payload, "as read back");
    assert_eq!(first_ten(&*store).await[0].payload, payload, "as listed");
}

/// Cancel: PENDING only; racing claims, each task ends either cancelled or claimed, never both.
pub async fn cancel_racing_claims(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let new = (0..40).map(|i| task(&format!("t{i}"), NOW, None)).collect();
    let inserted = inserted(&*store, new, NOW).await;
    let beyond = inserted.last().unwrap().id + 1_000;
    assert_eq!(
        store.cancel(beyond, NOW).await.unwrap(),
        CancelOutcome::NotFound
    );
    own_all(&*store, &owner, 1).await;
    let claimer = {
        let store = store.clone();
        let owner = owner.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            for _ in 0..40 {
                let batch = claim(&*store, &owner, &all(1), NOW, 1, 30_000).await;
                claimed.extend(batch.tasks.into_iter().map(|t| (t.id, t.partition)));
                tokio::task::yield_now().await;
            }
            claimed
        })
    };
    let mut cancelled = Vec::new();
    for t in inserted.iter().rev() {
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
        let done = [ended(id, partition, 1, CompletionOutcome::Succeeded)];
        complete(&*store, &owner, &done, NOW).await;
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
    insert(&*store, batch, NOW).await;
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
    let claimed = claim_all(&*store, &owner, 1, NOW, 9).await;
    assert_eq!(claimed.len(), 9);
    let done: Vec<_> = claimed[..3]
        .iter()
        .map(|t| Completion {
            epoch: 1,
            ..Completion::of(t, CompletionOutcome::Succeeded)
        })
        .collect();
    complete(&*store, &owner, &done, NOW).await;
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
                store.insert(inserting(batch, PARTITIONS, NOW)).await,
                Err(crate::StoreError::Invalid(_))
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

/// Inserts are announced per partition, with the earliest due time among them.
pub async fn insert_notifications(store: Arc<dyn TaskStore>) {
    let mut inserted = store.inserted();
    let k3 = key_for(3);
    let batch = vec![
        task("later", NOW + 10, Some(&k3)),
        task("n", NOW, Some(&k3)),
    ];
    insert(&*store, batch, NOW).await;
    let expected = crate::Inserted {
        partition: 3,
        earliest_due: NOW,
    };
    assert_eq!(inserted.try_recv().ok(), Some(expected));
}
