//! A whole Helix-style cluster in one process on the in-memory store: controllers (leader and
//! standby) and participants, for each built-in state model, under the invariant checker.
//! Time is paused (tokio's clock advances when every task waits), so session timeouts and
//! delay windows pass without slowing the tests; waits are polls with a deadline.

use rota_cluster::ClusterError;
use rota_cluster::controller::{ControllerStatus, LeaderLease};
use rota_cluster::coordination::{Coordination, Op, Session};
use rota_cluster::harness::{RESOURCE, TIMEOUT, TestCluster, resource};
use rota_cluster::keys::ClusterKeys;
use rota_cluster::participant::ParticipantStatus;
use rota_memory::MemoryCoordination;
use rota_model::{InstanceConfig, InstanceId, StateModel};
use std::sync::Arc;
use std::time::Duration;

const CLUSTER: &str = rota_cluster::harness::CLUSTER;
const THREE: [&str; 3] = ["p1", "p2", "p3"];
const FOUR: [&str; 4] = ["p1", "p2", "p3", "p4"];

/// A cluster on a fresh memory store (returned for fault injection) with a leading controller,
/// a standby, and the given participants running.
async fn running(
    model: &str,
    partitions: u32,
    replicas: u32,
    work: Duration,
    participants: &[&str],
) -> (TestCluster, MemoryCoordination) {
    let (mut c, store) = cluster(model, resource(model, partitions, replicas), work).await;
    c.start_controller("c1");
    c.wait_for("a leader", || async { c.leader().await.is_some() })
        .await;
    c.start_controller("c2");
    for id in participants {
        c.start_participant(id);
    }
    (c, store)
}

/// [`running`], once more than `calls` transitions have been called: transitions are under way.
async fn under_way(
    model: &str,
    partitions: u32,
    replicas: u32,
    work: Duration,
    participants: &[&str],
    calls: usize,
) -> (TestCluster, MemoryCoordination) {
    let (c, store) = running(model, partitions, replicas, work, participants).await;
    c.wait_transitions(calls).await;
    (c, store)
}

fn top(c: &TestCluster) -> String {
    c.model.top_state().to_string()
}

/// Partitions whose top state is held, in the external view, by someone other than `not`.
async fn tops_elsewhere(c: &TestCluster, not: &str) -> usize {
    let view = c
        .admin
        .external_view(RESOURCE)
        .await
        .unwrap()
        .unwrap_or_default();
    let top = top(c);
    (0..c.resource.partitions)
        .filter(|p| {
            view.partitions.get(p).is_some_and(|m| {
                m.iter()
                    .any(|(i, s)| *s == top.as_str() && i.as_str() != not)
                    && !m.contains_key(not)
            })
        })
        .count()
}

/// A cluster on a fresh memory store; the store is returned for fault injection.
async fn cluster(
    model: &str,
    r: rota_model::ResourceConfig,
    work: Duration,
) -> (TestCluster, MemoryCoordination) {
    let store = MemoryCoordination::new();
    (
        TestCluster::new(Arc::new(store.clone()), model, r, work).await,
        store,
    )
}

#[tokio::test(start_paused = true)]
async fn every_builtin_model_converges_with_a_standby_controller() {
    for model in StateModel::BUILTINS {
        let (c, _store) = running(model, 12, 3, Duration::from_millis(5), &FOUR).await;
        c.wait_converged().await;
        let leaders = c
            .controllers
            .values()
            .filter(|r| matches!(*r.handle.borrow(), ControllerStatus::Leader { .. }))
            .count();
        assert_eq!(leaders, 1, "{model}: exactly one leader");
        assert!(!c.checker.calls().is_empty());
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn participants_join_leave_and_crash() {
    for model in StateModel::BUILTINS {
        let (mut c, _store) = running(model, 16, 2, Duration::from_millis(5), &THREE).await;
        c.wait_converged().await;
        c.start_participant("p4");
        c.wait_converged().await;
        c.stop_participant("p2").await;
        c.wait_converged().await;
        c.kill_participant("p3");
        c.wait_converged().await;
        let view = c.admin.external_view(RESOURCE).await.unwrap().unwrap();
        assert!(
            view.partitions
                .values()
                .all(|m| !m.contains_key("p3") && !m.contains_key("p2")),
            "{model}"
        );
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_session_expiring_mid_transition_loses_nothing() {
    for model in StateModel::BUILTINS {
        // Once transitions are under way, one participant's session expires.
        let (c, store) = under_way(model, 24, 3, Duration::from_millis(200), &FOUR, 10).await;
        let ParticipantStatus::Live(session) =
            c.participants["p2"].handle.status().borrow().clone()
        else {
            panic!("p2 not live");
        };
        // Its contact with the store is lost mid-transition; the store expires the session when
        // the timeout has passed. (A store ending a session its holder never saw suspended, with
        // `expire`, cannot give the holder time to step down first: there, only the storage
        // fencing by epoch keeps a late write out.)
        store.suspend(&session);
        // The participant registers again with a new session and the cluster converges.
        c.wait_converged().await;
        let status = c.participants["p2"].handle.status().borrow().clone();
        assert!(
            matches!(status, ParticipantStatus::Live(s) if s != session),
            "{model}"
        );
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn killing_the_leader_mid_reconcile_hands_over_without_double_grants() {
    for model in StateModel::BUILTINS {
        let (mut c, _store) = under_way(model, 20, 3, Duration::from_millis(50), &THREE, 5).await;
        let (old, old_epoch) = c.leader().await.unwrap();
        c.kill_controller(&old);
        c.wait_for("a new leader", || async {
            c.leader().await.is_some_and(|(_, e)| e > old_epoch)
        })
        .await;
        c.wait_converged().await;
        let history = c.admin.history().await.unwrap();
        assert_eq!(history.changes.len(), 2, "{model}: {history:?}");
        assert!(history.changes[1].epoch > history.changes[0].epoch);
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leaders_write_is_refused_by_the_store() {
    let store = MemoryCoordination::new();
    let keys = ClusterKeys::new(CLUSTER);
    let a: Arc<dyn Session> = store.connect(TIMEOUT).await.unwrap();
    let b: Arc<dyn Session> = store.connect(TIMEOUT).await.unwrap();
    let lease_a = LeaderLease::acquire(a.clone(), &keys, "a")
        .await
        .unwrap()
        .unwrap();
    assert!(
        LeaderLease::acquire(b.clone(), &keys, "b")
            .await
            .unwrap()
            .is_none()
    );
    let probe = format!("{}/probe", keys.root());
    let create = |v: &str| Op::Create {
        key: format!("{probe}-{v}"),
        value: vec![],
        mode: rota_cluster::coordination::CreateMode::Persistent,
    };
    lease_a.write(vec![create("a1")]).await.unwrap();
    // The store loses a's leader key (as when its session expires there) while a still runs.
    b.delete(&keys.leader(), None).await.unwrap();
    let lease_b = LeaderLease::acquire(b.clone(), &keys, "b")
        .await
        .unwrap()
        .unwrap();
    assert!(lease_b.epoch() > lease_a.epoch());
    assert_eq!(
        lease_a.write(vec![create("a2")]).await,
        Err(ClusterError::Deposed {
            epoch: lease_a.epoch()
        })
    );
    assert!(
        b.get(&format!("{probe}-a2")).await.unwrap().is_none(),
        "late write applied"
    );
    lease_b.write(vec![create("b1")]).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_participant_cut_off_steps_down_before_anyone_else_is_granted() {
    for model in StateModel::BUILTINS {
        let (c, store) = running(model, 12, 2, Duration::from_millis(20), &THREE).await;
        c.wait_converged().await;
        let top = top(&c);
        let before = c.checker.calls().len();
        let ParticipantStatus::Live(session) =
            c.participants["p1"].handle.status().borrow().clone()
        else {
            panic!("p1 not live");
        };
        let view = c.admin.external_view(RESOURCE).await.unwrap().unwrap();
        let tops_of_p1 = view
            .partitions
            .values()
            .filter(|m| m.get("p1").is_some_and(|s| *s == top.as_str()))
            .count();
        assert!(tops_of_p1 > 0, "{model}");
        // Cut p1 off from the store (its process keeps running), and keep it from reconnecting
        // until the others hold every top state.
        store.refuse_new_sessions(true);
        store.suspend(&session);
        c.wait_for("top states granted elsewhere", || async {
            tops_elsewhere(&c, "p1").await == 12
        })
        .await;
        store.refuse_new_sessions(false);
        c.wait_converged().await;
        let calls = c.checker.calls();
        let p1 = InstanceId::new("p1");
        let first_new_grant = calls[before..]
            .iter()
            .position(|call| call.request.instance != p1 && call.request.to == top.as_str())
            .expect("top states granted elsewhere");
        let late = calls[before + first_new_grant..]
            .iter()
            .filter(|call| call.request.instance == p1 && call.request.from == top.as_str())
            .count();
        assert_eq!(late, 0, "{model}: p1 still stepping down after a new grant");
        let stepped_down = calls[before..]
            .iter()
            .filter(|call| call.request.instance == p1 && call.request.from == top.as_str())
            .count();
        assert!(
            stepped_down >= tops_of_p1,
            "{model}: p1 stepped down from every top state"
        );
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_disabled_instance_is_emptied() {
    for model in StateModel::BUILTINS {
        let (c, _store) = running(model, 10, 2, Duration::ZERO, &THREE).await;
        c.wait_converged().await;
        c.admin
            .set_enabled(&InstanceId::new("p3"), false)
            .await
            .unwrap();
        let enabled = vec![InstanceConfig::new("p1"), InstanceConfig::new("p2")];
        c.wait_for("p3 emptied", || c.converged_over(&enabled))
            .await;
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn maintenance_restores_top_states_but_moves_nothing() {
    for model in StateModel::BUILTINS {
        let (mut c, _store) = running(model, 12, 2, Duration::ZERO, &THREE).await;
        c.wait_converged().await;
        c.admin.set_maintenance(true).await.unwrap();
        let ideal_before = c.admin.ideal_state(RESOURCE).await.unwrap().unwrap();
        c.kill_participant("p3");
        let top = top(&c);
        // Every partition regains its top state among its remaining holders; none gains a replica.
        c.wait_for("top states restored", || async {
            let view = c.admin.external_view(RESOURCE).await.unwrap().unwrap();
            (0..12u32).all(|p| {
                let holders = view.partitions.get(&p).cloned().unwrap_or_default();
                let mut expected: Vec<_> = ideal_before.partitions[p as usize]
                    .instances()
                    .filter(|i| i.as_str() != "p3")
                    .cloned()
                    .collect();
                expected.sort();
                holders.values().any(|s| *s == top.as_str())
                    && holders.keys().cloned().collect::<Vec<_>>() == expected
            })
        })
        .await;
        assert_eq!(
            c.admin.ideal_state(RESOURCE).await.unwrap().unwrap(),
            ideal_before,
            "{model}"
        );
        c.admin.set_maintenance(false).await.unwrap();
        c.wait_converged().await;
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn delayed_rebalance_waits_for_the_window_and_keeps_a_top_state() {
    for model in StateModel::BUILTINS {
        let mut r = resource(model, 12, 2);
        r.delay_window_ms = Some(60_000);
        r.min_active_replicas = Some(1);
        let (mut c, _store) = cluster(model, r, Duration::ZERO).await;
        c.start_controller("c1");
        c.start_controller("c2");
        for id in ["p1", "p2", "p3"] {
            c.start_participant(id);
        }
        c.wait_converged().await;
        let started = tokio::time::Instant::now();
        c.kill_participant("p3");
        // Within the window: p3 keeps its place in the ideal state, and every partition has
        // its top state on a live instance.
        c.wait_for("top states on live instances", || async {
            tops_elsewhere(&c, "p3").await == 12
        })
        .await;
        let ideal = c.admin.ideal_state(RESOURCE).await.unwrap().unwrap();
        assert!(
            ideal
                .partitions
                .iter()
                .any(|p| p.state_of(&InstanceId::new("p3")).is_some()),
            "{model}: p3 moved out before its delay window ended"
        );
        // After the window: rebalanced over the live instances.
        c.wait_converged().await;
        assert!(
            started.elapsed() >= Duration::from_secs(60),
            "{model}: rebalanced early"
        );
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_bounds_transitions_in_flight() {
    let (c, _store) = cluster(
        "MasterSlave",
        resource("MasterSlave", 30, 3),
        Duration::from_millis(10),
    )
    .await;
    let mut c = c;
    c.admin
        .set_throttle(rota_model::planner::Throttle {
            per_instance: Some(2),
            per_resource: None,
            cluster: Some(4),
        })
        .await
        .unwrap();
    c.start_controller("c1");
    for id in ["p1", "p2", "p3", "p4"] {
        c.start_participant(id);
    }
    let keys = ClusterKeys::new(CLUSTER);
    let session = c.store.connect(TIMEOUT).await.unwrap();
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut total = 0;
        for id in ["p1", "p2", "p3", "p4"] {
            let n = session
                .children(&keys.messages(&InstanceId::new(id)))
                .await
                .unwrap()
                .len();
            assert!(n <= 2, "{id} has {n} messages in flight");
            total += n;
        }
        assert!(total <= 4, "{total} messages in flight in the cluster");
        most = most.max(total);
        if c.converged_over(&c.live_instances()).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no convergence");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most > 0, "never saw a message in flight");
    c.shutdown().await;
}

/// Fails the first transition into `MASTER` of partition 0, then works.
struct FailOnce {
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl rota_cluster::participant::TransitionHandler for FailOnce {
    async fn on_transition(
        &self,
        r: &rota_cluster::participant::TransitionRequest,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if r.partition == 0 && r.to == "MASTER" && !self.failed.swap(true, Ordering::SeqCst) {
            return Err("disk full".into());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_transition_leaves_error_until_reset() {
    let (mut c, _store) =
        cluster("MasterSlave", resource("MasterSlave", 4, 1), Duration::ZERO).await;
    c.start_controller("c1");
    let failing = Arc::new(FailOnce {
        failed: Default::default(),
    });
    c.start_participant_with("p1", failing);
    c.wait_for("partition 0 in ERROR", || async {
        let view = c.admin.external_view(RESOURCE).await.unwrap();
        view.is_some_and(|v| {
            v.partitions
                .get(&0)
                .is_some_and(|m| m.get("p1").is_some_and(|s| s == "ERROR"))
        })
    })
    .await;
    // Nothing moves a replica out of ERROR but a reset.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let view = c.admin.external_view(RESOURCE).await.unwrap().unwrap();
        assert_eq!(
            view.partitions[&0].get("p1").map(|s| s.as_str()),
            Some("ERROR")
        );
    }
    c.participants["p1"].handle.reset(RESOURCE, 0);
    c.wait_converged().await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_partitions_converge_and_absorb_a_join() {
    let (mut c, _store) = running(
        "MasterSlave",
        1000,
        3,
        Duration::ZERO,
        &["p1", "p2", "p3", "p4", "p5"],
    )
    .await;
    c.wait_converged().await;
    c.start_participant("p6");
    c.wait_converged().await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_lost_for_a_moment_is_retried_and_the_cluster_converges() {
    for model in StateModel::BUILTINS {
        let (c, store) = under_way(model, 12, 2, Duration::from_millis(50), &THREE, 3).await;
        // Each participant's next write fails, its session staying connected: typically the
        // record of a transition that has run. No event brings that message back; the
        // participant must try again.
        for id in ["p1", "p2", "p3"] {
            let ParticipantStatus::Live(session) =
                c.participants[id].handle.status().borrow().clone()
            else {
                panic!("{id} not live");
            };
            store.fail_writes(&session, 1);
        }
        c.wait_converged().await;
        // Converged can hide a lost record (a later write carries the whole current state); a
        // message left behind cannot.
        let reader = store.connect(TIMEOUT).await.unwrap();
        let keys = ClusterKeys::new(CLUSTER);
        c.wait_for("every message processed", || async {
            let mut left = 0;
            for id in ["p1", "p2", "p3"] {
                let dir = keys.messages(&InstanceId::new(id));
                left += reader.children(&dir).await.unwrap().len();
            }
            left == 0
        })
        .await;
        c.shutdown().await;
    }
}
