//! One Atlas server wired from its [`Config`]: the database pools, the cache, the ingest
//! pipeline, the maintenance worker, the replica-lag monitor, the analytics store and the HTTP
//! API over them. `atlas serve`, the benches and the API tests all start it through
//! [`Server::build`], so what they run is what production runs.

pub mod status;

use std::future::Future;
use std::sync::Arc;

use atlas_api::{AnalyticsStore, AppState};
use atlas_config::Config;
use atlas_ingest::{IngestConfig, Ingestor, Pipeline};
use atlas_maintain::WorkerHandle;
use atlas_store::Store;
use tokio::net::TcpListener;

/// Why a server could not be built or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No `database_url` is configured.
    #[error("no database: set ATLAS_DATABASE_URL (or run `atlas stack up`)")]
    NoDatabase,
    /// A pool could not be built from a URL.
    #[error(transparent)]
    Store(#[from] atlas_store::StoreError),
    /// The cache could not be built from its URLs.
    #[error(transparent)]
    Cache(#[from] atlas_cache::CacheError),
    /// The analytics store's URL could not be made.
    #[error(transparent)]
    Analytics(#[from] atlas_cdc::CdcError),
    /// Listening or serving failed.
    #[error(transparent)]
    Serve(#[from] atlas_api::ServeError),
}

/// The app role's pools (primary and replicas) that `config` names.
pub fn store(config: &Config) -> Result<Store, ServerError> {
    let url = config
        .database_url
        .as_deref()
        .ok_or(ServerError::NoDatabase)?;
    Ok(Store::connect(url, &config.replica_urls, config.pool_size)?)
}

/// The Redis cache `config` names: through Sentinel when Sentinels are configured, disabled
/// when no Redis is.
pub fn cache(config: &Config) -> Result<atlas_cache::Cache, ServerError> {
    Ok(match config.redis_url.as_deref() {
        Some(url) if !config.redis_sentinel_urls.is_empty() => atlas_cache::Cache::with_sentinel(
            url,
            &config.redis_sentinel_urls,
            &config.redis_master_name,
            &config.cache_prefix,
        )?,
        Some(url) => atlas_cache::Cache::new(url, &config.cache_prefix)?,
        None => atlas_cache::Cache::disabled(),
    })
}

/// A server's running parts, ready to serve HTTP.
pub struct Server {
    state: AppState,
    pipeline: Pipeline,
    worker: Option<WorkerHandle>,
    lag_monitor: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state)
            .field("maintainer", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds and starts everything `config` describes (inside a tokio runtime). Pools and
    /// Redis connect lazily: a server starts and answers 503 while its database is away.
    pub fn build(config: &Config) -> Result<Self, ServerError> {
        let store = store(config)?;
        let cache = cache(config)?;
        // A predecessor may have died with invalidations that failed: serve from Redis only
        // once this server has replaced the cache epoch.
        cache.renew_epoch();
        let (ingestor, pipeline) = Ingestor::start(
            store.clone(),
            cache.clone(),
            IngestConfig::from_settings(&config.ingest),
        );
        // Every server runs the maintenance worker; one of them leads (advisory lock).
        let worker = match (&config.database_url, config.maintenance.enabled) {
            (Some(url), true) => Some(
                atlas_maintain::Worker {
                    store: store.clone(),
                    cache: cache.clone(),
                    settings: atlas_maintain::Settings::from_config(&config.maintenance)
                        .with_lifecycle(&config.lifecycle),
                    database_url: url.clone(),
                    source: format!("atlas-{}-{}", hostname(), std::process::id()),
                }
                .spawn(),
            ),
            _ => None,
        };
        let state_cache = cache.clone();
        let state = AppState::new(
            store.clone(),
            config.admin_token.as_deref(),
            cache,
            config.limits.clone(),
            &config.replication,
            Some(ingestor),
        )
        .with_limit_defaults(atlas_maintain::limit_defaults(
            &config.maintenance,
            &config.lifecycle,
        ))
        .with_status({
            let (store, cache, config) = (store.clone(), state_cache.clone(), config.clone());
            Arc::new(move || {
                let (store, cache, config) = (store.clone(), cache.clone(), config.clone());
                Box::pin(async move { status::collect(&store, &cache, &config).await })
            })
        });
        // Analytics reads go to the store `atlas cdc` fills (its own database on the primary's
        // cluster, read as atlas_app under RLS); until it exists they fall back to the router.
        let state = match (&config.database_url, config.cdc.analytics_database.as_str()) {
            (Some(url), name) if !name.is_empty() => {
                let url = atlas_cdc::with_database(url, name)?;
                state.with_analytics(AnalyticsStore::new(
                    atlas_store::pool(&url, config.pool_size.div_ceil(2))?,
                    &config.cdc.slot_name,
                    atlas_config::duration::millis_i64(config.cdc.lag_budget),
                ))
            }
            _ => state,
        };
        // Replica lag, measured from the heartbeats the leader writes, routes eventual reads.
        let lag_monitor = (!store.replicas().is_empty()).then(|| {
            state
                .read_router()
                .spawn_monitor(store, config.replication.lag_check_interval)
        });
        Ok(Self {
            state,
            pipeline,
            worker,
            lag_monitor,
        })
    }

    /// The handlers' shared state (for tests that reach past HTTP).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP on `listener` until `shutdown` resolves; then answers the requests in
    /// flight, writes what the pipeline still holds, drains staging and stops the worker.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let served = atlas_api::serve(listener, self.state, shutdown).await;
        self.pipeline.shutdown().await;
        if let Some(w) = self.worker {
            w.stop().await;
        }
        if let Some(m) = self.lag_monitor {
            m.abort();
        }
        Ok(served?)
    }
}

/// This machine's name (for heartbeat sources), at most 24 characters.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().chars().take(24).collect())
        .unwrap_or_else(|_| "host".into())
}
