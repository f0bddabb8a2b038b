//! RFC 3339 rendering and parsing of engine times (milliseconds since the epoch, UTC),
//! by `jiff`: the engine's times are plain `u64` milliseconds, and the calendar rules
//! (month lengths, leap years, offsets) are jiff's, so 2026-02-31 is refused.

use jiff::Timestamp;

/// The wall clock in milliseconds since the epoch (0 before 1970).
pub fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// `2026-11-22T10:00:00.123Z`: always UTC, always milliseconds. A time past the end
/// of year 9999 (which no parsed time reaches) is shown as that end.
pub fn format_ms(ms: u64) -> String {
    let mut out = String::with_capacity(24);
    write_ms(&mut out, ms);
    out
}

/// [`format_ms`], appended to `out` (no allocation of its own).
pub fn write_ms(out: &mut String, ms: u64) {
    use std::fmt::Write as _;
    let at = i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX);
    let _ = write!(out, "{at:.3}");
}

/// Parse an RFC 3339 date-time (`Z` or a `±HH:MM` offset, optional fraction) to
/// milliseconds since the epoch, truncating finer fractions. Impossible dates
/// (2026-02-31), a missing offset and times before 1970 are refused.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let at: Timestamp = s.parse().ok()?;
    u64::try_from(at.as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_795_341_600_123, "2026-11-22T10:00:00.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_772_236_800_000, "2026-02-28T00:00:00.000Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_ms(ms), text);
            assert_eq!(parse_rfc3339(text), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2026-11-22T12:00:00+02:00"),
            Some(1_795_341_600_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T10:00:00.5Z"),
            Some(1_795_341_600_500)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T10:00:00.123999Z"),
            Some(1_795_341_600_123)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:00",
            "x026-11-22T10:00:00Z",
            "2026-02-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T12:00:00+02:00",
            "2026-11-22T24:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
