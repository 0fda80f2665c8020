//! The worker: a participant of the `tasks` resource that runs the tasks of the partitions it
//! leads.
//!
//! - **Ownership** follows the partition's top state ([`ownership`]). Being granted it (with a
//!   new epoch) records the ownership in the task store, which fences the previous owner and
//!   takes back its unfinished claims at once. Losing it stops claiming from that partition
//!   immediately and waits until every claim of the partition has ended in the store (tasks in
//!   flight finished, their completions written) before the transition is acknowledged, so
//!   that a graceful move never runs a task twice: up to `drain_timeout`, or the session's
//!   deadline when the participant lost contact with the store; then the rest is aborted and
//!   reported interrupted.
//! - **One poll loop** ([`poll`]) claims due tasks in batches across all owned partitions in one
//!   store call, runs them with bounded concurrency and a per-task timeout, and hands their
//!   completions to the completer ([`complete`]), which writes them in batches, again for as
//!   long as the worker holds their partition when the store cannot be reached. When nothing is
//!   due the loop sleeps until the next due time, a new insert into an owned partition, a change
//!   of ownership, or free capacity, whichever comes first (the idle backstop, `max_idle`, only
//!   bounds the wait), never a fixed tick.
//! - **Prefetch**: besides a task for every free slot, the worker holds up to a second's starts
//!   at the rate of its last 100-200 ms (at most two batches; a claim takes at most `batch`),
//!   kept in a local queue until a slot frees. Short tasks so travel in large batches (a store round trip per few hundred tasks,
//!   not per slot); long ones are claimed no faster than they start. Queued tasks are leased and
//!   renewed like running ones; when their partition leaves (or the worker stops) they are
//!   released at once, PENDING again with the attempt not counted. Each task's recorded start
//!   is when its handler started, not when it was claimed.
//! - **Leases** of claimed tasks are renewed with one store write per worker for all of them
//!   ([`renew`]); **retention** ([`purge`]): the worker leading partition 0 deletes finished
//!   tasks past the retention; the **schedules' clock** ([`clock`]) fires the ticks of the
//!   schedules on the partitions the worker leads. A claim, completion or renewal refused by
//!   the store (stale epoch) drops the partition.
//!
//! # State, locks and signals
//! What the worker holds is one [`Book`] (owned and leaving partitions, queued, running and
//! unsettled claims, the start rate) behind one lock, `Inner::book`: every decision over it is a
//! method of the book, made while the lock is held, and the lock is never held across an
//! `await` nor while another lock is taken. Besides it: the slots (`permits`, a semaphore with a
//! permit per running task), the session's deadline (a `watch` the participant sets), and three
//! `Notify`s that carry no state: `wake` (the poll loop: ownership changed, capacity freed, a
//! claim taken back), `clock_wake` (the clock: a partition gained) and `drained` (a claim
//! settled or a run ended: a draining step-down looks again). The handler metrics' cache has a
//! lock of its own, taken alone.

mod book;
mod clock;
mod complete;
mod handlers;
mod ownership;
mod poll;
mod purge;
mod renew;
mod resume;

pub use handlers::{HandlerError, Handlers, LogHandler, NoopHandler, TaskHandler};

use crate::metrics::{HandlerLabel, Metrics};
use crate::store::{Completion, TaskStore};
use crate::{Millis, RetryPolicy, Task};
use book::Book;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rota_cluster::participant::TransitionHandler;
use rota_model::InstanceId;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::AbortHandle;

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
    /// Defaults: 16 at once, batches of 512, 30 s leases and task timeout, 5 s backstop, 3 s
    /// to step down, a drain of the task timeout and 2 s more (every task reaches its own
    /// timeout first), 2 ms of gathering, 12 partitions, schedules looked for every second.
    pub fn new(id: InstanceId) -> Self {
        Self {
            id,
            concurrency: 16,
            batch: 512,
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

/// What the worker keeps of a running task: the handle that aborts it, and its claim's
/// completion (to report it interrupted).
type Running = (AbortHandle, Completion);

/// A worker: give [`Worker::transition_handler`] to a participant of the `tasks` resource and
/// drive [`Worker::run`].
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

/// What the worker's loops share; see the module documentation for its locks and signals.
struct Inner {
    config: WorkerConfig,
    store: Arc<dyn TaskStore>,
    handlers: Handlers,
    /// Everything the worker holds: the one lock of its state.
    book: Mutex<Book<Running>>,
    /// A permit per running task.
    permits: Arc<Semaphore>,
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
    metrics: Arc<Metrics>,
    /// Per handler name, its metrics.
    handler_metrics: Mutex<BTreeMap<String, HandlerMetrics>>,
    /// The wall clock, for the store.
    now: Arc<dyn Fn() -> Millis + Send + Sync>,
    /// The start of the book's monotonic clock.
    born: tokio::time::Instant,
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
                book: Mutex::new(Book::default()),
                session_deadline: watch::Sender::new(None),
                granted_ms: AtomicU64::new(0),
                wake: Notify::new(),
                clock_wake: Notify::new(),
                drained: Notify::new(),
                metrics,
                handler_metrics: Mutex::new(BTreeMap::new()),
                now,
                born: tokio::time::Instant::now(),
            }),
        }
    }

    /// The handler to give the participant: it turns top-state grants into ownership.
    pub fn transition_handler(&self) -> Arc<dyn TransitionHandler> {
        Arc::new(ownership::Ownership::new(self.inner.clone()))
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Partitions owned now.
    pub fn owned(&self) -> Vec<u32> {
        self.inner
            .book()
            .claims()
            .into_iter()
            .map(|c| c.partition)
            .collect()
    }

    /// Claims and runs tasks until `shutdown`; then releases the queued ones and lets tasks in
    /// flight finish.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let inner = &self.inner;
        // Bounded by what a worker can hold claimed (every slot and the most it prefetches), so
        // sending never waits: each claim sends at most one completion.
        let (done_tx, done_rx) = mpsc::channel::<Completion>(
            inner.config.concurrency.max(1) + 2 * inner.config.batch + 1,
        );
        let completer = tokio::spawn(complete::in_batches(inner.clone(), done_rx));
        let renewer = tokio::spawn(renew::leases(inner.clone(), shutdown.clone()));
        let purger = tokio::spawn(purge::finished(inner.clone(), shutdown.clone()));
        let fence = tokio::spawn(ownership::fence_session(inner.clone(), shutdown.clone()));
        let clock = tokio::spawn(clock::run(inner.clone(), shutdown.clone()));
        let _killed = KillOnDrop {
            inner: inner.clone(),
            helpers: [&completer, &renewer, &purger, &fence, &clock]
                .map(|h| h.abort_handle())
                .to_vec(),
        };
        poll::run(inner, &done_tx, shutdown).await;
        // Give back what never started, let tasks in flight finish, then flush completions.
        let queued = inner.book().take_queue();
        inner.release(queued).await;
        let _ = inner
            .permits
            .acquire_many(inner.config.concurrency.max(1) as u32)
            .await;
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
        for (handle, _) in self.inner.book().running() {
            handle.abort();
        }
    }
}

impl Inner {
    /// The book, locked (see the module documentation: never held across an `await`).
    fn book(&self) -> MutexGuard<'_, Book<Running>> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The book's clock: monotonic milliseconds since the worker was made.
    fn mono_ms(&self) -> Millis {
        self.born.elapsed().as_millis() as Millis
    }

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

    /// Claims of these partitions (one per item) ended in the store, or were given up: room
    /// for more, and maybe a partition drained.
    fn settled(&self, partitions: impl IntoIterator<Item = u32>) {
        if self.book().settle(partitions) > 0 {
            self.drained.notify_waiters();
            self.wake.notify_one();
        }
    }

    /// The store refused our claims in `partitions`: they are no longer ours.
    fn drop_partitions(&self, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        let dropped = self.book().drop_partitions(partitions);
        for p in dropped {
            self.metrics.partitions_owned.dec();
            tracing::warn!(
                partition = p,
                "the store refused our claim: partition dropped"
            );
        }
        self.drained.notify_waiters();
        self.wake.notify_one();
    }

    /// Whether the participant's session can be relied on: claims stop while it cannot.
    fn session_in_doubt(&self) -> bool {
        self.session_deadline.borrow().is_some()
    }
}

/// First pause before a failed store write is tried again; it doubles up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
