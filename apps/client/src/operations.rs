//! The wire types of the operations routes and of every error: `/cluster`, health, readiness,
//! and the error body with its stable code.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /cluster`: the controller leader, the instances and the partitions of the `tasks`
/// resource, read from the coordination store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// The cluster's root in the coordination store.
    pub cluster: String,
    /// The leading controller (absent while none leads).
    pub leader: Option<Leader>,
    /// Maintenance mode: nothing moves except to restore lost top states.
    pub maintenance: bool,
    /// Every instance ever registered.
    pub instances: Vec<InstanceStatus>,
    /// Every partition of the `tasks` resource.
    pub partitions: Vec<PartitionStatus>,
    /// The task store, described (passwords redacted).
    pub storage: String,
}

/// The leading controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Leader {
    /// Its id.
    pub controller: String,
    /// Its leader epoch: every write it makes is fenced by it.
    pub epoch: u64,
}

/// An instance (a worker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// Connected now.
    pub live: bool,
    /// Given replicas (an operator may disable it).
    pub enabled: bool,
    /// Fault zone.
    pub zone: Option<String>,
    /// Partitions it holds, by state (`MASTER`, `SLAVE`, ...).
    pub partitions: BTreeMap<String, u32>,
}

/// A partition and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: u32,
    /// Its replicas and their states.
    pub holders: Vec<Holder>,
    /// The epoch of its current top-state grant (0: never granted).
    pub epoch: u64,
}

/// A replica of a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Holder {
    /// Instance id.
    pub instance: String,
    /// Its state.
    pub state: String,
}

/// `PUT /cluster/maintenance` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// Maintenance mode: nothing moves except to restore lost top states.
    pub on: bool,
}

/// `GET /healthz` and `GET /readyz` when they are well.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
}

/// What every error answers: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub error: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// Every error code the API answers with. Client mistakes are 4xx; `internal` (500) is the
/// server's own failure, never a client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: the JSON is not the shape the route takes (a field missing, unknown or mistyped).
    InvalidBody,
    /// 400: a task or schedule name out of bounds.
    InvalidName,
    /// 400: `maxAttempts` out of bounds.
    InvalidMaxAttempts,
    /// 400: a time that is not RFC 3339, or outside the years 0000-9999.
    InvalidTime,
    /// 400: a payload that cannot be stored as sent.
    InvalidPayload,
    /// 400: a partition or idempotency key out of bounds, or reserved.
    InvalidKey,
    /// 400: a batch of no task, or of more than 1,000.
    InvalidBatch,
    /// 400: a task the store refuses (text it cannot hold).
    InvalidTask,
    /// 400: a schedule that is not valid (its spec, zone, policy).
    InvalidSchedule,
    /// 400: a path id that is not a task id.
    InvalidId,
    /// 400: an unknown status in a query.
    InvalidStatus,
    /// 400: a page size out of bounds.
    InvalidLimit,
    /// 400: a cursor that is not one.
    InvalidCursor,
    /// 400: a query parameter given twice.
    RepeatedParameter,
    /// 400: a query parameter the route does not take.
    UnknownParameter,
    /// 400: a query string that is not UTF-8 once decoded.
    InvalidQuery,
    /// 400: a handler no live worker offers.
    UnknownHandler,
    /// 401: no valid token.
    Unauthorized,
    /// 403: the token lacks the route's scope.
    Forbidden,
    /// 404: no such task, schedule or route.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 408: the request took longer than `api.request_timeout_ms`.
    RequestTimeout,
    /// 409: the task is running or finished; the schedule's name holds another definition.
    Conflict,
    /// 413: a body over `api.max_body_bytes`.
    PayloadTooLarge,
    /// 415: a body that is not declared JSON.
    UnsupportedMediaType,
    /// 422: an idempotency key that names a task a different request created.
    IdempotencyKeyReused,
    /// 429: over the token's rate limit.
    RateLimited,
    /// 500: the server failed (see its log).
    Internal,
    /// 503: the task store or the coordination store is out of reach, or nothing leads yet.
    Unavailable,
    /// 503: too many requests at once (`api.max_concurrent_requests`).
    Overloaded,
}

impl ErrorCode {
    /// Every code, in the order above.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::MalformedJson,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidName,
        ErrorCode::InvalidMaxAttempts,
        ErrorCode::InvalidTime,
        ErrorCode::InvalidPayload,
        ErrorCode::InvalidKey,
        ErrorCode::InvalidBatch,
        ErrorCode::InvalidTask,
        ErrorCode::InvalidSchedule,
        ErrorCode::InvalidId,
        ErrorCode::InvalidStatus,
        ErrorCode::InvalidLimit,
        ErrorCode::InvalidCursor,
        ErrorCode::RepeatedParameter,
        ErrorCode::UnknownParameter,
        ErrorCode::InvalidQuery,
        ErrorCode::UnknownHandler,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Overloaded,
    ];

    /// The code as the body writes it (`invalid_name`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidMaxAttempts => "invalid_max_attempts",
            ErrorCode::InvalidTime => "invalid_time",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::InvalidBatch => "invalid_batch",
            ErrorCode::InvalidTask => "invalid_task",
            ErrorCode::InvalidSchedule => "invalid_schedule",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidStatus => "invalid_status",
            ErrorCode::InvalidLimit => "invalid_limit",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::RepeatedParameter => "repeated_parameter",
            ErrorCode::UnknownParameter => "unknown_parameter",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::UnknownHandler => "unknown_handler",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_written_as_their_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().into()));
            assert_eq!(serde_json::from_value::<ErrorCode>(json).unwrap(), code);
        }
    }
}
