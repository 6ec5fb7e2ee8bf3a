//! `[lifecycle]`: how long each kind of data is kept, and the default quotas of a tenant.
//! Every value is a default: a tenant's own setting (admin API, `atlas tenant limits`) wins.

use serde::{Deserialize, Serialize};

use crate::{ConfigError, require};

/// Retention of rollups and dead letters, and tenant quotas (`[lifecycle]` in `atlas.toml`).
/// Raw values keep `maintenance.retention_days`. 0 means "keep for ever" / "no limit".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lifecycle {
    /// Days 1-minute rollups are kept.
    pub rollup_1m_days: u32,
    /// Days 1-hour rollups are kept.
    pub rollup_1h_days: u32,
    /// Days 1-day rollups are kept.
    pub rollup_1d_days: u32,
    /// Days dead letters are kept.
    pub dead_letter_days: u32,
    /// Most live entities a tenant may have.
    pub max_entities: u64,
    /// Most values a tenant may write per UTC day.
    pub max_values_per_day: u64,
    /// Most values a tenant may have stored (as of the last statistics refresh).
    pub max_stored_values: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            rollup_1m_days: 30,
            rollup_1h_days: 400,
            rollup_1d_days: 0,
            dead_letter_days: 30,
            max_entities: 0,
            max_values_per_day: 0,
            max_stored_values: 0,
        }
    }
}

/// The longest retention accepted, in days (100 years).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl Lifecycle {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("lifecycle.rollup_1m_days", self.rollup_1m_days),
            ("lifecycle.rollup_1h_days", self.rollup_1h_days),
            ("lifecycle.rollup_1d_days", self.rollup_1d_days),
            ("lifecycle.dead_letter_days", self.dead_letter_days),
        ] {
            require(field, v <= MAX_RETENTION_DAYS, "between 0 and 36500")?;
        }
        for (field, v) in [
            ("lifecycle.max_entities", self.max_entities),
            ("lifecycle.max_values_per_day", self.max_values_per_day),
            ("lifecycle.max_stored_values", self.max_stored_values),
        ] {
            require(
                field,
                i64::try_from(v).is_ok(),
                "at most 9223372036854775807",
            )?;
        }
        Ok(())
    }
}
