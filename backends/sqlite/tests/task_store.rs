//! The task-store conformance suite on SQLite (a fresh in-memory database per case), plus what
//! only a file-backed store can show: data survives reopening, and the schema version is checked.

use rota_scheduler::conformance::calls::inserting;
use rota_scheduler::{NewTask, TaskStatus, TaskStore, Tasks};
use rota_sqlite::SqliteTaskStore;
use std::sync::Arc;

async fn store() -> Arc<dyn TaskStore> {
    Arc::new(SqliteTaskStore::open_in_memory().expect("in-memory SQLite"))
}

rota_scheduler::task_store_conformance!(store);

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rota-sqlite-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tasks.db")
}

#[tokio::test]
async fn tasks_survive_reopening_the_file() {
    let path = temp_db("reopen");
    let id = {
        let store = SqliteTaskStore::open(&path, "test").unwrap();
        let task = NewTask {
            name: "persisted".into(),
            payload: serde_json::json!("payload"),
            scheduled_at: 5,
            partition_key: None,
            max_attempts: 3,
            handler: None,
            idempotency_key: Some("k".into()),
        };
        store.insert(inserting(vec![task], 12, 1)).await.unwrap()[0]
            .0
            .id
    };
    let store = SqliteTaskStore::open(&path, "test").unwrap();
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (task.name.as_str(), task.status),
        ("persisted", TaskStatus::Pending)
    );
    assert_eq!(task.payload, serde_json::json!("payload"));
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    let path = temp_db("schema");
    drop(SqliteTaskStore::open(&path, "test").unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteTaskStore::open(&path, "test").err().expect("refused");
    assert!(err.to_string().contains("newer than this build"), "{err}");
}

#[tokio::test]
async fn a_file_of_another_cluster_is_refused() {
    let path = temp_db("clusters");
    drop(SqliteTaskStore::open(&path, "staging").unwrap());
    drop(SqliteTaskStore::open(&path, "staging").unwrap());
    let err = SqliteTaskStore::open(&path, "prod").err().expect("refused");
    assert!(
        matches!(&err, rota_scheduler::StoreError::Invalid(m)
            if m.contains("\"staging\"") && m.contains("a file of its own")),
        "{err}"
    );
}

/// SQLite's claim merges the partitions' due ranges a page at a time: over backlogs of many
/// pages in every partition, with due times interleaved across partitions, each claim takes
/// exactly the earliest due tasks of all (by due time, then id), and every task once.
#[tokio::test]
async fn a_claim_merges_the_partitions_in_exact_due_order() {
    use rota_model::InstanceId;
    use rota_scheduler::conformance::calls::{claiming, grant};
    use rota_scheduler::{Claim, Execution};
    let store = SqliteTaskStore::open_in_memory().unwrap();
    let partitions = 4;
    // 300 tasks; task i's due time repeats every 7, so ties are broken by id across partitions.
    let tasks = (0..300)
        .map(|i| NewTask {
            name: format!("t{i}"),
            payload: serde_json::Value::Null,
            scheduled_at: 1_000 + (i * 37) % 7 * 10,
            partition_key: None,
            max_attempts: 1,
            handler: None,
            idempotency_key: None,
        })
        .collect();
    let inserted = store.insert(inserting(tasks, partitions, 0)).await.unwrap();
    let mut expected: Vec<_> = inserted
        .iter()
        .map(|(t, _)| (t.scheduled_at, t.id))
        .collect();
    expected.sort_unstable();
    let owner = InstanceId::new("w1");
    for p in 0..partitions {
        store.acquire(grant(p, &owner, 1, 0)).await.unwrap();
    }
    let claims: Vec<_> = (0..partitions).map(|p| Claim::new(p, 1)).collect();
    let mut taken = Vec::new();
    // Claims of 70 (pages of 17 per partition), then whatever is left.
    while taken.len() < expected.len() {
        let claimed = store
            .claim(claiming(&owner, &claims, 2_000, 70, 30_000))
            .await
            .unwrap();
        assert!(!claimed.tasks.is_empty(), "due tasks left unclaimed");
        taken.extend(claimed.tasks.iter().map(|t| (t.scheduled_at, t.id)));
    }
    assert_eq!(taken, expected);
}

/// The store's checkpointer copies the write-ahead log into the database file soon after
/// writes, well before the log reaches the size at which a commit would do it itself.
#[tokio::test]
async fn the_log_is_checkpointed_in_the_background() {
    let path = temp_db("checkpoint");
    let store = SqliteTaskStore::open(&path, "test").unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let tasks = (0..2_000)
        .map(|i| NewTask {
            name: format!("t{i}"),
            payload: serde_json::json!({"some": "payload to fill pages with"}),
            scheduled_at: 5,
            partition_key: None,
            max_attempts: 3,
            handler: None,
            idempotency_key: None,
        })
        .collect();
    store.insert(inserting(tasks, 12, 1)).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = std::fs::metadata(&path).unwrap().len();
        if now > before + 50 * 4096 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {now} bytes (from {before}): the log was not checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
