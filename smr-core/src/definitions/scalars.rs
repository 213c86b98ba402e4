//! Loose scalars that real simplecontainer files use: durations written as strings
//! (`"60s"`, `"5m"`, `"1h30m"`), agents named by id or by name, memory sizes, and the
//! `(( ... ))` server-side templates that may stand in for any string.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// True when `s` contains a `(( ... ))` server-side template; such values are resolved
/// later, so validation leaves them alone.
pub fn is_template(s: &str) -> bool {
    match s.find("((") {
        Some(start) => s[start + 2..].contains("))"),
        None => false,
    }
}

/// The `KIND/GROUP/NAME` of every `(( lookup "KIND/GROUP/NAME:KEY" ))` in `s` that names a
/// valid key (others fail when rendered, not here).
pub fn template_lookups(s: &str) -> Vec<crate::definitions::ObjectKey> {
    let mut keys = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("((") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("))") else { break };
        let head = after[..end].split('|').next().unwrap_or_default().trim();
        if let Some(arg) = head.strip_prefix("lookup")
            && let Some((object, _)) = arg.trim().trim_matches('"').rsplit_once(':')
            && let Ok(key) = object.parse()
        {
            keys.push(key);
        }
        rest = &after[end + 2..];
    }
    keys
}

/// Why a scalar of a definition (a duration, a memory size, a port) does not parse. The messages
/// are the ones users see in `invalid_definition` answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScalarError {
    #[error("empty duration")]
    EmptyDuration,
    #[error("invalid duration {text:?}: expected a number before {rest:?}")]
    NumberExpected { text: String, rest: String },
    #[error("invalid duration {text:?}: bad number {num:?}")]
    BadNumber { text: String, num: String },
    #[error("invalid duration {text:?}: missing unit after {num} (use ms, s, m, h or d)")]
    MissingUnit { text: String, num: String },
    #[error("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    DurationUnit { text: String, unit: String },
    #[error("invalid duration {text:?}: out of range")]
    DurationRange { text: String },
    #[error("invalid memory size {text:?}")]
    Memory { text: String },
    #[error("invalid memory size {text:?}: unknown unit {unit:?} (use Ki, Mi, Gi, k, m, g)")]
    MemoryUnit { text: String, unit: String },
    #[error("invalid memory size {text:?}: too large")]
    MemoryRange { text: String },
    #[error("unknown protocol {0:?} (use tcp or udp)")]
    Protocol(String),
    #[error("port {0} is out of range 1..=65535")]
    PortRange(u32),
    #[error("{0:?} is not a port number")]
    Port(String),
    #[error("{0:?} is not an IP address")]
    Address(String),
}

/// Parses `"60s"`, `"5m"`, `"1h30m"`, `"250ms"`, `"2d"`, `"1.5s"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ScalarError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(ScalarError::EmptyDuration);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(ScalarError::NumberExpected {
                text: text.into(),
                rest: rest.into(),
            });
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| ScalarError::BadNumber {
            text: text.into(),
            num: num.into(),
        })?;
        let unit_secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => {
                return Err(ScalarError::MissingUnit {
                    text: text.into(),
                    num: num.into(),
                });
            }
            other => {
                return Err(ScalarError::DurationUnit {
                    text: text.into(),
                    unit: other.into(),
                });
            }
        };
        let secs = value * unit_secs;
        // 100 years is plenty and keeps the conversion finite.
        if !secs.is_finite() || !(0.0..=3.2e9).contains(&secs) {
            return Err(ScalarError::DurationRange { text: text.into() });
        }
        total = total
            .checked_add(Duration::from_secs_f64(secs))
            .ok_or_else(|| ScalarError::DurationRange { text: text.into() })?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration in the shortest unit form `parse_duration` reads back: `1h30m`, `5s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}us", d.as_micros())
        };
    }
    if !d.as_nanos().is_multiple_of(1_000_000) {
        return format!("{}us", d.as_micros());
    }
    let mut out = String::new();
    for (unit, len) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= len {
            out.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    out
}

/// A duration written as a string (`"60s"`) or a number of seconds; written back as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    pub fn from_secs(secs: u64) -> Self {
        DurationValue(Duration::from_secs(secs))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for DurationValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"1h30m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v)
                    .map(DurationValue::from_secs)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                parse_duration(v).map(DurationValue).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An agent named in `spread.agents`: a node id (join order, from 1) or a node name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentRef {
    Id(u64),
    Name(String),
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentRef::Id(id) => write!(f, "{id}"),
            AgentRef::Name(n) => f.write_str(n),
        }
    }
}

impl Serialize for AgentRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AgentRef::Id(id) => s.serialize_u64(*id),
            AgentRef::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for AgentRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AgentRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an agent id (number) or agent name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AgentRef, E> {
                Ok(AgentRef::Id(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AgentRef, E> {
                u64::try_from(v)
                    .map(AgentRef::Id)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AgentRef, E> {
                Ok(match v.parse::<u64>() {
                    Ok(id) => AgentRef::Id(id),
                    Err(_) => AgentRef::Name(v.to_string()),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a memory size: `"512Mi"`, `"1Gi"`, `"256m"`, `"1G"`, `"1048576"` (bytes).
pub fn parse_memory(text: &str) -> Result<u64, ScalarError> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ScalarError::Memory { text: text.into() })?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(ScalarError::MemoryUnit {
                text: text.into(),
                unit: unit.into(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ScalarError::MemoryRange { text: text.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for s in ["1h30m", "5s", "250ms", "1s500ms", "2h", "3us"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn templates_and_memory() {
        assert!(is_template("(( .port ))"));
        assert!(is_template(
            "x (( lookup \"secret/g/n:k\" | base64decode )) y"
        ));
        assert!(!is_template("(( unterminated"));
        let keys: Vec<String> = template_lookups(
            "a (( lookup \"secret/g/n:k\" | base64decode )) (( .x )) (( lookup configuration/g/c:v ))",
        )
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(keys, ["secret/g/n", "configuration/g/c"]);
        assert!(template_lookups("(( lookup \"nonsense\" )) (( lookup \"x/y:z\" ))").is_empty());
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("1Q").is_err());
    }
}
