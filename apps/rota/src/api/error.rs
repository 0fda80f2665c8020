//! Errors as the API shows them: a status and `{"error": code, "message": ...}`. Client
//! mistakes are 4xx with a stable code; nothing a client sends produces a 500.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rota_scheduler::StoreError;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// What every error answers, for the document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code (`invalid_name`, `not_found`, ...).
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
}

impl ApiError {
    /// A 422 with `code`: well-formed, but at odds with what the server holds.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
        }
    }

    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
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
            code: "not_found",
            message: message.into(),
        }
    }

    /// A 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
        }
    }

    /// A 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message});
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
                code: "request_timeout",
                message: "the request took longer than api.request_timeout_ms".into(),
            }
        } else if e.is::<tower::load_shed::error::Overloaded>() {
            Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "overloaded",
                message: "too many requests at once (api.max_concurrent_requests); try again"
                    .into(),
            }
        } else {
            tracing::error!(error = %e, "request failed");
            Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: "the request failed; see the server log".into(),
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(message) => Self::bad_request("invalid_task", message),
            StoreError::Unavailable(message) => Self::unavailable(message),
            other => {
                tracing::error!(error = %other, "task store error");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: "the task store failed; see the server log".into(),
                }
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::JsonDataError(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (rejection.status(), "invalid_body"),
        };
        let text = rejection.body_text();
        // serde's message for deep nesting names the whole path, level by level.
        let message = if text.contains("recursion limit exceeded") {
            "the JSON is nested deeper than 128 levels".to_owned()
        } else if text.chars().count() > 500 {
            let cut: String = text.chars().take(500).collect();
            format!("{cut}...")
        } else {
            text
        };
        Self {
            status,
            code,
            message,
        }
    }
}
