//! Who is calling: the operator (admin token) or a tenant (API key). Tenant keys are looked up
//! by their prefix, compared by hash in constant time, cached briefly in process, and charged
//! against the tenant's token bucket.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use subtle::ConstantTimeEq;

use atlas_store::TenantId;
use atlas_store::admin::{KeyRecord, hash_key, key_prefix};

use crate::AppState;
use crate::error::ApiError;
use crate::ttl::TtlMap;

/// Beyond this many cached lookups the cache is emptied: bounded memory under a flood of
/// made-up keys.
const MAX_CACHED_KEYS: usize = 100_000;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller presented the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.inner.admin_token_hash else {
            return Err(ApiError::Unauthorized(
                "the admin API is disabled: no ATLAS_ADMIN_TOKEN is configured".into(),
            ));
        };
        let presented =
            bearer(parts).ok_or_else(|| ApiError::Unauthorized("admin token required".into()))?;
        // Compare digests: fixed length, constant time, nothing learned from timing.
        if bool::from(hash_key(presented).ct_eq(expected)) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("admin token required".into()))
        }
    }
}

/// The caller is this tenant (its key is valid, unrevoked, and the tenant is active).
#[derive(Debug, Clone, Copy)]
pub struct Tenant(pub TenantId);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || ApiError::Unauthorized("a valid tenant API key is required".into());
        let presented = bearer(parts).ok_or_else(unauthorized)?;
        let prefix = key_prefix(presented).ok_or_else(unauthorized)?;
        let record = state
            .inner
            .keys
            .lookup(state, prefix)
            .await?
            .ok_or_else(unauthorized)?;
        if !bool::from(hash_key(presented).ct_eq(&record.key_hash)) || record.revoked {
            return Err(unauthorized());
        }
        if !record.tenant_active {
            return Err(ApiError::Forbidden("this tenant is deactivated".into()));
        }
        state.inner.rate.charge(record.tenant)?;
        Ok(Tenant(record.tenant))
    }
}

/// Key lookups cached for a short TTL (negative results too).
#[derive(Debug)]
pub struct KeyCache {
    entries: TtlMap<String, Option<KeyRecord>>,
}

impl KeyCache {
    /// A cache trusting entries for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: TtlMap::new(ttl, MAX_CACHED_KEYS),
        }
    }

    async fn lookup(&self, state: &AppState, prefix: &str) -> Result<Option<KeyRecord>, ApiError> {
        let prefix = prefix.to_owned();
        if let Some(record) = self.entries.fresh(&prefix) {
            return Ok(record);
        }
        let record = state.inner.store.find_api_key(&prefix).await?;
        self.entries.insert_all([(prefix, record.clone())]);
        Ok(record)
    }

    /// Forgets every cached key of a tenant (after a revocation or deactivation here; other
    /// servers notice within the TTL).
    pub fn forget_tenant(&self, tenant: TenantId) {
        self.entries
            .retain(|_, r| r.as_ref().is_none_or(|r| r.tenant != tenant));
    }
}

/// Per-tenant rate limits of this server (governor's GCRA, keyed by tenant): requests, and
/// telemetry values. Limits are per server: N servers admit up to N times the rate.
pub struct RateLimiter {
    requests: Option<DefaultKeyedRateLimiter<TenantId>>,
    values: Option<DefaultKeyedRateLimiter<TenantId>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

/// A keyed limiter of `rate` per second with `burst`; `None` (no limit) when the rate is too
/// high for a nanosecond period.
fn keyed(rate: f64, burst: f64) -> Option<DefaultKeyedRateLimiter<TenantId>> {
    let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    // Saturating float→int conversion: the config keeps `burst` ≥ 1 and finite.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let burst = NonZeroU32::new(burst.min(f64::from(u32::MAX)) as u32)?;
    Quota::with_period(period).map(|q| governor::RateLimiter::keyed(q.allow_burst(burst)))
}

impl RateLimiter {
    /// `rate` requests per second, up to `burst`; `values_rate` telemetry values per second,
    /// up to `values_burst`.
    pub fn new(rate: f64, burst: f64, values_rate: f64, values_burst: f64) -> Self {
        Self {
            requests: keyed(rate, burst),
            values: keyed(values_rate, values_burst),
        }
    }

    /// Takes one request from the tenant's budget, or says how long to wait.
    pub fn charge(&self, tenant: TenantId) -> Result<(), ApiError> {
        take(self.requests.as_ref(), tenant, 1)
    }

    /// Takes `n` telemetry values from the tenant's budget, or says how long to wait.
    pub fn charge_values(&self, tenant: TenantId, n: usize) -> Result<(), ApiError> {
        take(self.values.as_ref(), tenant, n)
    }
}

fn take(
    limiter: Option<&DefaultKeyedRateLimiter<TenantId>>,
    tenant: TenantId,
    n: usize,
) -> Result<(), ApiError> {
    let (Some(limiter), Some(n)) = (
        limiter,
        NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)),
    ) else {
        return Ok(());
    };
    let wait = match limiter.check_key_n(&tenant, n) {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
        // More than the burst at once: no wait makes it fit (the config keeps the values'
        // burst at least a request's maximum, so only a misconfiguration gets here).
        Err(_) => Duration::from_secs(1),
    };
    Err(ApiError::RateLimited {
        retry_after_s: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
    })
}
