//! A one-second schedule on the memory stores, for simulated hours on tokio's paused clock,
//! across worker crashes, graceful stops, joins, a worker frozen past its session (a zombie whose
//! clock wakes up late) and controller failovers: every tick fires exactly once (one task per
//! tick, none missing, none twice), every tick's task completes, and no task runs on two
//! workers at once. Handlers take seconds, and the receiver records when each run starts and ends.

use async_trait::async_trait;
use rota_cluster::harness::{TIMEOUT, TestCluster, resource};
use rota_cluster::participant::ParticipantStatus;
use rota_memory::{MemoryCoordination, MemoryTaskStore};
use rota_model::InstanceId;
use rota_scheduler::metrics::Metrics;
use rota_scheduler::prelude::*;
use rota_scheduler::schedule::{
    self, MissedTicks, PutMode, ScheduleDef, TaskTemplate, clock, tick_key,
};
use rota_scheduler::worker::{HandlerError, Handlers, TaskHandler, Worker, WorkerConfig};
use rota_scheduler::{Millis, Task, TaskId, TaskStatus};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

const PARTITIONS: u32 = 12;
/// A fixed start, a whole minute, so that the run is the same every time.
const EPOCH_MS: Millis = 1_800_000_000_000;

/// Milliseconds since the Unix epoch on tokio's (paused) clock.
fn clock(start: Instant) -> Arc<dyn Fn() -> Millis + Send + Sync> {
    Arc::new(move || EPOCH_MS + start.elapsed().as_millis() as Millis)
}

/// One run of a task at the receiver.
#[derive(Clone, Debug)]
struct Run {
    worker: String,
    start: Instant,
    end: Option<Instant>,
}

/// A receiver that takes `work` per run and records each run's start and end; it goes on with
/// a run whose caller gave up (as a webhook's receiver would).
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<HashMap<TaskId, Vec<Run>>>>);

struct Handler {
    worker: String,
    receiver: Receiver,
    work: Duration,
}

#[async_trait]
impl TaskHandler for Handler {
    async fn run(&self, task: &Task) -> Result<(), HandlerError> {
        let (receiver, id, worker, work) = (
            self.receiver.clone(),
            task.id,
            self.worker.clone(),
            self.work,
        );
        let at = {
            let mut runs = receiver.0.lock().unwrap();
            let runs = runs.entry(id).or_default();
            runs.push(Run {
                worker,
                start: Instant::now(),
                end: None,
            });
            runs.len() - 1
        };
        let remote = tokio::spawn(async move {
            tokio::time::sleep(work).await;
            receiver.0.lock().unwrap().get_mut(&id).unwrap()[at].end = Some(Instant::now());
        });
        remote.await.map_err(|e| e.to_string().into())
    }
}

struct Node {
    worker: Worker,
    stop: watch::Sender<bool>,
    run: tokio::task::JoinHandle<()>,
}

struct Bed {
    cluster: TestCluster,
    coordination: MemoryCoordination,
    tasks: Arc<MemoryTaskStore>,
    receiver: Receiver,
    metrics: Vec<Arc<Metrics>>,
    nodes: BTreeMap<String, Node>,
    start: Instant,
}

impl Bed {
    fn start_worker(&mut self, id: &str) {
        let mut config = WorkerConfig::new(InstanceId::new(id));
        config.partitions = PARTITIONS;
        config.step_down_timeout = Duration::from_millis(500);
        config.lease = Duration::from_secs(10);
        config.task_timeout = Duration::from_secs(8);
        config.drain_timeout = Duration::from_secs(10);
        let mut handlers = Handlers::default();
        handlers.set_default(Arc::new(Handler {
            worker: id.into(),
            receiver: self.receiver.clone(),
            work: Duration::from_secs(2),
        }));
        let metrics = Arc::new(Metrics::default());
        self.metrics.push(metrics.clone());
        let worker = Worker::with_clock(
            config,
            self.tasks.clone(),
            handlers,
            metrics,
            clock(self.start),
        );
        self.cluster
            .start_participant_with(id, worker.transition_handler());
        let (stop, stopped) = watch::channel(false);
        let running = worker.clone();
        let run = tokio::spawn(async move { running.run(stopped).await });
        self.nodes.insert(id.into(), Node { worker, stop, run });
    }

    /// A crash: the participant's task dies (its session expires after the timeout) and the
    /// worker stops at once.
    fn kill_worker(&mut self, id: &str) {
        self.cluster.kill_participant(id);
        let node = self.nodes.remove(id).unwrap();
        node.stop.send_replace(true);
        node.run.abort();
    }

    async fn stop_worker(&mut self, id: &str) {
        self.cluster.stop_participant(id).await;
        let node = self.nodes.remove(id).unwrap();
        node.stop.send_replace(true);
        let _ = node.run.await;
    }

    /// Freezes a worker's session past its timeout (its partitions move), then lets it go on:
    /// the zombie's clock and claims must be refused, not fire a tick again.
    async fn freeze_worker(&mut self, id: &str) {
        let ParticipantStatus::Live(session) = self.cluster.participants[id]
            .handle
            .status()
            .borrow()
            .clone()
        else {
            panic!("{id} is not live");
        };
        self.coordination.suspend(&session);
        tokio::time::sleep(TIMEOUT * 3).await;
        self.coordination.resume(&session);
    }

    async fn fail_over_controller(&mut self, next: &str) {
        let (leader, epoch) = self.cluster.leader().await.expect("a leader");
        self.cluster.kill_controller(&leader);
        self.cluster.start_controller(next);
        let cluster = &self.cluster;
        cluster
            .wait_for("a new leader", || async {
                cluster.leader().await.is_some_and(|(_, e)| e > epoch)
            })
            .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_second_schedule_fires_every_tick_once_across_crashes_joins_and_failovers() {
    let coordination = MemoryCoordination::new();
    let mut cluster = TestCluster::new(
        Arc::new(coordination.clone()),
        "MasterSlave",
        resource("MasterSlave", PARTITIONS, 2),
        Duration::ZERO,
    )
    .await;
    cluster.start_controller("c0");
    cluster.start_controller("c1");
    let mut bed = Bed {
        cluster,
        coordination,
        tasks: Arc::new(MemoryTaskStore::new()),
        receiver: Receiver::default(),
        metrics: Vec::new(),
        nodes: BTreeMap::new(),
        start: Instant::now(),
    };
    for id in ["w0", "w1", "w2"] {
        bed.start_worker(id);
    }
    let now = clock(bed.start);
    let def = ScheduleDef {
        name: "beat".into(),
        spec: "* * * * * *".into(),
        zone: "Europe/Berlin".into(),
        task: TaskTemplate {
            name: "beat".into(),
            payload: serde_json::json!({"every": "second"}),
            handler: None,
            max_attempts: 5,
            partition_key: None,
        },
        missed: MissedTicks::Skip,
        catch_up: 10,
        jitter_ms: 0,
    };
    let (stored, _) = schedule::put(&*bed.tasks, def, PutMode::Create, PARTITIONS, now())
        .await
        .unwrap();
    let first = stored.next_tick.unwrap();
    // A zombie's clock that never learns it lost the partition: it fires with the first
    // owner's name and an epoch long gone, four times a second, throughout. The store's fence
    // must refuse every one of its firings.
    let rogue = {
        let (tasks, now, partition) = (bed.tasks.clone(), now.clone(), stored.partition);
        let owner = bed
            .nodes
            .iter()
            .find(|(_, n)| n.worker.owned().contains(&partition))
            .map(|(id, _)| InstanceId::new(id))
            .unwrap_or_else(|| InstanceId::new("w0"));
        tokio::spawn(async move {
            // From after the first fault on: the partition has moved on from its first grant.
            tokio::time::sleep(Duration::from_secs(11 * 60)).await;
            let stale = [rota_scheduler::Claim {
                partition,
                epoch: 1,
            }];
            let (mut refused, mut fired) = (0u64, 0u64);
            // Until the faults are over. It finds the schedule due only when the owner's
            // clock is late (during a failover): those are the races that matter.
            let until = Instant::now() + Duration::from_secs(100 * 60);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match clock::fire_due(&*tasks, &owner, &stale, PARTITIONS, now()).await {
                    Ok(round) => {
                        fired += round.fired + round.duplicates;
                        refused += round.refused.len() as u64;
                    }
                    Err(e) => panic!("the rogue clock's store call failed: {e}"),
                }
            }
            (refused, fired)
        })
    };
    // Two simulated hours: every 10 minutes something fails, in turn.
    let mut next_worker = 3;
    let mut next_controller = 2;
    for round in 0..12 {
        tokio::time::sleep(Duration::from_secs(600)).await;
        // The worker that owns the schedule's clock now.
        let victim = bed
            .nodes
            .iter()
            .find(|(_, n)| n.worker.owned().contains(&stored.partition))
            .map(|(id, _)| id.clone())
            .expect("someone owns the schedule's partition");
        match round % 4 {
            0 => bed.kill_worker(&victim),
            1 => bed.stop_worker(&victim).await,
            2 => bed.freeze_worker(&victim).await,
            _ => {
                bed.fail_over_controller(&format!("c{next_controller}"))
                    .await;
                next_controller += 1;
                continue;
            }
        }
        if round % 4 != 2 {
            bed.start_worker(&format!("w{next_worker}"));
            next_worker += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    let (refused, fired) = rogue.await.unwrap();
    assert_eq!(fired, 0, "a stale epoch's clock fired a tick");
    assert!(
        refused >= 10,
        "the rogue clock was refused only {refused} times"
    );
    // Stop the clock, then let every tick's task finish.
    let paused_at = now();
    let stopped = schedule::pause(&*bed.tasks, "beat", PARTITIONS, paused_at)
        .await
        .unwrap();
    let last = stopped.last_tick.unwrap();
    let ticks: Vec<Millis> = (0..)
        .map(|i| first + i * 1000)
        .take_while(|&t| t <= last)
        .collect();
    assert!(
        ticks.len() > 2 * 3600,
        "only {} ticks in the run",
        ticks.len()
    );
    let keys: Vec<String> = ticks.iter().map(|&t| tick_key("beat", t)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let tasks = loop {
        let mut tasks = Vec::new();
        for chunk in keys.chunks(1000) {
            tasks.extend(bed.tasks.by_idempotency_keys(chunk).await.unwrap());
        }
        if tasks.iter().all(|t| t.status.is_final()) || Instant::now() > deadline {
            break tasks;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // One task per tick: no tick missing, and none created twice (the store holds every task
    // the clocks created; any beyond the ticks' would be a second firing).
    assert_eq!(tasks.len(), ticks.len(), "ticks without their task");
    let all = bed
        .tasks
        .list(&rota_scheduler::ListFilter {
            name: Some("beat".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.tasks.len(), ticks.len(), "a tick fired twice");
    let duplicates: u64 = bed
        .metrics
        .iter()
        .map(|m| m.schedule_ticks_duplicate.get())
        .sum();
    assert_eq!(duplicates, 0, "a clock fired a tick whose task existed");
    // The faults hit the clock: its partition changed hands, so several workers fired ticks.
    let firing_workers = bed
        .metrics
        .iter()
        .filter(|m| m.schedule_ticks_fired.get() > 0)
        .count();
    assert!(
        firing_workers >= 3,
        "only {firing_workers} workers ever fired the schedule"
    );
    // Every tick's task ran, but a tick still to come when the schedule was paused (its task
    // created ahead): that one was cancelled.
    let unfinished: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            let due_after_pause = t.scheduled_at > paused_at;
            t.status
                != if due_after_pause {
                    TaskStatus::Cancelled
                } else {
                    TaskStatus::Completed
                }
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} ticks' tasks did not complete: {:?}",
        unfinished.len(),
        unfinished.first()
    );
    // Each due at its tick.
    for t in &tasks {
        let tick: Millis = t
            .idempotency_key
            .as_ref()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(t.scheduled_at, tick);
    }
    // No task ran on two workers at once.
    let runs = bed.receiver.0.lock().unwrap().clone();
    for (id, runs) in &runs {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let a_end = a.end.expect("every run ends");
                assert!(
                    a_end <= b.start,
                    "task {id} ran on {} and {} at once: {runs:?}",
                    a.worker,
                    b.worker
                );
            }
        }
    }
    for t in tasks.iter().filter(|t| t.status == TaskStatus::Completed) {
        assert!(
            runs.contains_key(&t.id),
            "task {} completed without a run",
            t.id
        );
    }
    bed.cluster.checker.assert_ok();
}
