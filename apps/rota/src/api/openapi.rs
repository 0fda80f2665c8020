//! The OpenAPI 3.1 document served at `/openapi.json`. [`ROUTES`] lists every route the router
//! has; a test checks that the document describes exactly these and that each one answers.

use super::auth::{Access, Scope};
use serde_json::{Value, json};

/// Every (method, path) the router serves, and who may call it once tokens are configured.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("post", "/tasks", Access::Needs(Scope::Write)),
    ("get", "/tasks", Access::Needs(Scope::Read)),
    ("post", "/tasks/batch", Access::Needs(Scope::Write)),
    ("get", "/tasks/backlog", Access::Needs(Scope::Read)),
    ("get", "/tasks/{id}", Access::Needs(Scope::Read)),
    ("delete", "/tasks/{id}", Access::Needs(Scope::Write)),
    ("post", "/schedules", Access::Needs(Scope::Write)),
    ("get", "/schedules", Access::Needs(Scope::Read)),
    ("get", "/schedules/{name}", Access::Needs(Scope::Read)),
    ("put", "/schedules/{name}", Access::Needs(Scope::Write)),
    (
        "post",
        "/schedules/{name}/pause",
        Access::Needs(Scope::Write),
    ),
    (
        "post",
        "/schedules/{name}/resume",
        Access::Needs(Scope::Write),
    ),
    (
        "post",
        "/schedules/{name}/trigger",
        Access::Needs(Scope::Write),
    ),
    ("delete", "/schedules/{name}", Access::Needs(Scope::Write)),
    ("get", "/cluster", Access::Needs(Scope::Admin)),
    ("get", "/healthz", Access::Open),
    ("get", "/readyz", Access::Open),
    ("get", "/metrics", Access::Metrics),
    ("get", "/openapi.json", Access::Open),
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
        super::schedules::create,
        super::schedules::list,
        super::schedules::get,
        super::schedules::replace,
        super::schedules::delete,
        super::schedules::pause,
        super::schedules::resume,
        super::schedules::trigger,
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
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    // Who may call what, from the one table the gate reads.
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http", "scheme": "bearer",
        "description": "A token from `rota admin token create`, once `[[api.tokens]]` are configured; \
                        without tokens every route is open."
    });
    for (method, path, access) in ROUTES {
        let Some(operation) = doc["paths"][*path].get_mut(*method) else {
            continue;
        };
        let scope = match access {
            Access::Open => continue,
            Access::Metrics => "read (unless api.open_metrics)",
            Access::Needs(scope) => scope.name(),
        };
        // Optional in the document (`{}`): a deployment without tokens serves every route open.
        operation["security"] = json!([{}, {"bearer": []}]);
        operation["description"] = json!(format!(
            "{}Needs a token with the `{scope}` scope (or `admin`) when tokens are configured.",
            operation["description"]
                .as_str()
                .map(|d| format!("{d}\n\n"))
                .unwrap_or_default()
        ));
        let error = json!({"$ref": "#/components/schemas/ErrorBody"});
        let responses = &mut operation["responses"];
        for (status, text) in [
            ("401", "No valid token"),
            ("403", "The token lacks the scope"),
            ("429", "Over the token's rate limit"),
        ] {
            responses[status] = json!({"description": text,
                "content": {"application/json": {"schema": error}}});
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_client::ErrorCode;

    #[test]
    fn the_document_lists_every_error_code() {
        let doc = document();
        let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("the ErrorCode schema is an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
        assert_eq!(
            doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }
}
