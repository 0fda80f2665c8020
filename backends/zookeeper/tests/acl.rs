//! ZooKeeper digest authentication: a store with credentials creates nodes only its user may
//! change; a client without them (another tenant of a shared ensemble) can read them and
//! nothing more, and is told why.

use rota_cluster::coordination::{CoordError, Coordination, CreateMode, Op};
use rota_zookeeper::ZooKeeperCoordination;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_an_authenticated_store_are_read_only_to_other_clients() {
    let endpoint = rota_test_harness::zookeeper().endpoint();
    let root = format!("/acl-{}", std::process::id());
    let owner = ZooKeeperCoordination::new(&endpoint).with_digest("rota", "known-zk-password");
    let owner = owner.connect(Duration::from_secs(10)).await.unwrap();
    let key = format!("{root}/cluster/config");
    owner
        .create(&key, b"v1".to_vec(), CreateMode::Persistent)
        .await
        .unwrap();
    let live = format!("{root}/cluster/live");
    owner
        .create(&live, b"me".to_vec(), CreateMode::Ephemeral)
        .await
        .unwrap();

    let stranger = ZooKeeperCoordination::new(&endpoint)
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    // Reading is allowed.
    let node = stranger.get(&key).await.unwrap().expect("the node");
    assert_eq!(node.value, b"v1");
    assert_eq!(
        stranger
            .children(&format!("{root}/cluster"))
            .await
            .unwrap()
            .len(),
        2
    );
    // Changing is not, whatever the operation.
    let refusals = [
        stranger.set(&key, b"evil".to_vec(), None).await.map(|_| ()),
        stranger.delete(&live, None).await,
        stranger
            .create(
                &format!("{root}/cluster/extra"),
                Vec::new(),
                CreateMode::Persistent,
            )
            .await
            .map(|_| ()),
        stranger
            .transaction(vec![Op::Set {
                key: key.clone(),
                value: b"evil".to_vec(),
                expected: None,
            }])
            .await
            .map(|_| ()),
    ];
    for refused in refusals {
        match refused {
            Err(CoordError::Backend(message)) => {
                assert!(message.contains("ACL"), "{message}");
                assert!(!message.contains("known-zk-password"), "{message}");
            }
            other => panic!("an unauthenticated client changed a node: {other:?}"),
        }
    }
    assert_eq!(owner.get(&key).await.unwrap().unwrap().value, b"v1");
    assert!(owner.get(&live).await.unwrap().is_some());
    // A client with the wrong password is no better off.
    let impostor = ZooKeeperCoordination::new(&endpoint).with_digest("rota", "guessed");
    if let Ok(impostor) = impostor.connect(Duration::from_secs(10)).await {
        assert!(impostor.set(&key, b"evil".to_vec(), None).await.is_err());
    }
    // The owner may change and delete what it made.
    owner.set(&key, b"v2".to_vec(), None).await.unwrap();
    owner.delete(&live, None).await.unwrap();
}
