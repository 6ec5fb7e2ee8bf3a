//! The Atlas HTTP API: axum routes, authentication (admin token, tenant API keys), request
//! limits, one error shape for every failure, and the OpenAPI document at `/openapi.json`.

pub mod auth;
pub mod consistency;
pub mod console;
pub mod error;
pub mod extract;
pub mod http;
pub mod ingest_stats;
pub mod known;
pub mod metrics;
pub mod openapi;
mod openapi_docs;
mod quota;
pub mod routes;
mod ttl;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::get;
use tokio::net::TcpListener;

use atlas_config::Limits;
use atlas_store::Store;

pub use error::ApiError;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    admin_token_hash: Option<[u8; 32]>,
    keys: auth::KeyCache,
    known: known::KnownEntities,
    rate: auth::RateLimiter,
    limits: Limits,
    cache: atlas_cache::Cache,
    flights: atlas_cache::SingleFlight<Fill>,
    router: atlas_replication::Router,
    default_consistency: atlas_replication::Consistency,
    ingestor: Option<atlas_ingest::Ingestor>,
    catalog: std::sync::Mutex<Option<(Arc<atlas_ingest::Catalog>, std::time::Instant)>>,
    coverage: std::sync::Mutex<Option<(Coverage, std::time::Instant)>>,
    /// Receipt times of readings without `ts`, never the same microsecond twice.
    receipt: atlas_ingest::ReceiptClock,
    analytics: Option<AnalyticsStore>,
    quotas: quota::Quotas,
    /// What `GET /v1/admin/status` answers (set by the server that wires every part).
    status: Option<StatusSource>,
    /// Per-tenant ingest figures not yet written to Redis.
    ingest_stats: Arc<ingest_stats::IngestStats>,
    /// The newest backfill report of each attribute this server changed (Redis has every
    /// server's).
    backfills: std::sync::Mutex<std::collections::HashMap<i64, routes::admin::BackfillReport>>,
}

/// Collects the system's status document (`atlas status`) on demand.
pub type StatusSource =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, serde_json::Value> + Send + Sync>;

/// The analytics store that `atlas cdc` fills: reads with consistency `analytics` of the time
/// series (latest, series, aggregates) are served from it while it is within its lag budget.
#[derive(Clone)]
pub struct AnalyticsStore {
    pub(crate) pool: atlas_store::Pool,
    pub(crate) slot: String,
    pub(crate) lag_budget_ms: i64,
    /// After a failure the store is skipped until this instant (ms since the Unix epoch), so
    /// a missing or stopped analytics database costs reads nothing but one attempt per pause.
    pub(crate) skip_until_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl AnalyticsStore {
    /// `pool`: `atlas_app` logins to the analytics database; `slot`: the CDC slot whose sink
    /// progress measures its lag; beyond `lag_budget_ms` reads are routed elsewhere.
    pub fn new(pool: atlas_store::Pool, slot: &str, lag_budget_ms: i64) -> Self {
        Self {
            pool,
            slot: slot.to_owned(),
            lag_budget_ms,
            skip_until_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }
}

/// A single-flight fill's result: the document and where it was read (None: not found).
type Fill = Result<Option<(Arc<str>, atlas_replication::Target)>, ApiError>;

type Coverage = Arc<Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>>;

/// How long the attribute catalogue and partition coverage are trusted before re-reading
/// (an unknown name or uncovered time re-reads at once).
const METADATA_TTL: Duration = Duration::from_secs(5);

/// How long a backfill's report is kept.
const BACKFILL_KEPT: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// Why the OS refused it (in use, not permitted, …).
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("server error: {0}")]
    Io(std::io::Error),
}

impl AppState {
    /// State for a server over `store` with `cache` in front of it, routing reads to the
    /// store's replicas per `replication`; without an ingestor, `POST /v1/telemetry` is 503.
    /// Replica lag is measured only once [`AppState::read_router`]'s monitor is spawned; until
    /// then every read goes to the primary.
    pub fn new(
        store: Store,
        admin_token: Option<&str>,
        cache: atlas_cache::Cache,
        limits: Limits,
        replication: &atlas_config::Replication,
        ingestor: Option<atlas_ingest::Ingestor>,
    ) -> Self {
        // Install the metrics recorder before anything records.
        let _ = metrics::handle();
        let router = atlas_replication::Router::new(
            store.replicas().len(),
            atlas_replication::Budgets {
                open_ms: atlas_config::duration::millis_i64(replication.breaker_open),
                close_ms: atlas_config::duration::millis_i64(replication.breaker_close),
            },
        );
        let default_consistency = match replication.default_read_consistency {
            atlas_config::ReadConsistency::Strong => atlas_replication::Consistency::Strong,
            atlas_config::ReadConsistency::Eventual => atlas_replication::Consistency::Eventual,
            atlas_config::ReadConsistency::Analytics => atlas_replication::Consistency::Analytics,
        };
        Self {
            inner: Arc::new(Inner {
                store,
                admin_token_hash: admin_token.map(atlas_store::admin::hash_key),
                keys: auth::KeyCache::new(limits.key_cache_ttl),
                known: known::KnownEntities::new(limits.entity_cache_ttl),
                rate: auth::RateLimiter::new(
                    limits.rate_per_second,
                    limits.rate_burst,
                    limits.telemetry_values_per_second,
                    limits.telemetry_values_burst,
                ),
                limits,
                cache,
                flights: atlas_cache::SingleFlight::default(),
                router,
                default_consistency,
                ingestor,
                catalog: std::sync::Mutex::new(None),
                coverage: std::sync::Mutex::new(None),
                receipt: atlas_ingest::ReceiptClock::default(),
                analytics: None,
                quotas: quota::Quotas::default(),
                status: None,
                ingest_stats: Arc::default(),
                backfills: std::sync::Mutex::default(),
            }),
        }
    }

    /// Serves `analytics` reads of the time series from `store` (call before cloning the state).
    pub fn with_analytics(mut self, store: AnalyticsStore) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.analytics = Some(store);
        }
        self
    }

    /// Takes tenants' retention and quotas from these defaults where a tenant has no setting
    /// of its own (call before cloning the state).
    pub fn with_limit_defaults(mut self, defaults: atlas_store::limits::Values) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.quotas = quota::Quotas::new(defaults);
        }
        self
    }

    /// Answers `GET /v1/admin/status` with what `source` collects (call before cloning the
    /// state).
    pub fn with_status(mut self, source: StatusSource) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.status = Some(source);
        }
        self
    }

    /// Keeps `report` here and in Redis (for an hour), where every server reads it.
    pub(crate) async fn publish_backfill(&self, report: &routes::admin::BackfillReport) {
        if let Ok(mut b) = self.inner.backfills.lock() {
            b.insert(report.attribute_id, report.clone());
        }
        if let Ok(json) = serde_json::to_string(report) {
            let cache = &self.inner.cache;
            cache
                .put_report(
                    &cache.backfill_key(report.attribute_id),
                    &json,
                    BACKFILL_KEPT,
                )
                .await;
        }
    }

    /// The newest backfill report of an attribute: Redis's (any server's) or this server's,
    /// whichever started last.
    pub(crate) async fn backfill_report(
        &self,
        attribute_id: i64,
    ) -> Option<routes::admin::BackfillReport> {
        let cache = &self.inner.cache;
        let shared = cache
            .report(&cache.backfill_key(attribute_id))
            .await
            .flatten()
            .and_then(|j| serde_json::from_str::<routes::admin::BackfillReport>(&j).ok());
        let own = self
            .inner
            .backfills
            .lock()
            .ok()
            .and_then(|b| b.get(&attribute_id).cloned())
            .filter(|r| {
                r.updated_at
                    .is_some_and(|at| chrono::Utc::now() - at < chrono::Duration::hours(1))
            });
        match (shared, own) {
            (Some(s), Some(o)) => Some(if o.updated_at > s.updated_at { o } else { s }),
            (s, o) => s.or(o),
        }
    }

    /// The database pools (primary and replicas) every handler reads and writes through.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The read router (spawn its lag monitor to route reads to replicas).
    pub fn read_router(&self) -> &atlas_replication::Router {
        &self.inner.router
    }

    /// The Redis cache in front of the reads (disabled when no Redis is configured).
    pub fn cache(&self) -> &atlas_cache::Cache {
        &self.inner.cache
    }

    /// Cache-aside read of one JSON document: Redis, else one database read per key and
    /// routing at a time in this process (single-flight on `key` + `flight`), then a fill —
    /// only of what the primary answered (see `Router::may_fill_cache`). With `lease`, the
    /// fill is fenced by a lease taken before the read (see `atlas_cache`); without, the key
    /// must already be made unreachable by writers (aggregate generations). Either way the
    /// fill carries the cache epoch read before the database. `Ok(None)` (e.g.
    /// not found) is not cached. Returns the document and where it was served (`None`: Redis).
    pub(crate) async fn cached_json<F, Fut>(
        &self,
        kind: atlas_cache::Kind,
        key: String,
        flight: String,
        ttl: Duration,
        lease: bool,
        load: F,
    ) -> Result<(Option<Arc<str>>, Option<atlas_replication::Target>), ApiError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<
                Output = Result<Option<(String, atlas_replication::Target)>, ApiError>,
            > + Send
            + 'static,
    {
        let cache = &self.inner.cache;
        if let Some(hit) = cache.get(kind, &key).await {
            return Ok((Some(Arc::from(hit)), None));
        }
        let cache = cache.clone();
        let router = self.inner.router.clone();
        let k = key.clone();
        let value = self
            .inner
            .flights
            .run(format!("{key}{flight}"), move || async move {
                let held = if lease {
                    cache.lease(&k).await
                } else {
                    cache.stamp(&k).await
                };
                let value = load().await?;
                if let Some((v, target)) = &value
                    && let Some(held) = held
                    && router.may_fill_cache(*target)
                {
                    cache.fill(held, v, ttl).await;
                }
                Ok(value.map(|(v, t)| (Arc::from(v), t)))
            })
            .await?;
        Ok(match value {
            Some((doc, target)) => (Some(doc), Some(target)),
            None => (None, None),
        })
    }

    /// The attribute catalogue for typing (re-read when stale or when `fresh`).
    pub(crate) async fn catalog(
        &self,
        fresh: bool,
    ) -> Result<Arc<atlas_ingest::Catalog>, ApiError> {
        if !fresh
            && let Ok(guard) = self.inner.catalog.lock()
            && let Some((c, at)) = guard.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(Arc::clone(c));
        }
        let catalog = Arc::new(atlas_ingest::Catalog::new(self.attributes(fresh).await?));
        if let Ok(mut guard) = self.inner.catalog.lock() {
            *guard = Some((Arc::clone(&catalog), std::time::Instant::now()));
        }
        Ok(catalog)
    }

    /// The attribute catalogue from the Redis hashes `attribute:meta` / `attribute:name_to_id`,
    /// else from PostgreSQL (filling the hashes under a lease). `fresh` skips Redis.
    async fn attributes(
        &self,
        fresh: bool,
    ) -> Result<Vec<atlas_store::admin::Attribute>, ApiError> {
        let cache = &self.inner.cache;
        if !fresh && let Some(pairs) = cache.meta().await {
            let parsed: Result<Vec<_>, _> = pairs
                .iter()
                .map(|(_, json)| serde_json::from_str::<atlas_store::admin::Attribute>(json))
                .collect();
            match parsed {
                Ok(mut list) => {
                    list.sort_by_key(|a| a.attribute_id);
                    return Ok(list);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cached attribute metadata unreadable; reading PostgreSQL")
                }
            }
        }
        let lease = cache.meta_lease().await;
        let list = self.inner.store.list_attributes().await?;
        if let Some(lease) = lease {
            let entries: Vec<(String, i64, String)> = list
                .iter()
                .filter_map(|a| {
                    serde_json::to_string(a)
                        .ok()
                        .map(|json| (a.attribute_name.clone(), a.attribute_id, json))
                })
                .collect();
            cache.fill_meta(lease, &entries).await;
        }
        Ok(list)
    }

    /// After an attribute change committed: drops the cached catalogue (here and in Redis)
    /// and re-reads it, which refills Redis.
    pub(crate) async fn attributes_changed(&self) {
        let (a, b) = self.inner.cache.meta_keys();
        self.inner.cache.invalidate(&[a, b]).await;
        if let Err(e) = self.catalog(true).await {
            // The change is committed; the next read of the catalogue fills it.
            tracing::warn!(error = %e, "re-reading the attribute catalogue failed");
        }
    }

    /// What telemetry times are acceptable now for `readings` (partition coverage re-read when
    /// stale or when `fresh`), with receipt times reserved for those without `ts`.
    pub(crate) async fn time_rules(
        &self,
        fresh: bool,
        readings: &[atlas_ingest::Reading],
    ) -> Result<atlas_ingest::TimeRules, ApiError> {
        let cached = if fresh {
            None
        } else {
            self.inner.coverage.lock().ok().and_then(|g| {
                g.as_ref()
                    .filter(|(_, at)| at.elapsed() < METADATA_TTL)
                    .map(|(c, _)| Arc::clone(c))
            })
        };
        let coverage = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(self.inner.store.ts_partition_coverage().await?);
                if let Ok(mut guard) = self.inner.coverage.lock() {
                    *guard = Some((Arc::clone(&c), std::time::Instant::now()));
                }
                c
            }
        };
        Ok(atlas_ingest::TimeRules {
            now: self.inner.receipt.reserve_for(readings),
            max_future: chrono::Duration::from_std(self.inner.limits.max_future_skew)
                .unwrap_or(chrono::Duration::MAX),
            coverage: coverage.as_ref().clone(),
        })
    }
}

/// The configured body limit, carried in request extensions for the 413 message.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

pub(crate) fn body_limit(req: &Request) -> usize {
    req.extensions()
        .get::<BodyLimit>()
        .map(|b| b.0)
        .unwrap_or(0)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every route of the API: [`routes::api`]'s, the document at `/openapi.json`, the API page at
/// `/docs`, and the layers every request goes through.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.limits.max_body_bytes;
    let (routes, mut document) = routes::api().split_for_parts();
    openapi::finish(&mut document);
    let app = routes
        .route(
            "/openapi.json",
            get(move || std::future::ready(axum::Json(document.clone()))),
        )
        // The interactive API page, its assets embedded in the binary (no CDN), reading the
        // document above.
        // The web console: static files calling the API above like any client.
        .merge(console::routes())
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::new(["/openapi.json"])),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(metrics::track))
        // The limit applies to the body as the handler reads it: decompressed.
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(axum::middleware::from_fn_with_state(
            state.inner.limits.request_timeout,
            http::request_timeout,
        ))
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(tower_http::compression::CompressionLayer::new());
    let app = match http::cors(&state.inner.limits.cors_allowed_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            http::RequestIds,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting and finishes
/// the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    use axum::serve::ListenerExt;
    // Small JSON answers must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Io)
}

/// Binds `addr`, naming it in the error when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}
