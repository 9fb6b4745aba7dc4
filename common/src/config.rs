//! Serde helpers for configuration values written for people: durations (`2ms`, `7d`) and
//! byte sizes (`512MiB` or a plain number).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a duration such as `2ms`, `10s` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write it like \"2ms\", \"10s\" or \"7d\"")
    })
}

/// Deserializes a duration from text.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Deserializes an optional duration from text (absent key: `None` through `#[serde(default)]`).
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

/// Deserializes a byte size from a number or text such as `64KiB`.
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeText::deserialize(d)? {
        SizeText::Number(n) => Ok(n),
        SizeText::Text(text) => crate::size::parse_size(&text).map_err(serde::de::Error::custom),
    }
}

/// Deserializes an optional byte size.
pub fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

/// Deserializes a byte size that must fit a `usize`.
pub fn size_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = size(d)?;
    usize::try_from(value)
        .map_err(|_| serde::de::Error::custom(format!("size {value} is too large")))
}
