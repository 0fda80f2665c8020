//! The cluster's schema: embedded migrations, versioned in the schema's `rota_schema` table and
//! run under an advisory lock (one migrator at a time, across processes and clusters), and the
//! adoption of an earlier rota's unscoped tables. A database newer than this build is refused.

use crate::{backend, schedules};
use rota_scheduler::StoreError;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

/// Schema migrations, in order; `rota_schema.version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE rota_tasks (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT    NOT NULL,
    payload         JSONB   NOT NULL, -- JSON since migration 4
    handler         TEXT,
    partition_key   TEXT,
    partition       INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    scheduled_at    BIGINT  NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    last_error      TEXT,
    owner           TEXT,
    epoch           BIGINT,
    lease_until     BIGINT,
    idempotency_key TEXT UNIQUE,
    created_at      BIGINT  NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT
);
CREATE INDEX rota_tasks_pending_due ON rota_tasks (partition, scheduled_at, id) WHERE status = 'PENDING';
CREATE INDEX rota_tasks_running ON rota_tasks (partition) WHERE status = 'RUNNING';
CREATE TABLE rota_partition_owners (
    partition INTEGER PRIMARY KEY,
    owner     TEXT    NOT NULL,
    epoch     BIGINT  NOT NULL
);
"#,
    // Most tasks have no idempotency key: index only those that do, instead of writing a NULL entry
    // for every version of every task.
    r#"
CREATE UNIQUE INDEX rota_tasks_idempotency_key ON rota_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE rota_tasks DROP CONSTRAINT rota_tasks_idempotency_key_key;
"#,
    // Listing failures must not scan the history: the failed and cancelled tasks by id (few
    // rows, so almost free to keep; an index of every finished task by finish time, for the
    // purge, cost 6% of the burn-down rate, see docs/performance.md).
    r#"
CREATE INDEX rota_tasks_failed ON rota_tasks (id) WHERE status IN ('FAILED', 'CANCELLED');
"#,
    // Payloads kept as the text rota wrote (JSON), not normalised (JSONB): JSONB writes a number
    // such as -1.7976931348623157e308 back as 309 digits, which no JSON parser reads as a
    // float again, so the task could no longer be read. (Rows already normalised stay so.)
    r#"
ALTER TABLE rota_tasks ALTER COLUMN payload TYPE JSON USING payload::json;
"#,
    schedules::MIGRATION,
    // Claims recorded per batch, apart from the task rows (the claim no longer writes them).
    include_str!("sql/claims.sql"),
];

/// The store's functions (the claim), replaced on every connect: see the file's head.
const FUNCTIONS: &str = include_str!("sql/functions.sql");

pub(crate) async fn migrate(pool: &PgPool, schema: &str, cluster: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    // One migrator at a time, across processes and clusters; a migration may take longer than
    // a statement is allowed to in service (an index on a large table).
    sqlx::raw_sql("SELECT pg_advisory_xact_lock(7402061); SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    adopt_unscoped_tables(&mut tx, schema, cluster).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS rota_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let version: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM rota_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    let version = version.unwrap_or(0) as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this build's {}; upgrade rota",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO rota_schema (version) VALUES ($1)")
            .bind((i + 1) as i32)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    sqlx::raw_sql(FUNCTIONS)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)
}

/// Tables of a rota from before clusters had schemas of their own live in `public`: the first
/// cluster to open the database takes them over (a database of that age held one cluster's tasks).
async fn adopt_unscoped_tables(
    tx: &mut Transaction<'static, Postgres>,
    schema: &str,
    cluster: &str,
) -> Result<(), StoreError> {
    let (legacy, scoped): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('public.rota_schema') IS NOT NULL, \
                to_regclass('rota_schema') IS NOT NULL",
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    if !legacy || scoped {
        return Ok(());
    }
    tracing::warn!(
        cluster,
        "adopting the tasks of an earlier rota (tables in the public schema) into this cluster's schema"
    );
    let moves: String = ["rota_tasks", "rota_partition_owners", "rota_schema"]
        .iter()
        .map(|t| format!("ALTER TABLE IF EXISTS public.{t} SET SCHEMA {schema};"))
        .collect();
    sqlx::raw_sql(AssertSqlSafe(moves))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}
