//! `[limits]`: request limits of the HTTP API.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, require};

/// Request limits of the HTTP API (`[limits]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most values in one telemetry request.
    pub max_values_per_request: usize,
    /// Most entities registered by one request.
    pub max_entities_per_request: usize,
    /// Largest page a list or search may ask for.
    pub max_page_size: i64,
    /// Page size when none is asked for.
    pub default_page_size: i64,
    /// Longest time range of a series or aggregate query, in days.
    pub max_time_range_days: i64,
    /// How far in the future a telemetry `ts` may be (clock skew allowance).
    #[serde(rename = "max_future_skew_s", with = "crate::duration::secs")]
    pub max_future_skew: Duration,
    /// Sustained requests per second per tenant (token bucket refill rate; 429 above).
    pub rate_per_second: f64,
    /// Burst size of the per-tenant token bucket.
    pub rate_burst: f64,
    /// Sustained telemetry values per second per tenant (a telemetry request is charged per
    /// value, besides its one request; 429 above). Per server.
    pub telemetry_values_per_second: f64,
    /// Burst of telemetry values per tenant (at least `max_values_per_request`).
    pub telemetry_values_burst: f64,
    /// How long a looked-up API key is trusted before it is read again (a revocation made on
    /// another server takes effect within this time).
    #[serde(rename = "key_cache_ttl_ms", with = "crate::duration::ms")]
    pub key_cache_ttl: Duration,
    /// How long an entity confirmed as one of a tenant's live entities is trusted by the
    /// telemetry route (0: ask the database on every request). An entity deleted on another
    /// server meanwhile gets 409 (values refused, dead-lettered) instead of 404; deleted on
    /// the same server, 404 at once.
    #[serde(rename = "entity_cache_ttl_ms", with = "crate::duration::ms")]
    pub entity_cache_ttl: Duration,
    /// Longest a request may take before it is answered 503 with `Retry-After` (its database
    /// work is cancelled with it).
    #[serde(rename = "request_timeout_ms", with = "crate::duration::ms")]
    pub request_timeout: Duration,
    /// Browser origins allowed by CORS (e.g. `https://dashboard.example.com`, or `*`); empty
    /// (the default) answers no preflight and adds no CORS header.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_values_per_request: 10_000,
            max_entities_per_request: 1_000,
            max_page_size: 1_000,
            default_page_size: 100,
            max_time_range_days: 31,
            max_future_skew: Duration::from_secs(300),
            rate_per_second: 500.0,
            rate_burst: 1_000.0,
            telemetry_values_per_second: 100_000.0,
            telemetry_values_burst: 200_000.0,
            key_cache_ttl: Duration::from_secs(5),
            entity_cache_ttl: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// Whether `s` may stand in an HTTP header (visible ASCII).
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

impl Limits {
    /// Checks every limit against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            "limits.max_body_bytes",
            self.max_body_bytes >= 1024,
            "at least 1024",
        )?;
        require(
            "limits.max_values_per_request",
            self.max_values_per_request >= 1,
            "at least 1",
        )?;
        require(
            "limits.max_entities_per_request",
            self.max_entities_per_request >= 1,
            "at least 1",
        )?;
        require(
            "limits.max_page_size",
            self.max_page_size >= 1,
            "at least 1",
        )?;
        require(
            "limits.default_page_size",
            (1..=self.max_page_size).contains(&self.default_page_size),
            "between 1 and max_page_size",
        )?;
        require(
            "limits.max_time_range_days",
            self.max_time_range_days >= 1,
            "at least 1",
        )?;
        require(
            "limits.rate_per_second",
            self.rate_per_second > 0.0 && self.rate_per_second.is_finite(),
            "above 0",
        )?;
        require(
            "limits.rate_burst",
            self.rate_burst >= 1.0 && self.rate_burst.is_finite(),
            "at least 1",
        )?;
        require(
            "limits.telemetry_values_per_second",
            self.telemetry_values_per_second > 0.0 && self.telemetry_values_per_second.is_finite(),
            "above 0",
        )?;
        require(
            "limits.telemetry_values_burst",
            self.telemetry_values_burst.is_finite()
                && self.telemetry_values_burst >= self.max_values_per_request as f64,
            "at least max_values_per_request",
        )?;
        require(
            "limits.request_timeout_ms",
            (Duration::from_millis(100)..=Duration::from_secs(3_600))
                .contains(&self.request_timeout),
            "between 100 and 3600000",
        )?;
        require(
            "limits.cors_allowed_origins",
            self.cors_allowed_origins.iter().all(|o| {
                o == "*"
                    || ((o.starts_with("http://") || o.starts_with("https://"))
                        && !o.ends_with('/')
                        && header_safe(o))
            }),
            "`*` or origins like https://dash.example.com (scheme and host, no trailing slash)",
        )
    }
}
