//! Built-in task handlers that need I/O: `http` POSTs a task's payload to a URL.
//!
//! The task's payload names the request: `{"url": "http://host:port/path", "body": <any JSON>}`.
//! The body is POSTed as JSON with `X-Rota-Task-Id`, `X-Rota-Worker`, `X-Rota-Attempt`,
//! `X-Rota-Epoch` and `Idempotency-Key: rota-task-<id>` headers (a task may run more than once
//! after a failure, so receivers can deduplicate); a 2xx status is
//! success, anything else (or the timeout) fails the attempt. Plain `http://` only in this build.

use async_trait::async_trait;
use rota_core::task::Task;
use rota_core::task::worker::TaskHandler;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The built-in handlers: `log` (the default), `noop` and `http`, whose request may take the
/// whole task timeout (`worker.task_timeout_ms`).
pub fn builtin(task_timeout: Duration) -> rota_core::task::worker::Handlers {
    let mut handlers = rota_core::task::worker::Handlers::default();
    handlers.register(
        "http",
        std::sync::Arc::new(HttpHandler {
            timeout: task_timeout,
        }),
    );
    handlers
}

/// POSTs `payload.body` to `payload.url`.
pub struct HttpHandler {
    /// Whole-request timeout (connect, send, first response line).
    pub timeout: Duration,
}

#[derive(Debug)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err("https URLs are not supported by this build".into()),
        _ => return Err(format!("{url:?} is not an http:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

async fn post(target: &Target, task: &Task, body: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", target.host, target.port))?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-Rota-Task-Id: {}\r\nX-Rota-Worker: {}\r\nX-Rota-Attempt: {}\r\nX-Rota-Epoch: {}\r\n\
         Idempotency-Key: rota-task-{}\r\nConnection: close\r\n\r\n{body}",
        target.path,
        target.host,
        body.len(),
        task.id,
        task.owner.as_ref().map_or("", |o| o.as_str()),
        task.attempts,
        task.epoch.unwrap_or(0),
        task.id
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = vec![0u8; 12];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("read response: {e}"))?;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))
}

#[async_trait]
impl TaskHandler for HttpHandler {
    async fn run(&self, task: &Task) -> Result<(), String> {
        let url = task
            .payload
            .get("url")
            .and_then(|u| u.as_str())
            .ok_or("the http handler needs payload.url")?;
        let target = parse_url(url)?;
        let body = task
            .payload
            .get("body")
            .cloned()
            .unwrap_or(serde_json::Value::Null)
            .to_string();
        let status = tokio::time::timeout(self.timeout, post(&target, task, &body))
            .await
            .map_err(|_| format!("no response from {url} within {:?}", self.timeout))??;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("{url} answered HTTP {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:9000/hook?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/hook?x=1")
        );
        let t = parse_url("http://example").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        assert!(parse_url("https://x").unwrap_err().contains("https"));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
    }
}
