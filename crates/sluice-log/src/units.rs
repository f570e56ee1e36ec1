//! Human-friendly sizes ("1GiB", "512k"), durations ("7d", "500ms") and
//! timestamps ("2026-11-21T10:00:00Z") for configs, flags and output. Owns
//! parsing and printing only; never decides defaults.

/// Parses a byte size: a plain number of bytes, or a number with a suffix
/// (k/KB = 1000, KiB = 1024, likewise M/MiB, G/GiB, T/TiB; case-insensitive).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 1048576, 512KiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let bytes = value * mult as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) || bytes.fract() != 0.0 {
        return Err(format!("{text:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Parses a duration in milliseconds: a plain number is milliseconds (Kafka's
/// `*.ms` convention); otherwise humantime syntax such as `5s`, `7d`, `1h 30m`.
pub fn parse_millis(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_duration(t)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| {
            format!(
                "{text:?} is not a duration ({e}; try 500ms, 5s, 7d or a number of milliseconds)"
            )
        })
}

/// Formats bytes with a binary unit, e.g. `1.5 GiB`.
/// A count with thousands separators: 1234567.8 → "1,234,568".
pub fn format_count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a timestamp flag: milliseconds since the epoch, or an RFC 3339
/// date-time such as `2026-11-21T10:00:00Z`.
pub fn parse_timestamp_ms(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text.trim())
        .map_err(|e| format!("{text:?} is not a timestamp ({e}); use milliseconds since the epoch or 2026-11-21T10:00:00Z"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .map_err(|_| format!("{text:?} is before 1970"))
        })
}

/// Formats a batch time as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5 KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("2MB").unwrap(), 2_000_000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_millis("250").unwrap(), 250);
        assert_eq!(parse_millis("5s").unwrap(), 5000);
        assert_eq!(parse_millis("7d").unwrap(), 7 * 86_400_000);
        assert!(parse_millis("soon").is_err());
    }
}
