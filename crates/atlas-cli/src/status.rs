//! `atlas status`: the system at a glance — databases, Redis and its hit rate, the staging
//! backlog and the partition horizon — as a table or one JSON object.

use anyhow::Result;
use atlas_config::Config;
use serde_json::Value;

/// Collects the status document (`atlas_server::status::collect`) for `config` as the local
/// stack resolves it.
pub async fn collect(config: &Config) -> Result<Value> {
    let store = crate::stack::store(config)?;
    let cache = crate::stack::cache(config)?;
    let resolved = crate::stack::resolved(config)?;
    Ok(atlas_server::status::collect(&store, &cache, &resolved).await)
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

/// The status as the table `atlas status` prints (the JSON form is `s` itself).
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
    let cl = &s["cluster"];
    if cl["state"] == "up" {
        for m in cl["members"].as_array().cloned().unwrap_or_default() {
            line(
                "cluster member",
                format!(
                    "{} {} {} {}, timeline {}, lag {} bytes",
                    text(&m["name"]),
                    text(&m["address"]),
                    text(&m["role"]),
                    text(&m["state"]),
                    text(&m["timeline"]),
                    text(&m["lag_bytes"]),
                ),
            );
        }
        line("synchronous standby", text(&cl["synchronous_standby"]));
        let f = &cl["last_failover"];
        line(
            "last failover",
            if f.is_null() {
                "none".into()
            } else {
                format!(
                    "{} to {} (timeline {}): {}",
                    text(&f["at"]),
                    text(&f["new_primary"]),
                    text(&f["timeline"]),
                    text(&f["reason"])
                )
            },
        );
    } else if cl["state"] == "down" {
        line("cluster", db(cl));
    }
    let ci = &s["citus"];
    if let Some(e) = ci["error"].as_str() {
        line("citus", format!("unknown ({e})"));
    }
    for n in ci["nodes"].as_array().cloned().unwrap_or_default() {
        line(
            if n["coordinator"] == true {
                "citus coordinator"
            } else {
                "citus worker"
            },
            format!(
                "{}:{} {}, {} shards, {:.1} MB",
                text(&n["host"]),
                text(&n["port"]),
                if n["active"] == true {
                    "active"
                } else {
                    "INACTIVE"
                },
                text(&n["shards"]),
                n["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0
            ),
        );
    }
    let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
    if replicas.is_empty() {
        line("replicas", "none configured".into());
    }
    for (i, r) in replicas.iter().enumerate() {
        let mut t = db(r);
        match (r["lag_s"].as_f64(), r["lag_error"].as_str()) {
            (Some(l), _) => t.push_str(&format!(", heartbeat lag {l:.2} s")),
            (None, Some(e)) => t.push_str(&format!(", lag unknown ({e})")),
            _ => {}
        }
        line(&format!("replica {}", i + 1), t);
    }
    for w in s["wal_senders"].as_array().cloned().unwrap_or_default() {
        line(
            "wal sender",
            format!(
                "{} {} {}, replay lag {} s, replayed {}",
                text(&w["application_name"]),
                text(&w["client_addr"]),
                text(&w["state"]),
                w["replay_lag_s"]
                    .as_f64()
                    .map_or_else(|| "0 (idle)".into(), |l| format!("{l:.3}")),
                text(&w["replay_lsn"])
            ),
        );
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
                "{} partitions, covered from {} until {} ({} days ahead), {:.1} MB",
                text(&p["time_partitions"]),
                text(&p["covered_from"]),
                text(&p["covered_until"]),
                text(&p["horizon_days"]),
                p["total_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0
            )
        },
    );
    for r in s["rollups"].as_array().cloned().unwrap_or_default() {
        line(
            &format!("rollups {}", text(&r["level"])),
            format!(
                "{} buckets dirty, {} claimed{}",
                text(&r["open"]),
                text(&r["claimed"]),
                r["oldest_open"]
                    .as_str()
                    .map(|t| format!(", oldest {t}"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(tenants) = s["tenants"].as_array() {
        // The ten biggest by stored values (all of them in --json).
        let mut by_size = tenants.clone();
        by_size.sort_by_key(|t| std::cmp::Reverse(t["stored_values"].as_i64().unwrap_or(0)));
        let quota = |v: &Value| match v.as_i64() {
            Some(0) | None => "∞".to_owned(),
            Some(n) => n.to_string(),
        };
        for t in by_size.iter().take(10) {
            line(
                "tenant usage",
                format!(
                    "{} (id {}): {}/{} entities, {}/{} values stored, {} values/day allowed",
                    text(&t["tenant_name"]),
                    text(&t["tenant_id"]),
                    text(&t["entities"]),
                    quota(&t["max_entities"]),
                    text(&t["stored_values"]),
                    quota(&t["max_stored_values"]),
                    quota(&t["max_values_per_day"]),
                ),
            );
        }
        if tenants.len() > 10 {
            line(
                "tenant usage",
                format!("… {} more (atlas status --json)", tenants.len() - 10),
            );
        }
    }
    let c = &s["cdc"];
    if !c.is_null() {
        let slot = &c["slot"];
        line(
            "cdc slot",
            if slot["exists"] == true {
                // `active` is true only while a peek runs (the SQL interface holds no
                // session on the slot): the store's sync time says whether a consumer runs.
                format!(
                    "{} retains {:.1} MB of WAL ({}), confirmed {}",
                    text(&c["slot_name"]),
                    slot["retained_wal_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
                    text(&slot["wal_status"]),
                    text(&slot["confirmed_lsn"])
                )
            } else if let Some(e) = slot["error"].as_str() {
                format!("unknown ({e})")
            } else {
                format!(
                    "{} not created (atlas cdc has not run)",
                    text(&c["slot_name"])
                )
            },
        );
        let an = &c["analytics"];
        line(
            "analytics store",
            match an["state"].as_str() {
                Some("up") => format!(
                    "{}: lag {:.1} s, {} streamed events, last synced {}",
                    text(&an["database"]),
                    an["lag_s"].as_f64().unwrap_or(0.0),
                    text(&an["events"]),
                    text(&an["synced_at"])
                ),
                Some("empty") => format!("{}: nothing applied yet", text(&an["database"])),
                Some("down") => format!("{}: down ({})", text(&an["database"]), text(&an["error"])),
                _ => "not configured".into(),
            },
        );
    }
    let runs = s["maintenance"].as_array().cloned().unwrap_or_default();
    let stats = runs.iter().find(|r| r["task"] == "stats_refresh");
    line(
        "last stats refresh",
        match stats {
            Some(r) => format!(
                "{} ({} rows in {:.2} s{})",
                text(&r["finished_at"]),
                text(&r["rows"]),
                r["seconds"].as_f64().unwrap_or(0.0),
                if r["ok"] == false { ", FAILED" } else { "" }
            ),
            None => "never".into(),
        },
    );
    let last_round = runs
        .iter()
        .filter_map(|r| r["finished_at"].as_str())
        .max()
        .map(str::to_owned);
    line(
        "last maintenance",
        last_round.unwrap_or_else(|| "never".into()),
    );
    let alerts = s["alerts"].as_array().cloned().unwrap_or_default();
    let firing: Vec<&Value> = alerts.iter().filter(|a| a["firing"] == true).collect();
    if alerts.is_empty() {
        line("alerts", "-".into());
    } else if firing.is_empty() {
        line("alerts", format!("none firing ({} checked)", alerts.len()));
    } else {
        for a in firing {
            line(
                "ALERT",
                format!("{}: {}", text(&a["alert"]), text(&a["message"])),
            );
        }
    }
    out
}
