//! PostgreSQL access for Atlas: connection pools for the primary and the replicas, and the
//! tenant-scoped transaction — the only way tenant data is touched.
//!
//! Tenant isolation lives in the database (RLS policies on `app.current_tenant_id`); this crate
//! makes setting that context impossible to forget: [`Store::with_tenant`] opens a
//! transaction, sets the tenant *transaction-locally* (so a pooled connection never carries
//! it into the next checkout), runs the caller's closure and commits.

pub mod admin;
pub mod aggregate;
pub mod cluster;
pub mod decimal;
pub mod entities;
mod error;
pub mod limits;
pub mod reads;

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use futures_util::future::BoxFuture;
use tokio_postgres::NoTls;

pub use deadpool_postgres;
pub use deadpool_postgres::Pool;
pub use error::StoreError;
pub use tokio_postgres;

/// The tenant-scoped transaction handed to store functions. Its statement cache keeps
/// prepared statements per pooled connection, so hot reads are planned once per connection
/// (planning a statement over 100 hash partitions costs more than running it).
pub type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Queries through the connection's prepared-statement cache: a statement is parsed once per
/// pooled connection and, after PostgreSQL's first custom plans, runs on a generic plan with
/// run-time partition pruning instead of being planned on every call.
pub(crate) trait Cached {
    /// Like `query`, prepared once per connection.
    async fn cached_query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError>;

    /// Like `query_opt`, prepared once per connection.
    async fn cached_query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError>;
}

impl Cached for Tx<'_> {
    async fn cached_query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let stmt = self.prepare_cached(sql).await?;
        Ok(self.query(&stmt, params).await?)
    }

    async fn cached_query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let stmt = self.prepare_cached(sql).await?;
        Ok(self.query_opt(&stmt, params).await?)
    }
}

/// A tenant's id. Constructed only from authenticated context, never from a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub i64);

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Sets the tenant for the current transaction only: `public.set_tenant()` does `SET LOCAL`
/// (which takes no bind parameter) from the bound id. Not `set_config(…, true)`: on a Citus
/// coordinator only `SET LOCAL` reaches the workers, where the shards' policies read it.
const SET_TENANT: &str = "SELECT public.set_tenant($1)";

/// What one `stage_flush` call stored for one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushedEntity {
    /// The entity's tenant.
    pub tenant: TenantId,
    /// The entity.
    pub entity_id: i64,
    /// Values stored in the time series (replays and duplicates excluded).
    pub stored: i32,
    /// Whether its hot-attribute projection changed (its cache entry must go).
    pub hot_changed: bool,
}

/// Pools for the primary and every replica.
#[derive(Clone)]
pub struct Store {
    primary: Pool,
    replicas: Vec<Pool>,
    primary_config: tokio_postgres::Config,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("replicas", &self.replicas.len())
            .finish_non_exhaustive()
    }
}

/// Connects one client (no pool); its connection task runs on the current runtime. For
/// administration, migrations and tools.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// Builds a pool for one URL. Connections are made lazily, on first use.
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let config =
        tokio_postgres::Config::from_str(url).map_err(|source| StoreError::Url { source })?;
    pool_for(config, size)
}

fn pool_for(mut config: tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    without_jit(&mut config);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // Fast recycling is safe: the tenant context is transaction-local, and a dropped
            // transaction is rolled back by tokio-postgres before the connection is reused.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        // Reuse the most recently returned connection: its plan caches are warm (the flush's
        // PL/pgSQL plans cost ~60 ms to build per session), and idle ones stay idle.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::PoolBuild(e.to_string()))
}

/// Turns JIT compilation off for the server's sessions unless the URL's `options` name it.
/// Every statement of the server is index-bounded, but the planner prices a probe of a
/// hash-partitioned table as a scan of all its partitions (run-time pruning is not costed), so
/// an entity page's generic plan costs millions and PostgreSQL's default `jit = on` spent
/// 3.4 s compiling it to run 2 ms of work.
fn without_jit(config: &mut tokio_postgres::Config) {
    let options = config.get_options().unwrap_or_default();
    if !options.contains("jit") {
        let options = format!("{options} -c jit=off").trim_start().to_owned();
        config.options(options);
    }
}

impl Store {
    /// Pools for the primary and each replica URL.
    pub fn connect(
        primary_url: &str,
        replica_urls: &[String],
        size: usize,
    ) -> Result<Self, StoreError> {
        let primary_config = tokio_postgres::Config::from_str(primary_url)
            .map_err(|source| StoreError::Url { source })?;
        Ok(Self {
            primary: pool_for(primary_config.clone(), size)?,
            replicas: replica_urls
                .iter()
                .map(|u| pool(u, size))
                .collect::<Result<_, _>>()?,
            primary_config,
        })
    }

    /// A pool of its own of `size` connections to the primary, for workers that should not
    /// queue behind requests and whose sessions keep their cached plans warm (the ingest
    /// writers: building the flush's PL/pgSQL plans costs ~60 ms per new session).
    pub fn dedicated_primary_pool(&self, size: usize) -> Result<Pool, StoreError> {
        pool_for(self.primary_config.clone(), size)
    }

    /// Which of `ids` are live entities of the tenant, in one statement on the primary:
    /// `entities_known()` answers for the tenant it is given (a definer function: a tenant set
    /// inside a function never reaches Citus's shards).
    pub async fn live_entity_ids(
        &self,
        tenant: TenantId,
        ids: &[i64],
    ) -> Result<std::collections::HashSet<i64>, StoreError> {
        let client = self.primary.get().await?;
        let stmt = client
            .prepare_cached("SELECT e FROM public.entities_known($1, $2) AS e")
            .await?;
        let rows = client.query(&stmt, &[&tenant.0, &ids]).await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The primary's pool (for work that is not tenant data: heartbeats, flushing).
    pub fn primary(&self) -> &Pool {
        &self.primary
    }

    /// The replicas' pools, in configuration order.
    pub fn replicas(&self) -> &[Pool] {
        &self.replicas
    }

    /// Runs `f` in a transaction on the primary with the tenant context set, and commits when
    /// it returns `Ok`. On `Err` (or if the future is dropped) the transaction rolls back.
    pub async fn with_tenant<T, E, F>(&self, tenant: TenantId, f: F) -> Result<T, E>
    where
        F: for<'t> FnOnce(&'t Tx<'t>) -> BoxFuture<'t, Result<T, E>> + Send,
        E: From<StoreError>,
        T: Send,
    {
        in_tenant_tx(&self.primary, tenant, f).await
    }

    /// Moves up to `limit` staged rows into the time series (see `stage_flush` in the
    /// migrations) and reports what each entity stored.
    pub async fn flush_staged(&self, limit: i32) -> Result<Vec<FlushedEntity>, StoreError> {
        let client = self.primary.get().await?;
        let rows = client
            .query(
                "SELECT tenant_id, entity_id, stored, hot_changed FROM public.stage_flush($1)",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| FlushedEntity {
                tenant: TenantId(r.get(0)),
                entity_id: r.get(1),
                stored: r.get(2),
                hot_changed: r.get(3),
            })
            .collect())
    }
}

/// Staged rows waiting for `stage_flush` (bounded: see `staging_stats` in the migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingBacklog {
    /// Rows counted, at most the cap asked for.
    pub rows: i64,
    /// Oldest `staged_at` among them.
    pub oldest_staged_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Store {
    /// The staging backlog, counting at most `cap` rows.
    pub async fn staging_backlog(&self, cap: i32) -> Result<StagingBacklog, StoreError> {
        let client = self.primary.get().await?;
        let row = client
            .query_one(
                "SELECT backlog, oldest_staged_at FROM public.staging_stats($1)",
                &[&cap],
            )
            .await?;
        Ok(StagingBacklog {
            rows: row.get(0),
            oldest_staged_at: row.get(1),
        })
    }

    /// Calls `stage_flush` until staging is empty (or `max_rounds` calls were made), returning
    /// what was stored. `on_batch` sees each batch's result.
    pub async fn drain_staging(
        &self,
        batch: i32,
        max_rounds: usize,
        mut on_batch: impl FnMut(&[FlushedEntity]) + Send,
    ) -> Result<Vec<FlushedEntity>, StoreError> {
        let mut all = Vec::new();
        for _ in 0..max_rounds {
            let flushed = self.flush_staged(batch).await?;
            on_batch(&flushed);
            // An empty result can still mean rows were moved (all replays or dead letters).
            if flushed.is_empty() && self.staging_backlog(1).await?.rows == 0 {
                break;
            }
            all.extend(flushed);
        }
        Ok(all)
    }
}

/// A time range `[from, to)` covered by a partition.
pub type TimeRange = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);

/// One `entity_values_ts` partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsPartition {
    /// Its table name.
    pub name: String,
    /// Inclusive lower bound.
    pub from: chrono::DateTime<chrono::Utc>,
    /// Exclusive upper bound.
    pub to: chrono::DateTime<chrono::Utc>,
    /// Size with indexes, in bytes.
    pub bytes: i64,
}

impl Store {
    /// The ranges of time `entity_values_ts` has partitions for.
    pub async fn ts_partition_coverage(&self) -> Result<Vec<TimeRange>, StoreError> {
        Ok(self
            .ts_partitions()
            .await?
            .into_iter()
            .map(|p| (p.from, p.to))
            .collect())
    }

    /// Every `entity_values_ts` partition, oldest first (bounds from `ts_partition_bounds()`,
    /// the schema's one parser of partition bounds).
    pub async fn ts_partitions(&self) -> Result<Vec<TsPartition>, StoreError> {
        let client = self.primary.get().await?;
        // On Citus a partition's rows are in its shards on the workers: the coordinator's
        // table is an empty shell.
        let sql = if cluster::is_citus(&client).await? {
            "SELECT relname, lo, hi, citus_total_relation_size(relid) \
             FROM public.ts_partition_bounds() ORDER BY lo"
        } else {
            "SELECT relname, lo, hi, pg_total_relation_size(relid) \
             FROM public.ts_partition_bounds() ORDER BY lo"
        };
        let rows = client.query(sql, &[]).await?;
        rows.iter()
            .map(|r| {
                Ok(TsPartition {
                    name: r.try_get(0)?,
                    from: r.try_get(1)?,
                    to: r.try_get(2)?,
                    bytes: r.try_get(3)?,
                })
            })
            .collect()
    }
}

/// [`Store::with_tenant`] on any pool (e.g. a replica's, for reads).
pub async fn in_tenant_tx<T, E, F>(pool: &Pool, tenant: TenantId, f: F) -> Result<T, E>
where
    F: for<'t> FnOnce(&'t Tx<'t>) -> BoxFuture<'t, Result<T, E>> + Send,
    E: From<StoreError>,
    T: Send,
{
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let set = tx
        .prepare_cached(SET_TENANT)
        .await
        .map_err(StoreError::from)?;
    tx.execute(&set, &[&tenant.0])
        .await
        .map_err(StoreError::from)?;
    let out = f(&tx).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::without_jit;

    fn options_after(url: &str) -> Option<String> {
        let mut config = tokio_postgres::Config::from_str(url).unwrap_or_else(|e| panic!("{e}"));
        without_jit(&mut config);
        config.get_options().map(str::to_owned)
    }

    #[test]
    fn jit_is_turned_off_and_other_options_are_kept() {
        assert_eq!(
            options_after("postgres://a@h/db").as_deref(),
            Some("-c jit=off")
        );
        assert_eq!(
            options_after("postgres://a@h/db?options=-c%20statement_timeout%3D5s").as_deref(),
            Some("-c statement_timeout=5s -c jit=off")
        );
    }

    #[test]
    fn a_url_that_names_jit_keeps_its_choice() {
        assert_eq!(
            options_after("postgres://a@h/db?options=-c%20jit%3Don").as_deref(),
            Some("-c jit=on")
        );
    }
}
