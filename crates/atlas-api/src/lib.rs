//! The Atlas HTTP API: axum routes, authentication (admin token, tenant API keys), request
//! limits, one error shape for every failure, and the OpenAPI document at `/openapi.json`.

pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use utoipa::OpenApi;

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
    rate: auth::RateLimiter,
    limits: Limits,
    redis: Option<redis::Client>,
    ingestor: Option<atlas_ingest::Ingestor>,
    catalog: std::sync::Mutex<Option<(Arc<atlas_ingest::Catalog>, std::time::Instant)>>,
    coverage: std::sync::Mutex<Option<(Coverage, std::time::Instant)>>,
}

type Coverage = Arc<Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>>;

/// How long the attribute catalogue and partition coverage are trusted before re-reading
/// (an unknown name or uncovered time re-reads at once).
const METADATA_TTL: Duration = Duration::from_secs(5);

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
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Redis URL is invalid.
    #[error("invalid redis_url: {0}")]
    Redis(#[from] redis::RedisError),
    /// The server stopped with an I/O error.
    #[error("server error: {0}")]
    Io(std::io::Error),
}

impl AppState {
    /// State for a server over `store`; without an ingestor, `POST /v1/telemetry` is 503.
    pub fn new(
        store: Store,
        admin_token: Option<&str>,
        redis_url: Option<&str>,
        limits: Limits,
        ingestor: Option<atlas_ingest::Ingestor>,
    ) -> Result<Self, ServeError> {
        // Install the metrics recorder before anything records.
        let _ = metrics::handle();
        let redis = redis_url.map(redis::Client::open).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                admin_token_hash: admin_token.map(atlas_store::admin::hash_key),
                keys: auth::KeyCache::new(Duration::from_millis(limits.key_cache_ttl_ms)),
                rate: auth::RateLimiter::new(limits.rate_per_second, limits.rate_burst),
                limits,
                redis,
                ingestor,
                catalog: std::sync::Mutex::new(None),
                coverage: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
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
        let catalog = Arc::new(atlas_ingest::Catalog::new(
            self.inner.store.list_attributes().await?,
        ));
        if let Ok(mut guard) = self.inner.catalog.lock() {
            *guard = Some((Arc::clone(&catalog), std::time::Instant::now()));
        }
        Ok(catalog)
    }

    /// What telemetry times are acceptable now (partition coverage re-read when stale or when
    /// `fresh`).
    pub(crate) async fn time_rules(
        &self,
        fresh: bool,
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
            now: chrono::Utc::now(),
            max_future: chrono::Duration::seconds(self.inner.limits.max_future_skew_s),
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

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi::ApiDoc::openapi())
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    use routes::{admin, health, tenant};
    let limit = state.inner.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics::render))
        .route(
            "/v1/admin/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route("/v1/admin/tenants/{id}", get(admin::get_tenant))
        .route(
            "/v1/admin/tenants/{id}/deactivate",
            post(admin::deactivate_tenant),
        )
        .route(
            "/v1/admin/tenants/{id}/activate",
            post(admin::activate_tenant),
        )
        .route(
            "/v1/admin/tenants/{id}/keys",
            post(admin::issue_key).get(admin::list_keys),
        )
        .route(
            "/v1/admin/tenants/{id}/keys/{key_id}",
            axum::routing::delete(admin::revoke_key),
        )
        .route(
            "/v1/admin/attributes",
            post(admin::define_attribute).get(admin::list_attributes),
        )
        .route(
            "/v1/admin/attributes/{id}",
            axum::routing::patch(admin::update_attribute),
        )
        .route("/v1/me", get(tenant::me))
        .route("/v1/telemetry", post(routes::telemetry::ingest))
        .route("/v1/attributes", get(tenant::attributes))
        .route(
            "/v1/entities",
            post(tenant::register_entities).get(tenant::list_entities),
        )
        .route(
            "/v1/entities/{id}",
            get(tenant::get_entity)
                .patch(tenant::update_entity)
                .delete(tenant::delete_entity),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
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

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}
