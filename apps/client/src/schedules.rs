//! The wire types of `/schedules`: a schedule as clients send it, and as the API shows it.

use crate::tasks::{TaskStatus, TaskView};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A schedule as clients send it: `cron` or `every`, the task it creates, and how it treats
/// missed ticks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleBody {
    /// Unique name: 1 to 128 letters, digits, '-', '_', '.', ':' (with PUT, the path's name;
    /// may be left out).
    #[cfg_attr(feature = "schema", schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A cron expression in `timeZone`: 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 with seconds first, e.g. `*/2 * * * * *`, `0 3 * * MON-FRI`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Or a fixed interval, ticking at multiples of it since the Unix epoch: `30s`, `5m`,
    /// `2h`, `1d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// IANA time zone whose wall clock the cron expression reads (default `UTC`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The task each tick creates.
    pub task: TaskBody,
    /// Ticks missed for more than 60 s (an outage): `skip`, `run-once` (default: the latest
    /// of them runs once) or `run-all` (each, the latest `catchUp` at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_ticks: Option<Missed>,
    /// With `run-all`: the most missed ticks run (1 to 100, default 10).
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 100))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<u32>,
    /// Each tick's task is due up to this many milliseconds after the tick (0 to 86400000),
    /// the same for the same tick.
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 86_400_000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
}

/// The missed-tick policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Not run.
    Skip,
    /// The latest runs once.
    RunOnce,
    /// Each runs, up to `catchUp`.
    RunAll,
}

/// The task a schedule's ticks create: as clients send it, and as the API shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskBody {
    /// 1 to 256 characters, one of them not white space.
    #[cfg_attr(
        feature = "schema",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
        )
    )]
    pub name: String,
    /// Any JSON value (no NUL character, no integer beyond 64 bits).
    #[cfg_attr(feature = "schema", schema(value_type = Option<serde_json::Value>))]
    pub payload: Option<Box<RawValue>>,
    /// A handler some live worker offers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Attempts before each tick's task is FAILED (default 3).
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 100))]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::tasks::attempts"
    )]
    pub max_attempts: Option<u32>,
    /// Partition key of the created tasks (they share a partition, and so run in order).
    #[cfg_attr(
        feature = "schema",
        schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000]*$")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

/// A schedule as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    /// Name.
    pub name: String,
    /// The cron expression, for a cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The interval, for an interval schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Time zone.
    pub time_zone: String,
    /// The task each tick creates.
    pub task: TaskBody,
    /// Missed-tick policy.
    pub missed_ticks: Missed,
    /// Most missed ticks `run-all` runs.
    pub catch_up: u32,
    /// Jitter, milliseconds.
    pub jitter_ms: u64,
    /// Paused: no tick fires.
    pub paused: bool,
    /// The partition whose worker fires it.
    pub partition_id: u32,
    /// The next tick, in the schedule's zone (absent when paused or when none is left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_tick: Option<String>,
    /// The last tick fired by the clock, in the schedule's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<String>,
    /// The next fire times (up to 10), in the schedule's zone.
    pub next_fire_times: Vec<String>,
    /// The latest runs, newest first, with their tasks (only on `GET /schedules/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_runs: Option<Vec<RunView>>,
    /// Compare-and-set revision, incremented by every change.
    pub revision: u64,
    /// Creation time (UTC).
    pub created_at: String,
    /// Last change of definition or pause (UTC).
    pub updated_at: String,
}

/// One run of a schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// The tick (or the trigger's time), in the schedule's zone.
    pub tick: String,
    /// Triggered by hand.
    pub manual: bool,
    /// The task the run created (absent once the task was deleted by retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<i64>,
    /// The task's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// When the task started last (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Error of its last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A page of schedules.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SchedulePage {
    /// Schedules by name.
    pub schedules: Vec<ScheduleView>,
    /// Pass as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// The task a trigger created.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Triggered {
    /// The schedule.
    pub schedule: ScheduleView,
    /// The task, due now.
    pub task: TaskView,
}
