//! Human durations in specs and flags: `300`, `300s`, `5m`, `2h`, `1d`.

use std::time::Duration;

/// Parses `N`, `Ns`, `Nm`, `Nh` or `Nd` (N a whole number). Returns a message on error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    if digits.is_empty() {
        return Err(format!("`{s}` is not a duration (expected e.g. 300s, 5m, 1h)"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}` has unknown unit `{unit}` (use s, m, h or d)")),
    };
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("`{s}` is too large"))
}

/// Formats whole seconds the way specs write them (`5m`, `90s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s != 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s != 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
