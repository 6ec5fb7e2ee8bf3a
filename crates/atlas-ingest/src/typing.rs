//! Turning JSON telemetry into typed rows: each value goes into exactly the one column of its
//! attribute's data_type, or the whole request is refused with the field at fault.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use atlas_store::TenantId;
use atlas_store::admin::{Attribute, DataType};
use atlas_store::entities::check_storable_json;

/// Largest integer part of a decimal: DECIMAL(20,5) holds 15 integer digits.
const MAX_DECIMAL_INTEGER_DIGITS: u32 = 15;
/// Fraction digits DECIMAL(20,5) keeps.
const DECIMAL_SCALE: u32 = 5;
/// Longest string value, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// What an attribute's values must look like.
#[derive(Debug)]
pub struct AttrRule {
    /// Attribute id.
    pub id: i64,
    /// Attribute name.
    pub name: String,
    /// Value type.
    pub data_type: DataType,
    /// Decimals with more than 5 fraction digits are rounded instead of refused.
    pub allow_rounding: bool,
    /// How string values are checked.
    pub validation: Validation,
}

/// The check of a string attribute's values.
#[derive(Debug)]
pub enum Validation {
    /// No validation_regex.
    Any,
    /// Values must match.
    Matches(regex::Regex),
    /// A stored regex that no longer compiles: every value is refused until it is fixed.
    Broken,
}

/// The attribute catalogue, indexed for typing.
#[derive(Debug, Default)]
pub struct Catalog {
    by_name: HashMap<String, Arc<AttrRule>>,
    by_id: HashMap<i64, Arc<AttrRule>>,
}

impl Catalog {
    /// Indexes attributes (an attribute whose stored regex no longer compiles is refused
    /// values until fixed, rather than accepted unchecked).
    pub fn new(attributes: Vec<Attribute>) -> Self {
        let mut c = Catalog::default();
        for a in attributes {
            let allow_rounding = a.allow_rounding;
            let validation = match a.validation_regex.as_deref() {
                None => Validation::Any,
                Some(p) => match atlas_store::admin::compile_validation_regex(p) {
                    Ok(r) => Validation::Matches(r),
                    Err(_) => {
                        tracing::warn!(attribute = %a.attribute_name, "stored validation_regex does not compile; values are refused");
                        Validation::Broken
                    }
                },
            };
            let rule = Arc::new(AttrRule {
                id: a.attribute_id,
                name: a.attribute_name.clone(),
                data_type: a.data_type,
                allow_rounding,
                validation,
            });
            c.by_id.insert(a.attribute_id, Arc::clone(&rule));
            c.by_name.insert(a.attribute_name, rule);
        }
        c
    }

    /// An attribute by name, or by id when the key is all digits.
    pub fn resolve(&self, key: &str) -> Option<&Arc<AttrRule>> {
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            return key.parse::<i64>().ok().and_then(|id| self.by_id.get(&id));
        }
        self.by_name.get(key)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A typed value: exactly one column of the time series.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    /// `value` (string attributes).
    Text(String),
    /// `value_int`.
    Int(i64),
    /// `value_decimal`.
    Decimal(Decimal),
    /// `value_bool`.
    Bool(bool),
    /// `value_date`.
    Date(NaiveDate),
    /// `value_timestamp`.
    Timestamp(DateTime<Utc>),
    /// `value` holding a JSON document (serialized).
    Json(String),
}

/// One reading ready for staging.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The tenant (from the API key).
    pub tenant: TenantId,
    /// The entity.
    pub entity_id: i64,
    /// The attribute.
    pub attribute_id: i64,
    /// The value.
    pub value: Typed,
    /// The reading's own time.
    pub ingested_at: DateTime<Utc>,
}

/// A refused value or reading, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `[3].values.temperature`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The entity does not exist for this tenant (a 404, not a 422).
    pub not_found: bool,
    /// Why, as a metric label: `unknown_attribute`, `invalid_value`, `time_out_of_range`,
    /// `unknown_entity`, `no_values`.
    pub reason: &'static str,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            not_found: false,
            reason,
        }
    }
}

fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text)
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Types one JSON value for an attribute.
pub fn type_value(rule: &AttrRule, v: &Value) -> Result<Typed, String> {
    let expected = |what: &str| {
        format!(
            "`{}` has data_type {}: expected {what}, got {}",
            rule.name,
            rule.data_type,
            json_kind(v)
        )
    };
    match rule.data_type {
        DataType::Integer => {
            let text = number_text(v).ok_or_else(|| expected("an integer"))?;
            let d = parse_decimal(&text)
                .ok_or_else(|| format!("{text} is out of range for an integer"))?;
            if !d.fract().is_zero() {
                return Err(format!("{text} is not an integer (no fractions allowed)"));
            }
            i64::try_from(d.trunc())
                .map(Typed::Int)
                .map_err(|_| format!("{text} is outside the 64-bit integer range"))
        }
        DataType::Decimal => {
            let text = number_text(v).ok_or_else(|| expected("a finite number"))?;
            let d = parse_decimal(&text)
                .ok_or_else(|| format!("{text} is out of range for a decimal"))?;
            if d.abs() >= Decimal::from(10u64.pow(MAX_DECIMAL_INTEGER_DIGITS)) {
                return Err(format!(
                    "{text} has more than {MAX_DECIMAL_INTEGER_DIGITS} integer digits"
                ));
            }
            let d = d.normalize();
            if d.scale() > DECIMAL_SCALE {
                if rule.allow_rounding {
                    return Ok(Typed::Decimal(d.round_dp(DECIMAL_SCALE)));
                }
                return Err(format!(
                    "{text} has more than {DECIMAL_SCALE} fraction digits (set `allow_rounding` on the attribute to round such values instead)"
                ));
            }
            Ok(Typed::Decimal(d))
        }
        DataType::Boolean => v
            .as_bool()
            .map(Typed::Bool)
            .ok_or_else(|| expected("true or false")),
        DataType::Date => {
            let s = v
                .as_str()
                .ok_or_else(|| expected("a date string YYYY-MM-DD"))?;
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(Typed::Date)
                .map_err(|e| format!("`{s}` is not a date YYYY-MM-DD: {e}"))
        }
        DataType::Timestamp => {
            let s = v
                .as_str()
                .ok_or_else(|| expected("an RFC 3339 timestamp string"))?;
            DateTime::parse_from_rfc3339(s)
                .map(|t| Typed::Timestamp(t.with_timezone(&Utc)))
                .map_err(|e| format!("`{s}` is not an RFC 3339 timestamp: {e}"))
        }
        DataType::String => {
            let s = v.as_str().ok_or_else(|| expected("a string"))?;
            if s.len() > MAX_STRING_BYTES {
                return Err(format!("longer than {MAX_STRING_BYTES} bytes"));
            }
            if s.contains('\0') {
                return Err("must not contain the NUL character (\\u0000)".into());
            }
            // `is_match` searches: a regex that must cover the whole value says so with ^…$.
            match &rule.validation {
                Validation::Any => {}
                Validation::Matches(r) if r.is_match(s) => {}
                Validation::Matches(_) => {
                    return Err(format!(
                        "`{s}` does not match the attribute's validation_regex"
                    ));
                }
                Validation::Broken => {
                    return Err(
                        "the attribute's validation_regex is invalid; fix the attribute".into(),
                    );
                }
            }
            Ok(Typed::Text(s.to_owned()))
        }
        DataType::Json => {
            check_storable_json(v, "").map_err(|e| e.to_string())?;
            Ok(Typed::Json(v.to_string()))
        }
    }
}

/// Hands out receipt times, the times of readings sent without `ts`: successive
/// microseconds, none before now and none twice in this process, so readings received at the
/// same moment - in one request or in two - cannot meet at one primary key (the second would
/// be taken for a replay: acknowledged, and not stored).
#[derive(Debug, Default)]
pub struct ReceiptClock(std::sync::atomic::AtomicI64);

impl ReceiptClock {
    /// The first of `n` (at least one) successive microseconds handed out to the caller alone.
    pub fn reserve(&self, n: usize) -> DateTime<Utc> {
        use std::sync::atomic::Ordering;
        let n = i64::try_from(n.max(1)).unwrap_or(i64::MAX / 4);
        let now = Utc::now().timestamp_micros();
        let last = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last.saturating_add(1)).saturating_add(n - 1))
            })
            .unwrap_or_else(|last| last);
        let first = now.max(last.saturating_add(1));
        DateTime::from_timestamp_micros(first).unwrap_or_else(Utc::now)
    }

    /// The receipt time for `readings`: microseconds reserved for those without `ts` (which
    /// [`type_readings`] gives them in order), or just now when every reading has its own.
    pub fn reserve_for(&self, readings: &[Reading]) -> DateTime<Utc> {
        match readings.iter().filter(|r| r.ts.is_none()).count() {
            0 => Utc::now(),
            untimed => self.reserve(untimed),
        }
    }
}

/// Limits a reading's time must respect.
#[derive(Debug, Clone)]
pub struct TimeRules {
    /// The server's receipt time: readings without `ts` take it and the microseconds after it,
    /// in order (reserve them with [`ReceiptClock`]).
    pub now: DateTime<Utc>,
    /// How far into the future a `ts` may be.
    pub max_future: chrono::Duration,
    /// The time ranges that have partitions, `[from, to)`.
    pub coverage: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl TimeRules {
    /// Checks a reading time (epoch milliseconds), returning it as a timestamp, or what is
    /// wrong with it (the caller names the field).
    pub fn check(&self, ts_ms: Option<i64>) -> Result<DateTime<Utc>, String> {
        let at = match ts_ms {
            None => self.now,
            Some(ms) => Utc
                .timestamp_millis_opt(ms)
                .single()
                .ok_or_else(|| format!("{ms} is not a valid epoch-milliseconds time"))?,
        };
        if at > self.now + self.max_future {
            return Err(format!(
                "{at} is more than {} s in the future",
                self.max_future.num_seconds()
            ));
        }
        // 10^9..10^11 read as milliseconds is early 1970; read as seconds, 2001 to 5138.
        if let Some(ms) = ts_ms
            && (1_000_000_000..100_000_000_000).contains(&ms)
        {
            return Err(format!(
                "{ms} looks like epoch seconds, but `ts` is epoch milliseconds (send {})",
                ms.saturating_mul(1000)
            ));
        }
        if !self.coverage.iter().any(|(lo, hi)| *lo <= at && at < *hi) {
            let oldest = self.coverage.iter().map(|(lo, _)| *lo).min();
            return Err(match oldest {
                Some(lo) if at < lo => format!(
                    "{at} is before the stored time range, which starts at {lo} (to store \
                     older readings, an operator first runs: atlas maintain backfill --since {})",
                    at.date_naive()
                ),
                _ => format!("{at} is outside the stored time range (no partition covers it)"),
            });
        }
        Ok(at)
    }
}

/// An integer as JSON Schema means it: also an integral number written with a fraction
/// (`5.0`); `5.5` and out-of-range values are refused.
pub fn integral_i64<'de, D: serde::Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n: serde_json::Number = serde::Deserialize::deserialize(de)?;
    let text = n.to_string();
    let d =
        parse_decimal(&text).ok_or_else(|| D::Error::custom(format!("{text} is out of range")))?;
    if !d.fract().is_zero() {
        return Err(D::Error::custom(format!("expected an integer, got {text}")));
    }
    i64::try_from(d.trunc())
        .map_err(|_| D::Error::custom(format!("{text} is outside the 64-bit integer range")))
}

/// [`integral_i64`] for an optional field: `null` is the same as absent.
pub fn integral_i64_opt<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    use serde::de::IntoDeserializer;
    let n: Option<serde_json::Number> = serde::Deserialize::deserialize(de)?;
    n.map(|n| {
        integral_i64(serde_json::Value::Number(n).into_deserializer())
            .map_err(<D::Error as serde::de::Error>::custom)
    })
    .transpose()
}

/// One telemetry item as posted: `{"entity_id", "ts"?, "values": {...}}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// The entity.
    #[serde(deserialize_with = "integral_i64")]
    pub entity_id: i64,
    /// Epoch milliseconds; the receipt time when absent.
    #[serde(default, deserialize_with = "integral_i64_opt")]
    pub ts: Option<i64>,
    /// Attribute name (or id) → value.
    pub values: serde_json::Map<String, Value>,
}

/// A field of a reading: `prefix` is the reading's JSON path (`""` for a single object,
/// `"[i]"` in an array), `field` the path inside it.
pub fn field_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Types every value of every reading, or names the first field at fault. `prefix(i)` gives
/// the JSON path of reading `i` (`""` for a single object, `"[i]"` for an array).
///
/// One (entity, attribute, time) is one stored value, so two values meeting there would
/// become one and the other would be lost although acknowledged: readings without `ts` get
/// successive microseconds from the receipt time, in order, and two different values of one
/// attribute of one entity at one `ts` are refused (naming the second). The same value twice
/// is a repeat and is stored once.
pub fn type_readings(
    tenant: TenantId,
    readings: &[Reading],
    catalog: &Catalog,
    time: &TimeRules,
    prefix: &dyn Fn(usize) -> String,
) -> Result<Vec<Row>, FieldError> {
    let mut rows: Vec<Row> = Vec::with_capacity(readings.iter().map(|r| r.values.len()).sum());
    // Values can only meet within a reading or between readings of one entity and time, so
    // the check hashes readings, not values: (entity, time) → the last reading there, each
    // reading → the one before it there, and each reading's first row.
    let mut last_at: HashMap<(i64, DateTime<Utc>), usize> = HashMap::with_capacity(readings.len());
    let mut earlier: Vec<Option<usize>> = Vec::with_capacity(readings.len());
    let mut starts: Vec<usize> = Vec::with_capacity(readings.len() + 1);
    let mut untimed = 0;
    for (i, r) in readings.iter().enumerate() {
        // Field paths are built only for a refusal: formatting them for every value cost an
        // allocation or two per value on the ingest path.
        let path = |field: &str| field_path(&prefix(i), field);
        if r.entity_id < 1 {
            return Err(FieldError {
                not_found: true,
                ..FieldError::new(
                    path("entity_id"),
                    format!("entity {} not found", r.entity_id),
                    "unknown_entity",
                )
            });
        }
        let mut at = time
            .check(r.ts)
            .map_err(|m| FieldError::new(path("ts"), m, "time_out_of_range"))?;
        if r.ts.is_none() {
            at += chrono::Duration::microseconds(untimed);
            untimed += 1;
        }
        earlier.push(last_at.insert((r.entity_id, at), i));
        starts.push(rows.len());
        if r.values.is_empty() {
            return Err(FieldError::new(
                path("values"),
                "at least one value is required",
                "no_values",
            ));
        }
        for (key, v) in &r.values {
            let field = || path(&format!("values.{key}"));
            let rule = catalog.resolve(key).ok_or_else(|| {
                FieldError::new(
                    field(),
                    format!(
                        "unknown attribute `{key}`: define it first (POST /v1/admin/attributes, \
                         or atlas attribute define {key} --type TYPE)"
                    ),
                    "unknown_attribute",
                )
            })?;
            let value =
                type_value(rule, v).map_err(|m| FieldError::new(field(), m, "invalid_value"))?;
            if let Some(first) = same_key(&rows, &starts, &earlier, i, rule.id)
                && rows[first.0].value != value
            {
                let there = match prefix(first.1) {
                    p if p.is_empty() || first.1 == i => "this reading".to_owned(),
                    p => p,
                };
                return Err(FieldError::new(
                    field(),
                    format!(
                        "a second, different value of entity {}'s `{key}` at the same time \
                             as in {there}: one value per entity, attribute and ts",
                        r.entity_id
                    ),
                    "conflicting_value",
                ));
            }
            rows.push(Row {
                tenant,
                entity_id: r.entity_id,
                attribute_id: rule.id,
                value,
                ingested_at: at,
            });
        }
    }
    Ok(rows)
}

/// The first row already typed for `attribute` at reading `i`'s entity and time - in
/// reading `i` itself or in an earlier reading of the same entity and time - with its
/// reading: `(row, reading)`.
fn same_key(
    rows: &[Row],
    starts: &[usize],
    earlier: &[Option<usize>],
    i: usize,
    attribute: i64,
) -> Option<(usize, usize)> {
    let mut reading = Some(i);
    let mut found = None;
    while let Some(j) = reading {
        let end = starts.get(j + 1).copied().unwrap_or(rows.len());
        let from = starts.get(j).copied().unwrap_or(end);
        if let Some(k) = (from..end).find(|&k| rows[k].attribute_id == attribute) {
            found = Some((k, j));
        }
        reading = earlier.get(j).copied().flatten();
    }
    found
}

/// The index of the first reading whose entity is not a live entity of the tenant (RLS makes
/// another tenant's id invisible, so it counts as unknown).
pub async fn first_unknown_entity(
    store: &atlas_store::Store,
    tenant: TenantId,
    readings: &[Reading],
) -> Result<Option<usize>, atlas_store::StoreError> {
    let ids: Vec<i64> = readings
        .iter()
        .map(|r| r.entity_id)
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    let known = store.live_entity_ids(tenant, &ids).await?;
    Ok(readings.iter().position(|r| !known.contains(&r.entity_id)))
}

#[cfg(test)]
mod tests {
    use super::ReceiptClock;

    #[test]
    fn receipt_times_are_never_handed_out_twice_and_never_before_now() {
        let clock = std::sync::Arc::new(ReceiptClock::default());
        let before = chrono::Utc::now().timestamp_micros();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let clock = std::sync::Arc::clone(&clock);
                std::thread::spawn(move || {
                    (0..2_000)
                        .map(|i| {
                            let n = 1 + (t + i) % 5;
                            (clock.reserve(n).timestamp_micros(), n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ranges: Vec<(i64, i64)> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .map(|(first, n)| (first, first + i64::try_from(n).unwrap_or(0)))
            .collect();
        assert_eq!(ranges.len(), 16_000);
        ranges.sort_unstable();
        assert!(ranges[0].0 >= before);
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlapping reservations {w:?}");
        }
        // Reservations keep close to the clock: 16 000 of at most 5 µs each.
        let last = ranges.last().map_or(0, |r| r.1);
        assert!(last <= chrono::Utc::now().timestamp_micros() + 80_000);
    }
}
