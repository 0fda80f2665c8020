//! Where each owned partition's next claim may resume its scan of due tasks: just after the
//! last task this worker claimed there ([`ClaimTasks::resume_after`]). A large burn-down leaves
//! its finished tasks' entries at the head of the partition's due index until vacuum removes
//! them; a claim that starts at the head steps over all of them (measured: 3 ms a partition
//! after 83,000 finished tasks, against 0.05 ms from a resume point), and the claims of a
//! million-task backlog slowed down as it burned.
//!
//! A resume point is only ever a shortcut. The invariant: every due task of the partition
//! ordered before its point was claimed by this worker (or is held by a live claim). So a point
//! moves back to just before any task that may have become pending before it: an insert
//! notified with an earlier (or equal) due time, a task this worker gives back or retries. It
//! is forgotten where that place is not known: expired claims taken back, a notification lost,
//! a partition gained or lost, a task released by its completion; and, as a backstop for any
//! way not foreseen here, when it is [`LIFETIME_MS`] old (the worker's idle poll, the backstop
//! for lost notifications, has the same bound), one partition a claim, so that the claims that
//! scan a whole partition again are spread out rather than all at once. A claim sent before
//! such a moment does not move the point when it returns (its answer may predate the task that
//! moved it): each move back starts a new generation.
//!
//! [`ClaimTasks::resume_after`]: crate::ClaimTasks::resume_after

use crate::store::{Completion, CompletionOutcome, Inserted};
use crate::{Millis, Task, TaskId};
use std::collections::BTreeMap;

/// How long a resume point is kept at most: a task that became due before it, in some way no
/// notification told of, waits at most this long (plus a claim).
pub(crate) const LIFETIME_MS: Millis = 5_000;

/// A point stays before the tasks due in the last this many milliseconds of the claim's
/// time. An insert takes its due time ("now") before it commits, so a task due a moment ago may
/// commit after a claim took later ones; its notification would move the point back, but it
/// comes tens of milliseconds after the commit (measured: start-due lag p99 33 ms without
/// points, 70 ms with points that waited for it). Behind this margin the next claim finds it
/// anyway, and steps over the tasks finished in it: a quarter of a second's (a whole second's,
/// as it first was, made each claim of a backlog's first second, and each claim at a steady
/// rate after a large burn-down, step over four times as many; see docs/performance.md).
pub(crate) const SETTLING_MS: Millis = 250;

/// The resume points of the owned partitions. Times are wall-clock milliseconds, as due times
/// are (a clock that jumps only makes a point live longer or shorter).
#[derive(Debug, Default)]
pub(crate) struct Resume {
    points: BTreeMap<u32, Point>,
    /// Counts the moves back and the forgettings.
    generation: u64,
}

/// One partition's point.
#[derive(Debug)]
struct Point {
    /// The key (due time, id) the scan resumes after.
    after: (Millis, TaskId),
    /// When it was first set, after the partition was last scanned from its start.
    born: Millis,
}

impl Resume {
    /// The points to send with a claim at `now`, and the generation to hand back with its
    /// answer. The oldest point past its lifetime, if any, is forgotten first.
    pub fn points(&mut self, now: Millis) -> (BTreeMap<u32, (Millis, TaskId)>, u64) {
        let expired = self
            .points
            .iter()
            .filter(|(_, point)| now - point.born >= LIFETIME_MS)
            .min_by_key(|(_, point)| point.born)
            .map(|(&partition, _)| partition);
        if let Some(partition) = expired {
            self.forget(partition);
        }
        let points = self.points.iter().map(|(&p, point)| (p, point.after));
        (points.collect(), self.generation)
    }

    /// A claim of generation `generation`, at `claimed_at` (wall-clock milliseconds, as due
    /// times are), took `tasks`: each partition's scan may resume after the last of them (a
    /// store takes each partition's due tasks in key order, and the cut to the claim's limit
    /// keeps a prefix of each), though not after the tasks still settling
    /// ([`SETTLING_MS`]). Ignored if something was forgotten since the claim was sent.
    pub fn claimed(&mut self, generation: u64, tasks: &[Task], claimed_at: Millis) {
        if generation != self.generation {
            return;
        }
        let settled = (claimed_at - SETTLING_MS, TaskId::MAX);
        for t in tasks {
            let key = (t.scheduled_at, t.id).min(settled);
            let point = self.points.entry(t.partition).or_insert(Point {
                after: key,
                born: claimed_at,
            });
            point.after = point.after.max(key);
        }
    }

    /// A task of `partition` may be pending at `at` (inserted, given back, retried): unless it
    /// is ordered after the partition's point, the point moves back to just before it (before
    /// every id due at `at`).
    pub fn due_at(&mut self, partition: u32, at: Millis) {
        let Some(point) = self.points.get_mut(&partition) else {
            return;
        };
        if at <= point.after.0 {
            match at.checked_sub(1) {
                Some(before) => point.after = (before, TaskId::MAX),
                None => {
                    self.points.remove(&partition);
                }
            }
            self.generation += 1;
        }
    }

    /// An insert notification, or `None` for notifications lost (the receiver lagged).
    pub fn inserted(&mut self, notification: Option<Inserted>) {
        match notification {
            Some(n) => self.due_at(n.partition, n.earliest_due),
            None => self.forget_all(),
        }
    }

    /// Attempts whose ends were written: the retried and the released tasks are pending again,
    /// maybe before where the next claim of their partition would resume.
    pub fn ended(&mut self, completions: &[Completion]) {
        for c in completions {
            match c.outcome {
                CompletionOutcome::Failed { retry_at, .. } => self.due_at(c.partition, retry_at),
                CompletionOutcome::Released => self.forget(c.partition),
                CompletionOutcome::Succeeded | CompletionOutcome::Abandoned { .. } => {}
            }
        }
    }

    /// Forgets `partition`'s point.
    pub fn forget(&mut self, partition: u32) {
        self.points.remove(&partition);
        self.generation += 1;
    }

    /// Forgets every point.
    pub fn forget_all(&mut self) {
        self.points.clear();
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim's time by which the tests' tasks have settled.
    const LATER: Millis = 100 + SETTLING_MS;

    fn task(partition: u32, at: Millis, id: TaskId) -> Task {
        let mut t = crate::worker::book::tests::task(id, partition);
        t.scheduled_at = at;
        t
    }

    #[test]
    fn a_point_follows_the_last_task_claimed_in_each_partition() {
        let mut r = Resume::default();
        let (points, generation) = r.points(0);
        assert!(points.is_empty());
        r.claimed(
            generation,
            &[task(0, 10, 5), task(0, 10, 7), task(1, 3, 9)],
            LATER,
        );
        let (points, _) = r.points(1);
        assert_eq!(points.get(&0), Some(&(10, 7)));
        assert_eq!(points.get(&1), Some(&(3, 9)));
    }

    #[test]
    fn a_task_due_before_the_point_forgets_it_and_answers_sent_before_are_ignored() {
        let mut r = Resume::default();
        let (_, generation) = r.points(0);
        r.claimed(generation, &[task(0, 10, 5)], LATER);
        let (_, generation) = r.points(1);
        // Due later: the point stays.
        r.due_at(0, 11);
        assert_eq!(r.points(2).0.get(&0), Some(&(10, 5)));
        // Due at the point's time (its id may be lower): back to before every task due then.
        r.due_at(0, 10);
        assert_eq!(r.points(3).0.get(&0), Some(&(9, TaskId::MAX)));
        // The answer of a claim sent before that moves nothing.
        r.claimed(generation, &[task(0, 20, 8)], LATER);
        assert_eq!(r.points(4).0.get(&0), Some(&(9, TaskId::MAX)));
        // Due at a time not known: forgotten.
        r.due_at(0, Millis::MIN);
        assert!(r.points(5).0.is_empty());
    }

    #[test]
    fn a_point_stays_before_the_tasks_still_settling() {
        let mut r = Resume::default();
        let (_, generation) = r.points(0);
        // Claimed at 1,200: the tasks due after 1,200 - SETTLING_MS may still be committing.
        let at = 1_200;
        r.claimed(generation, &[task(0, 10, 5), task(0, at - 50, 6)], at);
        assert_eq!(
            r.points(1).0.get(&0),
            Some(&(at - SETTLING_MS, TaskId::MAX))
        );
        // A point before that margin is the last task's own.
        let mut r = Resume::default();
        let (_, generation) = r.points(0);
        r.claimed(generation, &[task(0, 10, 5)], at);
        assert_eq!(r.points(1).0.get(&0), Some(&(10, 5)));
    }

    #[test]
    fn points_live_at_most_their_lifetime_and_are_forgotten_one_a_claim() {
        let mut r = Resume::default();
        let (_, generation) = r.points(0);
        r.claimed(generation, &[task(0, 10, 5), task(1, 10, 6)], LATER);
        assert_eq!(r.points(LATER + LIFETIME_MS - 1).0.len(), 2);
        assert_eq!(r.points(LATER + LIFETIME_MS).0.len(), 1);
        assert!(r.points(LATER + LIFETIME_MS).0.is_empty());
    }
}
