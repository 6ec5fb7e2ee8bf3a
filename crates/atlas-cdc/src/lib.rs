//! Atlas's logical CDC — the seed's Debezium → Kafka → Flink → Redshift flow as one process.
//!
//! [`Consumer`] reads the publication `eav_cdc` through a `pgoutput` slot with the SQL
//! interface: it peeks whole transactions ([`slot::Source::peek`]), turns them into
//! Debezium-shaped [`event::ChangeEvent`]s, hands each batch to every [`sink::Sink`], and only
//! when all of them confirmed advances the slot. A crash anywhere before the advance replays
//! the batch (at-least-once); the analytics sink records the LSN it reached in the same
//! transaction as the rows, so it applies each change exactly once.

pub mod event;
pub mod pgoutput;
pub mod sink;
pub mod slot;

use std::time::{Duration, Instant};

pub use atlas_store::cluster::Slot;
pub use event::{ChangeEvent, Decoder, Op, Transaction};
pub use sink::{AnalyticsSink, Batch, NdjsonSink, Prune, Pruned, Sink};
pub use slot::{PUBLICATION, SnapshotReader, Source};

/// Why CDC failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    /// A database could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A database statement failed.
    #[error("database error while {step}: {source}")]
    Db {
        /// What was being done.
        step: &'static str,
        /// The database error (SQLSTATE preserved).
        source: tokio_postgres::Error,
    },
    /// The pgoutput stream could not be decoded.
    #[error("pgoutput protocol: {0}")]
    Protocol(String),
    /// A sink failed.
    #[error("sink: {0}")]
    Sink(String),
    /// Setup is wrong (slot of another kind, missing publication, bad URL…).
    #[error("{0}")]
    Config(String),
    /// Migrating the analytics store failed.
    #[error(transparent)]
    Schema(#[from] atlas_schema::SchemaError),
    /// The slot lost WAL it needed (`max_slot_wal_keep_size` was exceeded while its consumer
    /// was away or behind): the changes after its confirmed position are gone, and no retry
    /// can bring them back.
    #[error(
        "slot {slot} has lost WAL it needed (wal_status lost): the changes after its confirmed \
         position {confirmed_lsn} are gone"
    )]
    SlotLost {
        /// The slot that lost WAL.
        slot: String,
        /// Up to where its consumer had confirmed.
        confirmed_lsn: u64,
    },
}

/// How the consumer batches.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A batch is sent once this many pgoutput messages are waiting…
    pub batch_events: usize,
    /// …or this long after the previous batch started.
    pub batch_interval: Duration,
    /// How often a heartbeat message is written to the WAL.
    pub heartbeat_interval: Duration,
    /// Test hook: after the sinks confirmed a batch with changes, stop before advancing the slot (the
    /// process then waits to be killed), to prove a crash there loses and duplicates nothing.
    pub pause_before_advance: bool,
    /// A lost slot (see [`CdcError::SlotLost`]) is dropped and created again, and every sink
    /// gets a new initial snapshot (state rebuilt; the change history has a gap). Without it
    /// [`Consumer::start`] fails with `SlotLost`.
    pub resnapshot_lost_slot: bool,
    /// Change events older than this are deleted from the sinks' history (None: kept).
    pub history_retention: Option<Duration>,
    /// How often [`Consumer::run`] prunes the sinks (history retention, and time-series state
    /// the primary's retention dropped).
    pub prune_interval: Duration,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// pgoutput messages peeked.
    pub messages: usize,
    /// Transactions (heartbeats included).
    pub transactions: usize,
    /// Change events handed to the sinks.
    pub events: usize,
    /// Where the slot was advanced to.
    pub end_lsn: Option<u64>,
    /// Commit-to-sink lag of the newest transaction (ms).
    pub lag_ms: Option<i64>,
}

/// Reads the slot and feeds the sinks.
pub struct Consumer {
    source: Source,
    sinks: Vec<Box<dyn Sink>>,
    decoder: Decoder,
    settings: Settings,
    last_heartbeat: Option<Instant>,
    last_prune: Option<Instant>,
}

impl Consumer {
    /// A consumer of `source`; call [`Consumer::start`] before reading.
    pub fn new(source: Source, sinks: Vec<Box<dyn Sink>>, settings: Settings) -> Self {
        Self {
            source,
            sinks,
            decoder: Decoder::default(),
            settings,
            last_heartbeat: None,
            last_prune: None,
        }
    }

    /// The slot this consumer reads (for its state and position).
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Creates the slot when missing and, when it was created now or a sink has not had one
    /// (e.g. a crash interrupted it), sends every sink the initial snapshot: the published
    /// tables' rows as `r` events at the slot's starting LSN, then an empty transaction there
    /// that completes it. Returns the number of snapshot rows (0: none was needed).
    pub async fn start(&mut self, snapshot_url: &str) -> Result<usize, CdcError> {
        if let Some(slot) = self.source.state().await?
            && slot.wal_status == Some(atlas_store::cluster::WalStatus::Lost)
        {
            let lost = CdcError::SlotLost {
                slot: self.source.slot().to_owned(),
                confirmed_lsn: slot.confirmed.unwrap_or(0),
            };
            if !self.settings.resnapshot_lost_slot {
                return Err(lost);
            }
            tracing::warn!(error = %lost, "dropping the slot and starting again from a new snapshot");
            self.source.drop_slot().await?;
        }
        let created = self.source.ensure_slot().await?;
        if created {
            for sink in &mut self.sinks {
                sink.reset_state().await?;
            }
        }
        let mut needed = created;
        for sink in &mut self.sinks {
            needed |= sink.needs_snapshot().await?;
        }
        if !needed {
            return Ok(0);
        }
        let Some(slot) = self.source.state().await? else {
            return Err(CdcError::Config(format!(
                "slot {} vanished",
                self.source.slot()
            )));
        };
        let at = slot.confirmed.unwrap_or(0);
        let reader = slot::SnapshotReader::begin(snapshot_url).await?;
        let commit_ts = chrono::Utc::now();
        let chunk = self.settings.batch_events.clamp(100, 10_000);
        let mut total = 0;
        for t in reader.tables().await? {
            reader.open(&t).await?;
            loop {
                let rows = reader.fetch(&t, chunk).await?;
                if rows.is_empty() {
                    break;
                }
                total += rows.len();
                let events = rows
                    .into_iter()
                    .map(|after| ChangeEvent {
                        schema: "public".into(),
                        table: t.table.clone(),
                        op: Op::Read,
                        key: t
                            .key
                            .iter()
                            .map(|k| (k.clone(), after.get(k).cloned().unwrap_or_default()))
                            .collect(),
                        before: None,
                        after: Some(after),
                        unavailable: Vec::new(),
                        lsn: at,
                    })
                    .collect();
                self.deliver(at, commit_ts, events, true).await?;
            }
            reader.close().await?;
        }
        // The snapshot is complete once every sink has the empty transaction at its LSN.
        self.deliver(at, commit_ts, Vec::new(), false).await?;
        tracing::info!(rows = total, lsn = at, "initial snapshot delivered");
        Ok(total)
    }

    async fn deliver(
        &mut self,
        at: u64,
        commit_ts: chrono::DateTime<chrono::Utc>,
        events: Vec<ChangeEvent>,
        snapshot: bool,
    ) -> Result<(), CdcError> {
        let batch = Batch {
            transactions: vec![Transaction {
                xid: 0,
                commit_lsn: at,
                end_lsn: at,
                commit_ts,
                events,
            }],
            database: self.source.database().to_owned(),
            slot: self.source.slot().to_owned(),
            snapshot,
        };
        self.send(&batch).await
    }

    /// Hands a batch to every sink in turn; each returns once it is durable there.
    async fn send(&mut self, batch: &Batch) -> Result<(), CdcError> {
        for sink in &mut self.sinks {
            let t = Instant::now();
            sink.write(batch).await?;
            metrics::histogram!("atlas_cdc_sink_seconds", "sink" => sink.name())
                .record(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// One batch: peek, decode, write to every sink, advance the slot.
    pub async fn run_once(&mut self) -> Result<BatchReport, CdcError> {
        let started = Instant::now();
        let peeked = self.source.peek(self.settings.batch_events).await?;
        let mut report = BatchReport {
            messages: peeked.len(),
            ..BatchReport::default()
        };
        self.decoder.reset();
        let mut transactions = Vec::new();
        for p in &peeked {
            if let Some(tx) = self.decoder.feed(p.lsn, &p.data)? {
                transactions.push(tx);
            }
        }
        let Some(last) = transactions.last() else {
            return Ok(report);
        };
        let (end_lsn, newest) = (last.end_lsn, last.commit_ts);
        let batch = Batch {
            transactions,
            database: self.source.database().to_owned(),
            slot: self.source.slot().to_owned(),
            snapshot: false,
        };
        let peeked_in = started.elapsed();
        self.send(&batch).await?;
        tracing::debug!(
            messages = peeked.len(),
            peek_and_decode_ms = peeked_in.as_millis(),
            sinks_ms = (started.elapsed() - peeked_in).as_millis(),
            "cdc batch written"
        );
        let lag_ms = (chrono::Utc::now() - newest).num_milliseconds().max(0);
        if self.settings.pause_before_advance && batch.events() > 0 {
            eprintln!(
                "atlas cdc: batch up to {} written to the sinks; pausing before the slot advance",
                end_lsn
            );
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        self.source.advance(end_lsn).await?;

        for tx in &batch.transactions {
            for e in &tx.events {
                metrics::counter!("atlas_cdc_events_total", "table" => e.table.clone(), "op" => e.op.code())
                    .increment(1);
            }
        }
        metrics::counter!("atlas_cdc_batches_total").increment(1);
        metrics::histogram!("atlas_cdc_batch_seconds").record(started.elapsed().as_secs_f64());
        #[allow(clippy::cast_precision_loss, reason = "a lag gauge in seconds")]
        metrics::gauge!("atlas_cdc_lag_seconds").set(lag_ms as f64 / 1000.0);
        report.transactions = batch.transactions.len();
        report.events = batch.events();
        report.end_lsn = Some(end_lsn);
        report.lag_ms = Some(lag_ms);
        tracing::debug!(?report, "cdc batch");
        Ok(report)
    }

    /// Writes a heartbeat when the last one is older than the interval.
    pub async fn heartbeat_if_due(&mut self) -> Result<(), CdcError> {
        if self
            .last_heartbeat
            .is_none_or(|t| t.elapsed() >= self.settings.heartbeat_interval)
        {
            self.source.heartbeat().await?;
            self.last_heartbeat = Some(Instant::now());
        }
        Ok(())
    }

    /// Prunes every sink: change events (rows, NDJSON hour files) past the history retention,
    /// and time-series state older than the primary's oldest partition (what its retention
    /// dropped). Returns what
    /// was deleted, summed over the sinks.
    pub async fn prune(&mut self) -> Result<Pruned, CdcError> {
        let rules = Prune {
            history_before: self
                .settings
                .history_retention
                .and_then(|r| chrono::Duration::from_std(r).ok())
                .map(|r| chrono::Utc::now() - r),
            values_before: self.source.oldest_partition().await?,
        };
        let mut total = Pruned::default();
        for sink in &mut self.sinks {
            let p = sink.prune(&rules).await?;
            total.history += p.history;
            total.values += p.values;
            total.files += p.files;
        }
        metrics::counter!("atlas_cdc_pruned_rows_total", "what" => "history")
            .increment(total.history);
        metrics::counter!("atlas_cdc_pruned_rows_total", "what" => "values")
            .increment(total.values);
        metrics::counter!("atlas_cdc_pruned_files_total").increment(total.files);
        if total != Pruned::default() {
            tracing::info!(
                history = total.history,
                values = total.values,
                ndjson_files = total.files,
                "pruned the sinks"
            );
        }
        self.last_prune = Some(Instant::now());
        Ok(total)
    }

    /// Exports what the slot retains; returns it.
    pub async fn export_slot_state(&self) -> Result<Option<Slot>, CdcError> {
        let state = self.source.state().await?;
        if let Some(s) = &state {
            #[allow(clippy::cast_precision_loss, reason = "a gauge")]
            metrics::gauge!("atlas_cdc_slot_retained_wal_bytes")
                .set(s.retained_bytes.unwrap_or(0) as f64);
        }
        Ok(state)
    }

    /// Batches until the slot is drained (no waiting), e.g. for `atlas cdc --once`.
    pub async fn drain(&mut self) -> Result<BatchReport, CdcError> {
        let mut total = BatchReport::default();
        loop {
            let r = self.run_once().await?;
            total.messages += r.messages;
            total.transactions += r.transactions;
            total.events += r.events;
            total.end_lsn = r.end_lsn.or(total.end_lsn);
            total.lag_ms = r.lag_ms.or(total.lag_ms);
            if r.transactions == 0 {
                return Ok(total);
            }
        }
    }

    /// Runs until `stop` resolves: a batch whenever `batch_events` messages wait or
    /// `batch_interval` passed, heartbeats on schedule. Errors are returned (the caller
    /// reconnects).
    pub async fn run(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CdcError> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            self.heartbeat_if_due().await?;
            let r = self.run_once().await?;
            self.export_slot_state().await?;
            if self
                .last_prune
                .is_none_or(|t| t.elapsed() >= self.settings.prune_interval)
            {
                self.prune().await?;
            }
            if r.messages >= self.settings.batch_events {
                continue; // more is waiting
            }
            let wait = self
                .settings
                .batch_interval
                .saturating_sub(started.elapsed());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// `url` with its database name replaced by `database`. Works on multi-host URLs
/// (`postgres://u:p@h1:5432,h2:5432/db?…`, which the `url` crate rejects) by replacing the
/// path between the authority and the query.
pub fn with_database(url: &str, database: &str) -> Result<String, CdcError> {
    let invalid = |why: &str| CdcError::Config(format!("database URL is not a URL ({why})"));
    let scheme_end = url.find("://").ok_or_else(|| invalid("no scheme"))? + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let query = after.find('?').map_or("", |q| &after[q..]);
    // Path-encode the name: unreserved characters stay, every other byte is %XX.
    let mut name = String::with_capacity(database.len());
    for b in database.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!(
        "{}{}/{name}{query}",
        &url[..scheme_end],
        &rest[..authority_end]
    ))
}

/// Creates the analytics database when missing (owned by atlas_owner) and migrates it.
/// `admin_url` is a superuser URL of the primary's cluster.
pub async fn prepare_analytics(admin_url: &str, database: &str) -> Result<(), CdcError> {
    let admin = atlas_store::connect(admin_url)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&database],
        )
        .await
        .map_err(|source| CdcError::Db {
            step: "looking up the analytics database",
            source,
        })?
        .get(0);
    if !exists {
        let create: String = admin
            .query_one(
                "SELECT format('CREATE DATABASE %I', $1::text)",
                &[&database],
            )
            .await
            .map_err(|source| CdcError::Db {
                step: "creating the analytics database",
                source,
            })?
            .get(0);
        match admin.batch_execute(&create).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(source) => {
                return Err(CdcError::Db {
                    step: "creating the analytics database",
                    source,
                });
            }
        }
    }
    let mut client = atlas_store::connect(&with_database(admin_url, database)?)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    atlas_schema::migrate_set(&mut client, None, &atlas_schema::ANALYTICS_SCHEMA).await?;
    Ok(())
}

/// The analytics sink's position for `slot`: (end LSN, commit time of the newest applied
/// transaction, when it was synced, events applied), read through a connection to the
/// analytics database.
pub async fn sink_progress(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SinkProgress>, CdcError> {
    let row = client
        .query_opt(
            "SELECT end_lsn, commit_ts, synced_at, events FROM cdc.sink_progress WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|source| CdcError::Db {
            step: "reading the sink progress",
            source,
        })?;
    Ok(row.map(|r| SinkProgress {
        end_lsn: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
        commit_ts: r.get(1),
        synced_at: r.get(2),
        events: r.get(3),
    }))
}

/// Where the analytics sink is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkProgress {
    /// End LSN of the last transaction applied.
    pub end_lsn: u64,
    /// Its commit time.
    pub commit_ts: chrono::DateTime<chrono::Utc>,
    /// When it was applied.
    pub synced_at: chrono::DateTime<chrono::Utc>,
    /// Events applied in total.
    pub events: i64,
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_the_path_of_single_and_multi_host_urls() {
        let ok = |u: &str, d: &str| with_database(u, d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ok("postgres://u:p@h:5432/atlas", "an"),
            "postgres://u:p@h:5432/an"
        );
        assert_eq!(
            ok(
                "postgres://u:p@h1:1,h2:2/atlas?target_session_attrs=read-write",
                "an x"
            ),
            "postgres://u:p@h1:1,h2:2/an%20x?target_session_attrs=read-write"
        );
        assert_eq!(ok("postgres://h?x=1", "d"), "postgres://h/d?x=1");
        assert!(with_database("h:5432/atlas", "d").is_err());
    }
}
