//! The read path of one tenant: hot attributes, search, newest value, series, aggregates and
//! attribute statistics. Like [`crate::entities`], every function runs in the tenant-scoped
//! transaction and every statement also names the tenant, so partitions prune and the tenant
//! indexes apply. Values come back typed by their attribute's data type, in the same JSON form
//! as the hot projection (8, not "8"; decimals without trailing zeros; RFC 3339 times).

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;

use crate::admin::DataType;
pub use crate::aggregate::{AggFn, AggregateQuery, Bucket, BucketWidth, Scope};
use crate::{Cached, StoreError, TenantId, Tx};

/// An attribute a read is about (resolved from the catalogue by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrRef {
    /// Its id.
    pub attribute_id: i64,
    /// Its type: which column holds its values.
    pub data_type: DataType,
}

/// An entity's hot attributes (its projection).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HotAttributes {
    /// The entity.
    pub entity_id: i64,
    /// Newest value of each hot attribute, typed.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: serde_json::Value,
    /// Event time (epoch milliseconds) of each value in `attributes`.
    pub ts: std::collections::BTreeMap<String, i64>,
}

/// One reading of an attribute.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Point {
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// Event time, RFC 3339 with microseconds (exact; also the series cursor).
    pub time: String,
    /// The value, typed by the attribute's data type (any JSON type).
    pub value: serde_json::Value,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    /// The entity.
    pub entity_id: i64,
    /// Its type.
    pub entity_type: String,
    /// Its hot attributes.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: serde_json::Value,
}

/// Search conditions on hot attributes; every given one must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Search {
    /// `hot_attrs @> contains`.
    pub contains: Option<serde_json::Value>,
    /// `hot_attrs ? has_key`.
    pub has_key: Option<String>,
    /// `hot_attrs ?| has_any`.
    pub has_any: Option<Vec<String>>,
    /// `hot_attrs ?& has_all`.
    pub has_all: Option<Vec<String>>,
    /// Only entities of this type.
    pub entity_type: Option<String>,
}

/// The tenant's usage of one attribute, from the statistics view (refreshed periodically).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttributeStats {
    /// The attribute.
    pub attribute_id: i64,
    /// Its name.
    pub attribute_name: String,
    /// Entities with at least one value.
    pub distinct_entities: i64,
    /// Values stored.
    pub total_values: i64,
    /// Oldest value's time.
    pub oldest: Option<DateTime<Utc>>,
    /// Newest value's time.
    pub newest: Option<DateTime<Utc>>,
}

/// The typed columns of the time series, decimals as exact text.
macro_rules! value_columns {
    () => {
        "SELECT ev.value, ev.value_int, trim_scale(ev.value_decimal)::text AS value_decimal, \
         ev.value_bool, ev.value_date, ev.value_timestamp, ev.ingested_at FROM public.entity_values_ts ev "
    };
}

/// The hot-attributes statement ($1 tenant, $2 entity); public so tests can EXPLAIN it.
pub const HOT_SQL: &str = "SELECT coalesce(j.hot_attrs, '{}'::jsonb), coalesce(j.hot_attrs_at, '{}'::jsonb) \
     FROM public.entities e \
     LEFT JOIN public.entity_jsonb j ON j.entity_id = e.entity_id AND j.tenant_id = e.tenant_id \
     WHERE e.tenant_id = $1 AND e.entity_id = $2 AND NOT e.is_deleted";

/// The newest-value statement ($1 tenant, $2 entity, $3 attribute): one row when the tenant
/// has the live entity (its value columns NULL when it has no value yet), none otherwise. The
/// value is read by the primary key (tenant, entity, attribute, ingested_at) backwards: the
/// newest partition first, stopping at the first row.
pub const LATEST_SQL: &str = concat!(
    "SELECT l.value, l.value_int, l.value_decimal, l.value_bool, l.value_date, \
            l.value_timestamp, l.ingested_at \
     FROM public.entities e LEFT JOIN LATERAL (",
    value_columns!(),
    "WHERE ev.tenant_id = $1 AND ev.entity_id = $2 AND ev.attribute_id = $3 \
     ORDER BY ev.ingested_at DESC LIMIT 1) l ON true \
     WHERE e.tenant_id = $1 AND e.entity_id = $2 AND NOT e.is_deleted"
);

/// The series statement, oldest first ($1 tenant, $2 entity, $3 attribute, $4 from,
/// $5 to, $6 cursor, $7 limit).
pub const SERIES_ASC_SQL: &str = concat!(
    value_columns!(),
    "WHERE ev.tenant_id = $1 AND ev.entity_id = $2 AND ev.attribute_id = $3 \
       AND ev.ingested_at >= $4 AND ev.ingested_at < $5 \
       AND ($6::timestamptz IS NULL OR ev.ingested_at > $6) \
     ORDER BY ev.ingested_at ASC LIMIT $7"
);

/// The series statement, newest first (parameters as [`SERIES_ASC_SQL`]).
pub const SERIES_DESC_SQL: &str = concat!(
    value_columns!(),
    "WHERE ev.tenant_id = $1 AND ev.entity_id = $2 AND ev.attribute_id = $3 \
       AND ev.ingested_at >= $4 AND ev.ingested_at < $5 \
       AND ($6::timestamptz IS NULL OR ev.ingested_at < $6) \
     ORDER BY ev.ingested_at DESC LIMIT $7"
);

/// RFC 3339 in UTC with microseconds, as the projection writes times.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn number(text: &str) -> Result<serde_json::Number, StoreError> {
    serde_json::from_str::<serde_json::Number>(text)
        .map_err(|e| StoreError::Corrupt(format!("numeric `{text}` is not a JSON number: {e}")))
}

/// The value of a time-series row as JSON, from the column its data type uses.
fn typed_value(row: &tokio_postgres::Row, t: DataType) -> Result<serde_json::Value, StoreError> {
    use serde_json::Value;
    let missing = || StoreError::Corrupt(format!("a {t} value is missing its column"));
    Ok(match t {
        DataType::String => Value::String(
            row.try_get::<_, Option<String>>("value")?
                .ok_or_else(missing)?,
        ),
        DataType::Json => {
            let text = row
                .try_get::<_, Option<String>>("value")?
                .ok_or_else(missing)?;
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("stored json value: {e}")))?
        }
        DataType::Integer => Value::from(
            row.try_get::<_, Option<i64>>("value_int")?
                .ok_or_else(missing)?,
        ),
        DataType::Decimal => Value::Number(number(
            &row.try_get::<_, Option<String>>("value_decimal")?
                .ok_or_else(missing)?,
        )?),
        DataType::Boolean => Value::Bool(
            row.try_get::<_, Option<bool>>("value_bool")?
                .ok_or_else(missing)?,
        ),
        DataType::Date => Value::String(
            row.try_get::<_, Option<NaiveDate>>("value_date")?
                .ok_or_else(missing)?
                .format("%Y-%m-%d")
                .to_string(),
        ),
        DataType::Timestamp => Value::String(rfc3339(
            row.try_get::<_, Option<DateTime<Utc>>>("value_timestamp")?
                .ok_or_else(missing)?,
        )),
    })
}

fn point(row: &tokio_postgres::Row, t: DataType) -> Result<Point, StoreError> {
    let at: DateTime<Utc> = row.try_get("ingested_at")?;
    Ok(Point {
        ts: at.timestamp_millis(),
        time: rfc3339(at),
        value: typed_value(row, t)?,
    })
}

/// Whether the tenant has this live entity.
pub async fn entity_exists(
    tx: &Tx<'_>,
    tenant: TenantId,
    entity_id: i64,
) -> Result<bool, StoreError> {
    Ok(tx
        .cached_query_opt(
            "SELECT 1 FROM public.entities WHERE tenant_id = $1 AND entity_id = $2 AND NOT is_deleted",
            &[&tenant.0, &entity_id],
        )
        .await?
        .is_some())
}

/// An entity's hot attributes; `None` when the tenant has no such live entity.
pub async fn hot_attributes(
    tx: &Tx<'_>,
    tenant: TenantId,
    entity_id: i64,
) -> Result<Option<HotAttributes>, StoreError> {
    let row = tx
        .cached_query_opt(HOT_SQL, &[&tenant.0, &entity_id])
        .await?;
    let Some(row) = row else { return Ok(None) };
    let attributes: serde_json::Value = row.try_get(0)?;
    let at: serde_json::Value = row.try_get(1)?;
    let ts = at
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_i64().map(|us| (k.clone(), us.div_euclid(1000))))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(HotAttributes {
        entity_id,
        attributes,
        ts,
    }))
}

/// Live entities whose hot attributes match `q`, by id after `after`, at most `limit`.
/// Runs `search_entities`, which the GIN index serves despite RLS.
pub async fn search(
    tx: &Tx<'_>,
    q: &Search,
    after: i64,
    limit: i64,
) -> Result<Vec<SearchHit>, StoreError> {
    let limit = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
    let rows = tx
        .cached_query(
            "SELECT entity_id, entity_type, hot_attrs FROM public.search_entities($1, $2, $3, $4, $5, $6, $7)",
            &[
                &q.contains,
                &q.has_key,
                &q.has_any,
                &q.has_all,
                &q.entity_type,
                &after,
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SearchHit {
                entity_id: r.try_get(0)?,
                entity_type: r.try_get(1)?,
                attributes: r.try_get(2)?,
            })
        })
        .collect()
}

/// The newest value of an attribute for an entity: `Ok(None)` when the tenant has no such
/// live entity, `Ok(Some(None))` when the entity has no value of it yet.
pub async fn latest(
    tx: &Tx<'_>,
    tenant: TenantId,
    entity_id: i64,
    attr: AttrRef,
) -> Result<Option<Option<Point>>, StoreError> {
    // One statement: the entity check and the value together (on Citus each statement is a
    // round trip to the tenant's worker).
    let Some(row) = tx
        .cached_query_opt(LATEST_SQL, &[&tenant.0, &entity_id, &attr.attribute_id])
        .await?
    else {
        return Ok(None);
    };
    let stored: Option<DateTime<Utc>> = row.try_get(6)?;
    Ok(Some(match stored {
        Some(_) => Some(point(&row, attr.data_type)?),
        None => None,
    }))
}

/// Series query: an entity's values of one attribute in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    /// The entity.
    pub entity_id: i64,
    /// The attribute.
    pub attr: AttrRef,
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
    /// Continue after (ascending) or before (descending) this time.
    pub cursor: Option<DateTime<Utc>>,
    /// At most this many.
    pub limit: i64,
    /// Newest first.
    pub descending: bool,
}

/// An entity's values in a time range; `None` when the tenant has no such live entity.
pub async fn series(
    tx: &Tx<'_>,
    tenant: TenantId,
    q: &SeriesQuery,
) -> Result<Option<Vec<Point>>, StoreError> {
    if !entity_exists(tx, tenant, q.entity_id).await? {
        return Ok(None);
    }
    let sql = if q.descending {
        SERIES_DESC_SQL
    } else {
        SERIES_ASC_SQL
    };
    let rows = tx
        .cached_query(
            sql,
            &[
                &tenant.0,
                &q.entity_id,
                &q.attr.attribute_id,
                &q.from,
                &q.to,
                &q.cursor,
                &q.limit,
            ],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| point(r, q.attr.data_type))
            .collect::<Result<_, _>>()?,
    ))
}

/// Buckets of `fn(value)` over the query's attributes and scope, from rollups and raw values
/// (see [`crate::aggregate`]); `None` when the scope names an entity the tenant does not have.
pub async fn aggregate(
    tx: &Tx<'_>,
    tenant: TenantId,
    q: &AggregateQuery,
) -> Result<Option<Vec<Bucket>>, StoreError> {
    if let Scope::Entity(id) = q.scope
        && !entity_exists(tx, tenant, id).await?
    {
        return Ok(None);
    }
    let mut series = crate::aggregate::aggregate(tx, tenant, q).await?;
    Ok(Some(series.remove(&(0, 0)).unwrap_or_default()))
}

/// The tenant's attribute statistics (through the tenant-fenced view of the MV).
pub async fn attribute_stats(tx: &Tx<'_>) -> Result<Vec<AttributeStats>, StoreError> {
    let rows = tx
        .cached_query(
            "SELECT attribute_id, attribute_name::text, distinct_entities, total_values, oldest, newest \
             FROM public.tenant_attribute_stats ORDER BY attribute_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AttributeStats {
                attribute_id: r.try_get(0)?,
                attribute_name: r.try_get(1)?,
                distinct_entities: r.try_get(2)?,
                total_values: r.try_get(3)?,
                oldest: r.try_get(4)?,
                newest: r.try_get(5)?,
            })
        })
        .collect()
}

/// In the analytics store: how far (ms) the newest change it applied for `slot` is behind now,
/// by the primary's commit time; None when the sink has applied nothing yet.
pub async fn analytics_lag_ms(tx: &Tx<'_>, slot: &str) -> Result<Option<i64>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT (extract(epoch FROM clock_timestamp() - commit_ts) * 1000)::bigint \
             FROM cdc.sink_progress WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A reading the flush could not store, with why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Its id.
    pub dead_letter_id: i64,
    /// The entity it was for.
    pub entity_id: Option<i64>,
    /// The attribute's name (absent when the attribute no longer exists).
    pub attribute: Option<String>,
    /// The value as text.
    pub value: Option<String>,
    /// Its event time.
    pub ingested_at: Option<DateTime<Utc>>,
    /// Why it was not stored.
    pub reason: String,
    /// When it failed.
    pub failed_at: DateTime<Utc>,
}

/// The tenant's dead letters, newest first, after `before` (the last page's `(failed_at,
/// dead_letter_id)`), at most `limit`.
pub async fn dead_letters(
    tx: &Tx<'_>,
    tenant: TenantId,
    before: Option<(DateTime<Utc>, i64)>,
    limit: i32,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = tx
        .cached_query(
            "SELECT dead_letter_id, entity_id, attribute_name, value, ingested_at, reason, failed_at \
             FROM public.tenant_dead_letters($1, $2, $3, $4)",
            &[
                &tenant.0,
                &before.map(|b| b.0),
                &before.map(|b| b.1),
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                dead_letter_id: r.try_get(0)?,
                entity_id: r.try_get(1)?,
                attribute: r.try_get(2)?,
                value: r.try_get(3)?,
                ingested_at: r.try_get(4)?,
                reason: r.try_get(5)?,
                failed_at: r.try_get(6)?,
            })
        })
        .collect()
}
