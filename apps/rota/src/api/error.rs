//! Errors as the API shows them: a status and `{"error": code, "message": ...}`. Client
//! mistakes are 4xx with a stable code; nothing a client sends produces a 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rota_scheduler::StoreError;

pub use rota_client::{ErrorBody, ErrorCode};

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, one of those the document lists.
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

impl ApiError {
    /// A 422 with `code`: well-formed, but at odds with what the server holds.
    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
        }
    }

    /// A 400 with `code`.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// A 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::NotFound,
            message: message.into(),
        }
    }

    /// A 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            code: ErrorCode::Conflict,
            message: message.into(),
        }
    }

    /// A 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Unavailable,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl ApiError {
    /// The answer to a request the API's limits stopped: too slow (408), or too many at once
    /// (503).
    pub fn from_limit(e: &tower::BoxError) -> Self {
        if e.is::<tower::timeout::error::Elapsed>() {
            Self {
                status: StatusCode::REQUEST_TIMEOUT,
                code: ErrorCode::RequestTimeout,
                message: "the request took longer than api.request_timeout_ms".into(),
            }
        } else if e.is::<tower::load_shed::error::Overloaded>() {
            Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: ErrorCode::Overloaded,
                message: "too many requests at once (api.max_concurrent_requests); try again"
                    .into(),
            }
        } else {
            tracing::error!(error = %e, "request failed");
            Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: ErrorCode::Internal,
                message: "the request failed; see the server log".into(),
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(message) => Self::bad_request(ErrorCode::InvalidTask, message),
            StoreError::Unavailable(message) => Self::unavailable(message),
            other => {
                tracing::error!(error = %other, "task store error");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: ErrorCode::Internal,
                    message: "the task store failed; see the server log".into(),
                }
            }
        }
    }
}
