//! An in-memory [`TaskStore`]: for tests and embedders that need no durability. Passes the same
//! conformance suite as SQLite and PostgreSQL.
//!
//! Claims are recorded per batch, as PostgreSQL records them (`rota-postgres`, `sql/claims.sql`),
//! so that the simulator, which runs on this store, exercises that design: a claim is a row
//! naming the tasks it took and has not settled yet; a claimed task's own row is not written
//! (it stays PENDING, its attempt not yet counted) until its completion settles it and takes it
//! out of the claim; a claim taken back (the partition moved, the lease ran out) is deleted and
//! the tasks it still named are taken back with their attempt counted. A task a claim holds is
//! shown RUNNING under the claim's owner and epoch ([`Inner::seen`]).

use rota_model::{Epoch, InstanceId};
use rota_scheduler::schedule::Schedule;
use rota_scheduler::store::rules;
use rota_scheduler::{
    AcquirePartition, ClaimTasks, CompleteTasks, DueSchedulesQuery, InsertTasks, Inserted,
    RenewLeases, RequeueExpired,
};
use rota_scheduler::{
    Backlog, CancelOutcome, Claim, Claimed, DueSchedules, Execution, ListFilter, Millis, NewTask,
    Page, ScheduleWrite, ScheduleWritten, Schedules, StoreError, Task, TaskId, TaskStatus, Tasks,
    Upkeep, partition_for,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::broadcast;

/// The in-memory task store.
pub struct MemoryTaskStore {
    inner: Mutex<Inner>,
    inserted: broadcast::Sender<Inserted>,
}

#[derive(Default)]
struct Inner {
    tasks: BTreeMap<TaskId, Task>,
    keys: BTreeMap<String, TaskId>,
    owners: BTreeMap<u32, (InstanceId, Epoch)>,
    /// Tasks stored PENDING (held by a claim or not) by partition, in due order.
    due: BTreeMap<u32, BTreeSet<(Millis, TaskId)>>,
    /// Live claims by id, in the order they were made.
    claims: BTreeMap<u64, ClaimRow>,
    /// The live claim holding each task it names (an index of `claims`).
    held: BTreeMap<TaskId, u64>,
    next_claim: u64,
    next_id: TaskId,
    schedules: BTreeMap<String, Schedule>,
}

/// One claim: the tasks of one partition it took and has not settled yet.
struct ClaimRow {
    partition: u32,
    owner: InstanceId,
    epoch: Epoch,
    claimed_at: Millis,
    lease_until: Millis,
    tasks: BTreeSet<TaskId>,
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

    fn announce(&self, inserted: Vec<Inserted>) {
        for n in inserted {
            let _ = self.inserted.send(n);
        }
    }
}

impl Inner {
    /// Inserts tasks (validated), returning them and what to announce.
    fn insert_tasks(
        &mut self,
        tasks: Vec<NewTask>,
        partitions: u32,
        now: Millis,
    ) -> (Vec<(Task, bool)>, Vec<Inserted>) {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Some(existing) = t.idempotency_key.as_ref().and_then(|k| self.keys.get(k)) {
                out.push((self.tasks[existing].clone(), false));
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            let partition = partition_for(t.partition_key.as_deref(), id, partitions);
            let task = t.into_pending(id, partition, now);
            if let Some(key) = &task.idempotency_key {
                self.keys.insert(key.clone(), id);
            }
            self.due
                .entry(task.partition)
                .or_default()
                .insert((task.scheduled_at, id));
            out.push((task.clone(), true));
            self.tasks.insert(id, task);
        }
        let notify = Inserted::of(out.iter().filter(|(_, new)| *new).map(|(t, _)| t));
        (out, notify)
    }

    fn owns(&self, owner: &InstanceId, claim: &Claim) -> bool {
        self.owners
            .get(&claim.partition)
            .is_some_and(|(o, e)| o == owner && *e == claim.epoch)
    }

    /// Moves a task to `status`, keeping the due index right.
    fn set_status(&mut self, id: TaskId, status: TaskStatus) {
        let task = self.tasks.get_mut(&id).expect("indexed task exists");
        let p = task.partition;
        if task.status == TaskStatus::Pending {
            let due = self.due.entry(p).or_default();
            due.remove(&(task.scheduled_at, id));
        }
        task.status = status;
        if status == TaskStatus::Pending {
            let due = self.due.entry(p).or_default();
            due.insert((task.scheduled_at, id));
        }
    }

    /// A task as clients see it: RUNNING under its claim if one holds it.
    fn seen(&self, task: &Task) -> Task {
        let mut task = task.clone();
        if let Some(claim) = self.held.get(&task.id).map(|k| &self.claims[k]) {
            task.status = TaskStatus::Running;
            task.attempts += 1;
            task.owner = Some(claim.owner.clone());
            task.epoch = Some(claim.epoch);
            task.lease_until = Some(claim.lease_until);
            task.started_at = Some(claim.claimed_at);
        }
        task
    }

    /// Deletes the claims `ids` and takes back ([`rules::take_back`]) every task they still
    /// hold, its attempt counted; how many.
    fn take_back(&mut self, ids: Vec<u64>, now: Millis, reason: &str) -> u64 {
        let mut taken = 0;
        for id in ids {
            let Some(claim) = self.claims.remove(&id) else {
                continue;
            };
            for task in claim.tasks {
                self.held.remove(&task);
                let t = self.tasks.get_mut(&task).expect("a claimed task exists");
                t.attempts += 1;
                t.epoch = Some(claim.epoch);
                let status = rules::take_back(t, reason, now);
                self.set_status(task, status);
                taken += 1;
            }
        }
        taken
    }

    /// The claims of `partition` that `keep` does not keep.
    fn claims_of(&self, partition: u32, keep: impl Fn(&ClaimRow) -> bool) -> Vec<u64> {
        self.claims
            .iter()
            .filter(|(_, c)| c.partition == partition && !keep(c))
            .map(|(&id, _)| id)
            .collect()
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
        let inner = self.lock();
        Ok(inner.tasks.get(&id).map(|t| inner.seen(t)))
    }

    async fn by_idempotency_keys(&self, keys: &[String]) -> Result<Vec<Task>, StoreError> {
        let inner = self.lock();
        Ok(keys
            .iter()
            .filter_map(|k| inner.keys.get(k))
            .filter_map(|id| inner.tasks.get(id).map(|t| inner.seen(t)))
            .collect())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let inner = self.lock();
        let limit = filter.limit.max(1);
        let start = filter.after.map_or(TaskId::MIN, |a| a.saturating_add(1));
        let tasks: Vec<Task> = inner
            .tasks
            .range(start..)
            .map(|(_, t)| inner.seen(t))
            .filter(|t| filter.status.is_none_or(|s| t.status == s))
            .filter(|t| filter.name.as_ref().is_none_or(|n| &t.name == n))
            .take(limit + 1)
            .collect();
        Ok(Page::from_fetched(tasks, limit))
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(task) = inner.tasks.get(&id) else {
            return Ok(CancelOutcome::NotFound);
        };
        if task.status != TaskStatus::Pending || inner.held.contains_key(&id) {
            return Ok(CancelOutcome::Conflict(inner.seen(task)));
        }
        inner.set_status(id, TaskStatus::Cancelled);
        let task = inner.tasks.get_mut(&id).expect("exists");
        task.finished_at = Some(now);
        Ok(CancelOutcome::Cancelled(task.clone()))
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let inner = self.lock();
        let stored: u64 = inner.due.values().map(|d| d.len() as u64).sum();
        let running = inner.held.len() as u64;
        Ok(Backlog {
            pending: stored - running,
            running,
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
        let lost = inner.claims_of(partition, |c| &c.owner == owner && c.epoch == epoch);
        Ok(inner.take_back(
            lost,
            now,
            "claim lost: the partition moved to another worker",
        ))
    }

    async fn claim(&self, claim: ClaimTasks) -> Result<Claimed, StoreError> {
        let (owner, partitions, now) = (&claim.owner, &claim.partitions, claim.now);
        let (limit, lease_ms, resume_after) = (claim.limit, claim.lease_ms, &claim.resume_after);
        let mut inner = self.lock();
        let (mut valid, mut refused) = (Vec::new(), Vec::new());
        for claim in partitions {
            if inner.owns(owner, claim) {
                valid.push(*claim);
            } else {
                refused.push(claim.partition);
            }
        }
        // Candidates: the first `limit` due tasks of each partition that no live claim holds.
        let ignore_held = rota_cluster::teeth::get().claim_ignores_held_tasks;
        let mut candidates: Vec<(Millis, TaskId, Claim)> = Vec::new();
        for claim in &valid {
            // After the claimant's resume point, if it gave one.
            let from = match resume_after.get(&claim.partition) {
                Some(&after) => Bound::Excluded(after),
                None => Bound::Unbounded,
            };
            let due = inner
                .due
                .get(&claim.partition)
                .into_iter()
                .flat_map(|due| due.range((from, Bound::Unbounded)));
            candidates.extend(
                due.take_while(|(at, _)| *at <= now)
                    .filter(|(_, id)| ignore_held || !inner.held.contains_key(id))
                    .take(limit)
                    .map(|&(at, id)| (at, id, *claim)),
            );
        }
        candidates.sort_unstable_by_key(|&(at, id, _)| (at, id));
        candidates.truncate(limit);
        // One claim row per partition.
        let mut rows: BTreeMap<u32, u64> = BTreeMap::new();
        for &(_, id, claim) in &candidates {
            let row = match rows.get(&claim.partition) {
                Some(&row) => row,
                None => {
                    inner.next_claim += 1;
                    let row = inner.next_claim;
                    inner.claims.insert(
                        row,
                        ClaimRow {
                            partition: claim.partition,
                            owner: owner.clone(),
                            epoch: claim.epoch,
                            claimed_at: now,
                            lease_until: now + lease_ms,
                            tasks: BTreeSet::new(),
                        },
                    );
                    rows.insert(claim.partition, row);
                    row
                }
            };
            // (With the broken guarantee, a task already held moves to this claim.)
            if let Some(before) = inner.held.insert(id, row) {
                if let Some(c) = inner.claims.get_mut(&before) {
                    c.tasks.remove(&id);
                }
            }
            inner
                .claims
                .get_mut(&row)
                .expect("made above")
                .tasks
                .insert(id);
        }
        let tasks = candidates
            .iter()
            .map(|(_, id, _)| inner.seen(&inner.tasks[id]))
            .collect();
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
            // The claim holding the task, if it is this owner's at this epoch, names the
            // task's partition, and the partition is still held by it at that epoch.
            let holder = inner.tasks.get(&c.id).and_then(|t| {
                let row = *inner.held.get(&c.id)?;
                let k = &inner.claims[&row];
                let current = if rota_cluster::teeth::get().skip_completion_fence {
                    true
                } else {
                    t.partition == c.partition
                        && k.partition == c.partition
                        && &k.owner == owner
                        && k.epoch == c.epoch
                        && inner.owns(owner, &Claim::new(c.partition, c.epoch))
                };
                current.then_some(row)
            });
            let Some(row) = holder else {
                out.push(None);
                continue;
            };
            // Settled as the task was claimed (its attempt counted), then stored.
            let mut task = inner.seen(&inner.tasks[&c.id]);
            let status = rules::settle(&mut task, c, ends.now);
            inner.held.remove(&c.id);
            let claim = inner.claims.get_mut(&row).expect("held by it");
            claim.tasks.remove(&c.id);
            if claim.tasks.is_empty() {
                inner.claims.remove(&row);
            }
            // Out of the due index as stored (PENDING), back in at its new time if PENDING again.
            task.status = status;
            let was_due = inner.tasks[&c.id].scheduled_at;
            let due = inner.due.entry(task.partition).or_default();
            due.remove(&(was_due, c.id));
            if status == TaskStatus::Pending {
                due.insert((task.scheduled_at, c.id));
            }
            inner.tasks.insert(c.id, task);
            out.push(Some(status));
        }
        Ok(out)
    }

    async fn renew(&self, renewal: RenewLeases) -> Result<Vec<u32>, StoreError> {
        let (owner, partitions) = (&renewal.owner, &renewal.partitions);
        let (now, lease_ms) = (renewal.now, renewal.lease_ms);
        let mut inner = self.lock();
        let mut refused = Vec::new();
        for claim in partitions {
            if !inner.owns(owner, claim) {
                refused.push(claim.partition);
                continue;
            }
            for k in inner.claims.values_mut() {
                if k.partition == claim.partition && &k.owner == owner && k.epoch == claim.epoch {
                    k.lease_until = now + lease_ms;
                }
            }
        }
        Ok(refused)
    }

    async fn requeue_expired(&self, expired: RequeueExpired) -> Result<u64, StoreError> {
        let (owner, partitions, now) = (&expired.owner, &expired.partitions, expired.now);
        let mut inner = self.lock();
        let mut lost = Vec::new();
        for claim in partitions.iter().filter(|c| inner.owns(owner, c)) {
            lost.extend(inner.claims_of(claim.partition, |k| k.lease_until >= now));
        }
        Ok(inner.take_back(
            lost,
            now,
            "lease expired: the worker neither finished nor renewed it",
        ))
    }

    fn inserted(&self) -> broadcast::Receiver<Inserted> {
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
        let all = inner.claims.keys().copied().collect();
        Ok(inner.take_back(all, now, "claim lost: the cluster restarted"))
    }
}
