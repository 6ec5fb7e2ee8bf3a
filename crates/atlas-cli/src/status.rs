//! `atlas status`: the system at a glance — databases, Redis and its hit rate, the staging
//! backlog and the partition horizon — as a table or one JSON object.

use std::time::Duration;

use anyhow::Result;
use atlas_config::Config;
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

/// Collects the status document.
pub async fn collect(config: &Config) -> Result<Value> {
    let store = crate::stack::store(config)?;
    let cache = crate::stack::cache(config)?;
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
        match store.ts_partition_coverage().await {
            Ok(ranges) => {
                let horizon = ranges.iter().map(|(_, to)| *to).max();
                json!({
                    "time_partitions": ranges.len(),
                    "covered_until": horizon.map(|h| h.to_rfc3339()),
                    "horizon_days": horizon.map(|h| (h - chrono::Utc::now()).num_days()),
                })
            }
            Err(e) => json!({"error": e.to_string()}),
        }
    } else {
        Value::Null
    };
    Ok(json!({
        "primary": primary,
        "replicas": replicas,
        "redis": redis,
        "staging": staging,
        "partitions": partitions,
    }))
}

/// Runs `atlas status`; fails (non-zero exit) when the primary is down.
pub async fn run(config: &Config, as_json: bool) -> Result<()> {
    let s = collect(config).await?;
    if as_json {
        println!("{s}");
    } else {
        print!("{}", render(&s));
    }
    if s["primary"]["state"] != "up" {
        anyhow::bail!("the primary is down");
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human table.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
    let db = |v: &Value| {
        let mut t = text(&v["state"]);
        if let Some(e) = v["error"].as_str() {
            t.push_str(&format!(" ({e})"));
        }
        t
    };
    line("primary", db(&s["primary"]));
    let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
    if replicas.is_empty() {
        line("replicas", "none configured".into());
    }
    for (i, r) in replicas.iter().enumerate() {
        line(&format!("replica {}", i + 1), db(r));
    }
    let r = &s["redis"];
    let mut redis = text(&r["state"]);
    if r["state"] == "up" {
        let rate = r["hit_rate"]
            .as_f64()
            .map(|h| format!("{:.1} %", h * 100.0))
            .unwrap_or_else(|| "-".into());
        redis.push_str(&format!(
            ", hit rate {rate} ({} hits, {} misses)",
            text(&r["keyspace_hits"]),
            text(&r["keyspace_misses"])
        ));
    }
    line("redis", redis);
    let st = &s["staging"];
    line(
        "staging backlog",
        if st.is_null() {
            "-".into()
        } else {
            format!(
                "{}{} rows, oldest {} s",
                if st["capped"] == true { "≥ " } else { "" },
                text(&st["rows"]),
                text(&st["oldest_age_s"])
            )
        },
    );
    let p = &s["partitions"];
    line(
        "time partitions",
        if p.is_null() {
            "-".into()
        } else {
            format!(
                "{} partitions, covered until {} ({} days ahead)",
                text(&p["time_partitions"]),
                text(&p["covered_until"]),
                text(&p["horizon_days"])
            )
        },
    );
    out
}
