//! What every role counts, in Prometheus's data model (`prometheus-client`): one [`Metrics`] per
//! process, shared by the roles it runs (a `rota dev` process sums its workers), registered
//! once and encoded for `/metrics`: the scheduler's own and the framework's
//! ([`ClusterMetrics`], which the controller and participants count into). Names follow
//! Prometheus's conventions: `_total` counters, `_seconds` histograms, base units. Every metric
//! is listed in `docs/production.md`.

use crate::store::StoreError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

pub use rota_cluster::metrics::{ClusterMetrics, TransitionLabels, duration_histogram, seconds};

/// Awaits `call`, observing how long it took in `histogram` (on tokio's clock).
pub async fn timed<T>(histogram: &Histogram, call: impl std::future::Future<Output = T>) -> T {
    let asked = tokio::time::Instant::now();
    let answer = call.await;
    histogram.observe(seconds(asked.elapsed()));
    answer
}

/// A task's handler, as registered (`default` for the default handler, `unknown` for a name no
/// handler has: bounded, unlike task names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    /// Handler name.
    pub handler: String,
}

/// A task-store call and how it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    /// The call (`claim`, `complete`, ...).
    pub call: String,
    /// [`ErrorKind::as_str`](crate::store::ErrorKind::as_str): `stale_epoch`, `invalid`,
    /// `conflict`, `timeout`, `unavailable` or `backend`.
    pub kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    /// Tasks created through this process's API.
    pub tasks_created: Counter,
    /// Tasks claimed, by handler.
    pub tasks_claimed: Family<HandlerLabel, Counter>,
    /// Attempts that succeeded, by handler.
    pub tasks_completed: Family<HandlerLabel, Counter>,
    /// Attempts that failed, by handler.
    pub tasks_failed: Family<HandlerLabel, Counter>,
    /// Failed attempts that will be retried, by handler.
    pub tasks_retried: Family<HandlerLabel, Counter>,
    /// Completions the store refused (the claim had moved on).
    pub completions_refused: Counter,
    /// Time from a task's due time to its start.
    pub start_lag: Histogram,
    /// How long handlers ran, by handler.
    pub task_duration: HistogramFamily<HandlerLabel>,
    /// Partitions this process's workers lead.
    pub partitions_owned: Gauge,
    /// Duration of claim calls.
    pub claim_duration: Histogram,
    /// Duration of completion writes (one per batch).
    pub completion_duration: Histogram,
    /// Failed task-store calls, by call and kind.
    pub store_errors: Family<StoreErrorLabels, Counter>,
    /// The framework's: the controller's and the participants'.
    pub cluster: Arc<ClusterMetrics>,
    /// Schedule ticks whose task this process's clocks created.
    pub schedule_ticks_fired: Counter,
    /// Schedule ticks fired again whose task existed already (refused by the store's
    /// uniqueness): zero unless two clocks fired the same tick.
    pub schedule_ticks_duplicate: Counter,
    /// Firings whose missed ticks their schedule's policy left out.
    pub schedule_ticks_skipped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            tasks_created: Counter::default(),
            tasks_claimed: Family::default(),
            tasks_completed: Family::default(),
            tasks_failed: Family::default(),
            tasks_retried: Family::default(),
            completions_refused: Counter::default(),
            start_lag: duration_histogram(),
            task_duration: Family::new_with_constructor(duration_histogram),
            partitions_owned: Gauge::default(),
            claim_duration: duration_histogram(),
            completion_duration: duration_histogram(),
            store_errors: Family::default(),
            cluster: Arc::default(),
            schedule_ticks_fired: Counter::default(),
            schedule_ticks_duplicate: Counter::default(),
            schedule_ticks_skipped: Counter::default(),
        }
    }
}

impl Metrics {
    /// A registry holding every metric, prefixed `rota_`.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("rota");
        r.register(
            "tasks_created",
            "Tasks created through this process's API",
            self.tasks_created.clone(),
        );
        r.register(
            "tasks_claimed",
            "Tasks claimed, by handler",
            self.tasks_claimed.clone(),
        );
        r.register(
            "tasks_completed",
            "Attempts that succeeded, by handler",
            self.tasks_completed.clone(),
        );
        r.register(
            "tasks_failed",
            "Attempts that failed, by handler",
            self.tasks_failed.clone(),
        );
        r.register(
            "tasks_retried",
            "Failed attempts that will be retried, by handler",
            self.tasks_retried.clone(),
        );
        r.register(
            "completions_refused",
            "Completions the store refused because the claim had moved on",
            self.completions_refused.clone(),
        );
        r.register_with_unit(
            "task_start_lag",
            "Time from a task's due time to its start",
            prometheus_client::registry::Unit::Seconds,
            self.start_lag.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "How long handlers ran, by handler",
            prometheus_client::registry::Unit::Seconds,
            self.task_duration.clone(),
        );
        r.register(
            "owned_partitions",
            "Partitions this process's workers lead",
            self.partitions_owned.clone(),
        );
        r.register_with_unit(
            "claim_duration",
            "Duration of claim calls to the task store",
            prometheus_client::registry::Unit::Seconds,
            self.claim_duration.clone(),
        );
        r.register_with_unit(
            "completion_batch_duration",
            "Duration of completion writes, one per batch",
            prometheus_client::registry::Unit::Seconds,
            self.completion_duration.clone(),
        );
        r.register(
            "store_errors",
            "Failed task-store calls, by call and kind",
            self.store_errors.clone(),
        );
        r.register(
            "schedule_ticks_fired",
            "Schedule ticks whose task this process's clocks created",
            self.schedule_ticks_fired.clone(),
        );
        r.register(
            "schedule_ticks_duplicate",
            "Schedule ticks fired again whose task existed already (zero unless two clocks fired one tick)",
            self.schedule_ticks_duplicate.clone(),
        );
        r.register(
            "schedule_ticks_skipped",
            "Firings whose missed ticks their schedule's policy left out",
            self.schedule_ticks_skipped.clone(),
        );
        self.cluster.register(&mut r);
        r
    }

    /// The text exposition (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }

    /// Counts a failed store call.
    pub fn store_error(&self, call: &str, error: &StoreError) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                call: call.to_owned(),
                kind: error.kind().as_str().to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric's exposed name (`# TYPE` lines), with a sample in each labelled family.
    fn exposed() -> std::collections::BTreeSet<String> {
        let m = Metrics::default();
        let handler = HandlerLabel {
            handler: "log".into(),
        };
        for family in [
            &m.tasks_claimed,
            &m.tasks_completed,
            &m.tasks_failed,
            &m.tasks_retried,
        ] {
            family.get_or_create(&handler).inc();
        }
        m.task_duration.get_or_create(&handler).observe(0.1);
        m.store_error("claim", &StoreError::Invalid("x".into()));
        m.cluster
            .transitions
            .get_or_create(&TransitionLabels {
                from: "OFFLINE".into(),
                to: "SLAVE".into(),
                result: "ok".into(),
            })
            .inc();
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').expect("name and type");
                match kind {
                    "counter" => format!("{name}_total"),
                    _ => name.to_owned(),
                }
            })
            .collect()
    }

    #[test]
    fn the_docs_list_every_metric_and_the_dashboard_uses_only_real_ones() {
        let exposed = exposed();
        assert_eq!(exposed.len(), 20, "{exposed:?}");
        let docs = include_str!("../../../docs/production.md");
        for name in &exposed {
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "{name} is not in the metrics table of docs/production.md"
            );
        }
        let dashboard = include_str!("../../../docs/grafana-dashboard.json");
        let mut used = 0;
        for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("rota_") {
                let base = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    exposed.contains(&format!("rota_{base}")),
                    "the dashboard queries rota_{name}, which no role exposes"
                );
                used += 1;
            }
        }
        assert!(used > 10, "the dashboard queries {used} metrics");
    }
}
