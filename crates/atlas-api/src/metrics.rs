//! Prometheus metrics: one recorder per process, HTTP request metrics per route, and the
//! `/metrics` rendering.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use (once per process:
/// several servers in one process, as in tests, share it). `None` if another recorder was
/// installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            // Histograms grow until upkeep drains them: keep it running.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Every metric Atlas emits, with its unit and help text (`# HELP` / `# TYPE` lines), in one
/// place; counters of failures start at 0 so a dashboard sees them before the first one.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for (name, help) in [
        (
            "atlas_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
        ),
        (
            "atlas_ingest_values_total",
            "Telemetry values by outcome (stored, replayed, staged, dead_lettered, rejected) and rejection reason.",
        ),
        (
            "atlas_ingest_queue_full_total",
            "Telemetry requests refused with 503 because the ingest queue was full.",
        ),
        (
            "atlas_ingest_batches_failed_total",
            "Ingest batches that failed as a whole (nothing of them acknowledged).",
        ),
        (
            "atlas_ingest_batch_retries_total",
            "Durable ingest batches written again because no primary answered (a failover or restart).",
        ),
        (
            "atlas_staging_drained_values_total",
            "Values the background drain moved from staging into the time series.",
        ),
        (
            "atlas_entity_checks_total",
            "Telemetry entities confirmed as the tenant's, by source (cache or database).",
        ),
        (
            "atlas_cache_requests_total",
            "Cache lookups by kind (entity, list, agg, meta) and result (hit, miss, error, bypass).",
        ),
        (
            "atlas_cache_errors_total",
            "Redis calls that failed or timed out, by operation.",
        ),
        (
            "atlas_cache_singleflight_joined_total",
            "Cache misses that joined another request's database read of the same key.",
        ),
        (
            "atlas_replica_fallbacks_total",
            "Replica reads that failed and were served by the primary.",
        ),
        (
            "atlas_analytics_fallbacks_total",
            "Analytics reads served elsewhere, by reason (lag, error).",
        ),
        (
            "atlas_heartbeats_total",
            "Replication heartbeats written by the maintenance leader.",
        ),
        (
            "atlas_maintenance_errors_total",
            "Maintenance tasks that failed (retried next round), by task.",
        ),
        (
            "atlas_cdc_batches_total",
            "CDC batches delivered to every sink.",
        ),
        (
            "atlas_cdc_events_total",
            "CDC change events delivered, by table and operation.",
        ),
        (
            "atlas_cdc_pruned_rows_total",
            "Analytics store rows deleted by retention, by what (history, values).",
        ),
        (
            "atlas_cdc_pruned_files_total",
            "NDJSON hour files deleted by history retention.",
        ),
        (
            "atlas_rollup_buckets_total",
            "Rollup buckets (minutes, hours, days) the maintainer re-aggregated.",
        ),
        (
            "atlas_retention_purged_rows_total",
            "Rows retention deleted tenant by tenant (values, rollups, dead letters).",
        ),
        (
            "atlas_quota_refusals_total",
            "Requests refused for a tenant quota, by quota.",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, unit, help) in [
        (
            "atlas_ingest_queue_rows",
            Unit::Count,
            "Values waiting in the ingest queue.",
        ),
        (
            "atlas_staging_backlog_rows",
            Unit::Count,
            "Rows waiting in staging (counted up to 100 000, about once a second).",
        ),
        (
            "atlas_staging_oldest_age_seconds",
            Unit::Seconds,
            "Age of the oldest staged row (0 when staging is empty).",
        ),
        (
            "atlas_alert_firing",
            Unit::Count,
            "1 while the named alert fires, else 0.",
        ),
        (
            "atlas_replica_lag_seconds",
            Unit::Seconds,
            "Heartbeat lag of each replica.",
        ),
        (
            "atlas_replica_circuit_closed",
            Unit::Count,
            "1 while reads may go to the replica (its circuit is closed).",
        ),
        (
            "atlas_walsender_replay_lag_seconds",
            Unit::Seconds,
            "Replay lag of each standby as the primary's WAL sender reports it.",
        ),
        (
            "atlas_slot_retained_wal_bytes",
            Unit::Bytes,
            "WAL each replication slot holds back.",
        ),
        (
            "atlas_cdc_slot_retained_wal_bytes",
            Unit::Bytes,
            "WAL the CDC slot holds back.",
        ),
        (
            "atlas_cdc_lag_seconds",
            Unit::Seconds,
            "Commit time of the last change in the analytics store, behind now.",
        ),
        (
            "atlas_xid_age",
            Unit::Count,
            "Age of the oldest transaction id (wraparound risk).",
        ),
        (
            "atlas_partition_horizon_seconds",
            Unit::Seconds,
            "How far ahead time-series partitions exist.",
        ),
        (
            "atlas_cache_hit_rate",
            Unit::Count,
            "Redis keyspace hit rate over the last maintenance interval (0 to 1).",
        ),
        (
            "atlas_maintainer_leader",
            Unit::Count,
            "1 while this process leads maintenance.",
        ),
        (
            "atlas_maintenance_last_round_timestamp_seconds",
            Unit::Seconds,
            "Unix time of the last maintenance round.",
        ),
        (
            "atlas_stats_refresh_rows",
            Unit::Count,
            "Rows of the attribute statistics view after its last refresh.",
        ),
        (
            "atlas_stats_refresh_seconds",
            Unit::Seconds,
            "Duration of the last statistics refresh.",
        ),
        (
            "atlas_tenant_entities",
            Unit::Count,
            "Live entities of each tenant (set by the maintenance leader every round).",
        ),
        (
            "atlas_tenant_stored_values",
            Unit::Count,
            "Values each tenant has stored, as of the last statistics refresh.",
        ),
        (
            "atlas_tenant_quota",
            Unit::Count,
            "Each tenant's capacity and rate quotas (0: no limit).",
        ),
        (
            "atlas_tenant_values_today",
            Unit::Count,
            "Values a tenant with a values-per-day quota wrote today (UTC), as this server last counted.",
        ),
    ] {
        describe_gauge!(name, unit, help);
    }
    for (name, unit, help) in [
        (
            "atlas_http_request_duration_seconds",
            Unit::Seconds,
            "HTTP request latency to the last body byte, by route template and method.",
        ),
        (
            "atlas_ingest_batch_rows",
            Unit::Count,
            "Values per ingest batch, by durability.",
        ),
        (
            "atlas_ingest_flush_seconds",
            Unit::Seconds,
            "Time to write one ingest batch, by durability.",
        ),
        (
            "atlas_maintenance_seconds",
            Unit::Seconds,
            "Duration of each maintenance task.",
        ),
        (
            "atlas_cdc_batch_seconds",
            Unit::Seconds,
            "Time to read and decode one CDC batch.",
        ),
        (
            "atlas_cdc_sink_seconds",
            Unit::Seconds,
            "Time for a sink to store one CDC batch durably, by sink.",
        ),
    ] {
        describe_histogram!(name, unit, help);
    }
    for name in [
        "atlas_ingest_queue_full_total",
        "atlas_ingest_batches_failed_total",
        "atlas_ingest_batch_retries_total",
        "atlas_replica_fallbacks_total",
        "atlas_staging_drained_values_total",
        "atlas_rollup_buckets_total",
        "atlas_retention_purged_rows_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for quota in ["max_entities", "max_values_per_day", "max_stored_values"] {
        metrics::counter!("atlas_quota_refusals_total", "quota" => quota).absolute(0);
    }
    // The cache's failures by operation: the ones that matter (invalidate, epoch) first.
    for op in ["invalidate", "epoch", "get", "lease", "fill"] {
        metrics::counter!("atlas_cache_errors_total", "op" => op).absolute(0);
    }
    for reason in ["lag", "error"] {
        metrics::counter!("atlas_analytics_fallbacks_total", "reason" => reason).absolute(0);
    }
}

/// Counts requests and their latency per route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    // The access log: off at the default level (it would be a line per telemetry request);
    // `ATLAS_LOG=info,atlas_access=debug` turns it on.
    tracing::debug!(
        target: "atlas_access",
        %method,
        %route,
        %status,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id,
        "request"
    );
    metrics::counter!("atlas_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("atlas_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics: HTTP requests per route, ingest values by outcome and reason, batch
/// sizes, flush latency, queue and staging backlog.
///
/// The Prometheus text exposition of this process: every metric with HELP text and a base unit.
/// Failure counters are present at 0 from the start.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
              (status = 503, body = crate::error::ErrorBody)))]
pub async fn render() -> Response {
    match handle() {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => {
            crate::ApiError::Unavailable("metrics recorder not installed".into()).into_response()
        }
    }
}

/// Serves only `/metrics` on `listener` until `shutdown` resolves: for processes without the
/// HTTP API (`atlas cdc`).
pub async fn serve_metrics_only(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = handle();
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
