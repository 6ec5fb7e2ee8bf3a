//! The write pipeline: bounded queue → batcher → a pool of writers. A durable batch goes as
//! one binary array of staging rows to `ingest_rows` (validate, store, project; its commit is the
//! acknowledgement); a staged batch is COPYed into the UNLOGGED staging table. Then cache
//! invalidation and the acknowledgements. A background task drains staging (staged batches
//! and rows other producers COPY there) with `stage_flush` (SKIP LOCKED).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};

use atlas_store::{Pool, Store, StoreError, TenantId};

use crate::typing::{Row, Typed};
use atlas_cache::Cache;

/// When a request's values are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the values are committed in `entity_values_ts` (the default).
    #[default]
    Durable,
    /// After the COPY into the UNLOGGED staging table committed: faster, but a PostgreSQL
    /// crash before the background flush (≤ ~100 ms later) loses them.
    Staged,
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Flush a batch once it holds this many rows…
    pub batch_rows: usize,
    /// …or this long after its first request arrived.
    pub batch_interval: Duration,
    /// Rows that may wait in memory; beyond that requests get 503 (bounded memory).
    pub queue_rows: usize,
    /// Batches written concurrently (each on its own connection). Safe: inserts run in
    /// primary-key order and projection upserts in entity order, so writers cannot deadlock.
    pub writers: usize,
    /// How often the background task drains other producers' staged rows.
    pub drain_interval: Duration,
    /// Rows per background `stage_flush` call.
    pub drain_batch: i32,
    /// How long a durable batch that finds no primary is retried before 503.
    pub retry_unavailable: Duration,
    /// A write that takes longer is abandoned as of unknown outcome and retried.
    pub commit_timeout: Duration,
}

impl IngestConfig {
    /// The pipeline as configured in `[ingest]`.
    pub fn from_settings(s: &atlas_config::Ingest) -> Self {
        Self {
            batch_rows: s.batch_rows.get(),
            batch_interval: s.batch_interval,
            queue_rows: s.queue_rows,
            writers: s.writers.get(),
            retry_unavailable: s.retry_unavailable,
            commit_timeout: s.commit_timeout,
            ..Self::default()
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_rows: 5_000,
            batch_interval: Duration::from_millis(100),
            queue_rows: 200_000,
            writers: 3,
            drain_interval: Duration::from_millis(100),
            drain_batch: 50_000,
            retry_unavailable: Duration::from_secs(15),
            commit_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The queue is full; retry later (503).
    #[error("ingest queue is full; retry later")]
    QueueFull,
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The database could not be reached; nothing of the request is acknowledged (503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The batch failed for another reason; nothing of the request is acknowledged (500).
    #[error("writing the batch failed: {0}")]
    Failed(String),
    /// Some values could not be stored (e.g. the entity was deleted meanwhile); the others were.
    #[error("{refused} of the request's values were not stored: {reason}")]
    Refused {
        /// How many.
        refused: usize,
        /// The first reason.
        reason: String,
        /// Index of the first refused row in the request.
        row: usize,
        /// Of the others, how many were new (see [`Ack::stored`]).
        stored: Option<usize>,
    },
}

/// What an acknowledged request stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Values accepted: stored now, or already stored (a replay is a no-op).
    pub accepted: usize,
    /// Of those, how many the database newly stored (the rest were already stored); `None`
    /// for staged values, stored later. The database counts per entity, so when two requests
    /// of one batch carry values of the same entity, the count is credited to them in
    /// submission order: summed over requests it is exact.
    pub stored: Option<usize>,
    /// The primary's WAL position read after the batch committed (at or past its commit), as
    /// a byte offset; `None` if it could not be read. Read once per batch, not per request.
    pub wal_lsn: Option<u64>,
}

struct Job {
    rows: Vec<Row>,
    durability: Durability,
    respond: oneshot::Sender<Result<Ack, IngestError>>,
    _permits: tokio::sync::OwnedSemaphorePermit,
}

/// Handle to submit rows; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    queue_rows: usize,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("queue_rows", &self.queue_rows)
            .finish_non_exhaustive()
    }
}

/// The running pipeline's tasks; await [`Pipeline::shutdown`] to drain it.
pub struct Pipeline {
    batcher: JoinHandle<()>,
    drainer: JoinHandle<()>,
    stop_batcher: oneshot::Sender<()>,
    stop_drain: oneshot::Sender<()>,
    permits: Arc<Semaphore>,
}

const COPY_STAGING: &str = "COPY public.entity_values_ingest (entity_id, tenant_id, attribute_id, value, value_int, \
     value_decimal, value_bool, value_date, value_timestamp, ingested_at) FROM STDIN BINARY";
/// The staging table's column types, in order (`staged_at` last). COPY leaves `staged_at` to
/// its default and sends the first ten; `ingest_rows` takes all eleven as a record.
const STAGING_TYPES: [Type; 11] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::NUMERIC,
    Type::BOOL,
    Type::DATE,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
];

impl Ingestor {
    /// Starts the batcher and the background drain.
    pub fn start(store: Store, cache: Cache, config: IngestConfig) -> (Ingestor, Pipeline) {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        let permits = Arc::new(Semaphore::new(config.queue_rows));
        let (stop_drain, stopped) = oneshot::channel();
        let (stop_batcher, batcher_stopped) = oneshot::channel();
        let batcher = tokio::spawn(run_batcher(
            rx,
            batcher_stopped,
            store.clone(),
            cache.clone(),
            config.clone(),
        ));
        let drainer = tokio::spawn(run_drainer(store, cache, config.clone(), stopped));
        (
            Ingestor {
                tx,
                permits: Arc::clone(&permits),
                queue_rows: config.queue_rows,
            },
            Pipeline {
                batcher,
                drainer,
                stop_batcher,
                stop_drain,
                permits,
            },
        )
    }

    /// Queues rows and waits for their acknowledgement.
    pub async fn submit(&self, rows: Vec<Row>, durability: Durability) -> Result<Ack, IngestError> {
        let n = u32::try_from(rows.len().max(1)).map_err(|_| IngestError::QueueFull)?;
        if rows.len() > self.queue_rows {
            return Err(IngestError::QueueFull);
        }
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(n)
            .map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => IngestError::ShuttingDown,
                tokio::sync::TryAcquireError::NoPermits => {
                    metrics::counter!("atlas_ingest_queue_full_total").increment(1);
                    IngestError::QueueFull
                }
            })?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("atlas_ingest_queue_rows").set(self.queued_rows() as f64);
        let (respond, ack) = oneshot::channel();
        self.tx
            .send(Job {
                rows,
                durability,
                respond,
                _permits: permit,
            })
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        ack.await.map_err(|_| IngestError::ShuttingDown)?
    }

    /// Rows currently waiting.
    pub fn queued_rows(&self) -> usize {
        self.queue_rows
            .saturating_sub(self.permits.available_permits())
    }
}

impl Pipeline {
    /// Refuses new requests (503), writes and acknowledges every request already queued, then
    /// drains staging one last time.
    pub async fn shutdown(self) {
        self.permits.close();
        let _ = self.stop_batcher.send(());
        let _ = self.batcher.await;
        let _ = self.stop_drain.send(());
        let _ = self.drainer.await;
    }
}

async fn run_batcher(
    mut rx: mpsc::Receiver<Job>,
    mut stop: oneshot::Receiver<()>,
    store: Store,
    cache: Cache,
    config: IngestConfig,
) {
    // Batches go to a pool of writers so one batch is collected while others are written.
    // The writers have connections of their own: they never wait behind requests for one,
    // and their sessions keep the flush's plans.
    let (batches, batch_rx) = mpsc::channel::<(Vec<Job>, bool)>(config.writers.max(1));
    let batch_rx = Arc::new(tokio::sync::Mutex::new(batch_rx));
    let pool = store
        .dedicated_primary_pool(config.writers.max(1))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no dedicated writer pool; writers share the primary's");
            store.primary().clone()
        });
    let mut writers = Vec::new();
    for _ in 0..config.writers.max(1) {
        let (rx, pool, cache) = (Arc::clone(&batch_rx), pool.clone(), cache.clone());
        let limits = Limits {
            retry_unavailable: config.retry_unavailable,
            commit_timeout: config.commit_timeout,
        };
        writers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((jobs, flush)) = next else { return };
                write_batch(&pool, &cache, jobs, flush, limits).await;
            }
        }));
    }
    let mut closing = false;
    loop {
        let first = if closing {
            rx.recv().await
        } else {
            tokio::select! {
                job = rx.recv() => job,
                _ = &mut stop => {
                    // No new jobs; the ones already queued are still written below.
                    closing = true;
                    rx.close();
                    rx.recv().await
                }
            }
        };
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + config.batch_interval;
        let mut rows = first.rows.len();
        let mut jobs = vec![first];
        while rows < config.batch_rows {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(j) => { rows += j.rows.len(); jobs.push(j); }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let (staged, durable): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| j.durability == Durability::Staged);
        for (jobs, flush) in [(staged, false), (durable, true)] {
            if !jobs.is_empty() && batches.send((jobs, flush)).await.is_err() {
                tracing::error!("ingest writers are gone");
            }
        }
    }
    // Every accepted job is handed over; let the writers finish them.
    drop(batches);
    for w in writers {
        let _ = w.await;
    }
}

type DeadKey = (i64, i64, i64, DateTime<Utc>);

/// What a written batch reports.
struct Written {
    /// Entities whose hot projection changed.
    changed: Vec<(TenantId, i64)>,
    /// Dead-lettered rows and why.
    dead: HashMap<DeadKey, String>,
    /// Values newly stored in `entity_values_ts`, per (tenant, entity) (None: staged, not
    /// stored yet).
    stored: Option<HashMap<(i64, i64), usize>>,
    /// The WAL position after the commit.
    wal_lsn: Option<u64>,
}

/// Reads the WAL position after a commit; a failure only costs the answer its `X-Atlas-Lsn`.
async fn wal_lsn(client: &atlas_store::deadpool_postgres::Client) -> Option<u64> {
    let stmt = client
        .prepare_cached(atlas_store::cluster::WAL_POSITION)
        .await
        .ok()?;
    let lsn: i64 = client.query_one(&stmt, &[]).await.ok()?.try_get(0).ok()?;
    u64::try_from(lsn).ok()
}

/// How long a batch may take, and how long one that finds no primary is retried.
#[derive(Debug, Clone, Copy)]
struct Limits {
    retry_unavailable: Duration,
    commit_timeout: Duration,
}

/// Writes one batch in one transaction and answers every job of it.
///
/// A durable batch whose write fails because there is no primary — none reachable, the
/// connection lost mid-commit, a timeout — is retried until `retry_unavailable` has passed:
/// during a failover the new primary takes over within seconds, and a replay of values an
/// earlier attempt did commit stores nothing (the primary key). Requests are acknowledged
/// only after the attempt that commits. Staged batches are not retried: their rows live in
/// an UNLOGGED table that a failover empties anyway, so the client's retry is the remedy.
async fn write_batch(pool: &Pool, cache: &Cache, jobs: Vec<Job>, flush: bool, limits: Limits) {
    let started = Instant::now();
    let total: usize = jobs.iter().map(|j| j.rows.len()).sum();
    let mode = if flush { "durable" } else { "staged" };
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("atlas_ingest_batch_rows", "durability" => mode).record(total as f64);
    let mut attempt: u32 = 0;
    let result = loop {
        attempt += 1;
        let result = write_rows(pool, &jobs, flush, limits.commit_timeout).await;
        match result {
            Err(e)
                if flush
                    && e.is_unavailable()
                    && started.elapsed() + RETRY_PAUSE_MAX <= limits.retry_unavailable =>
            {
                metrics::counter!("atlas_ingest_batch_retries_total").increment(1);
                if attempt == 1 {
                    tracing::warn!(error = %e, rows = total, "durable batch found no primary; retrying");
                } else {
                    tracing::debug!(error = %e, attempt, rows = total, "durable batch found no primary; retrying");
                }
                // 50 ms, 100 ms, … up to 500 ms: a promotion is noticed within a pause.
                let pause = RETRY_PAUSE_MAX
                    .min(Duration::from_millis(50) * 2u32.saturating_pow(attempt - 1));
                tokio::time::sleep(pause).await;
            }
            other => break other,
        }
    };
    metrics::histogram!("atlas_ingest_flush_seconds", "durability" => mode)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(Written {
            mut changed,
            dead,
            stored,
            wal_lsn,
        }) => {
            if attempt > 1 {
                // An earlier attempt may have committed and changed projections it could not
                // report: every entity of the batch leaves the cache.
                changed.extend(
                    jobs.iter()
                        .flat_map(|j| j.rows.iter().map(|r| (r.tenant, r.entity_id))),
                );
                changed.sort_unstable_by_key(|(t, e)| (t.0, *e));
                changed.dedup_by_key(|(t, e)| (t.0, *e));
            }
            count_outcomes(total, stored.as_ref().map(|m| m.values().sum()), dead.len());
            let mut stored = stored;
            let mut tenants: Vec<i64> = jobs
                .iter()
                .flat_map(|j| j.rows.iter().map(|r| r.tenant.0))
                .collect();
            tenants.sort_unstable();
            tenants.dedup();
            let hot: Vec<(i64, i64)> = changed.iter().map(|(t, e)| (t.0, *e)).collect();
            cache.entities_changed(&hot, &tenants).await;
            for job in jobs {
                let mut refused = None;
                let mut n_refused = 0;
                let mut job_stored = stored.as_ref().map(|_| 0);
                for (i, r) in job.rows.iter().enumerate() {
                    if let Some(reason) =
                        dead.get(&(r.tenant.0, r.entity_id, r.attribute_id, r.ingested_at))
                    {
                        n_refused += 1;
                        refused.get_or_insert((i, reason.clone()));
                    } else if let Some(left) = stored
                        .as_mut()
                        .and_then(|m| m.get_mut(&(r.tenant.0, r.entity_id)))
                        && *left > 0
                    {
                        *left -= 1;
                        job_stored = job_stored.map(|n| n + 1);
                    }
                }
                let result = match refused {
                    None => Ok(Ack {
                        accepted: job.rows.len(),
                        stored: job_stored,
                        wal_lsn,
                    }),
                    Some((row, reason)) => Err(IngestError::Refused {
                        refused: n_refused,
                        reason,
                        row,
                        stored: job_stored,
                    }),
                };
                let _ = job.respond.send(result);
            }
            tracing::debug!(
                rows = total,
                flush,
                elapsed_ms = started.elapsed().as_millis(),
                "batch written"
            );
        }
        Err(e) => {
            metrics::counter!("atlas_ingest_batches_failed_total").increment(1);
            tracing::warn!(error = %e, rows = total, "batch failed; nothing of it is acknowledged");
            let unavailable = e.is_unavailable();
            let message = e.to_string();
            for job in jobs {
                let err = if unavailable {
                    IngestError::Unavailable(message.clone())
                } else {
                    IngestError::Failed(message.clone())
                };
                let _ = job.respond.send(Err(err));
            }
        }
    }
}

/// Counts a written batch's values by outcome: `stored` (new in `entity_values_ts`), `replayed`
/// (already stored: a retried request; nothing added), `dead_lettered`, or `staged` (stored
/// later by the drain). A rising `replayed` share is a retry storm, which also sends batches
/// down `ingest_rows`' slower general path.
fn count_outcomes(total: usize, stored: Option<usize>, dead: usize) {
    let count = |outcome: &'static str, n: usize| {
        if n > 0 {
            metrics::counter!("atlas_ingest_values_total", "outcome" => outcome)
                .increment(u64::try_from(n).unwrap_or(u64::MAX));
        }
    };
    let dead = dead.min(total);
    match stored {
        Some(stored) => {
            let stored = stored.min(total - dead);
            count("stored", stored);
            count("replayed", total - dead - stored);
        }
        None => count("staged", total - dead),
    }
    count("dead_lettered", dead);
}

/// The longest pause between two attempts of a batch that found no primary.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Writes a batch within `timeout`. A connection that timed out (its commit may still be
/// waiting, e.g. for a synchronous standby that is gone) or that reached a standby (a
/// demoted primary) is closed rather than returned to the pool.
async fn write_rows(
    pool: &Pool,
    jobs: &[Job],
    flush: bool,
    timeout: Duration,
) -> Result<Written, StoreError> {
    let mut client = pool.get().await?;
    match tokio::time::timeout(timeout, write_rows_on(&mut client, jobs, flush)).await {
        Ok(Err(e)) if e.is_read_only() => {
            drop(atlas_store::deadpool_postgres::Object::take(client));
            Err(e)
        }
        Ok(result) => result,
        Err(_) => {
            drop(atlas_store::deadpool_postgres::Object::take(client));
            Err(StoreError::TimedOut {
                what: "writing an ingest batch",
                after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            })
        }
    }
}

/// Writes a batch: durable rows through `ingest_rows`, staged rows by COPY into staging.
async fn write_rows_on(
    client: &mut atlas_store::deadpool_postgres::Client,
    jobs: &[Job],
    flush: bool,
) -> Result<Written, StoreError> {
    let mut changed = Vec::new();
    let mut dead = HashMap::new();
    if !flush {
        // Staged: COPY into the UNLOGGED staging table; the background drain stores it.
        let tx = client.transaction().await?;
        let sink = tx.copy_in(COPY_STAGING).await?;
        let writer = BinaryCopyInWriter::new(sink, &STAGING_TYPES[..10]);
        pin_mut!(writer);
        for row in jobs.iter().flat_map(|j| j.rows.iter()) {
            let values = StagingValues::of(row);
            writer.as_mut().write(&values.refs()[..10]).await?;
        }
        writer.finish().await?;
        tx.commit().await?;
        return Ok(Written {
            changed,
            dead,
            stored: None,
            wal_lsn: wal_lsn(client).await,
        });
    }
    // Durable: the rows go as one binary array of staging rows straight into ingest_rows
    // (validate, store, project) in one autocommitted statement: its commit is the
    // acknowledgement. In primary-key order: ingest_rows sorts by it to insert and to project,
    // and PostgreSQL's sort finishes in one pass over presorted input (measured: 75 -> 67 ms
    // for a 5 000-value batch).
    let mut batch: Vec<StagingRow<'_>> = jobs
        .iter()
        .flat_map(|j| j.rows.iter().map(StagingRow))
        .collect();
    batch.sort_unstable_by_key(|r| {
        (
            r.0.tenant.0,
            r.0.entity_id,
            r.0.attribute_id,
            r.0.ingested_at,
        )
    });
    let stmt = client
        .prepare_cached("SELECT * FROM public.ingest_rows($1)")
        .await?;
    let rows = client.query(&stmt, &[&batch]).await?;
    let mut stored = HashMap::new();
    for r in rows {
        let tenant: i64 = r.try_get(0)?;
        let entity: i64 = r.try_get(1)?;
        match r.try_get::<_, Option<String>>(6)? {
            Some(reason) => {
                dead.insert((tenant, entity, r.try_get(4)?, r.try_get(5)?), reason);
            }
            None => {
                *stored.entry((tenant, entity)).or_insert(0) +=
                    usize::try_from(r.try_get::<_, i32>(2)?).unwrap_or(0);
                if r.try_get::<_, bool>(3)? {
                    changed.push((TenantId(tenant), entity));
                }
            }
        }
    }
    Ok(Written {
        changed,
        dead,
        stored: Some(stored),
        wal_lsn: wal_lsn(client).await,
    })
}

/// One row of a durable batch as an element of `entity_values_ingest[]`, in PostgreSQL's
/// binary record format: the field count, then each field's type OID, length and value, in
/// the staging table's column order (`staged_at` NULL: ingest_rows stamps dead letters).
struct StagingRow<'a>(&'a Row);

impl std::fmt::Debug for StagingRow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StagingRow")
            .field(&self.0.entity_id)
            .finish()
    }
}

impl ToSql for StagingRow<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        let values = StagingValues::of(self.0);
        out.put_i32(11);
        for (value, ty) in values.refs().into_iter().zip(&STAGING_TYPES) {
            out.put_u32(ty.oid());
            let at = out.len();
            out.put_i32(0);
            let len = match value.to_sql_checked(ty, out)? {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(out.len() - at - 4)?,
            };
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        // The staging table's columns, in order: a schema that drifted is refused by name
        // here rather than misread by PostgreSQL.
        ty.name() == "entity_values_ingest"
            && matches!(ty.kind(), Kind::Composite(fields)
                if fields.iter().map(tokio_postgres::types::Field::type_).eq(STAGING_TYPES.iter()))
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A row's values in the staging table's column order: its typed value goes to exactly one
/// of the six value columns; `staged_at` is NULL (the database stamps it).
struct StagingValues<'a> {
    row: &'a Row,
    text: Option<&'a str>,
    int: Option<i64>,
    dec: Option<rust_decimal::Decimal>,
    bool: Option<bool>,
    date: Option<chrono::NaiveDate>,
    ts: Option<DateTime<Utc>>,
    staged_at: Option<DateTime<Utc>>,
}

impl<'a> StagingValues<'a> {
    fn of(row: &'a Row) -> Self {
        let mut v = Self {
            row,
            text: None,
            int: None,
            dec: None,
            bool: None,
            date: None,
            ts: None,
            staged_at: None,
        };
        match &row.value {
            Typed::Text(s) | Typed::Json(s) => v.text = Some(s),
            Typed::Int(i) => v.int = Some(*i),
            Typed::Decimal(d) => v.dec = Some(*d),
            Typed::Bool(b) => v.bool = Some(*b),
            Typed::Date(d) => v.date = Some(*d),
            Typed::Timestamp(t) => v.ts = Some(*t),
        }
        v
    }

    /// The eleven columns, typed as [`STAGING_TYPES`].
    fn refs(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.row.entity_id,
            &self.row.tenant.0,
            &self.row.attribute_id,
            &self.text,
            &self.int,
            &self.dec,
            &self.bool,
            &self.date,
            &self.ts,
            &self.row.ingested_at,
            &self.staged_at,
        ]
    }
}

async fn run_drainer(
    store: Store,
    cache: Cache,
    config: IngestConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(config.drain_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut measured: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = &mut stop => true,
        };
        let drained = drain_once(&store, &cache, config.drain_batch).await;
        metrics::counter!("atlas_staging_drained_values_total")
            .increment(u64::try_from(drained).unwrap_or(u64::MAX));
        if measured.is_none_or(|t| t.elapsed() >= STAGING_MEASURE_EVERY) {
            measured = Some(Instant::now());
            measure_staging(&store).await;
        }
        if stopping {
            return;
        }
    }
}

/// How often the drainer reads the staging backlog for its gauges.
const STAGING_MEASURE_EVERY: Duration = Duration::from_secs(1);
/// The backlog gauge counts at most this many rows: a bounded count read every second stays
/// cheap (~10 ms) when staging is backed up, which is when the machine has least to spare.
const STAGING_MEASURE_CAP: i32 = 100_000;

/// Sets `atlas_staging_backlog_rows` and `atlas_staging_oldest_age_seconds` (0 when empty).
async fn measure_staging(store: &Store) {
    match store.staging_backlog(STAGING_MEASURE_CAP).await {
        Ok(b) => {
            #[allow(clippy::cast_precision_loss, reason = "a gauge")]
            metrics::gauge!("atlas_staging_backlog_rows").set(b.rows as f64);
            let age = b
                .oldest_staged_at
                .map_or(0.0, |t| (Utc::now() - t).as_seconds_f64().max(0.0));
            metrics::gauge!("atlas_staging_oldest_age_seconds").set(age);
        }
        Err(e) => tracing::debug!(error = %e, "reading the staging backlog failed"),
    }
}

/// Drains staging until empty (errors are logged; the next tick retries), then drops the
/// cache entries of entities whose projection changed. Returns the values stored.
pub async fn drain_once(store: &Store, cache: &Cache, batch: i32) -> usize {
    match store.drain_staging(batch, usize::MAX, |_| {}).await {
        Ok(flushed) => {
            if DRAIN_FAILING.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("background stage_flush works again");
            }
            let hot: Vec<(i64, i64)> = flushed
                .iter()
                .filter(|f| f.hot_changed)
                .map(|f| (f.tenant.0, f.entity_id))
                .collect();
            let mut tenants: Vec<i64> = flushed
                .iter()
                .filter(|f| f.stored > 0)
                .map(|f| f.tenant.0)
                .collect();
            tenants.sort_unstable();
            tenants.dedup();
            cache.entities_changed(&hot, &tenants).await;
            flushed
                .iter()
                .map(|f| usize::try_from(f.stored).unwrap_or(0))
                .sum()
        }
        Err(e) => {
            // Once per outage at warn (it is retried every tick: during a failover that would
            // be ten lines a second).
            if DRAIN_FAILING.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(error = %e, "background stage_flush failed; retrying next tick");
            } else {
                tracing::warn!(error = %e, "background stage_flush failed; retrying every tick");
            }
            0
        }
    }
}

/// Whether the last background drain failed (so that an outage is logged once).
static DRAIN_FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    fn staging_type() -> Type {
        let fields = [
            "entity_id",
            "tenant_id",
            "attribute_id",
            "value",
            "value_int",
            "value_decimal",
            "value_bool",
            "value_date",
            "value_timestamp",
            "ingested_at",
            "staged_at",
        ]
        .iter()
        .zip(STAGING_TYPES.iter())
        .map(|(n, t)| tokio_postgres::types::Field::new((*n).to_owned(), t.clone()))
        .collect();
        Type::new(
            "entity_values_ingest".into(),
            0,
            Kind::Composite(fields),
            "public".into(),
        )
    }

    #[test]
    fn a_staging_row_is_a_binary_record_with_one_value_column_set() {
        let row = Row {
            tenant: TenantId(7),
            entity_id: 42,
            attribute_id: 3,
            value: Typed::Int(-5),
            ingested_at: DateTime::from_timestamp_micros(0).unwrap_or_default(),
        };
        let ty = staging_type();
        assert!(<StagingRow as ToSql>::accepts(&ty));
        let mut buf = bytes::BytesMut::new();
        let null = StagingRow(&row)
            .to_sql_checked(&ty, &mut buf)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(null, IsNull::No));
        // Walk the record: count, then (oid, length, bytes) per field.
        let i32_at =
            |at: usize| i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        assert_eq!(i32_at(0), 11);
        let mut at = 4;
        let mut fields = Vec::new();
        for _ in 0..11 {
            let (oid, len) = (i32_at(at).cast_unsigned(), i32_at(at + 4));
            at += 8;
            let len = usize::try_from(len).ok();
            let value = len.map(|n| buf[at..at + n].to_vec());
            at += len.unwrap_or(0);
            fields.push((oid, value));
        }
        assert_eq!(at, buf.len(), "trailing bytes");
        let oids: Vec<u32> = fields.iter().map(|f| f.0).collect();
        let expected: Vec<u32> = STAGING_TYPES.iter().map(Type::oid).collect();
        assert_eq!(oids, expected);
        assert_eq!(fields[0].1.as_deref(), Some(&42_i64.to_be_bytes()[..]));
        assert_eq!(fields[1].1.as_deref(), Some(&7_i64.to_be_bytes()[..]));
        assert_eq!(fields[2].1.as_deref(), Some(&3_i64.to_be_bytes()[..]));
        assert_eq!(fields[4].1.as_deref(), Some(&(-5_i64).to_be_bytes()[..]));
        // Only value_int of the six value columns, and no staged_at.
        for i in [3, 5, 6, 7, 8, 10] {
            assert_eq!(fields[i].1, None, "field {i}");
        }
        assert!(fields[9].1.is_some(), "ingested_at");

        // A composite of another shape is refused, not misread.
        let Kind::Composite(mut other) = staging_type().kind().clone() else {
            unreachable!()
        };
        other.pop();
        let drifted = Type::new(
            "entity_values_ingest".into(),
            0,
            Kind::Composite(other),
            "public".into(),
        );
        assert!(!<StagingRow as ToSql>::accepts(&drifted));
    }
}
