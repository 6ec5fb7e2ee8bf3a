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

use atlas_store::limits::{Limit, Values};
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

/// A bucket is aggregated once it closed this long ago (values for the current minute keep
/// coming; a late one marks its bucket again).
pub const ROLLUP_SETTLE: chrono::Duration = chrono::Duration::seconds(10);
/// Marks claimed, and claims aggregated, per statement.
const ROLLUP_BATCH: i32 = 5_000;
/// Longest the seal waits for running writers (ingest queues behind it meanwhile).
const SEAL_WAIT_MS: i32 = 200;
/// Longest a maintenance round spends on rollups; the rest waits for the next round.
const ROLLUP_ROUND_LIMIT: Duration = Duration::from_secs(20);

/// Rows one retention statement deletes.
const PURGE_BATCH: i32 = 10_000;
/// Longest a maintenance round spends deleting tenants' expired rows.
const PURGE_ROUND_LIMIT: Duration = Duration::from_secs(20);

/// What retention does in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Drop whole time-series partitions whose data is all older than this.
    pub drop_before: Option<DateTime<Utc>>,
    /// Tenant-by-tenant deletes.
    pub purges: Vec<Purge>,
}

/// One tenant's expired rows of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// The tenant.
    pub tenant_id: i64,
    /// 0 raw values, 1/2/3 rollups of 1 minute/hour/day, 4 dead letters.
    pub kind: i16,
    /// Rows older than this go.
    pub before: DateTime<Utc>,
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
    /// Retention of each kind of data, and quotas, where a tenant has no setting of its own
    /// (raw values: [`Settings::retention`] instead).
    pub defaults: Values,
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
            defaults: limit_defaults(m, &atlas_config::Lifecycle::default()),
        }
    }

    /// With the retention and quota defaults of `[lifecycle]` (raw values keep
    /// [`Settings::retention`]).
    pub fn with_lifecycle(self, l: &atlas_config::Lifecycle) -> Self {
        Self {
            defaults: limit_defaults(&atlas_config::Maintenance::default(), l),
            ..self
        }
    }
}

/// The global defaults of every tenant limit, from the configuration: raw values keep
/// `[maintenance] retention_days`, the rest is `[lifecycle]`.
pub fn limit_defaults(m: &atlas_config::Maintenance, l: &atlas_config::Lifecycle) -> Values {
    let q = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Values([
        i64::from(m.retention_days),
        i64::from(l.rollup_1m_days),
        i64::from(l.rollup_1h_days),
        i64::from(l.rollup_1d_days),
        i64::from(l.dead_letter_days),
        q(l.max_entities),
        q(l.max_values_per_day),
        q(l.max_stored_values),
    ])
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
    /// Rows retention deleted tenant by tenant (values, rollups, dead letters).
    pub purged: i64,
    /// Rollup buckets re-aggregated (minutes, hours and days).
    pub rollups: i64,
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

        let mut dropped = Vec::new();
        let r = self
            .task("retention", async {
                let plan = self.retention_plan(now).await?;
                if let Some(before) = plan.drop_before {
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
                }
                let purged = self.purge(&plan.purges).await?;
                report.purged = purged;
                Ok(purged + i64::try_from(dropped.len()).unwrap_or(0))
            })
            .await;
        if let Err(e) = r {
            report.errors.push(format!("retention: {e}"));
        }
        report.dropped = dropped;

        match self.task("rollups", self.rollups(now)).await {
            Ok(n) => report.rollups = n,
            Err(e) => report.errors.push(format!("rollups: {e}")),
        }

        match self.task("usage", self.usage_metrics()).await {
            Ok(_) => {}
            Err(e) => report.errors.push(format!("usage: {e}")),
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

    /// Brings the rollups up to date as of `now`: claims the marks of buckets that closed
    /// [`ROLLUP_SETTLE`] before `now`, waits (briefly) for the writers that may have relied on
    /// them, and re-aggregates minutes from raw values, then hours from minutes and days from
    /// hours. Returns the buckets done; what is not ready yet is left for the next round
    /// (readers take it from finer data meanwhile).
    pub async fn rollups(&self, now: DateTime<Utc>) -> Result<i64, MaintainError> {
        let client = self.store.primary().get().await?;
        let settled = now - ROLLUP_SETTLE;
        let claim = client
            .prepare_cached("SELECT public.rollup_claim($1, $2)")
            .await?;
        let seal = client
            .prepare_cached("SELECT public.rollup_seal($1)")
            .await?;
        let apply = client
            .prepare_cached("SELECT public.rollup_apply($1, $2)")
            .await?;
        let pending = client
            .prepare_cached("SELECT coalesce(sum(claimed), 0)::bigint FROM public.rollup_backlog()")
            .await?;
        let mut done = 0_i64;
        let deadline = Instant::now() + ROLLUP_ROUND_LIMIT;
        loop {
            let claimed: i32 = client
                .query_one(&claim, &[&settled, &ROLLUP_BATCH])
                .await?
                .get(0);
            // Its own transaction, after the claim's commit (see rollup_seal). A writer that
            // takes long keeps it from sealing: try again shortly, ingest is not held up.
            if let Err(e) = client.query_one(&seal, &[&SEAL_WAIT_MS]).await {
                if e.code() != Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                    return Err(e.into());
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            let mut applied = 0;
            for level in [1_i16, 2, 3] {
                loop {
                    let n: i32 = client
                        .query_one(&apply, &[&level, &ROLLUP_BATCH])
                        .await?
                        .get(0);
                    if n == 0 {
                        break;
                    }
                    applied += i64::from(n);
                }
            }
            done += applied;
            let left: i64 = client.query_one(&pending, &[]).await?.get(0);
            if (claimed == 0 && left == 0) || Instant::now() >= deadline {
                break;
            }
        }
        metrics::counter!("atlas_rollup_buckets_total").increment(u64::try_from(done).unwrap_or(0));
        Ok(done)
    }

    /// What retention does as of `now`, from every tenant's limits: time-series partitions
    /// are dropped whole only below the longest raw retention of all tenants (every tenant
    /// allows it; none when any keeps its values for ever); each tenant whose retention is
    /// shorter, and every rollup level and the dead letters, are deleted tenant by tenant.
    pub async fn retention_plan(&self, now: DateTime<Utc>) -> Result<RetentionPlan, MaintainError> {
        let client = self.store.primary().get().await?;
        let tenants: Vec<i64> = client
            .query(
                "SELECT tenant_id FROM public.tenants ORDER BY tenant_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let overrides: std::collections::HashMap<i64, atlas_store::limits::Overrides> =
            self.store.all_overrides().await?.into_iter().collect();
        // Raw values' default is `retention` (`[maintenance] retention_days`).
        let mut defaults = self.settings.defaults;
        defaults.0[Limit::RawDays as usize] = self.settings.retention.map_or(0, |r| r.num_days());
        let effective = |t: i64| {
            overrides
                .get(&t)
                .map_or(defaults, |o| o.effective(&defaults))
        };
        let raw: Vec<(i64, i64)> = tenants
            .iter()
            .map(|t| (*t, effective(*t).get(Limit::RawDays)))
            .collect();
        // The longest raw retention of the default and every tenant; none (0) when the
        // default or some tenant keeps values for ever.
        let default_raw = defaults.get(Limit::RawDays);
        let longest = if default_raw == 0 || raw.iter().any(|(_, d)| *d == 0) {
            0
        } else {
            raw.iter().map(|(_, d)| *d).fold(default_raw, i64::max)
        };
        let drop_before = (longest > 0).then(|| now - chrono::Duration::days(longest));
        let mut purges = Vec::new();
        for t in &tenants {
            let v = effective(*t);
            for (kind, limit) in [
                (0_i16, Limit::RawDays),
                (1, Limit::Rollup1mDays),
                (2, Limit::Rollup1hDays),
                (3, Limit::Rollup1dDays),
                (4, Limit::DeadLetterDays),
            ] {
                let days = v.get(limit);
                // Raw values at the longest retention go with their partitions.
                if days == 0 || (kind == 0 && days >= longest && longest > 0) {
                    continue;
                }
                purges.push(Purge {
                    tenant_id: *t,
                    kind,
                    before: now - chrono::Duration::days(days),
                });
            }
        }
        Ok(RetentionPlan {
            drop_before,
            purges,
        })
    }

    /// Deletes what `purges` name in bounded batches, each its own statement and transaction
    /// (row locks on old rows only: ingest never waits). Stops after [`PURGE_ROUND_LIMIT`];
    /// the rest follows next round. Returns rows deleted.
    pub async fn purge(&self, purges: &[Purge]) -> Result<i64, MaintainError> {
        let client = self.store.primary().get().await?;
        let stmt = client
            .prepare_cached("SELECT public.retention_purge($1, $2, $3, $4)")
            .await?;
        let deadline = Instant::now() + PURGE_ROUND_LIMIT;
        let mut total = 0_i64;
        for p in purges {
            loop {
                let n: i64 = client
                    .query_one(&stmt, &[&p.tenant_id, &p.kind, &p.before, &PURGE_BATCH])
                    .await?
                    .get(0);
                total += n;
                if n < i64::from(PURGE_BATCH) || Instant::now() >= deadline {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        metrics::counter!("atlas_retention_purged_rows_total")
            .increment(u64::try_from(total).unwrap_or(0));
        Ok(total)
    }

    /// Exports each tenant's usage and capacity quotas as gauges (`atlas_tenant_entities`,
    /// `atlas_tenant_stored_values`, `atlas_tenant_quota`). Returns the tenants.
    pub async fn usage_metrics(&self) -> Result<i64, MaintainError> {
        let usage = tenant_usage(&self.store, &self.settings.defaults).await?;
        for u in &usage {
            let t = u.tenant_id.to_string();
            metrics::gauge!("atlas_tenant_entities", "tenant" => t.clone()).set(u.entities as f64);
            metrics::gauge!("atlas_tenant_stored_values", "tenant" => t.clone())
                .set(u.stored_values as f64);
            for l in [
                Limit::MaxEntities,
                Limit::MaxValuesPerDay,
                Limit::MaxStoredValues,
            ] {
                metrics::gauge!("atlas_tenant_quota", "tenant" => t.clone(), "quota" => l.as_str())
                    .set(u.limits.get(l) as f64);
            }
        }
        Ok(i64::try_from(usage.len()).unwrap_or(0))
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

/// A tenant's usage and the limits that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: i64,
    /// Its name.
    pub tenant_name: String,
    /// Live entities.
    pub entities: i64,
    /// Values stored, as of the last statistics refresh.
    pub stored_values: i64,
    /// Its limits as they apply.
    pub limits: Values,
}

/// Every tenant's usage and limits (by id).
pub async fn tenant_usage(
    store: &Store,
    defaults: &Values,
) -> Result<Vec<TenantUsage>, MaintainError> {
    let client = store.primary().get().await?;
    let tenants: Vec<(i64, String)> = client
        .query(
            "SELECT tenant_id, tenant_name::text FROM public.tenants ORDER BY tenant_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let entities: std::collections::HashMap<i64, i64> =
        store.entity_counts().await?.into_iter().collect();
    let stored: std::collections::HashMap<i64, i64> =
        store.stored_values().await?.into_iter().collect();
    let overrides: std::collections::HashMap<i64, atlas_store::limits::Overrides> =
        store.all_overrides().await?.into_iter().collect();
    Ok(tenants
        .into_iter()
        .map(|(id, name)| TenantUsage {
            tenant_id: id,
            tenant_name: name,
            entities: entities.get(&id).copied().unwrap_or(0),
            stored_values: stored.get(&id).copied().unwrap_or(0),
            limits: overrides
                .get(&id)
                .map_or(*defaults, |o| o.effective(defaults)),
        })
        .collect())
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
