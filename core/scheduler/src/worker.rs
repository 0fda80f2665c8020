//! The worker: a participant of the `tasks` resource that runs the tasks of the partitions it
//! leads.
//!
//! - **Ownership** follows the partition's top state. Being granted it (with a new epoch)
//!   records the ownership in the task store, which fences the previous owner and requeues its
//!   unfinished claims at once. Losing it stops claiming from that partition immediately and
//!   waits until every claim of the partition has ended in the store (tasks in flight finished,
//!   their completions written) before the transition is acknowledged, so that a graceful move
//!   never runs a task twice: up to `drain_timeout`, or the session's deadline when the
//!   participant lost contact with the store; then the rest is aborted and reported
//!   interrupted.
//! - **Completions** that fail for a reason that may pass are written again for as long as the
//!   worker holds their partition.
//! - **One poll loop** claims due tasks in batches across all owned partitions in one store
//!   call, runs them with bounded concurrency and a per-task timeout, and completes them in
//!   batches. When nothing is due it sleeps until the next due time, a new insert into an owned
//!   partition, a change of ownership, or free capacity, whichever comes first (the idle
//!   backstop, `max_idle`, only bounds the wait), never a fixed tick.
//! - **Prefetch**: besides a task for every free slot, a claim takes up to as many tasks as the
//!   worker started in the last second (at most `batch`), kept in a local queue until a slot
//!   frees. Short tasks so travel in large batches (a store round trip per few hundred tasks,
//!   not per slot); long ones are claimed no faster than they start. Queued tasks are leased and
//!   renewed like running ones; when their partition leaves (or the worker stops) they are
//!   released at once, PENDING again with the attempt not counted. Each task's recorded start
//!   is when its handler started, not when it was claimed.
//! - **Leases** of running tasks are renewed with one store write per worker for all of them.
//! - **Retention**: the worker leading partition 0 deletes finished tasks past the retention.
//!   A claim, completion or renewal refused by the store (stale epoch) drops the partition.

use super::schedule::clock;
use super::store::{Claim, Completion, CompletionOutcome, TaskStore};
use super::{Millis, RetryPolicy, Task, TaskId};
use crate::metrics::{HandlerLabel, Metrics, seconds};
use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rota_cluster::participant::{TransitionHandler, TransitionRequest};
use rota_model::{Epoch, InstanceId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{info, warn};

/// Code that runs a task.
#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs the task; an error fails this attempt (it is retried while attempts remain).
    async fn run(&self, task: &Task) -> Result<(), String>;
}

/// Logs `Handling task <id> <name>`, as the original system did (the name escaped, so that a
/// client cannot forge log lines with control characters).
pub struct LogHandler;

#[async_trait]
impl TaskHandler for LogHandler {
    async fn run(&self, task: &Task) -> Result<(), String> {
        info!("Handling task {} {}", task.id, task.name.escape_debug());
        Ok(())
    }
}

/// Does nothing (for benchmarks).
pub struct NoopHandler;

#[async_trait]
impl TaskHandler for NoopHandler {
    async fn run(&self, _: &Task) -> Result<(), String> {
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
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort();
        names
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

    fn for_task(&self, task: &Task) -> Result<Arc<dyn TaskHandler>, String> {
        if let Some(name) = &task.handler {
            return self
                .by_name
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no handler named {name:?} on this worker"));
        }
        Ok(self
            .by_name
            .get(&task.name)
            .cloned()
            .unwrap_or_else(|| self.default.clone()))
    }
}

/// How a worker runs tasks.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The worker's instance id (owner of its claims).
    pub id: InstanceId,
    /// Tasks running at once, at most.
    pub concurrency: usize,
    /// Tasks claimed per store call, at most.
    pub batch: usize,
    /// Claims expire unless renewed within this.
    pub lease: Duration,
    /// An attempt that runs longer fails.
    pub task_timeout: Duration,
    /// Backoff of failed attempts.
    pub retry: RetryPolicy,
    /// Longest sleep without any wake-up (a backstop against lost notifications).
    pub max_idle: Duration,
    /// A claimed task waits for a free slot at most half of this, then is given back rather
    /// than started (a claim is fenced by the store, a start is not): keep it well under the
    /// coordination session timeout.
    pub step_down_timeout: Duration,
    /// On giving a partition up gracefully (the controller moves it, or the worker stops), how
    /// long its tasks in flight may run on and have their completions written before they are
    /// aborted and reported as interrupted. The partition's next owner is not promoted before
    /// this is over. A step-down the session forces (lost contact) has the session's deadline
    /// instead.
    pub drain_timeout: Duration,
    /// Finished tasks older than this are deleted (by the worker leading partition 0); `None`
    /// keeps them forever.
    pub retention: Option<Duration>,
    /// Partitions of the `tasks` resource: the tasks the schedules' clock creates are assigned
    /// partitions over this many, like every other task.
    pub partitions: u32,
    /// How often the schedules' clock looks for schedules it does not know of yet (created or
    /// resumed by another process); known ones wake it at their ticks.
    pub schedule_poll: Duration,
    /// How long to gather work that trickles in (inserts to claim, completions to write) before
    /// one store write for all of it: worth a commit per several tasks on a remote database,
    /// not on an embedded one.
    pub gather: Duration,
}

impl WorkerConfig {
    /// Defaults: 16 at once, batches of 256, 30 s leases and task timeout, 5 s backstop, 3 s
    /// to step down, a drain of the task timeout and 2 s more (every task reaches its own
    /// timeout first), 2 ms of gathering, 12 partitions, schedules looked for every second.
    pub fn new(id: InstanceId) -> Self {
        Self {
            id,
            concurrency: 16,
            batch: 256,
            lease: Duration::from_secs(30),
            task_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_idle: Duration::from_secs(5),
            step_down_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(32),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            gather: Duration::from_millis(2),
            partitions: 12,
            schedule_poll: Duration::from_secs(1),
        }
    }
}

/// A handler's metrics, fetched once per handler name (a label lookup allocates).
#[derive(Clone)]
struct HandlerMetrics {
    claimed: Counter,
    completed: Counter,
    failed: Counter,
    retried: Counter,
    duration: Histogram,
}

/// A worker: give [`Worker::transition_handler`] to a participant of the `tasks` resource and
/// drive [`Worker::run`].
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    config: WorkerConfig,
    store: Arc<dyn TaskStore>,
    handlers: Handlers,
    /// Owned partitions and their epochs.
    owned: Mutex<BTreeMap<u32, Epoch>>,
    /// Tasks in flight per partition, with the handles that abort them and the completion that
    /// reports them interrupted if they are.
    in_flight: Mutex<BTreeMap<u32, BTreeMap<TaskId, Running>>>,
    /// Claimed tasks waiting for a free slot, in due order. Its lock is held while a task
    /// moves from here to `in_flight`, so a partition's step-down sees each task in one place.
    queue: Mutex<VecDeque<Queued>>,
    /// Tasks started in the current and the previous second: the prefetch target.
    starts: Mutex<StartRate>,
    /// Claims not yet ended in the store: queued, running, or finished with their completion
    /// not yet written. Claims wait for this to fall, so a slow store slows claiming down
    /// instead of piling up claimed tasks.
    outstanding: AtomicUsize,
    /// The same claims per partition: a partition is given up once its count is zero (every
    /// claim of it ended in the store), or at the drain's deadline.
    unsettled: Mutex<BTreeMap<u32, usize>>,
    /// Partitions being given up (no longer claimed from, still draining).
    leaving: Mutex<BTreeSet<u32>>,
    /// Set while the participant's session cannot be relied on: every drain ends by then.
    session_deadline: watch::Sender<Option<tokio::time::Instant>>,
    /// The session timeout the coordination store granted, in ms (0 until known).
    granted_ms: AtomicU64,
    /// Wakes the poll loop (ownership changed, capacity freed).
    wake: Notify,
    /// Wakes the schedules' clock (a partition gained).
    clock_wake: Notify,
    /// Signals that claims were settled or tasks in flight finished.
    drained: Notify,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Per handler name, its metrics.
    handler_metrics: Mutex<BTreeMap<String, HandlerMetrics>>,
    now: Arc<dyn Fn() -> Millis + Send + Sync>,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> Millis {
    rota_cluster::now_ms() as Millis
}

impl Worker {
    /// A worker over `store` with `handlers`, counting into metrics of its own.
    pub fn new(config: WorkerConfig, store: Arc<dyn TaskStore>, handlers: Handlers) -> Self {
        Self::with_metrics(config, store, handlers, Arc::default())
    }

    /// A worker over `store` with `handlers`, counting into the process's `metrics`.
    pub fn with_metrics(
        config: WorkerConfig,
        store: Arc<dyn TaskStore>,
        handlers: Handlers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_clock(config, store, handlers, metrics, Arc::new(wall_clock_ms))
    }

    /// [`Worker::with_metrics`] with the time taken from `now` (milliseconds since the Unix
    /// epoch): tests on tokio's paused clock give one that follows it.
    pub fn with_clock(
        config: WorkerConfig,
        store: Arc<dyn TaskStore>,
        handlers: Handlers,
        metrics: Arc<Metrics>,
        now: Arc<dyn Fn() -> Millis + Send + Sync>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
                config,
                store,
                handlers,
                owned: Mutex::new(BTreeMap::new()),
                in_flight: Mutex::new(BTreeMap::new()),
                queue: Mutex::new(VecDeque::new()),
                starts: Mutex::new(StartRate::default()),
                outstanding: AtomicUsize::new(0),
                unsettled: Mutex::new(BTreeMap::new()),
                leaving: Mutex::new(BTreeSet::new()),
                session_deadline: watch::Sender::new(None),
                granted_ms: AtomicU64::new(0),
                wake: Notify::new(),
                clock_wake: Notify::new(),
                drained: Notify::new(),
                metrics,
                handler_metrics: Mutex::new(BTreeMap::new()),
                now,
            }),
        }
    }

    /// The handler to give the participant: it turns top-state grants into ownership.
    pub fn transition_handler(&self) -> Arc<dyn TransitionHandler> {
        Arc::new(Ownership {
            inner: self.inner.clone(),
        })
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Partitions owned now.
    pub fn owned(&self) -> Vec<u32> {
        self.inner
            .owned()
            .into_iter()
            .map(|c| c.partition)
            .collect()
    }

    /// Claims and runs tasks until `shutdown`; then releases the queued ones and lets tasks in
    /// flight finish.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let inner = &self.inner;
        // Bounded by what a worker can hold claimed (every slot and the most it prefetches), so
        // sending never waits: each claim sends at most one completion.
        let (done_tx, done_rx) = mpsc::channel::<Completion>(
            inner.config.concurrency.max(1) + 2 * inner.config.batch + 1,
        );
        let completer = tokio::spawn(complete_in_batches(inner.clone(), done_rx));
        let renewer = tokio::spawn(renew_leases(inner.clone(), shutdown.clone()));
        let purger = tokio::spawn(purge_finished(inner.clone(), shutdown.clone()));
        let fence = tokio::spawn(inner.clone().fence_session(shutdown.clone()));
        let clock = tokio::spawn(run_clock(inner.clone(), shutdown.clone()));
        let _killed = KillOnDrop {
            inner: inner.clone(),
            helpers: [&completer, &renewer, &purger, &fence, &clock]
                .map(|h| h.abort_handle())
                .to_vec(),
        };
        let mut inserted = inner.store.inserted();
        let concurrency = inner.config.concurrency.max(1);
        while !rota_cluster::stopping(&shutdown) {
            inner.start_queued(&done_tx);
            let claims = inner.owned();
            let busy = inner.queued() + concurrency - inner.permits.available_permits();
            let capacity = concurrency + inner.prefetch();
            let outstanding = inner.outstanding.load(Ordering::SeqCst);
            // Claim when a slot would otherwise stay idle, or half the capacity is free.
            let want = capacity.saturating_sub(outstanding).min(inner.config.batch);
            let worth = busy < concurrency || want * 2 >= capacity;
            let mut wait_until: Option<Millis> = None;
            if !claims.is_empty() && want > 0 && worth && !inner.session_in_doubt() {
                let now = (inner.now)();
                let lease = inner.config.lease.as_millis() as i64;
                let asked = tokio::time::Instant::now();
                let result = inner
                    .store
                    .claim(&inner.config.id, &claims, now, want, lease)
                    .await;
                inner
                    .metrics
                    .claim_duration
                    .observe(seconds(asked.elapsed()));
                match result {
                    Ok(claimed) => {
                        inner.drop_partitions(&claimed.refused);
                        let full = claimed.tasks.len() == want;
                        for t in &claimed.tasks {
                            inner.handler_metrics(t).claimed.inc();
                        }
                        inner.unsettle(&claimed.tasks);
                        inner.enqueue(claimed.tasks);
                        if full {
                            continue; // More may be due right now.
                        }
                        wait_until = claimed.next_due;
                    }
                    Err(e) => warn!(error = %e, "claim failed"),
                }
                inner.start_queued(&done_tx);
            }
            let now = (inner.now)();
            let idle = inner.config.max_idle;
            let sleep = wait_until
                .map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64))
                .unwrap_or(idle)
                .min(idle);
            tokio::select! {
                biased;
                _ = tokio::time::sleep(sleep) => {}
                _ = inner.wake.notified() => {}
                _ = inner.insert_into_owned(&mut inserted) => {
                    // Under a stream of single inserts, gather a few before claiming: one claim
                    // (one commit) for several tasks, for a lag of at most this pause.
                    tokio::time::sleep(inner.config.gather).await;
                }
                _ = shutdown.changed() => {}
            }
        }
        // Give back what never started, let tasks in flight finish, then flush completions.
        let queued: Vec<Task> = inner.lock_queue().drain(..).map(|q| q.task).collect();
        inner.release(queued).await;
        let _ = inner.permits.acquire_many(concurrency as u32).await;
        drop(done_tx);
        let _ = completer.await;
        renewer.abort();
        purger.abort();
        fence.abort();
        clock.abort();
    }
}

/// Ends what a worker spawned when its `run` is dropped before it returns (the worker was
/// killed, as by a crash of an embedding process): its helpers and the handlers in flight stop
/// with it, as they would with the process, instead of running on unowned. At a normal return
/// everything has ended already.
struct KillOnDrop {
    inner: Arc<Inner>,
    helpers: Vec<AbortHandle>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for helper in &self.helpers {
            helper.abort();
        }
        let in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (handle, _) in in_flight.values().flat_map(BTreeMap::values) {
            handle.abort();
        }
    }
}

/// A task in flight: the handle that aborts it, and its claim's completion (to report it
/// interrupted).
type Running = (AbortHandle, Completion);

/// A claimed task waiting for a slot.
struct Queued {
    task: Task,
    claimed: tokio::time::Instant,
}

/// Starts counted per second, for the prefetch target.
#[derive(Debug)]
struct StartRate {
    second: tokio::time::Instant,
    current: usize,
    previous: usize,
}

impl Default for StartRate {
    fn default() -> Self {
        Self {
            second: tokio::time::Instant::now(),
            current: 0,
            previous: 0,
        }
    }
}

impl StartRate {
    fn roll(&mut self) {
        let elapsed = self.second.elapsed();
        if elapsed >= Duration::from_secs(2) {
            (self.previous, self.current) = (0, 0);
            self.second = tokio::time::Instant::now();
        } else if elapsed >= Duration::from_secs(1) {
            (self.previous, self.current) = (self.current, 0);
            self.second += Duration::from_secs(1);
        }
    }
}

impl Inner {
    /// The metrics of the handler `task` runs with.
    fn handler_metrics(&self, task: &Task) -> HandlerMetrics {
        let label = self.handlers.label_for(task);
        let mut cache = self
            .handler_metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.get(label) {
            return m.clone();
        }
        let key = HandlerLabel {
            handler: label.to_owned(),
        };
        let m = &self.metrics;
        let fresh = HandlerMetrics {
            claimed: m.tasks_claimed.get_or_create(&key).clone(),
            completed: m.tasks_completed.get_or_create(&key).clone(),
            failed: m.tasks_failed.get_or_create(&key).clone(),
            retried: m.tasks_retried.get_or_create(&key).clone(),
            duration: m.task_duration.get_or_create(&key).clone(),
        };
        cache.insert(key.handler, fresh.clone());
        fresh
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued(&self) -> usize {
        self.lock_queue().len()
    }

    /// How many tasks to hold claimed beyond the free slots: the starts of the last second.
    fn prefetch(&self) -> usize {
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        starts.roll();
        starts
            .previous
            .max(starts.current)
            .min(2 * self.config.batch)
    }

    fn enqueue(&self, tasks: Vec<Task>) {
        let claimed = tokio::time::Instant::now();
        self.lock_queue()
            .extend(tasks.into_iter().map(|task| Queued { task, claimed }));
    }

    /// How long a claimed task may wait for a slot. The store fences claims, not starts: a task
    /// that waited long might belong to a partition that moved while this worker did not
    /// notice (frozen, cut off), so an old claim is given back rather than started.
    fn max_queue_age(&self) -> Duration {
        let mut age = self.config.step_down_timeout / 2;
        // A store that granted a shorter session than configured shortens it too.
        let granted = self.granted_ms.load(Ordering::Relaxed);
        if granted > 0 {
            age = age.min(Duration::from_millis(granted) / 6);
        }
        age.max(Duration::from_millis(50))
    }

    /// Starts queued tasks while slots are free. A task whose partition is no longer owned is
    /// released, never started: usually its step-down already took it out of the queue, but a
    /// claim that returned while the partition was being given up lands here after that.
    fn start_queued(self: &Arc<Self>, done: &mpsc::Sender<Completion>) {
        let mut queue = self.lock_queue();
        if queue.is_empty() {
            return;
        }
        let owned: Vec<u32> = self
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        let max_age = self.max_queue_age();
        let mut stale = Vec::new();
        let mut started = 0;
        while let Some(queued) = queue.pop_front() {
            if !owned.contains(&queued.task.partition) || queued.claimed.elapsed() > max_age {
                stale.push(queued.task);
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                queue.push_front(queued);
                break;
            };
            self.spawn(queued.task, permit, done.clone());
            started += 1;
        }
        drop(queue);
        if started > 0 {
            let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
            starts.roll();
            starts.current += started;
        }
        if !stale.is_empty() {
            let inner = self.clone();
            tokio::spawn(async move {
                inner.release(stale).await;
                inner.wake.notify_one();
            });
        }
    }

    /// Gives claimed tasks that never started back to the store (PENDING, attempt not counted).
    /// If the store cannot be reached they stay claimed, and the partition's next owner takes
    /// them back when it acquires the partition.
    async fn release(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let released: Vec<Completion> = tasks
            .iter()
            .map(|t| Completion::of(t, CompletionOutcome::Released))
            .collect();
        match self
            .store
            .complete(&self.config.id, &released, (self.now)())
            .await
        {
            Ok(_) => info!(
                count = tasks.len(),
                "released claimed tasks that had not started"
            ),
            Err(e) => warn!(error = %e, count = tasks.len(), "releasing unstarted tasks failed"),
        }
        self.settled(tasks.iter().map(|t| t.partition));
    }

    /// Counts new claims as not yet settled.
    fn unsettle(&self, tasks: &[Task]) {
        self.outstanding.fetch_add(tasks.len(), Ordering::SeqCst);
        let mut unsettled = self.unsettled.lock().unwrap_or_else(|e| e.into_inner());
        for t in tasks {
            *unsettled.entry(t.partition).or_default() += 1;
        }
    }

    /// Claims of these partitions (one per item) ended in the store, or were given up: room
    /// for more, and maybe a partition drained.
    fn settled(&self, partitions: impl IntoIterator<Item = u32>) {
        let mut n = 0;
        {
            let mut unsettled = self.unsettled.lock().unwrap_or_else(|e| e.into_inner());
            for p in partitions {
                n += 1;
                if let Some(count) = unsettled.get_mut(&p) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        unsettled.remove(&p);
                    }
                }
            }
        }
        if n > 0 {
            self.outstanding.fetch_sub(n, Ordering::SeqCst);
            self.drained.notify_waiters();
            self.wake.notify_one();
        }
    }

    /// Claims of `partition` not yet settled.
    fn unsettled(&self, partition: u32) -> usize {
        self.unsettled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// Takes the queued tasks of `partition` out of the queue.
    fn unqueue(&self, partition: u32) -> Vec<Task> {
        let mut queue = self.lock_queue();
        let (theirs, ours): (VecDeque<Queued>, VecDeque<Queued>) =
            queue.drain(..).partition(|q| q.task.partition == partition);
        *queue = ours;
        theirs.into_iter().map(|q| q.task).collect()
    }

    fn owned(&self) -> Vec<Claim> {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&partition, &epoch)| Claim { partition, epoch })
            .collect()
    }

    fn drop_partitions(&self, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        for p in partitions {
            if owned.remove(p).is_some() {
                self.metrics.partitions_owned.dec();
                warn!(
                    partition = p,
                    "the store refused our claim: partition dropped"
                );
            }
        }
        drop(owned);
        // Their queued claims are no longer ours: the new owner took them back.
        for &p in partitions {
            let gone = self.unqueue(p);
            self.settled(gone.iter().map(|t| t.partition));
        }
    }

    /// Runs a claimed task on its own tokio task, tracked (and abortable) per partition.
    fn spawn(
        self: &Arc<Self>,
        task: Task,
        permit: OwnedSemaphorePermit,
        done: mpsc::Sender<Completion>,
    ) {
        let (partition, id) = (task.partition, task.id);
        let interrupted = Completion::of(&task, CompletionOutcome::Released);
        // Dropped with the future, whether it completes or is aborted.
        let guard = InFlight {
            inner: self.clone(),
            partition,
            id,
            sent: false,
            _permit: permit,
        };
        let inner = self.clone();
        // The lock is held across spawn and registration, so the task cannot finish (and
        // unregister itself) before it is registered.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let handle = tokio::spawn(async move {
            let mut guard = guard;
            let completion = inner.execute(&task).await;
            guard.sent = done.send(completion).await.is_ok();
            drop(guard);
        });
        in_flight
            .entry(partition)
            .or_default()
            .insert(id, (handle.abort_handle(), interrupted));
    }

    /// Waits for a new task in an owned partition (or for lost notifications).
    async fn insert_into_owned(&self, inserted: &mut tokio::sync::broadcast::Receiver<u32>) {
        loop {
            match inserted.recv().await {
                Ok(p) => {
                    let owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
                    if owned.contains_key(&p) {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        }
    }

    async fn execute(&self, task: &Task) -> Completion {
        let started_at = (self.now)();
        let lag_ms = (started_at - task.scheduled_at).max(0);
        self.metrics.start_lag.observe(lag_ms as f64 / 1000.0);
        let metrics = self.handler_metrics(task);
        let started = tokio::time::Instant::now();
        let result = match self.handlers.for_task(task) {
            Ok(handler) => {
                match tokio::time::timeout(self.config.task_timeout, handler.run(task)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("timed out after {:?}", self.config.task_timeout)),
                }
            }
            Err(e) => Err(e),
        };
        metrics.duration.observe(seconds(started.elapsed()));
        let outcome = match result {
            Ok(()) => {
                metrics.completed.inc();
                CompletionOutcome::Succeeded
            }
            Err(error) => {
                // The error may quote what a receiver sent: keep it storable everywhere.
                let error = error.replace('\0', "\u{FFFD}");
                warn!(
                    task = task.id,
                    name = ?task.name,
                    attempt = task.attempts,
                    of = task.max_attempts,
                    error = ?error,
                    "attempt failed"
                );
                metrics.failed.inc();
                if task.attempts < task.max_attempts {
                    metrics.retried.inc();
                }
                let random = (mix(task.id as u64 ^ u64::from(task.attempts)) >> 11) as f64
                    / (1u64 << 53) as f64;
                CompletionOutcome::Failed {
                    error,
                    retry_at: self
                        .config
                        .retry
                        .retry_at((self.now)(), task.attempts, random),
                }
            }
        };
        Completion {
            started_at: Some(started_at),
            ..Completion::of(task, outcome)
        }
    }

    /// Gives `partition` up: waits until every claim of it has ended in the store (the queued
    /// ones were released before; running ones finish and their completions are written), until
    /// `deadline` or the session's deadline, whichever comes first. Then it aborts what still
    /// runs and reports it interrupted (a failed attempt, retried while attempts remain), so
    /// that the next owner runs it again only once this worker has let it go.
    async fn drain(&self, partition: u32, deadline: tokio::time::Instant) {
        let mut session = self.session_deadline.subscribe();
        let mut announced = false;
        loop {
            let drained = self.drained.notified();
            let left = self.unsettled(partition);
            if left == 0 {
                if announced {
                    info!(partition, "partition drained");
                }
                return;
            }
            let until = match *session.borrow_and_update() {
                Some(forced) => forced.min(deadline),
                None => deadline,
            };
            if !announced {
                announced = true;
                info!(
                    partition,
                    tasks = left,
                    limit = ?until.saturating_duration_since(tokio::time::Instant::now()),
                    "giving the partition up: waiting for its tasks in flight to finish"
                );
            }
            tokio::select! {
                biased;
                _ = drained => {}
                _ = session.changed() => {}
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let aborted = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition)
            .unwrap_or_default();
        if aborted.is_empty() {
            warn!(
                partition,
                "giving the partition up with completions not yet written"
            );
            return;
        }
        warn!(
            partition,
            count = aborted.len(),
            "drain limit reached: aborting the partition's tasks and reporting them interrupted"
        );
        self.interrupt(
            aborted.into_values().collect(),
            "its partition was given up",
        )
        .await;
    }

    /// Aborts tasks in flight and reports them interrupted: a failed attempt, retried at once
    /// while attempts remain.
    async fn interrupt(&self, aborted: Vec<Running>, why: &str) {
        let now = (self.now)();
        let interrupted: Vec<Completion> = aborted
            .into_iter()
            .map(|(handle, c)| {
                handle.abort();
                Completion {
                    outcome: CompletionOutcome::Failed {
                        error: format!("interrupted: {why} before it finished"),
                        retry_at: now,
                    },
                    ..c
                }
            })
            .collect();
        if let Err(e) = self
            .store
            .complete(&self.config.id, &interrupted, now)
            .await
        {
            warn!(error = %e, "reporting interrupted tasks failed; their leases will expire");
        }
    }

    /// Records this worker as the partition's owner at `epoch`. A failure that may pass (the
    /// store unreachable or slow) is tried again with a growing pause, since a transition that
    /// failed would leave the replica in ERROR, until the session can no longer be relied on
    /// (the participant is then stepping down, and waits for this transition first).
    async fn acquire(&self, partition: u32, epoch: Epoch) -> Result<u64, String> {
        let mut session = self.session_deadline.subscribe();
        let mut pause = COMPLETION_RETRY_FIRST;
        loop {
            let error = match self
                .store
                .acquire(partition, &self.config.id, epoch, (self.now)())
                .await
            {
                Ok(requeued) => return Ok(requeued),
                Err(e) if e.retryable() && session.borrow_and_update().is_none() => e,
                Err(e) => return Err(e.to_string()),
            };
            warn!(partition, epoch, error = %error, retry_in = ?pause, "recording the partition's ownership failed; retrying");
            tokio::select! {
                biased;
                _ = tokio::time::sleep(pause) => {}
                _ = session.changed() => {}
            }
            pause = (pause * 2).min(COMPLETION_RETRY_MAX);
        }
    }

    /// Whether the participant's session can be relied on: claims stop while it cannot.
    fn session_in_doubt(&self) -> bool {
        self.session_deadline.borrow().is_some()
    }

    /// Once the participant's session can no longer be relied on, nothing of this worker may
    /// run past the session's deadline, whatever the step-down is waiting on (a store that
    /// hangs, a transition in flight): at the deadline every task in flight is aborted and
    /// reported interrupted, and queued claims are given back.
    async fn fence_session(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut session = self.session_deadline.subscribe();
        loop {
            let deadline = *session.borrow_and_update();
            if let Some(deadline) = deadline {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(deadline) => {
                        self.abort_all();
                        // Until the session is back or replaced.
                        tokio::select! {
                            biased;
                            _ = session.changed() => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                    _ = session.changed() => {}
                    _ = shutdown.changed() => return,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = session.changed() => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// The session's deadline has passed: aborts every task in flight (reported interrupted)
    /// and releases the queued ones. Synchronous, so that nothing this worker runs outlives
    /// the call: a session that has ended may be replaced and its partitions granted again at
    /// once, and a new claim must never find the old attempt still running.
    fn abort_all(self: &Arc<Self>) {
        let aborted: Vec<Running> =
            std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .flat_map(BTreeMap::into_values)
                .collect();
        let queued: Vec<Task> = self.lock_queue().drain(..).map(|q| q.task).collect();
        if !aborted.is_empty() {
            warn!(
                count = aborted.len(),
                "session deadline passed: aborting every task in flight"
            );
            for (handle, _) in &aborted {
                handle.abort();
            }
            let inner = self.clone();
            tokio::spawn(async move {
                inner
                    .interrupt(aborted, "the worker's session was lost")
                    .await;
            });
        }
        if !queued.is_empty() {
            let inner = self.clone();
            tokio::spawn(async move { inner.release(queued).await });
        }
    }

    /// Whether completions of `partition` are still worth retrying: it is owned, or being
    /// given up.
    fn holds(&self, partition: u32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&partition)
            || self
                .leaving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&partition)
    }
}

/// A task in flight; dropping it (completion or abort) unregisters it and frees its permit.
struct InFlight {
    inner: Arc<Inner>,
    partition: u32,
    id: TaskId,
    /// Its completion went to the completer (which settles it); otherwise it is settled here.
    sent: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(tasks) = in_flight.get_mut(&self.partition) {
            tasks.remove(&self.id);
            if tasks.is_empty() {
                in_flight.remove(&self.partition);
            }
        }
        drop(in_flight);
        if !self.sent {
            self.inner.settled([self.partition]);
        }
        self.inner.drained.notify_waiters();
        self.inner.wake.notify_one();
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sends completions to the store in batches: whatever has arrived since the last write. A
/// write that fails for a reason that may pass (the store unreachable) is tried again, with a
/// growing pause, for as long as the worker holds the tasks' partitions: a task must not run
/// again because its completion was lost. (The store's fence refuses it if the claim has moved
/// on meanwhile.)
async fn complete_in_batches(inner: Arc<Inner>, mut done: mpsc::Receiver<Completion>) {
    let mut batch = Vec::new();
    while let Some(first) = done.recv().await {
        batch.push(first);
        let drain = |batch: &mut Vec<Completion>, done: &mut mpsc::Receiver<Completion>| {
            while batch.len() < 1024 {
                match done.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch, &mut done);
        if batch.len() < 64 {
            // A trickle: wait a moment for more, so a steady stream of tasks costs one commit
            // per several completions rather than one each (nobody waits on a completion).
            tokio::time::sleep(inner.config.gather).await;
            drain(&mut batch, &mut done);
        }
        let mut pause = COMPLETION_RETRY_FIRST;
        loop {
            let now = (inner.now)();
            let asked = tokio::time::Instant::now();
            let result = inner.store.complete(&inner.config.id, &batch, now).await;
            inner
                .metrics
                .completion_duration
                .observe(seconds(asked.elapsed()));
            match result {
                Ok(results) => {
                    let refused = results.iter().filter(|r| r.is_none()).count() as u64;
                    inner.metrics.completions_refused.inc_by(refused);
                    break;
                }
                Err(e) if e.retryable() => {
                    let (kept, gone): (Vec<_>, Vec<_>) =
                        batch.drain(..).partition(|c| inner.holds(c.partition));
                    inner.settled(gone.iter().map(|c| c.partition));
                    batch = kept;
                    if batch.is_empty() {
                        break;
                    }
                    warn!(error = %e, count = batch.len(), retry_in = ?pause, "completion failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMPLETION_RETRY_MAX);
                }
                // Not worth retrying: the claims stay RUNNING, and the tasks run again once
                // their lease expires.
                Err(e) => {
                    warn!(error = %e, count = batch.len(), "completion failed");
                    break;
                }
            }
        }
        inner.settled(batch.iter().map(|c| c.partition));
        batch.clear();
    }
}

/// First pause before writing failed completions again; it doubles up to the maximum.
const COMPLETION_RETRY_FIRST: Duration = Duration::from_millis(100);
const COMPLETION_RETRY_MAX: Duration = Duration::from_secs(5);

/// Renews the leases of every claimed task (running or queued), one store write per worker,
/// three times per lease; then requeues the tasks of owned partitions whose lease ran out
/// (claims this worker lost track of), so the claim itself only ever reads pending tasks.
async fn renew_leases(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let period = inner.config.lease / 3;
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let claims = inner.owned();
        if claims.is_empty() {
            continue;
        }
        // Any claim not yet ended in the store: queued, running, or finished with its
        // completion still to be written (during a store outage, say).
        let busy = inner.outstanding.load(Ordering::SeqCst) > 0;
        if busy {
            let lease = inner.config.lease.as_millis() as i64;
            match inner
                .store
                .renew(&inner.config.id, &claims, (inner.now)(), lease)
                .await
            {
                Ok(refused) => inner.drop_partitions(&refused),
                Err(e) => {
                    // Without a renewal, requeueing expired leases could take our own tasks.
                    warn!(error = %e, "lease renewal failed");
                    continue;
                }
            }
        }
        match inner
            .store
            .requeue_expired(&inner.config.id, &claims, (inner.now)())
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                warn!(
                    requeued = n,
                    "requeued claims whose lease ran out without a completion"
                );
                inner.wake.notify_one();
            }
            Err(e) => warn!(error = %e, "requeueing expired leases failed"),
        }
    }
}

/// Deletes finished tasks past the retention, a batch at a time, from the one worker that leads
/// partition 0 (so the cluster purges once, not once per worker), every tenth of the retention
/// but at most hourly: finding what is past the retention may scan the whole table (an index
/// of finished tasks would cost every completion), so it is done rarely: a task outlives its
/// retention by at most one period (an hour for the 7-day default).
async fn purge_finished(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let Some(retention) = inner.config.retention else {
        return;
    };
    let period = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let leads_zero = inner
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&0);
        if !leads_zero {
            continue;
        }
        let cutoff = (inner.now)() - retention.as_millis() as i64;
        loop {
            match inner.store.purge_finished(cutoff, 10_000).await {
                Ok(10_000) => continue,
                Ok(n) => {
                    if n > 0 {
                        info!(purged = n, "deleted finished tasks past their retention");
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "purging finished tasks failed");
                    break;
                }
            }
        }
    }
}

/// The schedules' clock: fires the due ticks of the schedules on the partitions this worker
/// leads ([`clock::fire_due`]), waking at the next known tick's lookahead, when it gains a
/// partition, and every `schedule_poll` for schedules created elsewhere. It pauses while the
/// session is in doubt, as claims do (the store's fence would refuse it anyway).
async fn run_clock(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let poll = inner.config.schedule_poll.max(Duration::from_millis(10));
    while !rota_cluster::stopping(&shutdown) {
        let claims = inner.owned();
        let mut sleep = poll;
        if !claims.is_empty() && !inner.session_in_doubt() {
            let now = (inner.now)();
            let fired = clock::fire_due(
                &*inner.store,
                &inner.config.id,
                &claims,
                inner.config.partitions,
                now,
            )
            .await;
            match fired {
                Ok(round) => {
                    let m = &inner.metrics;
                    m.schedule_ticks_fired.inc_by(round.fired);
                    m.schedule_ticks_duplicate.inc_by(round.duplicates);
                    m.schedule_ticks_skipped.inc_by(round.skipped);
                    if round.duplicates > 0 {
                        warn!(
                            duplicates = round.duplicates,
                            "schedule ticks fired again were refused: their tasks existed"
                        );
                    }
                    inner.drop_partitions(&round.refused);
                    if let Some(at) = round.wake_at {
                        let until = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
                        sleep = sleep.min(until).max(Duration::from_millis(5));
                    }
                }
                Err(e) => warn!(error = %e, "reading due schedules failed"),
            }
        }
        tokio::select! {
            biased;
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.clock_wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Turns the participant's transitions of the `tasks` resource into ownership.
struct Ownership {
    inner: Arc<Inner>,
}

#[async_trait]
impl TransitionHandler for Ownership {
    async fn on_transition(&self, t: &TransitionRequest) -> Result<(), String> {
        let (top, was_top) = (t.to == t.top, t.from == t.top);
        let inner = &self.inner;
        if top {
            let requeued = inner.acquire(t.partition, t.epoch).await?;
            if requeued > 0 {
                info!(
                    partition = t.partition,
                    requeued, "took back the previous owner's claims"
                );
            }
            let before = inner
                .owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t.partition, t.epoch);
            if before.is_none() {
                inner.metrics.partitions_owned.inc();
            }
            inner.wake.notify_one();
            inner.clock_wake.notify_one();
        } else if was_top {
            // Leaving before no longer owned, so completions in flight are still retried.
            inner
                .leaving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t.partition);
            let held = inner
                .owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&t.partition);
            if held.is_some() {
                inner.metrics.partitions_owned.dec();
            }
            let deadline = t
                .deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + inner.config.drain_timeout);
            // The release settles its tasks whenever the store answers; the drain waits for
            // that no longer than for anything else.
            let releasing = {
                let (inner, queued) = (inner.clone(), inner.unqueue(t.partition));
                tokio::spawn(async move { inner.release(queued).await })
            };
            let _ = tokio::time::timeout_at(deadline, releasing).await;
            inner.drain(t.partition, deadline).await;
            inner
                .leaving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&t.partition);
        }
        Ok(())
    }

    fn session_deadline(&self, deadline: Option<tokio::time::Instant>) {
        self.inner.session_deadline.send_replace(deadline);
        // A session that has ended: abort now, not when the fence's timer next runs (by then
        // a new session may have cleared the deadline and been granted the partitions again).
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            self.inner.abort_all();
        }
        // Claims paused while the session was in doubt go on.
        self.inner.wake.notify_one();
    }

    fn session_timeout(&self, granted: Duration) {
        self.inner
            .granted_ms
            .store(granted.as_millis() as u64, Ordering::Relaxed);
    }
}
