//! Times on the wire: RFC 3339. A time with an offset (`2023-12-31T23:59:59+01:00`, `...Z`) is
//! taken as given; a zone-less one (`2023-12-31T23:59:59`, as the original system's clients
//! send) is read as UTC. Responses are always UTC with milliseconds (`...T22:59:59.000Z`).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use rota_core::task::Millis;

/// Parses a request time into milliseconds since the Unix epoch.
pub fn parse(text: &str) -> Result<Millis, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(format!(
        "scheduledTime {text:?} is not a time: use RFC 3339, such as 2023-12-31T23:59:59Z or \
         2023-12-31T23:59:59+01:00 (a time without offset is read as UTC)"
    ))
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
}
