//! Every route, declared once: each handler's `#[utoipa::path]` annotation gives its method, its
//! path, its document and (in `security`) the scope a token needs for it; [`declared`] collects
//! the handlers, and from that one declaration come the router, the OpenAPI 3.1 document served
//! at `/openapi.json` ([`document`]) and the gate's access table ([`routes`]). A route with no
//! `security` is open (health, readiness, the document); `/metrics` needs `read` unless
//! `api.open_metrics`.

use super::auth::{Access, Scope};
use super::{AppState, cluster, schedules, tasks};
use serde_json::{Value, json};
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The document's frame; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "rota",
    description = "A distributed task scheduler. Times are RFC 3339; a time without offset is read as UTC."
))]
struct ApiDoc;

/// Every route with its handler and its annotation: the one declaration.
pub(super) fn declared() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::create_batch))
        .routes(routes!(tasks::backlog))
        .routes(routes!(tasks::get, tasks::cancel))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(
            schedules::get,
            schedules::replace,
            schedules::delete
        ))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(schedules::trigger))
        .routes(routes!(cluster::get))
        .routes(routes!(cluster::enable))
        .routes(routes!(cluster::disable))
        .routes(routes!(cluster::maintenance))
        .routes(routes!(cluster::rebalance))
        .routes(routes!(super::healthz))
        .routes(routes!(super::readyz))
        .routes(routes!(super::metrics))
        .routes(routes!(super::openapi))
}

/// A route and who may call it once tokens are configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `get`, `post`, ... (lower case, as the document writes it).
    pub method: &'static str,
    /// The path as the router matches it (`/tasks/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// Every route the router serves, read from the declaration's document.
pub fn routes() -> &'static [Route] {
    static ROUTES: OnceLock<Vec<Route>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let (_, doc) = declared().split_for_parts();
        let mut routes = Vec::new();
        for (path, item) in doc.paths.paths {
            let path: &'static str = Box::leak(path.into_boxed_str());
            let operations = [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
                ("patch", &item.patch),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    let access = access_of_operation(path, operation);
                    routes.push(Route {
                        method,
                        path,
                        access,
                    });
                }
            }
        }
        routes
    })
}

/// What an operation's `security` declares: open without one, else the bearer's scope.
fn access_of_operation(path: &str, operation: &Operation) -> Access {
    let scope = operation
        .security
        .iter()
        .flatten()
        .filter_map(|requirement| serde_json::to_value(requirement).ok())
        .find_map(|r| r["bearer"][0].as_str().map(str::to_owned));
    match scope.as_deref().map(str::parse::<Scope>) {
        None => Access::Open,
        Some(Ok(Scope::Read)) if path == "/metrics" => Access::Metrics,
        Some(Ok(scope)) => Access::Needs(scope),
        Some(Err(e)) => panic!("{path}: its security names {e}"),
    }
}

/// What the route at (`method`, `path`) needs; a route missing from the declaration needs
/// `admin` (closed by default).
pub fn access_of(method: &str, path: &str) -> Access {
    routes()
        .iter()
        .find(|r| r.method == method && r.path == path)
        .map_or(Access::Needs(Scope::Admin), |r| r.access)
}

/// The document as JSON: the declaration's, with what tokens mean for each route.
pub fn document() -> Value {
    let (_, doc) = declared().split_for_parts();
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http", "scheme": "bearer",
        "description": "A token from `rota admin token create`, once `[[api.tokens]]` are configured; \
                        without tokens every route is open."
    });
    for route in routes() {
        let Some(operation) = doc["paths"][route.path].get_mut(route.method) else {
            continue;
        };
        let (scope, needed) = match route.access {
            Access::Open => continue,
            Access::Metrics => ("read", "read (unless api.open_metrics)"),
            Access::Needs(scope) => (scope.name(), scope.name()),
        };
        // Optional in the document (`{}`): a deployment without tokens serves every route open.
        operation["security"] = json!([{}, {"bearer": [scope]}]);
        operation["description"] = json!(format!(
            "{}Needs a token with the `{needed}` scope (or `admin`) when tokens are configured.",
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

    #[test]
    fn each_route_needs_what_its_declaration_says() {
        assert_eq!(access_of("post", "/tasks"), Access::Needs(Scope::Write));
        assert_eq!(access_of("get", "/tasks/{id}"), Access::Needs(Scope::Read));
        assert_eq!(access_of("get", "/cluster"), Access::Needs(Scope::Admin));
        assert_eq!(access_of("get", "/metrics"), Access::Metrics);
        assert_eq!(access_of("get", "/healthz"), Access::Open);
        assert_eq!(access_of("get", "/nowhere"), Access::Needs(Scope::Admin));
        assert_eq!(
            access_of("put", "/cluster/maintenance"),
            Access::Needs(Scope::Admin)
        );
        assert_eq!(routes().len(), 23);
    }
}
