//! Where change events go: one [`Sink`] trait, two sinks. A sink returns only once what it
//! was given is durable; only then is the slot advanced.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use tokio_postgres::Client;
use tokio_postgres::types::Json;

use crate::CdcError;
use crate::event::{ChangeEvent, Op, Transaction};

/// One batch of committed transactions, in commit order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The transactions (heartbeat-only ones have no events but still move the position).
    pub transactions: Vec<Transaction>,
    /// The source database (the envelope's `source.db`).
    pub database: String,
    /// The slot they came from.
    pub slot: String,
    /// A chunk of the initial snapshot: applied, but the sink's position is not moved (the
    /// snapshot is complete only when the batch that follows it, at the slot's start, is).
    pub snapshot: bool,
}

impl Batch {
    /// Number of change events.
    pub fn events(&self) -> usize {
        self.transactions.iter().map(|t| t.events.len()).sum()
    }
}

/// A destination of change events.
pub trait Sink: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Stores the batch durably; may be given a batch again after a crash (at-least-once).
    fn write<'a>(&'a mut self, batch: &'a Batch) -> BoxFuture<'a, Result<(), CdcError>>;
    /// Whether the sink has not got the initial snapshot yet (it then gets one before the
    /// stream, even when the slot already existed).
    fn needs_snapshot(&mut self) -> BoxFuture<'_, Result<bool, CdcError>> {
        Box::pin(async { Ok(false) })
    }
    /// A new slot starts from a new snapshot: forget any state derived from an earlier one
    /// (rows deleted since would otherwise stay).
    fn reset_state(&mut self) -> BoxFuture<'_, Result<(), CdcError>> {
        Box::pin(async { Ok(()) })
    }
    /// Deletes what has aged out (see [`Prune`]); a sink that keeps nothing prunable does
    /// nothing.
    fn prune<'a>(&'a mut self, _rules: &'a Prune) -> BoxFuture<'a, Result<Pruned, CdcError>> {
        Box::pin(async { Ok(Pruned::default()) })
    }
}

/// What a sink deletes when pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prune {
    /// Change events committed before this go (`[cdc] history_retention_days`): rows of the
    /// analytics history, NDJSON hour files that ended before it.
    pub history_before: Option<DateTime<Utc>>,
    /// Time-series state rows older than this go: the primary's oldest partition starts
    /// here, so retention dropped anything older there (dropping a partition sends no delete
    /// events).
    pub values_before: Option<DateTime<Utc>>,
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Change events (the analytics store's history).
    pub history: u64,
    /// Time-series state rows.
    pub values: u64,
    /// NDJSON hour files (the NDJSON sink's history).
    pub files: u64,
}

/// Rows per DELETE when pruning: short transactions that do not hold up the sink's batches.
const PRUNE_CHUNK: i64 = 50_000;
/// One chunk of the history past its retention.
const PRUNE_HISTORY_SQL: &str = "DELETE FROM cdc.change_events WHERE ctid = ANY (ARRAY(\
     SELECT ctid FROM cdc.change_events WHERE commit_ts < $1 LIMIT $2))";
/// One chunk of the time series older than the primary's oldest partition.
const PRUNE_VALUES_SQL: &str = "DELETE FROM public.entity_values_ts WHERE ctid = ANY (ARRAY(\
     SELECT ctid FROM public.entity_values_ts WHERE ingested_at < $1 LIMIT $2))";

/// NDJSON files, one per table and hour of commit time (`DIR/TABLE/YYYY-MM-DDTHH.ndjson`), one
/// Debezium envelope per line, fsynced before the batch is confirmed. A replay after a crash
/// may append a line twice; readers deduplicate by `source.lsn` + key.
#[derive(Debug, Clone)]
pub struct NdjsonSink {
    dir: PathBuf,
}

impl NdjsonSink {
    /// Writes under `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn write_blocking(
        dir: &std::path::Path,
        files: HashMap<PathBuf, Vec<u8>>,
    ) -> std::io::Result<()> {
        for (path, bytes) in files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
        }
        // New files' directory entries must be durable too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Deletes the hour files that ended at or before `before` (every event in them was
    /// committed earlier); names not of the sink's `TABLE/YYYY-MM-DDTHH.ndjson` form stay.
    fn prune_blocking(dir: &std::path::Path, before: DateTime<Utc>) -> std::io::Result<u64> {
        let tables = match std::fs::read_dir(dir) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut deleted = 0;
        for table in tables {
            let table = table?;
            if !table.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(table.path())? {
                let file = file?;
                let name = file.file_name();
                let Some(hour) = name.to_str().and_then(|n| n.strip_suffix(".ndjson")) else {
                    continue;
                };
                let Ok(start) = chrono::NaiveDateTime::parse_from_str(
                    &format!("{hour}:00:00"),
                    "%Y-%m-%dT%H:%M:%S",
                ) else {
                    continue;
                };
                if start.and_utc() + chrono::Duration::hours(1) <= before {
                    std::fs::remove_file(file.path())?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

impl Sink for NdjsonSink {
    fn name(&self) -> &'static str {
        "ndjson"
    }

    fn write<'a>(&'a mut self, batch: &'a Batch) -> BoxFuture<'a, Result<(), CdcError>> {
        Box::pin(async move {
            let now_ms = Utc::now().timestamp_millis();
            let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
            for tx in &batch.transactions {
                let hour = tx.commit_ts.format("%Y-%m-%dT%H").to_string();
                for e in &tx.events {
                    let path = self.dir.join(&e.table).join(format!("{hour}.ndjson"));
                    let buf = files.entry(path).or_default();
                    serde_json::to_writer(&mut *buf, &tx.envelope(e, &batch.database, now_ms))
                        .map_err(|e| CdcError::Sink(format!("encoding an event: {e}")))?;
                    buf.push(b'\n');
                }
            }
            if files.is_empty() {
                return Ok(());
            }
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || Self::write_blocking(&dir, files))
                .await
                .map_err(|e| CdcError::Sink(format!("ndjson writer: {e}")))?
                .map_err(|e| CdcError::Sink(format!("writing {}: {e}", self.dir.display())))
        })
    }

    fn prune<'a>(&'a mut self, rules: &'a Prune) -> BoxFuture<'a, Result<Pruned, CdcError>> {
        Box::pin(async move {
            let Some(before) = rules.history_before else {
                return Ok(Pruned::default());
            };
            let dir = self.dir.clone();
            let files = tokio::task::spawn_blocking(move || Self::prune_blocking(&dir, before))
                .await
                .map_err(|e| CdcError::Sink(format!("ndjson pruner: {e}")))?
                .map_err(|e| CdcError::Sink(format!("pruning {}: {e}", self.dir.display())))?;
            Ok(Pruned {
                files,
                ..Pruned::default()
            })
        })
    }
}

/// A state table of the analytics store: its columns and primary key, read from its catalog,
/// and the statements that write it (built by PostgreSQL's `format(%I)` from those names).
#[derive(Debug, Clone)]
struct TableSpec {
    columns: Vec<String>,
    key: Vec<String>,
    delete_sql: String,
    /// Upsert statements by the columns a row does not carry (unchanged TOAST).
    upsert_sql: HashMap<Vec<String>, String>,
}

/// `DELETE … USING` the keys in a JSON array parameter.
const DELETE_SQL: &str = "SELECT format('DELETE FROM public.%1$I t USING unnest($1::jsonb[]) j, jsonb_populate_record(NULL::public.%1$I, j) k WHERE %2$s', \
     $1::text, (SELECT string_agg(format('t.%1$I = k.%1$I', c), ' AND ') FROM unnest($2::text[]) c))";
/// Insert-or-update of the rows in a JSON array parameter, setting only columns `$3`.
const UPSERT_SQL: &str = "SELECT format('INSERT INTO public.%1$I AS t SELECT r.* FROM unnest($1::jsonb[]) j, jsonb_populate_record(NULL::public.%1$I, j) r ON CONFLICT (%2$s) DO %3$s', \
     $1::text, (SELECT string_agg(format('%I', k), ', ') FROM unnest($2::text[]) k), \
     coalesce('UPDATE SET ' || (SELECT string_agg(format('%1$I = EXCLUDED.%1$I', c), ', ') FROM unnest($3::text[]) c), 'NOTHING'))";
/// TRUNCATE of the named state tables.
const TRUNCATE_SQL: &str = "SELECT format('TRUNCATE %s', (SELECT string_agg(format('public.%I', t), ', ') FROM unnest($1::text[]) t))";

/// The analytics store (a separate PostgreSQL database, migrations in `analytics/`): each
/// batch is one transaction that appends every event to `cdc.change_events` (unique by table,
/// key and LSN), applies the net effect to the state tables, and records the batch's end LSN
/// in `cdc.sink_progress`. Transactions at or below the recorded LSN are skipped, so a batch
/// replayed after a crash changes nothing: each change is held exactly once.
pub struct AnalyticsSink {
    client: Client,
    slot: String,
    tables: HashMap<String, TableSpec>,
}

/// Events per INSERT statement (bounds the size of one bind parameter).
const CHUNK: usize = 5_000;

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CdcError {
    move |source| CdcError::Db { step, source }
}

impl AnalyticsSink {
    /// Connects (as a superuser: the sink writes every tenant's rows) and reads the state
    /// tables' columns and keys.
    pub async fn connect(url: &str, slot: &str) -> Result<Self, CdcError> {
        let client = atlas_store::connect(url)
            .await
            .map_err(|e| CdcError::Connect(e.to_string()))?;
        let rows = client
            .query(
                "SELECT c.relname::text, \
                        array_agg(a.attname::text ORDER BY a.attnum), \
                        array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum = ANY (i.indkey)) \
                 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' \
                 JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE c.relkind = 'r' AND c.relname IN ('attributes', 'entities', 'entity_jsonb', 'entity_values_ts') \
                 GROUP BY c.relname",
                &[],
            )
            .await
            .map_err(db("reading the analytics tables"))?;
        let mut tables = HashMap::new();
        for r in &rows {
            let (name, columns, key): (String, Vec<String>, Vec<String>) =
                (r.get(0), r.get(1), r.get(2));
            let delete_sql = client
                .query_one(DELETE_SQL, &[&name, &key])
                .await
                .map_err(db("building the delete statement"))?
                .get(0);
            tables.insert(
                name,
                TableSpec {
                    columns,
                    key,
                    delete_sql,
                    upsert_sql: HashMap::new(),
                },
            );
        }
        if tables.len() != 4 {
            return Err(CdcError::Config(
                "the analytics database is not migrated (run `atlas cdc` once with the admin URL)"
                    .into(),
            ));
        }
        Ok(Self {
            client,
            slot: slot.to_owned(),
            tables,
        })
    }

    /// Runs `sql` (a DELETE of at most `$2` rows older than `$1`) until it deletes fewer;
    /// nothing without a `before`.
    async fn delete_chunked(
        &self,
        sql: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<u64, CdcError> {
        let Some(before) = before else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let n = self
                .client
                .execute(sql, &[&before, &PRUNE_CHUNK])
                .await
                .map_err(db("pruning the analytics store"))?;
            total += n;
            if n < PRUNE_CHUNK.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    async fn apply(&mut self, batch: &Batch) -> Result<(), CdcError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(db("starting the batch"))?;
        if !batch.snapshot {
            tx.execute(
                "INSERT INTO cdc.sink_progress (slot_name, end_lsn, commit_ts) VALUES ($1, 0, now()) \
                 ON CONFLICT (slot_name) DO NOTHING",
                &[&self.slot],
            )
            .await
            .map_err(db("reading the sink progress"))?;
        }
        // FOR UPDATE: two consumers of one slot serialize here instead of interleaving.
        let done: i64 = if batch.snapshot {
            -1 // snapshot chunks are all applied (idempotently) and move nothing
        } else {
            tx.query_one(
                "SELECT end_lsn FROM cdc.sink_progress WHERE slot_name = $1 FOR UPDATE",
                &[&self.slot],
            )
            .await
            .map_err(db("reading the sink progress"))?
            .get(0)
        };
        let fresh: Vec<&Transaction> = batch
            .transactions
            .iter()
            .filter(|t| i64::try_from(t.end_lsn).unwrap_or(i64::MAX) > done)
            .collect();
        let Some(last) = fresh.last() else {
            return tx.commit().await.map_err(db("committing the batch"));
        };

        // The history as column arrays (one bind parameter per column, unnested in SQL).
        let mut h = History::default();
        for t in &fresh {
            for e in &t.events {
                h.table.push(e.table.as_str());
                h.key.push(Json(&e.key));
                h.lsn.push(i64::try_from(e.lsn).unwrap_or(i64::MAX));
                h.op.push(e.op.code());
                h.tx.push(i64::from(t.xid));
                h.commit_ts.push(t.commit_ts);
                h.tenant.push(e.tenant_id());
                h.before.push(e.before.as_ref().map(Json));
                h.after.push(e.after.as_ref().map(Json));
            }
        }
        let n = h.lsn.len();
        let mut from = 0;
        while from < n {
            let to = (from + CHUNK).min(n);
            tx.execute(
                "INSERT INTO cdc.change_events (table_name, key, lsn, op, tx_id, commit_ts, tenant_id, before, after) \
                 SELECT * FROM unnest($1::text[], $2::jsonb[], $3::int8[], $4::text[], $5::int8[], \
                                      $6::timestamptz[], $7::int8[], $8::jsonb[], $9::jsonb[]) \
                 ON CONFLICT (lsn, table_name, key) DO NOTHING",
                &[
                    &&h.table[from..to],
                    &&h.key[from..to],
                    &&h.lsn[from..to],
                    &&h.op[from..to],
                    &&h.tx[from..to],
                    &&h.commit_ts[from..to],
                    &&h.tenant[from..to],
                    &&h.before[from..to],
                    &&h.after[from..to],
                ],
            )
            .await
            .map_err(db("appending change events"))?;
            from = to;
        }

        // Net effect per table and key; a truncate applies what came before it first.
        let mut pending: HashMap<String, NetChanges> = HashMap::new();
        for t in &fresh {
            for e in &t.events {
                if !self.tables.contains_key(&e.table) {
                    continue; // published later than this analytics schema knows of
                }
                if e.op == Op::Truncate {
                    if let Some(net) = pending.remove(&e.table) {
                        Self::flush_table(&mut self.tables, &tx, &e.table, net).await?;
                    }
                    let truncate: String = tx
                        .query_one(TRUNCATE_SQL, &[&vec![e.table.clone()]])
                        .await
                        .map_err(db("truncating a state table"))?
                        .get(0);
                    tx.batch_execute(&truncate)
                        .await
                        .map_err(db("truncating a state table"))?;
                    continue;
                }
                pending.entry(e.table.clone()).or_default().add(e, t);
            }
        }
        for (table, net) in pending {
            Self::flush_table(&mut self.tables, &tx, &table, net).await?;
        }

        let events = i64::try_from(n).unwrap_or(i64::MAX);
        let end = i64::try_from(last.end_lsn).unwrap_or(i64::MAX);
        if !batch.snapshot {
            tx.execute(
                "UPDATE cdc.sink_progress SET end_lsn = $2, commit_ts = $3, synced_at = now(), \
                 events = events + $4 WHERE slot_name = $1",
                &[&self.slot, &end, &last.commit_ts, &events],
            )
            .await
            .map_err(db("recording the sink progress"))?;
        }
        tx.commit().await.map_err(db("committing the batch"))
    }

    async fn flush_table(
        tables: &mut HashMap<String, TableSpec>,
        tx: &tokio_postgres::Transaction<'_>,
        table: &str,
        net: NetChanges,
    ) -> Result<(), CdcError> {
        let Some(spec) = tables.get_mut(table) else {
            return Ok(());
        };
        let net = net.finish();
        for chunk in net.deletes.chunks(CHUNK) {
            tx.execute(&spec.delete_sql, &[&chunk])
                .await
                .map_err(db("applying deletes"))?;
        }
        // Rows group by which columns they carry (unchanged TOAST is left as stored).
        let mut groups: HashMap<Vec<String>, Vec<Value>> = HashMap::new();
        for (row, missing) in net.upserts {
            groups.entry(missing).or_default().push(Value::Object(row));
        }
        for (missing, rows) in groups {
            let sql = match spec.upsert_sql.get(&missing) {
                Some(sql) => sql.clone(),
                None => {
                    let set: Vec<&String> = spec
                        .columns
                        .iter()
                        .filter(|c| !spec.key.contains(c) && !missing.contains(c))
                        .collect();
                    let sql: String = tx
                        .query_one(UPSERT_SQL, &[&table, &spec.key, &set])
                        .await
                        .map_err(db("building the upsert statement"))?
                        .get(0);
                    spec.upsert_sql.insert(missing, sql.clone());
                    sql
                }
            };
            for chunk in rows.chunks(CHUNK) {
                tx.execute(&sql, &[&chunk])
                    .await
                    .map_err(db("applying inserts and updates"))?;
            }
        }
        Ok(())
    }
}

/// `cdc.change_events` rows as columns.
#[derive(Default)]
struct History<'a> {
    table: Vec<&'a str>,
    key: Vec<Json<&'a Map<String, Value>>>,
    lsn: Vec<i64>,
    op: Vec<&'static str>,
    tx: Vec<i64>,
    commit_ts: Vec<chrono::DateTime<chrono::Utc>>,
    tenant: Vec<Option<i64>>,
    before: Vec<Option<Json<&'a Map<String, Value>>>>,
    after: Vec<Option<Json<&'a Map<String, Value>>>>,
}

/// A row to upsert and the columns it does not carry (unchanged TOAST).
type Image = (Map<String, Value>, Vec<String>);

/// The net effect of a run of events on one table: the last image of each key (None: gone).
#[derive(Debug, Default)]
struct NetChanges {
    order: Vec<String>,
    last: HashMap<String, Option<Image>>,
    deletes: Vec<Value>,
    upserts: Vec<Image>,
}

impl NetChanges {
    fn set(&mut self, key: String, image: Option<Image>) {
        if !self.last.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.last.insert(key, image);
    }

    fn add(&mut self, e: &ChangeEvent, t: &Transaction) {
        let key = Value::Object(e.key.clone()).to_string();
        match (&e.op, &e.after) {
            (Op::Delete, _) | (_, None) => self.set(key, None),
            // Create, update and snapshot read all leave the row as `after` says.
            (_, Some(after)) => {
                // An update that changed the key removes the old one.
                let mut from = key.clone();
                if let Some(before) = &e.before {
                    let old_key: Map<String, Value> = e
                        .key
                        .keys()
                        .map(|k| (k.clone(), before.get(k).cloned().unwrap_or(Value::Null)))
                        .collect();
                    if old_key != e.key {
                        from = Value::Object(old_key).to_string();
                    }
                }
                // pgoutput leaves out a TOASTed column the update did not change: take it from
                // the row's earlier image in this batch, which the last image replaces (else
                // the store would keep its older value, or NULL for a row created in the
                // batch). A column no earlier image carries is left as the store has it.
                let earlier = self.last.get(&from).and_then(Option::as_ref);
                let mut row = after.clone();
                let mut missing = Vec::new();
                for c in &e.unavailable {
                    let carried = earlier
                        .filter(|(_, gone)| !gone.contains(c))
                        .and_then(|(r, _)| r.get(c));
                    match carried {
                        Some(v) => {
                            row.insert(c.clone(), v.clone());
                        }
                        None => {
                            row.remove(c);
                            missing.push(c.clone());
                        }
                    }
                }
                if from != key {
                    self.set(from, None);
                }
                row.insert("_lsn".into(), Value::from(e.lsn));
                row.insert(
                    "_commit_ts".into(),
                    Value::String(t.commit_ts.to_rfc3339_opts(SecondsFormat::Micros, true)),
                );
                self.set(key, Some((row, missing)));
            }
        }
    }

    fn finish(mut self) -> Self {
        for key in std::mem::take(&mut self.order) {
            match self.last.remove(&key).flatten() {
                Some(image) => self.upserts.push(image),
                None => {
                    if let Ok(Value::Object(k)) = serde_json::from_str::<Value>(&key) {
                        self.deletes.push(Value::Object(k));
                    }
                }
            }
        }
        self
    }
}

impl Sink for AnalyticsSink {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn write<'a>(&'a mut self, batch: &'a Batch) -> BoxFuture<'a, Result<(), CdcError>> {
        Box::pin(self.apply(batch))
    }

    fn prune<'a>(&'a mut self, rules: &'a Prune) -> BoxFuture<'a, Result<Pruned, CdcError>> {
        Box::pin(async move {
            Ok(Pruned {
                history: self
                    .delete_chunked(PRUNE_HISTORY_SQL, rules.history_before)
                    .await?,
                values: self
                    .delete_chunked(PRUNE_VALUES_SQL, rules.values_before)
                    .await?,
                files: 0,
            })
        })
    }

    fn reset_state(&mut self) -> BoxFuture<'_, Result<(), CdcError>> {
        Box::pin(async move {
            let tables: Vec<String> = self.tables.keys().cloned().collect();
            // The history stays: it is what happened. The progress goes with the state.
            let tx = self
                .client
                .transaction()
                .await
                .map_err(db("resetting the state tables"))?;
            let truncate: String = tx
                .query_one(TRUNCATE_SQL, &[&tables])
                .await
                .map_err(db("resetting the state tables"))?
                .get(0);
            tx.batch_execute(&truncate)
                .await
                .map_err(db("resetting the state tables"))?;
            tx.execute(
                "DELETE FROM cdc.sink_progress WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(db("resetting the state tables"))?;
            tx.commit().await.map_err(db("resetting the state tables"))
        })
    }

    fn needs_snapshot(&mut self) -> BoxFuture<'_, Result<bool, CdcError>> {
        Box::pin(async move {
            let row = self
                .client
                .query_opt(
                    "SELECT 1 FROM cdc.sink_progress WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await
                .map_err(db("reading the sink progress"))?;
            Ok(row.is_none())
        })
    }
}
