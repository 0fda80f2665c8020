//! What the framework's roles count, in Prometheus's data model (`prometheus-client`): the
//! controller's leadership, epoch and reconciles, and the transitions participants run. One
//! [`ClusterMetrics`] per process, shared by the roles it runs; a process that also runs the
//! scheduler registers these beside its own (`rota-scheduler`'s `Metrics`). Names follow
//! Prometheus's conventions: `_total` counters, `_seconds` histograms, base units.

use crate::participant::{TransitionHandler, TransitionRequest};
use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;

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

/// Buckets of durations, from 1 ms to about 33 s.
pub fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// Seconds, as histograms observe them.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The framework's metrics of one process.
#[derive(Debug)]
pub struct ClusterMetrics {
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
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            controller_leader: Gauge::default(),
            controller_epoch: Gauge::default(),
            reconcile_duration: duration_histogram(),
            reconcile_problems: Counter::default(),
            transitions: Family::default(),
        }
    }
}

impl ClusterMetrics {
    /// Registers every metric in `registry` (whose prefix, `rota` for the binary, names them).
    pub fn register(&self, r: &mut Registry) {
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
            Unit::Seconds,
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

struct CountTransitions {
    metrics: Arc<ClusterMetrics>,
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
