//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process answers HTTP.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Readiness and the state of each dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `up` or `down` (required).
    pub primary: String,
    /// `current`, `pending`, `changed`, `unknown` (required: `current`).
    pub migrations: String,
    /// Each configured replica: `up` or `down` (reported, not required).
    pub replicas: Vec<String>,
    /// `up`, `down` or `unconfigured` (reported, not required).
    pub redis: String,
}

/// The process is up.
///
/// Liveness: answers 200 as long as the process serves HTTP, whatever the state of PostgreSQL or
/// Redis. Use /readyz to decide whether to send traffic.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn ping(pool: &atlas_store::Pool) -> bool {
    let probe = async {
        let client = pool.get().await.ok()?;
        client.query_one("SELECT 1", &[]).await.ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(_))
    )
}

async fn migrations(state: &AppState) -> &'static str {
    let probe = async {
        let client = state.inner.store.primary().get().await.ok()?;
        atlas_schema::migration_status(&client).await.ok()
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Some(states)) if states.iter().all(|s| s.is_current()) => "current",
        Ok(Some(states)) if states.iter().any(|s| s.is_edited()) => "changed",
        Ok(Some(_)) => "pending",
        _ => "unknown",
    }
}

async fn redis_state(state: &AppState) -> &'static str {
    match state.inner.cache.ping().await {
        None => "unconfigured",
        Some(true) => "up",
        Some(false) => "down",
    }
}

/// Ready when the primary answers and the schema is current; replicas and Redis are reported.
///
/// 200 when the primary answers and every migration is applied unchanged, else 503. Replicas and
/// Redis are reported but not required: reads fall back to the primary and to PostgreSQL.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (primary down or migrations not current)", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let primary = ping(state.inner.store.primary()).await;
    let migrations = if primary {
        migrations(&state).await
    } else {
        "unknown"
    };
    let mut replicas = Vec::new();
    for pool in state.inner.store.replicas() {
        replicas.push(if ping(pool).await { "up" } else { "down" }.to_owned());
    }
    let redis = redis_state(&state).await;
    let ready = primary && migrations == "current";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" }.into(),
            primary: if primary { "up" } else { "down" }.into(),
            migrations: migrations.into(),
            replicas,
            redis: redis.into(),
        }),
    )
}
