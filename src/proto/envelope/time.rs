//! RFC 3339 UTC timestamps with milliseconds (`2026-11-28T07:00:00.123Z`), without a date
//! crate: the caller reads the clock once per loop turn and passes Unix milliseconds.

/// 9999-12-31T23:59:59.999Z: RFC 3339 years have exactly four digits, so later instants are
/// clamped here rather than printed in a form clients would refuse.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

use std::cell::Cell;

/// Appends `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (always 24 bytes, UTC). The date and
/// time of day are computed once per second per thread (every `data_event` carries a
/// timestamp, and a shard writes thousands per second); only the milliseconds are new.
pub fn format_rfc3339_millis(unix_ms: u64, out: &mut Vec<u8>) {
    thread_local! {
        /// The last second formatted on this thread, and its first 19 bytes.
        static LAST_SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let ms = unix_ms.min(MAX_RFC3339_MS);
    let secs = ms / 1000;
    let prefix = LAST_SECOND.with(|last| {
        let (cached, prefix) = last.get();
        if cached == secs {
            return prefix;
        }
        let prefix = format_second(secs);
        last.set((secs, prefix));
        prefix
    });
    let millis = ms % 1000;
    let mut tail = *b".000Z";
    tail[1] = b'0' + (millis / 100) as u8;
    tail[2] = b'0' + (millis / 10 % 10) as u8;
    tail[3] = b'0' + (millis % 10) as u8;
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&tail);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second.
fn format_second(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    let mut buf = [0u8; 19];
    put4(&mut buf, 0, year);
    buf[4] = b'-';
    put2(&mut buf, 5, month);
    buf[7] = b'-';
    put2(&mut buf, 8, day);
    buf[10] = b'T';
    put2(&mut buf, 11, sod / 3600);
    buf[13] = b':';
    put2(&mut buf, 14, sod / 60 % 60);
    buf[16] = b':';
    put2(&mut buf, 17, sod % 60);
    buf
}

/// Howard Hinnant's `civil_from_days` for days since 1970-01-01 (non-negative only, since
/// the input is unsigned): proleptic Gregorian (year, month 1..=12, day 1..=31).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// Callers pass constant in-bounds offsets into the fixed 19-byte buffer.
fn put2(buf: &mut [u8; 19], at: usize, v: u64) {
    buf[at] = b'0' + (v / 10 % 10) as u8;
    buf[at + 1] = b'0' + (v % 10) as u8;
}

fn put4(buf: &mut [u8; 19], at: usize, v: u64) {
    put2(buf, at, v / 100);
    put2(buf, at + 2, v % 100);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(ms: u64) -> String {
        let mut out = Vec::new();
        format_rfc3339_millis(ms, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn known_dates() {
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(fmt(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(fmt(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(fmt(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(fmt(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        // 2100 is not a leap year: the day before 03-01 is 02-28.
        assert_eq!(fmt(4_107_542_399_000), "2100-02-28T23:59:59.000Z");
        assert_eq!(fmt(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(fmt(1_798_441_200_123), "2026-12-28T07:00:00.123Z");
        assert_eq!(fmt(1_795_849_200_123), "2026-11-28T07:00:00.123Z");
        assert_eq!(fmt(1_234_567_890_000), "2009-02-13T23:31:30.000Z");
        assert_eq!(fmt(946_684_799_999), "1999-12-31T23:59:59.999Z");
        assert_eq!(fmt(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(fmt(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn cached_second_serves_only_its_own_milliseconds() {
        for ms in [
            1_000_000_123,
            1_000_000_999,
            1_000_001_000,
            1_000_000_000,
            5,
            1_000_000_001,
        ] {
            let (secs, millis) = (ms / 1000, ms % 1000);
            let want = format!(
                "{}.{millis:03}Z",
                std::str::from_utf8(&format_second(secs)).unwrap()
            );
            assert_eq!(fmt(ms), want);
        }
        assert_eq!(fmt(1_000_000_999), "1970-01-12T13:46:40.999Z");
        assert_eq!(fmt(1_000_001_000), "1970-01-12T13:46:41.000Z");
    }

    #[test]
    fn matches_day_by_day_reference() {
        // Walk every day from 1970 to 2400 against a naive calendar.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for days in 0..157_000u64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
