//! The worker's fenced path ([`Execution`]) and upkeep ([`Upkeep`]): ownership of partitions,
//! claims, completions, leases, and the claims taken back. Ownership lives in the same database,
//! so each call checks the partition's owner and epoch inside the transaction that applies it.

use crate::{COLUMNS, SqliteTaskStore, backend, due, task_from};
use rota_model::{Epoch, InstanceId};
use rota_scheduler::{AcquirePartition, ClaimTasks, CompleteTasks, RenewLeases, RequeueExpired};
use rota_scheduler::{Claim, Claimed, Execution, Millis, StoreError, TaskStatus, Upkeep};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::broadcast;

/// The claims whose owner and epoch are still current, and the refused partitions.
fn split_claims(
    conn: &Connection,
    owner: &InstanceId,
    claims: &[Claim],
) -> Result<(Vec<Claim>, Vec<u32>), StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT owner, epoch FROM partition_owners WHERE partition = ?1")
        .map_err(backend)?;
    let (mut valid, mut refused) = (Vec::new(), Vec::new());
    for claim in claims {
        let current: Option<(String, i64)> = stmt
            .query_row([claim.partition], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)?;
        match current {
            Some((o, e)) if o == owner.as_str() && e as Epoch == claim.epoch => valid.push(*claim),
            _ => refused.push(claim.partition),
        }
    }
    Ok((valid, refused))
}

/// The statement that takes back ([`rota_scheduler::store::rules::take_back`]) the claims
/// `$filter` selects, with `$why` as the error of those out of attempts, at the time `$now`.
macro_rules! take_back {
    ($why:literal, $now:literal, $filter:literal) => {
        concat!(
            "UPDATE tasks SET ",
            rota_scheduler::take_back_sql!("", attempts = "attempts", $why, $now),
            " WHERE ",
            $filter
        )
    };
}

#[async_trait::async_trait]
impl Execution for SqliteTaskStore {
    async fn acquire(&self, grant: AcquirePartition) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let (partition, owner, epoch, now) =
                (grant.partition, &grant.owner, grant.epoch, grant.now);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let holder: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, epoch FROM partition_owners WHERE partition = ?1",
                    [partition],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            grant.check(holder.as_ref().map(|(o, e)| (o.as_str(), *e as Epoch)))?;
            tx.execute(
                "INSERT INTO partition_owners (partition, owner, epoch) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (partition) DO UPDATE SET owner = ?2, epoch = ?3",
                params![partition, owner.as_str(), epoch as i64],
            )
            .map_err(backend)?;
            let take_back = take_back!(
                "claim lost: the partition moved to another worker",
                "?4",
                "partition = ?1 AND status = 'RUNNING' AND NOT (owner IS ?2 AND epoch IS ?3)"
            );
            let taken = params![partition, owner.as_str(), epoch as i64, now];
            let requeued = tx.execute(take_back, taken).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(requeued as u64)
        })
        .await
    }

    async fn claim(&self, claim: ClaimTasks) -> Result<Claimed, StoreError> {
        let (owner, partitions, now) = (claim.owner, claim.partitions, claim.now);
        let (limit, lease_ms) = (claim.limit, claim.lease_ms);
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let (valid, refused) = split_claims(&tx, &owner, &partitions)?;
            let due::Due {
                tasks: candidates,
                next_due,
            } = due::earliest(&tx, &valid, now, limit)?;
            let mut tasks = Vec::with_capacity(candidates.len());
            {
                // No RETURNING: SQLite gives each such statement a temporary table of its
                // own, which cost more than the update itself (measured: a third of a claim).
                let mut update = tx
                    .prepare_cached(
                        "UPDATE tasks SET status = 'RUNNING', owner = ?2, epoch = ?3, \
                           attempts = attempts + 1, started_at = ?4, lease_until = ?5 \
                         WHERE id = ?1 AND status = 'PENDING'",
                    )
                    .map_err(backend)?;
                let mut read = tx
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))
                    .map_err(backend)?;
                for (id, epoch) in candidates {
                    update
                        .execute(params![
                            id,
                            owner.as_str(),
                            epoch as i64,
                            now,
                            now + lease_ms
                        ])
                        .map_err(backend)?;
                    tasks.push(read.query_row([id], task_from).map_err(backend)?);
                }
            }
            tx.commit().map_err(backend)?;
            Ok(Claimed {
                tasks,
                refused,
                next_due,
            })
        })
        .await
    }

    async fn complete(&self, ends: &CompleteTasks) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let (owner, completions, now) = (ends.owner.clone(), ends.completions.clone(), ends.now);
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let mut out = Vec::with_capacity(completions.len());
            {
                // Applied only while the claim is this owner's under this epoch, and the
                // partition is still held by it at that epoch; settled by the shared rule.
                let mut settle = tx
                    .prepare_cached(concat!(
                        "UPDATE tasks SET ",
                        rota_scheduler::settle_sql!(
                            t = "",
                            attempts = "attempts",
                            outcome = "?6",
                            error = "?7",
                            retry_at = "?8",
                            started_at = "?9",
                            now = "?5"
                        ),
                        " WHERE id = ?1 AND status = 'RUNNING' AND owner = ?2 AND epoch = ?3 \
                           AND partition = ?4 AND EXISTS (SELECT 1 FROM partition_owners o \
                             WHERE o.partition = ?4 AND o.owner = ?2 AND o.epoch = ?3)"
                    ))
                    .map_err(backend)?;
                let mut status = tx
                    .prepare_cached("SELECT status FROM tasks WHERE id = ?1")
                    .map_err(backend)?;
                for c in completions {
                    let applied = settle
                        .execute(params![
                            c.id,
                            owner.as_str(),
                            c.epoch as i64,
                            c.partition,
                            now,
                            c.outcome.code(),
                            c.outcome.error(),
                            c.outcome.retry_at(),
                            c.started_at
                        ])
                        .map_err(backend)?;
                    out.push(if applied == 0 {
                        None
                    } else if c.outcome.depends_on_attempts() {
                        let s: String = status.query_row([c.id], |r| r.get(0)).map_err(backend)?;
                        TaskStatus::parse(&s)
                    } else {
                        Some(c.outcome.settled_status(false))
                    });
                }
            }
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn renew(&self, renewal: RenewLeases) -> Result<Vec<u32>, StoreError> {
        let (owner, partitions) = (renewal.owner, renewal.partitions);
        let lease_until = renewal.now + renewal.lease_ms;
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let (valid, refused) = split_claims(&tx, &owner, &partitions)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE tasks SET lease_until = ?4 WHERE partition = ?1 \
                         AND status = 'RUNNING' AND owner = ?2 AND epoch = ?3",
                    )
                    .map_err(backend)?;
                for c in valid {
                    stmt.execute(params![
                        c.partition,
                        owner.as_str(),
                        c.epoch as i64,
                        lease_until
                    ])
                    .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)?;
            Ok(refused)
        })
        .await
    }

    async fn requeue_expired(&self, expired: RequeueExpired) -> Result<u64, StoreError> {
        let (owner, partitions, now) = (expired.owner, expired.partitions, expired.now);
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let (valid, _) = split_claims(&tx, &owner, &partitions)?;
            let mut requeued = 0;
            {
                let mut stmt = tx
                    .prepare_cached(take_back!(
                        "lease expired: the worker neither finished nor renewed it",
                        "?2",
                        "partition = ?1 AND status = 'RUNNING' AND lease_until < ?2"
                    ))
                    .map_err(backend)?;
                for c in valid {
                    requeued += stmt.execute(params![c.partition, now]).map_err(backend)? as u64;
                }
            }
            tx.commit().map_err(backend)?;
            Ok(requeued)
        })
        .await
    }

    fn inserted(&self) -> broadcast::Receiver<rota_scheduler::Inserted> {
        self.inserted.subscribe()
    }
}

#[async_trait::async_trait]
impl Upkeep for SqliteTaskStore {
    async fn purge_finished(&self, before: Millis, limit: usize) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let purged = conn
                .execute(
                    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
                     WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < ?1 \
                     LIMIT ?2)",
                    params![before, limit as i64],
                )
                .map_err(backend)?;
            Ok(purged as u64)
        })
        .await
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute("DELETE FROM partition_owners", [])
                .map_err(backend)?;
            let take_back = take_back!(
                "claim lost: the cluster restarted",
                "?1",
                "status = 'RUNNING'"
            );
            let requeued = tx.execute(take_back, [now]).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(requeued as u64)
        })
        .await
    }
}
