//! The worker's fenced path ([`Execution`]) and upkeep ([`Upkeep`]): each call one statement
//! where it matters, fenced by a join with the partition's owner row (locked `FOR SHARE`, so an
//! ownership change waits for a claim in progress and then takes back what it claimed).
//!
//! Claims are recorded per batch (`rota_claims`, see `sql/claims.sql`): a claim inserts one row
//! per partition naming the tasks it took and writes no task row; the completion writes the
//! task once, settling it and recording the claim as settled on it (`last_claim`); a claim
//! taken back (ownership moved, lease expired) is deleted, and the tasks it still held are
//! settled by the take-back rule in the same statement.

use crate::{PostgresTaskStore, backend, task_from};
use rota_model::Epoch;
use rota_scheduler::{AcquirePartition, ClaimTasks, CompleteTasks, RenewLeases, RequeueExpired};
use rota_scheduler::{Claim, Claimed, Execution, Millis, StoreError, TaskStatus, Upkeep};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashMap;
use tokio::sync::broadcast;

/// The statement that follows a `lost` CTE (claim rows just deleted, with `id`, `epoch`, `tasks`
/// and `at`, the time of the take-back): every task a lost claim still held is taken back by the
/// shared rule ([`rota_scheduler::store::rules::take_back`]), its attempt counted, with
/// `$reason` as the last error of one out of attempts.
macro_rules! take_back {
    ($reason:literal) => {
        concat!(
            " UPDATE rota_tasks t SET ",
            rota_scheduler::take_back_sql!("t.", attempts = "(t.attempts + 1)", $reason, "lost.at"),
            ", epoch = lost.epoch, last_claim = lost.id \
             FROM lost CROSS JOIN LATERAL unnest(lost.tasks) AS m(id) \
             WHERE t.id = m.id AND t.status = 'PENDING' AND coalesce(t.last_claim, 0) < lost.id"
        )
    };
}

/// The partitions of a claim that the statement's `owned` CTE did not find still owned.
fn refused(partitions: &[Claim], owned: &[i32]) -> Vec<u32> {
    partitions
        .iter()
        .map(|c| c.partition)
        .filter(|&p| !owned.contains(&(p as i32)))
        .collect()
}

/// `sql` with the grant's partition, owner and epoch bound as `$1`, `$2`, `$3`.
fn granted<'q>(sql: &'static str, grant: &'q AcquirePartition) -> Query<'q, Postgres, PgArguments> {
    let query = sqlx::query(sql).bind(grant.partition as i32);
    query.bind(grant.owner.as_str()).bind(grant.epoch as i64)
}

/// The parallel arrays (`$2` partitions, `$3` epochs) that [`owned!`] reads.
fn claim_arrays(partitions: &[Claim]) -> (Vec<i32>, Vec<i64>) {
    partitions
        .iter()
        .map(|c| (c.partition as i32, c.epoch as i64))
        .unzip()
}

#[async_trait::async_trait]
impl Execution for PostgresTaskStore {
    async fn acquire(&self, grant: AcquirePartition) -> Result<u64, StoreError> {
        let (partition, owner, epoch, now) =
            (grant.partition, &grant.owner, grant.epoch, grant.now);
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        // Insert the row if missing, then lock it: ownership changes are serialised per partition.
        let insert = "INSERT INTO rota_partition_owners (partition, owner, epoch) \
                      VALUES ($1, $2, $3) ON CONFLICT (partition) DO NOTHING";
        granted(insert, &grant)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row = sqlx::query(
            "SELECT owner, epoch FROM rota_partition_owners WHERE partition = $1 FOR UPDATE",
        )
        .bind(partition as i32)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let (holder, current): (String, i64) = (row.get("owner"), row.get("epoch"));
        grant.check(Some((&holder, current as Epoch)))?;
        let update = "UPDATE rota_partition_owners SET owner = $2, epoch = $3 WHERE partition = $1";
        granted(update, &grant)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let requeued = sqlx::query(concat!(
            "WITH lost AS (DELETE FROM rota_claims \
               WHERE partition = $1 AND (owner <> $2 OR epoch <> $3) \
               RETURNING id, epoch, tasks, $4::bigint AS at)",
            take_back!("claim lost: the partition moved to another worker")
        ))
        .bind(partition as i32)
        .bind(owner.as_str())
        .bind(epoch as i64)
        .bind(now);
        commit_counting(tx, requeued).await
    }

    async fn claim(&self, claim: ClaimTasks) -> Result<Claimed, StoreError> {
        let (owner, partitions, now) = (&claim.owner, &claim.partitions, claim.now);
        let (limit, lease_ms) = (claim.limit, claim.lease_ms);
        let (parts, epochs) = claim_arrays(partitions);
        let (after_at, after_id): (Vec<Option<i64>>, Vec<Option<i64>>) = partitions
            .iter()
            .map(|c| claim.resume_after.get(&c.partition).copied().unzip())
            .unzip();
        // One call, one round trip: the function (`sql/functions.sql`) locks the partitions, then
        // fences, picks, records the claim rows and tells the next due time in one query. Each
        // owned partition gives its first `limit` due tasks that no live claim holds, from its
        // own index range after its resume point (so the cost depends neither on other
        // partitions' backlog nor on finished tasks); the union is cut to the `limit` earliest.
        let rows = sqlx::query("SELECT * FROM rota_claim($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(owner.as_str())
            .bind(&parts)
            .bind(&epochs)
            .bind(limit as i64)
            .bind(lease_ms)
            .bind(self.clock(now))
            .bind(&after_at)
            .bind(&after_id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let first = rows.first().ok_or_else(|| {
            StoreError::Backend("the claim returned no row (expected at least one)".into())
        })?;
        let owned: Vec<i32> = first
            .try_get::<Option<Vec<i32>>, _>("owned_partitions")
            .map_err(backend)?
            .unwrap_or_default();
        let next_due: Option<Millis> = first.try_get("next_due").map_err(backend)?;
        let refused = refused(partitions, &owned);
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<Option<i64>, _>("id")
                .map_err(backend)?
                .is_some()
            {
                tasks.push(task_from(row).map_err(backend)?);
            }
        }
        tasks.sort_by_key(|t| (t.scheduled_at, t.id));
        // One claim row per partition that gave tasks.
        let rows = tasks
            .iter()
            .map(|t| t.partition)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        self.claim_vacuum.made(rows as u64, &self.pool);
        Ok(Claimed {
            tasks,
            refused,
            next_due,
        })
    }

    async fn complete(&self, ends: &CompleteTasks) -> Result<Vec<Option<TaskStatus>>, StoreError> {
        let (owner, completions, now) = (&ends.owner, &ends.completions, ends.now);
        let n = completions.len();
        let mut ids = Vec::with_capacity(n);
        let mut epochs = Vec::with_capacity(n);
        let mut outcomes: Vec<i16> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut retry: Vec<i64> = Vec::with_capacity(n);
        let mut started: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut partitions: Vec<i32> = Vec::with_capacity(n);
        for c in completions {
            ids.push(c.id);
            partitions.push(c.partition as i32);
            epochs.push(c.epoch as i64);
            started.push(c.started_at);
            outcomes.push(c.outcome.code());
            errors.push(c.outcome.error());
            retry.push(c.outcome.retry_at());
        }
        // Each completion names its task's partition, so the fence is an exact join with that
        // partition's owner row and the task is looked up by primary key. (A fence correlated
        // with the task row, found by the task's own partition, misled the planner: given the
        // arrays' real length it scanned every RUNNING row once per completion, 15-26 ms for
        // 250 completions with 500 tasks running, where the lookups take 2 ms.)
        //
        // The claim is found by the task's partition, owner and epoch among the claim rows
        // naming the task; settling records it on the task (`last_claim`: a take-back that
        // got there first has recorded it, and the completion is refused) and takes the task
        // out of the claim's row, in the same statement. A row left with no task is deleted
        // (two statements that empty one row at once each leave the other's task in it: the
        // next renewal clears it).
        let rows = sqlx::query(concat!(
            "WITH now AS (SELECT ",
            now!(6),
            " AS ms), done AS ( \
               UPDATE rota_tasks t SET ",
            rota_scheduler::settle_sql!(
                t = "t.",
                attempts = "(t.attempts + 1)",
                outcome = "c.outcome",
                error = "c.error",
                retry_at = "c.retry_at",
                started_at = "COALESCE(c.started_at, k.claimed_at)",
                now = "now.ms"
            ),
            ", epoch = k.epoch, last_claim = k.id \
               FROM now, rota_partition_owners o, rota_claims k, \
               UNNEST($2::bigint[], $3::bigint[], $4::smallint[], $5::text[], $7::bigint[], \
                      $8::bigint[], $9::int[]) \
               AS c(id, epoch, outcome, error, retry_at, started_at, partition) \
             WHERE t.id = c.id AND t.partition = c.partition AND t.status = 'PENDING' \
               AND k.partition = c.partition AND k.owner = $1 AND k.epoch = c.epoch \
               AND t.id = ANY(k.tasks) AND coalesce(t.last_claim, 0) < k.id \
               AND o.partition = c.partition AND o.owner = $1 AND o.epoch = c.epoch \
             RETURNING t.id, t.status, k.id AS claim), \
             left_over AS ( \
               SELECT k.id, ARRAY(SELECT unnest(k.tasks) \
                                  EXCEPT SELECT d.id FROM done d WHERE d.claim = k.id) AS tasks \
               FROM rota_claims k WHERE k.id IN (SELECT claim FROM done)), \
             shrunk AS ( \
               UPDATE rota_claims k SET tasks = ARRAY(SELECT unnest(k.tasks) \
                 EXCEPT SELECT d.id FROM done d WHERE d.claim = k.id) \
               FROM left_over l WHERE k.id = l.id AND cardinality(l.tasks) > 0), \
             emptied AS ( \
               DELETE FROM rota_claims k USING left_over l \
               WHERE k.id = l.id AND cardinality(l.tasks) = 0) \
             SELECT id, status FROM done"
        ))
        .bind(owner.as_str())
        .bind(&ids)
        .bind(&epochs)
        .bind(&outcomes)
        .bind(&errors)
        .bind(self.clock(now))
        .bind(&retry)
        .bind(&started)
        .bind(&partitions)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let applied: HashMap<i64, TaskStatus> = rows
            .iter()
            .filter_map(|r| {
                let status: String = r.get("status");
                TaskStatus::parse(&status).map(|s| (r.get::<i64, _>("id"), s))
            })
            .collect();
        Ok(ids.iter().map(|id| applied.get(id).copied()).collect())
    }

    async fn renew(&self, renewal: RenewLeases) -> Result<Vec<u32>, StoreError> {
        let (owner, partitions) = (&renewal.owner, &renewal.partitions);
        let (now, lease_ms) = (renewal.now, renewal.lease_ms);
        let (parts, epochs) = claim_arrays(partitions);
        // One statement, fenced like the claim, on the clock the claim used: the owner's claim
        // rows of the partitions it still holds get the new lease.
        let row = sqlx::query(concat!(
            owned!(5),
            ", renewed AS ( \
               UPDATE rota_claims k SET lease_until = now.ms + $4 FROM owned, now \
               WHERE k.partition = owned.partition AND k.epoch = owned.epoch \
                 AND k.owner = $1 RETURNING 1) \
             SELECT (SELECT array_agg(partition) FROM owned) AS owned_partitions, \
                    (SELECT count(*) FROM renewed) AS renewed"
        ))
        .bind(owner.as_str())
        .bind(&parts)
        .bind(&epochs)
        .bind(lease_ms)
        .bind(self.clock(now))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let owned: Vec<i32> = row
            .try_get::<Option<Vec<i32>>, _>("owned_partitions")
            .map_err(backend)?
            .unwrap_or_default();
        // A claim row emptied by two completion statements at once (each saw the other's task
        // still in it; the worker writes a partition's completions one batch at a time, so only
        // its rare direct writes can race) is cleared here.
        sqlx::query(
            "DELETE FROM rota_claims WHERE owner = $1 AND partition = ANY($2) \
               AND cardinality(tasks) = 0",
        )
        .bind(owner.as_str())
        .bind(&owned)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(refused(partitions, &owned))
    }

    async fn requeue_expired(&self, expired: RequeueExpired) -> Result<u64, StoreError> {
        let (owner, partitions, now) = (&expired.owner, &expired.partitions, expired.now);
        let (parts, epochs) = claim_arrays(partitions);
        Ok(sqlx::query(concat!(
            owned!(4),
            ", lost AS (DELETE FROM rota_claims k USING owned, now \
               WHERE k.partition = owned.partition AND k.lease_until < now.ms \
               RETURNING k.id, k.epoch, k.tasks, now.ms AS at)",
            take_back!("lease expired: the worker neither finished nor renewed it")
        ))
        .bind(owner.as_str())
        .bind(&parts)
        .bind(&epochs)
        .bind(self.clock(now))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected())
    }

    fn inserted(&self) -> broadcast::Receiver<rota_scheduler::Inserted> {
        self.inserted.subscribe()
    }
}

#[async_trait::async_trait]
impl Upkeep for PostgresTaskStore {
    async fn purge_finished(&self, before: Millis, limit: usize) -> Result<u64, StoreError> {
        // The ids as an array, so that the delete looks them up by primary key (as
        // `IN (subquery)` it hash-joined a scan of the whole table: 155 ms a batch at 1.1M
        // rows, 13 ms now). Finding them scans the table, oldest pages first; the worker purges
        // rarely (see `purge_finished` in the worker) rather than index every finished task.
        Ok(sqlx::query(
            "DELETE FROM rota_tasks WHERE id = ANY(ARRAY( \
               SELECT id FROM rota_tasks \
               WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < $1 \
               LIMIT $2))",
        )
        .bind(before)
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected())
    }

    async fn reset_after_restart(&self, now: Millis) -> Result<u64, StoreError> {
        let now = self.now(now).await?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM rota_partition_owners")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let requeued = sqlx::query(concat!(
            "WITH lost AS (DELETE FROM rota_claims RETURNING id, epoch, tasks, $1::bigint AS at)",
            take_back!("claim lost: the cluster restarted")
        ))
        .bind(now);
        commit_counting(tx, requeued).await
    }
}

/// Runs `statement` in `tx` and commits; how many rows it changed.
async fn commit_counting(
    mut tx: Transaction<'static, Postgres>,
    statement: Query<'static, Postgres, PgArguments>,
) -> Result<u64, StoreError> {
    let changed = statement.execute(&mut *tx).await.map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(changed.rows_affected())
}
