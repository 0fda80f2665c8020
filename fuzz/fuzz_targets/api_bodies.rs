//! The API's request bodies, through the real router and its validation into a stored task or
//! schedule (on the memory task store): whatever the bytes, the answer is a success or a 4xx
//! with a JSON error body, never a 5xx or a panic; a created task keeps the rules the API
//! promises (a name of 1 to 256 characters, 1 to 100 attempts).
#![no_main]

use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use rota::api::{AppState, HandlerCatalog, router};
use rota::config::ApiConfig;
use rota_memory::MemoryTaskStore;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

const ROUTES: [(&str, &str); 5] = [
    ("POST", "/tasks"),
    ("POST", "/tasks/batch"),
    ("POST", "/schedules"),
    ("PUT", "/schedules/fuzzed"),
    ("GET", "/tasks?status=PENDING&limit=5"),
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn app() -> axum::Router {
    static APP: OnceLock<axum::Router> = OnceLock::new();
    APP.get_or_init(|| {
        router(
            AppState {
                tasks: Arc::new(MemoryTaskStore::new()),
                partitions: 12,
                handlers: HandlerCatalog::fixed(["log".to_owned(), "noop".to_owned()]),
                cluster: None,
                metrics: Arc::default(),
                storage: "memory".into(),
                now: Arc::new(|| 1_800_000_000_000),
            },
            &ApiConfig::default(),
        )
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, uri) = ROUTES[pick as usize % ROUTES.len()];
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .unwrap();
    runtime().block_on(async {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            !status.is_server_error(),
            "{method} {uri} answered {status} to {:?}: {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&bytes)
        );
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
        if status.is_client_error() {
            assert!(
                json["error"].is_string() || json["message"].is_string(),
                "{json}"
            );
        }
        if method == "POST" && uri == "/tasks" && status.is_success() {
            let name = json["name"].as_str().expect("a name");
            assert!((1..=256).contains(&name.chars().count()));
            let attempts = json["maxAttempts"].as_u64().expect("maxAttempts");
            assert!((1..=100).contains(&attempts));
        }
    });
});
