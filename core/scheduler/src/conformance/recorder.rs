//! A handler that records every run, for tests of workers: the run happens at a "receiver"
//! that finishes it even if the handler is aborted (as a webhook's receiver does), and the
//! record says when it started, when its work ended, and when the worker stopped waiting for it
//! (its answer, or the handler aborted). Every run is recorded as it starts, so the runs in
//! flight on a worker that is cut off or killed show too. Times are tokio's, so a test with a
//! paused clock reads them on that clock.

use crate::worker::{HandlerError, TaskHandler};
use crate::{Task, TaskId};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One run of a task.
#[derive(Clone, Debug)]
pub struct Run {
    /// The worker that ran it (the task's claim owner).
    pub worker: String,
    /// When it started.
    pub start: Instant,
    /// When its work ended at the receiver (`None` while it goes on).
    pub end: Option<Instant>,
    /// When the worker stopped waiting for it (`None` while it waits).
    pub caller_done: Option<Instant>,
}

impl Run {
    /// Whether the worker of this run stopped waiting for it before `later` began: the two
    /// never went on at once, as the workers see it.
    pub fn over_before(&self, later: &Run) -> bool {
        self.caller_done.is_some_and(|done| done <= later.start)
    }
}

/// Every run, by task, in start order.
pub type Runs = HashMap<TaskId, Vec<Run>>;

/// The recording handler; clones share the record.
#[derive(Clone, Default)]
pub struct Recorder {
    runs: Arc<Mutex<Runs>>,
    work: Option<Duration>,
}

impl Recorder {
    /// Runs that each take `work` (by default a few milliseconds, by task id).
    pub fn taking(work: Duration) -> Self {
        Self {
            work: Some(work),
            ..Self::default()
        }
    }

    /// The runs so far.
    pub fn runs(&self) -> Runs {
        self.lock().clone()
    }

    /// How many runs started.
    pub fn started(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Runs of `worker` going on now (started, the worker still waiting).
    pub fn going_on(&self, worker: &str) -> usize {
        let runs = self.lock();
        let going = runs.values().flatten();
        going
            .filter(|r| r.worker == worker && r.caller_done.is_none())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `what` of the run `index` of task `id`.
    fn mark(&self, id: TaskId, index: usize, what: impl FnOnce(&mut Run)) {
        if let Some(run) = self.lock().get_mut(&id).and_then(|r| r.get_mut(index)) {
            what(run);
        }
    }
}

/// Marks the caller's end when the handler's future is dropped: finished or aborted.
struct CallerDone(Recorder, TaskId, usize);

impl Drop for CallerDone {
    fn drop(&mut self) {
        self.0
            .mark(self.1, self.2, |r| r.caller_done = Some(Instant::now()));
    }
}

#[async_trait]
impl TaskHandler for Recorder {
    async fn run(&self, task: &Task) -> Result<(), HandlerError> {
        let work = self
            .work
            .unwrap_or(Duration::from_millis(2 + (task.id % 7) as u64));
        let worker = task.owner.as_ref().map(|o| o.to_string());
        // Recorded, and its caller's end armed, before the handler can be aborted.
        let index = {
            let mut runs = self.lock();
            let runs = runs.entry(task.id).or_default();
            runs.push(Run {
                worker: worker.unwrap_or_default(),
                start: Instant::now(),
                end: None,
                caller_done: None,
            });
            runs.len() - 1
        };
        let _caller = CallerDone(self.clone(), task.id, index);
        let (recorder, id) = (self.clone(), task.id);
        let (done, finished) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(work).await;
            recorder.mark(id, index, |r| r.end = Some(Instant::now()));
            let _ = done.send(());
        });
        finished.await.map_err(|_| "the receiver vanished".into())
    }
}

/// Checks that `runs` (one task's, in start order) went on one at a time: each began only
/// after its predecessor was over ([`Run::over_before`]). Panics naming `task` otherwise.
pub fn assert_one_at_a_time(task: TaskId, runs: &[Run]) {
    for pair in runs.windows(2) {
        let ok = pair[0].over_before(&pair[1]);
        assert!(ok, "task {task} ran twice at once: {runs:?}");
    }
}

/// Checks that each of the tasks `ids` ran exactly once (never twice, and not never).
pub fn assert_ran_once_each(runs: &Runs, ids: &[TaskId]) {
    let count = |id: &TaskId| runs.get(id).map_or(0, Vec::len);
    let wrong: Vec<_> = ids.iter().filter(|id| count(id) != 1).collect();
    let shown: Vec<_> = wrong.iter().take(5).map(|id| (id, runs.get(id))).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} tasks ran more than once or never, such as {shown:?}",
        wrong.len(),
        ids.len()
    );
}

/// Checks the runs of `ids` after `cut_off` was cut off mid-run: every task ran; one that ran
/// more than once had a run on `cut_off` (only a claim in flight there may run again) and its
/// runs went on one at a time. Returns how many tasks ran more than once.
pub fn assert_only_cut_off_runs_repeat(runs: &Runs, ids: &[TaskId], cut_off: &str) -> usize {
    let mut repeated = 0;
    for id in ids {
        let task = runs.get(id);
        let task = task.unwrap_or_else(|| panic!("task {id} never ran"));
        if task.len() > 1 {
            repeated += 1;
            let on_cut_off = task.iter().any(|r| r.worker == cut_off);
            assert!(
                on_cut_off,
                "task {id} ran again without a run on {cut_off}: {task:?}"
            );
            assert_one_at_a_time(*id, task);
        }
    }
    repeated
}
