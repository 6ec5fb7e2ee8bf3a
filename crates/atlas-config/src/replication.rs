//! `[replication]`: read routing to replicas.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, require};

/// The consistency of reads that name none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// The primary.
    Strong,
    /// A replica within the lag budget, else the primary.
    Eventual,
    /// The analytics store for time-series reads (within its lag budget), else like eventual.
    Analytics,
}

/// Read routing (`[replication]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// Consistency of reads that do not name one.
    pub default_read_consistency: ReadConsistency,
    /// A replica's circuit opens at this heartbeat lag…
    #[serde(rename = "breaker_open_ms", with = "crate::duration::ms")]
    pub breaker_open: Duration,
    /// …and closes again only below this one: the eventual-read budget.
    #[serde(rename = "breaker_close_ms", with = "crate::duration::ms")]
    pub breaker_close: Duration,
    /// How often replica lag is measured.
    #[serde(rename = "lag_check_interval_ms", with = "crate::duration::ms")]
    pub lag_check_interval: Duration,
    /// Patroni REST API URLs of the cluster's members (any one that answers is asked), for
    /// `atlas status`'s view of the cluster: members, synchronous standby, last failover.
    pub patroni_urls: Vec<String>,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            default_read_consistency: ReadConsistency::Strong,
            breaker_open: Duration::from_secs(5),
            breaker_close: Duration::from_secs(3),
            lag_check_interval: Duration::from_secs(1),
            patroni_urls: Vec::new(),
        }
    }
}

impl Replication {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            "replication.breaker_close_ms",
            !self.breaker_close.is_zero() && self.breaker_close <= self.breaker_open,
            "above 0 and at most breaker_open_ms",
        )?;
        require(
            "replication.lag_check_interval_ms",
            (Duration::from_millis(50)..=Duration::from_secs(60))
                .contains(&self.lag_check_interval),
            "between 50 and 60000",
        )?;
        for url in &self.patroni_urls {
            require(
                "replication.patroni_urls",
                url.starts_with("http://") || url.starts_with("https://"),
                "a list of http(s):// URLs",
            )?;
        }
        Ok(())
    }
}
