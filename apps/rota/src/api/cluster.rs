//! `/cluster`: the cluster's status and the operator's actions on it (an instance enabled or
//! disabled, maintenance mode, a reconcile now), each answering with the status as it is then.
//! The actions go to the coordination store, as `rota admin` does without `--url`.

use super::body::JsonBody;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::{AppState, ClusterView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rota_client::{ClusterStatus, Maintenance};
use rota_cluster::ClusterError;
use rota_cluster::admin::Admin;
use rota_model::InstanceId;

/// The cluster this process sees, or a 503.
fn view(state: &AppState) -> Result<&ClusterView, ApiError> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this process has no view of the cluster"))
}

async fn status(state: &AppState) -> Result<Json<ClusterStatus>, ApiError> {
    crate::status::cluster_status(view(state)?, state.partitions, &state.storage)
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(format!("coordination store: {e}")))
}

fn admin(state: &AppState) -> Result<Admin, ApiError> {
    let view = view(state)?;
    Ok(Admin::with_keys(view.session.clone(), view.keys.clone()))
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Invalid(m) if m.starts_with("unknown instance") => ApiError::not_found(m),
            other => ApiError::unavailable(format!("coordination store: {other}")),
        }
    }
}

/// `GET /cluster`
#[utoipa::path(get, path = "/cluster", security(("bearer" = ["admin"])), tag = "operations",
    summary = "Controller leader, instances, partitions with holders, states and epochs",
    responses((status = 200, description = "Cluster status", body = ClusterStatus),
              (status = 503, description = "Coordination store unreachable", body = ErrorBody)))]
pub async fn get(State(state): State<AppState>) -> Result<Json<ClusterStatus>, ApiError> {
    status(&state).await
}

fn instance_id(id: &str) -> Result<InstanceId, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(InstanceId::new(id))
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidName,
            format!("{id:?} is not an instance id: 1 to 128 letters, digits, '-', '_', '.', ':'"),
        ))
    }
}

/// `POST /cluster/instances/{id}/enable`
#[utoipa::path(post, path = "/cluster/instances/{id}/enable", security(("bearer" = ["admin"])),
    tag = "operations", summary = "Give an instance replicas again",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Instance id")),
    responses((status = 200, description = "Enabled; the cluster's status", body = ClusterStatus),
              (status = 400, description = "Not an instance id", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody),
              (status = 503, description = "Coordination store unreachable", body = ErrorBody)))]
pub async fn enable(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterStatus>, ApiError> {
    admin(&state)?.set_enabled(&instance_id(&id)?, true).await?;
    status(&state).await
}

/// `POST /cluster/instances/{id}/disable`
#[utoipa::path(post, path = "/cluster/instances/{id}/disable", security(("bearer" = ["admin"])),
    tag = "operations", summary = "Move every replica off an instance (it stays connected)",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "Instance id")),
    responses((status = 200, description = "Disabled; the cluster's status", body = ClusterStatus),
              (status = 400, description = "Not an instance id", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody),
              (status = 503, description = "Coordination store unreachable", body = ErrorBody)))]
pub async fn disable(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterStatus>, ApiError> {
    admin(&state)?
        .set_enabled(&instance_id(&id)?, false)
        .await?;
    status(&state).await
}

/// `PUT /cluster/maintenance`
#[utoipa::path(put, path = "/cluster/maintenance", security(("bearer" = ["admin"])),
    tag = "operations",
    summary = "Maintenance mode on or off: while on, nothing moves except to restore lost top states",
    request_body = Maintenance,
    responses((status = 200, description = "Set; the cluster's status", body = ClusterStatus),
              (status = 400, description = "Not a maintenance body", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 503, description = "Coordination store unreachable", body = ErrorBody)))]
pub async fn maintenance(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Maintenance>,
) -> Result<Json<ClusterStatus>, ApiError> {
    admin(&state)?.set_maintenance(body.on).await?;
    status(&state).await
}

/// `POST /cluster/rebalance`
#[utoipa::path(post, path = "/cluster/rebalance", security(("bearer" = ["admin"])),
    tag = "operations", summary = "Ask the leading controller to reconcile now",
    responses((status = 202, description = "Requested; the cluster's status", body = ClusterStatus),
              (status = 503, description = "Coordination store unreachable", body = ErrorBody)))]
pub async fn rebalance(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<ClusterStatus>), ApiError> {
    admin(&state)?
        .request_rebalance(rota_cluster::now_ms())
        .await?;
    Ok((StatusCode::ACCEPTED, status(&state).await?))
}
