//! A deadline on every call of a task store: [`Deadlined`] wraps any [`TaskStore`] so that a
//! call with no answer in time fails as [`StoreError::Timeout`] (which means "may have been
//! applied": the caller treats it as it treats a lost connection). A store that hangs (a frozen
//! database, a half-open connection) so never holds a worker, an API request or a step-down
//! for longer than the deadline; the backend's own limits (PostgreSQL's `statement_timeout`)
//! end the work on the server side too.

use super::{Call, Layer, Layered, Pending, StoreError, TaskStore};
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The layer: a time limit on each call, and (optionally) every failed call counted.
pub struct Deadline {
    limit: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl Deadline {
    /// Each call bounded by `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            metrics: None,
        }
    }
}

#[async_trait]
impl Layer for Deadline {
    async fn around<T: Send + 'static>(
        &self,
        call: Call<'_>,
        inner: Pending<T>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.limit, inner)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Timeout(format!(
                    "{}: no answer from the task store within {:?}",
                    call.name(),
                    self.limit
                )))
            });
        if let (Err(e), Some(metrics)) = (&result, &self.metrics) {
            metrics.store_error(call.name(), e);
        }
        result
    }
}

/// A task store whose every call ends within a limit.
pub type Deadlined = Layered<Deadline, dyn TaskStore>;

impl Deadlined {
    /// `inner`, with each call bounded by `limit`.
    pub fn with_deadline(inner: Arc<dyn TaskStore>, limit: Duration) -> Self {
        Layered::new(Deadline::new(limit), inner)
    }

    /// Counts every failed call (by call and kind) in `metrics`.
    pub fn counting_errors(self, metrics: Arc<Metrics>) -> Self {
        let limit = self.layer().limit;
        Layered::new(
            Deadline {
                limit,
                metrics: Some(metrics),
            },
            self.inner().clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AcquirePartition;
    use rota_model::InstanceId;

    /// A call of a store that hangs.
    fn hung<T: Send + 'static>() -> Pending<T> {
        Box::pin(std::future::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_fails_as_a_timeout_at_the_deadline() {
        let deadline = Deadline::new(Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let grant = AcquirePartition {
            partition: 0,
            owner: InstanceId::new("w"),
            epoch: 1,
            now: 0,
        };
        let call = Call::Acquire(&grant);
        let err = deadline.around(call, hung::<u64>()).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(err.retryable() && !err.certainly_not_applied(), "{err}");
        assert!(err.to_string().contains("acquire"), "{err}");
        let answered: Pending<u64> = Box::pin(async { Ok(7) });
        assert_eq!(deadline.around(call, answered).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_calls_are_counted_by_call_and_kind() {
        let metrics = Arc::new(Metrics::default());
        let deadline = Deadline {
            limit: Duration::from_secs(1),
            metrics: Some(metrics.clone()),
        };
        let _ = deadline.around(Call::Backlog, hung::<()>()).await;
        let _ = deadline.around(Call::Backlog, hung::<()>()).await;
        let text = metrics.encode();
        assert!(
            text.contains(r#"rota_store_errors_total{call="backlog",kind="timeout"} 2"#),
            "{text}"
        );
    }
}
