//! Every endpoint of the API, including bad input: client mistakes are 4xx with a JSON body
//! `{"error", "message"}`, never a 500; the OpenAPI document lists exactly the routes served.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use rota::api::{self, AppState, routes};
use rota_memory::MemoryTaskStore;
use rota_scheduler::TaskStore;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

const NOW: i64 = 1_700_000_000_000;

fn app() -> (axum::Router, Arc<dyn TaskStore>) {
    let tasks: Arc<dyn TaskStore> = Arc::new(MemoryTaskStore::new());
    let state = AppState {
        tasks: tasks.clone(),
        partitions: 12,
        handlers: api::HandlerCatalog::fixed(["log".to_owned(), "noop".to_owned()]),
        cluster: None,
        metrics: Arc::default(),
        storage: "memory".into(),
        now: Arc::new(|| NOW),
    };
    let limits = rota::config::ApiConfig {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    };
    (api::router(state, &limits), tasks)
}

/// Each item's `field` of the JSON array `items`.
fn listed<'a>(items: &'a Value, field: &str) -> Vec<&'a Value> {
    let items = items.as_array().expect("an array");
    items.iter().map(|item| &item[field]).collect()
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    call_with(app, method, path, body, &[]).await
}

async fn call_with(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    // 503 says a dependency is missing; a 500 would be a bug.
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {path}: {value}"
    );
    if !status.is_success() {
        assert!(
            value["error"].is_string() && value["message"].is_string(),
            "{method} {path}: {value}"
        );
    }
    (status, value)
}

const ORIGINAL: &str = r#"{"name": "MyDistributedTask", "scheduledTime": "2023-12-31T23:59:59", "payload": "Payload Data"}"#;

#[tokio::test]
async fn the_original_request_body_is_accepted_verbatim() {
    let (app, _) = app();
    let (status, task) = call(&app, "POST", "/tasks", Some(ORIGINAL)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(task["name"], "MyDistributedTask");
    assert_eq!(task["eventName"], "MyDistributedTask");
    assert_eq!(task["status"], "PENDING");
    assert_eq!(task["payload"], "Payload Data");
    assert_eq!(
        task["scheduledTime"], "2023-12-31T23:59:59.000Z",
        "zone-less time read as UTC"
    );
    assert!(task["partitionId"].as_u64().unwrap() < 12);
    let id = task["id"].as_i64().unwrap();
    let (status, again) = call(&app, "GET", &format!("/tasks/{id}"), None).await;
    assert_eq!((status, &again), (StatusCode::OK, &task));
}

#[tokio::test]
async fn optional_fields_and_offsets() {
    let (app, _) = app();
    let body = json!({"name": "n", "scheduledTime": "2024-01-01T01:00:00+01:00", "payload": {"a": [1, 2]},
                      "partitionKey": "customer-9", "maxAttempts": 7, "handler": "noop"});
    let (status, task) = call(&app, "POST", "/tasks", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(task["scheduledTime"], "2024-01-01T00:00:00.000Z");
    assert_eq!(
        (task["maxAttempts"].as_u64(), task["handler"].as_str()),
        (Some(7), Some("noop"))
    );
    assert_eq!(task["partitionKey"], "customer-9");
    assert_eq!(task["payload"], json!({"a": [1, 2]}));
    let (_, no_time) = call(&app, "POST", "/tasks", Some(r#"{"name": "now"}"#)).await;
    assert_eq!(
        no_time["scheduledTime"], "2023-11-14T22:13:20.000Z",
        "defaults to now"
    );
}

/// Found by the simulator: a repeat of a create whose first attempt had failed (its due time
/// moved to the retry's) was refused as another request.
#[tokio::test]
async fn a_repeat_after_a_failed_attempt_returns_the_original_task() {
    use rota_model::InstanceId;
    use rota_scheduler::{
        AcquirePartition, Claim, ClaimTasks, CompleteTasks, Completion, CompletionOutcome,
    };
    let (app, tasks) = app();
    let key = [("Idempotency-Key", "retried-1")];
    let body = r#"{"name": "n", "scheduledTime": "2023-11-14T22:13:20Z"}"#;
    let (first, a) = call_with(&app, "POST", "/tasks", Some(body), &key).await;
    assert_eq!(first, StatusCode::CREATED, "{a}");
    let partition = a["partitionId"].as_u64().expect("a partition") as u32;
    let owner = InstanceId::new("w");
    let grant = AcquirePartition {
        partition,
        owner: owner.clone(),
        epoch: 1,
        now: NOW,
    };
    tasks.acquire(grant).await.unwrap();
    let claim = ClaimTasks {
        owner: owner.clone(),
        partitions: vec![Claim {
            partition,
            epoch: 1,
        }],
        now: NOW,
        limit: 1,
        lease_ms: 30_000,
        resume_after: Default::default(),
    };
    let claimed = tasks.claim(claim).await.unwrap();
    assert_eq!(claimed.tasks.len(), 1);
    let failed = CompletionOutcome::Failed {
        error: "boom".into(),
        retry_at: NOW + 60_000,
    };
    let ends = CompleteTasks {
        owner,
        completions: vec![Completion::of(&claimed.tasks[0], failed)],
        now: NOW,
    };
    let done = tasks.complete(&ends).await.unwrap();
    assert!(done[0].is_some());
    let (second, b) = call_with(&app, "POST", "/tasks", Some(body), &key).await;
    assert_eq!(second, StatusCode::OK, "{b}");
    assert_eq!(a["id"], b["id"]);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_task() {
    let (app, tasks) = app();
    let key = [("Idempotency-Key", "order-17")];
    let (first, a) = call_with(&app, "POST", "/tasks", Some(ORIGINAL), &key).await;
    let (second, b) = call_with(&app, "POST", "/tasks", Some(ORIGINAL), &key).await;
    assert_eq!((first, second), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(a, b);
    // The key reused for another request: refused, as Stripe does, rather than answered with a
    // task the client did not ask for.
    let (reused, err) =
        call_with(&app, "POST", "/tasks", Some(r#"{"name": "changed"}"#), &key).await;
    assert_eq!(reused, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "idempotency_key_reused");
    // The header and the body naming two keys: which one was meant?
    let both = r#"{"name": "x", "idempotencyKey": "order-18"}"#;
    let (status, err) = call_with(&app, "POST", "/tasks", Some(both), &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(
        tasks.list(&Default::default()).await.unwrap().tasks.len(),
        1
    );
}

#[tokio::test]
async fn names_count_characters_and_deep_json_gets_a_short_message() {
    let (app, _) = app();
    let name = "\u{00e9}".repeat(256); // 512 bytes, 256 characters
    let body = json!({ "name": name }).to_string();
    assert_eq!(
        call(&app, "POST", "/tasks", Some(&body)).await.0,
        StatusCode::CREATED
    );
    let too_long = json!({"name": "\u{00e9}".repeat(257)}).to_string();
    assert_eq!(
        call(&app, "POST", "/tasks", Some(&too_long)).await.0,
        StatusCode::BAD_REQUEST
    );
    // An integer past 64 bits would come back as another number: refused, not rounded.
    let big = r#"{"name": "b", "payload": {"n": 123456789012345678901234567890}}"#;
    let (status, err) = call(&app, "POST", "/tasks", Some(big)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "invalid_payload");
    let deep = format!(
        r#"{{"name": "d", "payload": {}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let (status, err) = call(&app, "POST", "/tasks", Some(&deep)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = err["message"].as_str().unwrap();
    assert!(
        message.len() < 200 && message.contains("128 levels"),
        "{message}"
    );
}

#[tokio::test]
async fn batches_are_created_together() {
    let (app, _) = app();
    let body = json!({"tasks": [{"name": "a"}, {"name": "b", "idempotencyKey": "k"}, {"name": "b", "idempotencyKey": "k"}]});
    let (status, out) = call(&app, "POST", "/tasks/batch", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED);
    let tasks = out["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[1]["id"], tasks[2]["id"]);
    // A key reused for something else, within a batch or against a stored task: the whole
    // batch is refused and nothing is created.
    for reuse in [
        json!({"tasks": [{"name": "x", "idempotencyKey": "j"}, {"name": "y", "idempotencyKey": "j"}]}),
        json!({"tasks": [{"name": "fresh"}, {"name": "not b", "idempotencyKey": "k"}]}),
    ] {
        let (status, err) = call(&app, "POST", "/tasks/batch", Some(&reuse.to_string())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"], "idempotency_key_reused");
    }
    let (status, err) = call(&app, "POST", "/tasks/batch", Some(r#"{"tasks": []}"#)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_batch"))
    );
    // A key no store can hold is refused before any store is asked (its lookup included).
    let nul = json!({"tasks": [{"name": "n", "idempotencyKey": "a\u{0}b"}]});
    let (status, err) = call(&app, "POST", "/tasks/batch", Some(&nul.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let bad = json!({"tasks": [{"name": "ok"}, {"name": ""}]});
    let (status, err) = call(&app, "POST", "/tasks/batch", Some(&bad.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["message"].as_str().unwrap().starts_with("tasks[1]"),
        "{err}"
    );
    let (_, page) = call(&app, "GET", "/tasks?limit=10", None).await;
    assert_eq!(
        page["tasks"].as_array().unwrap().len(),
        2,
        "the failed batch created nothing"
    );
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let (app, _) = app();
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/tasks", Some("{not json"), 400, "malformed_json"),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": 5}"#),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": "x", "sheduledTime": "2023-12-31T23:59:59"}"#),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": "x", "scheduledTime": "next tuesday"}"#),
            400,
            "invalid_time",
        ),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": "  "}"#),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": "x", "maxAttempts": 0}"#),
            400,
            "invalid_max_attempts",
        ),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": "x", "maxAttempts": -1}"#),
            400,
            "invalid_max_attempts",
        ),
        (
            "POST",
            "/tasks",
            Some(r#"{"name": "x", "handler": "rm -rf"}"#),
            400,
            "unknown_handler",
        ),
        ("GET", "/tasks/abc", None, 400, "invalid_id"),
        ("GET", "/tasks/0", None, 400, "invalid_id"),
        ("GET", "/tasks/424242", None, 404, "not_found"),
        ("DELETE", "/tasks/424242", None, 404, "not_found"),
        ("GET", "/tasks?status=DONE", None, 400, "invalid_status"),
        ("GET", "/tasks?limit=0", None, 400, "invalid_limit"),
        ("GET", "/tasks?cursor=x", None, 400, "invalid_cursor"),
        ("GET", "/tasks?colour=red", None, 400, "unknown_parameter"),
        ("GET", "/tasks?name=%FF%FE", None, 400, "invalid_query"),
        ("GET", "/schedules?after=%C3", None, 400, "invalid_query"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("PUT", "/tasks", None, 405, "method_not_allowed"),
        ("GET", "/cluster", None, 503, "unavailable"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, err) = call(&app, method, path, *body).await;
        assert_eq!(
            (got.as_u16(), err["error"].as_str()),
            (*status, Some(*code)),
            "{method} {path}: {err}"
        );
    }
    // Without a JSON content type the body is still read as JSON (as `curl -d` sends it, and
    // as /schedules reads it); too large a body names the limit.
    let request = Request::post("/tasks").body(Body::from(ORIGINAL)).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let huge = json!({"name": "big", "payload": "x".repeat(100 * 1024)}).to_string();
    let (status, err) = call(&app, "POST", "/tasks", Some(&huge)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.max_body_bytes") && m.contains("65536 bytes")),
        "{err}"
    );
}

#[tokio::test]
async fn listing_pages_and_filters() {
    let (app, _) = app();
    for i in 0..25 {
        let name = if i % 5 == 0 { "five" } else { "other" };
        call(
            &app,
            "POST",
            "/tasks",
            Some(&json!({"name": name}).to_string()),
        )
        .await;
    }
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/tasks?limit=10&cursor={c}"),
            None => "/tasks?limit=10".into(),
        };
        let (_, page) = call(&app, "GET", &path, None).await;
        let ids = listed(&page["tasks"], "id");
        seen.extend(ids.iter().map(|id| id.as_i64().unwrap()));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let (_, five) = call(&app, "GET", "/tasks?name=five&status=pending", None).await;
    assert_eq!(five["tasks"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn cancelling_a_pending_task_only() {
    let (app, tasks) = app();
    let (_, task) = call(&app, "POST", "/tasks", Some(ORIGINAL)).await;
    let id = task["id"].as_i64().unwrap();
    let (status, cancelled) = call(&app, "DELETE", &format!("/tasks/{id}"), None).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("CANCELLED"))
    );
    let (status, err) = call(&app, "DELETE", &format!("/tasks/{id}"), None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    assert!(err["message"].as_str().unwrap().contains("CANCELLED"));
    assert_eq!(
        tasks.get(id).await.unwrap().unwrap().status,
        rota_scheduler::TaskStatus::Cancelled
    );
}

#[tokio::test]
async fn health_readiness_metrics_and_the_openapi_document() {
    let (app, _) = app();
    assert_eq!(call(&app, "GET", "/healthz", None).await.1["status"], "ok");
    assert_eq!(
        call(&app, "GET", "/readyz", None).await.1["status"],
        "ready"
    );
    call(&app, "POST", "/tasks", Some(ORIGINAL)).await;
    let (status, metrics) = call(&app, "GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap();
    assert_eq!(status, StatusCode::OK);
    // No worker in this process: its metrics are at zero (those by handler appear with the
    // first task a handler runs).
    for name in [
        "rota_tasks_created_total 1",
        "rota_completions_refused_total 0",
        "rota_task_start_lag_seconds_count 0",
        "rota_owned_partitions 0",
        "rota_controller_leader 0",
        "# EOF",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let (_, doc) = call(&app, "GET", "/openapi.json", None).await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "the OpenAPI document and the routes disagree"
    );
    // Every listed route is really served (not the 404 or 405 fallback).
    for route in routes() {
        let (method, path) = (route.method, route.path.replace("{id}", "1"));
        let body = (method == "post").then_some(r#"{"name": "probe"}"#);
        let body = if path == "/tasks/batch" {
            Some(r#"{"tasks": [{"name": "probe"}]}"#)
        } else {
            body
        };
        let (status, value) = call(&app, &method.to_uppercase(), &path, body).await;
        let fallback = value["error"] == "method_not_allowed"
            || value["message"]
                .as_str()
                .is_some_and(|m| m.contains("no such route"));
        assert!(!fallback, "{method} {path} is not served: {status} {value}");
    }
}

#[tokio::test]
async fn text_no_store_can_hold_is_a_400() {
    let (app, tasks) = app();
    let with_nul = [
        r#"{"name": "a\u0000b", "scheduledTime": "2030-01-01T00:00:00Z", "payload": 1}"#,
        r#"{"name": "a", "scheduledTime": "2030-01-01T00:00:00Z", "payload": {"k": ["x\u0000"]}}"#,
        r#"{"name": "a", "scheduledTime": "2030-01-01T00:00:00Z", "payload": {"\u0000": 1}}"#,
        r#"{"name": "a", "scheduledTime": "2030-01-01T00:00:00Z", "payload": 1, "partitionKey": "\u0000"}"#,
    ];
    for body in with_nul {
        let (status, error) = call(&app, "POST", "/tasks", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("NUL"),
            "{error}"
        );
        let batch = format!(
            r#"{{"tasks": [{{"name": "fine", "scheduledTime": "2030-01-01T00:00:00Z", "payload": 1}}, {body}]}}"#
        );
        let (status, error) = call(&app, "POST", "/tasks/batch", Some(&batch)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{batch}: {error}");
    }
    let (status, error) = call(&app, "GET", "/tasks?name=%00", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(tasks.backlog().await.unwrap().pending, 0, "nothing stored");
}

#[tokio::test]
async fn ids_are_digits_as_written_and_parameters_come_once() {
    let (app, _) = app();
    let body = r#"{"name": "a", "scheduledTime": "2030-01-01T00:00:00Z", "payload": 1}"#;
    let (status, created) = call(&app, "POST", "/tasks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_i64().unwrap();
    let (status, _) = call(&app, "GET", &format!("/tasks/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    for other in [
        format!("+{id}"),
        format!("0{id}"),
        format!("{id} "),
        "-1".into(),
    ] {
        let path = format!("/tasks/{}", other.replace(' ', "%20").replace('+', "%2B"));
        let (status, error) = call(&app, "GET", &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {error}");
        assert_eq!(error["error"], "invalid_id", "{path}: {error}");
    }
    let (status, error) = call(&app, "GET", "/tasks?limit=1&limit=2", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"], "repeated_parameter", "{error}");
}

/// A request body that never arrives (a client that sent its headers and stalls).
struct Stalled;

impl axum::body::HttpBody for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_gets_408_within_the_timeout() {
    let tasks: Arc<dyn TaskStore> = Arc::new(MemoryTaskStore::new());
    let state = AppState {
        tasks,
        partitions: 12,
        handlers: api::HandlerCatalog::fixed(["log".to_owned()]),
        cluster: None,
        metrics: Arc::default(),
        storage: "memory".into(),
        now: Arc::new(|| NOW),
    };
    let limits = rota::config::ApiConfig {
        request_timeout_ms: 200,
        ..Default::default()
    };
    let app = api::router(state, &limits);
    let request = Request::builder()
        .method("POST")
        .uri("/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "100")
        .body(Body::new(Stalled))
        .unwrap();
    // Without the limit this would wait for ever: give it far longer than the limit.
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), app.oneshot(request))
        .await
        .expect("an answer, not a request held open")
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"], "request_timeout");
}

#[tokio::test]
async fn schedules_are_created_read_changed_and_refused_with_reasons() {
    let (app, tasks) = app();
    // As curl -d sends it: no JSON content type.
    let request = Request::builder()
        .method("POST")
        .uri("/schedules")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            r#"{"name":"report","cron":"*/2 * * * * *","task":{"name":"report"}}"#,
        ))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()[header::LOCATION], "/schedules/report");
    let (status, s) = call(&app, "GET", "/schedules/report", None).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    let times = s["nextFireTimes"].as_array().unwrap();
    assert_eq!(times.len(), 10);
    // NOW is 2023-11-14T22:13:20Z: every even second from there on.
    assert_eq!(times[0], "2023-11-14T22:13:22.000Z");
    assert_eq!(times[1], "2023-11-14T22:13:24.000Z");
    assert_eq!(s["lastRuns"], json!([]));
    assert_eq!(
        (s["missedTicks"].clone(), s["paused"].clone()),
        (json!("run-once"), json!(false))
    );
    // A repeat is fine; another definition under the name is a conflict; PUT replaces.
    let body = r#"{"name":"report","cron":"*/2 * * * * *","task":{"name":"report"}}"#;
    assert_eq!(
        call(&app, "POST", "/schedules", Some(body)).await.0,
        StatusCode::OK
    );
    let other = r#"{"name":"report","every":"1m","timeZone":"Europe/Berlin","task":{"name":"report","maxAttempts":5}}"#;
    assert_eq!(
        call(&app, "POST", "/schedules", Some(other)).await.0,
        StatusCode::CONFLICT
    );
    let (status, s) = call(&app, "PUT", "/schedules/report", Some(other)).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(
        (s["every"].clone(), s["revision"].clone()),
        (json!("1m"), json!(2))
    );
    assert_eq!(s["nextTick"], "2023-11-14T23:14:00.000+01:00");
    // Trigger: a task due now, in the history as manual.
    let (status, t) = call(&app, "POST", "/schedules/report/trigger", None).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let id = t["task"]["id"].as_i64().unwrap();
    assert_eq!(tasks.get(id).await.unwrap().unwrap().max_attempts, 5);
    let (_, s) = call(&app, "GET", "/schedules/report", None).await;
    assert_eq!(s["lastRuns"][0]["taskId"], id);
    assert_eq!(s["lastRuns"][0]["manual"], true);
    assert_eq!(s["lastRuns"][0]["status"], "PENDING");
    // Pause and resume.
    let (_, s) = call(&app, "POST", "/schedules/report/pause", None).await;
    assert_eq!(
        (s["paused"].clone(), s["nextFireTimes"].clone()),
        (json!(true), json!([]))
    );
    let (_, s) = call(&app, "POST", "/schedules/report/resume", None).await;
    assert_eq!(s["paused"], false);
    assert_eq!(s["nextFireTimes"].as_array().unwrap().len(), 10);
    // Listing pages by name.
    for n in ["a", "b", "c"] {
        let body = format!(r#"{{"name":"{n}","every":"1h","task":{{"name":"x"}}}}"#);
        assert_eq!(
            call(&app, "POST", "/schedules", Some(&body)).await.0,
            StatusCode::CREATED
        );
    }
    let (_, page) = call(&app, "GET", "/schedules?limit=2", None).await;
    assert_eq!(page["nextAfter"], "b");
    let (_, page) = call(&app, "GET", "/schedules?limit=2&after=b", None).await;
    assert_eq!(listed(&page["schedules"], "name"), ["c", "report"]);
    // Bad input: a 400 saying what is wrong, nothing stored.
    for (body, says) in [
        (
            r#"{"name":"x","cron":"0 0 30 2 *","task":{"name":"r"}}"#,
            "never fires",
        ),
        (
            r#"{"name":"x","cron":"* * * * *","timeZone":"Mars/Base","task":{"name":"r"}}"#,
            "unknown time zone",
        ),
        (
            r#"{"name":"x","cron":"61 * * * *","task":{"name":"r"}}"#,
            "not a cron expression",
        ),
        (
            r#"{"name":"x","cron":"* * * * *","every":"1s","task":{"name":"r"}}"#,
            "exactly one of",
        ),
        (
            r#"{"name":"x","every":"0s","task":{"name":"r"}}"#,
            "not an interval",
        ),
        (
            r#"{"name":"x y","every":"1s","task":{"name":"r"}}"#,
            "not a schedule name",
        ),
        (
            r#"{"name":"x","every":"1s","task":{"name":"r","handler":"nope"}}"#,
            "nope",
        ),
        (
            r#"{"name":"x","every":"1s","task":{"name":"r","maxAttempts":0}}"#,
            "maxAttempts",
        ),
        (
            r#"{"name":"x","every":"1s","catchUp":0,"task":{"name":"r"}}"#,
            "catchUp",
        ),
        (
            r#"{"name":"x","every":"1s","task":{"name":"r"},"color":"red"}"#,
            "unknown field",
        ),
        (r#"{"name":"x","every":"1s"}"#, "task"),
        ("not json", "not a schedule"),
    ] {
        let (status, e) = call(&app, "POST", "/schedules", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let (status, e) = call(
        &app,
        "PUT",
        "/schedules/y",
        Some(r#"{"name":"z","every":"1s","task":{"name":"r"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(
        call(&app, "GET", "/schedules/x", None).await.0,
        StatusCode::NOT_FOUND
    );
    // The reserved keys of schedules' tasks are not for clients.
    let (status, e) = call_with(
        &app,
        "POST",
        "/tasks",
        Some(r#"{"name":"t"}"#),
        &[("idempotency-key", "schedule:report:1")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    // Delete: gone, its task stays.
    assert_eq!(
        call(&app, "DELETE", "/schedules/report", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "DELETE", "/schedules/report", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "POST", "/schedules/report/trigger", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert!(tasks.get(id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_name_is_measured_as_sent_before_white_space_is_trimmed() {
    let (app, _) = app();
    // 257 characters as sent (the document's maxLength is 256), 256 once trimmed.
    let name = format!("\t{}", "*".repeat(256));
    let body = json!({"name": name}).to_string();
    let (status, e) = call(&app, "POST", "/tasks", Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let body = json!({"name": "s", "every": "1h", "task": {"name": name}}).to_string();
    let (status, e) = call(&app, "POST", "/schedules", Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let ok = json!({"name": format!(" {} ", "*".repeat(254))}).to_string();
    assert_eq!(
        call(&app, "POST", "/tasks", Some(&ok)).await.0,
        StatusCode::CREATED
    );
}
