//! TLS to PostgreSQL: against a server that accepts TCP connections only over TLS, the store
//! connects with `sslmode=verify-full` and the server's authority, and is refused without TLS
//! or when it trusts another authority, with a message saying so.

use rota_postgres::{PostgresTaskStore, Settings};
use rota_scheduler::{StoreError, Tasks};
use rota_test_harness::tls::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_and_clients_without_tls_or_trust_are_refused() {
    let dir = std::env::temp_dir().join(format!("rota-pg-tls-{}", std::process::id()));
    let pki = Pki::generate(&dir);
    let server = rota_test_harness::tls_postgres(&pki);
    let base = server.fresh_database();
    let settings = Settings::for_cluster("tls");
    let with = |query: &str| format!("{base}?{query}");

    let url = with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.ca.display()
    ));
    let store = PostgresTaskStore::connect(&url, &settings)
        .await
        .expect("verify-full with the server's authority connects");
    let listed = store
        .list(&Default::default())
        .await
        .expect("a query over TLS");
    assert!(listed.tasks.is_empty());

    let refusals = [
        ("sslmode=disable", "without TLS"),
        (
            &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()) as &str,
            "trusting another authority",
        ),
    ];
    for (query, what) in refusals {
        match PostgresTaskStore::connect(&with(query), &settings).await {
            Err(StoreError::Unavailable(message)) => {
                println!("{what}: {message}");
                assert!(
                    message.contains("cannot connect to PostgreSQL"),
                    "{message}"
                );
            }
            Err(other) => panic!("{what}: unexpected error {other}"),
            Ok(_) => panic!("a client {what} was admitted"),
        }
    }
}
