//! The read API (tenant key): hot attributes through Redis, search on the GIN index, newest
//! value and series on the primary key, aggregates cached per tenant generation, attribute
//! statistics. Every database read runs in the tenant-scoped transaction.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use atlas_cache::Kind;
use atlas_replication::Target;
use atlas_store::admin::DataType;
use atlas_store::entities;
use atlas_store::reads::{
    self, AggFn, AggregateQuery, AttrRef, AttributeStats, Bucket, BucketWidth, HotAttributes,
    Point, Scope, Search, SearchHit, SeriesQuery,
};

use crate::AppState;
use crate::auth::Tenant;
use crate::consistency::{ConsistencyParam, LagMs, ReadFrom, ServedBy, served};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathId, QueryParams};
use crate::routes::admin::{PageParams, page};

/// A JSON document (possibly straight from Redis) with `X-Atlas-Cache: hit|miss`.
fn json_document(body: Arc<str>, hit: bool) -> Response {
    let mut r = body.to_string().into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-atlas-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    r
}

fn to_json<T: Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(format!("serializing: {e}")))
}

/// An entity's hot attributes, from Redis `entity:{tenant}:{entity}` (TTL 300 s) or
/// `entity_jsonb`. Answers carry `X-Atlas-Cache: hit|miss`.
///
/// The newest value of each hot attribute of the entity and its event time, from Redis when cached
/// (X-Atlas-Cache: hit) or from the projection; never older than a committed write.
#[utoipa::path(get, path = "/v1/entities/{id}/attributes", tag = "reads", security(("tenant_key" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Entity id"), ReadFrom),
    responses((status = 200, body = HotAttributes,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn hot_attributes(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from: ReadFrom,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let key = state.inner.cache.entity_key(tenant.0, id);
    let s = state.clone();
    let (doc, target) = state
        .cached_json(
            Kind::Entity,
            key,
            from.flight_suffix(),
            atlas_cache::ENTITY_TTL,
            true,
            move || async move {
                let (hot, target) = s
                    .read(from, tenant, move |tx| {
                        async move { reads::hot_attributes(tx, tenant, id).await }.boxed()
                    })
                    .await?;
                Ok(hot.as_ref().map(to_json).transpose()?.map(|d| (d, target)))
            },
        )
        .await?;
    let doc = doc.ok_or_else(|| ApiError::NotFound("entity".into()))?;
    Ok(cached_answer(doc, target))
}

/// A document from [`AppState::cached_json`]: from Redis (`target` None) or where it was read.
fn cached_answer(doc: Arc<str>, target: Option<Target>) -> Response {
    match target {
        None => served(json_document(doc, true), Target::Primary, Some("cache")),
        Some(t) => served(json_document(doc, false), t, None),
    }
}

/// A hot-attribute search.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// Hot attributes containing this object (`@>`), e.g. `{"status": "online"}`; values
    /// are typed (8 matches the integer 8, not the string "8").
    #[schema(value_type = Option<Object>)]
    pub contains: Option<serde_json::Value>,
    /// Has this hot attribute (`?`).
    pub has_key: Option<String>,
    /// Has any of these hot attributes (`?|`), 1–100 names.
    #[schema(min_items = 1, max_items = 100)]
    pub has_any: Option<Vec<String>>,
    /// Has all of these hot attributes (`?&`), 1–100 names.
    #[schema(min_items = 1, max_items = 100)]
    pub has_all: Option<Vec<String>>,
    /// Only entities of this type.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")]
    pub entity_type: Option<String>,
    /// Page size (1 to the configured maximum; default 100).
    #[serde(default, deserialize_with = "atlas_ingest::typing::integral_i64_opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[schema(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// One page of entities whose hot attributes matched, with the cursor of the next.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    /// Matching entities, by id.
    pub items: Vec<SearchHit>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn no_nul(s: &str, field: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::invalid_value(
            field,
            "must not contain the NUL character",
        ));
    }
    Ok(())
}

fn key_list(list: Option<&Vec<String>>, field: &str) -> Result<(), ApiError> {
    let Some(list) = list else { return Ok(()) };
    if list.is_empty() || list.len() > 100 {
        return Err(ApiError::invalid_value(
            field,
            "give between 1 and 100 attribute names",
        ));
    }
    list.iter()
        .enumerate()
        .try_for_each(|(i, k)| no_nul(k, &format!("{field}[{i}]")))
}

/// Searches the tenant's entities by hot attributes (every given condition must hold). Served
/// by the GIN index on `entity_jsonb.hot_attrs` under tenant isolation.
///
/// Entities whose hot attributes match every given condition: contains (JSON containment, typed: 8
/// is not "8"), has_key, has_any, has_all, optionally of one entity_type; a page at a time. Served
/// by the GIN index under tenant isolation.
#[utoipa::path(post, path = "/v1/entities/search", tag = "reads", security(("tenant_key" = [])), params(ReadFrom),
    request_body = SearchBody,
    responses((status = 200, body = SearchPage,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn search(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from: ReadFrom,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<Response, ApiError> {
    let (after, limit) = page(
        &state,
        &PageParams {
            limit: body.limit,
            cursor: body.cursor.clone(),
        },
    )
    .map_err(|e| match e {
        // Body fields are 422, not 400.
        ApiError::BadRequest { message, field, .. } => ApiError::Unprocessable {
            code: "invalid_value",
            message,
            field,
        },
        other => other,
    })?;
    if body.contains.is_none()
        && body.has_key.is_none()
        && body.has_any.is_none()
        && body.has_all.is_none()
    {
        return Err(ApiError::invalid_value(
            "body",
            "give at least one of contains, has_key, has_any, has_all",
        ));
    }
    if let Some(c) = &body.contains {
        if !c.is_object() {
            return Err(ApiError::invalid_value(
                "contains",
                "must be a JSON object of hot attribute values",
            ));
        }
        entities::check_storable_json(c, "contains")?;
    }
    if let Some(k) = &body.has_key {
        no_nul(k, "has_key")?;
    }
    key_list(body.has_any.as_ref(), "has_any")?;
    key_list(body.has_all.as_ref(), "has_all")?;
    if let Some(t) = &body.entity_type {
        entities::validate_entity_type(t, "entity_type")?;
    }
    let q = Search {
        contains: body.contains,
        has_key: body.has_key,
        has_any: body.has_any,
        has_all: body.has_all,
        entity_type: body.entity_type,
    };
    let (items, target) = state
        .read(from, tenant, move |tx| {
            let q = q.clone();
            async move { reads::search(tx, &q, after, limit).await }.boxed()
        })
        .await?;
    let next_cursor =
        crate::routes::admin::next_cursor(items.len(), limit, items.last().map(|h| h.entity_id));
    Ok(served(
        axum::Json(SearchPage { items, next_cursor }).into_response(),
        target,
        None,
    ))
}

/// Resolves `attribute` (a name, or an id) in the catalogue; an unknown one is looked up
/// again once (it may have been defined a moment ago) before it is a 404 naming the field.
async fn attribute(state: &AppState, raw: Option<&str>) -> Result<(String, AttrRef), ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Err(ApiError::bad_field(
            "attribute",
            "required: an attribute name or id",
        ));
    };
    for fresh in [false, true] {
        if let Some(rule) = state.catalog(fresh).await?.resolve(raw) {
            return Ok((
                rule.name.clone(),
                AttrRef {
                    attribute_id: rule.id,
                    data_type: rule.data_type,
                },
            ));
        }
    }
    Err(ApiError::UnknownReference {
        message: format!("attribute `{raw}` not found"),
        field: "attribute".into(),
    })
}

/// `latest` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LatestParams {
    /// Attribute name or id.
    #[param(required = true, min_length = 1)]
    pub attribute: Option<String>,
    /// Read consistency (or the `X-Atlas-Consistency` header).
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
}

/// The newest value of one attribute.
#[derive(Debug, Serialize, ToSchema)]
pub struct Latest {
    /// The entity.
    pub entity_id: i64,
    /// The attribute's name.
    pub attribute: String,
    /// The newest reading; null when the entity has none of this attribute.
    pub latest: Option<Point>,
}

/// The newest value of an attribute for an entity (primary-key lookup, newest partition first).
///
/// The newest stored value of one attribute of the entity, typed, with its event time; null when
/// the entity has none.
#[utoipa::path(get, path = "/v1/entities/{id}/latest", tag = "reads", security(("tenant_key" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Entity id"), LatestParams, ReadFrom),
    responses((status = 200, body = Latest,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn latest(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from: ReadFrom,
    PathId(id): PathId,
    QueryParams(params): QueryParams<LatestParams>,
) -> Result<Response, ApiError> {
    let (name, attr) = attribute(&state, params.attribute.as_deref()).await?;
    let (found, target) = state
        .read_series(from, tenant, move |tx| {
            async move { reads::latest(tx, tenant, id, attr).await }.boxed()
        })
        .await?;
    let found = found.ok_or_else(|| ApiError::NotFound("entity".into()))?;
    Ok(served(
        axum::Json(Latest {
            entity_id: id,
            attribute: name,
            latest: found,
        })
        .into_response(),
        target,
        None,
    ))
}

/// Parses a time parameter: epoch milliseconds or RFC 3339.
/// The schema of a time parameter, as [`time_param`] reads it: epoch milliseconds (0 to the
/// end of year 9999) or an RFC 3339 time.
fn time_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .maximum(Some(253_402_300_799_999_i64))
                .description(Some("Epoch milliseconds")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .pattern(Some(
                    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$",
                ))
                .description(Some("An RFC 3339 time, e.g. 2026-12-01T09:00:00Z")),
        )
        .into()
}

fn time_param(raw: Option<&str>, field: &str) -> Result<DateTime<Utc>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Err(ApiError::bad_field(
            field,
            "required: epoch milliseconds or an RFC 3339 time",
        ));
    };
    let parsed = if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        raw.parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
    } else {
        DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    parsed.ok_or_else(|| {
        ApiError::bad_field(
            field,
            format!("`{raw}` is neither epoch milliseconds nor an RFC 3339 time"),
        )
    })
}

/// Checks `[from, to)`: ordered and within the configured maximum range.
fn time_range(
    state: &AppState,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let from = time_param(from, "from")?;
    let to = time_param(to, "to")?;
    if to <= from {
        return Err(ApiError::invalid_value("to", "must be later than `from`"));
    }
    let max_days = state.inner.limits.max_time_range_days;
    if to - from > chrono::Duration::days(max_days) {
        return Err(ApiError::invalid_value(
            "to",
            format!("the range from `from` to `to` may span at most {max_days} days"),
        ));
    }
    Ok((from, to))
}

/// Sort order of a series.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Oldest first (default).
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// `series` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// Attribute name or id.
    #[param(required = true, min_length = 1)]
    pub attribute: Option<String>,
    /// Inclusive start: epoch milliseconds (an RFC 3339 time is accepted too).
    #[param(required = true, schema_with = time_schema)]
    pub from: Option<String>,
    /// Exclusive end, after `from` and at most the configured maximum range (31 days by
    /// default) after it: epoch milliseconds (or RFC 3339).
    #[param(required = true, schema_with = time_schema)]
    pub to: Option<String>,
    /// Page size (1 to the configured maximum; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `asc` (default) or `desc`.
    #[param(inline)]
    pub order: Option<Order>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,16}$")]
    pub cursor: Option<String>,
    /// Read consistency (or the `X-Atlas-Consistency` header).
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
}

/// A page of a series.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPage {
    /// The entity.
    pub entity_id: i64,
    /// The attribute's name.
    pub attribute: String,
    /// The readings in order.
    pub items: Vec<Point>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An entity's values of one attribute in `[from, to)` (primary-key range scan).
///
/// The entity's values of one attribute in [from, to), oldest first, a page at a time (limit,
/// cursor). from and to are epoch milliseconds or RFC 3339 times within the configured longest
/// range.
#[utoipa::path(get, path = "/v1/entities/{id}/series", tag = "reads", security(("tenant_key" = [])),
    params(("id" = i64, Path, minimum = 0, description = "Entity id"), SeriesParams, ReadFrom),
    responses((status = 200, body = SeriesPage,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn series(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from_: ReadFrom,
    PathId(id): PathId,
    QueryParams(params): QueryParams<SeriesParams>,
) -> Result<Response, ApiError> {
    let (from, to) = time_range(&state, params.from.as_deref(), params.to.as_deref())?;
    let (_, limit) = page(
        &state,
        &PageParams {
            limit: params.limit,
            cursor: None,
        },
    )?;
    // The cursor is the last reading's time in epoch microseconds.
    let cursor = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| ApiError::bad_field("cursor", "not a cursor returned by this API"))
        })
        .transpose()?;
    let (name, attr) = attribute(&state, params.attribute.as_deref()).await?;
    let q = SeriesQuery {
        entity_id: id,
        attr,
        from,
        to,
        cursor,
        limit,
        descending: matches!(params.order, Some(Order::Desc)),
    };
    let (items, target) = state
        .read_series(from_, tenant, move |tx| {
            let q = q.clone();
            async move { reads::series(tx, tenant, &q).await }.boxed()
        })
        .await?;
    let items = items.ok_or_else(|| ApiError::NotFound("entity".into()))?;
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) >= limit;
    let next_cursor = items
        .last()
        .filter(|_| full)
        .and_then(|p| DateTime::parse_from_rfc3339(&p.time).ok())
        .map(|t| t.timestamp_micros().to_string());
    Ok(served(
        axum::Json(SeriesPage {
            entity_id: id,
            attribute: name,
            items,
            next_cursor,
        })
        .into_response(),
        target,
        None,
    ))
}

/// Most buckets one aggregate may return.
const MAX_BUCKETS: i64 = 10_000;

/// `aggregates` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AggregateParams {
    /// Attribute name or id (integer or decimal for avg/min/max/sum; any type for count).
    #[param(required = true, min_length = 1)]
    pub attribute: Option<String>,
    /// Inclusive start: epoch milliseconds (an RFC 3339 time is accepted too).
    #[param(required = true, schema_with = time_schema)]
    pub from: Option<String>,
    /// Exclusive end, after `from` and at most the configured maximum range after it.
    #[param(required = true, schema_with = time_schema)]
    pub to: Option<String>,
    /// Bucket width: 1m, 5m, 15m, 30m, 1h, 6h, 12h or 1d (buckets aligned in UTC; at most
    /// 10 000 of them in the range).
    #[param(value_type = String, required = true, pattern = "^(1m|5m|15m|30m|1h|6h|12h|1d)$")]
    pub bucket: Option<BucketWidth>,
    /// avg, min, max, sum or count.
    #[serde(rename = "fn")]
    #[param(rename = "fn", value_type = String, required = true, pattern = "^(avg|min|max|sum|count)$")]
    pub func: Option<AggFn>,
    /// Only this entity.
    pub entity_id: Option<i64>,
    /// Only entities of this type (not with `entity_id`).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")]
    pub entity_type: Option<String>,
    /// Read consistency (or the `X-Atlas-Consistency` header).
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
}

/// An aggregate: one value of `fn` per non-empty bucket of the range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Aggregate {
    /// The attribute's name.
    pub attribute: String,
    /// The aggregate function applied to each bucket.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// Bucket width (`1m` … `1d`), buckets aligned in UTC.
    #[schema(value_type = String)]
    pub bucket: BucketWidth,
    /// Non-empty buckets, oldest first.
    pub items: Vec<Bucket>,
}

/// Buckets of avg/min/max/sum/count over an attribute's values, tenant-wide or for one
/// entity or type; cached in Redis as `agg:{tenant}:{generation}:{query}` for 60 s, and a
/// new generation after every write of the tenant makes older entries unreachable.
///
/// avg, min, max, sum or count of a numeric attribute in UTC-aligned buckets, over the whole
/// tenant, one entity (entity_id) or one type (entity_type). from and to are epoch milliseconds or
/// RFC 3339 times; at most 10 000 buckets and the configured longest range. Cached per tenant until
/// its next write.
#[utoipa::path(get, path = "/v1/aggregates", tag = "reads", security(("tenant_key" = [])),
    params(AggregateParams, ReadFrom),
    responses((status = 200, body = Aggregate,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn aggregates(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from_: ReadFrom,
    QueryParams(params): QueryParams<AggregateParams>,
) -> Result<Response, ApiError> {
    let (from, to) = time_range(&state, params.from.as_deref(), params.to.as_deref())?;
    let bucket = params.bucket.ok_or_else(|| {
        ApiError::bad_field("bucket", format!("required: {}", BucketWidth::CHOICES))
    })?;
    if (to - from).num_seconds() / bucket.seconds() >= MAX_BUCKETS {
        return Err(ApiError::invalid_value(
            "bucket",
            format!(
                "the range holds more than {MAX_BUCKETS} buckets of {}; use a wider bucket",
                bucket.as_str()
            ),
        ));
    }
    let func = params
        .func
        .ok_or_else(|| ApiError::bad_field("fn", "required: one of avg, min, max, sum, count"))?;
    let scope = match (params.entity_id, params.entity_type) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_value(
                "entity_type",
                "give entity_id or entity_type, not both",
            ));
        }
        (Some(id), None) => Scope::Entity(id),
        (None, Some(t)) => {
            entities::validate_entity_type(&t, "entity_type")
                .map_err(|e| ApiError::bad_field("entity_type", e.to_string()))?;
            Scope::Type(t)
        }
        (None, None) => Scope::Tenant,
    };
    let (name, attr) = attribute(&state, params.attribute.as_deref()).await?;
    if func.numeric() && !matches!(attr.data_type, DataType::Integer | DataType::Decimal) {
        return Err(ApiError::invalid_value(
            "fn",
            format!(
                "`{name}` holds {} values; only count applies",
                attr.data_type
            ),
        ));
    }
    let scope_key = match &scope {
        Scope::Tenant => "all".to_owned(),
        Scope::Entity(id) => format!("e{id}"),
        Scope::Type(t) => format!("t{t}"),
    };
    let q = AggregateQuery {
        attribute_id: attr.attribute_id,
        from,
        to,
        bucket,
        func,
        scope,
    };
    let s = state.clone();
    let load = move || async move {
        let (items, target) = s
            .read_series(from_, tenant, move |tx| {
                let q = q.clone();
                async move { reads::aggregate(tx, tenant, &q).await }.boxed()
            })
            .await?;
        items
            .map(|items| {
                to_json(&Aggregate {
                    attribute: name,
                    func,
                    bucket,
                    items,
                })
                .map(|d| (d, target))
            })
            .transpose()
    };
    // The generation is read before the database (see atlas_cache); without Redis there is
    // nothing to read or fill.
    let generation = state.inner.cache.agg_generation(tenant.0).await;
    let (doc, target) = match generation {
        Some(g) => {
            let key = state.inner.cache.agg_key(
                tenant.0,
                &g,
                &format!(
                    "{}:{}:{}:{}:{:?}:{scope_key}",
                    attr.attribute_id,
                    from.timestamp_micros(),
                    to.timestamp_micros(),
                    bucket.seconds(),
                    func
                ),
            );
            state
                .cached_json(
                    Kind::Agg,
                    key,
                    from_.flight_suffix(),
                    atlas_cache::AGG_TTL,
                    false,
                    load,
                )
                .await?
        }
        None => match load().await? {
            Some((d, t)) => (Some(Arc::from(d)), Some(t)),
            None => (None, None),
        },
    };
    let doc = doc.ok_or_else(|| ApiError::NotFound("entity".into()))?;
    Ok(cached_answer(doc, target))
}

/// The tenant's attribute statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsList {
    /// One row per attribute the tenant has values of, as of the last refresh.
    pub items: Vec<AttributeStats>,
}

/// Per-attribute usage of the calling tenant, from `mv_entity_attribute_stats` through the
/// tenant-fenced view (refreshed periodically, so it trails the newest writes).
///
/// Per attribute the tenant has values of: how many values, how many entities, oldest and newest
/// time, as of the last periodic refresh.
#[utoipa::path(get, path = "/v1/stats/attributes", tag = "reads", security(("tenant_key" = [])), params(ReadFrom),
    responses((status = 200, body = StatsList,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn attribute_stats(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from: ReadFrom,
) -> Result<Response, ApiError> {
    let (items, target) = state
        .read(from, tenant, move |tx| {
            async move { reads::attribute_stats(tx).await }.boxed()
        })
        .await?;
    Ok(served(
        axum::Json(StatsList { items }).into_response(),
        target,
        None,
    ))
}
