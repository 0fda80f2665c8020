//! The worker's bookkeeping, as a plain struct with no runtime and no I/O: which partitions it
//! owns and which it is giving up, the tasks it has claimed (queued for a slot, running, or
//! finished with their completion not yet written), and how fast it starts them. The async
//! loops around it ([`super`]) ask it what to do and tell it what happened; every decision
//! they take from it (how many to claim, which queued task to start or give back, when a
//! partition has drained) is made here and tested without tokio.
//!
//! Times are the caller's monotonic milliseconds: the book never reads a clock.
//!
//! # Invariants
//! - `outstanding` is the sum of `unsettled`: every claim the worker holds is counted once,
//!   under its partition, from the claim until its end is written to the store (or given up).
//! - A claimed task is in at most one of `queue` and `running`; a task moves from the queue to
//!   running in one step, so a step-down sees each task in exactly one place.
//! - A partition is in at most one of `owned` and `leaving`.
//! - `unsettled[p]` is at least the number of `p`'s queued and running tasks (finished tasks
//!   whose completion is not yet written count too).

use super::resume::Resume;
use crate::store::Claim;
use crate::{Millis, Task, TaskId};
use rota_model::Epoch;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A claimed task waiting for a slot, with when it was claimed.
#[derive(Debug)]
pub(crate) struct Queued {
    pub task: Task,
    pub claimed_at: Millis,
}

/// What the worker holds. `R` is what it keeps of a running task (the handle that aborts it
/// and the completion that reports it interrupted; anything, in tests).
#[derive(Debug)]
pub(crate) struct Book<R> {
    /// Owned partitions and their epochs.
    owned: BTreeMap<u32, Epoch>,
    /// Partitions being given up: no longer claimed from, still draining.
    leaving: BTreeSet<u32>,
    /// Claimed tasks waiting for a free slot, in due order.
    queue: VecDeque<Queued>,
    /// Tasks running, per partition.
    running: BTreeMap<u32, BTreeMap<TaskId, R>>,
    /// Claims not yet ended in the store, per partition.
    unsettled: BTreeMap<u32, usize>,
    /// Their sum.
    outstanding: usize,
    /// Tasks started in the current and the previous second.
    starts: StartRate,
    /// Where each owned partition's next claim may resume.
    pub resume: Resume,
}

impl<R> Default for Book<R> {
    fn default() -> Self {
        Self {
            owned: BTreeMap::new(),
            leaving: BTreeSet::new(),
            queue: VecDeque::new(),
            running: BTreeMap::new(),
            unsettled: BTreeMap::new(),
            outstanding: 0,
            starts: StartRate::default(),
            resume: Resume::default(),
        }
    }
}

/// What [`Book::take_startable`] found in the queue.
#[derive(Debug, Default)]
pub(crate) struct Startable {
    /// Tasks to start now, one per free slot.
    pub start: Vec<Task>,
    /// Tasks to give back unstarted: their partition is no longer owned, or they waited too
    /// long for a slot.
    pub stale: Vec<Task>,
}

impl<R> Book<R> {
    /// The owned partitions with their epochs, as claims name them.
    pub fn claims(&self) -> Vec<Claim> {
        self.owned
            .iter()
            .map(|(&partition, &epoch)| Claim { partition, epoch })
            .collect()
    }

    /// Whether `partition` is owned.
    pub fn owns(&self, partition: u32) -> bool {
        self.owned.contains_key(&partition)
    }

    /// Whether completions of `partition` are still worth retrying: it is owned, or being
    /// given up.
    pub fn holds(&self, partition: u32) -> bool {
        self.owns(partition) || self.leaving.contains(&partition)
    }

    /// Records `partition` as owned at `epoch`; `true` if it was not owned before.
    pub fn gain(&mut self, partition: u32, epoch: Epoch) -> bool {
        self.leaving.remove(&partition);
        // Gained, or held under a new epoch: the acquisition may have taken tasks back.
        self.resume.forget(partition);
        self.owned.insert(partition, epoch).is_none()
    }

    /// Whether `partition` is held, or has claims not yet settled, under another epoch than
    /// `epoch`: what a grant under `epoch` must let go before it acquires.
    pub fn held_under_another_epoch(&self, partition: u32, epoch: Epoch) -> bool {
        let owned = self.owned.get(&partition);
        owned != Some(&epoch) && (owned.is_some() || self.unsettled(partition) > 0)
    }

    /// Starts giving `partition` up: no longer owned (so nothing more is claimed from it), but
    /// held until [`Book::left`], so its completions are still retried. Returns whether it was
    /// owned and its queued tasks, taken out of the queue (to be given back; they stay
    /// unsettled until that is written).
    pub fn give_up(&mut self, partition: u32) -> (bool, Vec<Task>) {
        let was_owned = self.owned.remove(&partition).is_some();
        self.leaving.insert(partition);
        self.resume.forget(partition);
        (was_owned, self.unqueue(partition))
    }

    /// `partition` has been given up.
    pub fn left(&mut self, partition: u32) {
        self.leaving.remove(&partition);
    }

    /// The store refused claims in `partitions` (another owner holds them now): they are no
    /// longer owned, and their queued tasks are no longer this worker's (the new owner took
    /// them back) and are settled at once. Returns the partitions that were owned.
    pub fn drop_partitions(&mut self, partitions: &[u32]) -> Vec<u32> {
        let dropped: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| self.owned.remove(p).is_some())
            .collect();
        for &p in partitions {
            self.resume.forget(p);
            let gone = self.unqueue(p);
            self.settle(gone.iter().map(|t| t.partition));
        }
        dropped
    }

    /// Counts new claims as not yet settled, and queues their tasks.
    pub fn claimed(&mut self, tasks: Vec<Task>, now: Millis) {
        self.outstanding += tasks.len();
        for t in &tasks {
            *self.unsettled.entry(t.partition).or_default() += 1;
        }
        self.queue.extend(tasks.into_iter().map(|task| Queued {
            task,
            claimed_at: now,
        }));
    }

    /// Claims of these partitions (one per item) ended in the store, or were given up; returns
    /// how many.
    pub fn settle(&mut self, partitions: impl IntoIterator<Item = u32>) -> usize {
        let mut n = 0;
        for p in partitions {
            n += 1;
            if let Some(count) = self.unsettled.get_mut(&p) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.unsettled.remove(&p);
                }
            }
        }
        self.outstanding = self.outstanding.saturating_sub(n);
        n
    }

    /// Claims of `partition` not yet settled: it has drained when this is zero.
    pub fn unsettled(&self, partition: u32) -> usize {
        self.unsettled.get(&partition).copied().unwrap_or(0)
    }

    /// Claims not yet settled, in all partitions.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Tasks waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How many tasks to claim now, if a claim is worth a store call: enough to fill every
    /// slot and the prefetch (a second's starts at the recent rate, at most twice a batch), less what
    /// is claimed already (queued, running, and finished ones whose completion is not written,
    /// less a batch of the latter), at most a batch; worth it when a slot would otherwise stay
    /// idle, or half the capacity (at most two batches) is free. `busy` is the slots in use.
    pub fn claim_size(
        &mut self,
        concurrency: usize,
        batch: usize,
        busy: usize,
        now: Millis,
    ) -> Option<usize> {
        let capacity = concurrency + self.prefetch(batch, now);
        // Finished tasks whose completions are being written count up to a batch of them as
        // settled: a completion write in flight must not halve the next claim, but a store
        // that falls behind on completions still slows claiming.
        let writing = self.outstanding.saturating_sub(self.queue.len() + busy);
        let held = self.outstanding - writing.min(batch);
        let want = capacity.saturating_sub(held).min(batch);
        // Half the capacity free, or a whole batch: at a high rate the capacity exceeds two
        // batches, and a worker that waited for half of it would claim only once its queue ran
        // dry, its slots idle for the claim's round trip; it claims the next batch while it
        // still runs the last one.
        let worth = self.queue.len() + busy < concurrency || want * 2 >= capacity.min(2 * batch);
        (want > 0 && worth).then_some(want)
    }

    /// How many tasks to hold claimed beyond the free slots: a second's starts at the rate of
    /// the last window or two, at most two batches. (Measured over short windows, so that a
    /// backlog found by an idle worker is claimed in full batches within milliseconds, not
    /// after a second of small claims; long tasks start slowly and are claimed as slowly.)
    fn prefetch(&mut self, batch: usize, now: Millis) -> usize {
        self.starts.roll(now);
        let per_window = self.starts.previous.max(self.starts.current);
        (per_window * (1_000 / StartRate::WINDOW) as usize).min(2 * batch)
    }

    /// Takes from the queue, in order, a task for each of `free` slots, and every task that
    /// must be given back instead (its partition no longer owned, or claimed longer ago than
    /// `max_age`: the store fences claims, not starts, so a task that waited long might belong
    /// to a partition that moved while this worker did not notice). The tasks to start count
    /// as started now.
    pub fn take_startable(&mut self, free: usize, max_age: Millis, now: Millis) -> Startable {
        let mut found = Startable::default();
        while let Some(queued) = self.queue.pop_front() {
            // Owned under the epoch it was claimed at: a claim that returns after its partition
            // was granted again under a new epoch was taken back by that grant's acquisition
            // (and may be claimed again under it), so it must not start.
            let owned = self.owned.get(&queued.task.partition).copied();
            if owned.is_none() || owned != queued.task.epoch || now - queued.claimed_at > max_age {
                found.stale.push(queued.task);
                continue;
            }
            if found.start.len() == free {
                self.queue.push_front(queued);
                break;
            }
            found.start.push(queued.task);
        }
        if !found.start.is_empty() {
            self.starts.roll(now);
            self.starts.current += found.start.len();
        }
        found
    }

    /// Takes every queued task out of the queue (to be given back).
    pub fn take_queue(&mut self) -> Vec<Task> {
        self.queue.drain(..).map(|q| q.task).collect()
    }

    /// Records a task as running.
    pub fn run(&mut self, partition: u32, id: TaskId, running: R) {
        self.running
            .entry(partition)
            .or_default()
            .insert(id, running);
    }

    /// A running task ended (finished or aborted); what was kept of it.
    pub fn ran(&mut self, partition: u32, id: TaskId) -> Option<R> {
        let tasks = self.running.get_mut(&partition)?;
        let kept = tasks.remove(&id);
        if tasks.is_empty() {
            self.running.remove(&partition);
        }
        kept
    }

    /// Takes what is kept of `partition`'s running tasks (to abort them).
    pub fn take_running(&mut self, partition: u32) -> Vec<R> {
        self.running
            .remove(&partition)
            .map(|tasks| tasks.into_values().collect())
            .unwrap_or_default()
    }

    /// Takes what is kept of every running task (to abort them).
    pub fn take_all_running(&mut self) -> Vec<R> {
        std::mem::take(&mut self.running)
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect()
    }

    /// What is kept of every running task, in place.
    pub fn running(&self) -> impl Iterator<Item = &R> {
        self.running.values().flat_map(BTreeMap::values)
    }

    /// Takes `partition`'s queued tasks out of the queue.
    fn unqueue(&mut self, partition: u32) -> Vec<Task> {
        let (theirs, ours): (VecDeque<Queued>, VecDeque<Queued>) = self
            .queue
            .drain(..)
            .partition(|q| q.task.partition == partition);
        self.queue = ours;
        theirs.into_iter().map(|q| q.task).collect()
    }
}

/// Starts counted per window of [`StartRate::WINDOW`], for the prefetch target.
#[derive(Debug, Default)]
struct StartRate {
    /// Start of the current window (`None` before the first roll).
    window: Option<Millis>,
    current: usize,
    previous: usize,
}

impl StartRate {
    /// The window, in milliseconds (divides a second).
    const WINDOW: Millis = 100;

    fn roll(&mut self, now: Millis) {
        let window = *self.window.get_or_insert(now);
        let elapsed = now - window;
        if elapsed >= 2 * Self::WINDOW {
            (self.previous, self.current) = (0, 0);
            self.window = Some(now);
        } else if elapsed >= Self::WINDOW {
            (self.previous, self.current) = (self.current, 0);
            self.window = Some(window + Self::WINDOW);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::TaskStatus;

    pub(crate) fn task(id: TaskId, partition: u32) -> Task {
        Task {
            id,
            name: "t".into(),
            payload: serde_json::Value::Null,
            handler: None,
            partition_key: None,
            partition,
            status: TaskStatus::Running,
            scheduled_at: 0,
            attempts: 1,
            max_attempts: 3,
            last_error: None,
            owner: None,
            epoch: Some(1),
            lease_until: None,
            idempotency_key: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
        }
    }

    /// The invariants written on the module, checked.
    fn check<R>(book: &Book<R>) {
        assert_eq!(book.outstanding, book.unsettled.values().sum::<usize>());
        assert!(book.owned.keys().all(|p| !book.leaving.contains(p)));
        for (p, tasks) in &book.running {
            let queued = book.queue.iter().filter(|q| q.task.partition == *p).count();
            assert!(book.unsettled(*p) >= queued + tasks.len(), "partition {p}");
            for q in &book.queue {
                assert!(!tasks.contains_key(&q.task.id), "task {} twice", q.task.id);
            }
        }
    }

    #[test]
    fn a_claim_is_counted_until_it_settles_and_then_the_partition_has_drained() {
        let mut book = Book::<()>::default();
        assert!(book.gain(3, 1));
        assert!(!book.gain(3, 1));
        book.claimed(vec![task(1, 3), task(2, 3)], 0);
        check(&book);
        let found = book.take_startable(1, 1_000, 10);
        assert_eq!(found.start.iter().map(|t| t.id).collect::<Vec<_>>(), [1]);
        book.run(3, 1, ());
        check(&book);
        let (was_owned, queued) = book.give_up(3);
        assert!(was_owned && book.holds(3) && !book.owns(3));
        assert_eq!(queued.iter().map(|t| t.id).collect::<Vec<_>>(), [2]);
        assert_eq!(book.unsettled(3), 2, "given back is not yet settled");
        assert_eq!(book.settle([3]), 1);
        book.ran(3, 1);
        book.settle([3]);
        assert_eq!((book.unsettled(3), book.outstanding()), (0, 0));
        book.left(3);
        assert!(!book.holds(3));
        check(&book);
    }

    /// A claim sent under one epoch that returns after its partition was granted again under a
    /// new one: the new grant's acquisition took its tasks back (and may claim them again), so
    /// they are given back, never started; and a grant under a new epoch is told to let the
    /// old epoch's claims go first.
    #[test]
    fn claims_of_an_older_epoch_never_start_and_are_let_go_before_a_new_grant() {
        let mut book = Book::<()>::default();
        book.gain(0, 1);
        assert!(!book.held_under_another_epoch(0, 1));
        assert!(book.held_under_another_epoch(0, 2), "owned under epoch 1");
        assert!(!book.held_under_another_epoch(5, 2), "not held at all");
        book.gain(0, 2);
        book.claimed(vec![task(1, 0)], 0);
        let found = book.take_startable(5, 1_000, 10);
        assert!(
            found.start.is_empty(),
            "a task claimed under epoch 1 started under epoch 2"
        );
        assert_eq!(found.stale.iter().map(|t| t.id).collect::<Vec<_>>(), [1]);
        book.give_up(0);
        assert!(
            book.held_under_another_epoch(0, 3),
            "a claim still unsettled after the step-down"
        );
        book.settle([0]);
        book.left(0);
        assert!(!book.held_under_another_epoch(0, 3));
        check(&book);
    }

    #[test]
    fn queued_tasks_of_partitions_no_longer_owned_or_too_old_are_given_back() {
        let mut book = Book::<()>::default();
        book.gain(0, 1);
        book.gain(1, 1);
        book.claimed(vec![task(1, 0), task(2, 1)], 0);
        book.claimed(vec![task(3, 0)], 900);
        book.drop_partitions(&[1]);
        assert_eq!(book.unsettled(1), 0, "the new owner took them back");
        let found = book.take_startable(5, 500, 1_000);
        assert_eq!(found.start.iter().map(|t| t.id).collect::<Vec<_>>(), [3]);
        assert_eq!(found.stale.iter().map(|t| t.id).collect::<Vec<_>>(), [1]);
        check(&book);
    }

    #[test]
    fn no_slot_no_start_and_the_order_is_kept() {
        let mut book = Book::<()>::default();
        book.gain(0, 1);
        book.claimed((1..=4).map(|id| task(id, 0)).collect(), 0);
        assert!(book.take_startable(0, 1_000, 0).start.is_empty());
        let ids: Vec<TaskId> = book
            .take_startable(2, 1_000, 0)
            .start
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(book.queued(), 2);
    }

    #[test]
    fn claims_fill_the_slots_and_prefetch_a_second_of_starts_at_the_recent_rate() {
        let mut book = Book::<()>::default();
        book.gain(0, 1);
        // Idle: enough for every slot.
        assert_eq!(book.claim_size(16, 256, 0, 0), Some(16));
        book.claimed((0..16).map(|id| task(id, 0)).collect(), 0);
        // Everything claimed and nothing started: not worth a call.
        assert_eq!(book.claim_size(16, 256, 0, 0), None);
        // 20 starts in this window of 100 ms raise the target to the slots and 200 more.
        for id in 0..16 {
            book.take_startable(1, 1_000, 10);
            book.settle([0]);
            book.claimed(vec![task(100 + id, 0)], 10);
        }
        book.starts.current = 20;
        let size = book.claim_size(16, 256, 16, 50).unwrap();
        assert_eq!(size, 16 + 200 - book.outstanding());
        // At a high rate, the next batch is claimed while the last one still runs.
        book.starts.current = 1_000;
        book.claimed((1_000..1_256).map(|id| task(id, 0)).collect(), 50);
        let held = book.outstanding();
        assert_eq!(book.claim_size(16, 256, 16, 50), Some(256), "held {held}");
        book.claimed((2_000..2_256).map(|id| task(id, 0)).collect(), 50);
        assert_eq!(book.claim_size(16, 256, 16, 50), None);
        book.starts.current = 20;
        // Held through the next window, forgotten after two idle ones.
        assert_eq!(book.prefetch(256, 150), 200);
        assert_eq!(book.prefetch(256, 400), 0);
    }

    #[test]
    fn aborting_takes_every_running_task_once() {
        let mut book = Book::<TaskId>::default();
        book.gain(0, 1);
        book.gain(1, 1);
        for (id, p) in [(1, 0), (2, 1), (3, 1)] {
            book.run(p, id, id);
        }
        assert_eq!(book.take_running(1), [2, 3]);
        assert_eq!(book.take_all_running(), [1]);
        assert_eq!(book.running().count(), 0);
        assert_eq!(book.ran(0, 1), None);
    }
}
