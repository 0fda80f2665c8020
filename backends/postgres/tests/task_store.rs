//! The task-store conformance suite against a real PostgreSQL server, started by the test
//! harness from the machine's installed binaries (a fresh database per case).

use rota_core::task::TaskStore;
use rota_postgres::PostgresTaskStore;
use std::sync::Arc;

async fn store() -> Arc<dyn TaskStore> {
    let url = rota_test_harness::postgres().fresh_database();
    Arc::new(
        PostgresTaskStore::connect(&url)
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
