//! Conformance cases of [`Execution`](crate::Execution) and [`Upkeep`](crate::Upkeep): claims in
//! due order, completions and retries, fencing, leases, releases, a restart, the purge.

use super::calls::claiming;
use super::*;
use crate::store::{Claim, Completion, CompletionOutcome, TaskStore};
use crate::{Task, TaskStatus};
use rota_model::InstanceId;
use std::sync::Arc;

/// One claim takes due tasks across partitions in due order; future and unowned ones stay.
pub async fn claim_in_due_order(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let (k0, k1, k2) = (key_for(0), key_for(1), key_for(2));
    let ids = insert(
        &*store,
        vec![
            task("late", NOW - 10, Some(&k1)),
            task("early", NOW - 30, Some(&k0)),
            task("middle", NOW - 20, Some(&k1)),
            task("future", NOW + 60_000, Some(&k0)),
            task("elsewhere", NOW - 40, Some(&k2)),
        ],
        NOW,
    )
    .await;
    store.acquire(grant(0, &owner, 1, NOW)).await.unwrap();
    store.acquire(grant(1, &owner, 1, NOW)).await.unwrap();
    let claims = [Claim::new(0, 1), Claim::new(1, 1)];
    let claimed = claim(&*store, &owner, &claims, NOW, 10, 30_000).await;
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
        claim(&*store, &owner, &claims, NOW, 10, 30_000)
            .await
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
        claim(&*store, &owner, &claims, NOW, 10, 30_000)
            .await
            .next_due,
        Some(NOW + 60_000)
    );
    assert_eq!(
        store.backlog().await.unwrap(),
        crate::Backlog {
            pending: 2,
            running: 3
        }
    );
    store.acquire(grant(3, &owner, 1, NOW)).await.unwrap();
    let nothing = [Claim::new(3, 1)];
    let empty = claim(&*store, &owner, &nothing, NOW, 10, 30_000).await;
    assert_eq!((empty.tasks.len(), empty.next_due), (0, None));
}

/// A claim that leaves due tasks behind says so: either it took its whole limit, or its next
/// due time is not after `now` (a store may cut each partition's part of a claim). Claiming
/// until nothing is due takes every due task once.
pub async fn claims_cut_short_say_more_is_due(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    // One partition with a backlog, the others with little.
    let mut due = Vec::new();
    for p in 0..PARTITIONS {
        for i in 0..if p == 0 { 12 } else { 2 } {
            due.push(task(&format!("p{p}-{i}"), NOW - 100 + i, Some(&key_for(p))));
        }
    }
    let count = due.len();
    due.push(task("future", NOW + 60_000, Some(&key_for(0))));
    let ids = insert(&*store, due, NOW).await;
    own_all(&*store, &owner, 1).await;
    let mut taken = std::collections::BTreeSet::new();
    for round in 0.. {
        assert!(
            round < count,
            "{round} claims of 8 did not take {count} due tasks"
        );
        let claimed = claim(&*store, &owner, &all(1), NOW, 8, 30_000).await;
        for t in &claimed.tasks {
            assert!(taken.insert(t.id), "task {} claimed twice", t.id);
        }
        if taken.len() == count {
            break;
        }
        assert!(
            claimed.tasks.len() == 8 || claimed.next_due.is_some_and(|at| at <= NOW),
            "claim {round} took {} of 8 and said the next is due at {:?}, with {} due left",
            claimed.tasks.len(),
            claimed.next_due,
            count - taken.len()
        );
    }
    assert!(!taken.contains(&ids[count]), "the future task was claimed");
    let rest = claim(&*store, &owner, &all(1), NOW, 8, 30_000).await;
    assert_eq!((rest.tasks.len(), rest.next_due), (0, Some(NOW + 60_000)));
}

/// A claim may resume each partition's scan after the point its caller gives (it never needs
/// to): what lies after the point is claimed in due order, and a claim without a point still
/// finds every due task the points stepped over.
pub async fn claims_resume_after_their_points(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let k0 = key_for(0);
    let due = (0..6).map(|i| task(&format!("t{i}"), NOW - 100 + i, Some(&k0)));
    let ids = insert(&*store, due.collect(), NOW).await;
    own_all(&*store, &owner, 1).await;
    let names = |tasks: &[Task]| tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let first = claim(&*store, &owner, &all(1), NOW, 2, 30_000).await;
    assert_eq!(names(&first.tasks), ["t0", "t1"]);
    // Resuming after t1 takes the next two.
    let mut resuming = claiming(&owner, &all(1), NOW, 2, 30_000);
    resuming.resume_after.insert(0, (NOW - 99, ids[1]));
    let next = store.claim(resuming.clone()).await.unwrap();
    assert_eq!(names(&next.tasks), ["t2", "t3"]);
    // A point past t4 (still due and unclaimed) may step over it, never takes it twice.
    resuming.resume_after.insert(0, (NOW - 96, ids[4]));
    resuming.limit = 10;
    let past = store.claim(resuming).await.unwrap();
    let past = names(&past.tasks);
    assert!(past == ["t5"] || past == ["t4", "t5"], "{past:?}");
    // Without a point, the claim finds what was stepped over.
    let rest = claim(&*store, &owner, &all(1), NOW, 10, 30_000).await;
    let mut all_names: Vec<_> = [
        names(&first.tasks),
        names(&next.tasks),
        past,
        names(&rest.tasks),
    ]
    .concat();
    all_names.sort();
    assert_eq!(all_names, ["t0", "t1", "t2", "t3", "t4", "t5"]);
}

/// Batch completion: success, retry, and failure once attempts are used up.
pub async fn batch_completion_and_retries(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let mut last = task("flaky", NOW, None);
    last.max_attempts = 1;
    let new = vec![task("ok", NOW, None), task("retry", NOW, None), last];
    let inserted = inserted(&*store, new, NOW).await;
    own_all(&*store, &owner, 1).await;
    let claimed = claim_all(&*store, &owner, 1, NOW, 10).await;
    assert_eq!(claimed.len(), 3);
    let boom = || CompletionOutcome::Failed {
        error: "boom".into(),
        retry_at: NOW + 1_000,
    };
    let outcomes = [CompletionOutcome::Succeeded, boom(), boom()];
    let completions: Vec<_> = (inserted.iter().zip(outcomes))
        .map(|(t, outcome)| ended(t.id, t.partition, 1, outcome))
        .collect();
    let results = complete(&*store, &owner, &completions, NOW + 10).await;
    assert_eq!(
        results,
        [
            Some(TaskStatus::Completed),
            Some(TaskStatus::Pending),
            Some(TaskStatus::Failed)
        ]
    );
    let ok = store.get(inserted[0].id).await.unwrap().unwrap();
    assert_eq!(
        (ok.status, ok.finished_at),
        (TaskStatus::Completed, Some(NOW + 10))
    );
    let retry = store.get(inserted[1].id).await.unwrap().unwrap();
    assert_eq!(
        (retry.status, retry.scheduled_at),
        (TaskStatus::Pending, NOW + 1_000)
    );
    assert_eq!(
        (retry.attempts, retry.last_error.as_deref()),
        (1, Some("boom"))
    );
    assert!(
        claim_all(&*store, &owner, 1, NOW + 999, 10)
            .await
            .is_empty()
    );
    let again = claim_all(&*store, &owner, 1, NOW + 1_000, 10).await;
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    let dead = store.get(inserted[2].id).await.unwrap().unwrap();
    assert_eq!(
        (dead.status, dead.last_error.as_deref()),
        (TaskStatus::Failed, Some("boom"))
    );
    // A second completion of a finished attempt is refused.
    let again = [ended(ok.id, ok.partition, 1, CompletionOutcome::Succeeded)];
    assert_eq!(complete(&*store, &owner, &again, NOW + 20).await, [None]);
}

/// A new owner's epoch fences the old one: its claims come back at once, and its claim,
/// completion and renewal are refused.
pub async fn fencing(store: Arc<dyn TaskStore>) {
    let (old, new) = (InstanceId::new("old"), InstanceId::new("new"));
    held_on_zero(&*store, &old, &["t", "u"]).await;
    let stale = [Claim::new(0, 1)];
    let claimed = claim(&*store, &old, &stale, NOW, 1, 30_000).await.tasks;
    assert_eq!(claimed.len(), 1);
    let id = claimed[0].id;

    // The partition moves to `new` with a higher epoch: the in-flight claim is requeued.
    assert_eq!(store.acquire(grant(0, &new, 2, NOW + 1)).await.unwrap(), 1);
    let t = store.get(id).await.unwrap().unwrap();
    assert_eq!((t.status, t.owner), (TaskStatus::Pending, None));
    // Everything the old owner tries is refused.
    let refused = claim(&*store, &old, &stale, NOW + 2, 10, 30_000).await;
    assert_eq!(
        (refused.tasks.len(), refused.refused.as_slice()),
        (0, &[0][..])
    );
    let done = [ended(id, 0, 1, CompletionOutcome::Succeeded)];
    assert_eq!(complete(&*store, &old, &done, NOW + 2).await, [None]);
    assert_eq!(
        store
            .renew(renewal(&old, &stale, NOW, 60_000))
            .await
            .unwrap(),
        [0]
    );
    assert!(matches!(
        store.acquire(grant(0, &old, 1, NOW + 3)).await,
        Err(crate::StoreError::StaleEpoch {
            partition: 0,
            current: 2,
            given: 1
        })
    ));
    // Same epoch, other owner: refused too.
    assert!(store.acquire(grant(0, &old, 2, NOW + 3)).await.is_err());
    // The new owner runs both tasks; the requeued one on its second attempt.
    let fresh = [Claim::new(0, 2)];
    let claimed = claim(&*store, &new, &fresh, NOW + 4, 10, 30_000)
        .await
        .tasks;
    assert_eq!(claimed.len(), 2);
    let again = claimed.iter().find(|t| t.id == id).unwrap();
    assert_eq!((again.attempts, again.epoch), (2, Some(2)));
    let done = [ended(id, 0, 2, CompletionOutcome::Succeeded)];
    assert_eq!(
        complete(&*store, &new, &done, NOW + 5).await,
        [Some(TaskStatus::Completed)]
    );
}

/// Leases: renewal extends them; an expired lease makes the task claimable again.
pub async fn leases(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    held_on_zero(&*store, &owner, &["long"]).await;
    let claims = [Claim::new(0, 1)];
    let t = claim(&*store, &owner, &claims, NOW, 1, 1_000)
        .await
        .tasks
        .remove(0);
    assert!(
        store
            .renew(renewal(&owner, &claims, NOW, 5_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get(t.id).await.unwrap().unwrap().lease_until,
        Some(NOW + 5_000)
    );
    // Not requeued before the lease ends; an expired lease is never claimed directly.
    assert_eq!(requeue(&*store, &owner, &claims, NOW + 4_999).await, 0);
    assert!(
        claim(&*store, &owner, &claims, NOW + 5_001, 1, 1_000)
            .await
            .tasks
            .is_empty()
    );
    // Another owner's epoch requeues nothing; the owner's own sweep does.
    let stale = [Claim::new(0, 0)];
    assert_eq!(requeue(&*store, &owner, &stale, NOW + 5_001).await, 0);
    assert_eq!(requeue(&*store, &owner, &claims, NOW + 5_001).await, 1);
    let again = claim(&*store, &owner, &claims, NOW + 5_002, 1, 1_000)
        .await
        .tasks;
    assert_eq!((again.len(), again[0].attempts), (1, 2));
}

/// A released claim (never started) is PENDING again with its attempt not counted; a
/// completion's start time is recorded as the task's.
pub async fn release_and_start_times(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let ids = held_on_zero(&*store, &owner, &["a", "b"]).await;
    let claims = [Claim::new(0, 1)];
    let claimed = claim(&*store, &owner, &claims, NOW, 10, 30_000).await;
    assert_eq!(claimed.tasks.len(), 2);
    let started = Completion {
        started_at: Some(NOW + 7),
        ..ended(ids[0], 0, 1, CompletionOutcome::Succeeded)
    };
    let released = ended(ids[1], 0, 1, CompletionOutcome::Released);
    let results = complete(&*store, &owner, &[started, released], NOW + 9).await;
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
    let again = claim(&*store, &owner, &claims, NOW + 10, 10, 30_000).await;
    assert_eq!(again.tasks.len(), 1);
    let stale = [ended(ids[1], 0, 0, CompletionOutcome::Released)];
    assert_eq!(complete(&*store, &owner, &stale, NOW + 11).await, [None]);
    // Naming another partition than the task's: refused, even with the right epoch and an
    // owned partition.
    store.acquire(grant(1, &owner, 1, NOW)).await.unwrap();
    let elsewhere = [ended(ids[1], 1, 1, CompletionOutcome::Succeeded)];
    assert_eq!(
        complete(&*store, &owner, &elsewhere, NOW + 11).await,
        [None]
    );
    let b = store.get(ids[1]).await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (TaskStatus::Running, 1));
}

/// A whole-cluster restart forgets owners and takes back every claim.
pub async fn reset_after_restart(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    insert(
        &*store,
        vec![task("a", NOW, None), task("b", NOW, None)],
        NOW,
    )
    .await;
    own_all(&*store, &owner, 5).await;
    let claimed = claim_all(&*store, &owner, 5, NOW, 1).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(store.reset_after_restart(NOW + 1).await.unwrap(), 1);
    let t = store.get(claimed[0].id).await.unwrap().unwrap();
    assert_eq!((t.status, t.owner), (TaskStatus::Pending, None));
    // Epochs start again: epoch 1 is accepted after the reset.
    own_all(&*store, &owner, 1).await;
    assert_eq!(claim_all(&*store, &owner, 1, NOW + 2, 10).await.len(), 2);
}

/// Finished tasks older than the cutoff are purged, with their idempotency keys; live ones stay.
pub async fn purge_finished(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let mut keyed = task("keyed", NOW, None);
    keyed.idempotency_key = Some("once".into());
    let later = |name| task(name, NOW + 60_000, None);
    let new = vec![keyed.clone(), later("cancelled"), later("pending")];
    let inserted = inserted(&*store, new, NOW).await;
    own_all(&*store, &owner, 1).await;
    let claimed = claim_all(&*store, &owner, 1, NOW, 10).await;
    assert_eq!(claimed.len(), 1);
    let done = [ended(
        claimed[0].id,
        claimed[0].partition,
        1,
        CompletionOutcome::Succeeded,
    )];
    complete(&*store, &owner, &done, NOW + 10).await;
    store.cancel(inserted[1].id, NOW + 20).await.unwrap();
    assert_eq!(
        store.purge_finished(NOW + 10, 100).await.unwrap(),
        0,
        "finished at the cutoff stays"
    );
    assert_eq!(store.purge_finished(NOW + 1_000, 100).await.unwrap(), 2);
    assert_eq!(store.get(inserted[0].id).await.unwrap(), None);
    assert_eq!(
        store.get(inserted[2].id).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    // The key is free again.
    assert!(
        store
            .insert(inserting(vec![keyed], PARTITIONS, NOW + 2_000))
            .await
            .unwrap()[0]
            .1
    );
}

/// A failure the handler gave up on is FAILED at once, attempts left or not, with its error;
/// a retry at a given time waits for it.
pub async fn failures_given_up_and_retried_later(store: Arc<dyn TaskStore>) {
    let owner = InstanceId::new("w1");
    let new = vec![task("hopeless", NOW, None), task("later", NOW, None)];
    let inserted = inserted(&*store, new, NOW).await;
    own_all(&*store, &owner, 1).await;
    let claimed = claim_all(&*store, &owner, 1, NOW, 10).await;
    assert_eq!(claimed.len(), 2);
    let end = |t: &Task, outcome| Completion {
        started_at: Some(NOW + 5),
        ..ended(t.id, t.partition, 1, outcome)
    };
    let (hopeless, later) = (&inserted[0], &inserted[1]);
    let gave_up = CompletionOutcome::Abandoned {
        error: "bad input".into(),
    };
    let at_noon = CompletionOutcome::Failed {
        error: "try at noon".into(),
        retry_at: NOW + 60_000,
    };
    let ends = [end(hopeless, gave_up), end(later, at_noon)];
    let results = complete(&*store, &owner, &ends, NOW + 10).await;
    assert_eq!(
        results,
        [Some(TaskStatus::Failed), Some(TaskStatus::Pending)]
    );
    let dead = store.get(hopeless.id).await.unwrap().unwrap();
    assert_eq!(
        (dead.status, dead.attempts, dead.last_error.as_deref()),
        (TaskStatus::Failed, 1, Some("bad input")),
        "one attempt of three ran"
    );
    assert_eq!(
        (dead.started_at, dead.finished_at, dead.owner),
        (Some(NOW + 5), Some(NOW + 10), None)
    );
    let waiting = store.get(later.id).await.unwrap().unwrap();
    assert_eq!(
        (waiting.scheduled_at, waiting.finished_at),
        (NOW + 60_000, None)
    );
    assert!(
        claim_all(&*store, &owner, 1, NOW + 59_999, 10)
            .await
            .is_empty()
    );
}
