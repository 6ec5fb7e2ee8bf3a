//! `Duration` settings written as integers of milliseconds or (fractional) seconds, as the keys'
//! suffixes say (`batch_interval_ms = 100`, `alert_staged_age_s = 60`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Whole milliseconds.
pub mod ms {
    use super::*;

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }

    /// Writes milliseconds.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Whole seconds.
pub mod secs {
    use super::*;

    /// Reads seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }

    /// Writes seconds.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }
}

/// Seconds with a fraction (an integer is accepted too).
pub mod secs_f64 {
    use super::*;

    /// Reads seconds; negative, infinite or NaN values are refused.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = f64::deserialize(d)?;
        Duration::try_from_secs_f64(s).map_err(|_| {
            serde::de::Error::custom(format!("{s} is not a number of seconds of at least 0"))
        })
    }

    /// Writes seconds.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.as_secs_f64())
    }
}

/// A duration in whole milliseconds as an `i64` (for arithmetic with database times).
pub fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
