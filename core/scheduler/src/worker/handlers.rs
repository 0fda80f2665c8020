//! The code that runs tasks: the [`TaskHandler`] trait, what a failed run tells the worker to do
//! next ([`HandlerError`]), the built-in `log` and `noop` handlers, and the registry a worker
//! picks a task's handler from ([`Handlers`]).

use crate::Task;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Code that runs a task.
#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs the task; an error fails this attempt and says what to do next.
    async fn run(&self, task: &Task) -> Result<(), HandlerError>;
}

/// A failed attempt, and what to do next. Every kind records its message as the task's last
/// error; a retry happens only while attempts remain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again after the worker's backoff (`worker.retry`).
    #[error("{0}")]
    Retry(String),
    /// Try again after this delay (the receiver said when: a `Retry-After`, a rate limit).
    #[error("{message}")]
    RetryAfter {
        /// How long to wait.
        delay: Duration,
        /// What went wrong.
        message: String,
    },
    /// Do not try again: the task is FAILED now, whatever attempts remain (the input can never
    /// succeed).
    #[error("{0}")]
    Fail(String),
}

impl HandlerError {
    /// The message recorded as the task's last error.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Retry(m) | HandlerError::Fail(m) => m,
            HandlerError::RetryAfter { message, .. } => message,
        }
    }
}

/// An error message is a failure to retry with the backoff.
impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::Retry(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::Retry(message.to_owned())
    }
}

/// Logs `Handling task <id> <name>`, as the original system did (the name escaped, so that a
/// client cannot forge log lines with control characters).
pub struct LogHandler;

#[async_trait]
impl TaskHandler for LogHandler {
    async fn run(&self, task: &Task) -> Result<(), HandlerError> {
        info!("Handling task {} {}", task.id, task.name.escape_debug());
        Ok(())
    }
}

/// Does nothing (for benchmarks).
pub struct NoopHandler;

#[async_trait]
impl TaskHandler for NoopHandler {
    async fn run(&self, _: &Task) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Handlers by name. A task runs with the handler its `handler` field names, else the one
/// registered under its `name`, else the default (`log`).
#[derive(Clone)]
pub struct Handlers {
    by_name: BTreeMap<String, Arc<dyn TaskHandler>>,
    default: Arc<dyn TaskHandler>,
}

impl Default for Handlers {
    fn default() -> Self {
        let mut handlers = Self {
            by_name: BTreeMap::new(),
            default: Arc::new(LogHandler),
        };
        handlers.register("log", Arc::new(LogHandler));
        handlers.register("noop", Arc::new(NoopHandler));
        handlers
    }
}

impl Handlers {
    /// Registers (or replaces) a handler.
    pub fn register(&mut self, name: &str, handler: Arc<dyn TaskHandler>) {
        self.by_name.insert(name.to_owned(), handler);
    }

    /// Sets the handler of tasks that name none that is registered.
    pub fn set_default(&mut self, handler: Arc<dyn TaskHandler>) {
        self.default = handler;
    }

    /// The registered names, sorted: what a worker offers.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// The name of the handler `task` runs with, for metrics: a registered name, `default`, or
    /// `unknown` (the task names a handler this worker lacks). Never the task's own name unless
    /// a handler is registered under it, so the label's values stay few.
    pub fn label_for<'a>(&'a self, task: &'a Task) -> &'a str {
        match &task.handler {
            Some(name) if self.by_name.contains_key(name) => name,
            Some(_) => "unknown",
            None if self.by_name.contains_key(&task.name) => &task.name,
            None => "default",
        }
    }

    /// The handler `task` runs with; a task naming a handler this worker lacks fails (and is
    /// retried: another worker may have it).
    pub(crate) fn for_task(&self, task: &Task) -> Result<Arc<dyn TaskHandler>, HandlerError> {
        if let Some(name) = &task.handler {
            return self.by_name.get(name).cloned().ok_or_else(|| {
                HandlerError::Retry(format!("no handler named {name:?} on this worker"))
            });
        }
        Ok(self
            .by_name
            .get(&task.name)
            .cloned()
            .unwrap_or_else(|| self.default.clone()))
    }
}
