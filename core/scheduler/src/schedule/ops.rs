//! What operators do to schedules (create, replace, pause, resume, trigger, delete), as
//! read-decide-write rounds on the store's compare-and-set: a write that lost a race with the
//! clock or another operator reads again and decides again, so no change is lost and none
//! applies twice.

use super::{Run, Schedule, ScheduleDef, manual_key, schedule_partition};
use crate::{
    CancelOutcome, Millis, ScheduleWrite, ScheduleWritten, StoreError, Task, TaskStatus, TaskStore,
};

/// Rounds before a write gives up on a schedule that keeps changing under it.
const ROUNDS: usize = 16;

/// Why an operation on a schedule did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No schedule of that name.
    #[error("no schedule named {0:?}")]
    NotFound(String),
    /// Create of a name that exists with another definition.
    #[error(
        "a schedule named {0:?} exists with another definition: replace it (PUT) or pick another name"
    )]
    Exists(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether [`put`] may replace an existing schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Create; an existing schedule with the same definition is fine (a repeat), another one
    /// is [`ScheduleError::Exists`].
    Create,
    /// Create or replace.
    Replace,
}

/// What [`put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// It did not exist.
    Created,
    /// Its definition changed.
    Updated,
    /// It existed with this very definition: nothing was written.
    Unchanged,
}

/// Creates or replaces a schedule. A new schedule's first tick is the first after `now`; a
/// replaced one keeps its clock unless its spec or zone changed (then its next tick is the
/// first after `now`). Paused stays paused.
pub async fn put(
    store: &dyn TaskStore,
    def: ScheduleDef,
    mode: PutMode,
    partitions: u32,
    now: Millis,
) -> Result<(Schedule, PutOutcome), ScheduleError> {
    let spec = def.validate(now)?;
    for _ in 0..ROUNDS {
        let current = store.schedule(&def.name).await?;
        let (schedule, expected, outcome) = match current {
            None => {
                let schedule = Schedule {
                    partition: schedule_partition(&def.name, partitions),
                    paused: false,
                    next_tick: spec.next_after(now),
                    last_tick: None,
                    recent: Vec::new(),
                    revision: 1,
                    created_at: now,
                    updated_at: now,
                    def: def.clone(),
                };
                (schedule, None, PutOutcome::Created)
            }
            Some(current) if current.def == def => return Ok((current, PutOutcome::Unchanged)),
            Some(_) if mode == PutMode::Create => {
                return Err(ScheduleError::Exists(def.name.clone()));
            }
            Some(current) => {
                let mut next = current.clone();
                if current.def.timing_differs(&def) && !current.paused {
                    next.next_tick = spec.next_after(now);
                }
                next.def = def.clone();
                next.revision += 1;
                next.updated_at = now;
                (next, Some(current.revision), PutOutcome::Updated)
            }
        };
        if write(store, schedule.clone(), expected, partitions, now).await? {
            return Ok((schedule, outcome));
        }
    }
    Err(busy(&def.name))
}

/// Pauses a schedule: no tick fires until [`resume`]; a tick's task already created for the
/// coming second (see [`super::LOOKAHEAD_MS`]) is cancelled.
pub async fn pause(
    store: &dyn TaskStore,
    name: &str,
    partitions: u32,
    now: Millis,
) -> Result<Schedule, ScheduleError> {
    let schedule = change(store, name, partitions, now, |s| {
        s.paused = true;
        s.next_tick = None;
    })
    .await?;
    cancel_ahead(store, &schedule, now).await?;
    Ok(schedule)
}

/// Resumes a paused schedule at its first tick after `now` (the ticks of the pause do not fire).
pub async fn resume(
    store: &dyn TaskStore,
    name: &str,
    partitions: u32,
    now: Millis,
) -> Result<Schedule, ScheduleError> {
    let current = store
        .schedule(name)
        .await?
        .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
    // A stored spec always parsed once; one that no longer does (a zone database without its
    // zone) leaves the schedule without a next tick rather than failing the resume.
    let spec = current.def.spec().ok();
    change(store, name, partitions, now, move |s| {
        if s.paused {
            s.paused = false;
            s.next_tick = spec.as_ref().and_then(|spec| spec.next_after(now));
        }
    })
    .await
}

/// Fires a schedule once, now, outside its clock: its task is due at once and counts as a
/// manual run in its history. The clock's next tick does not move.
pub async fn trigger(
    store: &dyn TaskStore,
    name: &str,
    partitions: u32,
    now: Millis,
) -> Result<(Schedule, Task), ScheduleError> {
    for _ in 0..ROUNDS {
        let current = store
            .schedule(name)
            .await?
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        let key = manual_key(name, now);
        let task = current.def.task_with_key(key.clone(), now);
        let mut next = current.clone().with_runs([Run {
            tick: now,
            key,
            manual: true,
        }]);
        next.revision += 1;
        let written = store
            .write_schedule(ScheduleWrite {
                schedule: next.clone(),
                expected: Some(current.revision),
                fence: None,
                tasks: vec![task],
                partitions,
                now,
            })
            .await?;
        if let ScheduleWritten::Written(mut tasks) = written {
            let (task, _) = tasks.pop().expect("one task per trigger");
            return Ok((next, task));
        }
    }
    Err(busy(name))
}

/// Deletes a schedule; its tasks stay, but a tick's task created for the coming second is
/// cancelled.
pub async fn delete(store: &dyn TaskStore, name: &str, now: Millis) -> Result<(), ScheduleError> {
    for _ in 0..ROUNDS {
        let current = store
            .schedule(name)
            .await?
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        if store.delete_schedule(name, current.revision).await? {
            cancel_ahead(store, &current, now).await?;
            return Ok(());
        }
    }
    Err(busy(name))
}

/// Applies `edit` to the stored schedule, retrying on conflicts.
async fn change(
    store: &dyn TaskStore,
    name: &str,
    partitions: u32,
    now: Millis,
    edit: impl Fn(&mut Schedule),
) -> Result<Schedule, ScheduleError> {
    for _ in 0..ROUNDS {
        let current = store
            .schedule(name)
            .await?
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        let mut next = current.clone();
        edit(&mut next);
        if next == current {
            return Ok(current);
        }
        next.revision += 1;
        next.updated_at = now;
        if write(store, next.clone(), Some(current.revision), partitions, now).await? {
            return Ok(next);
        }
    }
    Err(busy(name))
}

/// One unfenced write without tasks; `false` on a conflict.
async fn write(
    store: &dyn TaskStore,
    schedule: Schedule,
    expected: Option<u64>,
    partitions: u32,
    now: Millis,
) -> Result<bool, StoreError> {
    let written = store
        .write_schedule(ScheduleWrite {
            schedule,
            expected,
            fence: None,
            tasks: Vec::new(),
            partitions,
            now,
        })
        .await?;
    Ok(matches!(written, ScheduleWritten::Written(_)))
}

/// Cancels the tasks of ticks still to come (created ahead by the clock) of a schedule that
/// stops: it said stop, so nothing of it starts afterwards.
async fn cancel_ahead(
    store: &dyn TaskStore,
    schedule: &Schedule,
    now: Millis,
) -> Result<(), StoreError> {
    let keys: Vec<String> = schedule
        .recent
        .iter()
        .filter(|r| !r.manual && r.tick > now)
        .map(|r| r.key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    for task in store.by_idempotency_keys(&keys).await? {
        if task.status == TaskStatus::Pending {
            // Started meanwhile: it runs (a conflict is the only other outcome).
            let _: CancelOutcome = store.cancel(task.id, now).await?;
        }
    }
    Ok(())
}

fn busy(name: &str) -> ScheduleError {
    ScheduleError::Store(StoreError::Unavailable(format!(
        "schedule {name:?} kept changing during {ROUNDS} attempts to write it; try again"
    )))
}
