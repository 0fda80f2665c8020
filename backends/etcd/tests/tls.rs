//! etcd over TLS with client certificates (its own test binary, so its own server, which serves
//! clients only over TLS and only those presenting a certificate its authority signed):
//! sessions with the authority and a client certificate work, ephemeral keys and watches
//! included; a client without a certificate, one trusting another authority and one speaking
//! plain HTTP are refused.

mod common;

use common::a_live_instance_comes_and_goes;
use rota_cluster::coordination::Coordination;
use rota_etcd::EtcdCoordination;
use rota_test_harness::tls::Pki;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Removes a directory when dropped (the test's certificates, also when the test fails).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_tls_with_a_client_certificate_work_and_others_are_refused() {
    let dir = std::env::temp_dir().join(format!("rota-etcd-tls-{}", std::process::id()));
    // Dropped last: the certificates go once the server has stopped.
    let _cleanup = RemoveOnDrop(dir.clone());
    let pki = Pki::generate(&dir);
    let server = rota_test_harness::tls_etcd(&pki);
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let (ca, cert, key) = (read(&pki.ca), read(&pki.client_cert), read(&pki.client_key));
    let endpoint = server.endpoint();

    let store =
        EtcdCoordination::new(vec![endpoint.clone()], "/tls").with_tls(&ca, Some((&cert, &key)));
    // The server may still be starting behind its open port: poll with a deadline.
    let start = std::time::Instant::now();
    let owner = loop {
        match store.connect(TIMEOUT).await {
            Ok(session) => break session,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                println!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no session over TLS: {e}"),
        }
    };
    let observer = store.connect(TIMEOUT).await.unwrap();
    a_live_instance_comes_and_goes(owner, &*observer).await;
    let live = "/rota/cluster/LIVEINSTANCES/w1";

    let refused = [
        (
            "without a client certificate",
            EtcdCoordination::new(vec![endpoint.clone()], "/tls").with_tls(&ca, None),
        ),
        (
            "trusting another authority",
            EtcdCoordination::new(vec![endpoint.clone()], "/tls")
                .with_tls(&read(&pki.other_ca), Some((&cert, &key))),
        ),
        (
            "in plain HTTP",
            EtcdCoordination::new(vec![format!("http://{endpoint}")], "/tls"),
        ),
    ];
    for (what, client) in refused {
        let attempt = tokio::time::timeout(Duration::from_secs(20), async {
            let session = client.connect(Duration::from_secs(3)).await?;
            session.get(live).await
        })
        .await;
        assert!(!matches!(attempt, Ok(Ok(_))), "a client {what} was served");
    }
}
