//! The webhook receiver the tests run tasks against (the built-in `http` handler posts each run
//! to it): it records every run as it starts (the worker, the partition epoch and the attempt
//! the request carries), when its work ends, and when the worker stopped waiting for it (the
//! answer sent, or the connection dropped under it, as by a worker that aborted its handler or
//! was killed). Like a real receiver, it finishes a run's work even if the worker hangs up.
//! The request's body and signature are kept, for tests of what the handler sends. A body with
//! `work_ms` (the task's `payload.body`, as the handler sends it) takes that long instead of the
//! receiver's default, for workloads that mix short runs with long ones.

use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One run of a task at the receiver.
#[derive(Clone, Debug)]
pub struct Run {
    /// The worker that sent it (`x-rota-worker`).
    pub worker: String,
    /// The partition epoch of its claim (`x-rota-epoch`).
    pub epoch: u64,
    /// Its attempt (`x-rota-attempt`).
    pub attempt: u32,
    /// When it arrived.
    pub start: Instant,
    /// The same, in milliseconds since the Unix epoch (to compare with a database's clock).
    pub start_ms: i64,
    /// When its work ended (`None` while it goes on).
    pub end: Option<Instant>,
    /// When the worker stopped waiting: the answer sent, or the connection dropped.
    pub caller_done: Option<Instant>,
    /// The same, in milliseconds since the Unix epoch.
    pub caller_done_ms: Option<i64>,
    /// `x-rota-signature`, as sent (empty without one).
    pub signature: String,
    /// The body, as sent.
    pub body: String,
}

impl Run {
    /// Whether the worker of this run stopped waiting for it (its answer, or the connection
    /// dropped as the worker died) before `later` began: the two never went on at once, as a
    /// worker sees it.
    pub fn over_before(&self, later: &Run) -> bool {
        self.caller_done.is_some_and(|done| done <= later.start)
    }
}

/// Checks that `runs` (one task's, sorted by start) went on one at a time: each began only
/// after its predecessor was over ([`Run::over_before`]). Panics naming `task` otherwise.
pub fn assert_one_at_a_time(task: &str, runs: &[Run]) {
    for pair in runs.windows(2) {
        let ok = pair[0].over_before(&pair[1]);
        assert!(
            ok,
            "{task}: a run began before the one before it was over: {runs:?}"
        );
    }
}

/// Every run, by task id (`x-rota-task-id`), in arrival order.
pub type Log = Arc<Mutex<HashMap<i64, Vec<Run>>>>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a closure when dropped: the receiver records when the worker stopped waiting for a run
/// whether the handler answered or the worker hung up (the handler's future is dropped).
pub struct OnDrop<F: FnOnce()>(pub Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A request header as text (empty if missing).
pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Starts a receiver on `on` (a free port) whose runs take `work`, recording into `log`; its
/// URL (`http://addr:port/run`).
pub async fn start(log: Log, work: Duration, on: IpAddr) -> String {
    let app = axum::Router::new().route(
        "/run",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let id: i64 = header(&headers, "x-rota-task-id").parse().unwrap_or(-1);
                let index = {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let runs = log.entry(id).or_default();
                    runs.push(Run {
                        worker: header(&headers, "x-rota-worker"),
                        epoch: header(&headers, "x-rota-epoch").parse().unwrap_or(0),
                        attempt: header(&headers, "x-rota-attempt").parse().unwrap_or(0),
                        start: Instant::now(),
                        start_ms: now_ms(),
                        end: None,
                        caller_done: None,
                        caller_done_ms: None,
                        signature: header(&headers, "x-rota-signature"),
                        body,
                    });
                    runs.len() - 1
                };
                let work = serde_json::from_str::<serde_json::Value>(
                    &log.lock().unwrap_or_else(|e| e.into_inner())[&id][index].body,
                )
                .ok()
                .and_then(|b| b["work_ms"].as_u64())
                .map_or(work, Duration::from_millis);
                let caller_log = log.clone();
                let _caller = OnDrop(Some(move || {
                    let mut log = caller_log.lock().unwrap_or_else(|e| e.into_inner());
                    let run = &mut log.get_mut(&id).expect("recorded")[index];
                    run.caller_done = Some(Instant::now());
                    run.caller_done_ms = Some(now_ms());
                }));
                let work = tokio::spawn(async move {
                    tokio::time::sleep(work).await;
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.get_mut(&id).expect("recorded")[index].end = Some(Instant::now());
                });
                let _ = work.await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((on, 0))
        .await
        .expect("a port for the receiver");
    let url = format!("http://{}/run", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Runs going on now (started, the worker still waiting), of `worker` or of any.
pub fn going_on(log: &Log, worker: Option<&str>) -> usize {
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .flatten()
        .filter(|r| r.caller_done.is_none() && worker.is_none_or(|w| r.worker == w))
        .count()
}
