//! Small value types for the config: byte sizes ("64MB").

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A size in bytes, written as an integer or a string with a unit:
/// `65536`, `"64kB"`, `"16MB"`, `"1GB"` (powers of 1024, as PostgreSQL does).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1 << 10,
            "mb" | "m" => 1 << 20,
            "gb" | "g" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}: write a number of bytes or e.g. \"64MB\""
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("65536"), Some(ByteSize(65536)));
        assert_eq!(ByteSize::parse("64kB"), Some(ByteSize(64 << 10)));
        assert_eq!(ByteSize::parse("16 MB"), Some(ByteSize(16 << 20)));
        assert_eq!(ByteSize::parse("1GB"), Some(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("1TB"), None);
        assert_eq!(ByteSize::parse("MB"), None);
        assert_eq!(ByteSize::parse("99999999999999999999GB"), None);
    }
}
