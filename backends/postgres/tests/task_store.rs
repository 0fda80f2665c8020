//! The task-store conformance suite against a real PostgreSQL server, started by the test
//! harness from the machine's installed binaries (a fresh database per case).

use rota_core::task::TaskStore;
use rota_postgres::PostgresTaskStore;
use std::sync::Arc;

async fn store() -> Arc<dyn TaskStore> {
    let url = rota_test_harness::postgres().fresh_database();
    // The suite's times are synthetic: compare with the caller's clock, not the database's.
    Arc::new(
        PostgresTaskStore::connect_with_caller_clock(&url)
            .await
            .expect("connect to the test server"),
    )
}

rota_core::task_store_conformance!(store);

#[tokio::test]
async fn migrating_twice_is_harmless_and_a_newer_schema_is_refused() {
    let url = rota_test_harness::postgres().fresh_database();
    drop(PostgresTaskStore::connect(&url).await.unwrap());
    drop(PostgresTaskStore::connect(&url).await.unwrap());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO rota_schema (version) VALUES (99)")
        .execute(&pool)
        .await
        .unwrap();
    let err = PostgresTaskStore::connect(&url)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("newer than this build"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_wake_other_processes_through_notify() {
    let url = rota_test_harness::postgres().fresh_database();
    let writer = PostgresTaskStore::connect(&url).await.unwrap();
    let reader = PostgresTaskStore::connect(&url).await.unwrap();
    let mut woken = reader.inserted();
    // The listener connects in the background; insert until its notification arrives.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let task = rota_core::task::NewTask {
            name: "wake".into(),
            payload: serde_json::Value::Null,
            scheduled_at: 0,
            partition_key: Some("k".into()),
            max_attempts: 1,
            handler: None,
            idempotency_key: None,
        };
        let p = writer.insert(vec![task], 4, 0).await.unwrap()[0]
            .0
            .partition;
        match tokio::time::timeout(std::time::Duration::from_millis(200), woken.recv()).await {
            Ok(Ok(got)) => {
                assert_eq!(got, p);
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
    use rota_core::task::{Claim, NewTask};
    let url = rota_test_harness::postgres().fresh_database();
    let store = PostgresTaskStore::connect(&url).await.unwrap();
    let wall = rota_core::task::worker::wall_clock_ms();
    let task = NewTask {
        name: "due".into(),
        payload: serde_json::Value::Null,
        scheduled_at: wall - 1_000,
        partition_key: None,
        max_attempts: 1,
        handler: None,
        idempotency_key: None,
    };
    let t = store.insert(vec![task], 1, 0).await.unwrap().remove(0).0;
    assert!(
        t.created_at > wall - 60_000,
        "created_at from the database's clock: {}",
        t.created_at
    );
    let owner = rota_core::InstanceId::new("w");
    store.acquire(0, &owner, 1, 0).await.unwrap();
    // The worker's clock says 1970; the database's says the task is due.
    let claim = [Claim {
        partition: 0,
        epoch: 1,
    }];
    let claimed = store.claim(&owner, &claim, 0, 10, 30_000).await.unwrap();
    assert_eq!(claimed.tasks.len(), 1);
    // Renewal runs on the same clock: a lease of 30 s from the database's now, whatever the
    // worker's clock says.
    store.renew(&owner, &claim, 0, 30_000).await.unwrap();
    let renewed = store.get(t.id).await.unwrap().unwrap();
    let lease_until = renewed.lease_until.unwrap();
    assert!(
        (wall + 25_000..wall + 90_000).contains(&lease_until),
        "lease until {lease_until}, wall clock {wall}"
    );
}
