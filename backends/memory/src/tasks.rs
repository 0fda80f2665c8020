//! An in-memory [`TaskStore`]: for tests and embedders that need no durability. Passes the same
//! conformance suite as SQLite and PostgreSQL.

use rota_model::{Epoch, InstanceId};
use rota_scheduler::schedule::Schedule;
use rota_scheduler::store::rules;
use rota_scheduler::{
    AcquirePartition, ClaimTasks, CompleteTasks, DueSchedulesQuery, InsertTasks, RenewLeases,
    RequeueExpired,
};
use rota_scheduler::{
    Backlog, CancelOutcome, Claim, Claimed, DueSchedules, Execution, ListFilter, Millis, NewTask,
    Page, ScheduleWrite, ScheduleWritten, Schedules, StoreError, Task, TaskId, TaskStatus, Tasks,
    Upkeep, partition_for,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::broadcast;

/// The in-memory task store.
pub struct MemoryTaskStore {
    inner: Mutex<Inner>,
    inserted: broadcast::Sender<u32>,
}

#[derive(Default)]
struct Inner {
    tasks: BTreeMap<TaskId, Task>,
    keys: BTreeMap<String, TaskId>,
    owners: BTreeMap<u32, (InstanceId, Epoch)>,
    /// PENDING tasks by partition, in due order.
    due: BTreeMap<u32, BTreeSet<(Millis, TaskId)>>,
    /// RUNNING tasks by partition.
    running: BTreeMap<u32, BTreeSet<TaskId>>,
    next_id: TaskId,
    schedules: BTreeMap<String, Schedule>,
}

impl Default for MemoryTaskStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTaskStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            inserted: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(&self, partitions: BTreeSet<u32>) {
        for p in partitions {
            let _ = self.inserted.send(p);
        }
    }
}

impl Inner {
    /// Inserts tasks (validated), returning them and the partitions that received new ones.
    fn insert_tasks(
        &mut self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> (Vec<(Task, bool)>, BTreeSet<u32>) {
        let mut out = Vec::with_capacity(tasks.len());
        let mut notify = BTreeSet::new();
        for t in tasks {
            if let Some(existing) = t.idempotency_key.as_ref().and_then(|k| self.keys.get(k)) {
                out.push((self.tasks[existing].clone(), false));
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            let task = Task {
                id,
                partition: partition_for(t.partition_key.as_deref(), id, partitions),
                name: t.name,
                payload: t.payload,
                handler: t.handler,
                partition_key: t.partition_key,
                status: TaskStatus::Pending,
                scheduled_at: t.scheduled_at,
                attempts: 0,
                max_attempts: t.max_attempts,
                last_error: None,
                owner: None,
                epoch: None,
                lease_until: None,
                idempotency_key: t.idempotency_key,
                created_at: now,
                started_at: None,
                finished_at: None,
            };
            if let Some(key) = &task.idempotency_key {
                self.keys.insert(key.clone(), id);
            }
            self.due
                .entry(task.partition)
                .or_default()
                .insert((task.scheduled_at, id));
            notify.insert(task.partition);
            out.push((task.clone(), true));
            self.tasks.insert(id, task);
        }
        (out, notify)
    }

    fn owns(&self, owner: &InstanceId, claim: &Claim) -> bool {
        self.owners
            .get(&claim.partition)
            .is_some_and(|(o, e)| o == owner && *e == claim.epoch)
    }

    /// Moves a task to `status`, keeping the indexes right.
    fn set_status(&mut self, id: TaskId, status: TaskStatus) {
        let task = self.tasks.get_mut(&id).expect("indexed task exists");
        let p = task.partition;
        match task.status {
            TaskStatus::Pending => {
                self.due
                    .entry(p)
                    .or_default()
                    .remove(&(task.scheduled_at, id));
            }
            TaskStatus::Running => {
                self.running.entry(p).or_default().remove(&id);
            }
            _ => {}
        }
        task.status = status;
        match status {
            TaskStatus::Pending => {
                self.due
                    .entry(p)
                    .or_default()
                    .insert((task.scheduled_at, id));
            }
            TaskStatus::Running => {
                self.running.entry(p).or_default().insert(id);
            }
            _ => {}
        }
    }

    /// Takes back a claim that will not complete ([`rules::take_back`]).
    fn requeue(&mut self, id: TaskId, now: Millis, reason: &str) {
        let task = self.tasks.get_mut(&id).expect("exists");
        let status = rules::take_back(task, reason, now);
        self.set_status(id, status);
    }
}

#[async_trait::async_trait]
impl Tasks for MemoryTaskStore {
    async fn insert(&self, batch: InsertTasks) -> Result<Vec<(Task, bool)>, StoreError> {
        batch.validate()?;
        let (tasks, partitions, now) = (batch.tasks, batch.partitions, batch.now);
        let mut inner = self.lock();
        let (out, notify) = inner.insert_tasks(tasks, partitions, now);
        drop(inner);
        self.announce(notify);
        Ok(out)
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let inner = self.lock();
        Ok(keys
            .iter()
            .filter_map(|k| inner.keys.get(k))
            .filter_map(|id| inner.tasks.get(id).cloned())
            .collect())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let inner = self.lock();
        let limit = filter.limit.max(1);
        let start = filter.after.map_or(TaskId::MIN, |a| a.saturating_add(1));
        let tasks: Vec<Task> = inner
            .tasks
            .range(start..)
            .map(|(_, t)| t)
            .filter(|t| filter.status.is_none_or(|s| t.status == s))
            .filter(|t| filter.name.as_ref().is_none_or(|n| &t.name == n))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_fetched(tasks, limit))
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(task) = inner.tasks.get(&id) else {
            return Ok(CancelOutcome::NotFound);
        };
        if task.status != TaskStatus::Pending {
            return Ok(CancelOutcome::Conflict(task.clone()));
        }
        inner.set_status(id, TaskStatus::Cancelled);
        let task = inner.tasks.get_mut(&id).expect("exists");
        task.finished_at = Some(now);
        Ok(CancelOutcome::Cancelled(task.clone()))
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let inner = self.lock();
        Ok(Backlog {
            pending: inner.due.values().map(|d| d.len() as u64).sum(),
            running: inner.running.values().map(|r| r.len() as u64).sum(),
        })
    }
}

#[async_trait::async_trait]
impl Execution for MemoryTaskStore {
    async fn acquire(&self, grant: AcquirePartition) -> Result<u64, StoreError> {
        let (partition, owner, epoch, now) =
            (grant.partition, &grant.owner, grant.epoch, grant.now);
        let mut inner = self.lock();
        let holder = inner.owners.get(&partition);
        grant.check(holder.map(|(o, e)| (o.as_str(), *e)))?;
        inner.owners.insert(partition, (owner.clone(), epoch));
        let stale: Vec<TaskId> = inner
            .running
            .get(&partition)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                let t = &inner.tasks[id];
                t.owner.as_ref() != Some(owner) || t.epoch != Some(epoch)
            })
            .collect();
        for &id in &stale {
            inner.requeue(id, now, "claim lost: the partition moved to another worker");
        }
        Ok(stale.len() as u64)
    }

    async fn claim(&self, claim: ClaimTasks) -> Result<Claimed, StoreError> {
        let (owner, partitions, now) = (&claim.owner, &claim.partitions, claim.now);
        let (limit, lease_ms) = (claim.limit, claim.lease_ms);
        let mut inner = self.lock();
        let (mut valid, mut refused) = (Vec::new(), Vec::new());
        for claim in partitions {
            if inner.owns(owner, claim) {
                valid.push(*claim);
            } else {
                refused.push(claim.partition);
            }
        }
        // Candidates: the first `limit` due tasks of each partition.
        let mut candidates: Vec<(Millis, TaskId, Epoch)> = Vec::new();
        for claim in &valid {
            let due = inner.due.get(&claim.partition).into_iter().flatten();
            candidates.extend(
                due.take_while(|(at, _)| *at <= now)
                    .take(limit)
                    .map(|&(at, id)| (at, id, claim.epoch)),
            );
        }
        candidates.sort_unstable();
        candidates.truncate(limit);
        let mut tasks = Vec::with_capacity(candidates.len());
        for (_, id, epoch) in candidates {
            inner.set_status(id, TaskStatus::Running);
            let t = inner.tasks.get_mut(&id).expect("exists");
            t.owner = Some(owner.clone());
            t.epoch = Some(epoch);
            t.attempts += 1;
            t.started_at = Some(now);
            t.lease_until = Some(now + lease_ms);
            tasks.push(t.clone());
        }
        let next_due = valid
            .iter()
            .filter_map(|c| {
                let due = inner.due.get(&c.partition)?;
                due.iter().map(|(at, _)| *at).find(|&at| at > now)
            })
            .min();
        Ok(Claimed {
            tasks,
            refused,
            next_due,
        })
    }

    async fn complete(&self, ends: &CompleteTasks) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let owner = &ends.owner;
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(ends.completions.len());
        for c in &ends.completions {
            let Some(t) = inner.tasks.get(&c.id) else {
                out.push(None);
                continue;
            };
            let claim = Claim::new(t.partition, c.epoch);
            let current = if rota_cluster::teeth::get().skip_completion_fence {
                t.status == TaskStatus::Running
            } else {
                t.status == TaskStatus::Running
                    && t.partition == c.partition
                    && t.owner.as_ref() == Some(owner)
                    && t.epoch == Some(c.epoch)
                    && inner.owns(owner, &claim)
            };
            if !current {
                out.push(None);
                continue;
            }
            let status = rules::settle(inner.tasks.get_mut(&c.id).expect("exists"), c, ends.now);
            inner.set_status(c.id, status);
            out.push(Some(status));
        }
        Ok(out)
    }

    async fn renew(&self, renewal: RenewLeases) -> Result<Vec<u32>, StoreError> {
        let (owner, partitions) = (&renewal.owner, &renewal.partitions);
        let (now, lease_ms) = (renewal.now, renewal.lease_ms);
        let lease_until = now + lease_ms;
        let mut inner = self.lock();
        let mut refused = Vec::new();
        for claim in partitions {
            if !inner.owns(owner, claim) {
                refused.push(claim.partition);
                continue;
            }
            let ids: Vec<TaskId> = inner
                .running
                .get(&claim.partition)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for id in ids {
                let t = inner.tasks.get_mut(&id).expect("exists");
                if t.owner.as_ref() == Some(owner) && t.epoch == Some(claim.epoch) {
                    t.lease_until = Some(lease_until);
                }
            }
        }
        Ok(refused)
    }

    async fn requeue_expired(&self, expired: RequeueExpired) -> Result<u64, StoreError> {
        let (owner, partitions, now) = (&expired.owner, &expired.partitions, expired.now);
        let mut inner = self.lock();
        let mut expired = Vec::new();
        for claim in partitions.iter().filter(|c| inner.owns(owner, c)) {
            let running = inner.running.get(&claim.partition).into_iter().flatten();
            expired
                .extend(running.filter(|id| inner.tasks[*id].lease_until.is_some_and(|l| l < now)));
        }
        for &id in &expired {
            inner.requeue(
                id,
                now,
                "lease expired: the worker neither finished nor renewed it",
            );
        }
        Ok(expired.len() as u64)
    }

    fn inserted(&self) -> broadcast::Receiver<u32> {
        self.inserted.subscribe()
    }
}

#[async_trait::async_trait]
impl Schedules for MemoryTaskStore {
    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self.lock().schedules.get(name).cloned())
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, StoreError> {
        let inner = self.lock();
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_owned()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .schedules
            .range((from, std::ops::Bound::Unbounded))
            .take(limit.max(1))
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten, StoreError> {
        write.validate()?;
        let mut inner = self.lock();
        let name = write.schedule.def.name.clone();
        let current = inner.schedules.get(&name);
        if current.map(|s| s.revision) != write.expected {
            return Ok(ScheduleWritten::Conflict(current.cloned().map(Box::new)));
        }
        if let Some(partition) = write.fenced_partition() {
            let holder = inner.owners.get(&partition);
            write.check_fence(holder.map(|(o, e)| (o.as_str(), *e)))?;
        }
        let (tasks, notify) = inner.insert_tasks(write.tasks, write.partitions, write.now);
        inner.schedules.insert(name, write.schedule);
        drop(inner);
        self.announce(notify);
        Ok(ScheduleWritten::Written(tasks))
    }

    async fn delete_schedule(&self, name: &str, revision: u64) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.schedules.get(name).map(|s| s.revision) != Some(revision) {
            return Ok(false);
        }
        inner.schedules.remove(name);
        Ok(true)
    }

    async fn due_schedules(&self, query: DueSchedulesQuery) -> Result<DueSchedules, StoreError> {
        let (partitions, before, limit) = (&query.partitions, query.before, query.limit);
        let inner = self.lock();
        let mut active: Vec<&Schedule> = inner
            .schedules
            .values()
            .filter(|s| !s.paused && s.next_tick.is_some() && partitions.contains(&s.partition))
            .collect();
        active.sort_by_key(|s| (s.next_tick, s.def.name.clone()));
        let (due, later): (Vec<&Schedule>, Vec<&Schedule>) = active
            .into_iter()
            .partition(|s| s.next_tick.is_some_and(|t| t <= before));
        Ok(DueSchedules {
            schedules: due.into_iter().take(limit.max(1)).cloned().collect(),
            next_tick: later.first().and_then(|s| s.next_tick),
        })
    }
}

#[async_trait::async_trait]
impl Upkeep for MemoryTaskStore {
    async fn purge_finished(&self, before: Millis, limit: usize) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let old: Vec<TaskId> = inner
            .tasks
            .values()
            .filter(|t| t.status.is_final() && t.finished_at.is_some_and(|f| f < before))
            .map(|t| t.id)
            .take(limit)
            .collect();
        for id in &old {
            if let Some(task) = inner.tasks.remove(id) {
                if let Some(key) = task.idempotency_key {
                    inner.keys.remove(&key);
                }
            }
        }
        Ok(old.len() as u64)
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        inner.owners.clear();
        let running: Vec<TaskId> = inner.running.values().flatten().copied().collect();
        for &id in &running {
            inner.requeue(id, now, "claim lost: the cluster restarted");
        }
        Ok(running.len() as u64)
    }
}
