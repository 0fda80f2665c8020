-- The store's functions: part of the build, not of the schema's history. Replaced (under the
-- migration lock) every time a store connects, after the migrations. A new signature is a new
-- function beside the old one, which processes of an earlier build go on calling (the claim
-- gained its resume points so; its six-argument form is an earlier build's).

-- The claim: up to `p_limit` due tasks of the partitions `p_owner` still holds at the given
-- epochs, in due order, recorded as one claim row per partition. Each partition's scan starts
-- after its resume point (`p_after_at`, `p_after_id`; NULL: from the start), before which the
-- caller says every due task was claimed: it steps over the dead index entries of the tasks
-- finished since. A function, so that its query takes its snapshot after the partitions' locks
-- are granted (a statement's snapshot is taken when it starts): a claim then sees every cancel,
-- and every other claim, that held the lock before it.
CREATE OR REPLACE FUNCTION rota_claim(p_owner text, p_partitions int[], p_epochs bigint[], p_limit bigint,
                           p_lease bigint, p_now bigint, p_after_at bigint[], p_after_id bigint[])
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
    RETURN QUERY
    WITH owned AS (
        SELECT o.partition, o.epoch,
               coalesce(c.after_at, -9223372036854775808) AS after_at,
               coalesce(c.after_id, -9223372036854775808) AS after_id
        FROM rota_partition_owners o
        JOIN unnest(p_partitions, p_epochs, p_after_at, p_after_id)
               AS c(partition, epoch, after_at, after_id)
          ON c.partition = o.partition AND c.epoch = o.epoch
        WHERE o.owner = p_owner FOR SHARE OF o),
    -- Narrow rows through the pick (the id and due time, from the index's range of each
    -- partition), the whole task only for those picked.
    heads AS (
        SELECT x.id, x.scheduled_at, owned.epoch AS claim_epoch FROM owned CROSS JOIN LATERAL (
            SELECT t.id, t.scheduled_at FROM rota_tasks t
            WHERE t.partition = owned.partition AND t.status = 'PENDING'
              AND t.scheduled_at <= v_now
              AND (t.scheduled_at, t.id) > (owned.after_at, owned.after_id)
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
