//! The invariant checker used by the cluster tests: a [`TransitionHandler`] wrapper that records
//! every handler call of every participant and checks, at every call, that
//! - no partition ever has more holders of its top state than the bound (never two MASTERs or
//!   LEADERs), counting a replica as a holder from the moment its transition into the top state
//!   starts until its transition out of it has finished;
//! - each grant of the top state carries an epoch never used before for that partition and
//!   greater than the epoch of every holder that had already stepped down (or crashed) when the
//!   grant started: a new holder always outranks the ones it supersedes. (With a bound above one,
//!   grants sent together may complete in any order, so only superseded holders are compared.)

use super::participant::{TransitionHandler, TransitionRequest};
use async_trait::async_trait;
use rota_model::{Epoch, InstanceId, PartitionId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// One recorded handler call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The request.
    pub request: TransitionRequest,
    /// Whether the handler succeeded.
    pub ok: bool,
}

#[derive(Default)]
struct State {
    /// (resource, partition) -> instances holding (or entering, or leaving) the top state.
    holders: BTreeMap<(String, PartitionId), BTreeSet<InstanceId>>,
    /// (resource, partition) -> epochs granted so far.
    granted: BTreeMap<(String, PartitionId), BTreeSet<Epoch>>,
    /// (resource, partition) -> instance -> epoch of its current grant.
    holding: BTreeMap<(String, PartitionId), BTreeMap<InstanceId, Epoch>>,
    /// (resource, partition) -> highest epoch of a holder that stepped down or crashed.
    superseded: BTreeMap<(String, PartitionId), Epoch>,
    calls: Vec<Call>,
    violations: Vec<String>,
}

impl State {
    fn step_down(&mut self, key: &(String, PartitionId), instance: &InstanceId) {
        if let Some(holders) = self.holders.get_mut(key) {
            holders.remove(instance);
        }
        if let Some(epoch) = self.holding.get_mut(key).and_then(|h| h.remove(instance)) {
            let superseded = self.superseded.entry(key.clone()).or_default();
            *superseded = (*superseded).max(epoch);
        }
    }
}

/// Shared record of all participants' transitions.
#[derive(Clone)]
pub struct Checker {
    top: String,
    bound: usize,
    state: Arc<Mutex<State>>,
}

impl Checker {
    /// A checker for a model whose top state is `top` with the given bound.
    pub fn new(top: &str, bound: usize) -> Self {
        Self {
            top: top.to_owned(),
            bound,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps a participant's handler.
    pub fn wrap(&self, inner: Arc<dyn TransitionHandler>) -> Arc<dyn TransitionHandler> {
        Arc::new(Checked {
            checker: self.clone(),
            inner,
        })
    }

    fn start(&self, r: &TransitionRequest) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let key = (r.resource.clone(), r.partition);
        if r.to == self.top.as_str() {
            let superseded = s.superseded.get(&key).copied().unwrap_or(0);
            let reused = !s.granted.entry(key.clone()).or_default().insert(r.epoch);
            if reused || r.epoch <= superseded {
                s.violations.push(format!(
                    "{}/{} granted to {} with epoch {} (reused: {reused}; superseded holders up to {superseded})",
                    r.resource, r.partition, r.instance, r.epoch
                ));
            }
            s.holding
                .entry(key.clone())
                .or_default()
                .insert(r.instance.clone(), r.epoch);
            let holders = s.holders.entry(key).or_default();
            holders.insert(r.instance.clone());
            if holders.len() > self.bound {
                let count = holders.len();
                let list = format!("{holders:?}");
                // The partition's recent history makes a violation explainable.
                let recent: Vec<String> = s
                    .calls
                    .iter()
                    .filter(|c| {
                        c.request.resource == r.resource && c.request.partition == r.partition
                    })
                    .rev()
                    .take(8)
                    .map(|c| {
                        format!(
                            "{} {}->{} e{} ok={}",
                            c.request.instance, c.request.from, c.request.to, c.request.epoch, c.ok
                        )
                    })
                    .collect();
                s.violations.push(format!(
                    "{}/{} has {count} holders of {} when {} starts {}->{}: {list}; last completed (newest first): {recent:?}",
                    r.resource, r.partition, self.top, r.instance, r.from, r.to
                ));
            }
        }
    }

    fn end(&self, r: &TransitionRequest, ok: bool) {
        let mut s = self.lock();
        if r.from == self.top.as_str() && ok {
            s.step_down(&(r.resource.clone(), r.partition), &r.instance);
        }
        s.calls.push(Call {
            request: r.clone(),
            ok,
        });
    }

    /// Records that a participant's process died: it holds nothing any more.
    pub fn crashed(&self, instance: &InstanceId) {
        let mut s = self.lock();
        let keys: Vec<_> = s.holders.keys().cloned().collect();
        for key in keys {
            s.step_down(&key, instance);
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Every violation seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Panics with every violation seen so far.
    pub fn assert_ok(&self) {
        let s = self.lock();
        assert!(
            s.violations.is_empty(),
            "invariant violations:\n{}",
            s.violations.join("\n")
        );
    }
}

struct Checked {
    checker: Checker,
    inner: Arc<dyn TransitionHandler>,
}

#[async_trait]
impl TransitionHandler for Checked {
    async fn on_transition(&self, request: &TransitionRequest) -> Result<(), String> {
        self.checker.start(request);
        let result = self.inner.on_transition(request).await;
        self.checker.end(request, result.is_ok());
        result
    }

    fn session_deadline(&self, deadline: Option<tokio::time::Instant>) {
        self.inner.session_deadline(deadline);
    }

    fn session_timeout(&self, granted: std::time::Duration) {
        self.inner.session_timeout(granted);
    }
}
