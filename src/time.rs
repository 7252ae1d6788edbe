//! Instants are microseconds since the Unix epoch, UTC (the unit of every timestamp output).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// The first instant an input may hold: 0001-01-01T00:00:00Z (years 0001..=9999: every
/// instant renders in RFC 3339 and date arithmetic stays in range).
pub const FIRST_INSTANT: Micros = -62_135_596_800 * MICROS_PER_SECOND;

/// The first instant past what an input may hold: 10000-01-01T00:00:00Z.
pub const END_OF_INSTANTS: Micros = 253_402_300_800 * MICROS_PER_SECOND;

/// Whether `t` is in the years an input's instants may hold (0001 to 9999): an as-of must
/// be too, as the manifest records it in RFC 3339, which later runs read back.
pub fn in_instant_years(t: Micros) -> bool {
    (FIRST_INSTANT..END_OF_INSTANTS).contains(&t)
}

/// Render an instant as RFC 3339 with `Z`, fractional seconds only when non-zero (3
/// digits for whole milliseconds, else 6): chrono's `to_rfc3339_opts(AutoSi, true)`.
pub fn format_instant(t: Micros) -> String {
    let mut out = String::with_capacity(27);
    push_instant(&mut out, t);
    out
}

/// [`format_instant`] appended to `out` (no allocation per instant: output files render
/// millions of them).
pub fn push_instant(out: &mut String, t: Micros) {
    let seconds = t.div_euclid(MICROS_PER_SECOND);
    let micros = t.rem_euclid(MICROS_PER_SECOND) as u32;
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        // Years chrono writes with a sign or more digits: let it.
        match Utc.timestamp_micros(t).single() {
            Some(dt) => out.push_str(&dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => out.push_str(&format!("@{t}us")),
        }
        return;
    }
    let mut digits = *b"0000-00-00T00:00:00.000000Z";
    let put = |digits: &mut [u8; 27], at: usize, value: u32, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            digits[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut digits, 0, year as u32, 4);
    put(&mut digits, 5, month, 2);
    put(&mut digits, 8, day, 2);
    let sod = second_of_day as u32;
    put(&mut digits, 11, sod / 3600, 2);
    put(&mut digits, 14, sod / 60 % 60, 2);
    put(&mut digits, 17, sod % 60, 2);
    let end = match micros {
        0 => 19,
        m if m % 1000 == 0 => {
            put(&mut digits, 20, m / 1000, 3);
            23
        }
        m => {
            put(&mut digits, 20, m, 6);
            26
        }
    };
    digits[end] = b'Z';
    out.push_str(std::str::from_utf8(&digits[..=end]).expect("ASCII digits"));
}

/// (year, month, day) of a day number (days since 1970-01-01), proleptic Gregorian:
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parse an RFC 3339 instant (`2026-11-20T00:00:00Z`), or a date (`2026-11-20`, midnight
/// UTC), or a date-time without an offset (read as UTC).
pub fn parse_instant(text: &str) -> Option<Micros> {
    let text = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_micros())
}

/// Parse a settle duration such as `15m`, `900s`, `1h`, `1h 30m`. A duration past what
/// i64 microseconds hold is `i64::MAX` (longer than any limit: the caller says so, rather
/// than that it is no duration), and so is one whose whole number is past what humantime
/// holds (`99999999999999999999d`, `99999999999999999999.5d`).
pub fn parse_duration_micros(text: &str) -> Option<i64> {
    // A panic in humantime is a total of u64::MAX seconds (see `caught_quietly`): too long.
    let parse = |text: &str| {
        crate::load::caught_quietly(|| humantime::parse_duration(text))
            .unwrap_or(Err(humantime::DurationError::NumberOverflow))
    };
    match parse(text.trim()) {
        Ok(d) => Some(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        // humantime gives this one error for a number past u64 (or a total past its
        // Duration) and for a fraction it cannot hold (below 1 ns, or more digits than
        // u64 holds): too long when the whole numbers alone overflow.
        Err(humantime::DurationError::NumberOverflow) => {
            let whole_numbers = without_fractions(text);
            match parse(whole_numbers.trim()) {
                Err(humantime::DurationError::NumberOverflow) => Some(i64::MAX),
                _ => None,
            }
        }
        Err(_) => None,
    }
}

/// `text` with each number's fraction (a point and the digits after it) left out.
fn without_fractions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_fraction = false;
    for c in text.chars() {
        match c {
            '.' => in_fraction = true,
            '0'..='9' if in_fraction => {}
            _ => {
                in_fraction = false;
                out.push(c);
            }
        }
    }
    out
}

/// Add `months` calendar months to `anchor`'s date, clamping the day to the target month
/// and keeping the time of day.
fn add_months_clamped(anchor: DateTime<Utc>, months: i64) -> Option<DateTime<Utc>> {
    let total = i64::from(anchor.year()) * 12 + i64::from(anchor.month0()) + months;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month0 = total.rem_euclid(12) as u32;
    let last_day = last_day_of_month(year, month0 + 1)?;
    let day = anchor.day().min(last_day);
    let date = NaiveDate::from_ymd_opt(year, month0 + 1, day)?;
    Some(date.and_time(anchor.time()).and_utc())
}

fn last_day_of_month(year: i32, month: u32) -> Option<u32> {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let first_next = NaiveDate::from_ymd_opt(next_year, next_month, 1)?;
    Some(first_next.pred_opt()?.day())
}

/// The first monthly anniversary of `anchor` strictly after `after`: the anchor's day of
/// month clamped to each month's length (31st → Feb 28/29 → Mar 31), its time of day kept.
pub fn next_anniversary(anchor: Micros, after: Micros) -> Option<Micros> {
    let anchor_dt = Utc.timestamp_micros(anchor).single()?;
    let after_dt = Utc.timestamp_micros(after).single()?;
    // Start a month before `after` so that the answer is among the next few candidates.
    let months_between = (i64::from(after_dt.year()) - i64::from(anchor_dt.year())) * 12
        + i64::from(after_dt.month0())
        - i64::from(anchor_dt.month0());
    let mut k = (months_between - 1).max(1);
    if anchor > after {
        k = 0;
    }
    loop {
        let candidate = add_months_clamped(anchor_dt, k)?.timestamp_micros();
        if candidate > after {
            return Some(candidate);
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Micros {
        parse_instant(s).unwrap()
    }

    #[test]
    fn anniversaries_clamp_to_month_end_and_keep_time() {
        let anchor = t("2027-01-31T09:30:00Z");
        assert_eq!(
            next_anniversary(anchor, t("2027-01-31T09:30:00Z")),
            Some(t("2027-02-28T09:30:00Z"))
        );
        assert_eq!(
            next_anniversary(anchor, t("2027-02-28T09:30:00Z")),
            Some(t("2027-03-31T09:30:00Z"))
        );
        let leap = t("2028-01-31T00:00:00Z");
        assert_eq!(
            next_anniversary(leap, t("2028-01-31T00:00:00Z")),
            Some(t("2028-02-29T00:00:00Z"))
        );
        let thirtieth = t("2027-12-30T00:00:00Z");
        assert_eq!(
            next_anniversary(thirtieth, t("2028-01-30T00:00:00Z")),
            Some(t("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            next_anniversary(thirtieth, t("2028-02-29T00:00:00Z")),
            Some(t("2028-03-30T00:00:00Z"))
        );
        let twenty_ninth = t("2026-12-29T00:00:00Z");
        assert_eq!(
            next_anniversary(twenty_ninth, t("2027-01-29T00:00:00Z")),
            Some(t("2027-02-28T00:00:00Z"))
        );
        assert_eq!(
            next_anniversary(twenty_ninth, t("2027-02-28T00:00:00Z")),
            Some(t("2027-03-29T00:00:00Z"))
        );
    }

    #[test]
    fn anchor_after_period_end_is_its_own_first_anniversary() {
        assert_eq!(
            next_anniversary(t("2026-12-15T00:00:00Z"), t("2026-12-01T00:00:00Z")),
            Some(t("2026-12-15T00:00:00Z"))
        );
    }

    /// The fast rendering is chrono's, across the years tally handles and at the edges
    /// of days, months, leap years and fractions.
    #[test]
    fn instants_render_as_chrono_does() {
        let chrono = |t: Micros| {
            Utc.timestamp_micros(t)
                .single()
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        };
        let mut t: Micros = -62_135_596_800 * 1_000_000;
        let end: Micros = 253_402_300_799 * 1_000_000;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while t < end {
            for probe in [t, t + 1, t + 999, t + 1000, t + 999_999, t - 1] {
                assert_eq!(format_instant(probe), chrono(probe), "{probe}");
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            t += (state % (40 * 86_400 * 1_000_000)) as i64;
        }
        for edge in [
            "2028-02-29T23:59:59.999999Z",
            "2000-02-29T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "2100-03-01T00:00:00.000001Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.5Z",
        ] {
            let t = parse_instant(edge).unwrap();
            assert_eq!(format_instant(t), chrono(t));
        }
        // Past year 9999 chrono's form is kept.
        let far = 253_402_300_800 * 1_000_000;
        assert_eq!(format_instant(far), chrono(far));
    }

    #[test]
    fn instants_render_without_zero_fractions() {
        assert_eq!(
            format_instant(t("2026-11-03T10:00:00Z")),
            "2026-11-03T10:00:00Z"
        );
        assert_eq!(
            format_instant(t("2026-11-03T10:00:00.250Z")),
            "2026-11-03T10:00:00.250Z"
        );
        assert_eq!(parse_duration_micros("15m"), Some(900 * MICROS_PER_SECOND));
        assert_eq!(parse_duration_micros("900s"), Some(900 * MICROS_PER_SECOND));
        assert_eq!(parse_duration_micros("1h"), Some(3600 * MICROS_PER_SECOND));
        // i64::MAX microseconds is 9223372036854 s and a fraction; a second more saturates.
        assert_eq!(
            parse_duration_micros("9223372036854s"),
            Some(9_223_372_036_854 * MICROS_PER_SECOND)
        );
        assert_eq!(parse_duration_micros("9223372036855s"), Some(i64::MAX));
        assert_eq!(
            parse_duration_micros("9223372036854775807s"),
            Some(i64::MAX)
        );
        // Past what humantime's own numbers hold (u64): too long as well.
        assert_eq!(
            parse_duration_micros("18446744073709551615s"),
            Some(i64::MAX)
        );
        assert_eq!(
            parse_duration_micros("18446744073709551616s"),
            Some(i64::MAX)
        );
        for too_long in [
            // humantime panics on these (u64::MAX seconds, then 10^9 ns carried).
            "18446744073709551615s 1000000000ns",
            "18446744073709551615s 500000000ns 500000000ns",
            "99999999999999999999d",
            "99999999999999999999.5d",
            "1h 99999999999999999999.5d",
        ] {
            assert_eq!(
                parse_duration_micros(too_long),
                Some(i64::MAX),
                "{too_long}"
            );
        }
        // A fraction humantime cannot hold is no duration (not "too long").
        assert_eq!(parse_duration_micros("0.5ns"), None);
        assert_eq!(parse_duration_micros("1.000000000000000000001s"), None);
        assert_eq!(parse_duration_micros("soon"), None);
    }
}
