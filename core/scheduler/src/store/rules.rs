//! The rules every store applies to a claim's end, written once: how a completion settles its
//! task ([`settle`]) and how a claim that will not complete is taken back ([`take_back`]). Each
//! is given twice, side by side, in the two languages stores speak: as a Rust function (the
//! memory store applies it to its rows) and as a SQL `SET` clause ([`settle_sql!`],
//! [`take_back_sql!`], which the SQLite and PostgreSQL stores put in their statements). The
//! conformance suite holds every store to the same outcomes.
//!
//! Neither function sets the task's `status`: it returns the new one, for the store to record
//! (a store keeps indexes by status, which must see the old one go).

use super::{Completion, CompletionOutcome};
use crate::{Millis, Task, TaskStatus};

impl CompletionOutcome {
    /// The outcome as [`settle_sql!`] reads it: 0 succeeded, 1 failed (retried
    /// while attempts remain), 2 released, 3 failed for good.
    pub fn code(&self) -> i16 {
        match self {
            CompletionOutcome::Succeeded => 0,
            CompletionOutcome::Failed { .. } => 1,
            CompletionOutcome::Released => 2,
            CompletionOutcome::Abandoned { .. } => 3,
        }
    }

    /// The error it records, if any.
    pub fn error(&self) -> Option<&str> {
        match self {
            CompletionOutcome::Failed { error, .. } | CompletionOutcome::Abandoned { error } => {
                Some(error)
            }
            CompletionOutcome::Succeeded | CompletionOutcome::Released => None,
        }
    }

    /// The status this outcome leaves its task in ([`settle`]'s rule), given whether the attempt
    /// that ends was the task's last; only a failure that may be retried depends on that
    /// ([`CompletionOutcome::depends_on_attempts`]).
    pub fn settled_status(&self, out_of_attempts: bool) -> TaskStatus {
        match self {
            CompletionOutcome::Succeeded => TaskStatus::Completed,
            CompletionOutcome::Failed { .. } if out_of_attempts => TaskStatus::Failed,
            CompletionOutcome::Abandoned { .. } => TaskStatus::Failed,
            CompletionOutcome::Failed { .. } | CompletionOutcome::Released => TaskStatus::Pending,
        }
    }

    /// Whether [`CompletionOutcome::settled_status`] depends on the task's attempts: a store
    /// that applies the rule in SQL needs not read back the status of the other outcomes.
    pub fn depends_on_attempts(&self) -> bool {
        matches!(self, CompletionOutcome::Failed { .. })
    }

    /// When a failed attempt runs again (0 for the other outcomes), as `c.retry_at`.
    pub fn retry_at(&self) -> Millis {
        match self {
            CompletionOutcome::Failed { retry_at, .. } => *retry_at,
            _ => 0,
        }
    }
}

/// Settles a task RUNNING under the claim `c` ends (the store has checked the fence): a success
/// makes it COMPLETED; a failure PENDING again at its retry time, or FAILED once `max_attempts`
/// attempts have run; a failure for good FAILED at once; a release (the claim never started)
/// PENDING again at once with the attempt not counted. The claim's owner and lease are cleared;
/// the start recorded is the handler's, when the completion knows it.
pub fn settle(task: &mut Task, c: &Completion, now: Millis) -> TaskStatus {
    let status = c.outcome.settled_status(task.attempts >= task.max_attempts);
    task.owner = None;
    task.lease_until = None;
    if c.outcome == CompletionOutcome::Released {
        task.attempts -= 1;
        task.started_at = None;
    } else if c.started_at.is_some() {
        task.started_at = c.started_at;
    }
    if let Some(error) = c.outcome.error() {
        task.last_error = Some(error.to_owned());
    }
    if let CompletionOutcome::Failed { retry_at, .. } = &c.outcome {
        if status == TaskStatus::Pending {
            task.scheduled_at = *retry_at;
        }
    }
    task.finished_at = status.is_final().then_some(now);
    status
}

/// Takes back a claim lost without a completion (its partition moved, its lease ran out, the
/// cluster restarted): PENDING again, or FAILED with `reason` as its last error once its
/// attempts are used up. The attempt stays counted: a task that kills every worker that runs
/// it still ends FAILED.
pub fn take_back(task: &mut Task, reason: &str, now: Millis) -> TaskStatus {
    task.owner = None;
    task.lease_until = None;
    if task.attempts >= task.max_attempts {
        task.last_error = Some(reason.to_owned());
        task.finished_at = Some(now);
        TaskStatus::Failed
    } else {
        TaskStatus::Pending
    }
}

/// [`settle`] as the SQL `SET` clause of an `UPDATE` of a task row. `$t` prefixes the task's
/// columns (`""` or `"t."`); `$attempts` is the SQL of the task's attempts counting the one that
/// ends (a store that counts the attempt at the claim passes its column; one that records claims
/// apart from the task rows, its column plus one); the completion's values are SQL expressions:
/// `$outcome` (as [`CompletionOutcome::code`]), `$error`, `$retry_at`, `$started_at`, and `$now`
/// is the SQL of "now" (bound parameters, or the columns of a joined row). Expands to a string
/// literal, for `concat!`.
#[macro_export]
macro_rules! settle_sql {
    (t = $t:literal, attempts = $a:literal, outcome = $o:literal, error = $e:literal,
     retry_at = $r:literal, started_at = $s:literal, now = $now:literal) => {
        concat!(
            "status = CASE WHEN ",
            $o,
            " = 0 THEN 'COMPLETED' WHEN ",
            $o,
            " = 3 OR (",
            $o,
            " = 1 AND ",
            $a,
            " >= ",
            $t,
            "max_attempts) THEN 'FAILED' ELSE 'PENDING' END, ",
            "attempts = CASE WHEN ",
            $o,
            " = 2 THEN ",
            $a,
            " - 1 ELSE ",
            $a,
            " END, ",
            "scheduled_at = CASE WHEN ",
            $o,
            " = 1 AND ",
            $a,
            " < ",
            $t,
            "max_attempts ",
            "THEN ",
            $r,
            " ELSE ",
            $t,
            "scheduled_at END, ",
            "finished_at = CASE WHEN ",
            $o,
            " IN (0, 3) OR (",
            $o,
            " = 1 AND ",
            $a,
            " >= ",
            $t,
            "max_attempts) THEN ",
            $now,
            " ELSE NULL END, ",
            "started_at = CASE WHEN ",
            $o,
            " = 2 THEN NULL ELSE COALESCE(",
            $s,
            ", ",
            $t,
            "started_at) END, ",
            "last_error = CASE WHEN ",
            $o,
            " IN (1, 3) THEN ",
            $e,
            " ELSE ",
            $t,
            "last_error END, ",
            "owner = NULL, lease_until = NULL"
        )
    };
}

/// [`take_back`] as the SQL `SET` clause of an `UPDATE` of task rows: `$t` prefixes the
/// columns (`""` or `"t."`), `$attempts` is the SQL of the attempts counting the lost one (as in
/// [`settle_sql!`]; recorded as the task's attempts), `$reason` is the last error of a task out
/// of attempts, `$now` the SQL of "now". Expands to a string literal, for `concat!`.
#[macro_export]
macro_rules! take_back_sql {
    ($t:literal, attempts = $a:literal, $reason:literal, $now:literal) => {
        concat!(
            "status = CASE WHEN ",
            $a,
            " >= ",
            $t,
            "max_attempts THEN 'FAILED' ELSE 'PENDING' END, ",
            "last_error = CASE WHEN ",
            $a,
            " >= ",
            $t,
            "max_attempts THEN '",
            $reason,
            "' ELSE ",
            $t,
            "last_error END, ",
            "finished_at = CASE WHEN ",
            $a,
            " >= ",
            $t,
            "max_attempts THEN ",
            $now,
            " ELSE NULL END, ",
            "attempts = ",
            $a,
            ", owner = NULL, lease_until = NULL"
        )
    };
}
