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

/// Most buckets one aggregate (or one series of a query) may return.
const MAX_BUCKETS: i64 = 10_000;

/// Checks an aggregate's `[from, to)` and bucket: ordered; at most [`MAX_BUCKETS`] buckets;
/// a width no rollup divides (under a minute, or not whole minutes) is computed from raw
/// values, so its range keeps the raw series' limit.
fn agg_range(
    state: &AppState,
    from: Option<&str>,
    to: Option<&str>,
    bucket: BucketWidth,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let from = time_param(from, "from")?;
    let to = time_param(to, "to")?;
    if to <= from {
        return Err(ApiError::invalid_value("to", "must be later than `from`"));
    }
    let span = (to - from).num_milliseconds();
    if span / bucket.millis() >= MAX_BUCKETS {
        return Err(ApiError::invalid_value(
            "bucket",
            format!(
                "the range holds more than {MAX_BUCKETS} buckets of {bucket}; use a wider bucket"
            ),
        ));
    }
    let max_days = state.inner.limits.max_time_range_days;
    if bucket.millis() % BucketWidth::MINUTE.millis() != 0
        && to - from > chrono::Duration::days(max_days)
    {
        return Err(ApiError::invalid_value(
            "to",
            format!(
                "a bucket of {bucket} is computed from raw values, whose range may span at most {max_days} days; \
                 use whole minutes for longer ranges"
            ),
        ));
    }
    Ok((from, to))
}

/// Checks that `func` applies to the attribute's type.
fn check_fn(func: AggFn, name: &str, attr: AttrRef) -> Result<(), ApiError> {
    if func.applies_to(attr.data_type) {
        return Ok(());
    }
    Err(ApiError::invalid_value(
        "fn",
        format!(
            "`{name}` holds {} values; only count applies",
            attr.data_type
        ),
    ))
}

/// `aggregates` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AggregateParams {
    /// Attribute name or id (integer, decimal or boolean - as 0/1 - for avg/min/max/sum/first/
    /// last; any type for count).
    #[param(required = true, min_length = 1)]
    pub attribute: Option<String>,
    /// Inclusive start: epoch milliseconds (an RFC 3339 time is accepted too).
    #[param(required = true, schema_with = time_schema)]
    pub from: Option<String>,
    /// Exclusive end, after `from`; years are fine for buckets of whole minutes (served by the
    /// rollups), other widths keep the configured maximum range.
    #[param(required = true, schema_with = time_schema)]
    pub to: Option<String>,
    /// Bucket width: a number with a unit (`30s`, `2m`, `90m`, `1h`, `1d`, `1w`; ms, s, m, h,
    /// d, w) or whole milliseconds; buckets aligned in UTC; at most 10 000 in the range.
    #[param(value_type = String, required = true, pattern = "^0*[1-9][0-9]{0,14}(ms|s|m|h|d|w)?$")]
    pub bucket: Option<String>,
    /// avg, min, max, sum, count, first or last.
    #[serde(rename = "fn")]
    #[param(rename = "fn", value_type = String, required = true, pattern = "^(avg|min|max|sum|count|first|last)$")]
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
    /// Bucket width (`30s`, `1h`, `90m`, …), buckets aligned in UTC.
    #[schema(value_type = String)]
    pub bucket: BucketWidth,
    /// Non-empty buckets, oldest first.
    pub items: Vec<Bucket>,
}

/// Parses `bucket`: 400 when it is not written as a width, 422 when it is but is out of range
/// (zero, or more than ten years).
fn bucket_param(raw: Option<&str>) -> Result<BucketWidth, ApiError> {
    let raw = raw.filter(|r| !r.is_empty()).ok_or_else(|| {
        ApiError::bad_field("bucket", format!("required: {}", BucketWidth::CHOICES))
    })?;
    raw.parse().map_err(|e: String| {
        let digits = raw.bytes().take_while(u8::is_ascii_digit).count();
        let well_formed =
            digits > 0 && ["", "ms", "s", "m", "h", "d", "w"].contains(&&raw[digits..]);
        if well_formed {
            ApiError::invalid_value("bucket", e)
        } else {
            ApiError::bad_field("bucket", e)
        }
    })
}

/// Buckets of avg/min/max/sum/count/first/last over an attribute's values, tenant-wide or
/// for one entity or type; cached in Redis as `agg:{tenant}:{generation}:{query}` for 60 s,
/// and a new generation after every write of the tenant makes older entries unreachable.
///
/// avg, min, max, sum, count, first or last of an attribute in UTC-aligned buckets of any
/// width, over the whole tenant, one entity (entity_id) or one type (entity_type). Whole-minute
/// buckets are served from the 1-minute, 1-hour and 1-day rollups (with raw values for what is
/// not rolled up yet), so ranges of years answer quickly; at most 10 000 buckets. Cached per
/// tenant until its next write.
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
    let bucket = bucket_param(params.bucket.as_deref())?;
    let (from, to) = agg_range(&state, params.from.as_deref(), params.to.as_deref(), bucket)?;
    let func = params
        .func
        .ok_or_else(|| ApiError::bad_field("fn", format!("required: {}", AggFn::CHOICES)))?;
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
    check_fn(func, &name, attr)?;
    let scope_key = match &scope {
        Scope::Tenant => "all".to_owned(),
        Scope::Entity(id) => format!("e{id}"),
        Scope::Type(t) => format!("t{t}"),
        Scope::Entities(ids) => format!("l{ids:?}"),
    };
    let q = AggregateQuery {
        attribute_ids: vec![attr.attribute_id],
        from,
        to,
        bucket,
        func,
        scope,
        per_series: false,
    };
    let s = state.clone();
    let load = move || async move {
        let (items, target) = s
            // Not the analytics store: it holds no rollups.
            .read(from_, tenant, move |tx| {
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
                    bucket.millis(),
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

/// Most attributes one query may name.
const MAX_QUERY_ATTRIBUTES: usize = 20;
/// Most entities one query may cover.
const MAX_QUERY_ENTITIES: usize = 100;

/// A query for many series at once: what a dashboard panel asks.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Attribute names or ids (1 to 20).
    pub attributes: Vec<String>,
    /// These entities (1 to 100)…
    pub entity_ids: Option<Vec<i64>>,
    /// …or the live entities of this type (at most 100 of them).
    pub entity_type: Option<String>,
    /// Inclusive start: epoch milliseconds or RFC 3339.
    #[schema(schema_with = time_schema)]
    pub from: serde_json::Value,
    /// Exclusive end: epoch milliseconds or RFC 3339.
    #[schema(schema_with = time_schema)]
    pub to: serde_json::Value,
    /// avg, min, max, sum, count, first or last.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// Bucket width (`30s`, `90m`, `1h`), or whole milliseconds as a number; not with
    /// `max_points`.
    #[schema(value_type = Option<String>, pattern = "^0*[1-9][0-9]{0,14}(ms|s|m|h|d|w)?$")]
    pub bucket: Option<serde_json::Value>,
    /// At most this many buckets per series (1 to 10 000; default 1 000): the width is chosen
    /// for the caller among 1 s, 2 s, 5 s … 1 h, 2 h … 1 d, 7 d, 30 d.
    #[schema(minimum = 1, maximum = 10000)]
    pub max_points: Option<i64>,
}

/// One series of a query.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuerySeries {
    /// The entity.
    pub entity_id: i64,
    /// The attribute's name.
    pub attribute: String,
    /// Non-empty buckets, oldest first.
    pub points: Vec<Bucket>,
}

/// The answer to a query.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryResult {
    /// The function.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// The bucket width used.
    #[schema(value_type = String)]
    pub bucket: BucketWidth,
    /// One series per (entity, attribute), in the request's order (entities, then attributes);
    /// a pair without values has no points.
    pub series: Vec<QuerySeries>,
}

fn json_time(v: &serde_json::Value, field: &str) -> Result<String, ApiError> {
    match v {
        // An integral number written with a fraction (1764000000000.0) is an integer too.
        serde_json::Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            Ok(n.as_i64().map_or_else(
                || format!("{:.0}", n.as_f64().unwrap_or(-1.0)),
                |i| i.to_string(),
            ))
        }
        serde_json::Value::String(s) => Ok(s.clone()),
        _ => Err(ApiError::bad_field(
            field,
            "expected epoch milliseconds or an RFC 3339 time",
        )),
    }
}

/// Many series in one request: `fn` of each (entity, attribute) pair in buckets, from the
/// rollups and raw values like `/v1/aggregates`.
///
/// One series per (entity, attribute) for up to 20 attributes and 100 entities (named, or the
/// live entities of a type), with avg/min/max/sum/count/first/last per bucket. Give `bucket`, or
/// `max_points` and the width is chosen for you (the smallest common width giving at most that
/// many buckets). Unknown or deleted entities are a 404 naming the field.
#[utoipa::path(post, path = "/v1/query", tag = "reads", security(("tenant_key" = [])),
    request_body = QueryRequest, params(ReadFrom),
    responses((status = 200, body = QueryResult,
               headers(("x-atlas-served-by" = inline(ServedBy)), ("x-atlas-lag-ms" = inline(LagMs)))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn query(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    from_: ReadFrom,
    JsonBody(req): JsonBody<QueryRequest>,
) -> Result<Response, ApiError> {
    let from_raw = json_time(&req.from, "from")?;
    let to_raw = json_time(&req.to, "to")?;
    let bucket = match &req.bucket {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(raw)) => Some(bucket_param(Some(raw))?),
        Some(serde_json::Value::Number(n)) => Some(
            n.as_i64()
                .and_then(BucketWidth::from_millis)
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "bucket",
                        format!("{n} is not a bucket width: {}", BucketWidth::CHOICES),
                    )
                })?,
        ),
        Some(_) => {
            return Err(ApiError::bad_field(
                "bucket",
                format!("expected a width: {}", BucketWidth::CHOICES),
            ));
        }
    };
    let bucket = match (bucket, req.max_points) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_value(
                "max_points",
                "give bucket or max_points, not both",
            ));
        }
        (Some(b), None) => b,
        (None, points) => {
            let points = points.unwrap_or(1_000);
            if !(1..=MAX_BUCKETS).contains(&points) {
                return Err(ApiError::invalid_value(
                    "max_points",
                    format!("must be between 1 and {MAX_BUCKETS}"),
                ));
            }
            let from = time_param(Some(&from_raw), "from")?;
            let to = time_param(Some(&to_raw), "to")?;
            BucketWidth::for_points((to - from).num_milliseconds(), points)
        }
    };
    let (from, to) = agg_range(&state, Some(&from_raw), Some(&to_raw), bucket)?;
    if req.attributes.is_empty() || req.attributes.len() > MAX_QUERY_ATTRIBUTES {
        return Err(ApiError::invalid_value(
            "attributes",
            format!("name 1 to {MAX_QUERY_ATTRIBUTES} attributes"),
        ));
    }
    let mut attrs: Vec<(String, AttrRef)> = Vec::with_capacity(req.attributes.len());
    for (i, raw) in req.attributes.iter().enumerate() {
        let field = format!("attributes[{i}]");
        let (name, attr) = attribute(&state, Some(raw)).await.map_err(|e| match e {
            ApiError::UnknownReference { message, .. } => ApiError::UnknownReference {
                message,
                field: field.clone(),
            },
            ApiError::BadRequest { message, .. } => ApiError::bad_field(field.clone(), message),
            other => other,
        })?;
        if !req.func.applies_to(attr.data_type) {
            return Err(ApiError::invalid_value(
                field,
                format!(
                    "`{name}` holds {} values; only count applies",
                    attr.data_type
                ),
            ));
        }
        if !attrs
            .iter()
            .any(|(_, a)| a.attribute_id == attr.attribute_id)
        {
            attrs.push((name, attr));
        }
    }
    let entity_ids = match (req.entity_ids, req.entity_type) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_value(
                "entity_type",
                "give entity_ids or entity_type, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_field(
                "entity_ids",
                "required: entity_ids or entity_type",
            ));
        }
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_QUERY_ENTITIES {
                return Err(ApiError::invalid_value(
                    "entity_ids",
                    format!("name 1 to {MAX_QUERY_ENTITIES} entities"),
                ));
            }
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let known = state.inner.store.live_entity_ids(tenant, &unique).await?;
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !known.contains(id)) {
                return Err(ApiError::UnknownReference {
                    message: format!("entity {id} not found"),
                    field: format!("entity_ids[{i}]"),
                });
            }
            let mut seen = std::collections::HashSet::new();
            ids.into_iter().filter(|id| seen.insert(*id)).collect()
        }
        (None, Some(t)) => {
            entities::validate_entity_type(&t, "entity_type")
                .map_err(|e| ApiError::bad_field("entity_type", e.to_string()))?;
            let limit = i64::try_from(MAX_QUERY_ENTITIES).unwrap_or(100);
            let (page, _) = state
                .read(from_, tenant, move |tx| {
                    let t = t.clone();
                    async move { entities::ids_of_type(tx, tenant, &t, limit).await }.boxed()
                })
                .await?;
            if page.len() > MAX_QUERY_ENTITIES {
                return Err(ApiError::invalid_value(
                    "entity_type",
                    format!(
                        "the type has more than {MAX_QUERY_ENTITIES} entities; name them with entity_ids"
                    ),
                ));
            }
            page
        }
    };
    let q = AggregateQuery {
        attribute_ids: attrs.iter().map(|(_, a)| a.attribute_id).collect(),
        from,
        to,
        bucket,
        func: req.func,
        scope: Scope::Entities(entity_ids.clone()),
        per_series: true,
    };
    let (mut found, target) = state
        .read(from_, tenant, move |tx| {
            let q = q.clone();
            async move { atlas_store::aggregate::aggregate(tx, tenant, &q).await }.boxed()
        })
        .await?;
    let mut series = Vec::with_capacity(entity_ids.len() * attrs.len());
    for id in &entity_ids {
        for (name, a) in &attrs {
            series.push(QuerySeries {
                entity_id: *id,
                attribute: name.clone(),
                points: found.remove(&(*id, a.attribute_id)).unwrap_or_default(),
            });
        }
    }
    Ok(served(
        axum::Json(QueryResult {
            func: req.func,
            bucket,
            series,
        })
        .into_response(),
        target,
        None,
    ))
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
