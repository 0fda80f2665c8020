//! Built-in task handlers that need I/O: `http` POSTs a task's payload to a URL.
//!
//! The task's payload names the request: `{"url": "https://host/path", "body": <any JSON>}`.
//! The body is POSTed as JSON (HTTP or HTTPS, through rustls with the Mozilla roots) with
//! `X-Rota-Task-Id`, `X-Rota-Worker`, `X-Rota-Attempt`, `X-Rota-Epoch` and
//! `Idempotency-Key: rota-task-<id>` headers (a task may run more than once after a failure,
//! so receivers can deduplicate). A 2xx status is success; anything else fails the attempt
//! with the status and the start of the response body (at most 512 bytes are read), and so
//! does the timeout: the whole request may take the task timeout. Redirects are not followed
//! (a 3xx fails the attempt), so a task cannot be sent on to a host its URL did not name; no
//! proxy is used, so the address checked is the address connected to.
//!
//! **Where**: only destinations `http.allow` permits ([`crate::destinations`]), checked on
//! every resolved address. **Signed**: with `http.secret` set, each request carries
//! `X-Rota-Signature: t=<ms>,v1=<hex>`, the HMAC-SHA256 with the secret of `<ms>.<body>`
//! (the request's time in milliseconds since the Unix epoch, a dot, the body as sent), so a
//! receiver can check that rota sent it, and when (reject old timestamps to stop replays).

use crate::destinations::Destinations;
use async_trait::async_trait;
use rota_scheduler::Task;
use rota_scheduler::worker::{HandlerError, TaskHandler};
use std::sync::Arc;
use std::time::Duration;

/// How much of an unsuccessful response's body an error quotes.
const QUOTED_BODY_BYTES: usize = 512;

/// The built-in handlers: `log` (the default), `noop` and `http`, whose request may take the
/// whole task timeout (`worker.task_timeout_ms`), to any destination but link-local and
/// metadata addresses, unsigned.
pub fn builtin(task_timeout: Duration) -> rota_scheduler::worker::Handlers {
    builtin_with(task_timeout, Destinations::default(), None)
}

/// The built-in handlers, the `http` one limited to `destinations` and signing with `secret`.
pub fn builtin_with(
    task_timeout: Duration,
    destinations: Destinations,
    secret: Option<String>,
) -> rota_scheduler::worker::Handlers {
    let mut handlers = rota_scheduler::worker::Handlers::default();
    handlers.register(
        "http",
        Arc::new(HttpHandler::new(task_timeout, destinations, secret)),
    );
    handlers
}

/// POSTs `payload.body` to `payload.url`.
pub struct HttpHandler {
    client: reqwest::Client,
    timeout: Duration,
    destinations: Arc<Destinations>,
    secret: Option<String>,
}

impl HttpHandler {
    /// A handler whose requests may take `timeout` in all (connecting at most 10 s of it), to
    /// what `destinations` permits, signed with `secret` if given.
    pub fn new(timeout: Duration, destinations: Destinations, secret: Option<String>) -> Self {
        let destinations = Arc::new(destinations);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                destinations: destinations.clone(),
            }))
            .user_agent(concat!("rota/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        Self {
            client,
            timeout,
            destinations,
            secret,
        }
    }
}

/// Resolves host names and keeps only the addresses `http.allow` permits: the connection is
/// made to one of those, so what was checked is what is called.
struct CheckedResolver {
    destinations: Arc<Destinations>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.destinations.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if let Some(why) = destinations.refuses_name(&host) {
                return Err(format!("refused: {why}").into());
            }
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = Vec::new();
            let allowed: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|a| match destinations.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.push(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused
                    .first()
                    .cloned()
                    .unwrap_or_else(|| format!("{host} resolves to no address"));
                return Err(format!("refused: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `t=<ms>,v1=<hex of HMAC-SHA256(secret, "<ms>.<body>")>`.
pub fn signature(secret: &str, timestamp_ms: i64, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp_ms},v1={hex}")
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
    /// Every failure is retried with the worker's backoff while attempts remain.
    async fn run(&self, task: &Task) -> Result<(), HandlerError> {
        self.post(task).await.map_err(HandlerError::Retry)
    }
}

impl HttpHandler {
    /// Sends the task's request; why it failed, for the task's last error.
    async fn post(&self, task: &Task) -> Result<(), String> {
        let url = target(task)?;
        // What the errors (a task's last error, the worker's log) show of it: never a password.
        let shown = redacted(&url);
        // A literal address is not resolved: check it here.
        let host = url.host_str().unwrap_or_default();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        if let Some(ip) = literal {
            self.destinations
                .check(host, ip)
                .map_err(|why| format!("POST {shown}: refused: {why}"))?;
        }
        let body = task
            .payload
            .get("body")
            .cloned()
            .unwrap_or(serde_json::Value::Null)
            .to_string();
        let mut request = self.client.post(url.clone());
        if let Some(secret) = &self.secret {
            let now = rota_scheduler::worker::wall_clock_ms();
            request = request.header("x-rota-signature", signature(secret, now, &body));
        }
        let sent = request
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
                return Err(format!(
                    "no response from {shown} within {:?}",
                    self.timeout
                ));
            }
            Err(e) => return Err(format!("POST {shown}: {}", describe(&e.without_url()))),
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
            format!("{shown} answered HTTP {}", status.as_u16())
        } else {
            format!("{shown} answered HTTP {}: {text}", status.as_u16())
        })
    }
}

/// `url` with its password, if it has one, replaced by `***`.
fn redacted(url: &reqwest::Url) -> reqwest::Url {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown
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

    /// The test receiver on loopback; its port and what it records.
    async fn receiver() -> (u16, rota_test_harness::receiver::Log) {
        let log = rota_test_harness::receiver::Log::default();
        let url = rota_test_harness::receiver::start(
            log.clone(),
            Duration::ZERO,
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .await;
        let port = reqwest::Url::parse(&url).unwrap().port().unwrap();
        (port, log)
    }

    /// Whether each request `log` recorded verifies with `secret`, in arrival order.
    fn verified(log: &rota_test_harness::receiver::Log, secret: &str) -> Vec<bool> {
        let log = log.lock().unwrap();
        let mut runs: Vec<_> = log.values().flatten().collect();
        runs.sort_by_key(|r| r.start);
        runs.iter()
            .map(|r| {
                let t: i64 = r
                    .signature
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let now = rota_scheduler::worker::wall_clock_ms();
                (now - t).abs() < 60_000 && r.signature == signature(secret, t, &r.body)
            })
            .collect()
    }

    fn handler(allow: &[&str], secret: &str) -> HttpHandler {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        HttpHandler::new(
            Duration::from_secs(5),
            Destinations::parse(&allow).unwrap(),
            Some(secret.into()),
        )
    }

    #[tokio::test]
    async fn the_handler_refuses_metadata_unlisted_hosts_and_names_resolving_elsewhere() {
        const SECRET: &str = "the-receivers-secret";
        let (port, log) = receiver().await;
        let post = |url: String| task(serde_json::json!({"url": url, "body": {"n": 1}}));
        let cases = [
            // The metadata address, with the default (empty) list and with a permissive one.
            (
                vec![],
                "http://169.254.169.254/latest/meta-data/".to_owned(),
                "link-local or cloud metadata",
            ),
            (
                vec!["0.0.0.0/0", "hooks.example.com"],
                "http://169.254.169.254/".to_owned(),
                "",
            ),
            // A host the list does not name (refused before any DNS lookup).
            (
                vec!["hooks.example.com"],
                "http://evil.example.org/hook".to_owned(),
                "evil.example.org is not in http.allow",
            ),
            (
                vec!["hooks.example.com"],
                format!("http://localhost:{port}/hook"),
                "localhost is not in http.allow",
            ),
            // A name that resolves to an address no listed network holds.
            (
                vec!["10.0.0.0/8"],
                format!("http://localhost:{port}/hook"),
                "localhost (127.0.0.1) is not in http.allow",
            ),
            // Listing a name does not open an address literal.
            (
                vec!["localhost"],
                "http://169.254.169.254/".to_owned(),
                "is not in http.allow",
            ),
        ];
        for (allow, url, why) in cases {
            let err = handler(&allow, SECRET)
                .run(&post(url.clone()))
                .await
                .expect_err(&format!("{url} was called with http.allow = {allow:?}"));
            let err = err.message();
            assert!(
                err.contains("refused") && err.contains(why),
                "{url} with {allow:?}: {err}"
            );
        }
        assert!(log.lock().unwrap().is_empty(), "a refused request arrived");
        // Allowed by name and by network: sent, signed, verified by the receiver.
        for allow in [vec!["localhost"], vec!["127.0.0.0/8"], vec![]] {
            handler(&allow, SECRET)
                .run(&post(format!("http://localhost:{port}/run")))
                .await
                .unwrap_or_else(|e| panic!("allowed by {allow:?}: {e}"));
        }
        assert_eq!(verified(&log, SECRET), vec![true, true, true]);
        // A receiver with another secret would not verify them.
        assert_eq!(
            verified(&log, "not-the-senders-secret"),
            vec![false, false, false]
        );
    }

    #[test]
    fn signatures_are_what_the_documented_check_computes() {
        // The value the Python snippet in docs/scheduler.md computes for these inputs.
        assert_eq!(
            signature("0123456789abcdef", 1_700_000_000_000, r#"{"n":1}"#),
            "t=1700000000000,v1=f1a2caddb7b9f22718d03acc2aef2b69564ffe606cc93161855c0d82c3fa1d41"
        );
    }

    #[tokio::test]
    async fn a_password_in_the_url_is_never_shown() {
        // Nothing listens on port 9 of loopback: the request fails, and says where it went.
        let url = "http://hook-user:s3cret-pass@127.0.0.1:9/run";
        let err = handler(&["127.0.0.0/8"], "k")
            .run(&task(serde_json::json!({ "url": url })))
            .await
            .unwrap_err();
        let said = err.message();
        assert!(!said.contains("s3cret-pass"), "{said}");
        assert!(said.contains("hook-user:***@127.0.0.1:9"), "{said}");
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
