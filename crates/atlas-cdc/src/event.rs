//! Change events: decoded pgoutput transactions turned into Debezium's envelope
//! (`before`, `after`, `source`, `op`, `ts_ms`), with values typed by their column type —
//! numerics as exact decimal strings (never f64), timestamps RFC 3339, jsonb as JSON.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::CdcError;
use crate::pgoutput::{Cell, Message, OldTuple, Relation, decode};

/// The placeholder Debezium writes for an unchanged TOASTed value the WAL does not carry.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// The prefix of the heartbeat messages `atlas cdc` writes to the WAL.
pub const HEARTBEAT_PREFIX: &str = "atlas.cdc.heartbeat";

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Debezium's operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read: a row of the initial snapshot.
    Read,
    /// Create (insert).
    Create,
    /// Update: `after` is the new row (`before` only the key unless REPLICA IDENTITY FULL).
    Update,
    /// Delete: `before` carries the key, `after` is null.
    Delete,
    /// Truncate of the whole table: neither image.
    Truncate,
}

impl Op {
    /// The envelope's `op` letter.
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// One row change (or one table's truncate).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// Schema of the table.
    pub schema: String,
    /// The table (the partition root for partitioned tables).
    pub table: String,
    /// What happened.
    pub op: Op,
    /// The row before (updates: only with an old image; deletes: at least the key).
    pub before: Option<Map<String, Value>>,
    /// The row after (inserts, updates).
    pub after: Option<Map<String, Value>>,
    /// The primary-key columns and values (`{}` for a truncate).
    pub key: Map<String, Value>,
    /// Columns of `after` whose value the WAL did not carry (unchanged TOAST).
    pub unavailable: Vec<String>,
    /// LSN of the change's WAL record.
    pub lsn: u64,
}

impl ChangeEvent {
    /// The tenant the row belongs to, for tables that have one.
    pub fn tenant_id(&self) -> Option<i64> {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .and_then(|m| m.get("tenant_id"))
            .and_then(Value::as_i64)
    }
}

/// One committed transaction's changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// LSN just past the commit: the slot is advanced to the last one a sink confirmed.
    pub end_lsn: u64,
    /// Commit time.
    pub commit_ts: DateTime<Utc>,
    /// Its changes, in commit order.
    pub events: Vec<ChangeEvent>,
}

impl Transaction {
    /// The Debezium envelope of one of its events. `db` is the source database's name;
    /// `now_ms` the envelope's processing time.
    pub fn envelope(&self, event: &ChangeEvent, db: &str, now_ms: i64) -> Value {
        json!({
            "before": event.before,
            "after": event.after,
            "source": {
                "version": env!("CARGO_PKG_VERSION"),
                "connector": "postgresql",
                "name": "atlas",
                "ts_ms": self.commit_ts.timestamp_millis(),
                "snapshot": if event.op == Op::Read { "true" } else { "false" },
                "db": db,
                "schema": event.schema,
                "table": event.table,
                "txId": self.xid,
                "lsn": event.lsn,
            },
            "op": event.op.code(),
            "ts_ms": now_ms,
        })
    }
}

/// Builds transactions from the rows of `pg_logical_slot_peek_binary_changes`. Relations are
/// remembered across calls (pgoutput resends them in each decoding call anyway).
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    open: Option<Transaction>,
}

fn pg_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us.saturating_add(PG_EPOCH_US)).unwrap_or_default()
}

impl Decoder {
    /// Forgets an unfinished transaction (each peek starts at a transaction boundary).
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// Feeds one message at `lsn`; returns the transaction it completes, if any.
    pub fn feed(&mut self, lsn: u64, data: &[u8]) -> Result<Option<Transaction>, CdcError> {
        let msg = decode(data)?;
        match msg {
            Message::Begin {
                final_lsn,
                commit_ts_us,
                xid,
            } => {
                self.open = Some(Transaction {
                    xid,
                    commit_lsn: final_lsn,
                    end_lsn: final_lsn,
                    commit_ts: pg_time(commit_ts_us),
                    events: Vec::new(),
                });
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_ts_us,
            } => {
                let Some(mut tx) = self.open.take() else {
                    return Err(CdcError::Protocol(format!(
                        "commit at {lsn} without a begin"
                    )));
                };
                tx.commit_lsn = commit_lsn;
                tx.end_lsn = end_lsn;
                tx.commit_ts = pg_time(commit_ts_us);
                return Ok(Some(tx));
            }
            Message::Relation(rel) => {
                self.relations.insert(rel.id, rel);
            }
            Message::Insert { rel, new } => {
                let r = self.relation(rel)?;
                let (after, unavailable) = row(r, &new, None);
                let event = ChangeEvent {
                    schema: r.schema.clone(),
                    table: r.table.clone(),
                    op: Op::Create,
                    key: key_of(r, &after),
                    before: None,
                    after: Some(after),
                    unavailable,
                    lsn,
                };
                self.push(event)?;
            }
            Message::Update { rel, old, new } => {
                let r = self.relation(rel)?;
                let before = old.as_ref().map(|o| old_row(r, o));
                let (after, unavailable) = row(r, &new, before.as_ref());
                let event = ChangeEvent {
                    schema: r.schema.clone(),
                    table: r.table.clone(),
                    op: Op::Update,
                    key: key_of(r, &after),
                    before,
                    after: Some(after),
                    unavailable,
                    lsn,
                };
                self.push(event)?;
            }
            Message::Delete { rel, old } => {
                let r = self.relation(rel)?;
                let before = old_row(r, &old);
                let event = ChangeEvent {
                    schema: r.schema.clone(),
                    table: r.table.clone(),
                    op: Op::Delete,
                    key: key_of(r, &before),
                    before: Some(before),
                    after: None,
                    unavailable: Vec::new(),
                    lsn,
                };
                self.push(event)?;
            }
            Message::Truncate { rels } => {
                for rel in rels {
                    let r = self.relation(rel)?;
                    let event = ChangeEvent {
                        schema: r.schema.clone(),
                        table: r.table.clone(),
                        op: Op::Truncate,
                        key: Map::new(),
                        before: None,
                        after: None,
                        unavailable: Vec::new(),
                        lsn,
                    };
                    self.push(event)?;
                }
            }
            // Heartbeats need no event: their transaction's commit moves the slot and the lag.
            Message::Logical { .. } | Message::Other => {}
        }
        Ok(None)
    }

    fn relation(&self, id: u32) -> Result<&Relation, CdcError> {
        self.relations
            .get(&id)
            .ok_or_else(|| CdcError::Protocol(format!("change for unknown relation {id}")))
    }

    fn push(&mut self, event: ChangeEvent) -> Result<(), CdcError> {
        match &mut self.open {
            Some(tx) => {
                tx.events.push(event);
                Ok(())
            }
            None => Err(CdcError::Protocol(format!(
                "change at {} outside a transaction",
                event.lsn
            ))),
        }
    }
}

fn row(
    r: &Relation,
    cells: &[Cell],
    before: Option<&Map<String, Value>>,
) -> (Map<String, Value>, Vec<String>) {
    let mut m = Map::new();
    let mut unavailable = Vec::new();
    for (col, cell) in r.columns.iter().zip(cells) {
        let v = match cell {
            Cell::Null => Value::Null,
            Cell::Text(t) => typed(col.type_oid, t),
            // A full old image carries the value; otherwise mark it the way Debezium does.
            Cell::Unchanged => match before.and_then(|b| b.get(&col.name)) {
                Some(v) if v.as_str() != Some(UNAVAILABLE) => v.clone(),
                _ => {
                    unavailable.push(col.name.clone());
                    Value::String(UNAVAILABLE.into())
                }
            },
        };
        m.insert(col.name.clone(), v);
    }
    (m, unavailable)
}

/// The old image: all columns for REPLICA IDENTITY FULL, only the key columns otherwise.
fn old_row(r: &Relation, old: &OldTuple) -> Map<String, Value> {
    let (cells, key_only) = match old {
        OldTuple::Key(c) => (c, true),
        OldTuple::Full(c) => (c, false),
    };
    let mut m = Map::new();
    for (col, cell) in r.columns.iter().zip(cells) {
        if key_only && !col.key {
            continue;
        }
        let v = match cell {
            Cell::Null => Value::Null,
            Cell::Text(t) => typed(col.type_oid, t),
            Cell::Unchanged => Value::String(UNAVAILABLE.into()),
        };
        m.insert(col.name.clone(), v);
    }
    m
}

fn key_of(r: &Relation, row: &Map<String, Value>) -> Map<String, Value> {
    r.columns
        .iter()
        .filter(|c| c.key)
        .map(|c| {
            (
                c.name.clone(),
                row.get(&c.name).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// A value's text form (session DateStyle ISO, TimeZone UTC) as JSON by its type OID.
pub fn typed(type_oid: u32, text: &str) -> Value {
    const BOOL: u32 = 16;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const OID: u32 = 26;
    const JSON: u32 = 114;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const TIMESTAMP: u32 = 1114;
    const TIMESTAMPTZ: u32 = 1184;
    const JSONB: u32 = 3802;
    let string = || Value::String(text.to_owned());
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().map_or_else(|_| string(), Value::from),
        // Floats keep their exact text (serde_json's arbitrary_precision); NaN/Infinity are
        // not JSON numbers and stay strings. Numerics (1700) stay strings: exact, never f64.
        FLOAT4 | FLOAT8 => serde_json::from_str::<serde_json::Number>(text)
            .map_or_else(|_| string(), Value::Number),
        JSON | JSONB => serde_json::from_str(text).unwrap_or_else(|_| string()),
        TIMESTAMPTZ => DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").map_or_else(
            |_| string(),
            |t| {
                Value::String(
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::AutoSi, true),
                )
            },
        ),
        TIMESTAMP => NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map_or_else(
            |_| string(),
            |t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
        ),
        _ => string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_exactly() {
        assert_eq!(typed(1700, "21.50000"), json!("21.50000"));
        assert_eq!(
            typed(1700, "99999999999999.99999"),
            json!("99999999999999.99999")
        );
        assert_eq!(
            typed(20, "9007199254740993"),
            json!(9_007_199_254_740_993_i64)
        );
        assert_eq!(typed(16, "t"), json!(true));
        assert_eq!(typed(16, "f"), json!(false));
        assert_eq!(
            typed(1184, "2026-11-25 17:00:00.123+00"),
            json!("2026-11-25T17:00:00.123Z")
        );
        assert_eq!(
            typed(1184, "2026-11-25 19:00:00+02"),
            json!("2026-11-25T17:00:00Z")
        );
        assert_eq!(typed(1184, "infinity"), json!("infinity"));
        assert_eq!(typed(3802, r#"{"a": 8}"#), json!({"a": 8}));
        assert_eq!(typed(1082, "2026-11-25"), json!("2026-11-25"));
        assert_eq!(typed(701, "NaN"), json!("NaN"));
        assert_eq!(typed(25, "x"), json!("x"));
    }
}
