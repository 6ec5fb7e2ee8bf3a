//! Who is calling: the operator (admin token) or a tenant (API key). Tenant keys are looked up
//! by their prefix, compared by hash in constant time, cached briefly in process, and charged
//! against the tenant's token bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
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

/// Per-tenant token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<TenantId, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` tokens per second, up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from the tenant's bucket, or says how long to wait.
    pub fn charge(&self, tenant: TenantId) -> Result<(), ApiError> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(()); // a poisoned lock must not take the API down
        };
        let now = Instant::now();
        let (tokens, last) = buckets.entry(tenant).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / self.rate).ceil().max(1.0);
            // Saturating float→int conversion: `wait` is positive and finite.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(ApiError::RateLimited {
                retry_after_s: wait as u64,
            })
        }
    }
}
