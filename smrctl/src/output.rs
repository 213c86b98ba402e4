//! Output formats shared by the CLI commands: aligned tables, JSON, YAML.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Renders rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

pub fn yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(value)?)
}

/// "3m", "2h", "5d": a short age for tables.
pub fn age(since_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(since_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// A moment in the future as `2027-11-30T00:55Z (in 364d)`, or `... (expired 3m ago)`.
pub fn expiry(at_ms: u64, now_ms: u64) -> String {
    let when = if at_ms > now_ms {
        format!("in {}", age(now_ms, at_ms))
    } else {
        format!("expired {} ago", age(at_ms, now_ms))
    };
    format!("{} ({when})", utc_minute(at_ms))
}

/// `YYYY-MM-DDTHH:MMZ` (UTC) of milliseconds since the epoch (civil-from-days, H. Hinnant).
fn utc_minute(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let (hour, minute) = ((secs % 86400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}Z")
}

/// "512 B", "1.5 KiB", "3.2 MiB", "1.0 GiB": a byte count for tables.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alpha".into()],
                vec!["10".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  NAME\n1   alpha\n10  b\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(0, 5_000), "5s");
        assert_eq!(age(0, 600_000), "10m");
        assert_eq!(age(0, 10_800_000), "3h");
        assert_eq!(age(0, 3 * 86_400_000), "3d");
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn expiry_dates() {
        // 2026-11-30T00:55:33Z and one year later; a leap day.
        let now = 1_796_000_133_000;
        assert_eq!(
            expiry(now + 365 * 86_400_000, now),
            "2027-11-30T00:55Z (in 365d)"
        );
        assert_eq!(
            expiry(now - 180_000, now),
            "2026-11-30T00:52Z (expired 3m ago)"
        );
        assert_eq!(utc_minute(951_782_400_000), "2000-02-29T00:00Z");
        assert_eq!(utc_minute(0), "1970-01-01T00:00Z");
    }
}
