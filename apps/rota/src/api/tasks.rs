//! `/tasks`: create (one or a batch), read, list, cancel, and the backlog's size.

use super::body::{JsonBody, QueryPairs};
use super::error::ErrorBody;
use super::error::{ApiError, ErrorCode};
use super::{AppState, time};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rota_scheduler::schedule;
use rota_scheduler::{
    CancelOutcome, DEFAULT_MAX_ATTEMPTS, ListFilter, NewTask, Task, TaskId, TaskStatus,
};

use serde_json::Value;

pub use rota_client::{
    BacklogView, BatchCreated, CreateBatch, CreateTask, MAX_ATTEMPTS, MAX_BATCH, MAX_NAME,
    TaskPage, TaskView,
};

/// Whether `stored` (found by its idempotency key) is what `asked` would have created: a repeat
/// of the same request, not another request reusing the key. A due time left out (now) is
/// not compared.
fn same_request(asked: &NewTask, stored: &Task, scheduled_given: bool) -> bool {
    asked.name == stored.name
        && same_json(&asked.payload, &stored.payload)
        && asked.partition_key == stored.partition_key
        && asked.max_attempts == stored.max_attempts
        && asked.handler == stored.handler
        // A failed attempt moves the due time to the retry's: the time asked for is then no
        // longer stored, and the repeat cannot be told from the original by it.
        && (!scheduled_given || stored.attempts > 0 || asked.scheduled_at == stored.scheduled_at)
}

/// The payload as a JSON value, refusing integers beyond 64 bits: the JSON parser would turn
/// them into floats, and the task would carry another number than the client sent.
pub(crate) fn payload_from(raw: Option<&serde_json::value::RawValue>) -> Result<Value, ApiError> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let text = raw.get();
    if let Some(big) = integer_beyond_64_bits(text) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidPayload,
            format!(
                "the payload holds the integer {big}, beyond 64 bits, which would lose its \
                 precision: send it as a string"
            ),
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        let message = if e.to_string().contains("recursion limit exceeded") {
            "the payload is nested deeper than 128 levels".to_owned()
        } else {
            format!("payload: {e}")
        };
        ApiError::bad_request(ErrorCode::InvalidPayload, message)
    })
}

/// The first integer literal (no fraction, no exponent) of a JSON text that fits neither
/// `i64` nor `u64`, outside strings.
fn integer_beyond_64_bits(json: &str) -> Option<&str> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let integer = !matches!(bytes.get(i), Some(b'.' | b'e' | b'E'));
                let literal = &json[start..i];
                if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                    return Some(literal);
                }
                while i < bytes.len()
                    && matches!(bytes[i], b'.' | b'e' | b'E' | b'+' | b'-' | b'0'..=b'9')
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// JSON equality as a store keeps it: objects regardless of key order, numbers by value (a
/// store may write `1e2` back as `100`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Refuses the whole batch (422, nothing created) if an item's idempotency key names a task
/// that a different request created, or two items share a key but differ. Checked before the
/// insert: a key a concurrent request takes in between still gets its task back as it is.
async fn refuse_reused_keys(
    state: &AppState,
    tasks: &[NewTask],
    scheduled_given: &[bool],
) -> Result<(), ApiError> {
    let keys: Vec<String> = tasks
        .iter()
        .filter_map(|t| t.idempotency_key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let existing = state.tasks.by_idempotency_keys(&keys).await?;
    let by_key: std::collections::HashMap<&str, &Task> = existing
        .iter()
        .filter_map(|t| t.idempotency_key.as_deref().map(|k| (k, t)))
        .collect();
    let mut first_with_key: std::collections::HashMap<&str, usize> = Default::default();
    for (i, task) in tasks.iter().enumerate() {
        let Some(key) = task.idempotency_key.as_deref() else {
            continue;
        };
        if let Some(stored) = by_key.get(key) {
            if !same_request(task, stored, scheduled_given[i]) {
                return Err(ApiError::unprocessable(
                    ErrorCode::IdempotencyKeyReused,
                    format!(
                        "tasks[{i}]: idempotency key {key:?} names task {}, created by a \
                         different request; use a new key (nothing was created)",
                        stored.id
                    ),
                ));
            }
        }
        match first_with_key.get(key) {
            Some(&j)
                if !same_new_task(&tasks[j], task, scheduled_given[j] && scheduled_given[i]) =>
            {
                return Err(ApiError::unprocessable(
                    ErrorCode::IdempotencyKeyReused,
                    format!(
                        "tasks[{j}] and tasks[{i}] share the idempotency key {key:?} but differ \
                         (nothing was created)"
                    ),
                ));
            }
            Some(_) => {}
            None => {
                first_with_key.insert(key, i);
            }
        }
    }
    Ok(())
}

/// Whether two items of one batch ask for the same task (their due times compared only when
/// both gave one: "now" is read per item).
fn same_new_task(a: &NewTask, b: &NewTask, compare_times: bool) -> bool {
    a.name == b.name
        && a.payload == b.payload
        && a.partition_key == b.partition_key
        && a.max_attempts == b.max_attempts
        && a.handler == b.handler
        && (!compare_times || a.scheduled_at == b.scheduled_at)
}

/// A task's status on the wire.
pub fn wire_status(status: TaskStatus) -> rota_client::TaskStatus {
    use rota_client::TaskStatus as W;
    match status {
        TaskStatus::Pending => W::Pending,
        TaskStatus::Running => W::Running,
        TaskStatus::Completed => W::Completed,
        TaskStatus::Failed => W::Failed,
        TaskStatus::Cancelled => W::Cancelled,
    }
}

/// A task as the API shows it.
pub fn view(t: Task) -> TaskView {
    TaskView {
        id: t.id,
        event_name: t.name.clone(),
        name: t.name,
        status: wire_status(t.status),
        partition_id: t.partition,
        scheduled_time: time::format(t.scheduled_at),
        payload: t.payload,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        last_error: t.last_error,
        handler: t.handler,
        partition_key: t.partition_key,
        created_at: time::format(t.created_at),
        started_at: t.started_at.map(time::format),
        finished_at: t.finished_at.map(time::format),
    }
}

/// The checks a task's fields get wherever a task is described (a create, a schedule's
/// template; `prefix` names the enclosing field in messages, e.g. `task.`): the trimmed name and
/// the attempts.
pub(crate) fn check_task_fields(
    state: &AppState,
    prefix: &str,
    raw_name: &str,
    max_attempts: Option<u32>,
    handler: Option<&str>,
) -> Result<(String, u32), ApiError> {
    let name = raw_name.trim().to_owned();
    // Counted as sent, as the document's maxLength counts: white space trimmed off the stored
    // name does not make a longer name acceptable.
    if name.is_empty() || raw_name.chars().count() > MAX_NAME {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidName,
            format!("{prefix}name must have 1 to {MAX_NAME} characters"),
        ));
    }
    let max_attempts = max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidMaxAttempts,
            format!("{prefix}maxAttempts must be 1 to {MAX_ATTEMPTS}"),
        ));
    }
    if let Some(h) = handler {
        state
            .handlers
            .check(h)
            .map_err(|m| ApiError::bad_request(ErrorCode::UnknownHandler, m))?;
    }
    Ok((name, max_attempts))
}

fn validate(state: &AppState, c: CreateTask, key: Option<String>) -> Result<NewTask, ApiError> {
    let (name, max_attempts) =
        check_task_fields(state, "", &c.name, c.max_attempts, c.handler.as_deref())?;
    let scheduled_at = match &c.scheduled_time {
        Some(t) => time::parse(t).map_err(|m| ApiError::bad_request(ErrorCode::InvalidTime, m))?,
        None => (state.now)(),
    };
    for (field, value) in [("partitionKey", &c.partition_key), ("idempotencyKey", &key)] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.chars().count() > 256)
        {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidKey,
                format!("{field} must have 1 to 256 characters"),
            ));
        }
    }
    if key.as_deref().is_some_and(schedule::is_schedule_key) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidKey,
            "idempotency keys starting with \"schedule:\" are reserved for the tasks of schedules",
        ));
    }
    let task = NewTask {
        name,
        payload: payload_from(c.payload.as_deref())?,
        scheduled_at,
        partition_key: c.partition_key,
        max_attempts,
        handler: c.handler,
        idempotency_key: key,
    };
    // What every store refuses (a NUL character anywhere), refused before any store is asked,
    // by a lookup of its keys included.
    task.validate()?;
    Ok(task)
}

/// `POST /tasks`
#[utoipa::path(post, path = "/tasks", security(("bearer" = ["write"])), tag = "tasks", summary = "Create a task",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256,
            description = "A repeat with the same key returns the original task (200) instead of creating one")),
    request_body = CreateTask,
    responses((status = 201, description = "Created", body = TaskView),
              (status = 200, description = "Repeat of an idempotent create", body = TaskView),
              (status = 400, description = "Invalid request", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "The idempotency key names a task created by a different request", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateTask>,
) -> Result<Response, ApiError> {
    let header_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(ErrorCode::InvalidKey, "Idempotency-Key must be ASCII")
                })?
                .to_owned(),
        ),
        None => None,
    };
    if let (Some(header), Some(body)) = (&header_key, &body.idempotency_key) {
        if header != body {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidKey,
                "the Idempotency-Key header and idempotencyKey differ: give the key once",
            ));
        }
    }
    let key = header_key.or_else(|| body.idempotency_key.clone());
    let scheduled_given = body.scheduled_time.is_some();
    let task = validate(&state, body, key)?;
    let (stored, created) = state
        .tasks
        .insert(state.batch(vec![task.clone()]))
        .await?
        .pop()
        .expect("one result per task");
    if !created && !same_request(&task, &stored, scheduled_given) {
        return Err(ApiError::unprocessable(
            ErrorCode::IdempotencyKeyReused,
            format!(
                "idempotency key {:?} names task {}, created by a different request; use a new key",
                task.idempotency_key.as_deref().unwrap_or_default(),
                stored.id
            ),
        ));
    }
    let status = if created {
        state.metrics.tasks_created.inc();
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/tasks/{}", stored.id);
    Ok((status, [(header::LOCATION, location)], Json(view(stored))).into_response())
}

/// `POST /tasks/batch`
#[utoipa::path(post, path = "/tasks/batch", security(("bearer" = ["write"])), tag = "tasks", summary = "Create up to 1,000 tasks atomically",
    request_body = CreateBatch,
    responses((status = 201, description = "Created (for keys that name existing tasks, those tasks)", body = BatchCreated),
              (status = 400, description = "Invalid request", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "An idempotency key names a task a different request created; nothing was created", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateBatch>,
) -> Result<Response, ApiError> {
    if body.tasks.is_empty() || body.tasks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBatch,
            format!("a batch has 1 to {MAX_BATCH} tasks"),
        ));
    }
    let mut tasks = Vec::with_capacity(body.tasks.len());
    let mut scheduled_given = Vec::with_capacity(body.tasks.len());
    for (i, c) in body.tasks.into_iter().enumerate() {
        let key = c.idempotency_key.clone();
        scheduled_given.push(c.scheduled_time.is_some());
        tasks.push(validate(&state, c, key).map_err(|mut e| {
            e.message = format!("tasks[{i}]: {}", e.message);
            e
        })?);
    }
    refuse_reused_keys(&state, &tasks, &scheduled_given).await?;
    let stored = state.tasks.insert(state.batch(tasks)).await?;
    let created = stored.iter().filter(|(_, c)| *c).count() as u64;
    state.metrics.tasks_created.inc_by(created);
    // Serialized straight from the views (building a JSON tree of a thousand tasks first was
    // a fifth of the API's CPU under batch inserts).
    let tasks: Vec<TaskView> = stored.into_iter().map(|(t, _)| view(t)).collect();
    Ok((StatusCode::CREATED, Json(BatchCreated { tasks })).into_response())
}

/// `GET /tasks/backlog`
#[utoipa::path(get, path = "/tasks/backlog", security(("bearer" = ["read"])), tag = "tasks",
    summary = "How many tasks are PENDING (due or not) and RUNNING: the queue's depth",
    responses((status = 200, description = "Counts", body = BacklogView),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn backlog(State(state): State<AppState>) -> Result<Json<BacklogView>, ApiError> {
    let backlog = state.tasks.backlog().await?;
    Ok(Json(BacklogView {
        pending: backlog.pending,
        running: backlog.running,
    }))
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    // Digits only, as the API writes ids: no sign, no leading zero (`+1` and `01` are not 1).
    let canonical =
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0');
    canonical
        .then(|| id.parse::<TaskId>().ok())
        .flatten()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidId, format!("{id:?} is not a task id"))
        })
}

/// `GET /tasks/{id}`
#[utoipa::path(get, path = "/tasks/{id}", security(("bearer" = ["read"])), tag = "tasks", summary = "Read a task",
    params(("id" = i64, Path, minimum = 1, description = "Task id")),
    responses((status = 200, description = "The task", body = TaskView),
              (status = 400, description = "Not an id", body = ErrorBody),
              (status = 404, description = "No such task", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    match state.tasks.get(id).await? {
        Some(task) => Ok(Json(view(task))),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}

/// `GET /tasks?status=&name=&limit=&cursor=`
#[utoipa::path(get, path = "/tasks", security(("bearer" = ["read"])), tag = "tasks", summary = "List tasks by increasing id",
    params(("status" = Option<rota_client::TaskStatus>, Query, description = "Only this status"),
           ("name" = Option<String>, Query, pattern = r"^[^\u0000]*$", description = "Only this name"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
           ("cursor" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "nextCursor of the previous page")),
    responses((status = 200, description = "A page", body = TaskPage),
              (status = 400, description = "Invalid query", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<TaskPage>, ApiError> {
    let mut filter = ListFilter {
        limit: 100,
        ..ListFilter::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (key, value) in &query {
        if !seen.insert(key.as_str()) {
            return Err(ApiError::bad_request(
                ErrorCode::RepeatedParameter,
                format!("query parameter {key:?} is given more than once"),
            ));
        }
        match key.as_str() {
            "status" => {
                filter.status = Some(TaskStatus::parse(value).ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidStatus,
                        format!(
                            "status {value:?} is not one of PENDING, RUNNING, COMPLETED, FAILED, CANCELLED"
                        ),
                    )
                })?)
            }
            "name" => {
                rota_scheduler::storable_text("name", value)
                    .map_err(|e| ApiError::bad_request(ErrorCode::InvalidName, e.to_string()))?;
                filter.name = Some(value.clone());
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(ErrorCode::InvalidLimit, "limit must be 1 to 1000")
                    })?
            }
            "cursor" => filter.after = Some(parse_id(value).map_err(|_| {
                ApiError::bad_request(ErrorCode::InvalidCursor, format!("{value:?} is not a cursor"))
            })?),
            other => {
                return Err(ApiError::bad_request(
                    ErrorCode::UnknownParameter,
                    format!("unknown query parameter {other:?}"),
                ));
            }
        }
    }
    let page = state.tasks.list(&filter).await?;
    let tasks: Vec<TaskView> = page.tasks.into_iter().map(view).collect();
    Ok(Json(TaskPage {
        tasks,
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

/// `DELETE /tasks/{id}`: cancels a PENDING task.
#[utoipa::path(delete, path = "/tasks/{id}", security(("bearer" = ["write"])), tag = "tasks", summary = "Cancel a PENDING task",
    params(("id" = i64, Path, minimum = 1, description = "Task id")),
    responses((status = 200, description = "Cancelled", body = TaskView),
              (status = 400, description = "Not an id", body = ErrorBody),
              (status = 404, description = "No such task", body = ErrorBody),
              (status = 409, description = "Running or finished", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    match state.tasks.cancel(id, (state.now)()).await? {
        CancelOutcome::Cancelled(task) => Ok(Json(view(task))),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("no task {id}"))),
        CancelOutcome::Conflict(task) => Err(ApiError::conflict(format!(
            "task {id} is {}; only PENDING tasks can be cancelled",
            task.status.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::integer_beyond_64_bits as big;

    #[test]
    fn integers_beyond_64_bits_are_found_outside_strings_only() {
        assert_eq!(
            big(r#"{"a": 18446744073709551616}"#),
            Some("18446744073709551616")
        );
        assert_eq!(
            big(r#"[-9223372036854775809]"#),
            Some("-9223372036854775809")
        );
        assert_eq!(big(r#"[18446744073709551615, -9223372036854775808]"#), None);
        assert_eq!(
            big(r#"{"s": "123456789012345678901234567890", "e": "\"9"}"#),
            None
        );
        assert_eq!(
            big(r#"[1.5e300, 123456789012345678901234567890.5, 1e400]"#),
            None
        );
    }
}
