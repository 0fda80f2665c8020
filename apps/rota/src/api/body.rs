//! What requests carry besides their path. Bodies: JSON, read as JSON whatever the
//! `Content-Type` says (`curl -d` sends a form
//! type; nothing but JSON is taken anywhere), within `api.max_body_bytes`. Every refusal is a
//! 4xx with a code: `malformed_json` (not JSON), `invalid_body` (not the route's shape),
//! `payload_too_large` (over the limit, which it names).

use super::error::{ApiError, ErrorCode};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The configured body limit, as the router's layer records it for the extractor's message.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// What a route takes, named for refusals ("the body is not a schedule: ...").
pub trait Body: DeserializeOwned {
    /// What it is, with its article.
    const WHAT: &'static str;
}

impl Body for rota_client::CreateTask {
    const WHAT: &'static str = "a task";
}

impl Body for rota_client::CreateBatch {
    const WHAT: &'static str = "a batch of tasks";
}

impl Body for rota_client::ScheduleBody {
    const WHAT: &'static str = "a schedule";
}

impl Body for rota_client::Maintenance {
    const WHAT: &'static str = "a maintenance setting";
}

/// A JSON body of type `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: Body> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = request.extensions().get::<BodyLimit>().copied();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    let limit = limit.map_or(String::new(), |l| format!(" ({} bytes)", l.0));
                    ApiError {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        code: ErrorCode::PayloadTooLarge,
                        message: format!("the body is larger than api.max_body_bytes{limit}"),
                    }
                } else {
                    ApiError::bad_request(ErrorCode::InvalidBody, rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| refusal(T::WHAT, e))
    }
}

/// A body that is not JSON, or not the route's shape (`what` it should be), as the client's
/// error.
fn refusal(what: &str, e: serde_json::Error) -> ApiError {
    let code = if e.is_data() {
        ErrorCode::InvalidBody
    } else {
        ErrorCode::MalformedJson
    };
    let text = e.to_string();
    // serde's message for deep nesting names the whole path, level by level.
    let message = if text.contains("recursion limit exceeded") {
        "the JSON is nested deeper than 128 levels".to_owned()
    } else if text.chars().count() > 500 {
        let cut: String = text.chars().take(500).collect();
        format!("{cut}...")
    } else {
        text
    };
    ApiError::bad_request(code, format!("the body is not {what}: {message}"))
}

/// A query string's parameters, decoded: `+` is a space and `%XX` a byte; a name or value that is
/// not UTF-8 once decoded is refused (`invalid_query`), not replaced, so that a filter never
/// quietly matches other text than the client sent.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or("");
        let decode = |text: &str| {
            let spaced = text.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .map(|t| t.into_owned())
                .map_err(|_| {
                    ApiError::bad_request(
                        ErrorCode::InvalidQuery,
                        format!("the query parameter {text:?} is not UTF-8 once decoded"),
                    )
                })
        };
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(QueryPairs(pairs))
    }
}
