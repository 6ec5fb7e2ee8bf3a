//! Where a read is served: the consistency a request asks for (`X-Atlas-Consistency` or
//! `?consistency=`, else the configured default), the WAL position it must see
//! (`X-Atlas-Min-Lsn`, from a write's `X-Atlas-Lsn`), and the router's measured lag. Answers
//! say where they were served (`X-Atlas-Served-By`) and how far behind that was
//! (`X-Atlas-Lag-Ms`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;

use atlas_replication::{Consistency, Lsn, Target};

use atlas_store::{StoreError, TenantId, Tx};

use crate::AppState;
use crate::error::ApiError;

/// `X-Atlas-Consistency`.
pub const CONSISTENCY: &str = "x-atlas-consistency";
/// `X-Atlas-Min-Lsn`.
pub const MIN_LSN: &str = "x-atlas-min-lsn";
/// `X-Atlas-Lsn` (on write answers).
pub const LSN: &str = "x-atlas-lsn";
/// `X-Atlas-Served-By`.
pub const SERVED_BY: &str = "x-atlas-served-by";
/// `X-Atlas-Lag-Ms`.
pub const LAG_MS: &str = "x-atlas-lag-ms";

/// The `consistency` query parameter (documents it; [`ReadFrom`] reads it).
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyParam {
    /// The primary.
    Strong,
    /// A replica within the lag budget, else the primary.
    Eventual,
    /// The analytics store (time-series reads, within its lag budget); else like eventual.
    Analytics,
}

/// A read's routing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFrom {
    /// The consistency asked for.
    pub consistency: Consistency,
    /// The WAL position the answer must include.
    pub min_lsn: Option<Lsn>,
}

/// A routed read declares the header it takes: `params(ReadFrom)` in its `#[utoipa::path]`.
impl utoipa::IntoParams for ReadFrom {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        // X-Atlas-Min-Lsn is described, not declared: Schemathesis ignores a header's
        // `pattern` and would send values any server must refuse.
        vec![
            ParameterBuilder::new()
                .name(CONSISTENCY)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "strong (primary), eventual (a replica within the lag budget) or analytics \
                     (the analytics store, for latest/series/aggregates); overrides \
                     ?consistency=. (X-Atlas-Min-Lsn, a write's X-Atlas-Lsn, makes the answer \
                     include that write; see README.)",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(["strong", "eventual", "analytics"])),
                ))
                .build(),
        ]
    }
}

// The answer headers' schemas, which a handler's success response declares (their doc comments
// are their descriptions): a routed read's `headers(("x-atlas-served-by" = inline(ServedBy)),
// ("x-atlas-lag-ms" = inline(LagMs)))`, a write's `headers(("x-atlas-lsn" = inline(WrittenAt)))`.

/// Declares an answer header's schema type (the derive cannot give a unit type a string
/// schema with a pattern).
macro_rules! header_schema {
    ($(#[$doc:meta])* $name:ident: $type:ident, $pattern:expr, $description:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::$type)
                    .pattern($pattern)
                    .description(Some($description))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

header_schema!(
    /// `X-Atlas-Served-By`.
    ServedBy: String, None::<&str>, "primary, replica-N, analytics or cache"
);
header_schema!(
    /// `X-Atlas-Lag-Ms`.
    LagMs: Integer, None::<&str>, "How far behind the primary the answer may be (ms)"
);
header_schema!(
    /// `X-Atlas-Lsn`.
    WrittenAt: String,
    Some("^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"),
    "The primary's WAL position after the commit; send it as X-Atlas-Min-Lsn"
);

impl ReadFrom {
    /// A key suffix that keeps single-flight fills of different routings apart.
    pub(crate) fn flight_suffix(&self) -> String {
        format!(
            "#{:?}#{}",
            self.consistency,
            self.min_lsn.map(|l| l.to_string()).unwrap_or_default()
        )
    }
}

impl FromRequestParts<AppState> for ReadFrom {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            parts
                .headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| ApiError::bad_field(name, "not a visible ASCII value"))
                })
                .transpose()
        };
        let consistency = match header(CONSISTENCY)? {
            Some(v) => v
                .parse()
                .map_err(|e: String| ApiError::bad_field("X-Atlas-Consistency", e))?,
            None => {
                let query = parts.uri.query().unwrap_or("");
                match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "consistency") {
                    Some((_, v)) => v
                        .parse()
                        .map_err(|e: String| ApiError::bad_field("consistency", e))?,
                    None => state.inner.default_consistency,
                }
            }
        };
        let min_lsn = header(MIN_LSN)?
            .map(|v| {
                v.parse()
                    .map_err(|e: String| ApiError::bad_field("X-Atlas-Min-Lsn", e))
            })
            .transpose()?;
        Ok(ReadFrom {
            consistency,
            min_lsn,
        })
    }
}

/// Whether a failure on a replica means "read it from the primary instead": the replica is
/// unreachable, or cancelled the query for a conflict with recovery.
fn replica_gone(e: &StoreError) -> bool {
    e.is_unavailable()
        || e.sqlstate().is_some_and(|c| {
            *c == atlas_store::tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
        })
}

impl AppState {
    /// Runs a tenant read where `from` routes it. A replica that fails as unreachable is
    /// skipped for the next best one, then the primary (the breaker opens at its next
    /// measurement), so a stopped replica never fails a request — nor, during a failover,
    /// does the old primary that was also the least-lagging "replica". Returns the result
    /// and where it was served.
    pub(crate) async fn read<T, F>(
        &self,
        from: ReadFrom,
        tenant: TenantId,
        f: F,
    ) -> Result<(T, Target), ApiError>
    where
        T: Send,
        F: for<'t> Fn(&'t Tx<'t>) -> BoxFuture<'t, Result<T, StoreError>> + Send + Sync,
    {
        let store = &self.inner.store;
        let mut failed = Vec::new();
        loop {
            let target = self
                .inner
                .router
                .route_excluding(from.consistency, from.min_lsn, &failed);
            let Target::Replica { index, .. } = target else {
                break;
            };
            let Some(pool) = store.replicas().get(index) else {
                break;
            };
            match atlas_store::in_tenant_tx(pool, tenant, &f).await {
                Ok(v) => return Ok((v, target)),
                Err(e) if replica_gone(&e) => {
                    metrics::counter!("atlas_replica_fallbacks_total").increment(1);
                    tracing::debug!(error = %e, replica = index + 1, "replica read failed; trying the next one, then the primary");
                    failed.push(index);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let v = store.with_tenant(tenant, &f).await?;
        Ok((v, Target::Primary))
    }

    /// [`AppState::read`] for reads of the time series, which the analytics store can serve:
    /// with consistency `analytics` they go there while its lag (the newest applied commit's
    /// age, read just before the query) is within budget. An analytics store that is
    /// behind, empty or unreachable hands the read on to the router (never an error).
    pub(crate) async fn read_series<T, F>(
        &self,
        from: ReadFrom,
        tenant: TenantId,
        f: F,
    ) -> Result<(T, Target), ApiError>
    where
        T: Send,
        F: for<'t> Fn(&'t Tx<'t>) -> BoxFuture<'t, Result<T, StoreError>> + Send + Sync,
    {
        let now_ms = chrono::Utc::now().timestamp_millis();
        if from.consistency == Consistency::Analytics
            && from.min_lsn.is_none()
            && let Some(an) = &self.inner.analytics
            && an.skip_until_ms.load(Ordering::Relaxed) <= now_ms
        {
            match analytics_lag(an).await {
                Ok(Some(lag_ms)) if lag_ms <= an.lag_budget_ms => {
                    match atlas_store::in_tenant_tx(&an.pool, tenant, &f).await {
                        Ok(v) => return Ok((v, Target::Analytics { lag_ms })),
                        Err(e) => fallback(an, now_ms, &e),
                    }
                }
                Ok(_) => metrics::counter!("atlas_analytics_fallbacks_total", "reason" => "lag")
                    .increment(1),
                Err(e) => fallback(an, now_ms, &e),
            }
        }
        self.read(from, tenant, f).await
    }
}

/// The analytics store's lag for its slot (None: it has applied nothing yet).
async fn analytics_lag(an: &crate::AnalyticsStore) -> Result<Option<i64>, StoreError> {
    let mut client = an.pool.get().await?;
    let tx = client.transaction().await?;
    atlas_store::reads::analytics_lag_ms(&tx, &an.slot).await
}

/// How long a failed analytics store is skipped.
const ANALYTICS_PAUSE_MS: i64 = 5_000;

fn fallback(an: &crate::AnalyticsStore, now_ms: i64, e: &StoreError) {
    metrics::counter!("atlas_analytics_fallbacks_total", "reason" => "error").increment(1);
    an.skip_until_ms
        .store(now_ms + ANALYTICS_PAUSE_MS, Ordering::Relaxed);
    tracing::warn!(error = %e, pause_ms = ANALYTICS_PAUSE_MS, "analytics store read failed; routing elsewhere");
}

/// Adds `X-Atlas-Served-By` and `X-Atlas-Lag-Ms` (`served_by` overrides the target's name,
/// e.g. `cache`).
pub(crate) fn served(mut resp: Response, target: Target, served_by: Option<&str>) -> Response {
    let h = resp.headers_mut();
    let by = served_by.map_or_else(|| target.served_by(), str::to_owned);
    if let Ok(v) = HeaderValue::from_str(&by) {
        h.insert(HeaderName::from_static(SERVED_BY), v);
    }
    h.insert(
        HeaderName::from_static(LAG_MS),
        HeaderValue::from(target.lag_ms().max(0)),
    );
    resp
}

/// Adds `X-Atlas-Lsn` to a write's answer: the primary's WAL position after the commit, which a
/// later read sends as `X-Atlas-Min-Lsn` to read its own write.
pub(crate) async fn with_lsn(state: &AppState, resp: Response) -> Response {
    let lsn = atlas_replication::primary_lsn(&state.inner.store).await;
    with_known_lsn(resp, lsn)
}

/// [`with_lsn`] with a position already read after the commit (the ingest writer reads one
/// per batch instead of one per request).
pub(crate) fn with_known_lsn(mut resp: Response, lsn: Option<atlas_replication::Lsn>) -> Response {
    if let Some(lsn) = lsn
        && let Ok(v) = HeaderValue::from_str(&lsn.to_string())
    {
        resp.headers_mut().insert(HeaderName::from_static(LSN), v);
    }
    resp
}
