//! BuildKit's value formats: disk sizes (`DiskSpace`) and durations.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A disk size: a byte count, or a percentage of the state directory's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSpace {
    Bytes(u64),
    Percent(u8),
}

impl DiskSpace {
    /// Parses BuildKit's formats: a bare integer is bytes, `"N%"` is a percentage, anything else
    /// uses docker/go-units `RAMInBytes` rules (binary multipliers: `"512MB"` is 512 MiB).
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim().trim_matches(|c| c == '"' || c == '\'');
        if let Some(pct) = s.strip_suffix('%') {
            let n: u8 = pct
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage {input:?}: expected 0% to 100%"))?;
            if n > 100 {
                return Err(format!("invalid percentage {input:?}: expected 0% to 100%"));
            }
            return Ok(DiskSpace::Percent(n));
        }
        ram_in_bytes(s)
            .map(DiskSpace::Bytes)
            .ok_or_else(|| format!("invalid disk size {input:?}: expected bytes, a size such as \"512MB\" or a percentage such as \"30%\""))
    }

    /// Resolves to bytes given the total size of the filesystem holding the state directory.
    /// A percentage follows BuildKit: round up to whole GiB, then count in decimal gigabytes.
    pub fn to_bytes(self, total_disk_bytes: Option<u64>) -> u64 {
        match self {
            DiskSpace::Bytes(b) => b,
            DiskSpace::Percent(0) => 0,
            DiskSpace::Percent(p) => match total_disk_bytes {
                Some(total) => {
                    let gib = u128::from(total) * u128::from(p) / 100 / (1 << 30);
                    ((gib + 1) * 1_000_000_000).min(u128::from(u64::MAX)) as u64
                }
                None => 2_000_000_000,
            },
        }
    }
}

impl fmt::Display for DiskSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskSpace::Bytes(b) => write!(f, "{b} bytes"),
            DiskSpace::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// docker/go-units `RAMInBytes`: `<number>[ ]<unit>` with k/m/g/t/p, optional `i` and `b`,
/// all binary multipliers. Returns `None` for anything else.
fn ram_in_bytes(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return None;
    }
    Some(bytes as u64)
}

impl<'de> Deserialize<'de> for DiskSpace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DiskSpace;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a disk size: bytes, a string such as \"512MB\", or a percentage such as \"30%\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DiskSpace, E> {
                u64::try_from(v)
                    .map(DiskSpace::Bytes)
                    .map_err(|_| E::custom(format!("invalid disk size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DiskSpace, E> {
                Ok(DiskSpace::Bytes(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DiskSpace, E> {
                DiskSpace::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: a Go duration string (`"48h"`, `"1h30m"`, `"90s"`) or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub std::time::Duration);

impl ConfigDuration {
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(ConfigDuration(std::time::Duration::from_secs(secs)));
        }
        go_duration(s).map(ConfigDuration).ok_or_else(|| {
            format!("invalid duration {input:?}: expected a duration such as \"48h\" or \"1h30m\", or a number of seconds")
        })
    }
}

/// Go's `time.ParseDuration` for non-negative values: a sequence of `<decimal><unit>` pairs.
fn go_duration(s: &str) -> Option<std::time::Duration> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total_nanos += value * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return None;
    }
    Some(std::time::Duration::from_nanos(total_nanos as u64))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"48h\", or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigDuration, E> {
                u64::try_from(v)
                    .map(|s| ConfigDuration(std::time::Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigDuration, E> {
                Ok(ConfigDuration(std::time::Duration::from_secs(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                ConfigDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn disk_space_formats() {
        assert_eq!(DiskSpace::parse("1024"), Ok(DiskSpace::Bytes(1024)));
        assert_eq!(DiskSpace::parse("512MB"), Ok(DiskSpace::Bytes(512 << 20)));
        assert_eq!(DiskSpace::parse("512mb"), Ok(DiskSpace::Bytes(512 << 20)));
        assert_eq!(DiskSpace::parse("10GiB"), Ok(DiskSpace::Bytes(10 << 30)));
        assert_eq!(DiskSpace::parse("1.5g"), Ok(DiskSpace::Bytes(3 << 29)));
        assert_eq!(DiskSpace::parse("2 KB"), Ok(DiskSpace::Bytes(2048)));
        assert_eq!(DiskSpace::parse("\"30%\""), Ok(DiskSpace::Percent(30)));
        assert!(DiskSpace::parse("101%").is_err());
        assert!(DiskSpace::parse("ten").is_err());
        assert!(DiskSpace::parse("10XB").is_err());
        assert!(DiskSpace::parse("").is_err());
    }

    #[test]
    fn percentage_resolves_like_buildkit() {
        // 10% of 100 GiB is 10 GiB, rounded up to 11 whole GiB, counted as decimal GB.
        let total = 100u64 << 30;
        assert_eq!(DiskSpace::Percent(10).to_bytes(Some(total)), 11_000_000_000);
        assert_eq!(DiskSpace::Percent(10).to_bytes(None), 2_000_000_000);
        assert_eq!(DiskSpace::Bytes(7).to_bytes(Some(total)), 7);
        assert_eq!(DiskSpace::Percent(0).to_bytes(Some(total)), 0);
    }

    #[test]
    fn durations() {
        let p = |s| ConfigDuration::parse(s).map(|d| d.0);
        assert_eq!(p("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(p("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(p("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        assert!(p("2 days").is_err());
        assert!(p("h").is_err());
        assert!(p("-1h").is_err());
    }
}
