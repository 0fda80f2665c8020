//! What happened in one simulated run, and the invariants checked as it happens: every handler
//! run (with its node and times), every claim and completion the task store applied (checked
//! against the partition's latest grant at that moment), every controller write the
//! coordination store applied (checked against the leader epoch at that moment), and a trace of
//! events whose digest shows that a seed replays exactly.

use rota_model::{Epoch, InstanceId};
use rota_scheduler::{Claim, Completion, Task, TaskId, TaskStatus};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// Shared record of one run. Cloning gives another handle.
#[derive(Clone)]
pub struct History(Arc<Mutex<State>>);

/// One handler run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Where it ran.
    pub node: String,
    /// Simulated milliseconds at its start.
    pub start: u64,
    /// At its end (`None` while it runs).
    pub end: Option<u64>,
}

/// Counts for the report.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Handler runs.
    pub runs: u64,
    /// Claims and completions the store refused (a fence at work).
    pub refused_completions: u64,
    /// Controller writes refused by the leader fence.
    pub refused_controller_writes: u64,
    /// Faults injected.
    pub faults: u64,
}

struct State {
    start: Instant,
    trace: Vec<String>,
    violations: Vec<String>,
    runs: BTreeMap<TaskId, Vec<Run>>,
    /// Partition -> the latest grant the store recorded.
    owners: BTreeMap<u32, (InstanceId, Epoch)>,
    /// Controller node -> the epoch it last won.
    leaders: BTreeMap<String, u64>,
    counts: Counts,
}

impl History {
    /// An empty history, its clock starting now (tokio's clock).
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(State {
            start: Instant::now(),
            trace: Vec::new(),
            violations: Vec::new(),
            runs: BTreeMap::new(),
            owners: BTreeMap::new(),
            leaders: BTreeMap::new(),
            counts: Counts::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulated milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        self.lock().start.elapsed().as_millis() as u64
    }

    /// Records an event in the trace.
    pub fn event(&self, text: impl AsRef<str>) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        s.trace.push(format!("{at:>8} {}", text.as_ref()));
    }

    /// Records a fault in the trace and counts it.
    pub fn fault(&self, text: impl AsRef<str>) {
        self.lock().counts.faults += 1;
        self.event(format!("FAULT {}", text.as_ref()));
    }

    /// Records a broken invariant (and the trace's event for it).
    pub fn violation(&self, text: impl AsRef<str>) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        let line = format!("at {at} ms: {}", text.as_ref());
        s.trace.push(format!("{at:>8} VIOLATION {}", text.as_ref()));
        s.violations.push(line);
    }

    /// A handler run starts: no other run of the task may be going on. Returns its index.
    pub fn run_started(&self, node: &str, task: TaskId, attempt: u32) -> usize {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis() as u64;
        s.counts.runs += 1;
        s.trace
            .push(format!("{at:>8} run {task} attempt {attempt} on {node}"));
        let runs = s.runs.entry(task).or_default();
        let overlapping: Vec<String> = runs
            .iter()
            .filter(|r| r.end.is_none())
            .map(|r| format!("{} (since {} ms)", r.node, r.start))
            .collect();
        runs.push(Run {
            node: node.to_owned(),
            start: at,
            end: None,
        });
        let index = runs.len() - 1;
        if !overlapping.is_empty() {
            let line = format!(
                "at {at} ms: task {task} started on {node} while it runs on {}",
                overlapping.join(", ")
            );
            s.trace.push(format!("{at:>8} VIOLATION {line}"));
            s.violations.push(line);
        }
        index
    }

    /// A handler run ended (returned or was aborted).
    pub fn run_ended(&self, task: TaskId, index: usize) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis() as u64;
        if let Some(run) = s.runs.get_mut(&task).and_then(|r| r.get_mut(index)) {
            run.end = Some(at);
        }
        s.trace.push(format!("{at:>8} end {task} run {index}"));
    }

    /// The store recorded `owner` at `epoch` as the partition's owner.
    pub fn acquired(&self, partition: u32, owner: &InstanceId, epoch: Epoch) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        s.trace
            .push(format!("{at:>8} acquire p{partition} {owner} e{epoch}"));
        s.owners.insert(partition, (owner.clone(), epoch));
    }

    fn check_grant(s: &mut State, what: &str, partition: u32, owner: &InstanceId, epoch: Epoch) {
        let current = s.owners.get(&partition).cloned();
        if current.as_ref() != Some(&(owner.clone(), epoch)) {
            let at = s.start.elapsed().as_millis();
            let line = format!(
                "at {at} ms: {what} applied for {owner} at epoch {epoch} on partition \
                 {partition}, whose grant is {current:?}"
            );
            s.trace.push(format!("{at:>8} VIOLATION {line}"));
            s.violations.push(line);
        }
    }

    /// The store let `owner` claim `tasks` under `claims`.
    pub fn claimed(&self, owner: &InstanceId, tasks: &[Task]) {
        let mut s = self.lock();
        for t in tasks {
            Self::check_grant(&mut s, "a claim", t.partition, owner, t.epoch.unwrap_or(0));
        }
    }

    /// The store answered completions: the applied ones (`Some`) must be under the current grant.
    pub fn completed(
        &self,
        owner: &InstanceId,
        completions: &[Completion],
        results: &[Option<TaskStatus>],
    ) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        for (c, r) in completions.iter().zip(results) {
            match r {
                Some(status) => {
                    s.trace.push(format!(
                        "{at:>8} complete {} by {owner} -> {status:?}",
                        c.id
                    ));
                    Self::check_grant(&mut s, "a completion", c.partition, owner, c.epoch);
                }
                None => {
                    s.counts.refused_completions += 1;
                    s.trace
                        .push(format!("{at:>8} complete {} by {owner} refused", c.id));
                }
            }
        }
    }

    /// A renewal was applied for these claims (not checked: refusals are reported per partition).
    pub fn renewed(&self, _owner: &InstanceId, _claims: &[Claim]) {}

    /// Controller `node` won the election at `epoch`.
    pub fn elected(&self, node: &str, epoch: u64) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        s.trace.push(format!("{at:>8} elected {node} e{epoch}"));
        s.leaders.insert(node.to_owned(), epoch);
    }

    /// The store applied a write of controller `node` while the epoch counter read `current`.
    pub fn controller_wrote(&self, node: &str, current: u64, first_key: &str) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        let won = s.leaders.get(node).copied();
        if won != Some(current) {
            let line = format!(
                "at {at} ms: controller {node} (epoch {won:?}) had a write applied ({first_key}) \
                 while epoch {current} leads"
            );
            s.trace.push(format!("{at:>8} VIOLATION {line}"));
            s.violations.push(line);
        }
    }

    /// The leader fence refused a write of controller `node`.
    pub fn controller_refused(&self, node: &str) {
        let mut s = self.lock();
        let at = s.start.elapsed().as_millis();
        s.counts.refused_controller_writes += 1;
        s.trace
            .push(format!("{at:>8} fenced write of {node} refused"));
    }

    /// Every violation so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The runs of every task.
    pub fn runs(&self) -> BTreeMap<TaskId, Vec<Run>> {
        self.lock().runs.clone()
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    /// The trace, one line per event.
    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// A digest of the trace (FNV-1a): equal digests, equal runs.
    pub fn digest(&self) -> u64 {
        let s = self.lock();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &s.trace {
            for b in line.bytes().chain([b'\n']) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    /// The last `n` lines of the trace, for a failure's message.
    pub fn tail(&self, n: usize) -> String {
        let s = self.lock();
        let mut out = String::new();
        for line in s.trace.iter().rev().take(n).rev() {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
