//! The simulator has teeth: each guarantee broken on purpose (`rota_cluster::teeth`) must be
//! caught, for the right reason, within a bounded number of seeds. If the simulator stops
//! catching one (a fault it needs was dropped, an invariant weakened), this test fails.

use rota_cluster::teeth::Teeth;
use rota_sim::run_with;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seeds tried per broken guarantee before the simulator is declared toothless.
const BOUND: u64 = 400;

/// The first seed (from 0) whose run breaks an invariant matching `expect`, and its violation.
fn first_catch(teeth: Teeth, expect: &str) -> Option<(u64, String)> {
    let next = AtomicU64::new(0);
    let found: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    let done = found
                        .lock()
                        .unwrap()
                        .as_ref()
                        .is_some_and(|(f, _)| *f < seed);
                    if seed >= BOUND || done {
                        break;
                    }
                    let report = run_with(seed, teeth);
                    if let Some(v) = report.violations.iter().find(|v| v.contains(expect)) {
                        let mut f = found.lock().unwrap();
                        if f.as_ref().is_none_or(|(s, _)| seed < *s) {
                            *f = Some((seed, v.clone()));
                        }
                    }
                }
            });
        }
    });
    found.into_inner().unwrap()
}

fn assert_caught(name: &str, teeth: Teeth, expect: &str) {
    match first_catch(teeth, expect) {
        Some((seed, violation)) => println!("{name}: caught at seed {seed}: {violation}"),
        None => {
            panic!("{name}: not caught in {BOUND} seeds (expected a violation naming {expect:?})")
        }
    }
}

#[test]
fn a_completion_without_its_fence_is_caught() {
    assert_caught(
        "completion fence skipped",
        Teeth {
            skip_completion_fence: true,
            ..Teeth::default()
        },
        "a completion applied",
    );
}

#[test]
fn a_claim_that_takes_tasks_already_claimed_is_caught() {
    assert_caught(
        "claims per batch ignore the tasks in flight",
        Teeth {
            claim_ignores_held_tasks: true,
            ..Teeth::default()
        },
        "while it runs on",
    );
}

#[test]
fn a_suspended_participant_keeping_its_partitions_is_caught() {
    assert_caught(
        "suspended participant keeps its partitions",
        Teeth {
            suspended_keeps_partitions: true,
            ..Teeth::default()
        },
        "while it runs on",
    );
}

#[test]
fn an_unfenced_controller_write_is_caught() {
    assert_caught(
        "controller writes unfenced",
        Teeth {
            unfenced_controller_writes: true,
            ..Teeth::default()
        },
        "had a write applied",
    );
}
