//! The wire types of `/tasks`: what a client sends to create tasks and what the API answers.
//! Times are RFC 3339 text, as on the wire (UTC with milliseconds in answers).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest task name accepted.
pub const MAX_NAME: usize = 256;
/// Most tasks in one batch.
pub const MAX_BATCH: usize = 1_000;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// A task to create (`POST /tasks`, an item of `POST /tasks/batch`). The original system's body
/// (`name`, `scheduledTime`, `payload`) is accepted verbatim.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTask {
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
    /// Due time, RFC 3339 (without an offset: UTC); default: now.
    #[cfg_attr(feature = "schema", schema(format = DateTime))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    /// Any JSON value: no NUL character in its strings, no integer beyond 64 bits (send those
    /// as strings). Kept as the text sent, so that the server can check it before parsing.
    #[cfg_attr(feature = "schema", schema(value_type = Option<serde_json::Value>))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// Tasks with the same key share a partition (and so run in due order on one worker).
    #[cfg_attr(
        feature = "schema",
        schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000]*$")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Attempts before the task is FAILED (default 3).
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 100))]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "attempts"
    )]
    pub max_attempts: Option<u32>,
    /// A handler some live worker offers (`log`, `noop` and `http` are built in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// For batch items (a single create takes the `Idempotency-Key` header).
    #[cfg_attr(
        feature = "schema",
        schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000]*$")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl CreateTask {
    /// A task named `name`, due now, with no payload.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Due at `time` (RFC 3339).
    pub fn due(mut self, time: impl Into<String>) -> Self {
        self.scheduled_time = Some(time.into());
        self
    }

    /// With `payload` (any JSON value).
    pub fn payload(mut self, payload: &serde_json::Value) -> Self {
        self.payload = serde_json::value::to_raw_value(payload).ok();
        self
    }

    /// Run with the handler named `handler`.
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// On the partition of `key`.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// With up to `attempts` attempts.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// With an idempotency key (in a batch; a single create may send it as a header instead).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// `POST /tasks/batch` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// 1 to 1,000 tasks, created together or not at all.
    #[cfg_attr(feature = "schema", schema(min_items = 1, max_items = 1000))]
    pub tasks: Vec<CreateTask>,
}

/// `POST /tasks/batch` response: the tasks in request order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BatchCreated {
    /// The tasks (for items whose key named an existing task, that task).
    pub tasks: Vec<TaskView>,
}

/// `GET /tasks` response: one page, and the cursor of the next if there is one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskPage {
    /// Tasks by increasing id.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// `GET /tasks/backlog` response: the queue's depth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BacklogView {
    /// PENDING tasks, due or not.
    pub pending: u64,
    /// RUNNING tasks.
    pub running: u64,
}

/// A task's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Waiting to be due, or due and not yet claimed.
    Pending,
    /// Claimed by a worker.
    Running,
    /// Succeeded.
    Completed,
    /// Out of attempts, or given up by its handler.
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

impl TaskStatus {
    /// Whether the task will never run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// A task as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The name again, under the original system's key.
    pub event_name: String,
    /// Status.
    pub status: TaskStatus,
    /// Partition of the `tasks` resource.
    pub partition_id: u32,
    /// Due time (RFC 3339, UTC).
    pub scheduled_time: String,
    /// Payload.
    #[cfg_attr(feature = "schema", schema(value_type = serde_json::Value))]
    pub payload: serde_json::Value,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Error of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Partition key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Start of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Which tasks `GET /tasks` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this name.
    pub name: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    pub limit: Option<u32>,
    /// The previous page's `nextCursor`.
    pub cursor: Option<String>,
}

/// An attempt count as sent: any whole number, so that one out of bounds (`-1`, `1e12`) is
/// refused with the field's own rule ("maxAttempts must be 1 to 100") rather than a parser's
/// "expected u32"; one that fits no `u32` reads as 0, which that rule refuses.
pub(crate) fn attempts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n: Option<i128> = Option::deserialize(d)?;
    Ok(n.map(|n| u32::try_from(n).unwrap_or(0)))
}
