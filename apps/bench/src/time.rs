//! Times as the API writes them: RFC 3339, UTC with milliseconds.

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn format(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// An RFC 3339 time as milliseconds since the Unix epoch.
pub fn parse(text: &str) -> anyhow::Result<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("{text:?} is not an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        let ms = 1_700_000_000_123;
        assert_eq!(super::format(ms), "2023-11-14T22:13:20.123Z");
        assert_eq!(super::parse(&super::format(ms)).unwrap(), ms);
        assert!(super::parse("yesterday").is_err());
    }
}
