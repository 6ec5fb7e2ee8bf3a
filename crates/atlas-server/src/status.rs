//! The system at a glance — databases, Redis and its hit rate, the staging backlog, the
//! partition horizon, CDC, the cluster and the alerts — as one JSON document, for `atlas
//! status` and the admin API's `GET /v1/admin/status`.

use std::time::Duration;

use atlas_cache::Cache;
use atlas_config::Config;
use atlas_store::Store;
use serde_json::{Value, json};

/// How long each probe may take before its component counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// An error with its causes, e.g. "pool: db error: database \"x\" does not exist".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

async fn probe_pool(pool: &atlas_store::Pool) -> Value {
    let probe = async {
        let client = pool.get().await.map_err(|e| chain(&e))?;
        client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map(|r| r.get::<_, bool>(0))
            .map_err(|e| chain(&e))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(in_recovery)) => json!({"state": "up", "in_recovery": in_recovery}),
        Ok(Err(e)) => json!({"state": "down", "error": e}),
        Err(_) => json!({"state": "down", "error": "timed out"}),
    }
}

/// The status document of `atlas status` and `GET /v1/admin/status`: databases, replicas and
/// their lag, Redis, the staging backlog, partitions, maintenance runs, rollups, tenants' usage,
/// CDC, the Patroni cluster, Citus nodes and the alerts. Every probe is bounded; a component
/// that does not answer is reported down, never an error of the whole document.
pub async fn collect(store: &Store, cache: &Cache, config: &Config) -> Value {
    let primary = probe_pool(store.primary()).await;
    let mut replicas = Vec::new();
    for pool in store.replicas() {
        replicas.push(probe_pool(pool).await);
    }
    let redis = match cache.ping().await {
        None => json!({"state": "unconfigured"}),
        Some(false) => json!({"state": "down"}),
        Some(true) => {
            let stats = cache.keyspace_stats().await;
            json!({
                "state": "up",
                "keyspace_hits": stats.map(|s| s.hits),
                "keyspace_misses": stats.map(|s| s.misses),
                "hit_rate": stats.and_then(|s| s.hit_rate()).map(|r| (r * 1000.0).round() / 1000.0),
            })
        }
    };
    let up = primary["state"] == "up";
    let staging = if up {
        match store.staging_backlog(1_000_000).await {
            Ok(b) => json!({
                "rows": b.rows,
                "capped": b.rows >= 1_000_000,
                "oldest_age_s": b.oldest_staged_at.map(|t| (chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0),
            }),
            Err(e) => json!({"error": e.to_string()}),
        }
    } else {
        Value::Null
    };
    let partitions = if up {
        match store.ts_partitions().await {
            Ok(parts) => {
                let list: Vec<Value> = parts
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "from": p.from.to_rfc3339(),
                            "to": p.to.to_rfc3339(),
                            "bytes": p.bytes,
                        })
                    })
                    .collect();
                let horizon = list
                    .iter()
                    .filter_map(|p| p["to"].as_str())
                    .max()
                    .map(str::to_owned);
                // Readings older than this are refused until `atlas maintain backfill`.
                let from = list
                    .iter()
                    .filter_map(|p| p["from"].as_str())
                    .min()
                    .map(str::to_owned);
                let horizon_days = horizon
                    .as_deref()
                    .and_then(|h| chrono::DateTime::parse_from_rfc3339(h).ok())
                    .map(|h| (h.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days());
                let total: i64 = list.iter().filter_map(|p| p["bytes"].as_i64()).sum();
                json!({
                    "time_partitions": list.len(),
                    "covered_from": from,
                    "covered_until": horizon,
                    "horizon_days": horizon_days,
                    "total_bytes": total,
                    "list": list,
                })
            }
            Err(e) => json!({"error": chain(&e)}),
        }
    } else {
        Value::Null
    };
    let resolved = config;
    let settings = atlas_maintain::Settings::from_config(&resolved.maintenance);
    let monitor = atlas_maintain::Monitor::new(
        store.clone(),
        cache.clone(),
        settings.thresholds.clone(),
        settings.premake,
    );
    for (i, lag) in monitor.replica_lags().await.into_iter().enumerate() {
        if let Some(r) = replicas.get_mut(i) {
            r["lag_s"] = json!(lag.lag_s);
            if let Some(e) = lag.error {
                r["lag_error"] = json!(e);
            }
        }
    }
    let wal_senders = if up {
        match atlas_replication::wal_senders(store).await {
            Ok(w) => json!(w),
            Err(e) => json!({"error": e}),
        }
    } else {
        Value::Null
    };
    let (alerts, maintenance) = if up {
        let alerts = match monitor.check(chrono::Utc::now()).await {
            Ok(a) => json!(a),
            Err(e) => json!({"error": e.to_string()}),
        };
        let runs = match atlas_maintain::last_runs(store).await {
            Ok(r) => json!(r),
            Err(e) => json!({"error": e.to_string()}),
        };
        (alerts, runs)
    } else {
        (Value::Null, Value::Null)
    };
    let (tenants, rollups) = if up {
        let defaults = atlas_maintain::limit_defaults(&resolved.maintenance, &resolved.lifecycle);
        let tenants = match atlas_maintain::tenant_usage(store, &defaults).await {
            Ok(list) => Value::Array(
                list.iter()
                    .map(|u| {
                        use atlas_store::limits::Limit;
                        json!({
                            "tenant_id": u.tenant_id,
                            "tenant_name": u.tenant_name,
                            "entities": u.entities,
                            "max_entities": u.limits.get(Limit::MaxEntities),
                            "stored_values": u.stored_values,
                            "max_stored_values": u.limits.get(Limit::MaxStoredValues),
                            "max_values_per_day": u.limits.get(Limit::MaxValuesPerDay),
                            "raw_days": u.limits.get(Limit::RawDays),
                        })
                    })
                    .collect(),
            ),
            Err(e) => json!({"error": e.to_string()}),
        };
        (tenants, rollup_backlog(store).await)
    } else {
        (Value::Null, Value::Null)
    };
    let cdc = if up {
        cdc_status(store, resolved).await
    } else {
        Value::Null
    };
    let cluster = cluster_status(&resolved.replication.patroni_urls).await;
    let citus = if up {
        citus_status(store).await
    } else {
        Value::Null
    };
    json!({
        "primary": primary,
        "cluster": cluster,
        "citus": citus,
        "cdc": cdc,
        "replicas": replicas,
        "wal_senders": wal_senders,
        "redis": redis,
        "staging": staging,
        "partitions": partitions,
        "maintenance": maintenance,
        "rollups": rollups,
        "tenants": tenants,
        "alerts": alerts,
    })
}

/// Open and claimed rollup marks per level, and the oldest open one.
async fn rollup_backlog(store: &atlas_store::Store) -> Value {
    let client = match store.primary().get().await {
        Ok(c) => c,
        Err(e) => return json!({"error": chain(&e)}),
    };
    match client
        .query(
            "SELECT level, open, claimed, oldest FROM public.rollup_backlog()",
            &[],
        )
        .await
    {
        Ok(rows) => Value::Array(
            rows.iter()
                .map(|r| {
                    let oldest: Option<chrono::DateTime<chrono::Utc>> = r.get(3);
                    let level = match r.get::<_, i16>(0) {
                        1 => "1m",
                        2 => "1h",
                        _ => "1d",
                    };
                    json!({
                        "level": level,
                        "open": r.get::<_, i64>(1),
                        "claimed": r.get::<_, i64>(2),
                        "oldest_open": oldest.map(|t| t.to_rfc3339()),
                    })
                })
                .collect(),
        ),
        Err(e) => json!({"error": chain(&e)}),
    }
}

/// The Patroni cluster as its REST API reports it (the first of `urls` that answers): every
/// member's role, state, timeline and lag, the synchronous standby, and the last failover
/// or switchover (the newest entry of the timeline history).
async fn cluster_status(urls: &[String]) -> Value {
    if urls.is_empty() {
        return json!({"state": "unconfigured"});
    }
    let Ok(http) = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build() else {
        return json!({"state": "down", "error": "no HTTP client"});
    };
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(&url).send().await.map_err(|e| chain(&e))?;
            r.error_for_status()
                .map_err(|e| chain(&e))?
                .json::<Value>()
                .await
                .map_err(|e| chain(&e))
        }
    };
    let mut errors = Vec::new();
    for base in urls {
        let base = base.trim_end_matches('/');
        let cluster = match get(format!("{base}/cluster")).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{base}: {e}"));
                continue;
            }
        };
        let members: Vec<Value> = cluster["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                json!({
                    "name": m["name"],
                    "role": m["role"],
                    "state": m["state"],
                    "address": format!("{}:{}", plain(&m["host"]), plain(&m["port"])),
                    "timeline": m["timeline"],
                    "lag_bytes": m["lag"],
                })
            })
            .collect();
        let sync = members
            .iter()
            .find(|m| m["role"] == "sync_standby")
            .map(|m| m["name"].clone());
        // [timeline, lsn, reason, timestamp, new leader]: the newest is the last change of
        // primary (failover or switchover); none on a cluster that never changed.
        let last = get(format!("{base}/history")).await.ok().and_then(|h| {
            h.as_array().and_then(|a| a.last().cloned()).map(|e| {
                json!({
                    "timeline": e[0].as_i64().map(|t| t + 1),
                    "at": e.get(3),
                    "new_primary": e.get(4),
                    "reason": e[2],
                })
            })
        });
        return json!({
            "state": "up",
            "source": base,
            "members": members,
            "synchronous_standby": sync,
            "last_failover": last,
        });
    }
    json!({"state": "down", "error": errors.join("; ")})
}

/// The CDC slot (what it retains) and the analytics store (how far behind it is).
/// On a Citus coordinator, its nodes with shard counts and bytes (null on a single node).
async fn citus_status(store: &atlas_store::Store) -> Value {
    let client = match store.primary().get().await {
        Ok(c) => c,
        Err(e) => return json!({"error": chain(&e)}),
    };
    match atlas_store::cluster::is_citus(&client).await {
        Ok(false) => Value::Null,
        Ok(true) => match atlas_store::cluster::citus_nodes(&client).await {
            Ok(nodes) => json!({"nodes": nodes}),
            Err(e) => json!({"error": chain(&e)}),
        },
        Err(e) => json!({"error": chain(&e)}),
    }
}

async fn cdc_status(store: &atlas_store::Store, config: &Config) -> Value {
    let slot_name = &config.cdc.slot_name;
    let slot = match store.primary().get().await {
        Ok(client) => match atlas_store::cluster::find_slot(&client, slot_name).await {
            Ok(Some(s)) => json!({
                "exists": true,
                "active": s.active,
                "retained_wal_bytes": s.retained_bytes.unwrap_or(0),
                "wal_status": s.wal_status.map_or("", |w| w.as_str()),
                "confirmed_lsn": atlas_replication::Lsn(s.confirmed.unwrap_or(0)).to_string(),
            }),
            Ok(None) => json!({"exists": false}),
            Err(e) => json!({"error": chain(&e)}),
        },
        Err(e) => json!({"error": chain(&e)}),
    };
    let analytics = match (&config.database_url, config.cdc.analytics_database.as_str()) {
        (Some(url), name) if !name.is_empty() => {
            let probe = async {
                let url = atlas_cdc::with_database(url, name).map_err(|e| e.to_string())?;
                let client = atlas_store::connect(&url).await.map_err(|e| chain(&e))?;
                atlas_cdc::sink_progress(&client, slot_name)
                    .await
                    .map_err(|e| chain(&e))
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(Some(p))) => json!({
                    "state": "up",
                    "database": name,
                    "end_lsn": atlas_replication::Lsn(p.end_lsn).to_string(),
                    "commit_ts": p.commit_ts.to_rfc3339(),
                    "synced_at": p.synced_at.to_rfc3339(),
                    "lag_s": (chrono::Utc::now() - p.commit_ts).num_milliseconds() as f64 / 1000.0,
                    "sink_delay_s": (p.synced_at - p.commit_ts).num_milliseconds() as f64 / 1000.0,
                    "events": p.events,
                }),
                Ok(Ok(None)) => json!({"state": "empty", "database": name}),
                Ok(Err(e)) => json!({"state": "down", "database": name, "error": e}),
                Err(_) => json!({"state": "down", "database": name, "error": "timed out"}),
            }
        }
        _ => json!({"state": "unconfigured"}),
    };
    json!({"slot_name": slot_name, "slot": slot, "analytics": analytics})
}

/// A JSON scalar as plain text (`-` for null).
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
