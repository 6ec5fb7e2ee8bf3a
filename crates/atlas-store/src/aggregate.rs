//! Aggregates over any range and any bucket width, from rollups where they serve and raw
//! values where they do not.
//!
//! A request's range is covered by pieces: whole days from `rollup_1d`, whole hours from
//! `rollup_1h`, whole minutes from `rollup_1m`, and raw values for the rest (the partial
//! minutes at the edges). A level serves only when its width divides the requested bucket (so
//! each piece falls inside one bucket), and a piece whose bucket - or a finer bucket inside it
//! - is marked dirty (written since it was aggregated) is taken from the next finer level
//!   instead: a read equals aggregating the raw values whatever the maintainer has done yet.
//!   The pieces go to the database as ranges per level in one statement.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::admin::DataType;
use crate::decimal::Numeric;
use crate::{Cached, StoreError, TenantId, Tx};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AggFn {
    /// Mean of the values.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Sum of the values.
    Sum,
    /// Number of values (any type).
    Count,
    /// The bucket's earliest value.
    First,
    /// The bucket's newest value.
    Last,
}

impl AggFn {
    /// The accepted names, for messages.
    pub const CHOICES: &'static str = "one of avg, min, max, sum, count, first, last";

    /// Whether it needs values with a number (integers, decimals, booleans as 0/1).
    pub fn numeric(self) -> bool {
        !matches!(self, AggFn::Count)
    }

    /// Whether it applies to an attribute of this type.
    pub fn applies_to(self, t: DataType) -> bool {
        !self.numeric() || matches!(t, DataType::Integer | DataType::Decimal | DataType::Boolean)
    }
}

/// A bucket width: any whole number of milliseconds, buckets aligned in UTC on
/// 2000-01-01T00:00:00Z (so widths that divide a day start at midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketWidth(i64);

/// Units a width may be written in, largest first (`ms` before `m` when parsing).
const UNITS: [(&str, i64); 6] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The longest bucket: ten years.
const MAX_WIDTH_MS: i64 = 3_650 * 86_400_000;

impl BucketWidth {
    /// One minute.
    pub const MINUTE: BucketWidth = BucketWidth(60_000);
    /// One hour.
    pub const HOUR: BucketWidth = BucketWidth(3_600_000);
    /// One day.
    pub const DAY: BucketWidth = BucketWidth(86_400_000);

    /// A width of `ms` milliseconds (1 ms to ten years).
    pub fn from_millis(ms: i64) -> Option<Self> {
        (1..=MAX_WIDTH_MS).contains(&ms).then_some(Self(ms))
    }

    /// Its length in milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// What the API accepts, for messages.
    pub const CHOICES: &'static str = "a number with a unit - ms, s, m, h, d or w (30s, 2m, 90m, 1h, 1d) - \
         or whole milliseconds (60000), from 1 ms to 3650 d";

    /// The width that gives at most `max_points` buckets over `span_ms`: the smallest of the
    /// widths dashboards step through (1 s, 2 s, 5 s … 1 h, 2 h … 1 d, 7 d, 30 d) that does, so
    /// long ranges land on widths the rollups serve; beyond 30 d, whole days.
    pub fn for_points(span_ms: i64, max_points: i64) -> Self {
        const NICE: [i64; 22] = [
            1_000,
            2_000,
            5_000,
            10_000,
            15_000,
            30_000,
            60_000,
            120_000,
            300_000,
            600_000,
            900_000,
            1_800_000,
            3_600_000,
            7_200_000,
            10_800_000,
            21_600_000,
            43_200_000,
            86_400_000,
            172_800_000,
            604_800_000,
            1_209_600_000,
            2_592_000_000,
        ];
        let max_points = max_points.max(1);
        let need = ceil(span_ms.max(1), max_points) / max_points;
        let w = NICE
            .into_iter()
            .find(|w| *w >= need)
            .unwrap_or_else(|| ceil(need, 86_400_000));
        Self(w.min(MAX_WIDTH_MS))
    }
}

impl std::fmt::Display for BucketWidth {
    /// The largest unit that divides it: `90m`, `2h`, `1d`, `1500ms`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (unit, size) = UNITS
            .into_iter()
            .filter(|(u, _)| *u != "w")
            .find(|(_, size)| self.0 % size == 0)
            .unwrap_or(("ms", 1));
        write!(f, "{}{unit}", self.0 / size)
    }
}

impl std::str::FromStr for BucketWidth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a bucket width: {}", Self::CHOICES);
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 15 {
            return Err(bad());
        }
        let n: i64 = s[..digits].parse().map_err(|_| bad())?;
        let unit = &s[digits..];
        let size = if unit.is_empty() {
            1
        } else {
            UNITS
                .into_iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, size)| size)
                .ok_or_else(bad)?
        };
        n.checked_mul(size)
            .and_then(Self::from_millis)
            .ok_or_else(bad)
    }
}

impl<'de> serde::Deserialize<'de> for BucketWidth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A JSON number is milliseconds, as `$__interval_ms` sends it.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Self::from_millis(ms).ok_or_else(|| {
                serde::de::Error::custom(format!("{ms} is not a bucket width: {}", Self::CHOICES))
            }),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for BucketWidth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which entities an aggregate covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every live entity of the tenant.
    Tenant,
    /// One entity.
    Entity(i64),
    /// Live entities of one type.
    Type(String),
    /// These entities (the caller checked they are live).
    Entities(Vec<i64>),
}

/// One bucket of an aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bucket {
    /// Bucket start (UTC, aligned to the bucket width since 2000-01-01), epoch milliseconds.
    pub ts: i64,
    /// The aggregate of the values in `[ts, ts + bucket)`; exact decimal.
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub value: serde_json::Number,
    /// How many values the bucket holds.
    pub count: i64,
}

/// An aggregate over one or more attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateQuery {
    /// The attributes.
    pub attribute_ids: Vec<i64>,
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub bucket: BucketWidth,
    /// The function.
    pub func: AggFn,
    /// Which entities.
    pub scope: Scope,
    /// One series per (entity, attribute) instead of one over all of them.
    pub per_series: bool,
}

/// A rollup level: its mark level, width and table.
#[derive(Debug, Clone, Copy)]
struct Level {
    mark: i16,
    width: i64,
}

/// Most rows of one level per bucket and series the server combines itself (more are
/// grouped by the database).
const MAX_ROWS_PER_BUCKET: i64 = 4;

/// Coarsest first.
const LEVELS: [Level; 3] = [
    Level {
        mark: 3,
        width: 86_400_000,
    },
    Level {
        mark: 2,
        width: 3_600_000,
    },
    Level {
        mark: 1,
        width: 60_000,
    },
];

/// Buckets (start, epoch ms) written since they were aggregated, per level: a level's bucket
/// is stale when it, or a finer bucket inside it, is marked.
#[derive(Debug, Default, Clone)]
pub struct Dirty {
    /// Per mark level (index 0: minutes, 1: hours, 2: days).
    stale: [BTreeSet<i64>; 3],
}

impl Dirty {
    /// From marks `(level, bucket start ms)`.
    pub fn from_marks(marks: impl IntoIterator<Item = (i16, i64)>) -> Self {
        let mut d = Self::default();
        for (level, at) in marks {
            // A mark makes its own bucket and every coarser one holding it stale.
            for l in LEVELS.iter().filter(|l| l.mark >= level) {
                d.stale[usize::try_from(l.mark - 1).unwrap_or(0)].insert(floor(at, l.width));
            }
        }
        d
    }

    fn of(&self, level: Level) -> &BTreeSet<i64> {
        &self.stale[usize::try_from(level.mark - 1).unwrap_or(0)]
    }
}

fn floor(t: i64, w: i64) -> i64 {
    t - t.rem_euclid(w)
}

fn ceil(t: i64, w: i64) -> i64 {
    let f = floor(t, w);
    if f == t { t } else { f + w }
}

/// The pieces covering a range: `[start, end)` ranges (epoch ms) per level (days, hours,
/// minutes) and of raw values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cover {
    /// Ranges of whole buckets per level, coarsest first.
    pub levels: [Vec<(i64, i64)>; 3],
    /// Ranges of raw values.
    pub raw: Vec<(i64, i64)>,
}

fn push(v: &mut Vec<(i64, i64)>, lo: i64, hi: i64) {
    if lo >= hi {
        return;
    }
    match v.last_mut() {
        Some(last) if last.1 == lo => last.1 = hi,
        _ => v.push((lo, hi)),
    }
}

impl Cover {
    /// Covers `[from, to)` (epoch ms) for buckets of `width` ms: the coarsest levels whose
    /// width divides it, stale buckets refined to the next level, raw values for the rest.
    pub fn plan(from: i64, to: i64, width: i64, dirty: &Dirty) -> Self {
        let mut c = Cover::default();
        let first = LEVELS
            .iter()
            .position(|l| width % l.width == 0)
            .unwrap_or(LEVELS.len());
        c.fill(from, to, first, dirty);
        c
    }

    fn fill(&mut self, lo: i64, hi: i64, idx: usize, dirty: &Dirty) {
        if lo >= hi {
            return;
        }
        let Some(level) = LEVELS.get(idx).copied() else {
            push(&mut self.raw, lo, hi);
            return;
        };
        let (a, b) = (ceil(lo, level.width), floor(hi, level.width));
        if a >= b {
            self.fill(lo, hi, idx + 1, dirty);
            return;
        }
        self.fill(lo, a, idx + 1, dirty);
        let mut run = a;
        for &k in dirty.of(level).range(a..b) {
            push(&mut self.levels[idx], run, k);
            self.fill(k, k + level.width, idx + 1, dirty);
            run = k + level.width;
        }
        push(&mut self.levels[idx], run, b);
        self.fill(b, hi, idx + 1, dirty);
    }
}

/// The marks statement: open and claimed marks of the attributes from the day holding `$3`
/// to `$4` ($1 tenant, $2 attribute ids).
pub const MARKS_SQL: &str = "SELECT level, bucket FROM public.rollup_dirty \
     WHERE tenant_id = $1 AND attribute_id = ANY ($2) AND bucket >= $3 AND bucket < $4 \
     UNION ALL \
     SELECT level, bucket FROM public.rollup_claimed \
     WHERE tenant_id = $1 AND attribute_id = ANY ($2) AND bucket >= $3 AND bucket < $4";

/// The aggregate statement ($1 tenant, $2 attribute ids, $3 bucket ms, $4/$5 day ranges,
/// $6/$7 hour ranges, $8/$9 minute ranges, $10/$11 raw ranges (starts and ends), $12 the
/// scope's entity ids or type, $13/$14 the first and last raw time, so partitions outside
/// them are not even planned); public so tests can EXPLAIN it. `parts` says which of the four
/// sources (days, hours, minutes, raw) the cover uses: the others are left out. Values of
/// deleted entities are left out like the entities themselves. One row per series (one in
/// all without `per_series`) holding its pieces as arrays in one (unspecified) order: start,
/// value count, value (NULL for count) and the value's time (first and last only). A piece is
/// a row of its source, or - for the sources `grouped` says - the partial aggregate of the
/// source's rows in one bucket (of one series, with `per_series`).
pub fn aggregate_sql(
    func: AggFn,
    scope: &Scope,
    per_series: bool,
    parts: [bool; 4],
    grouped: [bool; 4],
) -> String {
    // Only fixed fragments are joined; every value is a bind parameter. `#` stands for the
    // table alias each part filters.
    let scope_sql = match scope {
        Scope::Entity(_) | Scope::Entities(_) => " AND #.entity_id = ANY ($12::bigint[])",
        Scope::Type(_) => {
            " AND #.entity_id IN (SELECT e.entity_id FROM public.entities e \
             WHERE e.tenant_id = $1 AND e.entity_type = $12::text AND NOT e.is_deleted)"
        }
        Scope::Tenant => {
            " AND #.entity_id NOT IN (SELECT e.entity_id FROM public.entities e \
             WHERE e.tenant_id = $1 AND e.is_deleted)"
        }
    };
    // Each part yields (entity, attribute, time, n, v, t): v and t are only what the function
    // reads, so no other numeric column is copied through the union.
    let (v_rollup, t_rollup, v_raw, t_raw) = match func {
        AggFn::Avg | AggFn::Sum => ("r.sum", "NULL::timestamptz", "v.x", "NULL::timestamptz"),
        AggFn::Min => ("r.min", "NULL::timestamptz", "v.x", "NULL::timestamptz"),
        AggFn::Max => ("r.max", "NULL::timestamptz", "v.x", "NULL::timestamptz"),
        AggFn::Count => (
            "NULL::numeric",
            "NULL::timestamptz",
            "NULL::numeric",
            "NULL::timestamptz",
        ),
        AggFn::First => ("r.first_value", "r.first_at", "v.x", "ev.ingested_at"),
        AggFn::Last => ("r.last_value", "r.last_at", "v.x", "ev.ingested_at"),
    };
    // A source's rows leave as pieces as they are, or - `grouped` - combined per bucket (and
    // per series) with partial aggregates the server can combine further.
    // Every column is named: Citus sends the union to a worker without the CTE's column list,
    // and the outer query reads the names.
    let piece = |alias: &str, at: &str, n: &str, v: &str, t: &str, body: &str, grouped: bool| {
        if !grouped {
            return [
                "SELECT ",
                alias,
                ".entity_id, ",
                alias,
                ".attribute_id, ",
                at,
                " AS at, ",
                n,
                " AS n, ",
                v,
                " AS v, ",
                t,
                " AS t ",
                body,
            ]
            .concat();
        }
        let (pv, pt) = match func {
            AggFn::Avg | AggFn::Sum => (["sum(", v, ")"].concat(), "NULL::timestamptz".into()),
            AggFn::Min => (["min(", v, ")"].concat(), "NULL::timestamptz".into()),
            AggFn::Max => (["max(", v, ")"].concat(), "NULL::timestamptz".into()),
            AggFn::Count => ("NULL::numeric".into(), "NULL::timestamptz".into()),
            AggFn::First => (
                ["(array_agg(", v, " ORDER BY ", t, "))[1]"].concat(),
                ["min(", t, ")"].concat(),
            ),
            AggFn::Last => (
                ["(array_agg(", v, " ORDER BY ", t, " DESC))[1]"].concat(),
                ["max(", t, ")"].concat(),
            ),
        };
        let (keys, group) = if per_series {
            (
                [alias, ".entity_id, ", alias, ".attribute_id"].concat(),
                "1, 2, 3",
            )
        } else {
            (
                "0::bigint AS entity_id, 0::bigint AS attribute_id".to_owned(),
                "3",
            )
        };
        [
            "SELECT ",
            &keys,
            ", date_bin($3::bigint * interval '1 millisecond', ",
            at,
            ", timestamptz '2000-01-01 00:00:00+00') AS at, sum(",
            n,
            ")::bigint AS n, ",
            &pv,
            " AS v, ",
            &pt,
            " AS t ",
            body,
            " GROUP BY ",
            group,
        ]
        .concat()
    };
    let rollup = |table: &str, starts: &str, ends: &str, grouped: bool| {
        let body = [
            "FROM unnest(",
            starts,
            "::timestamptz[], ",
            ends,
            "::timestamptz[]) AS x (s, e) JOIN public.",
            table,
            " r ON r.bucket >= x.s AND r.bucket < x.e \
             WHERE r.tenant_id = $1 AND r.attribute_id = ANY ($2)",
            &scope_sql.replace('#', "r"),
        ]
        .concat();
        piece("r", "r.bucket", "r.n", v_rollup, t_rollup, &body, grouped)
    };
    let raw_body = [
        "FROM unnest($10::timestamptz[], $11::timestamptz[]) AS x (s, e) \
         JOIN public.entity_values_ts ev ON ev.ingested_at >= x.s AND ev.ingested_at < x.e \
         CROSS JOIN LATERAL (SELECT coalesce(ev.value_int::numeric, ev.value_decimal, \
                                             ev.value_bool::integer::numeric) AS x) v \
         WHERE ev.tenant_id = $1 AND ev.attribute_id = ANY ($2) \
           AND ev.ingested_at >= $13::timestamptz AND ev.ingested_at < $14::timestamptz",
        &scope_sql.replace('#', "ev"),
    ]
    .concat();
    let raw = piece(
        "ev",
        "ev.ingested_at",
        "1::bigint",
        v_raw,
        t_raw,
        &raw_body,
        grouped[3],
    );
    let sources = [
        rollup("rollup_1d", "$4", "$5", grouped[0]),
        rollup("rollup_1h", "$6", "$7", grouped[1]),
        rollup("rollup_1m", "$8", "$9", grouped[2]),
        raw,
    ];
    let union: Vec<&str> = sources
        .iter()
        .zip(parts)
        .filter(|(_, used)| *used)
        .map(|(sql, _)| sql.as_str())
        .collect();
    let keys = if per_series {
        "p.entity_id, p.attribute_id, "
    } else {
        ""
    };
    // The pieces of a series leave as arrays in one row and the server combines them into
    // buckets (see `combine`): grouping ten thousand rollup rows into buckets of numeric sums
    // costs PostgreSQL several times the scan (measured on the dashboard query: 11.5 ms of
    // execution against 5.2 ms for the arrays), and a row per bucket costs the protocol and
    // the server per row. Only the columns the function reads are aggregated.
    let v = if func == AggFn::Count {
        "NULL::numeric[]"
    } else {
        "array_agg(p.v)"
    };
    let t = if matches!(func, AggFn::First | AggFn::Last) {
        "array_agg(p.t)"
    } else {
        "NULL::timestamptz[]"
    };
    [
        "WITH p (entity_id, attribute_id, at, n, v, t) AS (",
        &union.join(" UNION ALL "),
        ") SELECT ",
        keys,
        "array_agg(p.at), array_agg(p.n), ",
        v,
        ", ",
        t,
        " FROM p",
        if per_series {
            " GROUP BY p.entity_id, p.attribute_id"
        } else {
            ""
        },
    ]
    .concat()
}

/// A `timestamptz` as PostgreSQL sends it: microseconds since 2000-01-01 UTC - the origin
/// buckets are aligned on, so a piece's bucket is one integer division away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PgMicros(i64);

impl<'a> tokio_postgres::types::FromSql<'a> for PgMicros {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into()?;
        Ok(Self(i64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TIMESTAMPTZ
    }
}

/// One series' pieces as the aggregate statement returns them (parallel arrays; `values` and
/// `times` empty when the function does not read them).
struct Pieces {
    starts: Vec<PgMicros>,
    counts: Vec<i64>,
    values: Vec<Option<Numeric>>,
    times: Vec<PgMicros>,
}

/// A bucket being combined: the count, and what the function keeps of the values.
struct Acc {
    n: i64,
    /// Sum, min, max, or the first/last value.
    v: Option<Numeric>,
    /// The time of the first/last value.
    t: Option<PgMicros>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("aggregate pieces: {e}"))
}

/// Puts pieces into buckets of `width` ms (aligned on 2000-01-01 UTC) and applies `func`
/// exactly as the SQL aggregates over the raw values would: sums and comparisons in exact
/// decimals, the mean rounded as `round(sum / n, 10)`, trailing zeros trimmed; a bucket whose
/// pieces have no value (strings, for a numeric function) is left out. Ordered by start.
fn combine(func: AggFn, width: i64, p: &Pieces) -> Result<Vec<Bucket>, StoreError> {
    let len = p.starts.len();
    let reads_values = func != AggFn::Count;
    let reads_times = matches!(func, AggFn::First | AggFn::Last);
    if p.counts.len() != len
        || (reads_values && p.values.len() != len)
        || (reads_times && p.times.len() != len)
    {
        return Err(corrupt("arrays of different lengths"));
    }
    const ORIGIN_MS: i64 = 946_684_800_000;
    let width_us = width.saturating_mul(1_000);
    // (bucket, piece) sorted by bucket: each bucket's pieces are then adjacent.
    let mut order: Vec<(i64, usize)> = p
        .starts
        .iter()
        .enumerate()
        .map(|(i, at)| (floor(at.0, width_us), i))
        .collect();
    order.sort_unstable();
    let mut out = Vec::new();
    let mut k = 0;
    while k < order.len() {
        let bucket = order[k].0;
        let mut acc = Acc {
            n: 0,
            v: None,
            t: None,
        };
        while let Some(&(b, i)) = order.get(k) {
            if b != bucket {
                break;
            }
            k += 1;
            acc.n += p.counts[i];
            let Some(v) = p.values.get(i).copied().flatten() else {
                continue;
            };
            let t = p.times.get(i).copied();
            let keep = match (func, acc.v) {
                (_, None) => true,
                (AggFn::Avg | AggFn::Sum, Some(sum)) => {
                    acc.v = Some(sum.plus(v).map_err(corrupt)?);
                    false
                }
                (AggFn::Min, Some(m)) => v.compare(m).map_err(corrupt)?.is_lt(),
                (AggFn::Max, Some(m)) => v.compare(m).map_err(corrupt)?.is_gt(),
                (AggFn::First, Some(_)) => t < acc.t,
                (AggFn::Last, Some(_)) => t > acc.t,
                (AggFn::Count, Some(_)) => false,
            };
            if keep {
                acc.v = Some(v);
                acc.t = t;
            }
        }
        let value = match (func, acc.v) {
            (AggFn::Count, _) => Numeric::from_int(acc.n),
            (_, None) => continue,
            (AggFn::Avg, Some(sum)) => sum.mean(acc.n).map_err(corrupt)?,
            (_, Some(v)) => v,
        };
        out.push(Bucket {
            ts: bucket / 1_000 + ORIGIN_MS,
            value: number(&value.to_string())?,
            count: acc.n,
        });
    }
    Ok(out)
}

fn number(text: &str) -> Result<serde_json::Number, StoreError> {
    serde_json::from_str::<serde_json::Number>(text)
        .map_err(|e| StoreError::Corrupt(format!("numeric `{text}` is not a JSON number: {e}")))
}

fn times(ranges: &[(i64, i64)]) -> (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let t = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    ranges.iter().map(|&(s, e)| (t(s), t(e))).unzip()
}

/// The pieces of a query as of now: reads the marks, then plans the cover.
pub async fn cover(tx: &Tx<'_>, tenant: TenantId, q: &AggregateQuery) -> Result<Cover, StoreError> {
    let (from, to) = (q.from.timestamp_millis(), q.to.timestamp_millis());
    let day_start = DateTime::from_timestamp_millis(floor(from, 86_400_000)).unwrap_or(q.from);
    let marks = if q.bucket.millis() % 60_000 == 0 {
        tx.cached_query(MARKS_SQL, &[&tenant.0, &q.attribute_ids, &day_start, &q.to])
            .await?
            .iter()
            .map(|r| {
                let at: DateTime<Utc> = r.try_get(1)?;
                Ok((r.try_get::<_, i16>(0)?, at.timestamp_millis()))
            })
            .collect::<Result<Vec<_>, StoreError>>()?
    } else {
        Vec::new()
    };
    Ok(Cover::plan(
        from,
        to,
        q.bucket.millis(),
        &Dirty::from_marks(marks),
    ))
}

/// Buckets of `fn(value)` keyed by (entity, attribute) when [`AggregateQuery::per_series`]
/// (else by (0, 0)); empty buckets are omitted. Runs in the caller's tenant transaction (the
/// marks and the rollups are read in one snapshot with the values, under RLS).
pub async fn aggregate(
    tx: &Tx<'_>,
    tenant: TenantId,
    q: &AggregateQuery,
) -> Result<BTreeMap<(i64, i64), Vec<Bucket>>, StoreError> {
    // No parallel workers: the rollup rows of a request are thousands, where starting
    // workers costs more than it saves, and under concurrent requests they take the cores the
    // other requests need (measured: the dashboard query planned parallel at 100 requests/s
    // went from 12 ms to seconds). No sort: the planner guesses thousands of series where a
    // request has at most 2 000 and sorts ten thousand pieces to group them; hashing them
    // into their few series is cheaper (measured on the dashboard query: 7.9 against 9.0 ms).
    // Sent together with the marks query (pipelined).
    let (_, cover) = futures_util::future::try_join(
        async {
            tx.batch_execute(
                "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL enable_sort = off",
            )
            .await
            .map_err(StoreError::from)
        },
        cover(tx, tenant, q),
    )
    .await?;
    let (d_s, d_e) = times(&cover.levels[0]);
    let (h_s, h_e) = times(&cover.levels[1]);
    let (m_s, m_e) = times(&cover.levels[2]);
    let (r_s, r_e) = times(&cover.raw);
    use tokio_postgres::types::Type;
    let ids: Vec<i64> = match &q.scope {
        Scope::Entity(id) => vec![*id],
        Scope::Entities(list) => list.clone(),
        Scope::Type(_) | Scope::Tenant => Vec::new(),
    };
    let scope_arg: (&(dyn tokio_postgres::types::ToSql + Sync), Type) = match &q.scope {
        Scope::Type(t) => (t, Type::TEXT),
        _ => (&ids, Type::INT8_ARRAY),
    };
    let width = q.bucket.millis();
    let parts = [
        !cover.levels[0].is_empty(),
        !cover.levels[1].is_empty(),
        !cover.levels[2].is_empty(),
        !cover.raw.is_empty(),
    ];
    if !parts.contains(&true) {
        return Ok(BTreeMap::new());
    }
    let t = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let raw_from = t(cover.raw.first().map_or(0, |r| r.0));
    let raw_to = t(cover.raw.last().map_or(0, |r| r.1));
    // Rows of a level go out as they are while a bucket holds a few of them per series (the
    // dashboard's 2-hour buckets over hours: 2); the database groups raw values, finer
    // levels, and every source of a tenant- or type-wide aggregate (thousands of entities per
    // bucket), so no answer grows more than a few times its number of buckets.
    let names_entities = matches!(q.scope, Scope::Entity(_) | Scope::Entities(_));
    let mut grouped = [true; 4];
    for (g, level) in grouped.iter_mut().zip(LEVELS) {
        *g = !names_entities || width / level.width > MAX_ROWS_PER_BUCKET;
    }
    let sql = aggregate_sql(q.func, &q.scope, q.per_series, parts, grouped);
    let tsa = Type::TIMESTAMPTZ_ARRAY;
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 14] = [
        (&tenant.0, Type::INT8),
        (&q.attribute_ids, Type::INT8_ARRAY),
        (&width, Type::INT8),
        (&d_s, tsa.clone()),
        (&d_e, tsa.clone()),
        (&h_s, tsa.clone()),
        (&h_e, tsa.clone()),
        (&m_s, tsa.clone()),
        (&m_e, tsa.clone()),
        (&r_s, tsa.clone()),
        (&r_e, tsa),
        scope_arg,
        (&raw_from, Type::TIMESTAMPTZ),
        (&raw_to, Type::TIMESTAMPTZ),
    ];
    // Planned for these arguments every time, in one round trip (the parameters' types are
    // sent with them), never from the connection's statement cache: the generic plan
    // PostgreSQL switches a cached statement to cannot see the range arrays, scans whole
    // indexes of the rollups and materializes them (measured on the dashboard query: 272 ms
    // against 27 ms planned with the arguments, planning included).
    let rows = tx.query_typed(&sql, &params).await?;
    let mut out: BTreeMap<(i64, i64), Vec<Bucket>> = BTreeMap::new();
    let base = if q.per_series { 2 } else { 0 };
    for r in &rows {
        let key = if q.per_series {
            (r.try_get(0)?, r.try_get(1)?)
        } else {
            (0, 0)
        };
        // Without a piece (one series over everything, nothing in range) the arrays are NULL.
        let starts: Option<Vec<PgMicros>> = r.try_get(base)?;
        let Some(starts) = starts else { continue };
        let pieces = Pieces {
            counts: r
                .try_get::<_, Option<Vec<i64>>>(base + 1)?
                .unwrap_or_default(),
            values: r
                .try_get::<_, Option<Vec<Option<Numeric>>>>(base + 2)?
                .unwrap_or_default(),
            times: r
                .try_get::<_, Option<Vec<PgMicros>>>(base + 3)?
                .unwrap_or_default(),
            starts,
        };
        let series = combine(q.func, width, &pieces)?;
        if !series.is_empty() {
            out.insert(key, series);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;
    const H: i64 = 3_600_000;
    const D: i64 = 86_400_000;

    #[test]
    fn widths_parse_in_every_unit_and_print_in_the_largest() {
        for (s, ms, shown) in [
            ("30s", 30_000, "30s"),
            ("2m", 120_000, "2m"),
            ("90m", 5_400_000, "90m"),
            ("120m", 7_200_000, "2h"),
            ("1d", D, "1d"),
            ("1w", 7 * D, "7d"),
            ("1500ms", 1_500, "1500ms"),
            ("60000", 60_000, "1m"),
        ] {
            let w: BucketWidth = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((w.millis(), w.to_string().as_str()), (ms, shown), "{s}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "m",
            "1x",
            "-1m",
            "1.5h",
            "3651d",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<BucketWidth>().is_err(), "{bad}");
        }
    }

    #[test]
    fn max_points_picks_the_smallest_nice_width_that_fits() {
        assert_eq!(BucketWidth::for_points(30 * D, 500).millis(), 2 * H);
        assert_eq!(BucketWidth::for_points(H, 60).millis(), M);
        assert_eq!(BucketWidth::for_points(365 * D, 365).millis(), D);
        assert_eq!(BucketWidth::for_points(3650 * D, 10).millis(), 365 * D);
    }

    #[test]
    fn a_clean_range_takes_the_coarsest_level_and_raw_only_at_the_edges() {
        // 10:00:30 on day 100 to 05:00:10 on day 103, 1-day buckets.
        let from = 100 * D + 10 * H + 30_000;
        let to = 103 * D + 5 * H + 10_000;
        let c = Cover::plan(from, to, D, &Dirty::default());
        assert_eq!(c.levels[0], vec![(101 * D, 103 * D)]);
        assert_eq!(
            c.levels[1],
            vec![(100 * D + 11 * H, 101 * D), (103 * D, 103 * D + 5 * H)]
        );
        assert_eq!(c.levels[2], vec![(100 * D + 10 * H + M, 100 * D + 11 * H)]);
        assert_eq!(
            c.raw,
            vec![(from, 100 * D + 10 * H + M), (103 * D + 5 * H, to)]
        );
    }

    #[test]
    fn dirty_buckets_are_refined_down_to_raw_minutes() {
        let from = 10 * D;
        let to = 13 * D;
        // A minute mark at day 11, 03:07 makes that day and hour stale too.
        let dirty = Dirty::from_marks([(1, 11 * D + 3 * H + 7 * M + 5)]);
        let c = Cover::plan(from, to, D, &dirty);
        assert_eq!(c.levels[0], vec![(10 * D, 11 * D), (12 * D, 13 * D)]);
        assert_eq!(
            c.levels[1],
            vec![(11 * D, 11 * D + 3 * H), (11 * D + 4 * H, 12 * D)]
        );
        assert_eq!(
            c.levels[2],
            vec![
                (11 * D + 3 * H, 11 * D + 3 * H + 7 * M),
                (11 * D + 3 * H + 8 * M, 11 * D + 4 * H)
            ]
        );
        assert_eq!(
            c.raw,
            vec![(11 * D + 3 * H + 7 * M, 11 * D + 3 * H + 8 * M)]
        );
        // An hour mark (its minutes done, the hour not yet): the hour from minutes.
        let c = Cover::plan(from, to, D, &Dirty::from_marks([(2, 11 * D + 3 * H)]));
        assert_eq!(c.levels[2], vec![(11 * D + 3 * H, 11 * D + 4 * H)]);
        assert!(c.raw.is_empty());
    }

    #[test]
    fn widths_the_levels_do_not_divide_go_to_finer_levels_or_raw() {
        // 90 minutes: hours do not divide it, minutes do.
        let c = Cover::plan(0, 3 * H, 90 * M, &Dirty::default());
        assert!(c.levels[0].is_empty() && c.levels[1].is_empty());
        assert_eq!(c.levels[2], vec![(0, 3 * H)]);
        // 30 s: raw only.
        let c = Cover::plan(0, H, 30_000, &Dirty::default());
        assert_eq!(c.raw, vec![(0, H)]);
    }
}
