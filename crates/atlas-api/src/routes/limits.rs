//! Each tenant's retention and quotas: read and changed by the admin, shown to the tenant
//! in `/v1/me` with its usage.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use atlas_store::limits::{Change, Limit, Overrides, Values};

use crate::AppState;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathId, double_option_integral};

/// Every limit of a tenant. Retention in days, quotas in entities or values; 0 is "keep for
/// ever" / "no limit".
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitValues {
    /// Days raw values are kept (whole partitions go when every tenant allows it, else
    /// this tenant's rows are deleted in batches).
    pub raw_days: i64,
    /// Days 1-minute rollups are kept.
    pub rollup_1m_days: i64,
    /// Days 1-hour rollups are kept.
    pub rollup_1h_days: i64,
    /// Days 1-day rollups are kept.
    pub rollup_1d_days: i64,
    /// Days dead letters are kept.
    pub dead_letter_days: i64,
    /// Most live entities (409 `quota_exceeded` beyond).
    pub max_entities: i64,
    /// Most values written per UTC day (429 `quota_exceeded` beyond, until midnight UTC).
    pub max_values_per_day: i64,
    /// Most values stored, as of the last statistics refresh (409 `quota_exceeded` at it).
    pub max_stored_values: i64,
}

impl From<Values> for LimitValues {
    fn from(v: Values) -> Self {
        Self {
            raw_days: v.get(Limit::RawDays),
            rollup_1m_days: v.get(Limit::Rollup1mDays),
            rollup_1h_days: v.get(Limit::Rollup1hDays),
            rollup_1d_days: v.get(Limit::Rollup1dDays),
            dead_letter_days: v.get(Limit::DeadLetterDays),
            max_entities: v.get(Limit::MaxEntities),
            max_values_per_day: v.get(Limit::MaxValuesPerDay),
            max_stored_values: v.get(Limit::MaxStoredValues),
        }
    }
}

/// A tenant's own settings; null takes the server's default.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitOverrides {
    /// See [`LimitValues`].
    pub raw_days: Option<i64>,
    /// See [`LimitValues`].
    pub rollup_1m_days: Option<i64>,
    /// See [`LimitValues`].
    pub rollup_1h_days: Option<i64>,
    /// See [`LimitValues`].
    pub rollup_1d_days: Option<i64>,
    /// See [`LimitValues`].
    pub dead_letter_days: Option<i64>,
    /// See [`LimitValues`].
    pub max_entities: Option<i64>,
    /// See [`LimitValues`].
    pub max_values_per_day: Option<i64>,
    /// See [`LimitValues`].
    pub max_stored_values: Option<i64>,
}

impl From<Overrides> for LimitOverrides {
    fn from(o: Overrides) -> Self {
        let g = |l: Limit| o.0[l as usize];
        Self {
            raw_days: g(Limit::RawDays),
            rollup_1m_days: g(Limit::Rollup1mDays),
            rollup_1h_days: g(Limit::Rollup1hDays),
            rollup_1d_days: g(Limit::Rollup1dDays),
            dead_letter_days: g(Limit::DeadLetterDays),
            max_entities: g(Limit::MaxEntities),
            max_values_per_day: g(Limit::MaxValuesPerDay),
            max_stored_values: g(Limit::MaxStoredValues),
        }
    }
}

/// A tenant's limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantLimits {
    /// The tenant.
    pub tenant_id: i64,
    /// Each limit as it applies.
    pub limits: LimitValues,
    /// The tenant's own settings (null: the default applies).
    pub overrides: LimitOverrides,
}

/// A change of limits: a number sets one, null returns it to the default, an absent field
/// stays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsChange {
    /// Days raw values are kept.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 36500)]
    pub raw_days: Option<Option<i64>>,
    /// Days 1-minute rollups are kept.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 36500)]
    pub rollup_1m_days: Option<Option<i64>>,
    /// Days 1-hour rollups are kept.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 36500)]
    pub rollup_1h_days: Option<Option<i64>>,
    /// Days 1-day rollups are kept.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 36500)]
    pub rollup_1d_days: Option<Option<i64>>,
    /// Days dead letters are kept.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 36500)]
    pub dead_letter_days: Option<Option<i64>>,
    /// Most live entities.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_entities: Option<Option<i64>>,
    /// Most values written per UTC day.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_values_per_day: Option<Option<i64>>,
    /// Most values stored.
    #[serde(default, deserialize_with = "double_option_integral")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_stored_values: Option<Option<i64>>,
}

impl From<&LimitsChange> for Change {
    fn from(c: &LimitsChange) -> Self {
        Change([
            c.raw_days,
            c.rollup_1m_days,
            c.rollup_1h_days,
            c.rollup_1d_days,
            c.dead_letter_days,
            c.max_entities,
            c.max_values_per_day,
            c.max_stored_values,
        ])
    }
}

fn document(state: &AppState, tenant_id: i64, o: Overrides) -> TenantLimits {
    TenantLimits {
        tenant_id,
        limits: o.effective(&state.limit_defaults()).into(),
        overrides: o.into(),
    }
}

/// A tenant's retention and quotas.
///
/// Each limit as it applies to the tenant (its own setting, else the server's default) and
/// which ones it has set.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/limits", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")),
    responses((status = 200, body = TenantLimits), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_limits(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<TenantLimits>, ApiError> {
    let o = state
        .inner
        .store
        .tenant_overrides(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("tenant".into()))?;
    Ok(Json(document(&state, id, o)))
}

/// Changes a tenant's retention and quotas.
///
/// A number sets a limit for this tenant, null returns it to the server's default, an absent
/// field stays. Takes effect at once on this server and within a second on the others; a
/// raised quota admits the next write.
#[utoipa::path(patch, path = "/v1/admin/tenants/{id}/limits", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")), request_body = LimitsChange,
    responses((status = 200, body = TenantLimits), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn change_limits(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
    JsonBody(change): JsonBody<LimitsChange>,
) -> Result<Json<TenantLimits>, ApiError> {
    let o = state
        .inner
        .store
        .change_limits(id, &Change::from(&change))
        .await?;
    state.forget_limits(id);
    Ok(Json(document(&state, id, o)))
}
