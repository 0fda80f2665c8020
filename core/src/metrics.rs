//! What every role counts, in Prometheus's data model (`prometheus-client`): one [`Metrics`] per
//! process, shared by the roles it runs (a `rota dev` process sums its workers), registered
//! once and encoded for `/metrics`. Names follow Prometheus's conventions: `_total` counters,
//! `_seconds` histograms, base units. Every metric is listed in `docs/production.md`.

use crate::cluster::participant::{TransitionHandler, TransitionRequest};
use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

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
    /// `stale_epoch`, `invalid`, `unavailable`, `timeout` or `backend`.
    pub kind: String,
}

/// A transition a participant ran and its outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// From state.
    pub from: String,
    /// To state.
    pub to: String,
    /// `ok` or `error`.
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of durations, from 1 ms to about 33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

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
    /// 1 while a controller of this process leads.
    pub controller_leader: Gauge,
    /// The leader epoch of this process's leading controller (0 when none leads here).
    pub controller_epoch: Gauge,
    /// Duration of a leader's reconcile (read the snapshot, decide, write).
    pub reconcile_duration: Histogram,
    /// Problems a leader's reconciles found (a record it cannot read, a resource the rebalancer
    /// refused, which then keeps its previous ideal state).
    pub reconcile_problems: Counter,
    /// Transitions participants ran, by states and outcome.
    pub transitions: Family<TransitionLabels, Counter>,
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
            controller_leader: Gauge::default(),
            controller_epoch: Gauge::default(),
            reconcile_duration: duration_histogram(),
            reconcile_problems: Counter::default(),
            transitions: Family::default(),
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
            "controller_leader",
            "1 while a controller of this process leads the cluster",
            self.controller_leader.clone(),
        );
        r.register(
            "controller_epoch",
            "Leader epoch of this process's leading controller (0: none leads here)",
            self.controller_epoch.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "Duration of a leader's reconcile: read, decide, write",
            prometheus_client::registry::Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_problems",
            "Problems reconciles found (unreadable records, resources the rebalancer refused)",
            self.reconcile_problems.clone(),
        );
        r.register(
            "transitions",
            "State transitions participants ran, by states and outcome",
            self.transitions.clone(),
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
    pub fn store_error(&self, call: &str, error: &crate::task::StoreError) {
        use crate::task::StoreError;
        let kind = match error {
            StoreError::StaleEpoch { .. } => "stale_epoch",
            StoreError::Invalid(_) => "invalid",
            StoreError::Unavailable(m) if m.contains("no answer from the task store") => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Backend(_) => "backend",
        };
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                call: call.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Wraps a participant's transition handler so that every transition is counted.
    pub fn count_transitions(
        self: &Arc<Self>,
        handler: Arc<dyn TransitionHandler>,
    ) -> Arc<dyn TransitionHandler> {
        Arc::new(CountTransitions {
            metrics: self.clone(),
            handler,
        })
    }
}

/// Seconds, as histograms observe them.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

struct CountTransitions {
    metrics: Arc<Metrics>,
    handler: Arc<dyn TransitionHandler>,
}

#[async_trait]
impl TransitionHandler for CountTransitions {
    async fn on_transition(&self, t: &TransitionRequest) -> Result<(), String> {
        let result = self.handler.on_transition(t).await;
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                from: t.from.to_string(),
                to: t.to.to_string(),
                result: if result.is_ok() { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        result
    }

    fn session_deadline(&self, deadline: Option<tokio::time::Instant>) {
        self.handler.session_deadline(deadline);
    }

    fn session_timeout(&self, granted: Duration) {
        self.handler.session_timeout(granted);
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
        m.store_error("claim", &crate::task::StoreError::Invalid("x".into()));
        m.transitions
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
        let docs = include_str!("../../docs/production.md");
        for name in &exposed {
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "{name} is not in the metrics table of docs/production.md"
            );
        }
        let dashboard = include_str!("../../docs/grafana-dashboard.json");
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
