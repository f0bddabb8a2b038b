//! RFC 3339 rendering and parsing of engine times (milliseconds since the epoch, UTC).
//! The engine's times are plain `u64` milliseconds. Parsing is `jiff`'s, with its
//! calendar rules (month lengths, leap years, offsets), so 2026-02-31 is refused;
//! rendering, on every answer's hot path, is integer arithmetic held equal to jiff's
//! by a test.

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

/// The last millisecond rendered as itself: jiff's `Timestamp::MAX`
/// (9999-12-30T22:00:00.999Z), the latest time any parsed input reaches. Later times
/// are shown as this one.
const RENDERED_MS_MAX: u64 = 253_402_207_200_999;

/// [`format_ms`], appended to `out` (no allocation of its own). Every answer carrying
/// a reservation renders two of these, so the calendar arithmetic is done here on
/// integers (days to a civil date by the era method) rather than through a
/// formatter; a test holds it equal to jiff's rendering. The last two times rendered
/// on the thread are kept with their text: a batch's answers carry the same creation
/// and expiry times op after op (callgrind: 692 of a batched reservation's 5,154
/// instructions were these two renderings).
pub fn write_ms(out: &mut String, ms: u64) {
    let ms = ms.min(RENDERED_MS_MAX);
    let text = RECENT_TIMES.with(|recent| {
        let mut entries = recent.get();
        match entries {
            [(at, text), _] | [_, (at, text)] if at == ms => text,
            _ => {
                let text = render_ms(ms);
                entries = [(ms, text), entries[0]];
                recent.set(entries);
                text
            }
        }
    });
    out.push_str(std::str::from_utf8(&text).expect("ASCII digits"));
}

thread_local! {
    /// The last two times [`write_ms`] rendered on this thread (after the cap), the
    /// newest first, each with its text; both start as the cap, which is its own text.
    static RECENT_TIMES: std::cell::Cell<[(u64, [u8; 24]); 2]> = const {
        std::cell::Cell::new([(RENDERED_MS_MAX, *b"9999-12-30T22:00:00.999Z"); 2])
    };
}

/// The text of `ms` (at most [`RENDERED_MS_MAX`]), worked out from scratch.
fn render_ms(ms: u64) -> [u8; 24] {
    let days = ms / 86_400_000;
    let ms_of_day = ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, ms_of_day / 3_600_000);
    put(14, 2, ms_of_day / 60_000 % 60);
    put(17, 2, ms_of_day / 1000 % 60);
    put(20, 3, ms_of_day % 1000);
    text
}

/// Year, month (1-12) and day (1-31) of the `days`-th day after 1970-01-01, in the
/// proleptic Gregorian calendar: counted in 400-year eras starting on March 1st,
/// so the leap day falls at the end of each year of the count.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 719_468 days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Parse an RFC 3339 date-time (`Z` or a `±HH:MM` offset, optional fraction) to
/// milliseconds since the epoch, truncating finer fractions. Impossible dates
/// (2026-02-31), a missing offset and times before 1970 are refused.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    // RFC 3339's offset hour is 00 to 23 (jiff takes up to 25).
    if !s.ends_with(['Z', 'z']) {
        let offset = s.get(s.len().checked_sub(6)?..)?.as_bytes();
        let hour = std::str::from_utf8(offset.get(1..3)?).ok()?;
        if !matches!(offset[0], b'+' | b'-') || offset[3] != b':' || hour > "23" {
            return None;
        }
    }
    // RFC 3339 takes any number of fraction digits, jiff nine at most: the ones past
    // the milliseconds are dropped anyway.
    let digits_at = s.find('.').map(|dot| dot + 1);
    let digits = digits_at.map_or(0, |at| {
        s[at..].bytes().take_while(u8::is_ascii_digit).count()
    });
    let at: Timestamp = match digits_at {
        Some(at) if digits > 9 => format!("{}{}", &s[..at + 9], &s[at + digits..])
            .parse()
            .ok()?,
        _ => s.parse().ok()?,
    };
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
        assert_eq!(
            parse_rfc3339("2026-11-22T10:00:00.1239999999999Z"),
            Some(1_795_341_600_123)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T09:59:00+23:59"),
            Some(1_795_341_600_000)
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
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00+2:00",
            "2026-01-01T00:00:00+02",
            "2026-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    /// Times rendered again soon after (a batch's creation and expiry times, op after
    /// op) come out as rendered from scratch, whatever was rendered between.
    #[test]
    fn recent_times_render_as_from_scratch() {
        let times = [
            0,
            1_764_633_600_000,
            1_764_633_660_000,
            86_399_999,
            RENDERED_MS_MAX,
            u64::MAX,
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = times[(x % times.len() as u64) as usize];
            let mut out = String::new();
            write_ms(&mut out, ms);
            let scratch = render_ms(ms.min(RENDERED_MS_MAX));
            assert_eq!(out.as_bytes(), &scratch, "{ms}");
        }
        // The starting entries are the cap's own text.
        assert_eq!(
            std::str::from_utf8(&render_ms(RENDERED_MS_MAX)).unwrap(),
            "9999-12-30T22:00:00.999Z"
        );
    }

    /// The integer rendering is jiff's, at every kind of day: each day's first and
    /// last millisecond over leap and century years, and a spread of times up to the
    /// end of year 9999 and past it.
    #[test]
    fn write_ms_renders_as_jiff_does() {
        let jiff = |ms: u64| {
            let at = i64::try_from(ms)
                .ok()
                .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                .unwrap_or(Timestamp::MAX);
            format!("{at:.3}")
        };
        let mut samples: Vec<u64> = Vec::new();
        // Every day from 1896 (a non-leap century year follows in 1900) to 2104.
        for day in 0..(135 * 366) {
            let start = day * 86_400_000;
            samples.extend([start, start + 86_399_999, start + 45_296_789]);
        }
        // A spread over all years up to the cap.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x % (RENDERED_MS_MAX - 1000));
        }
        samples.push(RENDERED_MS_MAX - 1000);
        assert_eq!(
            Timestamp::MAX.as_millisecond(),
            RENDERED_MS_MAX as i64,
            "the cap is jiff's"
        );
        for ms in samples {
            assert_eq!(format_ms(ms), jiff(ms), "{ms}");
        }
        // jiff refuses a few milliseconds below its own MAX; from the cap on, every
        // time is shown as the cap.
        for ms in [
            RENDERED_MS_MAX,
            RENDERED_MS_MAX + 1,
            253_402_300_799_999,
            u64::MAX,
        ] {
            assert_eq!(format_ms(ms), "9999-12-30T22:00:00.999Z", "{ms}");
        }
    }
}
