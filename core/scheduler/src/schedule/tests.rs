//! The next-tick computation against a brute-force oracle (every second of a window checked
//! with croner's matcher), daylight-saving days in Europe/Berlin and America/New_York, and the
//! firing plan's missed-tick policies.

use super::*;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use proptest::prelude::*;

fn at(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Millis {
    zone.with_ymd_and_hms(y, mo, d, h, mi, s)
        .earliest()
        .unwrap()
        .timestamp_millis()
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Millis {
    at(Tz::UTC, y, mo, d, h, mi, s)
}

fn ticks(spec: &Spec, from: Millis, until: Millis) -> Vec<Millis> {
    let mut out = Vec::new();
    let mut t = from;
    while let Some(next) = spec.next_after(t) {
        if next >= until {
            break;
        }
        out.push(next);
        t = next;
    }
    out
}

fn local(zone: Tz, t: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(t)
        .unwrap()
        .with_timezone(&zone)
        .format("%m-%d %H:%M:%S%z")
        .to_string()
}

fn locals(zone: Tz, ticks: &[Millis]) -> Vec<String> {
    ticks.iter().map(|&t| local(zone, t)).collect()
}

/// What the module documentation promises, by brute force over every second of
/// `[from, until)`: each instant whose local time matches, except the second pass of a
/// fixed-time job's local time, and plus, for a fixed-time job whose local time a spring-forward
/// gap skipped on a matching day, the first instant after the gap.
fn oracle(pattern: &str, zone: Tz, from: Millis, until: Millis) -> Vec<Millis> {
    let cron: Cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .unwrap();
    let fixed = cron.determine_job_type() == croner::JobType::FixedTime;
    let mut out = Vec::new();
    let mut t = (from.div_euclid(1000) + 1) * 1000;
    let mut previous_offset = None;
    while t < until {
        let dt = DateTime::<Utc>::from_timestamp_millis(t)
            .unwrap()
            .with_timezone(&zone);
        let offset = chrono::Offset::fix(dt.offset());
        if let Some(before) = previous_offset.filter(|&b| b != offset) {
            // An offset change at `t`: a gap if the clock jumped forward.
            if offset.local_minus_utc() > chrono::FixedOffset::local_minus_utc(&before) && fixed {
                // Local times skipped: (t - 1s in the old offset, t in the new offset).
                let skipped_from = (t - 1000) + i64::from(before.local_minus_utc()) * 1000;
                let skipped_to = t + i64::from(offset.local_minus_utc()) * 1000;
                let mut l = skipped_from + 1000;
                let mut hit = false;
                while l < skipped_to {
                    let naive = DateTime::<Utc>::from_timestamp_millis(l)
                        .unwrap()
                        .naive_utc();
                    let as_fixed = chrono::FixedOffset::east_opt(0)
                        .unwrap()
                        .from_local_datetime(&naive)
                        .unwrap();
                    if cron.is_time_matching(&as_fixed).unwrap() {
                        hit = true;
                    }
                    l += 1000;
                }
                if hit && !cron.is_time_matching(&dt).unwrap() {
                    out.push(t);
                }
            }
        }
        previous_offset = Some(offset);
        if cron.is_time_matching(&dt).unwrap() {
            let second_pass = match zone.from_local_datetime(&dt.naive_local()) {
                chrono::LocalResult::Ambiguous(first, _) => first.timestamp_millis() != t,
                _ => false,
            };
            if !(fixed && second_pass) {
                out.push(t);
            }
        }
        t += 1000;
    }
    out
}

const BERLIN: Tz = Tz::Europe__Berlin;
const NEW_YORK: Tz = Tz::America__New_York;

/// `spec` in `zone`, parsed at `from`, and its ticks up to `until` on the zone's wall clock.
fn in_zone(zone: Tz, spec: &str, from: Millis, until: Millis) -> (Spec, Vec<String>) {
    let spec = Spec::parse(spec, zone.name(), from).unwrap();
    let ticked = locals(zone, &ticks(&spec, from, until));
    (spec, ticked)
}

/// [`in_zone`] in Berlin.
fn in_berlin(spec: &str, from: Millis, until: Millis) -> (Spec, Vec<String>) {
    in_zone(BERLIN, spec, from, until)
}

/// A quarter-hourly spec in Berlin's zone, parsed at `from`, and its ticks over `night`.
fn berlin_quarters(from: Millis, night: std::ops::Range<Millis>) -> (Spec, Vec<Millis>) {
    let quarter = Spec::parse("*/15 * * * *", "Europe/Berlin", from).unwrap();
    let ticked = ticks(&quarter, night.start, night.end);
    (quarter, ticked)
}

#[test]
fn berlin_spring_forward_fires_as_documented() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST.
    let from = at(BERLIN, 2026, 3, 28, 12, 0, 0);
    let (_, daily) = in_berlin("30 2 * * *", from, at(BERLIN, 2026, 3, 30, 12, 0, 0));
    let gap = "a fixed time in the gap fires once, right after it";
    assert_eq!(
        daily,
        ["03-29 03:00:00+0200", "03-30 02:30:00+0200"],
        "{gap}"
    );
    let night = at(BERLIN, 2026, 3, 29, 1, 40, 0)..at(BERLIN, 2026, 3, 29, 3, 20, 0);
    let (_, night) = berlin_quarters(from, night);
    assert_eq!(
        locals(BERLIN, &night),
        [
            "03-29 01:45:00+0100",
            "03-29 03:00:00+0200",
            "03-29 03:15:00+0200"
        ],
        "wall-clock times that do not exist are not ticks"
    );
    assert!(night.windows(2).all(|w| w[1] - w[0] == 15 * 60_000));
}

#[test]
fn berlin_fall_back_fires_as_documented() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-03:00 happens twice.
    let from = at(BERLIN, 2026, 10, 24, 12, 0, 0);
    let (daily, ticked) = in_berlin("30 2 * * *", from, at(BERLIN, 2026, 10, 26, 12, 0, 0));
    let repeated = "a fixed time in the repeated hour fires once, at its first pass";
    let once = ["10-25 02:30:00+0200", "10-26 02:30:00+0100"];
    assert_eq!(ticked, once, "{repeated}");
    let night = at(BERLIN, 2026, 10, 25, 1, 50, 0)..at(BERLIN, 2026, 10, 25, 3, 10, 0);
    let (quarter, night) = berlin_quarters(from, night);
    assert_eq!(night.len(), 9, "{:?}", locals(BERLIN, &night));
    assert!(
        night.windows(2).all(|w| w[1] - w[0] == 15 * 60_000),
        "both passes of the repeated hour, 15 real minutes apart: {:?}",
        locals(BERLIN, &night)
    );
    // Asked from inside the second pass, the next tick is after, never before.
    let second_pass = utc(2026, 10, 25, 1, 10, 0); // 02:10 CET, the second 02:10
    let next = daily.next_after(second_pass).unwrap();
    assert_eq!(local(BERLIN, next), "10-26 02:30:00+0100");
    let next = quarter.next_after(second_pass).unwrap();
    assert_eq!(next, utc(2026, 10, 25, 1, 15, 0));
}

#[test]
fn new_york_dst_days_fire_as_documented() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT; 2026-11-01: 02:00 EDT becomes 01:00 EST.
    let spring = (
        at(NEW_YORK, 2026, 3, 7, 12, 0, 0),
        at(NEW_YORK, 2026, 3, 9, 12, 0, 0),
    );
    let (_, ticked) = in_zone(NEW_YORK, "30 2 * * *", spring.0, spring.1);
    assert_eq!(ticked, ["03-08 03:00:00-0400", "03-09 02:30:00-0400"]);
    let from = at(NEW_YORK, 2026, 10, 31, 12, 0, 0);
    let (_, ticked) = in_zone(
        NEW_YORK,
        "30 1 * * *",
        from,
        at(NEW_YORK, 2026, 11, 2, 12, 0, 0),
    );
    assert_eq!(ticked, ["11-01 01:30:00-0400", "11-02 01:30:00-0500"]);
    let hourly = Spec::parse("0 * * * *", "America/New_York", from).unwrap();
    let night = ticks(
        &hourly,
        at(NEW_YORK, 2026, 11, 1, 0, 30, 0),
        utc(2026, 11, 1, 8, 30, 0),
    );
    assert_eq!(
        locals(NEW_YORK, &night),
        [
            "11-01 01:00:00-0400",
            "11-01 01:00:00-0500",
            "11-01 02:00:00-0500",
            "11-01 03:00:00-0500"
        ],
        "an hourly job runs every real hour"
    );
}

/// Found by the fuzzer: the tick before the first of a month of ticks every second, a year
/// after the last such month, took minutes (every tick of the window was walked).
#[test]
fn the_last_tick_before_is_found_across_months_of_dense_ticks() {
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let spec = Spec::new("*/1 * * \n * 01 *", "Europe/Berlin").unwrap();
    let next = spec.next_after(utc(2026, 4, 12, 0, 0, 0)).unwrap();
    assert_eq!(next, at(berlin, 2027, 1, 1, 0, 0, 0));
    assert_eq!(
        spec.last_before(next),
        Some(at(berlin, 2026, 1, 31, 23, 59, 59))
    );
    // And inside the month, the second before.
    assert_eq!(spec.last_before(next + 5_000), Some(next + 4_000));
    // Sparse ticks, the same answer as walking.
    let daily = Spec::new("0 30 2 * * *", "Europe/Berlin").unwrap();
    let t = at(berlin, 2026, 3, 30, 12, 0, 0);
    assert_eq!(
        daily.last_before(t),
        Some(at(berlin, 2026, 3, 30, 2, 30, 0))
    );
}

#[test]
fn intervals_tick_at_multiples_of_the_period_since_the_epoch() {
    let spec = Spec::parse("every 30s", "Europe/Berlin", 0).unwrap();
    assert_eq!(spec.next_after(0), Some(30_000));
    assert_eq!(spec.next_after(29_999), Some(30_000));
    assert_eq!(spec.next_after(30_000), Some(60_000));
    assert_eq!(spec.last_before(60_000), Some(30_000));
    assert_eq!(spec.to_string(), "every 30s");
    let daily = Spec::parse("every 1d", "UTC", 0).unwrap();
    assert_eq!(
        daily.next_after(utc(2026, 3, 29, 5, 0, 0)),
        Some(utc(2026, 3, 30, 0, 0, 0))
    );
    assert_eq!(
        Spec::parse("every 90m", "UTC", 0).unwrap().to_string(),
        "every 90m"
    );
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let err = |spec: &str, zone: &str| {
        Spec::parse(spec, zone, utc(2026, 1, 1, 0, 0, 0))
            .unwrap_err()
            .to_string()
    };
    assert!(
        err("0 0 30 2 *", "UTC").contains("never fires"),
        "{}",
        err("0 0 30 2 *", "UTC")
    );
    assert!(err("61 * * * *", "UTC").contains("not a cron expression"));
    assert!(err("* * *", "UTC").contains("not a cron expression"));
    assert!(err("", "UTC").contains("not a cron expression"));
    assert!(err("* * * * *", "Mars/Olympus").contains("unknown time zone"));
    assert!(err("every 0s", "UTC").contains("not an interval"));
    assert!(err("every 500ms", "UTC").contains("not an interval"));
    assert!(err("every 5 fortnights", "UTC").contains("not an interval"));
    assert!(err("every 400d", "UTC").contains("not an interval"));
    // A year that has passed: parses, never fires again.
    assert!(err("0 0 0 1 1 * 2020", "UTC").contains("never fires"));
    assert!(err("0 0 1 1 * 2020", "UTC").contains("not a cron expression"));
}

fn def(spec: &str, missed: MissedTicks, catch_up: u32) -> ScheduleDef {
    ScheduleDef {
        name: "report".into(),
        spec: spec.into(),
        zone: "UTC".into(),
        task: TaskTemplate {
            name: "report".into(),
            payload: serde_json::Value::Null,
            handler: None,
            max_attempts: 3,
            partition_key: None,
        },
        missed,
        catch_up,
        jitter_ms: 0,
    }
}

#[test]
fn the_plan_fires_due_ticks_and_applies_the_missed_policy() {
    let now = utc(2026, 6, 1, 12, 0, 0);
    let d = def("every 1m", MissedTicks::Skip, 10);
    let spec = d.spec().unwrap();
    // Not due yet.
    let later = now + 120_000;
    assert_eq!(plan(&spec, &d, later, now).ticks, Vec::<Millis>::new());
    // Due within the lookahead: fired (its task is due at the tick).
    let on_tick = utc(2026, 6, 1, 12, 1, 0);
    let firing = plan(&spec, &d, on_tick, on_tick - 800);
    assert_eq!(firing.ticks, [on_tick]);
    assert_eq!(firing.next_tick, Some(on_tick + 60_000));
    // Late within the grace: fired.
    let firing = plan(&spec, &d, on_tick, on_tick + 30_000);
    assert_eq!(firing.ticks, [on_tick]);
    assert!(!firing.skipped);
    // Two hours down: skip fires none of the missed, only what is in the grace window.
    let back = on_tick + 2 * 3600 * 1000 + 30_000;
    let skip = plan(&spec, &d, on_tick, back);
    assert!(skip.skipped);
    assert_eq!(skip.ticks, [back - 30_000]);
    let once = plan(
        &spec,
        &def("every 1m", MissedTicks::RunOnce, 10),
        on_tick,
        back,
    );
    assert_eq!(once.ticks, [back - 90_000, back - 30_000]);
    let all = plan(
        &spec,
        &def("every 1m", MissedTicks::RunAll, 5),
        on_tick,
        back,
    );
    assert_eq!(all.ticks.len(), 6);
    assert_eq!(all.ticks[0], back - 30_000 - 5 * 60_000);
    assert!(all.ticks.windows(2).all(|w| w[1] - w[0] == 60_000));
    // run-all with every missed tick within its cap: none skipped.
    let short = plan(
        &spec,
        &def("every 1m", MissedTicks::RunAll, 100),
        on_tick,
        on_tick + 5 * 60_000,
    );
    assert!(!short.skipped);
    assert_eq!(short.ticks[0], on_tick);
    assert_eq!(short.ticks.len(), 6);
}

#[test]
fn jitter_is_the_same_for_the_same_tick_and_within_bounds() {
    let mut d = def("every 1m", MissedTicks::Skip, 10);
    d.jitter_ms = 5_000;
    let tick = utc(2026, 6, 1, 12, 0, 0);
    assert_eq!(d.due_at(tick), d.due_at(tick));
    let offsets: Vec<i64> = (0..100)
        .map(|i| d.due_at(tick + i * 60_000) - (tick + i * 60_000))
        .collect();
    assert!(offsets.iter().all(|o| (0..=5_000).contains(o)));
    assert!(
        offsets.iter().any(|&o| o != offsets[0]),
        "spread: {offsets:?}"
    );
}

/// Patterns with wildcards, steps, ranges and fixed times, with and without seconds.
fn pattern() -> impl Strategy<Value = String> {
    let minute = prop_oneof![
        Just("*".to_string()),
        (1u32..30).prop_map(|n| format!("*/{n}")),
        (0u32..60).prop_map(|n| n.to_string()),
        (0u32..30, 30u32..60).prop_map(|(a, b)| format!("{a}-{b}")),
    ];
    let hour = prop_oneof![
        Just("*".to_string()),
        (0u32..24).prop_map(|n| n.to_string()),
        (1u32..6).prop_map(|n| format!("*/{n}")),
        Just("1-3".to_string()),
        Just("2".to_string()),
    ];
    let second = prop_oneof![
        Just(None),
        Just(Some("0".to_string())),
        (1u32..30).prop_map(|n| Some(format!("*/{n}"))),
        (0u32..60).prop_map(|n| Some(n.to_string())),
    ];
    (second, minute, hour).prop_map(|(s, m, h)| match s {
        Some(s) => format!("{s} {m} {h} * * *"),
        None => format!("{m} {h} * * *"),
    })
}

/// Windows around the DST changes of both zones, and an ordinary day.
fn window() -> impl Strategy<Value = (Tz, Millis)> {
    prop_oneof![
        Just((BERLIN, at(BERLIN, 2026, 3, 29, 0, 30, 0))),
        Just((BERLIN, at(BERLIN, 2026, 10, 25, 0, 30, 0))),
        Just((NEW_YORK, at(NEW_YORK, 2026, 3, 8, 0, 30, 0))),
        Just((NEW_YORK, at(NEW_YORK, 2026, 10, 31, 23, 30, 0))),
        Just((Tz::UTC, utc(2026, 6, 1, 0, 30, 0))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Ticks are strictly increasing, none lies before the instant asked from, and they are
    /// exactly the oracle's: none skipped, none extra, across both DST changes of both zones.
    #[test]
    fn cron_ticks_are_monotone_and_miss_no_valid_tick(
        pattern in pattern(),
        (zone, start) in window(),
        offset_s in 0i64..1800,
    ) {
        let from = start + offset_s * 1000 + 123;
        let until = from + 4 * 3600 * 1000;
        let spec = Spec::new(&pattern, zone.name()).unwrap();
        let got = ticks(&spec, from, until);
        prop_assert!(got.iter().all(|&t| t > from));
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
        let want = oracle(&pattern, zone, from, until);
        prop_assert_eq!(locals(zone, &got), locals(zone, &want), "{} in {}", pattern, zone.name());
    }

    /// Asked from any instant, the next tick is the first oracle tick after it.
    #[test]
    fn next_after_any_instant_is_the_first_tick_after_it(
        pattern in pattern(),
        (zone, start) in window(),
        offset_ms in 0i64..(3 * 3600 * 1000),
    ) {
        let spec = Spec::new(&pattern, zone.name()).unwrap();
        let t = start + offset_ms;
        let want = oracle(&pattern, zone, t, t + 26 * 3600 * 1000).first().copied();
        prop_assert_eq!(spec.next_after(t), want);
        if let Some(next) = want {
            prop_assert_eq!(spec.last_before(next + 1), Some(next));
        }
    }

    /// Intervals: monotone, one period apart, aligned.
    #[test]
    fn interval_ticks_are_aligned(period_s in 1i64..100_000, t in 0i64..4_000_000_000_000) {
        let spec = Spec::new(&format!("every {period_s}s"), "UTC").unwrap();
        let next = spec.next_after(t).unwrap();
        prop_assert!(next > t && next - t <= period_s * 1000);
        prop_assert_eq!(next % (period_s * 1000), 0);
        prop_assert_eq!(spec.last_before(next), Some(next - period_s * 1000).filter(|&x| x >= 0));
    }

    /// Firing round after round, at any cadence of the worker's rounds, fires each tick once:
    /// the plan's ticks of successive rounds are disjoint and together are every tick (within
    /// the grace, no policy drops any).
    #[test]
    fn successive_plans_fire_every_tick_once(
        period_s in 1i64..120,
        gaps in proptest::collection::vec(0i64..50_000, 1..60),
    ) {
        let d = def(&format!("every {period_s}s"), MissedTicks::Skip, 10);
        let spec = d.spec().unwrap();
        let start = utc(2026, 6, 1, 0, 0, 0);
        let mut next = spec.next_after(start).unwrap();
        let mut now = start;
        let mut fired = Vec::new();
        for gap in gaps {
            now += gap;
            let firing = plan(&spec, &d, next, now);
            prop_assert!(!firing.skipped);
            fired.extend(firing.ticks);
            next = firing.next_tick.unwrap();
        }
        let want = ticks(&spec, start, next);
        prop_assert_eq!(fired, want);
    }
}

/// Cron-like text of fields, steps, ranges, lists and specials, well-formed or not.
fn cronish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        Just("L".to_string()),
        Just("W".to_string()),
        Just("#".to_string()),
        Just("/".to_string()),
        Just("-".to_string()),
        Just(",".to_string()),
        Just("MON".to_string()),
        Just("JAN".to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
        "[0-9LW#/*,?-]{1,6}",
    ];
    let field = proptest::collection::vec(token, 1..4).prop_map(|t| t.concat());
    proptest::collection::vec(field, 1..9).prop_map(|f| f.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the text, parsing answers (a spec or an error) and never panics, and a spec that
    /// parses yields increasing ticks.
    #[test]
    fn any_text_parses_or_is_refused_without_panicking(text in cronish(), zone in prop_oneof![Just("UTC"), Just("Europe/Berlin")]) {
        if let Ok(spec) = Spec::parse(&text, zone, utc(2026, 1, 1, 0, 0, 0)) {
            let ticks = spec.upcoming(utc(2026, 1, 1, 0, 0, 0), 3);
            prop_assert!(!ticks.is_empty());
            prop_assert!(ticks.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

/// Found by the fuzzer: an empty list item made a spec that never fires, and finding that out
/// took 16 s of CPU per call.
#[test]
fn an_empty_list_item_is_refused_at_once() {
    for text in [", 30 2 * * */1", "0 1, * * *", "0 ,5 * * *"] {
        let err = Spec::new(text, "UTC").unwrap_err().to_string();
        assert!(err.contains("empty item"), "{text:?}: {err}");
    }
    assert!(Spec::new("0 1,5 * * *", "UTC").is_ok());
}

/// Found by the fuzzer: a day-of-week of a bare `+` (croner's AND modifier with nothing after
/// it) matches no day, and a spec that never fires cost croner's search until the year 5000
/// (0.2-1 s of CPU a call, in `POST /schedules` too); so did impossible dates such as 30
/// February. Now the calendar is checked first.
#[test]
fn a_spec_that_never_fires_is_known_at_once() {
    let now = utc(2026, 3, 29, 0, 0, 0);
    for text in [
        "13 * 01 13 * +",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 0 31 2 +MON",
    ] {
        let started = thread_cpu();
        let spec = Spec::new(text, "Australia/Lord_Howe").unwrap();
        assert_eq!(spec.next_after(now), None, "{text:?}");
        assert_eq!(spec.last_before(now), None, "{text:?}");
        let err = Spec::parse(text, "UTC", now).unwrap_err().to_string();
        assert!(err.contains("never fires"), "{text:?}: {err}");
        // Far under croner's own proof (which takes over 100 ms of CPU even optimised).
        let spent = thread_cpu() - started;
        assert!(
            spent < std::time::Duration::from_millis(100),
            "{text:?}: {spent:?}"
        );
    }
    // Rare but real: 29 February on a Monday (both must hold) fires in 2044.
    let leap_monday = Spec::new("0 0 0 29 2 +MON", "UTC").unwrap();
    assert_eq!(leap_monday.next_after(now), Some(utc(2044, 2, 29, 0, 0, 0)));
}

/// The CPU time this thread has used: what a slow computation costs, whatever else the machine
/// runs meanwhile (a wall clock would count the time the thread waited for a core).
fn thread_cpu() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("this test reads the thread's CPU time from /proc (Linux)");
    let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
    std::time::Duration::from_nanos(ns.expect("schedstat starts with the CPU time in ns"))
}

/// Date fields of every kind croner knows, and day-of-week fields with or without `+`.
fn date_fields() -> impl Strategy<Value = String> {
    let dom = prop_oneof![
        Just("*".to_string()),
        Just("L".to_string()),
        (1u32..=31).prop_map(|d| d.to_string()),
        (1u32..=31).prop_map(|d| format!("{d}W")),
        ((1u32..=31), (1u32..=31)).prop_map(|(a, b)| format!("{a},{b}")),
    ];
    let month = prop_oneof![
        Just("*".to_string()),
        (1u32..=12).prop_map(|m| m.to_string()),
        ((1u32..=12), (1u32..=12)).prop_map(|(a, b)| format!("{a},{b}")),
    ];
    let dow = prop_oneof![
        Just("*".to_string()),
        (0u32..=6).prop_map(|d| d.to_string()),
        ((0u32..=6), (1u32..=5)).prop_map(|(d, n)| format!("{d}#{n}")),
        (0u32..=6).prop_map(|d| format!("{d}L")),
    ];
    (dom, month, dow, any::<bool>()).prop_map(|(dom, month, dow, and)| {
        let plus = if and && dow != "*" { "+" } else { "" };
        format!("0 0 0 {dom} {month} {plus}{dow}")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The quick check agrees with croner's own search until the year 5000 on whether a spec
    /// ever fires.
    #[test]
    fn a_spec_fires_if_and_only_if_croner_finds_a_tick(text in date_fields()) {
        let Ok(spec) = Spec::new(&text, "UTC") else {
            return Ok(());
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(&text)
            .unwrap();
        let start = DateTime::<Utc>::from_timestamp_millis(utc(2026, 1, 1, 0, 0, 0)).unwrap();
        let croner_finds = cron.find_next_occurrence(&start, true).is_ok();
        prop_assert_eq!(spec.next_after(utc(2026, 1, 1, 0, 0, 0)).is_some(), croner_finds, "{}", text);
    }
}
