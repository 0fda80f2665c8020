//! Recurring schedules: a cron expression or interval ([`Spec`]) and the task each of its ticks
//! creates, and the pure decision of which ticks to fire now ([`plan`]).
//!
//! # Exactly once per tick
//! A schedule belongs to one partition of the `tasks` resource ([`schedule_partition`]), so the
//! one worker that leads that partition owns the schedule's clock. It fires a tick by one atomic
//! store write ([`super::TaskStore::write_schedule`]) that (1) is refused unless the worker still
//! owns the partition under its epoch, (2) is refused unless the schedule's revision is the one
//! the worker read (another firing, an edit or a pause came first), and (3) creates the tick's
//! task under the idempotency key `schedule:<name>:<tick>` ([`tick_key`]), which the store keeps
//! unique. Any one of the three keeps a tick from firing twice; timing is none of them.
//!
//! What a handler must still tolerate is what every task's handler tolerates: a run cut off by
//! a crash runs again (at least once per attempt), so "exactly once" is about the tick creating
//! one task, not about side effects of a handler that dies halfway.

pub mod clock;
mod ops;
mod spec;

pub use ops::{PutMode, PutOutcome, ScheduleError, delete, pause, put, resume, trigger};
pub use spec::{Spec, SpecError};

use super::{DEFAULT_MAX_ATTEMPTS, Millis, NewTask, StoreError, partition_for, storable_text};
use serde::{Deserialize, Serialize};

/// A tick older than this when its schedule is looked at (after an outage, a long pause of every
/// worker, a failover that took long) is *missed*: the schedule's [`MissedTicks`] policy decides
/// whether it still fires. A tick within it fires late but fires.
pub const GRACE_MS: Millis = 60_000;

/// How long before its tick a tick's task is created (it is due at the tick, not before): the
/// store write is out of the way when the tick comes, so a schedule's task starts as promptly
/// as a one-off task due at the same time.
pub const LOOKAHEAD_MS: Millis = 1_000;

/// How many runs a schedule remembers.
pub const RECENT_RUNS: usize = 10;

/// The most missed ticks `run-all` fires.
pub const MAX_CATCH_UP: u32 = 100;

/// Default `catch_up` of `run-all`.
pub const DEFAULT_CATCH_UP: u32 = 10;

/// The longest jitter.
pub const MAX_JITTER_MS: u64 = 24 * 3600 * 1000;

/// Longest schedule name.
pub const MAX_NAME: usize = 128;

/// What happens to ticks missed for longer than [`GRACE_MS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissedTicks {
    /// Not fired; the schedule goes on with its next tick.
    Skip,
    /// The latest of them fires once (the default, like anacron): a nightly job that missed a
    /// night runs once when the cluster is back, not once per night missed.
    #[default]
    RunOnce,
    /// Each of them fires, the latest `catch_up` at most, oldest first.
    RunAll,
}

impl MissedTicks {
    /// `skip`, `run-once`, `run-all`.
    pub fn as_str(self) -> &'static str {
        match self {
            MissedTicks::Skip => "skip",
            MissedTicks::RunOnce => "run-once",
            MissedTicks::RunAll => "run-all",
        }
    }

    /// Parses `skip`, `run-once`, `run-all`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Skip, Self::RunOnce, Self::RunAll]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// The task each tick creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    /// Task name.
    pub name: String,
    /// Payload.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Handler (default: by name, then `log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Attempts before FAILED.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Partition key of the created tasks (default: spread by task id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

fn default_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// What a schedule is: everything its owner writes. Two equal definitions are the same
/// schedule, so applying one again changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleDef {
    /// Unique name: letters, digits, `-`, `_`, `.`, `:`.
    pub name: String,
    /// A cron expression or `every <n><s|m|h|d>` (see [`Spec`]).
    pub spec: String,
    /// IANA time zone the cron expression reads the wall clock of.
    pub zone: String,
    /// The task each tick creates.
    pub task: TaskTemplate,
    /// Ticks missed for longer than [`GRACE_MS`].
    pub missed: MissedTicks,
    /// With `run-all`: the most missed ticks fired.
    pub catch_up: u32,
    /// Each tick's task is due up to this much after the tick (the same offset for the same
    /// tick, on every worker), to spread schedules that share a tick.
    pub jitter_ms: u64,
}

impl ScheduleDef {
    /// Checks everything but the spec's text and returns the parsed spec.
    pub fn validate(&self, now: Millis) -> Result<Spec, StoreError> {
        let invalid = StoreError::Invalid;
        if self.name.is_empty()
            || self.name.chars().count() > MAX_NAME
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(invalid(format!(
                "schedule name {:?}: use 1 to {MAX_NAME} letters, digits, '-', '_', '.' or ':'",
                self.name
            )));
        }
        if !(1..=MAX_CATCH_UP).contains(&self.catch_up) {
            return Err(invalid(format!("catchUp must be 1 to {MAX_CATCH_UP}")));
        }
        if self.jitter_ms > MAX_JITTER_MS {
            return Err(invalid(format!(
                "jitterMs must be at most {MAX_JITTER_MS} (a day)"
            )));
        }
        storable_text("spec", &self.spec)?;
        let spec = Spec::parse(&self.spec, &self.zone, now).map_err(|e| invalid(e.to_string()))?;
        self.task_for(0, 0).validate()?;
        Ok(spec)
    }

    /// The task of the tick at `tick`, due at `due`, with the tick's idempotency key.
    pub fn task_for(&self, tick: Millis, due: Millis) -> NewTask {
        self.task_with_key(tick_key(&self.name, tick), due)
    }

    /// The template as a task due at `due` under `key`.
    pub fn task_with_key(&self, key: String, due: Millis) -> NewTask {
        NewTask {
            name: self.task.name.clone(),
            payload: self.task.payload.clone(),
            scheduled_at: due,
            partition_key: self.task.partition_key.clone(),
            max_attempts: self.task.max_attempts,
            handler: self.task.handler.clone(),
            idempotency_key: Some(key),
        }
    }

    /// When the task of `tick` is due: the tick plus its jitter, a function of the schedule's
    /// name and the tick only, so every firing of a tick agrees.
    pub fn due_at(&self, tick: Millis) -> Millis {
        if self.jitter_ms == 0 {
            return tick;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.bytes().chain(tick.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        tick + (h % (self.jitter_ms + 1)) as Millis
    }

    /// The parsed spec (valid once stored, whether or not it fires again).
    pub fn spec(&self) -> Result<Spec, SpecError> {
        Spec::new(&self.spec, &self.zone)
    }

    /// Whether `other` ticks at other times than this (spec or zone changed).
    pub fn timing_differs(&self, other: &ScheduleDef) -> bool {
        self.spec.trim() != other.spec.trim() || self.zone != other.zone
    }
}

/// A run of a schedule: the tick and its task's idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// The tick (for a manual trigger, when it was triggered).
    pub tick: Millis,
    /// The task's idempotency key ([`tick_key`] or [`manual_key`]).
    pub key: String,
    /// Triggered by hand, not by the clock.
    #[serde(default)]
    pub manual: bool,
}

/// A stored schedule: its definition and its clock's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Definition.
    pub def: ScheduleDef,
    /// The partition whose owner fires it.
    pub partition: u32,
    /// Paused: no tick fires (`next_tick` is `None`).
    pub paused: bool,
    /// The next tick to fire; `None` when paused or when no tick is left.
    pub next_tick: Option<Millis>,
    /// The last tick fired by the clock.
    pub last_tick: Option<Millis>,
    /// The latest runs, newest first, at most [`RECENT_RUNS`].
    pub recent: Vec<Run>,
    /// Incremented by every write: the compare-and-set token.
    pub revision: u64,
    /// Creation time.
    pub created_at: Millis,
    /// Last change of the definition or of the paused flag.
    pub updated_at: Millis,
}

impl Schedule {
    /// The schedule after `runs` (oldest first) were fired.
    pub fn with_runs(mut self, runs: impl IntoIterator<Item = Run>) -> Self {
        for run in runs {
            self.recent.insert(0, run);
        }
        self.recent.truncate(RECENT_RUNS);
        self
    }
}

/// The idempotency key of the task of `name`'s tick at `tick`.
pub fn tick_key(name: &str, tick: Millis) -> String {
    format!("schedule:{name}:{tick}")
}

/// The idempotency key of a manual trigger of `name` at `at`.
pub fn manual_key(name: &str, at: Millis) -> String {
    format!("schedule:{name}:manual:{at}")
}

/// Idempotency keys of this form belong to schedules: a client may not use them.
pub fn is_schedule_key(key: &str) -> bool {
    key.starts_with("schedule:")
}

/// The partition whose owner fires the schedule `name`.
pub fn schedule_partition(name: &str, partitions: u32) -> u32 {
    partition_for(Some(&format!("schedule:{name}")), 0, partitions)
}

/// Which ticks to fire now, and the clock's state afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Firing {
    /// Ticks to fire, oldest first.
    pub ticks: Vec<Millis>,
    /// Missed ticks were left out by the policy.
    pub skipped: bool,
    /// The schedule's next tick after these; `None` when no tick is left.
    pub next_tick: Option<Millis>,
}

/// Decides which ticks of a schedule whose next tick is `next_tick` to fire at `now`: every tick
/// up to `now + LOOKAHEAD_MS`, except that ticks older than `now - GRACE_MS` (missed) follow the
/// `missed` policy. The work is bounded: at most `catch_up` missed ticks are looked up (walking
/// back from the grace window, not forward through the outage) and the window holds at most
/// one tick per second.
pub fn plan(spec: &Spec, def: &ScheduleDef, next_tick: Millis, now: Millis) -> Firing {
    let horizon = now + LOOKAHEAD_MS;
    let cutoff = now - GRACE_MS;
    let mut firing = Firing::default();
    if next_tick > horizon {
        firing.next_tick = Some(next_tick);
        return firing;
    }
    let mut tick = Some(next_tick);
    if next_tick < cutoff {
        let keep = match def.missed {
            MissedTicks::Skip => 0,
            MissedTicks::RunOnce => 1,
            MissedTicks::RunAll => def.catch_up as usize,
        };
        let mut missed = Vec::with_capacity(keep);
        let mut before = cutoff;
        while missed.len() < keep {
            match spec.last_before(before) {
                Some(t) if t >= next_tick => {
                    missed.push(t);
                    before = t;
                }
                _ => break,
            }
        }
        missed.reverse();
        firing.skipped = missed.first() != Some(&next_tick);
        firing.ticks = missed;
        tick = spec.next_after(cutoff - 1);
    }
    while let Some(t) = tick.filter(|&t| t <= horizon) {
        firing.ticks.push(t);
        tick = spec.next_after(t);
    }
    firing.next_tick = tick;
    firing
}

#[cfg(test)]
mod tests;
