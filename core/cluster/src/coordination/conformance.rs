//! The conformance suite every coordination backend must pass, against a real server where
//! production uses one. A backend's tests call [`coordination_conformance!`] with an async
//! function returning a [`Harness`]; the macro expands to one `#[tokio::test]` per case.
//!
//! ```ignore
//! async fn harness() -> Harness { /* a fresh store or a fresh root on a shared server */ }
//! rota_cluster::coordination_conformance!(harness);
//! ```

use super::{
    CoordError, Coordination, CreateMode, MAX_TRANSACTION_OPS, MAX_VALUE_BYTES, Op, OpResult,
    Session, SessionState, WATCH_CAPACITY, Watch, WatchEvent,
};
use async_trait::async_trait;
use rota_model::SessionId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Ways to break a session that only the test harness of a backend knows.
#[async_trait]
pub trait Faults: Send + Sync {
    /// Makes the store end `session` as if its timeout had passed.
    async fn expire(&self, session: &SessionId);
}

/// What a case needs: a store, fault injection, and a root key no other test uses.
#[derive(Clone)]
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn Coordination>,
    /// Its fault injection.
    pub faults: Arc<dyn Faults>,
    /// A key prefix of this test only, such as `/conformance-17`.
    pub root: String,
}

impl Harness {
    /// `store` with `faults`, under a root key no other case of any process uses (the servers
    /// of a test binary are shared by its cases).
    pub fn fresh(store: Arc<dyn Coordination>, faults: Arc<dyn Faults>) -> Self {
        static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = format!("/conformance-{}-{case}", std::process::id());
        Self {
            store,
            faults,
            root,
        }
    }
}

/// How long any single wait of the suite may take before the case fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

impl Harness {
    async fn session(&self) -> Arc<dyn Session> {
        self.store
            .connect(SESSION_TIMEOUT)
            .await
            .expect("connect to the store under test")
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}/{}", self.root, suffix)
    }
}

/// Creates the persistent `key` holding `value`, through `session`.
async fn persist(session: &dyn Session, key: &str, value: &[u8]) {
    let created = session
        .create(key, value.to_vec(), CreateMode::Persistent)
        .await;
    created.unwrap_or_else(|e| panic!("creating {key}: {e}"));
}

/// The next event of `watch`, failing the test after [`DEADLINE`].
pub async fn next_event(watch: &mut Watch) -> Option<WatchEvent> {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("watch event within the deadline")
}

/// Waits until `session` is in state `wanted`, failing the test after [`DEADLINE`].
pub async fn wait_state(session: &dyn Session, wanted: SessionState) {
    let mut state = session.state();
    tokio::time::timeout(DEADLINE, state.wait_for(|s| *s == wanted))
        .await
        .unwrap_or_else(|_| panic!("session never reached {wanted:?}"))
        .expect("state stream open");
}

/// Create, read, set and delete, with and without expected versions.
pub async fn crud(h: &Harness) {
    let s = h.session().await;
    let key = h.key("crud");
    assert_eq!(s.get(&key).await.unwrap(), None);
    persist(&*s, &key, b"one").await;
    let node = s.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (node.value.as_slice(), node.version, node.ephemeral),
        (&b"one"[..], 0, false)
    );
    assert_eq!(
        s.create(&key, vec![], CreateMode::Persistent).await,
        Err(CoordError::Exists(key.clone()))
    );
    assert_eq!(s.set(&key, b"two".to_vec(), Some(0)).await, Ok(1));
    assert_eq!(s.set(&key, b"three".to_vec(), None).await, Ok(2));
    assert!(matches!(
        s.set(&key, vec![], Some(0)).await,
        Err(CoordError::BadVersion {
            expected: 0,
            actual: Some(2),
            ..
        })
    ));
    assert!(matches!(
        s.delete(&key, Some(1)).await,
        Err(CoordError::BadVersion { .. })
    ));
    s.delete(&key, Some(2)).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None);
    assert_eq!(
        s.set(&key, vec![], None).await,
        Err(CoordError::NotFound(key.clone()))
    );
    assert_eq!(
        s.delete(&key, None).await,
        Err(CoordError::NotFound(key.clone()))
    );
    for bad in ["", "relative", "/trailing/", "/double//slash", "/dot/./x"] {
        assert!(
            matches!(s.get(bad).await, Err(CoordError::InvalidKey(_))),
            "{bad:?} accepted"
        );
    }
}

/// Concurrent compare-and-swap increments: no update is lost, none applied twice.
pub async fn cas_conflicts(h: &Harness) {
    let key = h.key("counter");
    let s = h.session().await;
    persist(&*s, &key, b"0").await;
    let (writers, increments) = (6, 15);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let session = h.session().await;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..increments {
                loop {
                    let node = session.get(&key).await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(node.value).unwrap().parse().unwrap();
                    match session
                        .set(&key, (n + 1).to_string().into_bytes(), Some(node.version))
                        .await
                    {
                        Ok(_) => break,
                        Err(CoordError::BadVersion { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let node = s.get(&key).await.unwrap().unwrap();
    let total = writers * increments;
    assert_eq!(node.value, total.to_string().into_bytes());
    assert_eq!(node.version, total);
}

/// A transaction applies all its operations or none.
pub async fn transaction_atomicity(h: &Harness) {
    let s = h.session().await;
    let (a, b, c) = (h.key("tx/a"), h.key("tx/b"), h.key("tx/c"));
    persist(&*s, &b, b"b").await;
    persist(&*s, &c, b"c").await;
    let failing = vec![
        Op::Create {
            key: a.clone(),
            value: b"a".to_vec(),
            mode: CreateMode::Persistent,
        },
        Op::Set {
            key: b.clone(),
            value: b"b2".to_vec(),
            expected: None,
        },
        Op::Check {
            key: c.clone(),
            version: 7,
        },
    ];
    assert!(matches!(
        s.transaction(failing).await,
        Err(CoordError::BadVersion { .. })
    ));
    assert_eq!(
        s.get(&a).await.unwrap(),
        None,
        "create of a failed transaction applied"
    );
    assert_eq!(s.get(&b).await.unwrap().unwrap().version, 0, "set applied");

    let ok = vec![
        Op::Check {
            key: c.clone(),
            version: 0,
        },
        Op::Create {
            key: a.clone(),
            value: b"a".to_vec(),
            mode: CreateMode::Ephemeral,
        },
        Op::Set {
            key: b.clone(),
            value: b"b2".to_vec(),
            expected: Some(0),
        },
        Op::Delete {
            key: c.clone(),
            expected: Some(0),
        },
    ];
    assert_eq!(
        s.transaction(ok).await.unwrap(),
        vec![
            OpResult::Checked,
            OpResult::Created,
            OpResult::Set(1),
            OpResult::Deleted
        ]
    );
    assert!(s.get(&a).await.unwrap().unwrap().ephemeral);
    assert_eq!(s.get(&c).await.unwrap(), None);

    // Transfers between two keys by concurrent transactions keep the sum.
    let (x, y) = (h.key("tx/x"), h.key("tx/y"));
    persist(&*s, &x, b"100").await;
    persist(&*s, &y, b"0").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let session = h.session().await;
        let (x, y) = (x.clone(), y.clone());
        tasks.push(tokio::spawn(async move {
            let read = |n: Option<super::Node>| {
                let n = n.unwrap();
                let v: i64 = String::from_utf8(n.value).unwrap().parse().unwrap();
                (v, n.version)
            };
            let mut done = 0;
            while done < 10 {
                let (vx, ver_x) = read(session.get(&x).await.unwrap());
                let (vy, ver_y) = read(session.get(&y).await.unwrap());
                let ops = vec![
                    Op::Set {
                        key: x.clone(),
                        value: (vx - 1).to_string().into_bytes(),
                        expected: Some(ver_x),
                    },
                    Op::Set {
                        key: y.clone(),
                        value: (vy + 1).to_string().into_bytes(),
                        expected: Some(ver_y),
                    },
                ];
                match session.transaction(ops).await {
                    Ok(_) => done += 1,
                    Err(CoordError::BadVersion { .. }) => {}
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let value = |k: String| {
        let s = s.clone();
        async move {
            let v = s.get(&k).await.unwrap().unwrap().value;
            String::from_utf8(v).unwrap().parse::<i64>().unwrap()
        }
    };
    assert_eq!((value(x).await, value(y).await), (60, 40));
}

/// Transactions up to [`MAX_TRANSACTION_OPS`] operations apply, even when every operation is a
/// conditional delete (the most conditions per operation on etcd); longer ones, and ones naming
/// a key their earlier operations wrote, are refused and apply nothing.
pub async fn transaction_limits(h: &Harness) {
    let s = h.session().await;
    let key = |i: usize| h.key(&format!("limits/k{i}"));
    let create = |i: usize| Op::Create {
        key: key(i),
        value: vec![],
        mode: CreateMode::Persistent,
    };
    let too_many: Vec<Op> = (0..=MAX_TRANSACTION_OPS).map(create).collect();
    assert!(matches!(
        s.transaction(too_many).await,
        Err(CoordError::Unsupported(_))
    ));
    assert_eq!(
        s.children(&h.key("limits")).await.unwrap(),
        Vec::<String>::new()
    );
    let most: Vec<Op> = (0..MAX_TRANSACTION_OPS).map(create).collect();
    assert_eq!(
        s.transaction(most).await.unwrap().len(),
        MAX_TRANSACTION_OPS
    );
    assert_eq!(
        s.children(&h.key("limits")).await.unwrap().len(),
        MAX_TRANSACTION_OPS
    );
    let deletes: Vec<Op> = (0..MAX_TRANSACTION_OPS)
        .map(|i| Op::Delete {
            key: key(i),
            expected: Some(0),
        })
        .collect();
    assert_eq!(
        s.transaction(deletes).await.unwrap().len(),
        MAX_TRANSACTION_OPS
    );
    assert_eq!(
        s.children(&h.key("limits")).await.unwrap(),
        Vec::<String>::new()
    );

    let twice = vec![
        create(0),
        Op::Set {
            key: key(0),
            value: b"again".to_vec(),
            expected: None,
        },
    ];
    assert!(matches!(
        s.transaction(twice).await,
        Err(CoordError::Unsupported(_))
    ));
    assert_eq!(
        s.get(&key(0)).await.unwrap(),
        None,
        "refused transaction applied"
    );
    // Checking a key, then writing it, is one condition and one write: allowed.
    persist(&*s, &key(0), b"").await;
    let check_then_set = vec![
        Op::Check {
            key: key(0),
            version: 0,
        },
        Op::Set {
            key: key(0),
            value: b"x".to_vec(),
            expected: Some(0),
        },
    ];
    assert_eq!(
        s.transaction(check_then_set).await.unwrap(),
        vec![OpResult::Checked, OpResult::Set(1)]
    );
}

/// Deep trees, children listing, and no delete of a key with children.
pub async fn deep_trees(h: &Harness) {
    let s = h.session().await;
    let mut key = h.key("deep");
    for depth in 0..32 {
        key = format!("{key}/level{depth}");
        s.create(&key, depth.to_string().into_bytes(), CreateMode::Persistent)
            .await
            .unwrap();
    }
    assert_eq!(
        s.get(&key).await.unwrap().unwrap().value,
        b"31".to_vec(),
        "deepest key"
    );
    let parent = h.key("wide");
    for name in ["c", "a", "b"] {
        persist(&*s, &format!("{parent}/{name}"), b"").await;
    }
    persist(&*s, &format!("{parent}/a/x"), b"").await;
    assert_eq!(s.children(&parent).await.unwrap(), vec!["a", "b", "c"]);
    assert_eq!(
        s.children(&h.key("nothing")).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        s.delete(&format!("{parent}/a"), None).await,
        Err(CoordError::NotEmpty(format!("{parent}/a")))
    );
}

/// Values up to the limit round-trip; larger ones are refused.
pub async fn large_values(h: &Harness) {
    let s = h.session().await;
    let key = h.key("large");
    let value: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    s.create(&key, value.clone(), CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(s.get(&key).await.unwrap().unwrap().value, value);
    assert!(matches!(
        s.set(&key, vec![0; MAX_VALUE_BYTES + 1], None).await,
        Err(CoordError::TooLarge { .. })
    ));
}

/// Closing a session deletes its ephemeral keys, ends its watches, and fails later calls.
pub async fn ephemeral_removed_on_close(h: &Harness) {
    let (owner, observer) = (h.session().await, h.session().await);
    let key = h.key("eph/close");
    let mut watch = observer.watch(&key, false).await.unwrap();
    let mut own_watch = owner.watch(&h.root, true).await.unwrap();
    owner
        .create(&key, b"x".to_vec(), CreateMode::Ephemeral)
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut watch).await,
        Some(WatchEvent::Created { .. })
    ));
    owner.close().await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        Some(WatchEvent::Deleted { key: key.clone() })
    );
    assert_eq!(observer.get(&key).await.unwrap(), None);
    assert_eq!(*owner.state().borrow(), SessionState::Closed);
    assert_eq!(owner.get(&key).await, Err(CoordError::SessionExpired));
    // The closed session's watch ends, after at most the changes that really happened (whether
    // it sees the deletion of its own ephemeral key depends on the backend).
    while let Some(event) = next_event(&mut own_watch).await {
        assert!(
            matches!(
                event,
                WatchEvent::Created { .. } | WatchEvent::Deleted { .. }
            ),
            "{event:?}"
        );
    }
}

/// Expiry deletes ephemeral keys, is signalled to the holder, and fails its later calls.
pub async fn ephemeral_removed_on_expiry(h: &Harness) {
    let (owner, observer) = (h.session().await, h.session().await);
    let key = h.key("eph/expiry");
    let persistent = h.key("eph/stays");
    owner
        .create(&key, b"x".to_vec(), CreateMode::Ephemeral)
        .await
        .unwrap();
    persist(&*owner, &persistent, b"y").await;
    let mut watch = observer.watch(&key, false).await.unwrap();
    h.faults.expire(&owner.id()).await;
    wait_state(&*owner, SessionState::Expired).await;
    loop {
        match next_event(&mut watch).await {
            Some(WatchEvent::Deleted { key: k }) => {
                assert_eq!(k, key);
                break;
            }
            Some(WatchEvent::Resync) => {
                if observer.get(&key).await.unwrap().is_none() {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(observer.get(&key).await.unwrap(), None);
    assert!(observer.get(&persistent).await.unwrap().is_some());
    assert!(!owner.get(&key).await.unwrap_err().certainly_not_applied());
}

/// Watches deliver every change after they start, in order per key and exactly once, across
/// concurrent writers.
pub async fn watch_order_under_concurrent_writers(h: &Harness) {
    let observer = h.session().await;
    let root = h.key("watched");
    persist(&*observer, &root, b"").await;
    let mut watch = observer.watch(&root, true).await.unwrap();
    let (writers, writes) = (4u64, 40u64);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let session = h.session().await;
        let key = format!("{root}/w{w}");
        tasks.push(tokio::spawn(async move {
            persist(&*session, &key, b"0").await;
            for i in 1..=writes {
                session
                    .set(&key, i.to_string().into_bytes(), Some(i - 1))
                    .await
                    .unwrap();
            }
            session.delete(&key, Some(writes)).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Per key: created, `writes` changes, deleted.
    let mut seen: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let done = |seen: &BTreeMap<String, Vec<&'static str>>| {
        seen.len() == writers as usize && seen.values().all(|v| v.last() == Some(&"deleted"))
    };
    while !done(&seen) {
        let (key, kind) = match next_event(&mut watch).await.expect("watch open") {
            WatchEvent::Created { key } => (key, "created"),
            WatchEvent::Changed { key } => (key, "changed"),
            WatchEvent::Deleted { key } => (key, "deleted"),
            WatchEvent::Resync => panic!("resync without any fault injected"),
        };
        seen.entry(key).or_default().push(kind);
    }
    for (key, events) in seen {
        let mut expected = vec!["created"];
        expected.extend(std::iter::repeat_n("changed", writes as usize));
        expected.push("deleted");
        assert_eq!(events, expected, "events of {key}");
    }
    assert_eq!(watch.try_next(), None, "no event beyond the changes made");
}

/// A non-recursive watch sees its key only; a recursive one sees the subtree but not siblings
/// that merely share a name prefix.
pub async fn watch_scope(h: &Harness) {
    let s = h.session().await;
    let key = h.key("scope/x");
    let mut single = s.watch(&key, false).await.unwrap();
    let mut subtree = s.watch(&key, true).await.unwrap();
    persist(&*s, &key, b"").await;
    persist(&*s, &format!("{key}/child"), b"").await;
    persist(&*s, &format!("{key}y"), b"").await;
    s.set(&key, b"v".to_vec(), Some(0)).await.unwrap();
    let expected_single = [
        WatchEvent::Created { key: key.clone() },
        WatchEvent::Changed { key: key.clone() },
    ];
    for expected in expected_single {
        assert_eq!(next_event(&mut single).await, Some(expected));
    }
    let expected_subtree = [
        WatchEvent::Created { key: key.clone() },
        WatchEvent::Created {
            key: format!("{key}/child"),
        },
        WatchEvent::Changed { key: key.clone() },
    ];
    for expected in expected_subtree {
        assert_eq!(next_event(&mut subtree).await, Some(expected));
    }
    assert_eq!(single.try_next(), None);
    assert_eq!(subtree.try_next(), None);
}

/// A watcher that does not keep up with a flood of changes costs bounded memory: it receives
/// at most [`WATCH_CAPACITY`] events, then a `Resync`; re-reading then shows every change, and
/// the watch goes on delivering the changes after it.
pub async fn a_flooded_watcher_gets_a_resync(h: &Harness) {
    let s = h.session().await;
    let root = h.key("flood");
    persist(&*s, &root, b"").await;
    let mut watch = s.watch(&root, true).await.unwrap();
    // Twice what the watch holds, written while nobody reads it, a transaction of 50 at a time.
    let keys = 2 * WATCH_CAPACITY;
    for batch in 0..keys / 50 {
        let ops = (0..50)
            .map(|i| Op::Create {
                key: format!("{root}/k{}", batch * 50 + i),
                value: vec![],
                mode: CreateMode::Persistent,
            })
            .collect();
        s.transaction(ops).await.unwrap();
    }
    // The backend delivers the flood at its own pace: wait until it has filled the watch and
    // had to drop events.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !watch.overflowed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no overflow: {} events queued of {keys} changes",
            watch.queued()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        watch.queued() <= WATCH_CAPACITY,
        "the watch held {} events",
        watch.queued()
    );
    assert_eq!(next_event(&mut watch).await, Some(WatchEvent::Resync));
    let children = s.children(&root).await.unwrap();
    assert_eq!(
        children.len(),
        keys / 50 * 50,
        "re-reading shows every change"
    );
    // Still watching: the next change arrives, as its event or (if the backend was still
    // delivering the flood and overflowed again) as another resync whose re-read shows it.
    let last = format!("{root}/after");
    persist(&*s, &last, b"").await;
    loop {
        match next_event(&mut watch).await.expect("watch open") {
            WatchEvent::Created { key } if key == last => break,
            WatchEvent::Created { .. } => {}
            WatchEvent::Resync => {
                let children = s.children(&root).await.unwrap();
                if children.iter().any(|c| c == "after") {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh [`Harness`] from
/// the given async function.
#[macro_export]
macro_rules! coordination_conformance {
    ($harness:path) => {
        $crate::coordination_conformance!(@cases $harness;
            crud, cas_conflicts, transaction_atomicity, transaction_limits, deep_trees, large_values,
            ephemeral_removed_on_close, ephemeral_removed_on_expiry,
            watch_order_under_concurrent_writers, watch_scope, a_flooded_watcher_gets_a_resync);
    };
    (@cases $harness:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness().await;
                $crate::coordination::conformance::$case(&harness).await;
            }
        )*
    };
}
