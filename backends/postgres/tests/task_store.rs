//! The task-store conformance suite against a real PostgreSQL server, started by the test
//! harness from the machine's installed binaries (a fresh database per case).

use rota_postgres::{PostgresTaskStore, Settings};
use rota_scheduler::conformance::calls::{claiming, grant, inserting, renewal};
use rota_scheduler::prelude::*;
use std::sync::Arc;

fn settings() -> Settings {
    Settings::for_cluster("test")
}

async fn store() -> Arc<dyn TaskStore> {
    let url = rota_test_harness::postgres().fresh_database();
    // The suite's times are synthetic: compare with the caller's clock, not the database's.
    Arc::new(
        PostgresTaskStore::connect_with_caller_clock(&url, &settings())
            .await
            .expect("connect to the test server"),
    )
}

rota_scheduler::task_store_conformance!(store);

#[tokio::test]
async fn migrating_twice_is_harmless_and_a_newer_schema_is_refused() {
    let url = rota_test_harness::postgres().fresh_database();
    drop(PostgresTaskStore::connect(&url, &settings()).await.unwrap());
    drop(PostgresTaskStore::connect(&url, &settings()).await.unwrap());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO rota_test.rota_schema (version) VALUES (99)")
        .execute(&pool)
        .await
        .unwrap();
    let err = PostgresTaskStore::connect(&url, &settings())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("newer than this build"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_wake_other_processes_through_notify() {
    let url = rota_test_harness::postgres().fresh_database();
    let writer = PostgresTaskStore::connect(&url, &settings()).await.unwrap();
    let reader = PostgresTaskStore::connect(&url, &settings()).await.unwrap();
    let mut woken = reader.inserted();
    // The listener connects in the background; insert until its notification arrives.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let task = rota_scheduler::NewTask {
            name: "wake".into(),
            payload: serde_json::Value::Null,
            scheduled_at: 42,
            partition_key: Some("k".into()),
            max_attempts: 1,
            handler: None,
            idempotency_key: None,
        };
        let p = writer.insert(inserting(vec![task], 4, 0)).await.unwrap()[0]
            .0
            .partition;
        match tokio::time::timeout(std::time::Duration::from_millis(200), woken.recv()).await {
            Ok(Ok(got)) => {
                let expected = rota_scheduler::Inserted {
                    partition: p,
                    earliest_due: 42,
                };
                assert_eq!(got, expected);
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no NOTIFY reached the other store"
            ),
        }
    }
}

#[tokio::test]
async fn due_times_are_compared_on_the_databases_clock() {
    use rota_scheduler::{Claim, NewTask};
    let url = rota_test_harness::postgres().fresh_database();
    let store = PostgresTaskStore::connect(&url, &settings()).await.unwrap();
    let wall = rota_scheduler::worker::wall_clock_ms();
    let task = NewTask {
        name: "due".into(),
        payload: serde_json::Value::Null,
        scheduled_at: wall - 1_000,
        partition_key: None,
        max_attempts: 1,
        handler: None,
        idempotency_key: None,
    };
    let t = store
        .insert(inserting(vec![task], 1, 0))
        .await
        .unwrap()
        .remove(0)
        .0;
    assert!(
        t.created_at > wall - 60_000,
        "created_at from the database's clock: {}",
        t.created_at
    );
    let owner = rota_model::InstanceId::new("w");
    store.acquire(grant(0, &owner, 1, 0)).await.unwrap();
    // The worker's clock says 1970; the database's says the task is due.
    let claim = [Claim::new(0, 1)];
    let claimed = store
        .claim(claiming(&owner, &claim, 0, 10, 30_000))
        .await
        .unwrap();
    assert_eq!(claimed.tasks.len(), 1);
    // Renewal runs on the same clock: a lease of 30 s from the database's now, whatever the
    // worker's clock says.
    store
        .renew(renewal(&owner, &claim, 0, 30_000))
        .await
        .unwrap();
    let renewed = store.get(t.id).await.unwrap().unwrap();
    let lease_until = renewed.lease_until.unwrap();
    assert!(
        (wall + 25_000..wall + 90_000).contains(&lease_until),
        "lease until {lease_until}, wall clock {wall}"
    );
}

/// Undoes what claims per batch (migration 6) made: the tables as a rota before it left them.
const BEFORE_CLAIMS_PER_BATCH: &str = "DROP FUNCTION rota_test.rota_claim; \
     DROP TABLE rota_test.rota_claims; ALTER TABLE rota_test.rota_tasks DROP COLUMN last_claim; \
     CREATE INDEX rota_tasks_running ON rota_test.rota_tasks (partition) \
       WHERE status = 'RUNNING';";

/// Inserts a task named "old" (on partition 0 of 1); its id.
async fn old_task(store: &PostgresTaskStore) -> i64 {
    let inserted = store.insert(inserting(vec![new_task("old")], 1, 0)).await;
    inserted.unwrap()[0].0.id
}

fn new_task(name: &str) -> rota_scheduler::NewTask {
    rota_scheduler::NewTask {
        name: name.into(),
        payload: serde_json::Value::Null,
        scheduled_at: 0,
        partition_key: None,
        max_attempts: 1,
        handler: None,
        idempotency_key: Some(format!("key-{name}")),
    }
}

#[tokio::test]
async fn clusters_sharing_a_database_do_not_see_each_other() {
    use rota_scheduler::ListFilter;
    let url = rota_test_harness::postgres().fresh_database();
    let staging = PostgresTaskStore::connect(&url, &Settings::for_cluster("staging"))
        .await
        .unwrap();
    let prod = PostgresTaskStore::connect(&url, &Settings::for_cluster("prod"))
        .await
        .unwrap();
    let owner = rota_model::InstanceId::new("w");
    // Each cluster's epochs start over: prod's epoch 1 is not stale because staging is at 5.
    staging.acquire(grant(0, &owner, 5, 0)).await.unwrap();
    prod.acquire(grant(0, &owner, 1, 0)).await.unwrap();
    let (s, created) = staging
        .insert(inserting(vec![new_task("a")], 1, 0))
        .await
        .unwrap()
        .remove(0);
    assert!(created);
    // The same idempotency key is another cluster's business.
    let (p, created) = prod
        .insert(inserting(vec![new_task("a")], 1, 0))
        .await
        .unwrap()
        .remove(0);
    assert!(created, "prod's key collided with staging's");
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    let listed = |page: rota_scheduler::Page| page.tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(listed(staging.list(&all).await.unwrap()), vec![s.id]);
    assert_eq!(listed(prod.list(&all).await.unwrap()), vec![p.id]);
    assert_eq!(staging.backlog().await.unwrap().pending, 1);
    // A worker of prod claims prod's task only.
    let claim = [rota_scheduler::Claim::new(0, 1)];
    let claimed = prod
        .claim(claiming(&owner, &claim, 0, 10, 30_000))
        .await
        .unwrap();
    assert_eq!(
        listed(rota_scheduler::Page {
            tasks: claimed.tasks,
            next: None
        }),
        vec![p.id]
    );
    // Staging's task, whatever its id, is untouched.
    let untouched = staging.get(s.id).await.unwrap().unwrap();
    assert_eq!(untouched.status, rota_scheduler::TaskStatus::Pending);
}

#[tokio::test]
async fn tables_of_an_unscoped_earlier_version_are_adopted() {
    let url = rota_test_harness::postgres().fresh_database();
    let id = old_task(&PostgresTaskStore::connect(&url, &settings()).await.unwrap()).await;
    // Lay the tables out as a rota from before schemas per cluster did: in `public`, and
    // without what later migrations made (schedules, claims per batch).
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{BEFORE_CLAIMS_PER_BATCH} DROP TABLE rota_test.rota_schedules; \
         DELETE FROM rota_test.rota_schema WHERE version > 4; \
         ALTER TABLE rota_test.rota_tasks SET SCHEMA public; \
         ALTER TABLE rota_test.rota_partition_owners SET SCHEMA public; \
         ALTER TABLE rota_test.rota_schema SET SCHEMA public; DROP SCHEMA rota_test"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let store = PostgresTaskStore::connect(&url, &Settings::for_cluster("adopter"))
        .await
        .unwrap();
    let task = store.get(id).await.unwrap().expect("the old task is kept");
    assert_eq!(task.name, "old");
    // Ids go on from the adopted sequence.
    let next = store
        .insert(inserting(vec![new_task("new")], 1, 0))
        .await
        .unwrap()[0]
        .0
        .id;
    assert!(next > id);
    let public: bool = sqlx::query_scalar("SELECT to_regclass('public.rota_tasks') IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(public, "the unscoped tables are gone from public");
    // The later migrations ran on the adopted tables.
    assert!(store.schedules(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_statement_that_hangs_fails_as_unavailable_within_its_deadline() {
    let url = rota_test_harness::postgres().fresh_database();
    let mut quick = settings();
    quick.statement_timeout = std::time::Duration::from_millis(300);
    let store = PostgresTaskStore::connect(&url, &quick).await.unwrap();
    let owner = rota_model::InstanceId::new("w");
    store.acquire(grant(0, &owner, 1, 0)).await.unwrap();
    // Another session holds the owner row: the next acquire waits on its lock.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM rota_test.rota_partition_owners FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = store
        .acquire(grant(0, &owner, 2, 0))
        .await
        .expect_err("blocked");
    assert!(err.retryable(), "{err}");
    assert!(err.to_string().contains("57014"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    blocker.rollback().await.unwrap();
    assert_eq!(store.acquire(grant(0, &owner, 2, 0)).await, Ok(0));
}

#[tokio::test]
async fn a_cluster_name_postgres_cannot_hold_is_refused() {
    let url = rota_test_harness::postgres().fresh_database();
    let long = "c".repeat(59);
    let err = PostgresTaskStore::connect(&url, &Settings::for_cluster(&long))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("at most 58"), "{err}");
}

#[tokio::test]
async fn claims_made_before_claims_per_batch_are_kept_across_the_upgrade() {
    use rota_model::InstanceId;
    use rota_scheduler::conformance::calls::{ended, ends};
    use rota_scheduler::{CompletionOutcome, TaskStatus};
    let url = rota_test_harness::postgres().fresh_database();
    let owner = InstanceId::new("w1");
    let id = {
        let store = PostgresTaskStore::connect_with_caller_clock(&url, &settings())
            .await
            .unwrap();
        store.acquire(grant(0, &owner, 1, 0)).await.unwrap();
        old_task(&store).await
    };
    // The task as an earlier rota left it: marked RUNNING in its row, its attempt counted.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{BEFORE_CLAIMS_PER_BATCH} \
         UPDATE rota_test.rota_tasks SET status = 'RUNNING', owner = 'w1', epoch = 1, \
           attempts = 1, started_at = 5, lease_until = 30000 WHERE id = {id}; \
         DELETE FROM rota_test.rota_schema WHERE version > 5"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let store = PostgresTaskStore::connect_with_caller_clock(&url, &settings())
        .await
        .unwrap();
    // Still running under its claim, its attempt counted once.
    let seen = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (seen.status, seen.owner.as_ref(), seen.epoch, seen.attempts),
        (TaskStatus::Running, Some(&owner), Some(1), 1)
    );
    assert_eq!(seen.lease_until, Some(30000));
    let backlog = store.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.running), (0, 1));
    // Its worker's completion is accepted, once.
    let done = ended(id, 0, 1, CompletionOutcome::Succeeded);
    let applied = store
        .complete(&ends(&owner, std::slice::from_ref(&done), 40))
        .await;
    assert_eq!(applied.unwrap(), [Some(TaskStatus::Completed)]);
    let again = store.complete(&ends(&owner, &[done], 41)).await;
    assert_eq!(again.unwrap(), [None]);
    let finished = store.get(id).await.unwrap().unwrap();
    assert_eq!((finished.attempts, finished.started_at), (1, Some(5)));
}

/// The store vacuums the claim table itself as its claim rows add up (autovacuum comes about
/// once a minute; meanwhile the rows deleted as claims settle would keep their space, and the
/// completion, which scans the table, would slow down with it).
#[tokio::test]
async fn the_claim_table_is_vacuumed_as_claims_add_up() {
    use rota_model::InstanceId;
    use rota_scheduler::conformance::calls::{ended, ends};
    use rota_scheduler::{Claim, CompletionOutcome};
    let url = rota_test_harness::postgres().fresh_database();
    let store = PostgresTaskStore::connect_with_caller_clock(&url, &settings())
        .await
        .unwrap();
    let owner = InstanceId::new("w1");
    store.acquire(grant(0, &owner, 1, 0)).await.unwrap();
    let tasks = (0..1_000)
        .map(|i| rota_scheduler::NewTask {
            idempotency_key: None,
            ..new_task(&format!("t{i}"))
        })
        .collect();
    store.insert(inserting(tasks, 1, 0)).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let vacuums = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT vacuum_count FROM pg_stat_user_tables \
             WHERE schemaname = 'rota_test' AND relname = 'rota_claims'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n
    };
    assert_eq!(vacuums().await, 0, "no vacuum before the claims");
    // A thousand claims of one task each: a thousand claim rows, each deleted as its task ends.
    let claim = [Claim::new(0, 1)];
    for now in 1..=1_000 {
        let claimed = store
            .claim(claiming(&owner, &claim, now, 1, 30_000))
            .await
            .unwrap();
        let [task] = claimed.tasks.as_slice() else {
            panic!("claim {now} took {} tasks, not 1", claimed.tasks.len());
        };
        let done = ended(task.id, 0, 1, CompletionOutcome::Succeeded);
        store.complete(&ends(&owner, &[done], now)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while vacuums().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the claim table was not vacuumed within 20 s of its 1,000th claim row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
