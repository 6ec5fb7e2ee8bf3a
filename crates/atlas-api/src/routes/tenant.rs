//! Tenant routes (tenant API key). The tenant comes only from the key; every database access
//! runs in the tenant-scoped transaction, so another tenant's ids are simply not found.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use atlas_store::entities::{self, Entity, NewEntity};
use atlas_store::limits::{self, Limit};
use atlas_store::{StoreError, TenantId};

use crate::AppState;
use crate::auth::Tenant;
use crate::consistency::{
    ConsistencyParam, LagMs, ReadFrom, ServedBy, WrittenAt, served, with_lsn,
};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, JsonValue, PathId, QueryParams, from_json_value};
use crate::routes::admin::{AttributeList, PageParams, next_cursor, page};
use axum::response::{IntoResponse, Response};

/// The tenant the presented API key belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// Its id (what the admin API names it by).
    pub tenant_id: i64,
    /// Its unique name.
    pub tenant_name: String,
    /// Its retention and quotas as they apply (0: keep for ever / no limit).
    pub limits: crate::routes::limits::LimitValues,
    /// What it uses of its quotas.
    pub usage: Usage,
}

/// A tenant's usage of its quotas.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Live entities.
    pub entities: i64,
    /// Values charged today (UTC) against `max_values_per_day`: counted only while the
    /// tenant has that quota, so 0 without it (`GET /v1/ingest-stats` counts every stored
    /// value); null when the count cannot be read (Redis unavailable).
    pub values_today: Option<i64>,
    /// Values stored, as of the last statistics refresh.
    pub stored_values: i64,
}

/// An entity to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityInput {
    /// Its type, e.g. `sensor`: a letter or digit, then letters, digits, `_ . : / -` (≤ 100).
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$",
        min_length = 1,
        max_length = 100
    )]
    pub entity_type: String,
    /// Free-form properties (a JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub cold_attrs: Option<serde_json::Value>,
}

/// The registration body: one entity, or an array of 1 to 1000 (the default limit). Only
/// documents the body; `register_entities` parses it to name failing fields precisely.
#[derive(Debug)]
pub struct RegisterBody;

impl utoipa::PartialSchema for RegisterBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::extract::one_or_many("EntityInput", 1, Some(1000))
    }
}

impl ToSchema for RegisterBody {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            EntityInput::name().into_owned(),
            <EntityInput as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// A page of the tenant's entities in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityPage {
    /// The entities, by id.
    pub items: Vec<Entity>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Changes to an entity.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityChanges {
    /// The new entity type (same rules as at registration).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$",
        min_length = 1,
        max_length = 100
    )]
    pub entity_type: Option<String>,
    /// New properties (replace the old ones).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub cold_attrs: Option<serde_json::Value>,
    /// The version the change is based on: a concurrent change since then is a 409.
    #[serde(default, deserialize_with = "crate::extract::integral_i32")]
    pub version: Option<i32>,
}

/// Which entities a list returns, and which page of them.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntityListParams {
    /// Only entities of this type.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")]
    pub entity_type: Option<String>,
    /// Page size (1 to the configured maximum, 1000 by default; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// Read consistency (or the `X-Atlas-Consistency` header).
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
}

/// Who am I.
///
/// The tenant the calling key belongs to (a cheap way to check a key), with its retention and
/// quotas and what it uses of them.
#[utoipa::path(get, path = "/v1/me", tag = "tenant", security(("tenant_key" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn me(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
) -> Result<Json<Me>, ApiError> {
    let t = state
        .inner
        .store
        .get_tenant(tenant.0)
        .await?
        .ok_or_else(|| ApiError::NotFound("tenant".into()))?;
    let limits = state.limits_of(tenant).await?;
    let entities = state
        .inner
        .store
        .with_tenant(tenant, move |tx| {
            async move { atlas_store::limits::live_entities(tx, tenant).await }.boxed()
        })
        .await?;
    Ok(Json(Me {
        tenant_id: t.tenant_id,
        tenant_name: t.tenant_name,
        limits: limits.into(),
        usage: Usage {
            entities,
            values_today: state.values_today(tenant).await,
            stored_values: state.stored_usage(tenant).await?,
        },
    }))
}

/// The attribute catalogue (global, read-only for tenants).
///
/// The global attribute catalogue as a tenant sees it: names, data types and which attributes are
/// hot (searchable).
#[utoipa::path(get, path = "/v1/attributes", tag = "tenant", security(("tenant_key" = [])),
    responses((status = 200, body = AttributeList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn attributes(
    Tenant(_): Tenant,
    State(state): State<AppState>,
) -> Result<Json<AttributeList>, ApiError> {
    Ok(Json(AttributeList {
        items: state.inner.store.list_attributes().await?,
    }))
}

/// Registers one entity (an object) or several (an array); ids are assigned by the server.
///
/// Registers one entity (an object) or up to the configured maximum (an array) in one transaction;
/// the server assigns ids. cold_attrs are free-form properties (a JSON object).
#[utoipa::path(post, path = "/v1/entities", tag = "tenant", security(("tenant_key" = [])),
    request_body(content = RegisterBody, description = "An entity or an array of entities"),
    responses((status = 201, body = EntityPage,
               headers(("x-atlas-lsn" = inline(WrittenAt)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn register_entities(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    JsonValue(body): JsonValue,
) -> Result<Response, ApiError> {
    let single = body.is_object();
    let inputs: Vec<EntityInput> = match body {
        serde_json::Value::Array(_) => from_json_value::<Vec<EntityInput>>(body)?,
        serde_json::Value::Object(_) => vec![from_json_value::<EntityInput>(body)?],
        _ => {
            return Err(ApiError::bad_field(
                "body",
                "expected an entity object or an array of them",
            ));
        }
    };
    let max = state.inner.limits.max_entities_per_request;
    if inputs.is_empty() || inputs.len() > max {
        return Err(ApiError::invalid_value(
            "body",
            format!("register between 1 and {max} entities per request"),
        ));
    }
    let new: Vec<NewEntity> = inputs
        .into_iter()
        .map(|i| NewEntity {
            entity_type: i.entity_type,
            cold_attrs: i.cold_attrs.unwrap_or_else(|| serde_json::json!({})),
        })
        .collect();
    let max_entities = state.limits_of(tenant).await?.get(Limit::MaxEntities);
    let items = state
        .inner
        .store
        .with_tenant(tenant, move |tx| {
            async move {
                if max_entities > 0 {
                    // Counted and inserted under the tenant's quota lock: two registrations
                    // cannot both fit in the last places.
                    limits::lock_entity_quota(tx, tenant).await?;
                    let live = limits::live_entities(tx, tenant).await?;
                    let n = i64::try_from(new.len()).unwrap_or(i64::MAX);
                    if live + n > max_entities {
                        metrics::counter!("atlas_quota_refusals_total", "quota" => "max_entities")
                            .increment(1);
                        return Err(StoreError::Quota {
                            quota: Limit::MaxEntities.as_str(),
                            message: format!(
                                "the tenant has {live} entities; {n} more would exceed its quota max_entities of {max_entities}"
                            ),
                        });
                    }
                }
                entities::register(tx, tenant, &new).await
            }
            .boxed()
        })
        .await
        .map_err(|e| prefix_single_entity_field(e, single))?;
    let mut types: Vec<&str> = items.iter().map(|e| e.entity_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let keys: Vec<String> = types
        .iter()
        .map(|t| state.inner.cache.list_key(tenant.0, t))
        .collect();
    state.inner.cache.invalidate(&keys).await;
    let resp = (
        StatusCode::CREATED,
        Json(EntityPage {
            items,
            next_cursor: None,
        }),
    )
        .into_response();
    Ok(with_lsn(&state, resp).await)
}

/// A single-object registration reports `entity_type`, not `entities[0].entity_type`.
fn prefix_single_entity_field(e: StoreError, single: bool) -> ApiError {
    match e {
        StoreError::Invalid { field, message } if single => ApiError::invalid_value(
            field
                .strip_prefix("entities[0].")
                .unwrap_or(&field)
                .to_owned(),
            message,
        ),
        StoreError::Invalid { field, message } => ApiError::invalid_value(
            field
                .strip_prefix("entities")
                .map(|f| format!("body{f}"))
                .unwrap_or(field),
            message,
        ),
        other => other.into(),
    }
}

/// Lists entities by id, optionally of one type.
///
/// The tenant's live entities in id order, a page at a time (limit, cursor), optionally of one
/// entity_type.
#[utoipa::path(get, path = "/v1/entities", tag = "tenant", security(("tenant_key" = [])), params(EntityListParams, ReadFrom),
    responses((status = 200, body = EntityPage,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_entities(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from: ReadFrom,
    QueryParams(params): QueryParams<EntityListParams>,
) -> Result<Response, ApiError> {
    let (after, limit) = page(
        &state,
        &PageParams {
            limit: params.limit,
            cursor: params.cursor.clone(),
        },
    )?;
    if let Some(t) = &params.entity_type {
        // A query parameter that cannot be an entity type is a malformed request (400).
        entity_type_param(t, "entity_type")?;
    }
    let items = match params.entity_type {
        Some(t) => match type_ids(&state, tenant, &t).await? {
            Some(ids) => {
                let page: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|id| *id > after)
                    .take(usize::try_from(limit).unwrap_or(0))
                    .collect();
                let more = ids.iter().filter(|id| **id > after).count() > page.len();
                let last = page.last().copied();
                let (items, target) = state
                    .read(from, tenant, move |tx| {
                        let page = page.clone();
                        async move { entities::by_ids(tx, tenant, &page).await }.boxed()
                    })
                    .await?;
                let next_cursor = last.filter(|_| more).map(|id| id.to_string());
                return Ok(served(
                    Json(EntityPage { items, next_cursor }).into_response(),
                    target,
                    None,
                ));
            }
            None => {
                state
                    .read(from, tenant, move |tx| {
                        let t = t.clone();
                        async move { entities::list(tx, tenant, Some(&t), after, limit).await }
                            .boxed()
                    })
                    .await?
            }
        },
        None => {
            state
                .read(from, tenant, move |tx| {
                    async move { entities::list(tx, tenant, None, after, limit).await }.boxed()
                })
                .await?
        }
    };
    let (items, target) = items;
    let next_cursor = next_cursor(items.len(), limit, items.last().map(|e| e.entity_id));
    Ok(served(
        Json(EntityPage { items, next_cursor }).into_response(),
        target,
        None,
    ))
}

/// Types with more entities than this are listed from PostgreSQL only (a set this large is
/// no cheaper to page through than the type index).
const MAX_CACHED_LIST: i64 = 10_000;

/// The only member of a cached list whose type has more than [`MAX_CACHED_LIST`] entities.
const TOO_LARGE: i64 = -1;

/// The sorted ids of a type from `entity:list:{tenant}:{type}`, filled from PostgreSQL on a
/// miss; `None` when the type is too large to cache.
async fn type_ids(
    state: &AppState,
    tenant: TenantId,
    entity_type: &str,
) -> Result<Option<Vec<i64>>, ApiError> {
    let cache = &state.inner.cache;
    let key = cache.list_key(tenant.0, entity_type);
    if let Some(mut ids) = cache.members(atlas_cache::Kind::List, &key).await {
        if ids == [TOO_LARGE] {
            return Ok(None);
        }
        ids.sort_unstable();
        return Ok(Some(ids));
    }
    // Only the holder of the exclusive lease reads the type's ids (up to 10 001 of them) to
    // fill the set; every other miss — another request is filling, or Redis is unavailable —
    // pages from PostgreSQL, which costs one cheap keyset query instead. (With a plain lease,
    // taken over by every taker, each miss of a burst read 10 001 ids and their fills fenced
    // each other out: 1.1 s p50 / 2.6 s p99 at 100 pages/s, 1 M entities.)
    let Some(lease) = cache.exclusive_lease(&key).await else {
        return Ok(None);
    };
    let t = entity_type.to_owned();
    let ids = in_tenant(state, tenant, move |tx| {
        async move { entities::ids_of_type(tx, tenant, &t, MAX_CACHED_LIST).await }.boxed()
    })
    .await?;
    let too_large = i64::try_from(ids.len()).unwrap_or(i64::MAX) > MAX_CACHED_LIST;
    // A large type is remembered as such, so its pages skip the id scan until the TTL.
    let members = if too_large {
        &[TOO_LARGE][..]
    } else {
        &ids[..]
    };
    cache.fill_set(lease, members, atlas_cache::LIST_TTL).await;
    Ok((!too_large).then_some(ids))
}

/// The page size asked for by `limit`, checked against the configured bounds (400 naming
/// `limit`), for lists whose cursor is not an id.
fn limit_of(state: &AppState, limit: Option<i64>) -> Result<i64, ApiError> {
    Ok(page(
        state,
        &PageParams {
            limit,
            cursor: None,
        },
    )?
    .1)
}

/// `next_cursor` of a page: its last item's cursor when the page is full.
fn cursor_after<T>(items: &[T], limit: i64, cursor: impl FnOnce(&T) -> String) -> Option<String> {
    items
        .last()
        .filter(|_| i64::try_from(items.len()).unwrap_or(i64::MAX) >= limit)
        .map(cursor)
}

/// Checks an entity type given as the query parameter `field` (400 naming it).
fn entity_type_param(t: &str, field: &str) -> Result<(), ApiError> {
    entities::validate_entity_type(t, field).map_err(|e| match e {
        StoreError::Invalid { field, message } => ApiError::bad_field(field, message),
        other => other.into(),
    })
}

async fn in_tenant<T: Send + 'static>(
    state: &AppState,
    tenant: TenantId,
    f: impl for<'t> FnOnce(
        &'t atlas_store::Tx<'t>,
    ) -> futures_util::future::BoxFuture<'t, Result<T, StoreError>>
    + Send,
) -> Result<T, ApiError> {
    Ok(state.inner.store.with_tenant(tenant, f).await?)
}

/// One entity.
///
/// One of the tenant's entities with its properties and version; another tenant's id is a 404.
#[utoipa::path(get, path = "/v1/entities/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Entity id"), ReadFrom),
    responses((status = 200, body = Entity,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn get_entity(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from: ReadFrom,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let (entity, target) = state
        .read(from, tenant, move |tx| {
            async move { entities::get(tx, tenant, id).await }.boxed()
        })
        .await?;
    let entity = entity.ok_or_else(|| ApiError::NotFound("entity".into()))?;
    Ok(served(Json(entity).into_response(), target, None))
}

/// Changes an entity's type or properties (`version` + 1).
///
/// Changes the entity's type and/or replaces its properties (cold_attrs). With version, the change
/// applies only if the entity is still at that version (else 409), so concurrent editors do not
/// overwrite each other.
#[utoipa::path(patch, path = "/v1/entities/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Entity id")), request_body = EntityChanges,
    responses((status = 200, body = Entity,
               headers(("x-atlas-lsn" = inline(WrittenAt)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update_entity(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    PathId(id): PathId,
    JsonBody(body): JsonBody<EntityChanges>,
) -> Result<Response, ApiError> {
    let (entity, old_type) = in_tenant(&state, tenant, move |tx| {
        async move {
            entities::update(
                tx,
                tenant,
                id,
                body.entity_type.as_deref(),
                body.cold_attrs.as_ref(),
                body.version,
            )
            .await
        }
        .boxed()
    })
    .await?;
    let cache = &state.inner.cache;
    let mut keys = vec![cache.list_key(tenant.0, &old_type)];
    if entity.entity_type != old_type {
        keys.push(cache.list_key(tenant.0, &entity.entity_type));
    }
    cache.invalidate(&keys).await;
    Ok(with_lsn(&state, Json(entity).into_response()).await)
}

/// Soft-deletes an entity: it disappears from every read and takes no new values.
///
/// Soft-deletes the entity: every read stops showing it, telemetry for it is refused, and its
/// stored values stay in the time series.
#[utoipa::path(delete, path = "/v1/entities/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Entity id")),
    responses((status = 204, description = "Deleted",
               headers(("x-atlas-lsn" = inline(WrittenAt)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn delete_entity(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let entity_type = in_tenant(&state, tenant, move |tx| {
        async move { entities::delete(tx, tenant, id).await }.boxed()
    })
    .await?;
    // Committed: the entity's hot attributes, its type's list and the tenant's aggregates
    // (which exclude deleted entities) are stale, and its next value is a 404.
    state.inner.known.forget(tenant, id);
    let cache = &state.inner.cache;
    cache
        .invalidate(&[cache.list_key(tenant.0, &entity_type)])
        .await;
    cache.entities_changed(&[(tenant.0, id)], &[tenant.0]).await;
    Ok(with_lsn(&state, StatusCode::NO_CONTENT.into_response()).await)
}

/// Paging of dead letters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Page size (1 to the configured maximum, 1000 by default; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,16}\\.[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

/// A page of the tenant's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// Newest first.
    pub items: Vec<atlas_store::reads::DeadLetter>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Readings the server acknowledged but could not store, newest first.
///
/// Each with its entity, attribute, value, event time, the reason and when it failed (e.g. a
/// different value already stored for that entity, attribute and time). Dead letters are kept for
/// the tenant's dead_letter_days.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "tenant", security(("tenant_key" = [])),
    params(DeadLetterParams),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dead_letters(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    QueryParams(params): QueryParams<DeadLetterParams>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let limit = limit_of(&state, params.limit)?;
    // The cursor is the last item's failure time (epoch microseconds) and id: "micros.id".
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            c.split_once('.')
                .and_then(|(t, id)| {
                    let at = chrono::DateTime::from_timestamp_micros(t.parse().ok()?)?;
                    Some((at, id.parse::<i64>().ok().filter(|id| *id > 0)?))
                })
                .ok_or_else(|| ApiError::bad_field("cursor", "not a cursor returned by this API"))
        })
        .transpose()?;
    let n = i32::try_from(limit).unwrap_or(i32::MAX);
    let items = in_tenant(&state, tenant, move |tx| {
        async move { atlas_store::reads::dead_letters(tx, tenant, before, n).await }.boxed()
    })
    .await?;
    let next_cursor = cursor_after(&items, limit, |d| {
        format!("{}.{}", d.failed_at.timestamp_micros(), d.dead_letter_id)
    });
    Ok(Json(DeadLetterPage { items, next_cursor }))
}

/// The window of `GET /v1/ingest-stats`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IngestStatsParams {
    /// The last this many minutes, the current one included (1 to 1440; default 60).
    #[param(minimum = 1, maximum = 1440)]
    pub minutes: Option<i64>,
}

/// Request latency of acknowledged telemetry requests. The percentiles are the upper bounds
/// (ms) of the histogram buckets that hold them (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
/// 2000, 5000; 10000 stands for "over 5000").
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestLatency {
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, at most this many ms.
    pub p50_ms: u64,
    /// 99th percentile, at most this many ms.
    pub p99_ms: u64,
}

/// One minute of a tenant's ingest.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestMinute {
    /// The minute's start (UTC).
    pub minute: chrono::DateTime<chrono::Utc>,
    /// Values acknowledged.
    pub stored: i64,
    /// Values refused, by reason.
    #[schema(value_type = Object)]
    pub refused: std::collections::BTreeMap<String, i64>,
    /// Acknowledged requests.
    pub requests: i64,
    /// Their latency (absent without requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<IngestLatency>,
}

/// A tenant's ingest over a window, summed over every server.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestStatsBody {
    /// The window's start (UTC, a minute boundary).
    pub from: chrono::DateTime<chrono::Utc>,
    /// Its length in minutes.
    pub minutes: i64,
    /// Values acknowledged in the window.
    pub stored: i64,
    /// Values refused in the window, by reason: a validation code (e.g. `invalid_value`,
    /// `unknown_attribute`, `time_out_of_range`, `unknown_entity`, `too_many_values`),
    /// `rate_limited`, `quota_exceeded`, or a server-side cause (`queue_full`,
    /// `database_unavailable`, `shutting_down`, `not_stored`).
    #[schema(value_type = Object)]
    pub refused: std::collections::BTreeMap<String, i64>,
    /// Acknowledged requests in the window.
    pub requests: i64,
    /// Their latency (absent without requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<IngestLatency>,
    /// Minutes with anything counted, oldest first.
    pub per_minute: Vec<IngestMinute>,
}

fn latency_of(requests: i64, latency_us: i64, counts: &[i64]) -> Option<IngestLatency> {
    use crate::ingest_stats::quantile_ms;
    Some(IngestLatency {
        mean_ms: (latency_us as f64 / requests as f64 / 10.0).round() / 100.0,
        p50_ms: quantile_ms(counts, 0.5)?,
        p99_ms: quantile_ms(counts, 0.99)?,
    })
    .filter(|_| requests > 0)
}

/// The caller's ingest per minute: values stored, refused by reason, request latency.
///
/// Summed over every server (kept in Redis for a day, written by each server once a second:
/// the current second may not be in yet). Values refused before the body was read as JSON are
/// not counted. 503 when Redis is not configured or does not answer.
#[utoipa::path(get, path = "/v1/ingest-stats", tag = "tenant", security(("tenant_key" = [])),
    params(IngestStatsParams),
    responses((status = 200, body = IngestStatsBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ingest_stats(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    QueryParams(params): QueryParams<IngestStatsParams>,
) -> Result<Json<IngestStatsBody>, ApiError> {
    use crate::ingest_stats::{LATENCY_BOUNDS_MS, MAX_MINUTES, Minute};
    let minutes = params.minutes.unwrap_or(60);
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_field(
            "minutes",
            format!("must be 1 to {MAX_MINUTES}"),
        ));
    }
    let cache = &state.inner.cache;
    let last = chrono::Utc::now().timestamp().div_euclid(60);
    let first = last - minutes + 1;
    let keys: Vec<String> = (first..=last)
        .map(|m| cache.ingest_stats_key(tenant.0, m))
        .collect();
    let Some(hashes) = cache.hashes(&keys).await else {
        return Err(ApiError::Unavailable(
            "ingest figures are kept in Redis, which is not configured or not answering".into(),
        ));
    };
    let mut body = IngestStatsBody {
        from: chrono::DateTime::from_timestamp(first * 60, 0).unwrap_or_default(),
        minutes,
        stored: 0,
        refused: Default::default(),
        requests: 0,
        latency: None,
        per_minute: Vec::new(),
    };
    let (mut latency_us, mut counts) = (0, vec![0; LATENCY_BOUNDS_MS.len() + 1]);
    for (m, fields) in (first..=last).zip(&hashes) {
        let minute = Minute::from_fields(m, fields);
        if minute.is_empty() {
            continue;
        }
        body.stored += minute.stored;
        body.requests += minute.requests;
        latency_us += minute.latency_us;
        for (c, n) in counts.iter_mut().zip(&minute.latency) {
            *c += n;
        }
        for (reason, n) in &minute.refused {
            *body.refused.entry(reason.clone()).or_default() += n;
        }
        body.per_minute.push(IngestMinute {
            minute: chrono::DateTime::from_timestamp(m * 60, 0).unwrap_or_default(),
            stored: minute.stored,
            latency: latency_of(minute.requests, minute.latency_us, &minute.latency),
            refused: minute.refused,
            requests: minute.requests,
        });
    }
    body.latency = latency_of(body.requests, latency_us, &counts);
    Ok(Json(body))
}

/// Paging of entity types.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntityTypeParams {
    /// Page size (1 to the configured maximum, 1000 by default; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (the last type it listed).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")]
    pub cursor: Option<String>,
}

/// A page of entity types.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityTypePage {
    /// Types with at least one live entity, in order.
    pub items: Vec<String>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The caller's entity types.
///
/// Every type the tenant has a live entity of, in order (what the fleet can be filtered by).
#[utoipa::path(get, path = "/v1/entity-types", tag = "tenant", security(("tenant_key" = [])),
    params(EntityTypeParams),
    responses((status = 200, body = EntityTypePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn entity_types(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    QueryParams(params): QueryParams<EntityTypeParams>,
) -> Result<Json<EntityTypePage>, ApiError> {
    let limit = limit_of(&state, params.limit)?;
    let after = params.cursor.unwrap_or_default();
    if !after.is_empty() {
        entity_type_param(&after, "cursor")?;
    }
    let items = in_tenant(&state, tenant, move |tx| {
        async move { entities::types(tx, tenant, &after, limit).await }.boxed()
    })
    .await?;
    let next_cursor = cursor_after(&items, limit, String::clone);
    Ok(Json(EntityTypePage { items, next_cursor }))
}
