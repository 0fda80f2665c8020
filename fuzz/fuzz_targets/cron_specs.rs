//! Schedule specs (cron expressions and intervals, in any zone): any text is parsed or refused
//! with a message, never a panic; the ticks of a parsed spec strictly increase, and the next
//! tick after a time comes after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_scheduler::schedule::Spec;

const ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let zone = ZONES[pick as usize % ZONES.len()];
    // 2026-03-29 00:00 UTC, hours before Europe's change to summer time, plus up to a year.
    let start = 1_774_742_400_000i64 + i64::from(pick) * 1_234_567_891 % (366 * 86_400_000);
    let Ok(spec) = Spec::new(text, zone) else {
        return;
    };
    let ticks = spec.upcoming(start, 20);
    let mut previous = start;
    for t in ticks {
        assert!(
            t > previous,
            "{text:?} in {zone}: tick {t} after {previous}"
        );
        previous = t;
    }
    if let Some(next) = spec.next_after(start) {
        assert!(next > start);
        if let Some(before) = spec.last_before(next) {
            assert!(before < next);
        }
    }
});
