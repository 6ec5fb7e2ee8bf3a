//! `[cdc]`: logical CDC and the analytics store.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, require};

/// Logical CDC and the analytics store (`[cdc]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cdc {
    /// The analytics store's database, on the primary's cluster; the server's analytics reads
    /// and the sink use the primary's URLs with this database name. Empty: no analytics store.
    pub analytics_database: String,
    /// The logical replication slot `atlas cdc` reads (created when missing).
    pub slot_name: String,
    /// A batch goes to the sinks after this many change events…
    pub batch_events: NonZeroUsize,
    /// …or this long after the previous one.
    #[serde(rename = "batch_interval_ms", with = "crate::duration::ms")]
    pub batch_interval: Duration,
    /// A heartbeat message is written to the WAL this often, so the slot advances and the lag
    /// stays measured on an idle system.
    #[serde(rename = "heartbeat_interval_ms", with = "crate::duration::ms")]
    pub heartbeat_interval: Duration,
    /// Directory of the NDJSON sink (one file per table and hour); empty: no NDJSON sink.
    pub ndjson_dir: String,
    /// Reads with consistency `analytics` go to the primary when the store is further behind
    /// than this: the seed's 5-minute budget.
    #[serde(rename = "lag_budget_ms", with = "crate::duration::ms")]
    pub lag_budget: Duration,
    /// Days of change history (`cdc.change_events`) the analytics store keeps; 0 keeps all.
    pub history_retention_days: u32,
    /// Time between prunes of the analytics store (history retention, and time-series rows
    /// the primary's retention dropped).
    #[serde(rename = "prune_interval_s", with = "crate::duration::secs")]
    pub prune_interval: Duration,
}

impl Default for Cdc {
    fn default() -> Self {
        Self {
            analytics_database: "atlas_analytics".into(),
            slot_name: "atlas_cdc".into(),
            batch_events: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            batch_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            ndjson_dir: String::new(),
            lag_budget: Duration::from_secs(300),
            history_retention_days: 0,
            prune_interval: Duration::from_secs(300),
        }
    }
}

impl Cdc {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            "cdc.slot_name",
            !self.slot_name.is_empty()
                && self.slot_name.len() <= 63
                && self
                    .slot_name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "1 to 63 characters of [a-z0-9_]",
        )?;
        require(
            "cdc.analytics_database",
            self.analytics_database.len() <= 63,
            "at most 63 bytes",
        )?;
        require(
            "cdc.batch_events",
            self.batch_events.get() <= 1_000_000,
            "between 1 and 1000000",
        )?;
        require(
            "cdc.batch_interval_ms",
            (Duration::from_millis(10)..=Duration::from_secs(600)).contains(&self.batch_interval),
            "between 10 and 600000",
        )?;
        require(
            "cdc.heartbeat_interval_ms",
            (Duration::from_millis(100)..=Duration::from_secs(600))
                .contains(&self.heartbeat_interval),
            "between 100 and 600000",
        )?;
        require(
            "cdc.lag_budget_ms",
            self.lag_budget >= Duration::from_millis(1),
            "at least 1",
        )?;
        require(
            "cdc.prune_interval_s",
            (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.prune_interval),
            "between 1 and 86400",
        )?;
        require(
            "cdc.history_retention_days",
            self.history_retention_days <= 36_500,
            "between 0 and 36500",
        )
    }
}
