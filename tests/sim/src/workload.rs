//! What a seed makes happen: the tasks a client creates through the API, and the faults, at
//! their times.

use crate::cluster::Action;
use crate::history::History;
use crate::rng::Rng;
use crate::{EPOCH_MS, FAULT_WINDOW, TIMEOUT};
use rota_scheduler::{Millis, TaskId};
use std::time::Duration;
use tokio::time::Instant;

/// One task the workload creates through the API.
pub(crate) struct Planned {
    pub(crate) at: Duration,
    pub(crate) key: String,
    pub(crate) body: serde_json::Value,
}

/// The workload: `n` tasks over the first 100 s, some due at once, some up to 30 s later;
/// most short, some taking seconds; some failing their first attempts; some sharing a
/// partition key.
pub(crate) fn plan_workload(rng: &mut Rng) -> Vec<Planned> {
    let n = rng.range(40, 160);
    let mut planned: Vec<Planned> = (0..n)
        .map(|i| {
            let at = Duration::from_millis(rng.range(0, 100_000));
            let due = EPOCH_MS + at.as_millis() as Millis + rng.range(0, 30_000) as Millis;
            let ms = if rng.chance(30) {
                rng.range(1_000, 5_000)
            } else {
                rng.range(10, 500)
            };
            let fail = if rng.chance(15) { rng.range(1, 3) } else { 0 };
            let mut body = serde_json::json!({
                "name": format!("t{i}"),
                "payload": {"ms": ms, "fail": fail},
                "maxAttempts": 10,
            });
            if rng.chance(70) {
                let due = chrono::DateTime::from_timestamp_millis(due).expect("a time");
                body["scheduledTime"] = due
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    .into();
            }
            if rng.chance(30) {
                body["partitionKey"] = format!("k{}", rng.range(0, 5)).into();
            }
            Planned {
                at,
                key: format!("sim-{i}"),
                body,
            }
        })
        .collect();
    planned.sort_by_key(|p| p.at);
    planned
}

/// The faults: 3 to 12 at random times in the fault window.
pub(crate) fn plan_faults(rng: &mut Rng) -> Vec<(Duration, Action)> {
    let count = rng.range(3, 13);
    let timeout = TIMEOUT.as_millis() as u64;
    (0..count)
        .map(|_| {
            let at =
                Duration::from_millis(rng.range(5_000, FAULT_WINDOW.as_millis() as u64 - 10_000));
            let d = Duration::from_millis(rng.range(500, 3 * timeout));
            let action = match rng.range(0, 17) {
                0 => Action::CrashWorker,
                1 => Action::StopWorker,
                2 => Action::JoinWorker,
                3 => Action::ExpireWorkerSession,
                4 => Action::CutWorker(d),
                5 => Action::FreezeWorker(d.max(TIMEOUT + Duration::from_secs(2))),
                6 => Action::StoreDown(d),
                7 => Action::StoreFailures(rng.range(1, 6) as u32),
                8 => Action::ApiStoreFailures(rng.range(1, 4) as u32),
                9 => Action::HoldWatches(d),
                10 => Action::DropWatches,
                11 => Action::CrashController,
                12 => Action::CutController(d),
                13 => Action::LateControllerWrite(TIMEOUT * 2),
                14 => Action::ZoneLoss(d),
                15 => Action::Maintenance(d),
                _ => Action::Disable(d),
            };
            (at, action)
        })
        .collect()
}

/// Creates the planned tasks through the API's router, each at its time, retrying a 5xx with
/// the same idempotency key as a client would; returns the ids accepted.
pub(crate) async fn client(
    router: axum::Router,
    planned: Vec<Planned>,
    start: Instant,
    history: History,
) -> Vec<TaskId> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut ids = Vec::new();
    for p in planned {
        tokio::time::sleep_until(start + p.at).await;
        loop {
            let request = axum::http::Request::builder()
                .method("POST")
                .uri("/tasks")
                .header("content-type", "application/json")
                .header("idempotency-key", &p.key)
                .body(axum::body::Body::from(p.body.to_string()))
                .expect("a request");
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if status.is_success() {
                let id = json["id"].as_i64().expect("a task id");
                history.event(format!("created task {id} ({})", p.key));
                ids.push(id);
                break;
            }
            if status.is_server_error() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            history.violation(format!(
                "the API refused a valid task with {status}: {}",
                String::from_utf8_lossy(&body)
            ));
            break;
        }
    }
    ids
}
