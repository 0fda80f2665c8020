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
