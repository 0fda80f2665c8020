//! An etcd with authentication enabled (its own test binary, so its own server): sessions log
//! in with a user name and password, work within the key prefix their role may use, and are
//! refused with a clear error otherwise.

use etcd_client::{Client, Permission};
mod common;

use common::a_live_instance_comes_and_goes;
use rota_cluster::coordination::Coordination;
use rota_etcd::EtcdCoordination;
use rota_test_harness::etcd;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_log_in_and_stay_within_their_prefix() {
    let endpoint = etcd().endpoint();
    let mut admin = Client::connect([&endpoint], None).await.unwrap();
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("team-a").await.unwrap();
    let own = Permission::read_write("/team-a").with_prefix();
    admin.role_grant_permission("team-a", own).await.unwrap();
    admin.user_add("rota", "s3cret", None).await.unwrap();
    admin.user_grant_role("rota", "team-a").await.unwrap();
    admin.auth_enable().await.unwrap();

    // The right password: keys, ephemeral keys, watches and closing (revoking the lease) work.
    let store =
        EtcdCoordination::new(vec![endpoint.clone()], "/team-a").with_user("rota", "s3cret");
    let owner = store.connect(TIMEOUT).await.unwrap();
    let observer = store.connect(TIMEOUT).await.unwrap();
    a_live_instance_comes_and_goes(owner, &*observer).await;

    // A wrong password, no user, or a prefix the role may not use: refused, saying why.
    let refusals = [
        EtcdCoordination::new(vec![endpoint.clone()], "/team-a").with_user("rota", "wrong"),
        EtcdCoordination::new(vec![endpoint.clone()], "/team-a"),
        EtcdCoordination::new(vec![endpoint.clone()], "/team-b").with_user("rota", "s3cret"),
    ];
    let reasons = ["authentication failed", "user name", "permission denied"];
    for (store, reason) in refusals.iter().zip(reasons) {
        let error = match store.connect(TIMEOUT).await {
            Ok(_) => panic!("a session opened where it should be refused ({reason})"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(reason), "{error}");
    }
}
