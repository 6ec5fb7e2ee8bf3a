//! `atlas bench cdc`: (a) how fast a backlog goes from the slot to the analytics store, and
//! (b) the commit-to-store lag while values arrive at a steady rate — on a fresh `atlas_bench`
//! database of the local stack, with the configured `[cdc]` batching.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use atlas_cdc::{AnalyticsSink, Consumer, Settings, Sink, Source};
use atlas_config::Config;
use atlas_stack::{Stack, StackSpec};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::harness::{BENCH_ANALYTICS_DB, fresh_db};

/// `atlas bench cdc` options.
#[derive(Debug, clap::Args)]
pub struct CdcArgs {
    /// Values written while no consumer runs; the backlog phase times their delivery.
    #[arg(long, default_value_t = 200_000)]
    backlog: u64,
    /// Values per second in the steady phase.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds of the steady phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Entities in the fleet (each value also refreshes its entity's hot document every
    /// `hot_change_every` values).
    #[arg(long, default_value_t = 2_000)]
    entities: i64,
    /// Every how many values of an entity its hot document changes.
    #[arg(long, default_value_t = 10)]
    hot_change_every: i64,
    /// Override `[cdc] batch_interval_ms` (the store's batch window).
    #[arg(long)]
    batch_interval_ms: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const SLOT: &str = "atlas_bench_cdc";

/// Writes `n` values starting at sequence `from` in one transaction, as the flush does: the
/// time series plus the hot document of every `hot_every`-th value's entity.
async fn write_values(
    c: &tokio_postgres::Client,
    base: chrono::DateTime<chrono::Utc>,
    from: i64,
    n: i64,
    entities: i64,
    hot_every: i64,
) -> Result<()> {
    c.execute(
        "WITH v AS (SELECT g, 1 + g % $3 AS e FROM generate_series($1::bigint, $1 + $2 - 1) g), \
              ins AS (INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at) \
                      SELECT e, 1, 1, (g % 1000) / 10.0, $5::timestamptz + make_interval(secs => g / 1000.0) FROM v) \
         INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs) \
         SELECT DISTINCT ON (e) e, 1, jsonb_build_object('status', 'v' || (g / $4)) FROM v WHERE g % $4 = 0 ORDER BY e, g DESC \
         ON CONFLICT (entity_id, tenant_id) DO UPDATE SET hot_attrs = EXCLUDED.hot_attrs, updated_at = now()",
        &[&from, &n, &entities, &hot_every, &base],
    )
    .await?;
    Ok(())
}

/// Runs `atlas bench cdc`.
pub async fn run(config: &Config, args: &CdcArgs) -> Result<()> {
    if args.rate == 0 || args.entities < 1 || args.hot_change_every < 1 {
        bail!("--rate, --entities and --hot-change-every must be at least 1");
    }
    let spec = StackSpec::local(config.stack_dir.clone());
    let stack = tokio::task::spawn_blocking(move || Stack::up(&spec)).await??;
    let say = |m: &str| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    say("preparing a fresh atlas_bench database and analytics store on the local stack…");
    let (urls, admin) = fresh_db(&stack).await?;
    admin
        .batch_execute(
            "INSERT INTO tenants (tenant_id, tenant_name) VALUES (1, 'bench');
             INSERT INTO attributes (attribute_id, attribute_name, data_type) VALUES (1, 'temperature', 'decimal');",
        )
        .await?;
    admin
        .execute(
            "INSERT INTO entities (entity_id, tenant_id, entity_type) \
             SELECT g, 1, 'sensor' FROM generate_series(1, $1::bigint) g",
            &[&args.entities],
        )
        .await?;
    let settings = Settings {
        batch_interval: args
            .batch_interval_ms
            .map_or(config.cdc.batch_interval, Duration::from_millis),
        ..crate::cdc::settings(&config.cdc)
    };
    atlas_cdc::prepare_analytics(&urls.admin_database_url, BENCH_ANALYTICS_DB).await?;
    let analytics_url = atlas_cdc::with_database(&urls.admin_database_url, BENCH_ANALYTICS_DB)?;
    let consumer = |settings: Settings| {
        let (admin_url, analytics_url) = (urls.admin_database_url.clone(), analytics_url.clone());
        async move {
            let source = Source::connect(&admin_url, SLOT).await?;
            let sink: Box<dyn Sink> = Box::new(AnalyticsSink::connect(&analytics_url, SLOT).await?);
            let mut c = Consumer::new(source, vec![sink], settings);
            c.start(&admin_url).await?;
            anyhow::Ok(c)
        }
    };
    let mut c = consumer(settings.clone()).await?;

    // Value times: one per millisecond from an hour ago (inside the current partitions).
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    // (a) Backlog: written while nobody consumes, then delivered as fast as it goes.
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.backlog)
    };
    bar.set_style(ProgressStyle::with_template(
        "backlog {bar:40} {pos}/{len} values",
    )?);
    let chunk = 1_000_i64;
    let backlog = i64::try_from(args.backlog)?;
    let mut seq = 0_i64;
    while seq < backlog {
        let n = chunk.min(backlog - seq);
        write_values(&admin, base, seq, n, args.entities, args.hot_change_every).await?;
        seq += n;
        bar.set_position(u64::try_from(seq)?);
    }
    bar.finish_and_clear();
    let retained = c
        .export_slot_state()
        .await?
        .and_then(|s| s.retained_bytes)
        .unwrap_or(0);
    say("delivering the backlog…");
    let started = Instant::now();
    let drained = c.drain().await?;
    let drain_s = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let events_per_s = drained.events as f64 / drain_s;

    // (b) Steady rate: the consumer runs as `atlas cdc` does; lag is measured per event.
    let an = crate::connect(&analytics_url).await?;
    let steady_from: chrono::DateTime<chrono::Utc> =
        an.query_one("SELECT now()", &[]).await?.get(0);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(async move {
        let r = c.run(&mut stop_rx).await;
        (c, r)
    });
    say(&format!(
        "steady phase: {} values/s for {} s, batch window {} ms…",
        args.rate,
        args.seconds,
        settings.batch_interval.as_millis()
    ));
    let per_tick = i64::try_from(args.rate.div_ceil(10))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut written = 0_i64;
    while Instant::now() < until {
        tick.tick().await;
        write_values(
            &admin,
            base,
            seq,
            per_tick,
            args.entities,
            args.hot_change_every,
        )
        .await?;
        seq += per_tick;
        written += per_tick;
    }
    let target = atlas_store::cluster::wal_position(&admin).await?;
    let deadline = Instant::now() + settings.batch_interval * 3 + Duration::from_secs(60);
    loop {
        let done: i64 = an
            .query_one(
                "SELECT end_lsn FROM cdc.sink_progress WHERE slot_name = $1",
                &[&SLOT],
            )
            .await?
            .get(0);
        if u64::try_from(done).is_ok_and(|d| d >= target) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    let (c, result) = runner.await?;
    result?;
    let lag = an
        .query_one(
            "SELECT count(*), \
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0), \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0), \
                    coalesce(max(ms), 0) \
             FROM (SELECT (extract(epoch FROM synced_at - commit_ts) * 1000)::float8 AS ms \
                   FROM cdc.change_events WHERE commit_ts >= $1) l",
            &[&steady_from],
        )
        .await?;
    let (steady_events, p50, p99, max): (i64, f64, f64, f64) =
        (lag.get(0), lag.get(1), lag.get(2), lag.get(3));
    c.source().drop_slot().await?;

    let r = json!({
        "backlog_values": args.backlog,
        "backlog_events": drained.events,
        "backlog_transactions": drained.transactions,
        "retained_wal_mb": (retained as f64 / 1_048_576.0 * 10.0).round() / 10.0,
        "drain_seconds": (drain_s * 100.0).round() / 100.0,
        "events_per_s": events_per_s.round(),
        "steady_rate_values_per_s": args.rate,
        "steady_seconds": args.seconds,
        "steady_values": written,
        "steady_events": steady_events,
        "batch_interval_ms": settings.batch_interval.as_millis(),
        "batch_events": settings.batch_events,
        "lag_p50_ms": p50.round(),
        "lag_p99_ms": p99.round(),
        "lag_max_ms": max.round(),
    });
    if args.json {
        println!("{r}");
    } else {
        println!(
            "backlog               {} values → {} events in {} transactions",
            args.backlog, r["backlog_events"], r["backlog_transactions"]
        );
        println!(
            "slot retained         {} MB of WAL before delivery",
            r["retained_wal_mb"]
        );
        println!(
            "slot → analytics      {} events/s ({} s)",
            r["events_per_s"], r["drain_seconds"]
        );
        println!(
            "steady phase          {} values/s for {} s → {} events, batch window {} ms",
            args.rate, args.seconds, steady_events, r["batch_interval_ms"]
        );
        println!(
            "commit → store lag    p50 {} ms, p99 {} ms, max {} ms",
            r["lag_p50_ms"], r["lag_p99_ms"], r["lag_max_ms"]
        );
    }
    Ok(())
}
