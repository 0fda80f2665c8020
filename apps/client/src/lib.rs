//! # rota-client
//!
//! A typed client of rota's REST API: every endpoint as a call ([`Client`]), the API's wire
//! types (the server's OpenAPI document is made of the same types), bearer tokens and HTTPS
//! with a private certificate authority.
//!
//! ```no_run
//! use rota_client::{Client, CreateTask, TaskQuery, TaskStatus};
//!
//! # async fn example() -> Result<(), rota_client::Error> {
//! let rota = Client::builder("http://127.0.0.1:8080")
//!     .token(std::env::var("ROTA_TOKEN").ok())
//!     .build()?;
//! let created = rota
//!     .create_task(
//!         &CreateTask::new("send-invoice")
//!             .due("2030-01-01T09:00:00Z")
//!             .payload(&serde_json::json!({"customer": 42})),
//!         Some("invoice-42"),
//!     )
//!     .await?;
//! println!("task {} is {:?}", created.value.id, created.value.status);
//! let failed = rota
//!     .list_tasks(&TaskQuery {
//!         status: Some(TaskStatus::Failed),
//!         ..TaskQuery::default()
//!     })
//!     .await?;
//! for task in failed.tasks {
//!     println!("{} failed: {:?}", task.id, task.last_error);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! An answer the API refuses comes back as [`Error::Api`], with the status and the stable
//! [`ErrorCode`]; one that cannot be sent or read as [`Error::Transport`] or [`Error::Decode`].

mod operations;
mod schedules;
mod tasks;

pub use operations::{
    ClusterStatus, ErrorBody, ErrorCode, Health, Holder, InstanceStatus, Leader, Maintenance,
    PartitionStatus,
};
pub use schedules::{
    Missed, RunView, ScheduleBody, SchedulePage, ScheduleView, TaskBody, Triggered,
};
pub use tasks::{
    BacklogView, BatchCreated, CreateBatch, CreateTask, MAX_ATTEMPTS, MAX_BATCH, MAX_NAME,
    TaskPage, TaskQuery, TaskStatus, TaskView,
};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error.
    #[error("HTTP {status}: {} ({})", body.message, body.error)]
    Api {
        /// The status.
        status: u16,
        /// Its code and message.
        body: ErrorBody,
    },
    /// The request could not be sent, or its answer not received.
    #[error("{0}")]
    Transport(String),
    /// The answer is not what the API's document says.
    #[error("HTTP {status}: unexpected answer: {reason}")]
    Decode {
        /// The status.
        status: u16,
        /// What is wrong with it.
        reason: String,
    },
    /// The client was set up wrongly (a URL that is not one, a certificate that is not PEM).
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The API's error code, when the API answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { body, .. } => Some(body.error),
            _ => None,
        }
    }

    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A create's answer: what was stored, and whether this call created it (`false`: the
/// idempotency key named a task an earlier request created, or the schedule exists with this
/// very definition; it is returned as it is).
#[derive(Clone, Debug, PartialEq)]
pub struct Created<T> {
    /// The task or schedule.
    pub value: T,
    /// Created by this call.
    pub created: bool,
}

/// A raw answer: the status and the body's bytes.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// How to reach the API: [`Client::builder`].
#[derive(Debug)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <token>` (an API with tokens needs one); `None` or a blank
    /// token sends none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        self
    }

    /// Trusts this certificate authority (PEM) besides the usual roots, for an API whose
    /// certificate a private authority signed.
    pub fn ca_certificate(mut self, pem: &[u8]) -> Self {
        self.ca_pem = Some(pem.to_vec());
        self
    }

    /// Gives up on a call after `timeout` (default: none).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        let mut base = self.base.trim().to_owned();
        if !base.contains("://") {
            base = format!("http://{base}");
        }
        let base = Url::parse(base.trim_end_matches('/'))
            .map_err(|e| Error::Config(format!("{:?} is not a URL: {e}", self.base)))?;
        let mut http = reqwest::Client::builder().use_rustls_tls();
        if let Some(pem) = &self.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Config(format!("the certificate is not PEM: {e}")))?;
            http = http.add_root_certificate(ca);
        }
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: self.token,
        })
    }
}

/// A client of one rota API. Cheap to clone; connections are kept alive and shared.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `base` (`http://host:port`, `https://...`, or `host:port`).
    pub fn new(base: &str) -> Result<Self, Error> {
        Self::builder(base).build()
    }

    /// A client to set up: token, certificate authority, timeout.
    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_owned(),
            token: None,
            ca_pem: None,
            timeout: None,
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Sends a request as given and returns the answer as it came, whatever its status: for
    /// what the typed calls do not cover (and for tests of the API's refusals).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Error> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::Config(format!("{method:?} is not a method: {e}")))?;
        let url = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?.to_vec();
        Ok(Answer { status, body })
    }

    /// Sends JSON (or nothing) and reads the answer as `T` when its status is `expected`, as
    /// [`Error::Api`] when it is an error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&impl serde::Serialize>,
        expected: &[StatusCode],
    ) -> Result<(u16, T), Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Config(format!("cannot write the request: {e}")))?;
        let mut all = headers.to_vec();
        if body.is_some() {
            all.push(("content-type", "application/json"));
        }
        let answer = self.send(method, path, &all, body).await?;
        read(answer, expected)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let (_, value) = self
            .call("GET", path, &[], None::<&()>, &[StatusCode::OK])
            .await?;
        Ok(value)
    }

    /// A request with a JSON body.
    async fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &impl serde::Serialize,
        expected: &[StatusCode],
    ) -> Result<T, Error> {
        let (_, value) = self.call(method, path, &[], Some(body), expected).await?;
        Ok(value)
    }

    /// A create (or a put): 201 with what was created, or 200 with what exists already.
    async fn create<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &impl serde::Serialize,
    ) -> Result<Created<T>, Error> {
        let expected = [StatusCode::CREATED, StatusCode::OK];
        let (status, value) = self
            .call(method, path, headers, Some(body), &expected)
            .await?;
        let created = status == StatusCode::CREATED.as_u16();
        Ok(Created { value, created })
    }

    async fn post_empty<T: DeserializeOwned>(
        &self,
        path: &str,
        expected: &[StatusCode],
    ) -> Result<T, Error> {
        let (_, value) = self.call("POST", path, &[], None::<&()>, expected).await?;
        Ok(value)
    }

    /// `POST /tasks`: creates a task; with an idempotency key, a repeat returns the original.
    pub async fn create_task(
        &self,
        task: &CreateTask,
        idempotency_key: Option<&str>,
    ) -> Result<Created<TaskView>, Error> {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| ("idempotency-key", k))
            .into_iter()
            .collect();
        self.create("POST", "/tasks", &headers, task).await
    }

    /// `POST /tasks/batch`: creates up to 1,000 tasks atomically; the tasks in request order.
    pub async fn create_tasks(&self, tasks: &[CreateTask]) -> Result<Vec<TaskView>, Error> {
        #[derive(serde::Serialize)]
        struct Batch<'a> {
            tasks: &'a [CreateTask],
        }
        let batch = Batch { tasks };
        let created: BatchCreated = self
            .send_json("POST", "/tasks/batch", &batch, &[StatusCode::CREATED])
            .await?;
        Ok(created.tasks)
    }

    /// `GET /tasks/{id}`.
    pub async fn task(&self, id: i64) -> Result<TaskView, Error> {
        self.get(&format!("/tasks/{id}")).await
    }

    /// `GET /tasks`: a page of tasks by increasing id.
    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, Error> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(status) = query.status {
            let name = serde_json::to_value(status).map_err(|e| Error::Config(e.to_string()))?;
            params.push(("status", name.as_str().unwrap_or_default().to_owned()));
        }
        if let Some(name) = &query.name {
            params.push(("name", name.clone()));
        }
        if let Some(limit) = query.limit {
            params.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &query.cursor {
            params.push(("cursor", cursor.clone()));
        }
        self.get(&format!("/tasks{}", query_string(&params))).await
    }

    /// `DELETE /tasks/{id}`: cancels a PENDING task (409 once it runs or ran).
    pub async fn cancel_task(&self, id: i64) -> Result<TaskView, Error> {
        let path = format!("/tasks/{id}");
        let ok = [StatusCode::OK];
        let (_, task) = self.call("DELETE", &path, &[], None::<&()>, &ok).await?;
        Ok(task)
    }

    /// `GET /tasks/backlog`: how many tasks are PENDING and RUNNING.
    pub async fn backlog(&self) -> Result<BacklogView, Error> {
        self.get("/tasks/backlog").await
    }

    /// `POST /schedules`: creates a schedule (a repeat of the same definition returns it).
    pub async fn create_schedule(
        &self,
        schedule: &ScheduleBody,
    ) -> Result<Created<ScheduleView>, Error> {
        self.create("POST", "/schedules", &[], schedule).await
    }

    /// `PUT /schedules/{name}`: creates or replaces a schedule.
    pub async fn put_schedule(
        &self,
        name: &str,
        schedule: &ScheduleBody,
    ) -> Result<Created<ScheduleView>, Error> {
        let path = format!("/schedules/{}", escape(name));
        self.create("PUT", &path, &[], schedule).await
    }

    /// `GET /schedules/{name}`: with its next fire times and its last runs.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleView, Error> {
        self.get(&format!("/schedules/{}", escape(name))).await
    }

    /// `GET /schedules`: a page of schedules by name, after `after`.
    pub async fn schedules(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<SchedulePage, Error> {
        let mut params = Vec::new();
        if let Some(after) = after {
            params.push(("after", after.to_owned()));
        }
        if let Some(limit) = limit {
            params.push(("limit", limit.to_string()));
        }
        self.get(&format!("/schedules{}", query_string(&params)))
            .await
    }

    /// Every schedule, page after page.
    pub async fn all_schedules(&self) -> Result<Vec<ScheduleView>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.schedules(after.as_deref(), Some(1000)).await?;
            all.extend(page.schedules);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `DELETE /schedules/{name}` (its tasks stay).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        let answer = self
            .send("DELETE", &format!("/schedules/{}", escape(name)), &[], None)
            .await?;
        read_empty(answer, StatusCode::NO_CONTENT)
    }

    /// `POST /schedules/{name}/pause`.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleView, Error> {
        self.post_empty(
            &format!("/schedules/{}/pause", escape(name)),
            &[StatusCode::OK],
        )
        .await
    }

    /// `POST /schedules/{name}/resume`.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleView, Error> {
        self.post_empty(
            &format!("/schedules/{}/resume", escape(name)),
            &[StatusCode::OK],
        )
        .await
    }

    /// `POST /schedules/{name}/trigger`: fires it once now; the task it created.
    pub async fn trigger_schedule(&self, name: &str) -> Result<Triggered, Error> {
        self.post_empty(
            &format!("/schedules/{}/trigger", escape(name)),
            &[StatusCode::CREATED],
        )
        .await
    }

    /// `GET /cluster`: leader, instances, partitions (needs the `admin` scope).
    pub async fn cluster(&self) -> Result<ClusterStatus, Error> {
        self.get("/cluster").await
    }

    /// `POST /cluster/instances/{id}/enable` or `.../disable`: gives an instance replicas
    /// again, or moves every replica off it (it stays connected).
    pub async fn set_instance_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<ClusterStatus, Error> {
        let action = if enabled { "enable" } else { "disable" };
        self.post_empty(
            &format!("/cluster/instances/{}/{action}", escape(id)),
            &[StatusCode::OK],
        )
        .await
    }

    /// `PUT /cluster/maintenance`: nothing moves (except to restore lost top states) while on.
    pub async fn set_maintenance(&self, on: bool) -> Result<ClusterStatus, Error> {
        let body = Maintenance { on };
        self.send_json("PUT", "/cluster/maintenance", &body, &[StatusCode::OK])
            .await
    }

    /// `POST /cluster/rebalance`: asks the leading controller to reconcile now.
    pub async fn rebalance(&self) -> Result<ClusterStatus, Error> {
        self.post_empty("/cluster/rebalance", &[StatusCode::ACCEPTED])
            .await
    }

    /// `GET /healthz`: the process is up.
    pub async fn healthz(&self) -> Result<Health, Error> {
        self.get("/healthz").await
    }

    /// `GET /readyz`: the task store answers and a controller leads.
    pub async fn readyz(&self) -> Result<Health, Error> {
        self.get("/readyz").await
    }

    /// `GET /metrics`: the OpenMetrics text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let answer = self.send("GET", "/metrics", &[], None).await?;
        if answer.status != 200 {
            return Err(api_error(answer));
        }
        String::from_utf8(answer.body).map_err(|e| Error::Decode {
            status: 200,
            reason: e.to_string(),
        })
    }

    /// `GET /openapi.json`: the API's document.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.get("/openapi.json").await
    }
}

fn transport(e: reqwest::Error) -> Error {
    // The error and its causes, which reqwest keeps apart ("error sending request" alone says
    // nothing of a refused connection).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    Error::Transport(text)
}

/// The answer as `T` when its status is expected; an error otherwise.
fn read<T: DeserializeOwned>(answer: Answer, expected: &[StatusCode]) -> Result<(u16, T), Error> {
    if !expected.iter().any(|s| s.as_u16() == answer.status) {
        return Err(api_error(answer));
    }
    serde_json::from_slice(&answer.body)
        .map(|value| (answer.status, value))
        .map_err(|e| Error::Decode {
            status: answer.status,
            reason: e.to_string(),
        })
}

fn read_empty(answer: Answer, expected: StatusCode) -> Result<(), Error> {
    if answer.status == expected.as_u16() {
        Ok(())
    } else {
        Err(api_error(answer))
    }
}

/// An answer that is not the one expected: the API's error, or what it was if not one.
fn api_error(answer: Answer) -> Error {
    match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(body) => Error::Api {
            status: answer.status,
            body,
        },
        Err(_) => Error::Decode {
            status: answer.status,
            reason: format!(
                "not an error body: {}",
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
            ),
        },
    }
}

/// `?k=v&...`, each part percent-encoded; empty for no parameters.
fn query_string(params: &[(&str, String)]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", escape(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a path segment or a
/// query value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_paths_are_escaped() {
        assert_eq!(escape("a b/c:ü"), "a%20b%2Fc%3A%C3%BC");
        assert_eq!(
            query_string(&[("name", "x&y".into()), ("limit", "5".into())]),
            "?name=x%26y&limit=5"
        );
        assert_eq!(query_string(&[]), "");
    }

    #[test]
    fn a_base_without_scheme_is_http_and_a_bad_one_is_refused() {
        let c = Client::new("127.0.0.1:8080").unwrap();
        assert_eq!(c.base().as_str(), "http://127.0.0.1:8080/");
        assert!(matches!(Client::new("http://[::1"), Err(Error::Config(_))));
    }

    #[test]
    fn refusals_are_read_as_the_apis_errors() {
        let answer = Answer {
            status: 404,
            body: br#"{"error":"not_found","message":"no task 7"}"#.to_vec(),
        };
        let e = read::<TaskView>(answer, &[StatusCode::OK]).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(404), Some(ErrorCode::NotFound))
        );
        assert_eq!(e.to_string(), "HTTP 404: no task 7 (not_found)");
    }
}
