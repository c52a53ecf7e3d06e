//! Durations on the command line: `500ms`, `10s`, `2m`, `1h`, `1.5s`,
//! `250us`, and sums such as `1m30s` (spaces between parts are allowed).
//!
//! - A number without a unit means seconds, as in systemd (`10` = `10s`,
//!   `1m30` = `1m30s`).
//! - Fractions are exact to the nanosecond (no floating point).
//! - Negative, empty and absurdly large (over ~584 years) values are errors.
//! - `human` prints the shortest form that `parse` reads back exactly.

use std::time::Duration;

const UNITS: &str = "use ms, s, m or h";
const EXAMPLES: &str = "e.g. 10s, 500ms, 1m30s";

/// Parse a duration such as `1m30s` or `1.5s`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {s:?}: {why}");
    let text = s.trim();
    if text.is_empty() {
        return Err(bad(format!("empty ({EXAMPLES})")));
    }
    if text.starts_with('-') {
        return Err(bad("negative (durations are 0 or more)".into()));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() {
            return Err(bad(format!("expected a number at {rest:?} ({EXAMPLES})")));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "" | "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" => 1_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(bad(format!("unknown unit {other:?} ({UNITS})"))),
        };
        let nanos = number_nanos(num, nanos_per_unit).map_err(bad)?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| bad("too large".into()))?;
        rest = after.trim_start();
    }
    if total > u128::from(u64::MAX) {
        return Err(bad("too large (the limit is about 584 years)".into()));
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// A short form that `parse` reads back: `0s`, `250ms`, `1.5s`, `2m`, `1h2m3.5s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 {
        return match nanos {
            0 => "0s".into(),
            n if n >= 1_000_000 => decimal(u64::from(n / 1_000_000), n % 1_000_000, 6, "ms"),
            n if n >= 1_000 => decimal(u64::from(n / 1_000), n % 1_000, 3, "us"),
            n => decimal(0, n, 3, "us"),
        };
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || nanos > 0 {
        out.push_str(&decimal(s, nanos, 9, "s"));
    }
    out
}

/// `whole.frac` with `frac` given in `digits` decimal places, zeros trimmed.
fn decimal(whole: u64, frac: u32, digits: usize, unit: &str) -> String {
    if frac == 0 {
        return format!("{whole}{unit}");
    }
    let frac = format!("{frac:0digits$}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

/// `num` (digits with at most one `.`) times `per_unit` nanoseconds,
/// truncated to whole nanoseconds.
fn number_nanos(num: &str, per_unit: u128) -> Result<u128, String> {
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') {
        return Err(format!("{num:?} is not a number ({EXAMPLES})"));
    }
    if whole.is_empty() && frac.is_empty() {
        return Err(format!("\".\" is not a number ({EXAMPLES})"));
    }
    let too_large = || "too large (the limit is about 584 years)".to_string();
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        // 30 digits already overflow u64 nanoseconds in any unit.
        if whole.trim_start_matches('0').len() > 30 {
            return Err(too_large());
        }
        whole.parse().map_err(|_| too_large())?
    };
    // Digits past nanosecond precision (for the smallest unit) cannot matter.
    let frac = &frac[..frac.len().min(18)];
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    whole
        .checked_mul(per_unit)
        .and_then(|w| w.checked_add(frac_value * per_unit / scale))
        .ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good() {
        let ms = Duration::from_millis;
        let table = [
            ("500ms", ms(500)),
            ("10s", ms(10_000)),
            ("10", ms(10_000)),
            ("0", ms(0)),
            ("0s", ms(0)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1.5s", ms(1_500)),
            (".5s", ms(500)),
            ("1.5", ms(1_500)),
            ("250us", Duration::from_micros(250)),
            ("0.001us", Duration::from_nanos(1)),
            ("1.0000000009s", Duration::from_nanos(1_000_000_000)),
            ("1m30s", ms(90_000)),
            ("1m30", ms(90_000)),
            ("1m 30s", ms(90_000)),
            (" 5s ", ms(5_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("1.5m", ms(90_000)),
            ("0.25h", ms(900_000)),
        ];
        for (input, want) in table {
            assert_eq!(parse(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn bad() {
        let table = [
            (
                "10x",
                "invalid duration \"10x\": unknown unit \"x\" (use ms, s, m or h)",
            ),
            ("", "invalid duration \"\": empty (e.g. 10s, 500ms, 1m30s)"),
            (
                "  ",
                "invalid duration \"  \": empty (e.g. 10s, 500ms, 1m30s)",
            ),
            (
                "-5s",
                "invalid duration \"-5s\": negative (durations are 0 or more)",
            ),
            (
                "s",
                "invalid duration \"s\": expected a number at \"s\" (e.g. 10s, 500ms, 1m30s)",
            ),
            (
                "1s-2s",
                "invalid duration \"1s-2s\": unknown unit \"s-\" (use ms, s, m or h)",
            ),
            (
                "1.2.3s",
                "invalid duration \"1.2.3s\": \"1.2.3\" is not a number (e.g. 10s, 500ms, 1m30s)",
            ),
            (
                ".s",
                "invalid duration \".s\": \".\" is not a number (e.g. 10s, 500ms, 1m30s)",
            ),
            (
                "10 sec",
                "invalid duration \"10 sec\": expected a number at \"sec\" (e.g. 10s, 500ms, 1m30s)",
            ),
            (
                "10min",
                "invalid duration \"10min\": unknown unit \"min\" (use ms, s, m or h)",
            ),
            (
                "99999999999999999999999h",
                "invalid duration \"99999999999999999999999h\": too large (the limit is about 584 years)",
            ),
            (
                "600000000000s",
                "invalid duration \"600000000000s\": too large (the limit is about 584 years)",
            ),
        ];
        for (input, want) in table {
            assert_eq!(parse(input), Err(want.to_string()), "{input:?}");
        }
    }

    #[test]
    fn human_forms() {
        let table = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_millis(3_723_500), "1h2m3.5s"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_micros(1_500), "1.5ms"),
            (Duration::from_nanos(1), "0.001us"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
        ];
        for (d, want) in table {
            assert_eq!(human(d), want, "{d:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_duration_like_text(s in "[0-9.hmsu -]{0,40}") {
            let _ = parse(&s);
        }

        #[test]
        fn human_round_trips(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse(&human(d)), Ok(d), "{}", human(d));
        }
    }
}
