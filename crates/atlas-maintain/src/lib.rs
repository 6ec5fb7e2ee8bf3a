//! Atlas operations, done by Atlas itself so it runs on any PostgreSQL 15 without extensions
//! (the seed uses pg_partman and pg_cron):
//!
//! - [`Maintainer`]: premakes time-series partitions (monthly or daily) and entity partitions,
//!   drops partitions past retention under a lock timeout, summarizes BRIN ranges of closed
//!   partitions, deletes old heartbeats and refreshes the attribute statistics. Every task
//!   takes the time from its caller, so tests move the clock.
//! - [`Leader`]: one leader across servers, by a session advisory lock held on a dedicated
//!   connection (a dead leader's connection releases it).
//! - [`monitor`]: the alerts, as Prometheus gauges and warning logs.
//! - [`worker`]: the loop inside `atlas serve` — heartbeat every second and maintenance every
//!   round while this server leads.

pub mod monitor;
pub mod worker;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use atlas_store::{Store, StoreError};

pub use monitor::{Alert, Monitor};
pub use worker::{Worker, WorkerHandle};

/// Why maintenance could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaintainError {
    /// The database refused or is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A backfill reaching past the retention horizon: the next round would drop it again.
    #[error(
        "{since} is before the retention horizon ({horizon}): retention would drop those partitions again"
    )]
    BeforeRetention {
        /// The requested start.
        since: DateTime<Utc>,
        /// The oldest time retention keeps.
        horizon: DateTime<Utc>,
    },
    /// A backfill reaching further back than partitions are made for.
    #[error("{since} is more than {MAX_BACKFILL_YEARS} years ago")]
    TooFarBack {
        /// The requested start.
        since: DateTime<Utc>,
    },
}

/// How far back `ensure_ts_partitions_from` makes partitions.
pub const MAX_BACKFILL_YEARS: i64 = 20;
/// Partitions `ensure_ts_partitions_from` creates per call (its transaction holds their locks).
const BACKWARD_PER_CALL: usize = 100;

impl From<tokio_postgres::Error> for MaintainError {
    fn from(e: tokio_postgres::Error) -> Self {
        MaintainError::Store(StoreError::from(e))
    }
}

impl From<atlas_store::deadpool_postgres::PoolError> for MaintainError {
    fn from(e: atlas_store::deadpool_postgres::PoolError) -> Self {
        MaintainError::Store(StoreError::from(e))
    }
}

/// The maintainer's settings (from `[maintenance]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Daily instead of monthly partitions.
    pub daily: bool,
    /// How far ahead partitions must exist.
    pub premake: chrono::Duration,
    /// Drop partitions whose data is all older than this.
    pub retention: Option<chrono::Duration>,
    /// How often the statistics view is refreshed.
    pub stats_refresh: chrono::Duration,
    /// Longest wait for a partition's locks.
    pub lock_timeout_ms: i32,
    /// Time between maintenance rounds.
    pub interval: Duration,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Alert thresholds.
    pub thresholds: monitor::Thresholds,
}

impl Settings {
    /// From the `[maintenance]` section.
    pub fn from_config(m: &atlas_config::Maintenance) -> Self {
        Self {
            daily: m.partition_interval == atlas_config::PartitionInterval::Day,
            premake: chrono::Duration::days(i64::from(m.premake_days)),
            retention: (m.retention_days > 0)
                .then(|| chrono::Duration::days(i64::from(m.retention_days))),
            stats_refresh: chrono::Duration::from_std(m.stats_refresh)
                .unwrap_or(chrono::Duration::MAX),
            lock_timeout_ms: i32::try_from(m.lock_timeout.as_millis()).unwrap_or(60_000),
            interval: m.interval,
            heartbeat: m.heartbeat_interval,
            thresholds: monitor::Thresholds::from_config(m),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&atlas_config::Maintenance::default())
    }
}

/// What one maintenance round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Time-series partitions created.
    pub created: Vec<String>,
    /// Entity partitions created.
    pub entity_partitions: Vec<String>,
    /// Time-series partitions dropped by retention.
    pub dropped: Vec<String>,
    /// BRIN ranges summarized.
    pub brin_ranges: i64,
    /// Heartbeat rows deleted (older than 24 h).
    pub heartbeats_deleted: u64,
    /// Rows of the statistics view, when it was refreshed this round.
    pub stats_rows: Option<i64>,
    /// Tasks that failed, with their error (the others still ran).
    pub errors: Vec<String>,
}

/// Does the maintenance work; cheap to share.
#[derive(Debug)]
pub struct Maintainer {
    store: Store,
    settings: Settings,
    last_stats: Mutex<Option<DateTime<Utc>>>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Maintainer {
    /// A maintainer over `store` (the app role's pools).
    pub fn new(store: Store, settings: Settings) -> Self {
        Self {
            store,
            settings,
            last_stats: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Records a task's run in `maintenance_runs` and in metrics.
    async fn record(
        &self,
        task: &'static str,
        started: DateTime<Utc>,
        took: Duration,
        result: &Result<i64, MaintainError>,
    ) {
        metrics::histogram!("atlas_maintenance_seconds", "task" => task).record(ms(took));
        let (ok, rows, detail) = match result {
            Ok(n) => {
                // The task's error series exists at 0 from its first run on.
                metrics::counter!("atlas_maintenance_errors_total", "task" => task).increment(0);
                (true, Some(*n), None)
            }
            Err(e) => {
                metrics::counter!("atlas_maintenance_errors_total", "task" => task).increment(1);
                tracing::warn!(task, error = %e, "maintenance task failed; retrying next round");
                (false, None, Some(e.to_string()))
            }
        };
        let finished = started + chrono::Duration::from_std(took).unwrap_or_default();
        let write = async {
            let client = self.store.primary().get().await?;
            client
                .execute(
                    "INSERT INTO public.maintenance_runs (task, started_at, finished_at, ok, rows, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&task, &started, &finished, &ok, &rows, &detail],
                )
                .await?;
            Ok::<_, MaintainError>(())
        };
        if let Err(e) = write.await {
            tracing::debug!(error = %e, "could not record the maintenance run");
        }
    }

    /// Runs partition DDL in a transaction with `lock_timeout`: creating a partition locks the
    /// parent table, and a lock request waiting behind a long query would queue every write
    /// behind itself. A timeout fails the task for this round instead.
    async fn ddl(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, MaintainError> {
        let mut client = self.store.primary().get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT set_config('lock_timeout', $1, true)",
            &[&format!("{}ms", self.settings.lock_timeout_ms)],
        )
        .await?;
        let rows = tx.query(sql, params).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Creates time-series partitions back to `since` (monthly or daily, as configured) so
    /// that readings that old can be stored - a fleet's history imported with `atlas load`.
    /// Refuses a start that retention (as of `now`) would drop again. Returns the partitions
    /// created, newest first (none when `since` is already covered).
    pub async fn backfill(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, MaintainError> {
        if since < now - chrono::Duration::days(365 * MAX_BACKFILL_YEARS) {
            return Err(MaintainError::TooFarBack { since });
        }
        if let Some(retention) = self.settings.retention {
            let horizon = now - retention;
            if since < horizon {
                return Err(MaintainError::BeforeRetention { since, horizon });
            }
        }
        let created = self.extend_back(since).await?;
        for name in &created {
            tracing::info!(partition = %name, "backfill created a partition");
        }
        Ok(created)
    }

    /// Extends the time series backward until `from` is covered, a bounded number of
    /// partitions per transaction.
    async fn extend_back(&self, from: DateTime<Utc>) -> Result<Vec<String>, MaintainError> {
        let mut created = Vec::new();
        loop {
            let rows = self
                .ddl(
                    "SELECT public.ensure_ts_partitions_from($1, $2)",
                    &[&from, &self.settings.daily],
                )
                .await?;
            for row in &rows {
                created.push(row.try_get::<_, String>(0)?);
            }
            if rows.len() < BACKWARD_PER_CALL {
                return Ok(created);
            }
        }
    }

    /// Runs one task, timing and recording it.
    async fn task<F>(&self, name: &'static str, f: F) -> Result<i64, MaintainError>
    where
        F: std::future::Future<Output = Result<i64, MaintainError>>,
    {
        let started = Utc::now();
        let t0 = Instant::now();
        let r = f.await;
        self.record(name, started, t0.elapsed(), &r).await;
        r
    }

    /// One maintenance round as of `now`. Tasks are independent: a failing one is reported in
    /// [`Report::errors`] and the others still run.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Report {
        let mut report = Report::default();
        let store = &self.store;
        let s = &self.settings;

        let until = now + s.premake;
        let mut created = Vec::new();
        let r = self
            .task("partitions", async {
                for row in self
                    .ddl(
                        "SELECT public.ensure_ts_partitions_until($1, $2)",
                        &[&until, &s.daily],
                    )
                    .await?
                {
                    created.push(row.try_get::<_, String>(0)?);
                }
                // Always the previous day too: a database created in the first hours of a
                // month would otherwise refuse its devices' late readings from the day before.
                created.extend(self.extend_back(now - chrono::Duration::days(1)).await?);
                Ok(i64::try_from(created.len()).unwrap_or(0))
            })
            .await;
        if let Err(e) = r {
            report.errors.push(format!("partitions: {e}"));
        }
        report.created = created;

        let mut entity_parts = Vec::new();
        let r = self
            .task("entity_partitions", async {
                for row in self
                    .ddl("SELECT public.ensure_entity_partitions(1)", &[])
                    .await?
                {
                    entity_parts.push(row.get::<_, String>(0));
                }
                Ok(i64::try_from(entity_parts.len()).unwrap_or(0))
            })
            .await;
        if let Err(e) = r {
            report.errors.push(format!("entity_partitions: {e}"));
        }
        report.entity_partitions = entity_parts;

        if let Some(retention) = s.retention {
            let before = now - retention;
            let mut dropped = Vec::new();
            let r = self
                .task("retention", async {
                    let client = store.primary().get().await?;
                    // One partition per statement keeps each lock short.
                    for _ in 0..1000 {
                        let row = client
                            .query_one(
                                "SELECT public.drop_oldest_ts_partition_before($1, $2)",
                                &[&before, &s.lock_timeout_ms],
                            )
                            .await?;
                        match row.get::<_, Option<String>>(0) {
                            Some(name) => {
                                tracing::info!(partition = %name, "retention dropped a partition");
                                dropped.push(name);
                            }
                            None => break,
                        }
                    }
                    Ok(i64::try_from(dropped.len()).unwrap_or(0))
                })
                .await;
            if let Err(e) = r {
                report.errors.push(format!("retention: {e}"));
            }
            report.dropped = dropped;
        }

        match self
            .task("brin", async {
                let client = store.primary().get().await?;
                let n: i64 = client
                    .query_one("SELECT public.summarize_closed_brin($1)", &[&now])
                    .await?
                    .get(0);
                Ok(n)
            })
            .await
        {
            Ok(n) => report.brin_ranges = n,
            Err(e) => report.errors.push(format!("brin: {e}")),
        }

        match self
            .task("heartbeat_cleanup", async {
                let client = store.primary().get().await?;
                let n = client
                    .execute(
                        "DELETE FROM public.replication_heartbeat WHERE \"timestamp\" < $1::timestamptz - interval '24 hours'",
                        &[&now],
                    )
                    .await?;
                // Runs are stamped with the database's clock, not the maintainer's.
                client
                    .execute(
                        "DELETE FROM public.maintenance_runs WHERE finished_at < now() - interval '7 days'",
                        &[],
                    )
                    .await?;
                Ok(i64::try_from(n).unwrap_or(0))
            })
            .await
        {
            Ok(n) => report.heartbeats_deleted = u64::try_from(n).unwrap_or(0),
            Err(e) => report.errors.push(format!("heartbeat_cleanup: {e}")),
        }

        let due = self
            .last_stats
            .lock()
            .map(|l| l.is_none_or(|t| t + s.stats_refresh <= now))
            .unwrap_or(true);
        if due {
            match self.refresh_stats().await {
                Ok(rows) => {
                    report.stats_rows = Some(rows);
                    if let Ok(mut l) = self.last_stats.lock() {
                        *l = Some(now);
                    }
                }
                Err(e) => report.errors.push(format!("stats_refresh: {e}")),
            }
        }
        metrics::gauge!("atlas_maintenance_last_round_timestamp_seconds")
            .set(Utc::now().timestamp() as f64);
        report
    }

    /// Refreshes `mv_entity_attribute_stats` CONCURRENTLY (readers keep reading the old
    /// contents meanwhile) and records its duration and rows. Returns the rows.
    pub async fn refresh_stats(&self) -> Result<i64, MaintainError> {
        let store = &self.store;
        let t0 = Instant::now();
        let rows = self
            .task("stats_refresh", async {
                let client = store.primary().get().await?;
                let rows: i64 = client
                    .query_one("SELECT public.refresh_attribute_stats()", &[])
                    .await?
                    .get(0);
                Ok(rows)
            })
            .await?;
        metrics::gauge!("atlas_stats_refresh_rows").set(rows as f64);
        metrics::gauge!("atlas_stats_refresh_seconds").set(ms(t0.elapsed()));
        Ok(rows)
    }
}

/// The newest run of each task, for `atlas status`: (task, finished, ok, rows, seconds, detail).
pub async fn last_runs(store: &Store) -> Result<Vec<LastRun>, MaintainError> {
    let client = store.primary().get().await?;
    let rows = client
        .query(
            "SELECT DISTINCT ON (task) task, finished_at, ok, rows, \
                    extract(epoch FROM finished_at - started_at)::float8, detail \
             FROM public.maintenance_runs ORDER BY task, finished_at DESC",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LastRun {
            task: r.get(0),
            finished_at: r.get(1),
            ok: r.get(2),
            rows: r.get(3),
            seconds: r.get(4),
            detail: r.get(5),
        })
        .collect())
}

/// A task's newest run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastRun {
    /// The task.
    pub task: String,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Rows it reported (created, dropped, refreshed…).
    pub rows: Option<i64>,
    /// How long it took.
    pub seconds: f64,
    /// The error, when it failed.
    pub detail: Option<String>,
}
