//! `atlas bench read`: p50/p99 of every read endpoint, on cache hit and miss, at a fixed
//! request rate, through `atlas serve` as the app role — plus, in the same run, the search the
//! app role could run itself under RLS, as the baseline the definer search function beats.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use atlas_config::Config;
use atlas_stack::{Stack, StackSpec};
use atlas_store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::harness::{await_first_maintenance_round, fresh_db, percentile, start_server};

/// `atlas bench read` options.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Entities in the fleet (90 % in the measured tenant, 10 % in a neighbour).
    #[arg(long, default_value_t = 20_000)]
    entities: u64,
    /// Time-series values (temperature readings spread over the last 47 hours).
    #[arg(long, default_value_t = 200_000)]
    values: u64,
    /// Entities with a year of readings (temperature, humidity, pressure) for the long-range
    /// lines: the 30- and 365-day aggregates and the dashboard query.
    #[arg(long, default_value_t = 20)]
    year_entities: u64,
    /// Minutes between two readings of the year-long series.
    #[arg(long, default_value_t = 15)]
    year_every_min: u64,
    /// Requests per measurement.
    #[arg(long, default_value_t = 1_000)]
    requests: usize,
    /// Fixed request rate per measurement (requests/s).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Run on the Citus stack (`atlas stack up --citus`: a coordinator and two workers).
    #[arg(long)]
    citus: bool,
}

const STATUSES: [&str; 5] = ["online", "offline", "degraded", "maintenance", "unknown"];
/// One entity in this many is alarmed (the rare search; all of them in the measured tenant).
const ALARM_EVERY: i64 = 10_000;
const BUILD_CHUNK: i64 = 100_000;

/// p50/p99 of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Sends `n` requests at `rate`/s (each on its own task, so a slow answer does not delay the
/// next send) and returns their latencies' p50/p99.
async fn measure<F, Fut>(n: usize, rate: u32, f: F) -> Result<Figures>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tick.tick().await;
        let fut = f(i);
        tasks.spawn(async move {
            let t0 = Instant::now();
            fut.await.map(|()| t0.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        lat.push(r??);
    }
    lat.sort_by(f64::total_cmp);
    Ok(Figures {
        p50: round2(percentile(&lat, 0.5)),
        p99: round2(percentile(&lat, 0.99)),
    })
}

/// GET (or POST with `body`) that must succeed; returns `X-Atlas-Cache`.
async fn fetch(
    http: &reqwest::Client,
    url: String,
    key: &str,
    body: Option<Value>,
) -> Result<Option<String>> {
    let req = match body {
        Some(b) => http.post(&url).json(&b),
        None => http.get(&url),
    };
    let resp = req.bearer_auth(key).send().await?;
    let status = resp.status();
    let cache = resp
        .headers()
        .get("x-atlas-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{url}: {status} {text}");
    }
    Ok(cache)
}

/// Builds the fleet with set-based SQL as the superuser (the benchmark is about reads).
async fn build(
    admin: &tokio_postgres::Client,
    urls: &atlas_stack::StackUrls,
    args: &ReadArgs,
    log: &dyn Fn(&str),
) -> Result<i64> {
    let tenant: i64 = admin
        .query_one(
            "INSERT INTO tenants (tenant_name) VALUES ('bench') RETURNING tenant_id",
            &[],
        )
        .await?
        .get(0);
    let neighbour: i64 = admin
        .query_one(
            "INSERT INTO tenants (tenant_name) VALUES ('neighbour') RETURNING tenant_id",
            &[],
        )
        .await?
        .get(0);
    admin
        .batch_execute(
            "INSERT INTO attributes (attribute_name, data_type, is_hot) VALUES
                 ('status', 'string', true), ('priority', 'integer', true),
                 ('region', 'string', true), ('alarm', 'boolean', true),
                 ('temperature', 'decimal', false), ('humidity', 'decimal', false),
                 ('pressure', 'integer', false);
             SELECT ensure_ts_partitions(now() - interval '3 days', 3);
             SELECT ensure_ts_partitions_from(now() - interval '366 days', false);",
        )
        .await?;
    let temperature: i64 = admin
        .query_one(
            "SELECT attribute_id FROM attributes WHERE attribute_name = 'temperature'",
            &[],
        )
        .await?
        .get(0);
    let entities = i64::try_from(args.entities)?;
    let per_entity = i64::try_from((args.values / args.entities.max(1)).max(1))?;
    let bar = progress(args.json, args.entities, "entities and values");
    let mut done = 0_i64;
    while done < entities {
        let n = BUILD_CHUNK.min(entities - done);
        admin
            .execute("SELECT ensure_entity_partitions(1)", &[])
            .await?;
        let first: i64 = admin
            .query_one(
                "WITH e AS (
                     INSERT INTO entities (tenant_id, entity_type)
                     SELECT CASE WHEN g % 10 = 0 THEN $2::bigint ELSE $1::bigint END,
                            CASE WHEN g % 5 = 0 THEN 'valve' ELSE 'sensor' END
                     FROM generate_series(1, $3::bigint) g
                     RETURNING entity_id, tenant_id)
                 SELECT coalesce(min(entity_id), 0) FROM e",
                &[&tenant, &neighbour, &n],
            )
            .await?
            .get(0);
        admin
            .execute(
                "INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs, hot_attrs_at)
                 SELECT e.entity_id, e.tenant_id,
                        jsonb_build_object('status', (ARRAY['online','offline','degraded','maintenance','unknown'])[1 + e.entity_id % 5],
                                           'priority', e.entity_id % 10, 'region', 'r' || (e.entity_id % 20))
                        || CASE WHEN e.entity_id % $2::bigint = 1 THEN '{\"alarm\": true}'::jsonb ELSE '{}'::jsonb END,
                        '{}'::jsonb
                 FROM entities e WHERE e.entity_id >= $1::bigint",
                &[&first, &ALARM_EVERY],
            )
            .await?;
        admin
            .execute(
                "INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 SELECT e.entity_id, e.tenant_id, $2::bigint, round((15 + random() * 15)::numeric, 2),
                        now() - (k * (interval '47 hours' / $3::bigint)) - (e.entity_id % 997) * interval '1 ms'
                 FROM entities e CROSS JOIN generate_series(0, $3::bigint - 1) k
                 WHERE e.entity_id >= $1",
                &[&first, &temperature, &per_entity],
            )
            .await?;
        done += n;
        bar.inc(u64::try_from(n)?);
    }
    bar.finish_and_clear();
    log(&format!(
        "a year of temperature, humidity and pressure every {} minutes for {} entities…",
        args.year_every_min, args.year_entities
    ));
    admin
        .execute(
            "INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, value_int, ingested_at)
             SELECT e.entity_id, e.tenant_id, a.attribute_id,
                    CASE WHEN a.data_type = 'decimal' THEN round((10 + random() * 30)::numeric, 2) END,
                    CASE WHEN a.data_type = 'integer' THEN (950 + random() * 100)::bigint END,
                    date_trunc('minute', now()) - interval '47 hours' - k * ($2::bigint * interval '1 minute')
                        - (e.entity_id % 997) * interval '1 ms'
             FROM (SELECT * FROM entities WHERE tenant_id = $1 ORDER BY entity_id LIMIT $3) e
             CROSS JOIN (SELECT * FROM attributes WHERE attribute_name IN ('temperature', 'humidity', 'pressure')) a
             CROSS JOIN generate_series(0, (365 * 1440) / $2::bigint) k",
            &[&tenant, &i64::try_from(args.year_every_min.max(1))?, &i64::try_from(args.year_entities)?],
        )
        .await?;
    // Values written straight into the table leave no rollup marks (writes through the API
    // and staging do): mark every minute that holds values, as the flush would have, and let
    // the maintainer aggregate them.
    log("rolling up (the maintainer's step, to the end)…");
    let rollup_started = Instant::now();
    admin
        .execute(
            "INSERT INTO rollup_dirty (tenant_id, attribute_id, level, bucket)
             SELECT DISTINCT tenant_id, attribute_id, 1::smallint, date_trunc('minute', ingested_at)
             FROM entity_values_ts ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    let maintainer = atlas_maintain::Maintainer::new(
        Store::connect(urls.database_url.as_str(), &[], 2)?,
        atlas_maintain::Settings::default(),
    );
    let mut buckets = 0;
    loop {
        let n = maintainer
            .rollups(chrono::Utc::now() + chrono::Duration::days(1))
            .await?;
        buckets += n;
        if n == 0 {
            break;
        }
    }
    log(&format!(
        "{buckets} buckets rolled up in {:.1} s",
        rollup_started.elapsed().as_secs_f64()
    ));
    log("VACUUM ANALYZE (as autovacuum would before reads)…");
    admin.batch_execute("VACUUM ANALYZE").await?;
    Ok(tenant)
}

fn progress(hidden: bool, len: u64, what: &str) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}})"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs `atlas bench read`.
pub async fn run(config: &Config, args: &ReadArgs) -> Result<()> {
    if args.entities < 100 || args.requests == 0 || args.rate == 0 {
        bail!("--entities must be at least 100; --requests and --rate at least 1");
    }
    let log = |m: &str| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    let spec = if args.citus {
        StackSpec::citus_local(config.stack_dir.join("citus"))
    } else {
        StackSpec::local(config.stack_dir.clone())
    };
    let workers = spec.workers.len();
    let stack = tokio::task::spawn_blocking(move || Stack::up(&spec)).await??;
    log(if args.citus {
        "preparing a fresh atlas_bench database on the Citus stack…"
    } else {
        "preparing a fresh atlas_bench database on the local stack…"
    });
    let (urls, admin) = fresh_db(&stack).await?;
    log(&format!(
        "building {} entities and {} values…",
        args.entities, args.values
    ));
    let build_started = Instant::now();
    let tenant = build(&admin, &urls, args, &log).await?;
    let build_s = build_started.elapsed().as_secs_f64();
    let store = Store::connect(&urls.database_url, &[], 2)?;
    let key = store.issue_api_key(tenant, "bench").await?.secret;
    let (server, base) = start_server(&urls, "").await?;
    log("waiting for the server's first maintenance round (statistics refresh)…");
    await_first_maintenance_round(&base, Duration::from_secs(600)).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let sample = |n: usize, seed: f64| {
        let admin = &admin;
        async move {
            admin.execute("SELECT setseed($1)", &[&seed]).await?;
            let rows = admin
                .query(
                    "SELECT entity_id FROM entities WHERE tenant_id = $1 ORDER BY random() LIMIT $2",
                    &[&tenant, &i64::try_from(n)?],
                )
                .await?;
            Ok::<Vec<i64>, anyhow::Error>(rows.iter().map(|r| r.get(0)).collect())
        }
    };
    let n = args.requests;
    let hot_ids = Arc::new(sample(n, 0.1).await?);
    let ts_ids = Arc::new(sample(n, 0.2).await?);
    let agg_ids = Arc::new(sample(n, 0.3).await?);
    let (http, base, key) = (Arc::new(http), Arc::new(base), Arc::new(key));
    let now_ms = chrono::Utc::now().timestamp_millis();
    let day_ago = now_ms - 86_400_000;

    // Each measurement: a closure from request number to one request's future.
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let get = |path: Arc<dyn Fn(usize) -> String + Send + Sync>, expect: Option<&'static str>| {
        let (http, base, key, hits) = (
            Arc::clone(&http),
            Arc::clone(&base),
            Arc::clone(&key),
            Arc::clone(&hits),
        );
        move |i: usize| {
            let (http, url, key, hits) = (
                Arc::clone(&http),
                format!("{base}{}", path(i)),
                Arc::clone(&key),
                Arc::clone(&hits),
            );
            async move {
                let cache = fetch(&http, url, &key, None).await?;
                if expect.is_some() && cache.as_deref() == expect {
                    hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
        }
    };
    let hot_path: Arc<dyn Fn(usize) -> String + Send + Sync> = {
        let ids = Arc::clone(&hot_ids);
        Arc::new(move |i| format!("/v1/entities/{}/attributes", ids[i % ids.len()]))
    };
    // Warm-up, not measured: concurrent requests that open every pooled connection of the
    // server (on Citus each new coordinator session also opens its worker connections and
    // loads the shard metadata, ~0.5 s once), on entities outside the samples' cache lines
    // (latest values; the hot-attribute lines measured next stay cold).
    log("warming the server's connections…");
    let warm_ids = sample(64, 0.4).await?;
    let warm: Vec<_> = warm_ids
        .iter()
        .map(|e| {
            fetch(
                &http,
                format!("{base}/v1/entities/{e}/latest?attribute=temperature"),
                &key,
                None,
            )
        })
        .collect();
    for r in futures_util::future::join_all(warm).await {
        r?;
    }
    log(&format!(
        "measuring at {} requests/s, {n} requests each…",
        args.rate
    ));
    let hot_miss = measure(n, args.rate, get(Arc::clone(&hot_path), Some("miss"))).await?;
    let misses_seen = hits.swap(0, std::sync::atomic::Ordering::Relaxed);
    let hot_hit = measure(n, args.rate, get(hot_path, Some("hit"))).await?;
    let hits_seen = hits.swap(0, std::sync::atomic::Ordering::Relaxed);

    let latest = measure(
        n,
        args.rate,
        get(
            {
                let ids = Arc::clone(&ts_ids);
                Arc::new(move |i| {
                    format!(
                        "/v1/entities/{}/latest?attribute=temperature",
                        ids[i % ids.len()]
                    )
                })
            },
            None,
        ),
    )
    .await?;
    let series = measure(
        n,
        args.rate,
        get(
            {
                let ids = Arc::clone(&ts_ids);
                Arc::new(move |i| {
                    format!(
                        "/v1/entities/{}/series?attribute=temperature&from={day_ago}&to={now_ms}&limit=1000",
                        ids[i % ids.len()]
                    )
                })
            },
            None,
        ),
    )
    .await?;
    let agg_path: Arc<dyn Fn(usize) -> String + Send + Sync> = {
        let ids = Arc::clone(&agg_ids);
        Arc::new(move |i| {
            format!(
                "/v1/aggregates?attribute=temperature&from={day_ago}&to={now_ms}&bucket=1h&fn=avg&entity_id={}",
                ids[i % ids.len()]
            )
        })
    };
    let agg_miss = measure(n, args.rate, get(Arc::clone(&agg_path), None)).await?;
    let agg_hit = measure(n, args.rate, get(agg_path, None)).await?;
    let list = measure(
        n,
        args.rate,
        get(
            Arc::new(|i| format!("/v1/entities?entity_type=valve&limit=100&cursor={}", i * 7)),
            None,
        ),
    )
    .await?;

    // The long-range lines: entities with a year of values; a different `to` (1 ms apart) per
    // request so no answer comes from the aggregate cache.
    let year_ids = Arc::new(
        admin
            .query(
                "SELECT entity_id FROM entities WHERE tenant_id = $1 ORDER BY entity_id LIMIT $2",
                &[&tenant, &i64::try_from(args.year_entities.max(5))?],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<Vec<_>>(),
    );
    let long_agg = |days: i64,
                    bucket: &'static str|
     -> Arc<dyn Fn(usize) -> String + Send + Sync> {
        let ids = Arc::clone(&year_ids);
        Arc::new(move |i| {
            let to = now_ms - i64::try_from(i).unwrap_or(0);
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={to}&bucket={bucket}&fn=avg&entity_id={}",
                to - days * 86_400_000,
                ids[i % ids.len()]
            )
        })
    };
    let agg_30d = measure(n, args.rate, get(long_agg(30, "1h"), None)).await?;
    let agg_365d = measure(n, args.rate, get(long_agg(365, "1d"), None)).await?;
    let dashboard = measure(n, args.rate, {
        let (http, base, key, ids) = (
            Arc::clone(&http),
            Arc::clone(&base),
            Arc::clone(&key),
            Arc::clone(&year_ids),
        );
        move |i: usize| {
            let (http, url, key) = (
                Arc::clone(&http),
                format!("{base}/v1/query"),
                Arc::clone(&key),
            );
            let to = now_ms - i64::try_from(i).unwrap_or(0);
            let five: Vec<i64> = (0..5).map(|k| ids[(i + k) % ids.len()]).collect();
            let body = json!({
                "attributes": ["temperature", "humidity", "pressure"], "entity_ids": five,
                "from": to - 30 * 86_400_000_i64, "to": to, "fn": "avg", "max_points": 500
            });
            async move { fetch(&http, url, &key, Some(body)).await.map(|_| ()) }
        }
    })
    .await?;

    let search = |rare: bool| {
        let (http, base, key) = (Arc::clone(&http), Arc::clone(&base), Arc::clone(&key));
        move |i: usize| {
            let (http, url, key) = (
                Arc::clone(&http),
                format!("{base}/v1/entities/search"),
                Arc::clone(&key),
            );
            let body = if rare {
                json!({"contains": {"alarm": true}, "limit": 100})
            } else {
                json!({"contains": {"status": STATUSES[i % STATUSES.len()]}, "limit": 100})
            };
            async move { fetch(&http, url, &key, Some(body)).await.map(|_| ()) }
        }
    };
    let search_common = measure(n, args.rate, search(false)).await?;
    let search_rare = measure(n, args.rate, search(true)).await?;
    drop(server);

    // Baseline, same data: the rare search as the app role's own query under RLS, and the
    // definer function, both in SQL (no HTTP), sequentially.
    log("baseline: the app role's own search under RLS vs the definer function…");
    let mut app_conn = crate::connect(&urls.database_url).await?;
    // In one transaction with the tenant set as the server sets it (SET LOCAL through
    // set_tenant(): on Citus only that reaches the workers' policies).
    let app = app_conn.transaction().await?;
    app.execute("SELECT public.set_tenant($1)", &[&tenant])
        .await?;
    let alarm = json!({"alarm": true});
    let baseline_n = (n / 10).clamp(10, 100);
    let mut direct = Vec::new();
    let mut definer = Vec::new();
    let direct_sql = app
        .prepare("SELECT entity_id FROM public.entity_jsonb WHERE tenant_id = $1 AND hot_attrs @> $2 ORDER BY entity_id LIMIT 100")
        .await?;
    let definer_sql = app
        .prepare("SELECT entity_id FROM public.search_entities($1, NULL, NULL, NULL, NULL, 0, 100)")
        .await?;
    for _ in 0..baseline_n {
        let t0 = Instant::now();
        let a = app.query(&direct_sql, &[&tenant, &alarm]).await?.len();
        direct.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t0 = Instant::now();
        let b = app.query(&definer_sql, &[&alarm]).await?.len();
        definer.push(t0.elapsed().as_secs_f64() * 1000.0);
        if a != b {
            bail!("baseline and definer search disagree: {a} vs {b} rows");
        }
    }
    app.rollback().await?;
    direct.sort_by(f64::total_cmp);
    definer.sort_by(f64::total_cmp);
    let (direct_p50, definer_p50) = (percentile(&direct, 0.5), percentile(&definer, 0.5));

    #[allow(clippy::cast_precision_loss)]
    let result = json!({
        "workers": workers,
        "entities": args.entities,
        "values": args.values,
        "rate_per_s": args.rate,
        "requests_per_measurement": n,
        "build_s": round2(build_s),
        "hot_miss_p50_ms": hot_miss.p50, "hot_miss_p99_ms": hot_miss.p99,
        "hot_hit_p50_ms": hot_hit.p50, "hot_hit_p99_ms": hot_hit.p99,
        "hot_miss_observed": round2(misses_seen as f64 / n as f64),
        "hot_hit_observed": round2(hits_seen as f64 / n as f64),
        "search_p50_ms": search_common.p50, "search_p99_ms": search_common.p99,
        "search_rare_p50_ms": search_rare.p50, "search_rare_p99_ms": search_rare.p99,
        "latest_p50_ms": latest.p50, "latest_p99_ms": latest.p99,
        "series_1d_p50_ms": series.p50, "series_1d_p99_ms": series.p99,
        "agg_miss_p50_ms": agg_miss.p50, "agg_miss_p99_ms": agg_miss.p99,
        "agg_hit_p50_ms": agg_hit.p50, "agg_hit_p99_ms": agg_hit.p99,
        "list_by_type_p50_ms": list.p50, "list_by_type_p99_ms": list.p99,
        "year_entities": args.year_entities, "year_every_min": args.year_every_min,
        "agg_30d_p50_ms": agg_30d.p50, "agg_30d_p99_ms": agg_30d.p99,
        "agg_365d_p50_ms": agg_365d.p50, "agg_365d_p99_ms": agg_365d.p99,
        "dashboard_p50_ms": dashboard.p50, "dashboard_p99_ms": dashboard.p99,
        "search_rls_direct_sql_p50_ms": round2(direct_p50),
        "search_definer_sql_p50_ms": round2(definer_p50),
        "search_definer_speedup": round2(direct_p50 / definer_p50.max(0.001)),
    });
    if args.json {
        println!("{result}");
    } else {
        let r = &result;
        println!(
            "{} entities, {} values, {} requests/s, {} requests per line (built in {} s)",
            r["entities"],
            r["values"],
            r["rate_per_s"],
            r["requests_per_measurement"],
            r["build_s"]
        );
        for (label, k) in [
            ("hot attributes, miss", "hot_miss"),
            ("hot attributes, hit", "hot_hit"),
            ("search (20 % match)", "search"),
            ("search (rare match)", "search_rare"),
            ("latest", "latest"),
            ("series, 1 day", "series_1d"),
            ("aggregate, miss", "agg_miss"),
            ("aggregate, hit", "agg_hit"),
            ("list by type", "list_by_type"),
            ("aggregate, 30 d (1 h)", "agg_30d"),
            ("aggregate, 365 d (1 d)", "agg_365d"),
            ("dashboard 5×3, 30 d", "dashboard"),
        ] {
            println!(
                "{label:<24} p50 {:>8} ms   p99 {:>8} ms",
                r[format!("{k}_p50_ms")],
                r[format!("{k}_p99_ms")]
            );
        }
        println!(
            "observed cache answers: {} of misses were misses, {} of hits were hits",
            r["hot_miss_observed"], r["hot_hit_observed"]
        );
        println!(
            "rare search in SQL: app role under RLS p50 {} ms, definer function p50 {} ms → {}× faster",
            r["search_rls_direct_sql_p50_ms"],
            r["search_definer_sql_p50_ms"],
            r["search_definer_speedup"]
        );
    }
    Ok(())
}
