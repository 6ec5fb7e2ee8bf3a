//! `[ingest]`: the ingest pipeline.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, require};

/// The ingest pipeline (`[ingest]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    /// A batch is written when it holds this many values…
    pub batch_rows: NonZeroUsize,
    /// …or this long after its first request arrived (the seed's 100 ms).
    #[serde(rename = "batch_interval_ms", with = "crate::duration::ms")]
    pub batch_interval: Duration,
    /// Values that may wait in memory; beyond that requests get 503.
    pub queue_rows: usize,
    /// Batches written concurrently, each on its own connection.
    pub writers: NonZeroUsize,
    /// A durable batch that finds no primary (failover, restart) is retried this long
    /// before its requests get 503; 0 answers 503 at once.
    #[serde(rename = "retry_unavailable_ms", with = "crate::duration::ms")]
    pub retry_unavailable: Duration,
    /// A batch's commit that takes longer is abandoned as of unknown outcome (its
    /// connection is dropped) and retried: a primary cut off from its synchronous standby
    /// never confirms it.
    #[serde(rename = "commit_timeout_ms", with = "crate::duration::ms")]
    pub commit_timeout: Duration,
}

impl Default for Ingest {
    fn default() -> Self {
        Self {
            batch_rows: NonZeroUsize::new(5_000).unwrap_or(NonZeroUsize::MIN),
            batch_interval: Duration::from_millis(100),
            queue_rows: 200_000,
            writers: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
            retry_unavailable: Duration::from_secs(15),
            commit_timeout: Duration::from_secs(10),
        }
    }
}

impl Ingest {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            "ingest.batch_interval_ms",
            (Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.batch_interval),
            "between 1 and 10000",
        )?;
        require(
            "ingest.queue_rows",
            self.queue_rows >= self.batch_rows.get(),
            "at least batch_rows",
        )?;
        require(
            "ingest.writers",
            self.writers.get() <= 64,
            "between 1 and 64",
        )?;
        require(
            "ingest.retry_unavailable_ms",
            self.retry_unavailable <= Duration::from_secs(120),
            "between 0 and 120000",
        )?;
        require(
            "ingest.commit_timeout_ms",
            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.commit_timeout),
            "between 100 and 600000",
        )
    }
}
