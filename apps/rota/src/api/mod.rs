//! The REST API (axum): tasks, cluster status, health, metrics and the OpenAPI document.
//! [`router`] builds it from an [`AppState`]; [`serve`] runs it on a listener until shutdown.

pub mod auth;
mod body;
mod catalog;
mod cluster;
pub mod error;
mod openapi;
pub mod schedules;
pub mod server;
pub mod tasks;
pub mod time;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use catalog::HandlerCatalog;
use error::{ApiError, ErrorCode};
use rota_client::Health;
use rota_scheduler::metrics::Metrics;
use rota_scheduler::{InsertTasks, ListFilter, Millis, NewTask, TaskStore};
use serde_json::Value;
use std::sync::Arc;

pub use openapi::{Route, access_of, document as openapi_document, routes};

pub use crate::status::ClusterView;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The task store.
    pub tasks: Arc<dyn TaskStore>,
    /// Partitions of the `tasks` resource.
    pub partitions: u32,
    /// The handlers workers offer, for validating `handler`.
    pub handlers: Arc<HandlerCatalog>,
    /// The cluster, if this process can see it.
    pub cluster: Option<ClusterView>,
    /// The process's metrics (in `rota dev`, its workers' and controller's too).
    pub metrics: Arc<Metrics>,
    /// The storage, described for `/cluster` (passwords redacted).
    pub storage: String,
    /// The clock.
    pub now: Arc<dyn Fn() -> Millis + Send + Sync>,
}

impl AppState {
    /// `tasks` as a batch to insert now, spread over the cluster's partitions.
    pub fn batch(&self, tasks: Vec<NewTask>) -> InsertTasks {
        InsertTasks {
            tasks,
            partitions: self.partitions,
            now: (self.now)(),
        }
    }
}

/// The router with every route, JSON errors for unknown routes and methods, and the body limit.
pub fn router(state: AppState, limits: &crate::config::ApiConfig) -> Router {
    use axum::error_handling::HandleErrorLayer;
    use tower::ServiceBuilder;
    let guard = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: tower::BoxError| async move {
            ApiError::from_limit(&e)
        }))
        .load_shed()
        .concurrency_limit(limits.max_concurrent_requests.max(1))
        .timeout(std::time::Duration::from_millis(limits.request_timeout_ms));
    let (routes, _) = openapi::declared().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(auth::Gate::new(limits)),
            auth::guard,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::Extension(body::BodyLimit(limits.max_body_bytes)))
        .layer(guard)
        .with_state(state)
}

pub use server::{Listening, serve};

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: ErrorCode::MethodNotAllowed,
        message: "method not allowed on this route; see GET /openapi.json".into(),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "The process is up",
    responses((status = 200, description = "OK", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Ready when the task store answers and (if visible) a controller leads.
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "The task store answers and a controller leads",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "Not ready", body = error::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    let probe = ListFilter {
        limit: 1,
        ..ListFilter::default()
    };
    state
        .tasks
        .list(&probe)
        .await
        .map_err(|e| ApiError::unavailable(format!("task store: {e}")))?;
    if let Some(view) = &state.cluster {
        let leader = view
            .session
            .get(&view.keys.leader())
            .await
            .map_err(|e| ApiError::unavailable(format!("coordination store: {e}")))?;
        if leader.is_none() {
            return Err(ApiError::unavailable("no controller leads the cluster yet"));
        }
    }
    Ok(axum::Json(Health {
        status: "ready".into(),
    }))
}

#[utoipa::path(get, path = "/metrics", security(("bearer" = ["read"])), tag = "operations", summary = "This process's metrics (OpenMetrics text)",
    responses((status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Response {
    metrics_response(&state.metrics)
}

/// `/metrics`: the text exposition of `metrics`.
pub fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1")))]
async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document())
}
