//! `/schedules`: recurring schedules (cron or interval) and the tasks their ticks create.
//! Bodies are read as JSON whatever their `Content-Type` says (`curl -d` sends a form type),
//! since nothing else is accepted here.

use super::body::{JsonBody, QueryPairs};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::tasks::{check_task_fields, payload_from, view as task_view, wire_status};
use super::{AppState, time};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rota_scheduler::schedule::{
    self, DEFAULT_CATCH_UP, MissedTicks, PutMode, PutOutcome, Schedule, ScheduleDef, ScheduleError,
    TaskTemplate,
};

/// How many fire times a schedule shows.
const UPCOMING: usize = 10;

pub use rota_client::{
    Missed, RunView, ScheduleBody, SchedulePage, ScheduleView, TaskBody, Triggered,
};

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::NotFound(_) => ApiError::not_found(e.to_string()),
            ScheduleError::Exists(_) => ApiError::conflict(e.to_string()),
            ScheduleError::Store(rota_scheduler::StoreError::Invalid(m)) => {
                ApiError::bad_request(ErrorCode::InvalidSchedule, m)
            }
            ScheduleError::Store(e) => e.into(),
        }
    }
}

fn definition(
    state: &AppState,
    body: ScheduleBody,
    name: Option<&str>,
) -> Result<ScheduleDef, ApiError> {
    let name = match (name, body.name) {
        (Some(path), Some(given)) if path != given => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidName,
                format!(
                    "the body names {given:?}, the path {path:?}: leave name out or make them agree"
                ),
            ));
        }
        (Some(path), _) => path.to_owned(),
        (None, Some(given)) => given,
        (None, None) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidName,
                "a schedule needs a name",
            ));
        }
    };
    let spec = match (body.cron, body.every) {
        (Some(cron), None) => cron,
        (None, Some(every)) => {
            let every = every.trim();
            format!("every {}", every.strip_prefix("every ").unwrap_or(every))
        }
        _ => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidSchedule,
                "give exactly one of cron (e.g. \"*/2 * * * * *\") and every (e.g. \"30s\")",
            ));
        }
    };
    let t = body.task;
    let (task_name, max_attempts) = check_task_fields(
        state,
        "task.",
        &t.name,
        t.max_attempts,
        t.handler.as_deref(),
    )?;
    if t.partition_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.chars().count() > 256)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidKey,
            "task.partitionKey must have 1 to 256 characters",
        ));
    }
    let missed = match body.missed_ticks.unwrap_or(Missed::RunOnce) {
        Missed::Skip => MissedTicks::Skip,
        Missed::RunOnce => MissedTicks::RunOnce,
        Missed::RunAll => MissedTicks::RunAll,
    };
    Ok(ScheduleDef {
        name,
        spec,
        zone: body.time_zone.unwrap_or_else(|| "UTC".into()),
        task: TaskTemplate {
            name: task_name,
            payload: payload_from(t.payload.as_deref())?,
            handler: t.handler,
            max_attempts,
            partition_key: t.partition_key,
        },
        missed,
        catch_up: body.catch_up.unwrap_or(DEFAULT_CATCH_UP),
        jitter_ms: body.jitter_ms.unwrap_or(0),
    })
}

/// The view of a schedule (with its runs' tasks when `runs`), as the API and `rota admin
/// schedules` show it.
pub async fn view_of(
    tasks: &dyn rota_scheduler::TaskStore,
    s: Schedule,
    runs: bool,
) -> Result<ScheduleView, rota_scheduler::StoreError> {
    let spec = s.def.spec().ok();
    let local = |t: i64| match &spec {
        Some(spec) => spec.local(t),
        None => time::format(t),
    };
    let next_fire_times = match (&spec, s.next_tick) {
        (Some(spec), Some(next)) => std::iter::once(next)
            .chain(spec.upcoming(next, UPCOMING - 1))
            .map(|t| spec.local(t))
            .collect(),
        _ => Vec::new(),
    };
    let last_runs = if runs {
        let keys: Vec<String> = s.recent.iter().map(|r| r.key.clone()).collect();
        let tasks = tasks.by_idempotency_keys(&keys).await?;
        Some(
            s.recent
                .iter()
                .map(|r| {
                    let task = tasks
                        .iter()
                        .find(|t| t.idempotency_key.as_deref() == Some(&r.key));
                    RunView {
                        tick: local(r.tick),
                        manual: r.manual,
                        task_id: task.map(|t| t.id),
                        status: task.map(|t| wire_status(t.status)),
                        started_at: task.and_then(|t| t.started_at).map(time::format),
                        finished_at: task.and_then(|t| t.finished_at).map(time::format),
                        last_error: task.and_then(|t| t.last_error.clone()),
                    }
                })
                .collect(),
        )
    } else {
        None
    };
    let (cron, every) = match s.def.spec.trim().strip_prefix("every ") {
        Some(every) => (None, Some(every.trim().to_owned())),
        None => (Some(s.def.spec.clone()), None),
    };
    Ok(ScheduleView {
        name: s.def.name.clone(),
        cron,
        every,
        time_zone: s.def.zone.clone(),
        missed_ticks: match s.def.missed {
            MissedTicks::Skip => Missed::Skip,
            MissedTicks::RunOnce => Missed::RunOnce,
            MissedTicks::RunAll => Missed::RunAll,
        },
        catch_up: s.def.catch_up,
        jitter_ms: s.def.jitter_ms,
        task: TaskBody {
            name: s.def.task.name.clone(),
            payload: serde_json::value::to_raw_value(&s.def.task.payload).ok(),
            handler: s.def.task.handler.clone(),
            max_attempts: Some(s.def.task.max_attempts),
            partition_key: s.def.task.partition_key.clone(),
        },
        paused: s.paused,
        partition_id: s.partition,
        next_tick: s.next_tick.map(local),
        last_tick: s.last_tick.map(local),
        next_fire_times,
        last_runs,
        revision: s.revision,
        created_at: time::format(s.created_at),
        updated_at: time::format(s.updated_at),
    })
}

async fn view(state: &AppState, s: Schedule, runs: bool) -> Result<ScheduleView, ApiError> {
    Ok(view_of(&*state.tasks, s, runs).await?)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= schedule::MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidName,
            format!(
                "{name:?} is not a schedule name: 1 to {} letters, digits, '-', '_', '.' or ':'",
                schedule::MAX_NAME
            ),
        ))
    }
}

async fn put(state: &AppState, def: ScheduleDef, mode: PutMode) -> Result<Response, ApiError> {
    let (stored, outcome) =
        schedule::put(&*state.tasks, def, mode, state.partitions, (state.now)()).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    let location = format!("/schedules/{}", stored.def.name);
    let view = view(state, stored, false).await?;
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

/// `POST /schedules`
#[utoipa::path(post, path = "/schedules", security(("bearer" = ["write"])), tag = "schedules", summary = "Create a schedule",
    description = "The body is read as JSON whatever its Content-Type.",
    request_body = ScheduleBody,
    responses((status = 201, description = "Created", body = ScheduleView),
              (status = 200, description = "Repeat: a schedule with this very definition exists", body = ScheduleView),
              (status = 400, description = "Invalid schedule (bad cron, unknown zone, never fires)", body = ErrorBody),
              (status = 409, description = "The name holds another definition", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> Result<Response, ApiError> {
    if let Some(name) = &body.name {
        check_name(name)?;
    }
    let def = definition(&state, body, None)?;
    put(&state, def, PutMode::Create).await
}

/// `PUT /schedules/{name}`
#[utoipa::path(put, path = "/schedules/{name}", security(("bearer" = ["write"])), tag = "schedules", summary = "Create or replace a schedule",
    description = "A replaced schedule keeps its clock unless its cron, interval or zone changed; paused stays paused.",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Schedule name")),
    request_body = ScheduleBody,
    responses((status = 201, description = "Created", body = ScheduleView),
              (status = 200, description = "Replaced (or unchanged)", body = ScheduleView),
              (status = 400, description = "Invalid schedule", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn replace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let def = definition(&state, body, Some(&name))?;
    put(&state, def, PutMode::Replace).await
}

/// `GET /schedules?limit=&after=`
#[utoipa::path(get, path = "/schedules", security(("bearer" = ["read"])), tag = "schedules", summary = "List schedules by name",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
           ("after" = Option<String>, Query, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "nextAfter of the previous page")),
    responses((status = 200, description = "A page", body = SchedulePage),
              (status = 400, description = "Invalid query", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<SchedulePage>, ApiError> {
    let (mut limit, mut after) = (100usize, None);
    let mut seen = std::collections::HashSet::new();
    for (key, value) in query {
        if !seen.insert(key.clone()) {
            return Err(ApiError::bad_request(
                ErrorCode::RepeatedParameter,
                format!("query parameter {key:?} is given more than once"),
            ));
        }
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(ErrorCode::InvalidLimit, "limit must be 1 to 1000")
                    })?;
            }
            "after" => {
                check_name(&value)?;
                after = Some(value);
            }
            other => {
                return Err(ApiError::bad_request(
                    ErrorCode::UnknownParameter,
                    format!("unknown query parameter {other:?}: use limit and after"),
                ));
            }
        }
    }
    let mut page = state.tasks.schedules(after.as_deref(), limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_after = more
        .then(|| page.last().map(|s| s.def.name.clone()))
        .flatten();
    let mut schedules = Vec::with_capacity(page.len());
    for s in page {
        schedules.push(view(&state, s, false).await?);
    }
    Ok(Json(SchedulePage {
        schedules,
        next_after,
    }))
}

/// `GET /schedules/{name}`
#[utoipa::path(get, path = "/schedules/{name}", security(("bearer" = ["read"])), tag = "schedules",
    summary = "Read a schedule: its next 10 fire times and its last runs with their tasks",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Schedule name")),
    responses((status = 200, description = "The schedule", body = ScheduleView),
              (status = 400, description = "Not a schedule name", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_name(&name)?;
    match state.tasks.schedule(&name).await? {
        Some(s) => Ok(Json(view(&state, s, true).await?)),
        None => Err(ScheduleError::NotFound(name).into()),
    }
}

/// `DELETE /schedules/{name}`
#[utoipa::path(delete, path = "/schedules/{name}", security(("bearer" = ["write"])), tag = "schedules",
    summary = "Delete a schedule (its tasks stay; one created ahead for the coming second is cancelled)",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Schedule name")),
    responses((status = 204, description = "Deleted"),
              (status = 400, description = "Not a schedule name", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    schedule::delete(&*state.tasks, &name, (state.now)()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /schedules/{name}/pause`
#[utoipa::path(post, path = "/schedules/{name}/pause", security(("bearer" = ["write"])), tag = "schedules",
    summary = "Pause: no tick fires until resumed",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Schedule name")),
    responses((status = 200, description = "Paused", body = ScheduleView),
              (status = 400, description = "Not a schedule name", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_name(&name)?;
    let s = schedule::pause(&*state.tasks, &name, state.partitions, (state.now)()).await?;
    Ok(Json(view(&state, s, false).await?))
}

/// `POST /schedules/{name}/resume`
#[utoipa::path(post, path = "/schedules/{name}/resume", security(("bearer" = ["write"])), tag = "schedules",
    summary = "Resume at the first tick from now (the ticks of the pause do not fire)",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Schedule name")),
    responses((status = 200, description = "Active", body = ScheduleView),
              (status = 400, description = "Not a schedule name", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_name(&name)?;
    let s = schedule::resume(&*state.tasks, &name, state.partitions, (state.now)()).await?;
    Ok(Json(view(&state, s, false).await?))
}

/// `POST /schedules/{name}/trigger`
#[utoipa::path(post, path = "/schedules/{name}/trigger", security(("bearer" = ["write"])), tag = "schedules",
    summary = "Fire once now, outside the clock (a paused schedule too)",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Schedule name")),
    responses((status = 201, description = "The task created, due now", body = Triggered),
              (status = 400, description = "Not a schedule name", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody),
              (status = 503, description = "Task store unreachable", body = ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let (s, task) =
        schedule::trigger(&*state.tasks, &name, state.partitions, (state.now)()).await?;
    let location = format!("/tasks/{}", task.id);
    let body = Triggered {
        schedule: view(&state, s, false).await?,
        task: task_view(task),
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}
