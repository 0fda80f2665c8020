//! Times on the wire: RFC 3339. A time with an offset (`2023-12-31T23:59:59+01:00`, `...Z`) is
//! taken as given; a zone-less one (`2023-12-31T23:59:59`, as the original system's clients
//! send) is read as UTC. Responses are always UTC with milliseconds (`...T22:59:59.000Z`).
//! Only instants in the years 0000 to 9999 (UTC) are times: RFC 3339 has no other years, so a
//! time outside them could be stored but never written back in a form a client can read.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use rota_scheduler::Millis;

/// The first instant a time may name: 0000-01-01T00:00:00.000Z.
pub const EARLIEST: Millis = -62_167_219_200_000;
/// The last instant a time may name: 9999-12-31T23:59:59.999Z.
pub const LATEST: Millis = 253_402_300_799_999;

/// Parses a request time into milliseconds since the Unix epoch.
pub fn parse(text: &str) -> Result<Millis, String> {
    let ms = parse_any_year(text).ok_or_else(|| {
        format!(
            "scheduledTime {text:?} is not a time: use RFC 3339, such as 2023-12-31T23:59:59Z or \
             2023-12-31T23:59:59+01:00 (a time without offset is read as UTC)"
        )
    })?;
    if !(EARLIEST..=LATEST).contains(&ms) {
        return Err(format!(
            "scheduledTime {text:?} is outside the years 0000 to 9999 (UTC) that RFC 3339 can write"
        ));
    }
    Ok(ms)
}

fn parse_any_year(text: &str) -> Option<Millis> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ]
    .into_iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .map(|t| t.and_utc().timestamp_millis())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn format(ms: Millis) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_less_times_are_utc_and_offsets_are_honoured() {
        let utc = parse("2023-12-31T23:59:59").unwrap();
        assert_eq!(parse("2023-12-31T23:59:59Z").unwrap(), utc);
        assert_eq!(parse("2024-01-01T00:59:59+01:00").unwrap(), utc);
        assert_eq!(format(utc), "2023-12-31T23:59:59.000Z");
        assert!(parse("tomorrow").unwrap_err().contains("RFC 3339"));
        assert!(parse("2023-13-45T99:00:00").is_err());
    }

    /// Found by the fuzzer: a zone-less time in year -34046 was accepted and written back as
    /// `-34046-12-31T00:59:59.000Z`, which no client (nor this parser) reads as a time.
    #[test]
    fn only_years_rfc_3339_can_write_are_times() {
        let refused = parse("-34046-12-31T0:59:59").unwrap_err();
        assert!(
            refused.contains("outside the years 0000 to 9999"),
            "{refused}"
        );
        assert!(parse("+10000-01-01T00:00:00").is_err());
        // An offset can carry the first and last years' edges out of range, in UTC.
        assert!(parse("0000-01-01T00:30:00+01:00").is_err());
        assert!(parse("9999-12-31T23:30:00-01:00").is_err());
        for edge in [EARLIEST, LATEST] {
            let shown = format(edge);
            assert_eq!(parse(&shown), Ok(edge), "{shown}");
        }
        assert_eq!(format(EARLIEST), "0000-01-01T00:00:00.000Z");
        assert_eq!(format(LATEST), "9999-12-31T23:59:59.999Z");
    }
}
