-- Claims recorded per batch. A claim is one row here naming the tasks it took and has not
-- settled yet; a claimed task's own row is not written until its attempt ends (two writes per
-- task in all: the insert and the completion). A task is RUNNING while a claim row names it.
-- The completion settles the task, records the claim on it (`last_claim`) and takes the task
-- out of the claim's row in one statement; a claim taken back (the partition moved, the lease
-- ran out) is deleted, and the tasks it named are taken back. See docs/architecture.md,
-- "Claims per batch".
CREATE TABLE rota_claims (
    id          BIGSERIAL PRIMARY KEY,
    partition   INTEGER  NOT NULL,
    owner       TEXT     NOT NULL,
    epoch       BIGINT   NOT NULL,
    claimed_at  BIGINT   NOT NULL,
    lease_until BIGINT   NOT NULL,
    tasks       BIGINT[] NOT NULL
);
CREATE INDEX rota_claims_partition ON rota_claims (partition);
ALTER TABLE rota_tasks ADD COLUMN last_claim BIGINT;

-- Claims made before this migration (tasks marked RUNNING) become claim rows.
INSERT INTO rota_claims (partition, owner, epoch, claimed_at, lease_until, tasks)
    SELECT partition, coalesce(owner, ''), coalesce(epoch, 0),
           min(coalesce(started_at, created_at)), min(coalesce(lease_until, 0)), array_agg(id)
    FROM rota_tasks WHERE status = 'RUNNING' GROUP BY partition, owner, epoch;
UPDATE rota_tasks SET status = 'PENDING', attempts = attempts - 1, owner = NULL,
    lease_until = NULL WHERE status = 'RUNNING';
DROP INDEX rota_tasks_running;

-- The claim: up to `p_limit` due tasks of the partitions `p_owner` still holds at the given
-- epochs, in due order, recorded as one claim row per partition. A function, so that its query
-- takes its snapshot after the partitions' locks are granted (a statement's snapshot is taken
-- when it starts): a claim then sees every cancel, and every other claim, that held the lock
-- before it.
CREATE FUNCTION rota_claim(p_owner text, p_partitions int[], p_epochs bigint[], p_limit bigint,
                           p_lease bigint, p_now bigint)
RETURNS TABLE (owned_partitions int[], next_due bigint, id bigint, name text, payload json,
               handler text, partition_key text, "partition" integer, status text,
               scheduled_at bigint, attempts integer, max_attempts integer, last_error text,
               owner text, epoch bigint, lease_until bigint, idempotency_key text,
               created_at bigint, started_at bigint, finished_at bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_now bigint := coalesce(p_now, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
BEGIN
    -- One claim at a time per partition, and none while a client changes one of its pending
    -- tasks (a cancel takes the same lock): the key is the cluster's schema and the partition.
    PERFORM pg_advisory_xact_lock(hashtext(current_schema()), s.p)
    FROM (SELECT DISTINCT unnest(p_partitions) AS p ORDER BY 1) s;
    -- Claim rows emptied by completions that raced each other (each saw the other's tasks
    -- still there) are cleared here.
    DELETE FROM rota_claims k WHERE k.partition = ANY(p_partitions) AND k.owner = p_owner
        AND cardinality(k.tasks) = 0;
    RETURN QUERY
    WITH owned AS (
        SELECT o.partition, o.epoch FROM rota_partition_owners o
        JOIN unnest(p_partitions, p_epochs) AS c(partition, epoch)
          ON c.partition = o.partition AND c.epoch = o.epoch
        WHERE o.owner = p_owner FOR SHARE OF o),
    -- Narrow rows through the pick (the id and due time, from the index's range of each
    -- partition), the whole task only for those picked.
    heads AS (
        SELECT x.id, x.scheduled_at, owned.epoch AS claim_epoch FROM owned CROSS JOIN LATERAL (
            SELECT t.id, t.scheduled_at FROM rota_tasks t
            WHERE t.partition = owned.partition AND t.status = 'PENDING'
              AND t.scheduled_at <= v_now
              -- Not held by a live claim: one hashed set of every task the partitions' claims
              -- hold, built once per call.
              AND t.id NOT IN (SELECT unnest(k.tasks) FROM rota_claims k
                               WHERE k.partition = ANY(p_partitions))
            ORDER BY t.scheduled_at, t.id LIMIT p_limit) x
        ORDER BY x.scheduled_at, x.id LIMIT p_limit),
    picked AS (
        SELECT t.*, f.claim_epoch FROM heads f JOIN rota_tasks t ON t.id = f.id),
    batch AS (
        INSERT INTO rota_claims (partition, owner, epoch, claimed_at, lease_until, tasks)
        SELECT picked.partition, p_owner, picked.claim_epoch, v_now, v_now + p_lease,
               array_agg(picked.id ORDER BY picked.scheduled_at, picked.id)
        FROM picked GROUP BY picked.partition, picked.claim_epoch
        RETURNING 1),
    next AS (
        SELECT min(n.scheduled_at) AS at FROM owned CROSS JOIN LATERAL (
            SELECT t.scheduled_at FROM rota_tasks t
            WHERE t.partition = owned.partition AND t.status = 'PENDING'
              AND t.scheduled_at > v_now
            ORDER BY t.scheduled_at, t.id LIMIT 1) n)
    SELECT (SELECT array_agg(owned.partition) FROM owned), (SELECT next.at FROM next),
           t.id, t.name, t.payload, t.handler, t.partition_key, t.partition, 'RUNNING'::text,
           t.scheduled_at, t.attempts + 1, t.max_attempts, t.last_error, p_owner,
           t.claim_epoch, v_now + p_lease, t.idempotency_key, t.created_at, v_now,
           t.finished_at
    FROM (SELECT count(*) FROM batch) one LEFT JOIN picked t ON true;
END
$fn$;
