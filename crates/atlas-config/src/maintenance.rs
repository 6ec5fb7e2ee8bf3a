//! `[maintenance]`: the maintainer and its alerts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, require};

/// Time-series partition width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionInterval {
    /// One partition per month (the seed's default).
    Month,
    /// One partition per day (for high volume; applies from the newest existing partition on).
    Day,
}

/// The maintainer (`[maintenance]` in `atlas.toml`): one leader across servers does the work
/// the seed gives pg_partman and pg_cron, and raises the alerts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maintenance {
    /// Run the maintainer (and heartbeat) inside `atlas serve`.
    pub enabled: bool,
    /// Time between maintenance rounds (partitions, retention, BRIN, alerts).
    #[serde(rename = "interval_s", with = "crate::duration::secs")]
    pub interval: Duration,
    /// Monthly or daily time-series partitions.
    pub partition_interval: PartitionInterval,
    /// Keep partitions premade this many days ahead (default 62: two months).
    pub premake_days: u32,
    /// Drop time-series partitions whose data is all older than this many days (0: keep all).
    pub retention_days: u32,
    /// Time between refreshes of the attribute statistics view.
    #[serde(rename = "stats_refresh_s", with = "crate::duration::secs")]
    pub stats_refresh: Duration,
    /// Longest wait for a partition's locks when detaching it.
    #[serde(rename = "lock_timeout_ms", with = "crate::duration::ms")]
    pub lock_timeout: Duration,
    /// Time between replication heartbeats (well under the 3 s lag budget).
    #[serde(rename = "heartbeat_interval_ms", with = "crate::duration::ms")]
    pub heartbeat_interval: Duration,
    /// Alert: staged rows waiting.
    pub alert_backlog_rows: i64,
    /// Alert: how long the oldest staged row has waited.
    #[serde(rename = "alert_staged_age_s", with = "crate::duration::secs_f64")]
    pub alert_staged_age: Duration,
    /// Alert: replica lag.
    #[serde(rename = "alert_replica_lag_s", with = "crate::duration::secs_f64")]
    pub alert_replica_lag: Duration,
    /// Alert: WAL bytes a replication slot retains.
    pub alert_slot_retained_bytes: i64,
    /// Alert: how long a replication slot may stay without its consumer (an inactive slot
    /// holds back vacuum and retains WAL until it is lost).
    #[serde(rename = "alert_slot_inactive_s", with = "crate::duration::secs_f64")]
    pub alert_slot_inactive: Duration,
    /// Alert: transaction-id age of the database.
    pub alert_xid_age: i64,
    /// Alert: Redis hit rate below this fraction.
    pub alert_cache_hit_rate: f64,
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            partition_interval: PartitionInterval::Month,
            premake_days: 62,
            retention_days: 0,
            stats_refresh: Duration::from_secs(3_600),
            lock_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(1),
            alert_backlog_rows: 1_000_000,
            alert_staged_age: Duration::from_secs(60),
            alert_replica_lag: Duration::from_secs(5),
            alert_slot_retained_bytes: 1 << 30,
            alert_slot_inactive: Duration::from_secs(300),
            alert_xid_age: 500_000_000,
            alert_cache_hit_rate: 0.9,
        }
    }
}

impl Maintenance {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            "maintenance.interval_s",
            (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.interval),
            "between 1 and 86400",
        )?;
        require(
            "maintenance.premake_days",
            (1..=3_650).contains(&self.premake_days),
            "between 1 and 3650",
        )?;
        require(
            "maintenance.stats_refresh_s",
            self.stats_refresh >= Duration::from_secs(1),
            "at least 1",
        )?;
        require(
            "maintenance.lock_timeout_ms",
            (Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.lock_timeout),
            "between 1 and 60000",
        )?;
        require(
            "maintenance.heartbeat_interval_ms",
            (Duration::from_millis(50)..=Duration::from_secs(60))
                .contains(&self.heartbeat_interval),
            "between 50 and 60000",
        )?;
        require(
            "maintenance.alert_cache_hit_rate",
            (0.0..=1.0).contains(&self.alert_cache_hit_rate),
            "between 0 and 1",
        )?;
        require(
            "maintenance.alert_slot_inactive_s",
            self.alert_slot_inactive <= Duration::from_secs(31_536_000),
            "between 0 and 31536000",
        )
    }
}
