//! The simulator's seeds: `ROTA_SIM_SEEDS` seeds (default 400, at least 1) from
//! `ROTA_SIM_FIRST` (default 0), on as many threads as the machine has. A failing seed is
//! printed with the command that replays it: `ROTA_SIM_SEED=<n>` with the (otherwise ignored)
//! `replay` test, which prints its trace. The full run ignores `ROTA_SIM_SEED`, so a stray one
//! cannot shrink it.

use rota_sim::{Report, run};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

fn describe(r: &Report) -> String {
    format!(
        "seed {}: {} tasks, {} runs, {} faults, {} refused completions, {} fenced controller \
         writes, recovered in {:?}, trace digest {:016x}",
        r.seed,
        r.tasks,
        r.runs,
        r.faults,
        r.refused_completions,
        r.refused_controller_writes,
        r.recovery,
        r.digest
    )
}

#[test]
#[ignore = "replays one seed: ROTA_SIM_SEED=<n> cargo test -p rota-sim --test seeds replay -- --ignored"]
fn replay() {
    let seed = env("ROTA_SIM_SEED").expect("ROTA_SIM_SEED names the seed to replay");
    let report = run(seed);
    println!("{}", describe(&report));
    println!("{}", report.trace_tail);
    assert!(report.ok(), "seed {seed}: {:#?}", report.violations);
}

#[test]
fn every_seed_keeps_every_invariant() {
    let first = env("ROTA_SIM_FIRST").unwrap_or(0);
    let count = env("ROTA_SIM_SEEDS").unwrap_or(400);
    assert!(count > 0, "ROTA_SIM_SEEDS must be at least 1");
    let next = AtomicU64::new(first);
    let failed: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64, std::time::Duration::ZERO));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= first + count {
                        break;
                    }
                    let report = run(seed);
                    {
                        let mut t = totals.lock().unwrap();
                        t.0 += report.faults;
                        t.1 += report.runs;
                        t.2 += report.refused_completions;
                        t.3 += report.refused_controller_writes;
                        t.4 = t.4.max(report.recovery.unwrap_or_default());
                    }
                    if !report.ok() {
                        failed.lock().unwrap().push(report);
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let t = totals.lock().unwrap();
    println!(
        "{count} seeds in {:.1} s ({:.1} seeds/s): {} faults, {} handler runs, {} refused \
         completions, {} fenced controller writes, slowest recovery {:?}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        t.0,
        t.1,
        t.2,
        t.3,
        t.4
    );
    let mut failed = failed.lock().unwrap();
    failed.sort_by_key(|r| r.seed);
    for r in failed.iter() {
        println!("seed {} broke: {}", r.seed, r.violations[0]);
    }
    if let Some(r) = failed.first() {
        panic!(
            "{} of {count} seeds broke an invariant; the first: {}\n{:#?}\nreplay with: \
             ROTA_SIM_SEED={} cargo test -p rota-sim --test seeds replay -- --ignored\ntrace's \
             end:\n{}",
            failed.len(),
            describe(r),
            r.violations,
            r.seed,
            r.trace_tail
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [7, 1234] {
        let (a, b) = (run(seed), run(seed));
        assert_eq!(
            a.digest, b.digest,
            "seed {seed} ran differently twice:\n{}\n---\n{}",
            a.trace_tail, b.trace_tail
        );
        assert!(a.runs > 0 && a.faults > 0, "seed {seed} did nothing");
    }
}
