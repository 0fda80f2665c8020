//! When a schedule fires: a cron expression in a time zone, or a fixed interval, and the
//! computation of its ticks. Pure: no clock, no I/O.
//!
//! # Semantics
//! - **Cron** (5 fields, or 6 with seconds first; parsed by `croner`, with its extensions `L`,
//!   `W`, `#`) is matched against the wall clock of the schedule's time zone. A tick is an
//!   instant whose local time matches.
//! - **Daylight saving** (the rules of every cron that people rely on, Vixie's included):
//!   - *spring forward*: local times that do not exist that day are not ticks; a job at a fixed
//!     time of day (single second, minute and hour) that falls into the gap fires once, at the
//!     first instant after it (`30 2 * * *` in Europe/Berlin fires at 03:00 on the last Sunday of
//!     March);
//!   - *fall back*: a fixed-time job fires once, at the first of the two instants with its local
//!     time; any other job fires at every instant whose local time matches, both passes of the
//!     repeated hour included (`*/15 * * * *` keeps firing every 15 real minutes).
//! - **Intervals** (`every 30s`, `every 5m`, `every 2h`, `every 1d`) are fixed durations ticking
//!   at the multiples of the interval since the Unix epoch (UTC), whatever the zone: `every 1d`
//!   fires at 00:00 UTC, and daylight saving never stretches or shortens one.
//! - Ticks are whole seconds, at least one second apart.

use super::Millis;
use chrono::{DateTime, FixedOffset, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::{Cron, JobType};
use std::fmt;

/// Why a spec cannot be used: said so that the person who wrote it can fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not a cron expression or interval.
    #[error("{0}")]
    Invalid(String),
    /// Not an IANA time zone.
    #[error("unknown time zone {0:?}: use an IANA name such as \"UTC\" or \"Europe/Berlin\"")]
    UnknownZone(String),
    /// It parses, but no instant ever matches.
    #[error("the schedule {0:?} never fires: no date matches it")]
    NeverFires(String),
}

/// A parsed spec, in its time zone.
#[derive(Clone, Debug)]
pub struct Spec {
    kind: Kind,
    zone: Tz,
}

#[derive(Clone, Debug)]
enum Kind {
    Cron {
        cron: Box<Cron>,
        fixed_time: bool,
        /// Whether any instant matches at all (see [`matches_ever`]).
        fires: bool,
        text: String,
    },
    Every {
        period_ms: i64,
    },
}

/// The longest interval accepted (a year).
const MAX_INTERVAL_MS: i64 = 366 * 24 * 3600 * 1000;

/// How far apart two checks for a zone's offset change are when looking for one: far less than
/// the distance between two changes in any zone.
const TRANSITION_PROBE_MS: i64 = 7 * 24 * 3600 * 1000;

impl Spec {
    /// Parses `text` (a cron expression, or `every <n><s|m|h|d>`) in the IANA zone `zone`.
    /// A spec that never fires after `now` is refused.
    pub fn parse(text: &str, zone: &str, now: Millis) -> Result<Self, SpecError> {
        let spec = Self::new(text, zone)?;
        if spec.next_after(now).is_none() {
            return Err(SpecError::NeverFires(text.trim().to_owned()));
        }
        Ok(spec)
    }

    /// Parses `text` in `zone`, whether or not it fires again.
    pub fn new(text: &str, zone: &str) -> Result<Self, SpecError> {
        let zone: Tz = zone
            .parse()
            .map_err(|_| SpecError::UnknownZone(zone.to_owned()))?;
        let trimmed = text.trim();
        if !trimmed.is_ascii() || trimmed.len() > 256 {
            return Err(SpecError::Invalid(format!(
                "{trimmed:?} is not a cron expression or interval: at most 256 ASCII characters"
            )));
        }
        let kind = match trimmed.strip_prefix("every") {
            Some(rest) if rest.starts_with(char::is_whitespace) => Kind::Every {
                period_ms: parse_interval(rest.trim())?,
            },
            _ => {
                // croner takes an empty list item (",") as a field that matches nothing: such a
                // spec never fires, and proving that searched until the year 5000 (16 s of CPU
                // per call; the fuzzer found it). Refused here, at once.
                if trimmed
                    .split_whitespace()
                    .any(|field| field.split(',').any(str::is_empty))
                {
                    return Err(SpecError::Invalid(format!(
                        "{trimmed:?} is not a cron expression: a field's list has an empty item"
                    )));
                }
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(trimmed)
                    .map_err(|e| {
                        SpecError::Invalid(format!(
                            "{trimmed:?} is not a cron expression ({}): use 5 fields \
                             (minute hour day-of-month month day-of-week) or 6 with seconds \
                             first, or an interval such as \"every 30s\"",
                            describe(&e)
                        ))
                    })?;
                Kind::Cron {
                    fixed_time: cron.determine_job_type() == JobType::FixedTime,
                    fires: matches_ever(&cron),
                    cron: Box::new(cron),
                    text: trimmed.to_owned(),
                }
            }
        };
        Ok(Self { kind, zone })
    }

    /// The time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first tick strictly after `t`, or `None` if there is none (before year 5000).
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        match &self.kind {
            Kind::Every { period_ms } => t
                .div_euclid(*period_ms)
                .checked_add(1)?
                .checked_mul(*period_ms),
            Kind::Cron { fires: false, .. } => None,
            Kind::Cron {
                cron, fixed_time, ..
            } => next_cron_tick(cron, *fixed_time, self.zone, t),
        }
    }

    /// The last tick strictly before `t`, if any since the Unix epoch (for catching up on
    /// missed ticks without walking through all of them).
    pub fn last_before(&self, t: Millis) -> Option<Millis> {
        match &self.kind {
            Kind::Every { period_ms } => {
                let tick = (t - 1).div_euclid(*period_ms) * period_ms;
                (tick >= 0).then_some(tick)
            }
            Kind::Cron { .. } => {
                // Walk back by growing windows: the tick before `t` is the last one found
                // forward from some point before it.
                let mut span = 60_000i64;
                loop {
                    let from = t.checked_sub(span)?;
                    if from < 0 {
                        return self.last_in(0, t);
                    }
                    if let Some(tick) = self.last_in(from, t) {
                        return Some(tick);
                    }
                    if span > 400 * 24 * 3600 * 1000 {
                        return None;
                    }
                    span *= 4;
                }
            }
        }
    }

    /// The last tick in `[from, until)`. A bisection on where to start looking (ticks found
    /// from a later start are later ones), so its cost is logarithmic in the window, not the
    /// number of ticks in it: a schedule firing every second of one month in twelve would
    /// otherwise walk millions of ticks (the fuzzer found it).
    fn last_in(&self, from: Millis, until: Millis) -> Option<Millis> {
        let found_from = |start: Millis| self.next_after(start - 1).filter(|&t| t < until);
        let first = found_from(from)?;
        // A tick before `until` is found from `lo` on, none from `hi`.
        let (mut lo, mut hi) = (first, until);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if found_from(mid).is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        found_from(lo)
    }

    /// The next `n` ticks after `t`.
    pub fn upcoming(&self, t: Millis, n: usize) -> Vec<Millis> {
        let mut ticks = Vec::with_capacity(n);
        let mut at = t;
        while ticks.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    ticks.push(next);
                    at = next;
                }
                None => break,
            }
        }
        ticks
    }

    /// `tick` as RFC 3339 in the schedule's zone, e.g. `2026-03-29T03:00:00+02:00`.
    pub fn local(&self, tick: Millis) -> String {
        match DateTime::<Utc>::from_timestamp_millis(tick) {
            Some(t) => t
                .with_timezone(&self.zone)
                // As every time the API writes: milliseconds, and `Z` for UTC.
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => tick.to_string(),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron { text, .. } => write!(f, "{text}"),
            Kind::Every { period_ms } => write!(f, "every {}", format_interval(*period_ms)),
        }
    }
}

/// `30s`, `5m`, `2h`, `1d` (a whole number, at least one second, at most a year).
fn parse_interval(text: &str) -> Result<i64, SpecError> {
    let bad = || {
        SpecError::Invalid(format!(
            "{text:?} is not an interval: use a whole number and a unit, s, m, h or d \
             (\"every 30s\", \"every 5m\"), from 1s to 366d"
        ))
    };
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit.trim() {
        "s" | "sec" | "second" | "seconds" => 1_000,
        "m" | "min" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(bad()),
    };
    let period = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if !(1_000..=MAX_INTERVAL_MS).contains(&period) {
        return Err(bad());
    }
    Ok(period)
}

/// The shortest way to write an interval back.
fn format_interval(ms: i64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{}s", ms / 1_000)
}

fn describe(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    match e {
        E::EmptyPattern => "it is empty".into(),
        E::InvalidPattern(m) | E::IllegalCharacters(m) | E::ComponentError(m) => m.clone(),
        other => format!("{other:?}"),
    }
}

/// The zone's UTC offset at `t`.
fn offset_at(zone: Tz, t: Millis) -> Option<FixedOffset> {
    let utc = DateTime::<Utc>::from_timestamp_millis(t)?;
    Some(zone.offset_from_utc_datetime(&utc.naive_utc()).fix())
}

/// The first instant in `(from, until]` at which the zone's offset differs from its offset at
/// `from`, to the millisecond.
fn first_offset_change(zone: Tz, from: Millis, until: Millis) -> Option<Millis> {
    let start = offset_at(zone, from)?;
    let mut lo = from;
    while lo < until {
        let hi = (lo + TRANSITION_PROBE_MS).min(until);
        if offset_at(zone, hi)? != start {
            // The change lies in (lo, hi]: bisect to the first instant with the new offset.
            let (mut a, mut b) = (lo, hi);
            while b - a > 1 {
                let mid = a + (b - a) / 2;
                if offset_at(zone, mid)? == start {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            return Some(b);
        }
        lo = hi;
    }
    None
}

/// Whether `cron` matches any instant at all: some second, minute and hour of the day, and
/// some day. Whether a day matches depends on its month, its day of the month and of the week,
/// the month's length and the weekday it starts on; the 28 years 2001-2028 hold every such
/// month (each month starting on each weekday, February in leap and in common years), so a
/// date pattern matching none of their days matches no day ever. croner proves "never" by
/// searching until the year 5000: 0.2-1 s of CPU for each call on a spec such as `0 0 30 2 *`,
/// or one whose day-of-week is a bare `+` (found by the fuzzer), which `POST /schedules` made
/// for every such request. This takes a few milliseconds at most.
fn matches_ever(cron: &Cron) -> bool {
    let p = &cron.pattern;
    let any = |range: std::ops::Range<u32>, matches: &dyn Fn(u32) -> Result<bool, _>| {
        range.into_iter().any(|v| matches(v).unwrap_or(false))
    };
    let time = any(0..60, &|s| p.second_match(s))
        && any(0..60, &|m| p.minute_match(m))
        && any(0..24, &|h| p.hour_match(h));
    time && (2001..=2028).any(|year| {
        p.year_match(year).unwrap_or(false)
            && (1..=12u32).any(|month| {
                p.month_match(month).unwrap_or(false)
                    && (1..=days_in_month(year, month))
                        .any(|day| p.day_match(year, month, day).unwrap_or(false))
            })
    })
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The next cron tick after `t` in `zone`. The search runs on the wall clock of one UTC offset
/// at a time (where local time is monotone, so no result can lie before `t`), moving on to the
/// next offset where the zone's offset changes first; then the daylight-saving rules of the
/// module documentation decide the fixed-time jobs. Ticks are whole seconds.
fn next_cron_tick(cron: &Cron, fixed_time: bool, zone: Tz, t: Millis) -> Option<Millis> {
    // The first whole second after `t`, searched from inclusively.
    let mut cursor = (t.div_euclid(1_000) + 1) * 1_000;
    // Each round crosses one offset change (a few a year) or one skipped second pass.
    for _ in 0..10_000 {
        let offset = offset_at(zone, cursor)?;
        let found = search(cron, &offset, cursor)?;
        if let Some(change) = first_offset_change(zone, cursor, found) {
            // The zone changes its offset first. A fixed-time job whose local time the change
            // skipped (spring forward) fires at the first instant after the gap: croner's
            // zone-aware search snaps it there.
            if fixed_time && search(cron, &zone, cursor).is_some_and(|snapped| snapped == change) {
                return Some(change);
            }
            cursor = change;
            continue;
        }
        if fixed_time && is_second_pass(zone, found) {
            // Fall back: a fixed-time job fires at the first pass of its local time only.
            cursor = found + 1_000;
            continue;
        }
        return Some(found);
    }
    None
}

/// The first match at or after `at` (whole seconds) on the wall clock of `zone`.
fn search<Z: TimeZone>(cron: &Cron, zone: &Z, at: Millis) -> Option<Millis> {
    let start = DateTime::<Utc>::from_timestamp_millis(at)?.with_timezone(zone);
    Some(
        cron.find_next_occurrence(&start, true)
            .ok()?
            .timestamp_millis(),
    )
}

/// Whether the local time of `t` occurs twice in `zone` and `t` is the later of the two.
fn is_second_pass(zone: Tz, t: Millis) -> bool {
    let Some(utc) = DateTime::<Utc>::from_timestamp_millis(t) else {
        return false;
    };
    let local = utc.with_timezone(&zone).naive_local();
    match zone.from_local_datetime(&local) {
        chrono::LocalResult::Ambiguous(first, _) => first.timestamp_millis() != t,
        _ => false,
    }
}
