//! Conformance cases for schedules: the compare-and-set, the fence, and one task per tick.

use super::*;
use crate::schedule::{
    self, MissedTicks, PutMode, PutOutcome, Schedule, ScheduleDef, ScheduleError, TaskTemplate,
    clock, schedule_partition, tick_key,
};
use crate::{Claim, ScheduleWrite, ScheduleWritten, StoreError, TaskStatus, TaskStore};
use rota_model::InstanceId;
use std::sync::Arc;

/// A schedule named so that it lands on `partition`, ticking every `spec`.
fn def_on(partition: u32, spec: &str) -> ScheduleDef {
    named("report", partition, spec)
}

/// [`def_on`] with a name starting with `tag`.
fn named(tag: &str, partition: u32, spec: &str) -> ScheduleDef {
    let name = (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|n| schedule_partition(n, PARTITIONS) == partition)
        .expect("some name lands on every partition");
    ScheduleDef {
        name,
        spec: spec.into(),
        zone: "UTC".into(),
        task: TaskTemplate {
            name: "report".into(),
            payload: serde_json::json!({"kind": "daily"}),
            handler: None,
            max_attempts: 2,
            partition_key: None,
        },
        missed: MissedTicks::RunOnce,
        catch_up: 10,
        jitter_ms: 0,
    }
}

async fn put(store: &dyn TaskStore, def: ScheduleDef) -> schedule::Schedule {
    schedule::put(store, def, PutMode::Create, PARTITIONS, NOW)
        .await
        .unwrap()
        .0
}

/// Create, read, list, repeat, replace, delete.
pub async fn schedules_round_trip(store: Arc<dyn TaskStore>) {
    let store = &*store;
    let def = def_on(1, "every 1m");
    let (created, outcome) = schedule::put(store, def.clone(), PutMode::Create, PARTITIONS, NOW)
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Created);
    assert_eq!(created.partition, 1);
    assert_eq!(created.next_tick, Some((NOW / 60_000 + 1) * 60_000));
    assert_eq!(
        store.schedule(&def.name).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(store.schedule("nobody").await.unwrap(), None);
    // A repeat changes nothing; another definition under the name is refused on create.
    let (again, outcome) = schedule::put(store, def.clone(), PutMode::Create, PARTITIONS, NOW + 5)
        .await
        .unwrap();
    assert_eq!((outcome, again.revision), (PutOutcome::Unchanged, 1));
    let mut other = def.clone();
    other.task.name = "other".into();
    let refused = schedule::put(store, other.clone(), PutMode::Create, PARTITIONS, NOW).await;
    assert!(
        matches!(refused, Err(ScheduleError::Exists(_))),
        "{refused:?}"
    );
    // Replacing the task keeps the clock; replacing the spec restarts it from now.
    let (replaced, outcome) =
        schedule::put(store, other.clone(), PutMode::Replace, PARTITIONS, NOW)
            .await
            .unwrap();
    assert_eq!(outcome, PutOutcome::Updated);
    assert_eq!(
        (replaced.revision, replaced.next_tick),
        (2, created.next_tick)
    );
    let mut hourly = other.clone();
    hourly.spec = "every 1h".into();
    let (hourly, _) = schedule::put(store, hourly, PutMode::Replace, PARTITIONS, NOW)
        .await
        .unwrap();
    assert_eq!(hourly.next_tick, Some((NOW / 3_600_000 + 1) * 3_600_000));
    assert_eq!(
        store.schedule(&def.name).await.unwrap(),
        Some(hourly.clone())
    );
    let second = put(store, def_on(2, "*/5 * * * * *")).await;
    let names: Vec<String> = store
        .schedules(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.def.name)
        .collect();
    let mut sorted = vec![def.name.clone(), second.def.name.clone()];
    sorted.sort();
    assert_eq!(names, sorted);
    let after: Vec<String> = store
        .schedules(Some(&sorted[0]), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.def.name)
        .collect();
    assert_eq!(after, &sorted[1..]);
    schedule::delete(store, &def.name, NOW).await.unwrap();
    assert_eq!(store.schedule(&def.name).await.unwrap(), None);
    assert!(matches!(
        schedule::delete(store, &def.name, NOW).await,
        Err(ScheduleError::NotFound(_))
    ));
}

/// Writes are a compare-and-set on the revision.
pub async fn schedule_writes_compare_and_set(store: Arc<dyn TaskStore>) {
    let store = &*store;
    let stored = put(store, def_on(0, "every 1m")).await;
    let write = |expected: Option<u64>| {
        let mut next = stored.clone();
        next.revision = stored.revision + 1;
        next.paused = true;
        ScheduleWrite {
            schedule: next,
            expected,
            fence: None,
            tasks: Vec::new(),
            partitions: PARTITIONS,
            now: NOW,
        }
    };
    // Creating what exists, or writing from a stale revision, changes nothing.
    for expected in [None, Some(stored.revision + 7)] {
        let outcome = store.write_schedule(write(expected)).await.unwrap();
        assert_eq!(
            outcome,
            ScheduleWritten::Conflict(Some(Box::new(stored.clone())))
        );
    }
    assert!(
        !store
            .delete_schedule(&stored.def.name, stored.revision + 1)
            .await
            .unwrap()
    );
    let outcome = store
        .write_schedule(write(Some(stored.revision)))
        .await
        .unwrap();
    assert_eq!(outcome, ScheduleWritten::Written(Vec::new()));
    let now_stored = store.schedule(&stored.def.name).await.unwrap().unwrap();
    assert!(now_stored.paused);
    assert_eq!(now_stored.revision, stored.revision + 1);
    // The same write again lost its race.
    assert!(matches!(
        store
            .write_schedule(write(Some(stored.revision)))
            .await
            .unwrap(),
        ScheduleWritten::Conflict(Some(_))
    ));
    assert!(
        store
            .delete_schedule(&stored.def.name, stored.revision + 1)
            .await
            .unwrap()
    );
}

/// The next revision of `current`, written under `fence` at `now` with the task of `tick`: what
/// a clock writes when it fires.
fn firing(
    current: &Schedule,
    fence: (InstanceId, Claim),
    tick: Millis,
    now: Millis,
) -> ScheduleWrite {
    let mut next = current.clone();
    next.revision += 1;
    ScheduleWrite {
        tasks: vec![current.def.task_for(tick, tick)],
        schedule: next,
        expected: Some(current.revision),
        fence: Some(fence),
        partitions: PARTITIONS,
        now,
    }
}

/// The clock of the partition's owner fires each tick once; a stale owner's firing is refused
/// and writes nothing; a second firing of a tick finds its task and creates none.
pub async fn firing_is_fenced_and_once_per_tick(store: Arc<dyn TaskStore>) {
    let store = &*store;
    let (a, b) = (InstanceId::new("a"), InstanceId::new("b"));
    let def = def_on(2, "every 10s");
    let stored = put(store, def.clone()).await;
    let first = stored.next_tick.unwrap();
    store.acquire(grant(2, &a, 1, NOW)).await.unwrap();
    let a_claims = [Claim::new(2, 1)];
    // Not due yet (more than the lookahead away): nothing.
    let round = clock::fire_due(store, &a, &a_claims, PARTITIONS, first - 5_000)
        .await
        .unwrap();
    assert_eq!(round.fired, 0);
    assert_eq!(round.wake_at, Some(first - schedule::LOOKAHEAD_MS));
    // Within the lookahead: one task, due at the tick, under the tick's key.
    let round = clock::fire_due(store, &a, &a_claims, PARTITIONS, first - 500)
        .await
        .unwrap();
    assert_eq!((round.fired, round.duplicates), (1, 0));
    let fired = store
        .by_idempotency_keys(&[tick_key(&def.name, first)])
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].scheduled_at, fired[0].max_attempts), (first, 2));
    assert_eq!(fired[0].status, TaskStatus::Pending);
    let after = store.schedule(&def.name).await.unwrap().unwrap();
    assert_eq!(
        (after.last_tick, after.next_tick),
        (Some(first), Some(first + 10_000))
    );
    assert_eq!(after.recent[0].key, tick_key(&def.name, first));
    // The same round again: the tick is behind the clock now, nothing fires twice.
    let round = clock::fire_due(store, &a, &a_claims, PARTITIONS, first - 400)
        .await
        .unwrap();
    assert_eq!(round.fired, 0);
    // b takes the partition over: a's clock is refused and writes nothing.
    store.acquire(grant(2, &b, 2, NOW)).await.unwrap();
    let second = first + 10_000;
    let round = clock::fire_due(store, &a, &a_claims, PARTITIONS, second)
        .await
        .unwrap();
    assert_eq!((round.fired, round.refused.clone()), (0, vec![2]));
    assert!(
        store
            .by_idempotency_keys(&[tick_key(&def.name, second)])
            .await
            .unwrap()
            .is_empty()
    );
    let unchanged = store.schedule(&def.name).await.unwrap().unwrap();
    assert_eq!(unchanged, after);
    // A fenced write naming another partition than the schedule's is refused too.
    let elsewhere = (b.clone(), Claim::new(3, 2));
    let wrong = store
        .write_schedule(firing(&after, elsewhere, second, second))
        .await;
    assert!(
        matches!(wrong, Err(StoreError::StaleEpoch { .. })),
        "{wrong:?}"
    );
    let b_claims = [Claim::new(2, 2)];
    let round = clock::fire_due(store, &b, &b_claims, PARTITIONS, second)
        .await
        .unwrap();
    assert_eq!(round.fired, 1);
    // A zombie that got past every other check, firing the first tick again, still creates no
    // task: the tick's key exists.
    let current = store.schedule(&def.name).await.unwrap().unwrap();
    let zombie = firing(&current, (b.clone(), b_claims[0]), first, second);
    let outcome = store.write_schedule(zombie).await.unwrap();
    let ScheduleWritten::Written(tasks) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(tasks.len(), 1);
    assert!(!tasks[0].1, "a second task for one tick");
    assert_eq!(tasks[0].0.id, fired[0].id);
    let keys = [tick_key(&def.name, first), tick_key(&def.name, second)];
    assert_eq!(store.by_idempotency_keys(&keys).await.unwrap().len(), 2);
}

/// Due schedules: by partition and next tick, paused ones left out.
pub async fn due_schedules(store: Arc<dyn TaskStore>) {
    let store = &*store;
    let minutely = put(store, named("minutely", 0, "every 1m")).await;
    let hourly = put(store, named("hourly", 0, "every 1h")).await;
    let elsewhere = put(store, named("secondly", 1, "every 1s")).await;
    let due = store
        .due_schedules(due_by(&[0], minutely.next_tick.unwrap(), 10))
        .await
        .unwrap();
    let names: Vec<&str> = due.schedules.iter().map(|s| s.def.name.as_str()).collect();
    assert_eq!(names, [minutely.def.name.as_str()]);
    assert_eq!(due.next_tick, hourly.next_tick);
    let both = store
        .due_schedules(due_by(&[0, 1], NOW + 3_600_000, 10))
        .await
        .unwrap();
    let names: Vec<&str> = both.schedules.iter().map(|s| s.def.name.as_str()).collect();
    assert_eq!(
        names,
        [
            elsewhere.def.name.as_str(),
            minutely.def.name.as_str(),
            hourly.def.name.as_str()
        ]
    );
    assert_eq!(both.next_tick, None);
    assert_eq!(
        store
            .due_schedules(due_by(&[0, 1], NOW + 3_600_000, 1))
            .await
            .unwrap()
            .schedules
            .len(),
        1
    );
    schedule::pause(store, &minutely.def.name, PARTITIONS, NOW)
        .await
        .unwrap();
    let due = store
        .due_schedules(due_by(&[0], NOW + 3_600_000, 10))
        .await
        .unwrap();
    let names: Vec<&str> = due.schedules.iter().map(|s| s.def.name.as_str()).collect();
    assert_eq!(names, [hourly.def.name.as_str()]);
    assert!(
        store
            .due_schedules(due_by(&[3], NOW + 3_600_000, 10))
            .await
            .unwrap()
            .schedules
            .is_empty()
    );
}

/// A manual trigger fires once, now; pausing cancels a tick's task created ahead and stops the
/// clock; resuming starts it from now.
pub async fn trigger_pause_resume(store: Arc<dyn TaskStore>) {
    let store = &*store;
    let def = def_on(3, "every 10s");
    let stored = put(store, def.clone()).await;
    let (after, task) = schedule::trigger(store, &def.name, PARTITIONS, NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        (task.scheduled_at, task.status),
        (NOW + 1, TaskStatus::Pending)
    );
    assert_eq!(after.next_tick, stored.next_tick);
    assert!(after.recent[0].manual);
    assert_eq!(store.schedule(&def.name).await.unwrap(), Some(after));
    // The clock fires the coming tick ahead; a pause before the tick cancels its task.
    let tick = stored.next_tick.unwrap();
    store
        .acquire(grant(3, &InstanceId::new("a"), 1, NOW))
        .await
        .unwrap();
    let claims = [Claim::new(3, 1)];
    let round = clock::fire_due(
        store,
        &InstanceId::new("a"),
        &claims,
        PARTITIONS,
        tick - 300,
    )
    .await
    .unwrap();
    assert_eq!(round.fired, 1);
    let paused = schedule::pause(store, &def.name, PARTITIONS, tick - 200)
        .await
        .unwrap();
    assert!(paused.paused && paused.next_tick.is_none());
    let ahead = store
        .by_idempotency_keys(&[tick_key(&def.name, tick)])
        .await
        .unwrap();
    assert_eq!(ahead[0].status, TaskStatus::Cancelled);
    let round = clock::fire_due(
        store,
        &InstanceId::new("a"),
        &claims,
        PARTITIONS,
        tick + 60_000,
    )
    .await
    .unwrap();
    assert_eq!(round.fired, 0, "a paused schedule fired");
    let resumed = schedule::resume(store, &def.name, PARTITIONS, tick + 60_000)
        .await
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(resumed.next_tick, Some(tick + 70_000));
    assert!(matches!(
        schedule::pause(store, "nobody", PARTITIONS, NOW).await,
        Err(ScheduleError::NotFound(_))
    ));
}
