//! The clock as the platform reads and writes it: Unix seconds, milliseconds and nanoseconds
//! (spans, tokens, passports, the `Date` field), and RFC 3339 UTC with milliseconds (log
//! lines, CloudEvents' `time`), formatted without a date-time crate and once a second per
//! thread. Once a process calibrated the CPU's counter ([`calibrate_clock`]: its span exporter
//! does), the wall clock is read through the counter, anchored to the system's clock per
//! thread and again every second; before, and in a process that exports nothing, the
//! system's clock is read.

use std::fmt::Write as _;

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    (unix_now_ns() / 1_000_000) as i64
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix_now_ns() / 1_000_000_000
}

/// Nanoseconds since the Unix epoch: once [`calibrate_clock`] has run, this thread's anchor on
/// the wall clock plus the CPU's counter since (read in a third of the time of the system's
/// clock, which a gateway's request read a dozen times: its spans, its token's and passport's
/// times, its log line), else the system's clock.
pub fn unix_now_ns() -> u64 {
    let Some(counter) = COUNTER.get() else {
        return system_now_ns();
    };
    let raw = counter.raw();
    let (unix, at) = ANCHOR.get();
    if unix != 0 && raw > at {
        let since = counter.delta_as_nanos(at, raw);
        if since < ANCHOR_FOR_NS {
            return unix + since;
        }
    }
    // The wall clock between two readings of the counter, taken again (a few times at most)
    // if the thread was held up between them: the anchor is where the two clocks agree, or
    // the closest pair of readings if none was close enough.
    let (mut before, mut closest) = (raw, None::<(u64, u64, u64)>);
    for _ in 0..3 {
        let unix = system_now_ns();
        let after = counter.raw();
        if after > before {
            let (gap, at) = (
                counter.delta_as_nanos(before, after),
                before + (after - before) / 2,
            );
            if gap < ANCHOR_READ_NS {
                ANCHOR.set((unix, at));
                return unix;
            }
            if closest.is_none_or(|(closest, ..)| gap < closest) {
                closest = Some((gap, unix, at));
            }
        }
        before = after;
    }
    let (unix, at) = match closest {
        Some((_, unix, at)) => (unix, at),
        None => (system_now_ns(), counter.raw()),
    };
    ANCHOR.set((unix, at));
    unix
}

/// The system's wall clock, in nanoseconds since the Unix epoch.
fn system_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The counter [`unix_now_ns`] reads once [`calibrate_clock`] has run: the CPU's time-stamp
/// counter through `quanta` (which falls back to the system's monotonic clock where the
/// counter is not to be trusted).
static COUNTER: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();

thread_local! {
    /// This thread's anchor: the wall clock (Unix ns) at a reading of the counter.
    static ANCHOR: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// How long an anchor serves before the wall clock is read again: a time is never further
/// than the counter's drift over a second from the wall clock, and a step of the wall clock
/// shows within a second.
const ANCHOR_FOR_NS: u64 = 1_000_000_000;

/// How long reading the wall clock between two readings of the counter may take for the
/// anchor to be kept (the reads take tens of nanoseconds; longer, the thread was preempted).
const ANCHOR_READ_NS: u64 = 20_000;

/// Calibrates the counter [`unix_now_ns`] reads (up to a fifth of a second: a process's span
/// exporter does it on its own thread, before its first batch); until then the system's clock
/// is read.
pub fn calibrate_clock() {
    COUNTER.get_or_init(quanta::Clock::new);
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
    let now = std::time::Duration::from_nanos(unix_now_ns());
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
    use super::*;

    #[test]
    fn the_counter_keeps_to_the_wall_clock() {
        calibrate_clock();
        let mut last = 0;
        for _ in 0..4 {
            // Read between two readings of the wall clock (however long the thread is held
            // up between them), within a millisecond (a second's drift of the counter), and
            // never backwards on one thread.
            let before = system_now_ns();
            let counted = unix_now_ns();
            let after = system_now_ns();
            assert!(
                counted + 1_000_000 >= before && counted <= after + 1_000_000,
                "{counted} outside {before}..{after}"
            );
            assert!(counted >= last);
            last = counted;
            // Seconds and milliseconds are the same clock's.
            let (s, ms) = (unix_now(), unix_now_ms());
            assert!(s * 1000 <= ms as u64 + 1 && ms as u64 <= (s + 1) * 1000 + 1);
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
    }

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
