//! The clock as the platform writes it: Unix seconds and milliseconds, and RFC 3339 UTC with
//! milliseconds (log lines, CloudEvents' `time`), formatted without a date-time crate and
//! once a second per thread.

use std::fmt::Write as _;

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time, RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    let mut s = String::with_capacity(24);
    push_timestamp(&mut s);
    s
}

/// A Unix time in milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_of_ms(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    push_civil(&mut s, ms.div_euclid(1000));
    let _ = write!(s, ".{:03}Z", ms.rem_euclid(1000));
    s
}

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`: most lines only add millis.
    static SECOND: std::cell::Cell<(i64, [u8; 19])> = const { std::cell::Cell::new((-1, [0; 19])) };
}

/// RFC 3339 UTC with milliseconds, without a date-time crate.
pub fn push_timestamp(out: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let mut s = String::with_capacity(19);
        push_civil(&mut s, secs);
        prefix.copy_from_slice(s.as_bytes());
        SECOND.set((secs, prefix));
    }
    out.push_str(std::str::from_utf8(&prefix).expect("ASCII"));
    let ms = now.subsec_millis();
    let digits = [
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ];
    out.push_str(std::str::from_utf8(&digits).expect("ASCII"));
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time.
fn push_civil(out: &mut String, secs: i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_time_matches_known_dates() {
        let mut s = String::new();
        super::push_civil(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00");
        s.clear();
        super::push_civil(&mut s, 1_795_308_000); // `date -u -d @1795308000`
        assert_eq!(s, "2026-11-22T00:40:00");
        s.clear();
        super::push_civil(&mut s, 951_782_400); // a leap day
        assert_eq!(s, "2000-02-29T00:00:00");
    }

    #[test]
    fn milliseconds_are_written_with_their_date() {
        assert_eq!(
            super::rfc3339_of_ms(1_795_308_000_123),
            "2026-11-22T00:40:00.123Z"
        );
        assert_eq!(super::rfc3339_of_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn timestamp_is_rfc3339() {
        let mut s = String::new();
        super::push_timestamp(&mut s);
        assert_eq!(s.len(), 24, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
}
