//! Built-in task handlers that need I/O: `http` POSTs a task's payload to a URL.
//!
//! The task's payload names the request: `{"url": "https://host/path", "body": <any JSON>}`.
//! The body is POSTed as JSON (HTTP or HTTPS, through rustls with the Mozilla roots) with
//! `X-Rota-Task-Id`, `X-Rota-Worker`, `X-Rota-Attempt`, `X-Rota-Epoch` and
//! `Idempotency-Key: rota-task-<id>` headers (a task may run more than once after a failure,
//! so receivers can deduplicate). A 2xx status is success; anything else fails the attempt
//! with the status and the start of the response body (at most 512 bytes are read), and so
//! does the timeout: the whole request may take the task timeout. Redirects are not followed
//! (a 3xx fails the attempt), so a task cannot be sent on to a host its URL did not name.

use async_trait::async_trait;
use rota_core::task::Task;
use rota_core::task::worker::TaskHandler;
use std::time::Duration;

/// How much of an unsuccessful response's body an error quotes.
const QUOTED_BODY_BYTES: usize = 512;

/// The built-in handlers: `log` (the default), `noop` and `http`, whose request may take the
/// whole task timeout (`worker.task_timeout_ms`).
pub fn builtin(task_timeout: Duration) -> rota_core::task::worker::Handlers {
    let mut handlers = rota_core::task::worker::Handlers::default();
    handlers.register("http", std::sync::Arc::new(HttpHandler::new(task_timeout)));
    handlers
}

/// POSTs `payload.body` to `payload.url`.
pub struct HttpHandler {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpHandler {
    /// A handler whose requests may take `timeout` in all (connecting at most 10 s of it).
    pub fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rota/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        Self { client, timeout }
    }
}

/// The URL a task names, if it is one this handler can call.
fn target(task: &Task) -> Result<reqwest::Url, String> {
    let url = task
        .payload
        .get("url")
        .and_then(|u| u.as_str())
        .ok_or("the http handler needs payload.url")?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host in {url:?}"));
    }
    Ok(parsed)
}

#[async_trait]
impl TaskHandler for HttpHandler {
    async fn run(&self, task: &Task) -> Result<(), String> {
        let url = target(task)?;
        let body = task
            .payload
            .get("body")
            .cloned()
            .unwrap_or(serde_json::Value::Null)
            .to_string();
        let sent = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("x-rota-task-id", task.id.to_string())
            .header(
                "x-rota-worker",
                task.owner.as_ref().map_or("", |o| o.as_str()),
            )
            .header("x-rota-attempt", task.attempts.to_string())
            .header("x-rota-epoch", task.epoch.unwrap_or(0).to_string())
            .header("idempotency-key", format!("rota-task-{}", task.id))
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Err(format!("no response from {url} within {:?}", self.timeout));
            }
            Err(e) => return Err(format!("POST {url}: {}", describe(&e))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Quote the start of what the receiver said, never more.
        let mut quoted = Vec::new();
        while quoted.len() < QUOTED_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => quoted.extend_from_slice(&chunk),
                _ => break,
            }
        }
        quoted.truncate(QUOTED_BODY_BYTES);
        let text = String::from_utf8_lossy(&quoted);
        let text = text.trim();
        Err(if text.is_empty() {
            format!("{url} answered HTTP {}", status.as_u16())
        } else {
            format!("{url} answered HTTP {}: {text}", status.as_u16())
        })
    }
}

/// The error and its causes, which reqwest keeps apart ("error sending request" alone says
/// nothing of a refused connection).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(payload: serde_json::Value) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": 7, "name": "t", "payload": null, "handler": null, "partition_key": null,
            "partition": 0, "status": "RUNNING", "scheduled_at": 0, "attempts": 1,
            "max_attempts": 3, "last_error": null, "owner": "w1", "epoch": 2,
            "lease_until": null, "idempotency_key": null, "created_at": 0,
            "started_at": null, "finished_at": null
        }))
        .expect("a task");
        t.payload = payload;
        t
    }

    #[test]
    fn urls() {
        let ok = target(&task(
            serde_json::json!({"url": "https://[::1]:9000/hook?x=1"}),
        ))
        .unwrap();
        assert_eq!((ok.host_str(), ok.port()), (Some("[::1]"), Some(9000)));
        for bad in ["ftp://x", "http://", "not a url"] {
            assert!(
                target(&task(serde_json::json!({ "url": bad }))).is_err(),
                "{bad}"
            );
        }
        assert!(target(&task(serde_json::json!({}))).is_err());
    }
}
