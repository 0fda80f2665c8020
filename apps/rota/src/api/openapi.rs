//! The OpenAPI 3.1 document served at `/openapi.json`. [`ROUTES`] lists every route the router
//! has; a test checks that the document describes exactly these and that each one answers.

use serde_json::Value;

/// Every (method, path) the router serves.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/tasks"),
    ("get", "/tasks"),
    ("post", "/tasks/batch"),
    ("get", "/tasks/backlog"),
    ("get", "/tasks/{id}"),
    ("delete", "/tasks/{id}"),
    ("get", "/cluster"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The document, derived from the handlers' `#[utoipa::path]` annotations and the request and
/// response types, so that what it says follows the code; schemathesis checks it against the
/// running API in the test suite.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "rota",
        description = "A distributed task scheduler. Times are RFC 3339; a time without offset is read as UTC."
    ),
    paths(
        super::tasks::create,
        super::tasks::list,
        super::tasks::create_batch,
        super::tasks::backlog,
        super::tasks::get,
        super::tasks::cancel,
        super::cluster,
        super::healthz,
        super::readyz,
        super::metrics,
        super::openapi
    )
)]
struct ApiDoc;

/// The document as JSON.
pub fn document() -> Value {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    serde_json::to_value(doc).expect("the document serializes")
}
