//! Tenant quotas as the API enforces them: each tenant's limits (its own settings over the
//! configured defaults, re-read at most every [`LIMITS_TTL`], at once after an admin change
//! on this server), and the write checks - stored values (409), values per UTC day (429,
//! counted in Redis so every server shares the count) - made before anything is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_store::TenantId;
use atlas_store::limits::{Limit, Values};
use chrono::{Datelike, Utc};

use crate::{ApiError, AppState};

/// How long a tenant's limits are trusted before they are read again.
pub(crate) const LIMITS_TTL: Duration = Duration::from_secs(1);
/// How long the stored-values usage (from the statistics view) is trusted.
const USAGE_TTL: Duration = Duration::from_secs(30);

/// Values stored per tenant, and when they were read.
type StoredUsage = (Arc<HashMap<i64, i64>>, Instant);

/// Cached limits and usage.
#[derive(Default)]
pub(crate) struct Quotas {
    defaults: Values,
    limits: std::sync::Mutex<HashMap<i64, (Values, Instant)>>,
    stored: std::sync::Mutex<Option<StoredUsage>>,
}

impl Quotas {
    /// With these defaults.
    pub(crate) fn new(defaults: Values) -> Self {
        Self {
            defaults,
            ..Self::default()
        }
    }
}

/// Values charged to a tenant's count of the day, given back if they are not acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct DayCharge {
    tenant: i64,
    day: String,
    n: i64,
}

fn today() -> (String, u64) {
    let now = Utc::now();
    let day = format!("{:04}-{:02}-{:02}", now.year(), now.month(), now.day());
    let midnight = now
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    let left = midnight.map_or(86_400, |m| (m - now).num_seconds().max(1));
    (day, u64::try_from(left).unwrap_or(86_400))
}

impl AppState {
    /// The configured defaults.
    pub fn limit_defaults(&self) -> Values {
        self.inner.quotas.defaults
    }

    /// A tenant's limits as they apply now.
    pub(crate) async fn limits_of(&self, tenant: TenantId) -> Result<Values, ApiError> {
        let q = &self.inner.quotas;
        if let Some((v, at)) = q.limits.lock().ok().and_then(|m| m.get(&tenant.0).copied())
            && at.elapsed() < LIMITS_TTL
        {
            return Ok(v);
        }
        let overrides = self
            .inner
            .store
            .tenant_overrides(tenant.0)
            .await?
            .ok_or_else(|| ApiError::NotFound("tenant".into()))?;
        let v = overrides.effective(&q.defaults);
        if let Ok(mut m) = q.limits.lock() {
            m.insert(tenant.0, (v, Instant::now()));
        }
        Ok(v)
    }

    /// Drops a tenant's cached limits, and the usage read with them, after an admin change
    /// on this server: the next write is checked against both as they are now.
    pub(crate) fn forget_limits(&self, tenant_id: i64) {
        if let Ok(mut m) = self.inner.quotas.limits.lock() {
            m.remove(&tenant_id);
        }
        if let Ok(mut s) = self.inner.quotas.stored.lock() {
            *s = None;
        }
    }

    /// Values the tenant has stored, as of the last statistics refresh.
    pub(crate) async fn stored_usage(&self, tenant: TenantId) -> Result<i64, ApiError> {
        let q = &self.inner.quotas;
        let cached = q
            .stored
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .filter(|(_, at)| at.elapsed() < USAGE_TTL);
        let map = match cached {
            Some((m, _)) => m,
            None => {
                let m: Arc<HashMap<i64, i64>> = Arc::new(
                    self.inner
                        .store
                        .stored_values()
                        .await?
                        .into_iter()
                        .collect(),
                );
                if let Ok(mut s) = q.stored.lock() {
                    *s = Some((Arc::clone(&m), Instant::now()));
                }
                m
            }
        };
        Ok(map.get(&tenant.0).copied().unwrap_or(0))
    }

    /// Values the tenant wrote today (UTC) by the shared count; `None` when Redis does not
    /// answer.
    pub(crate) async fn values_today(&self, tenant: TenantId) -> Option<i64> {
        self.inner.cache.day_count(tenant.0, &today().0).await
    }

    /// Checks the write quotas for `n` values before anything is written: at or over its
    /// stored values is a 409; `n` more than its values per day allow is a 429 until UTC
    /// midnight (the request is refused whole). Charges the day's count; give the charge back
    /// with [`AppState::refund`] if the values are not acknowledged. Without Redis the daily
    /// count is not kept and the quota is not enforced (logged): a write is never refused
    /// for the cache's outage.
    pub(crate) async fn admit_values(
        &self,
        tenant: TenantId,
        n: usize,
    ) -> Result<Option<DayCharge>, ApiError> {
        let limits = self.limits_of(tenant).await?;
        let max_stored = limits.get(Limit::MaxStoredValues);
        if max_stored > 0 {
            let stored = self.stored_usage(tenant).await?;
            if stored >= max_stored {
                metrics::counter!("atlas_quota_refusals_total", "quota" => "max_stored_values")
                    .increment(1);
                return Err(ApiError::Quota {
                    quota: Limit::MaxStoredValues.as_str().into(),
                    message: format!(
                        "the tenant has {stored} values stored, at its quota max_stored_values of {max_stored}"
                    ),
                    retry_after_s: None,
                });
            }
        }
        let per_day = limits.get(Limit::MaxValuesPerDay);
        if per_day == 0 {
            return Ok(None);
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let (day, left_s) = today();
        let Some(total) = self.inner.cache.day_count_add(tenant.0, &day, n).await else {
            tracing::warn!(
                tenant = tenant.0,
                "Redis does not answer: the values-per-day quota is not enforced for this write"
            );
            return Ok(None);
        };
        metrics::gauge!("atlas_tenant_values_today", "tenant" => tenant.0.to_string())
            .set(total.min(per_day) as f64);
        if total > per_day {
            self.inner.cache.day_count_add(tenant.0, &day, -n).await;
            metrics::counter!("atlas_quota_refusals_total", "quota" => "max_values_per_day")
                .increment(1);
            return Err(ApiError::Quota {
                quota: Limit::MaxValuesPerDay.as_str().into(),
                message: format!(
                    "{n} more values would make {} today, over the quota max_values_per_day of {per_day}",
                    total
                ),
                retry_after_s: Some(left_s),
            });
        }
        Ok(Some(DayCharge {
            tenant: tenant.0,
            day,
            n,
        }))
    }

    /// Gives back `n` values of a charge that were not acknowledged.
    pub(crate) async fn refund(&self, charge: &DayCharge, n: usize) {
        let n = i64::try_from(n).unwrap_or(charge.n).min(charge.n);
        if n > 0 {
            self.inner
                .cache
                .day_count_add(charge.tenant, &charge.day, -n)
                .await;
        }
    }
}
