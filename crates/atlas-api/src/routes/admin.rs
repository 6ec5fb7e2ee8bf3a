//! The admin API (admin token): tenants, their API keys, and the attribute catalogue.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use atlas_store::TenantId;
use atlas_store::admin::{
    ApiKeyInfo, Attribute, AttributeSpec, AttributeUpdate, DataType, IssuedKey, Tenant,
};

use crate::AppState;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathId, PathIds, QueryParams, double_option};

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Unique slug: a letter or digit, then letters, digits, `_ . -` (≤ 255).
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$",
        min_length = 1,
        max_length = 255
    )]
    pub tenant_name: String,
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantPage {
    /// The tenants of this page, in id order.
    pub items: Vec<Tenant>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size (1 to the configured maximum, 1000 by default; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// Checks `limit` and decodes `cursor` (the last id of the previous page).
pub fn page(state: &AppState, params: &PageParams) -> Result<(i64, i64), ApiError> {
    let limits = &state.inner.limits;
    let limit = params.limit.unwrap_or(limits.default_page_size);
    if limit < 1 || limit > limits.max_page_size {
        return Err(ApiError::bad_field(
            "limit",
            format!("must be between 1 and {}", limits.max_page_size),
        ));
    }
    let after =
        match &params.cursor {
            None => 0,
            Some(c) => c.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                ApiError::bad_field("cursor", "not a cursor returned by this API")
            })?,
        };
    Ok((after, limit))
}

/// The next cursor when the page is full.
pub fn next_cursor(len: usize, limit: i64, last: Option<i64>) -> Option<String> {
    (i64::try_from(len).unwrap_or(i64::MAX) >= limit)
        .then_some(last)
        .flatten()
        .map(|id| id.to_string())
}

/// A new API key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A label for operators (optional; letters, digits, `_ . -`, ≤ 255).
    #[serde(default)]
    #[schema(pattern = "^([A-Za-z0-9][A-Za-z0-9_.-]{0,254})?$", max_length = 255)]
    pub name: String,
}

/// A new attribute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAttribute {
    /// Unique name: a letter or `_`, then letters, digits, `_`, `.`, `-` (≤ 255).
    #[schema(
        pattern = "^[A-Za-z_][A-Za-z0-9_.-]{0,254}$",
        min_length = 1,
        max_length = 255
    )]
    pub attribute_name: String,
    /// The type of its values (fixed once defined).
    pub data_type: DataType,
    /// Project its newest value into the entity's searchable document.
    #[serde(default)]
    pub is_hot: bool,
    /// Mark for indexing.
    #[serde(default)]
    pub is_indexed: bool,
    /// Regex string values must match (string attributes only; linear-time `regex` crate
    /// syntax, no backreferences or lookaround; ≤ 1024 characters). Invalid ones are a 422.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub validation_regex: Option<String>,
    /// Decimal attributes only: round values with more than 5 fraction digits instead of
    /// refusing them.
    #[serde(default)]
    pub allow_rounding: bool,
}

/// Changes to an attribute (name and data_type are fixed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeChanges {
    /// New is_hot.
    #[serde(default)]
    pub is_hot: Option<bool>,
    /// New is_indexed.
    #[serde(default)]
    pub is_indexed: Option<bool>,
    /// New regex; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub validation_regex: Option<Option<String>>,
    /// New allow_rounding (decimal attributes only).
    #[serde(default)]
    pub allow_rounding: Option<bool>,
}

/// The attribute catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttributeList {
    /// Every attribute, by id.
    pub items: Vec<Attribute>,
}

/// A tenant's keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Keys, without secrets.
    pub items: Vec<ApiKeyInfo>,
}

fn positive(id: i64, what: &str) -> Result<i64, ApiError> {
    if id < 1 {
        return Err(ApiError::NotFound(what.to_owned()));
    }
    Ok(id)
}

/// Creates a tenant.
///
/// Creates a tenant with a unique name (409 when taken). Issue it a key with POST
/// /v1/admin/tenants/{id}/keys.
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", security(("admin_token" = [])),
    request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_tenant(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let tenant = state.inner.store.create_tenant(&body.tenant_name).await?;
    tracing::info!(tenant_id = tenant.tenant_id, "tenant created");
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Lists tenants by id.
///
/// Tenants in id order, a page at a time: pass the previous page's next_cursor as cursor.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", security(("admin_token" = [])), params(PageParams),
    responses((status = 200, body = TenantPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn list_tenants(
    _: Admin,
    State(state): State<AppState>,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<Json<TenantPage>, ApiError> {
    let (after, limit) = page(&state, &params)?;
    let items = state.inner.store.list_tenants(after, limit).await?;
    let next_cursor = next_cursor(items.len(), limit, items.last().map(|t| t.tenant_id));
    Ok(Json(TenantPage { items, next_cursor }))
}

/// One tenant.
///
/// One tenant by id, active or deactivated, with its name and creation time; 404 when there is no
/// such tenant.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")),
    responses((status = 200, body = Tenant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_tenant(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Tenant>, ApiError> {
    let id = positive(id, "tenant")?;
    state
        .inner
        .store
        .get_tenant(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("tenant".into()))
}

async fn set_active(state: &AppState, id: i64, active: bool) -> Result<Json<Tenant>, ApiError> {
    let id = positive(id, "tenant")?;
    let tenant = state
        .inner
        .store
        .set_tenant_active(id, active)
        .await?
        .ok_or_else(|| ApiError::NotFound("tenant".into()))?;
    state.inner.keys.forget_tenant(TenantId(id));
    tracing::info!(tenant_id = id, active, "tenant activation changed");
    Ok(Json(tenant))
}

/// Deactivates a tenant: its keys get 403 from then on (other servers within the key-cache TTL).
///
/// Refuses the tenant's keys with 403 from now on; its data stays. Other servers notice within the
/// key-cache TTL.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/deactivate", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")),
    responses((status = 200, body = Tenant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn deactivate_tenant(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Tenant>, ApiError> {
    set_active(&state, id, false).await
}

/// Reactivates a tenant.
///
/// Makes a deactivated tenant's keys work again (idempotent).
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/activate", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")),
    responses((status = 200, body = Tenant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn activate_tenant(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Tenant>, ApiError> {
    set_active(&state, id, true).await
}

/// Issues an API key for a tenant. The `secret` is shown only in this response.
///
/// Issues a 256-bit API key for the tenant. The secret is in this answer only (it is stored as a
/// SHA-256 hash): give it to the tenant now.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/keys", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")), request_body = NewKey,
    responses((status = 201, body = IssuedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn issue_key(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let id = positive(id, "tenant")?;
    let key = state.inner.store.issue_api_key(id, &body.name).await?;
    tracing::info!(tenant_id = id, key_id = key.key_id, prefix = %key.prefix, "api key issued");
    Ok((StatusCode::CREATED, Json(key)))
}

/// A tenant's keys (no secrets).
///
/// A tenant's API keys with their prefix, label and revocation time; secrets are never shown again.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/keys", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id")),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<KeyList>, ApiError> {
    let id = positive(id, "tenant")?;
    if state.inner.store.get_tenant(id).await?.is_none() {
        return Err(ApiError::NotFound("tenant".into()));
    }
    Ok(Json(KeyList {
        items: state.inner.store.list_api_keys(id).await?,
    }))
}

/// Revokes a key (idempotent): it gets 401 from then on (other servers within the key-cache TTL).
///
/// Revokes a key: it gets 401 from now on (other servers within the key-cache TTL). Revoking twice
/// is not an error.
#[utoipa::path(delete, path = "/v1/admin/tenants/{id}/keys/{key_id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Tenant id"), ("key_id" = i64, Path, minimum = 0, description = "Key id")),
    responses((status = 200, body = ApiKeyInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn revoke_key(
    _: Admin,
    State(state): State<AppState>,
    PathIds(id, key_id): PathIds,
) -> Result<Json<ApiKeyInfo>, ApiError> {
    let key = state
        .inner
        .store
        .revoke_api_key(id, key_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("api key".into()))?;
    state.inner.keys.forget_tenant(TenantId(id));
    tracing::info!(tenant_id = id, key_id, "api key revoked");
    Ok(Json(key))
}

/// Defines an attribute.
///
/// Adds an attribute to the global catalogue. Its name and data type are fixed once defined; a
/// taken name is a 409. A validation regex (string attributes only) must compile in linear-time
/// syntax.
#[utoipa::path(post, path = "/v1/admin/attributes", tag = "admin", security(("admin_token" = [])),
    request_body = NewAttribute,
    responses((status = 201, body = Attribute), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn define_attribute(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewAttribute>,
) -> Result<(StatusCode, Json<Attribute>), ApiError> {
    let attribute = state
        .inner
        .store
        .define_attribute(&AttributeSpec {
            attribute_name: body.attribute_name,
            data_type: body.data_type,
            is_hot: body.is_hot,
            is_indexed: body.is_indexed,
            validation_regex: body.validation_regex,
            allow_rounding: body.allow_rounding,
        })
        .await?;
    tracing::info!(attribute_id = attribute.attribute_id, name = %attribute.attribute_name, "attribute defined");
    state.attributes_changed().await;
    Ok((StatusCode::CREATED, Json(attribute)))
}

/// Changes an attribute's flags or regex.
///
/// Changes is_hot, is_indexed, validation_regex or allow_rounding. Turning is_hot on backfills
/// every live entity's projection with its newest value; turning it off removes the attribute from
/// every projection (the time series keeps all values).
#[utoipa::path(patch, path = "/v1/admin/attributes/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Attribute id")), request_body = AttributeChanges,
    responses((status = 200, body = Attribute), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update_attribute(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
    JsonBody(body): JsonBody<AttributeChanges>,
) -> Result<Json<Attribute>, ApiError> {
    let id = positive(id, "attribute")?;
    // A backfill's progress is published as it goes (GET …/backfill, from any server).
    let started = chrono::Utc::now();
    let (report, mut reported) = tokio::sync::watch::channel(None::<BackfillReport>);
    let publisher = {
        let state = state.clone();
        tokio::spawn(async move {
            while reported.changed().await.is_ok() {
                let latest = reported.borrow_and_update().clone();
                if let Some(r) = latest {
                    state.publish_backfill(&r).await;
                }
            }
        })
    };
    let result = state
        .inner
        .store
        .update_attribute(
            id,
            &AttributeUpdate {
                is_hot: body.is_hot,
                is_indexed: body.is_indexed,
                validation_regex: body.validation_regex,
                allow_rounding: body.allow_rounding,
            },
            |p| {
                report.send_replace(Some(BackfillReport::running(id, started, p)));
            },
        )
        .await;
    let last = report.borrow().clone();
    drop(report);
    let _ = publisher.await;
    // The outcome, awaited: a reader after this answer sees it.
    if let Some(last) = last {
        let finished = match &result {
            Ok(_) => BackfillReport {
                state: "done".into(),
                updated_at: Some(chrono::Utc::now()),
                finished_at: Some(chrono::Utc::now()),
                ..last
            },
            Err(e) => BackfillReport {
                state: "failed".into(),
                updated_at: Some(chrono::Utc::now()),
                finished_at: Some(chrono::Utc::now()),
                error: Some(e.to_string()),
                ..last
            },
        };
        state.publish_backfill(&finished).await;
    }
    let (attribute, reprojected) = result?.ok_or_else(|| ApiError::NotFound("attribute".into()))?;
    // Committed: drop what the change made stale (the catalogue, re-projected entities).
    let hot: Vec<(i64, i64)> = reprojected.iter().map(|(t, e)| (t.0, *e)).collect();
    state.inner.cache.entities_changed(&hot, &[]).await;
    if !hot.is_empty() {
        tracing::info!(
            attribute_id = id,
            is_hot = attribute.is_hot,
            entities = hot.len(),
            "projection re-derived"
        );
    }
    state.attributes_changed().await;
    Ok(Json(attribute))
}

/// The newest backfill of an attribute turned hot: how far it has come, or how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackfillReport {
    /// The attribute.
    pub attribute_id: i64,
    /// `none` (no backfill of it in the last hour); `running`; `done`; or `failed` (rolled
    /// back with the flag: the attribute is not hot).
    pub state: String,
    /// Live entities looked at so far (every tenant).
    pub entities_done: i64,
    /// Live entities when it started (grows if entities are registered meanwhile).
    pub entities_total: i64,
    /// Projections changed so far.
    pub projections_changed: i64,
    /// When the change was asked for (absent for `none`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When this report was written: a `running` report that stops moving belongs to a server
    /// that stopped (its transaction rolled back). Absent for `none`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl BackfillReport {
    fn running(
        attribute_id: i64,
        started_at: chrono::DateTime<chrono::Utc>,
        p: atlas_store::admin::BackfillProgress,
    ) -> Self {
        Self {
            attribute_id,
            state: "running".into(),
            entities_done: p.entities_done,
            entities_total: p.entities_total,
            projections_changed: p.projections_changed,
            started_at: Some(started_at),
            updated_at: Some(chrono::Utc::now()),
            finished_at: None,
            error: None,
        }
    }

    /// The report of an attribute without a backfill in the last hour.
    fn none(attribute_id: i64) -> Self {
        Self {
            attribute_id,
            state: "none".into(),
            entities_done: 0,
            entities_total: 0,
            projections_changed: 0,
            started_at: None,
            updated_at: None,
            finished_at: None,
            error: None,
        }
    }
}

/// The progress of an attribute's backfill.
///
/// The newest backfill of the attribute (run when is_hot was turned on in the last hour, by any
/// server): entities looked at of the total, projections changed, and whether it is running, done
/// or failed; `none` when none ran in the last hour. 404 when the attribute does not exist.
#[utoipa::path(get, path = "/v1/admin/attributes/{id}/backfill", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Attribute id")),
    responses((status = 200, body = BackfillReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn attribute_backfill(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<BackfillReport>, ApiError> {
    let id = positive(id, "attribute")?;
    if let Some(report) = state.backfill_report(id).await {
        return Ok(Json(report));
    }
    state
        .inner
        .store
        .get_attribute(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("attribute".into()))?;
    Ok(Json(BackfillReport::none(id)))
}

/// The attribute catalogue.
///
/// The global attribute catalogue, every attribute with its data type, flags and validation regex,
/// for the operator.
#[utoipa::path(get, path = "/v1/admin/attributes", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = AttributeList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_attributes(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<AttributeList>, ApiError> {
    Ok(Json(AttributeList {
        items: state.inner.store.list_attributes().await?,
    }))
}

/// The system's status.
///
/// What `atlas status --json` prints: the primary and replicas with their lag, Redis and its hit
/// rate, the staging backlog, time partitions, maintenance runs, rollup backlog, tenants' usage,
/// the CDC slot and analytics store, the Patroni cluster, Citus nodes and every alert with whether
/// it fires. Each part is probed with a bound; one that does not answer is reported down.
#[utoipa::path(get, path = "/v1/admin/status", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn status(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source =
        state.inner.status.clone().ok_or_else(|| {
            ApiError::Unavailable("status is not collected by this server".into())
        })?;
    Ok(Json(source().await))
}
