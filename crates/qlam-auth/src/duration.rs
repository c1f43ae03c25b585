//! Durations as users write them: `90s`, `15m`, `2h`, `1d`, or plain seconds.

use std::time::Duration;

/// Parse `90s`, `15m`, `2h`, `1d`, `1w` or plain seconds (`300`). Combined forms such as
/// `1h30m` are accepted too.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut saw_unit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => {
                return Err(format!(
                    "invalid duration {input:?}: use e.g. 90s, 15m, 2h, 1d or plain seconds"
                ));
            }
        };
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration {input:?}: a number must come before each unit")
        })?;
        total = total
            .checked_add(
                n.checked_mul(mult)
                    .ok_or_else(|| format!("duration {input:?} is too large"))?,
            )
            .ok_or_else(|| format!("duration {input:?} is too large"))?;
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        return Err(format!(
            "invalid duration {input:?}: end each number with a unit (s, m, h, d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Render a duration compactly for humans: `1d 2h`, `15m 3s`, `42s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "5x", "1h30", "-5s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn human_readable() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(903)), "15m 3s");
        assert_eq!(human(Duration::from_secs(90_000)), "1d 1h");
    }
}
