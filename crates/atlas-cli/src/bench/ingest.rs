//! `atlas bench ingest`: durable HTTP ingest against raw COPY and per-row INSERT, measured in
//! one process on the private stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use atlas_config::Config;
use atlas_stack::{Stack, StackSpec, StackUrls};
use atlas_store::admin::{AttributeSpec, DataType};
use atlas_store::entities::{self, NewEntity};
use atlas_store::{Store, StoreError, TenantId};
use futures_util::FutureExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::harness::{
    CpuSample, WalStats, cpu_sample, fresh_db, idle_slots, percentile, rss_mb, settle,
    stack_wal_stats, start_server,
};

/// `atlas bench ingest` options.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Values to send in the full-speed phase.
    #[arg(long, default_value_t = 200_000)]
    values: u64,
    /// Concurrent HTTP clients (each keeps one request in flight; with 100 ms batching,
    /// fewer clients measure the clients, not the server).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Readings per request (each reading carries 5 values: 2 cold, 3 hot).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Entities in the fleet.
    #[arg(long, default_value_t = 2_000)]
    entities: usize,
    /// Every how many readings of an entity its hot `status` changes (others repeat it).
    #[arg(long, default_value_t = 10)]
    hot_change_every: u64,
    /// Seconds of the half-load phase (ack latency at half of the measured maximum).
    #[arg(long, default_value_t = 10)]
    half_load_seconds: u64,
    /// Rows for the per-row autocommit INSERT baseline (it is slow; a sample is enough).
    #[arg(long, default_value_t = 20_000)]
    naive_rows: u64,
    /// The server's batch window in milliseconds (`[ingest] batch_interval_ms`).
    #[arg(long, default_value_t = atlas_config::duration::millis_i64(atlas_config::Ingest::default().batch_interval).unsigned_abs())]
    batch_interval_ms: u64,
    /// The server's batch size in values (`[ingest] batch_rows`).
    #[arg(long, default_value_t = atlas_config::Ingest::default().batch_rows.get())]
    batch_rows: usize,
    /// The server's concurrent batch writers (`[ingest] writers`).
    #[arg(long, default_value_t = atlas_config::Ingest::default().writers.get())]
    writers: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Run on the Citus stack (`atlas stack up --citus`: a coordinator and two workers), then
    /// the same full-speed phase on the single-node stack for the ratio.
    #[arg(long)]
    citus: bool,
}

pub(super) const VALUES_PER_READING: u64 = 5;

/// The (entity, time in ms) of reading number `n` of a run: readings go round the fleet, one
/// millisecond later each round, so every reading is unique.
pub(super) fn reading_key(n: u64, entities: &[i64], base_ms: i64) -> (i64, i64) {
    let entity = entities[usize::try_from(n).unwrap_or(0) % entities.len()];
    let round = n / entities.len() as u64;
    (entity, base_ms + i64::try_from(round).unwrap_or(0))
}

/// One request's body: `batch` readings with unique times. Written straight into a string:
/// the load generator shares the two cores with what it measures, and building a
/// `serde_json::Value` tree per request and serializing it cost ~2 % of the machine.
pub(super) fn request_body(
    req: u64,
    batch: usize,
    entities: &[i64],
    base_ms: i64,
    hot_every: u64,
) -> String {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(batch * 150 + 2);
    body.push('[');
    for k in 0..batch as u64 {
        let n = req * batch as u64 + k;
        let (entity, _) = reading_key(n, entities, base_ms);
        let round = n / entities.len() as u64;
        let step = round / hot_every.max(1);
        let status = ["online", "degraded", "offline"][usize::try_from(step % 3).unwrap_or(0)];
        if k > 0 {
            body.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            r#"{{"entity_id":{entity},"ts":{ts},"values":{{"temperature":{temp:.1},"humidity":{hum},"status":"{status}","priority":{prio},"online":{online}}}}}"#,
            ts = reading_key(n, entities, base_ms).1,
            temp = 20.0 + (n % 100) as f64 / 10.0,
            hum = 40 + (n % 30),
            prio = step % 10,
            online = status != "offline",
        );
    }
    body.push(']');
    body
}

pub(crate) async fn run(config: &Config, args: &IngestArgs) -> Result<()> {
    if args.clients == 0 || args.batch == 0 || args.entities == 0 {
        bail!("--clients, --batch and --entities must be at least 1");
    }
    let spec = if args.citus {
        StackSpec::citus_local(config.stack_dir.join("citus"))
    } else {
        StackSpec::local(config.stack_dir.clone())
    };
    let workers = spec.workers.len();
    let stack = tokio::task::spawn_blocking(move || Stack::up(&spec)).await??;
    let log = |m: &str| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    log(if args.citus {
        "preparing a fresh atlas_bench database on the Citus stack (fsync on)…"
    } else {
        "preparing a fresh atlas_bench database on the local stack (fsync on)…"
    });
    let (urls, bench_admin) = fresh_db(&stack).await?;
    let idle_slots = idle_slots(&bench_admin).await?;
    // Printed even with --json (to stderr): a figure measured like this must not pass unnoticed.
    for (slot, mb) in &idle_slots {
        eprintln!(
            "warning: replication slot {slot} has no consumer and holds {mb:.0} MB of WAL: until it \
             is consumed or dropped the primary writes every WAL segment new instead of recycling \
             one, which costs this benchmark ~10 % of the machine (figures will be low)"
        );
    }
    let fleet = Fleet::create(&urls, args.entities).await?;

    // The server, as users run it, with limits out of the benchmark's way.
    let (server, base) = start_server(&urls, &server_settings(args)).await?;
    let pid = server.0.id();
    let load = Arc::new(Load::new(args, base, &fleet)?);
    let requests = args.values.div_ceil(load.per_request);
    log(&format!(
        "phase 1: {requests} requests × {} values, {} clients, {} entities, hot status changes every {} readings",
        load.per_request, args.clients, args.entities, args.hot_change_every
    ));
    let full = full_speed(&load, args, requests, &stack, &bench_admin, pid).await?;
    #[allow(clippy::cast_precision_loss)]
    let target_req_per_s = (full.values_per_s / 2.0) / load.per_request as f64;
    log(&format!(
        "phase 2: {target_req_per_s:.1} requests/s (half of the maximum) for {} s",
        args.half_load_seconds
    ));
    let mut half = half_load(&load, args, requests, target_req_per_s).await?;
    half.sort_by(f64::total_cmp);
    let peak_rss = rss_mb(pid, "VmHWM:");
    drop(server);

    let rollup = rollup_maintenance(&stack, &bench_admin, &urls, log).await?;
    let copy_rows = requests * load.per_request;
    let baselines = baselines(&stack, &bench_admin, &urls, &fleet, copy_rows, args, log).await?;
    // On Citus: the same full-speed phase on the single-node stack, for the ratio.
    let single = if args.citus {
        log("single node: the same full-speed phase on the local stack, for the ratio…");
        Some(single_node_durable(config, args, requests).await?)
    } else {
        None
    };
    // The same full-speed phase with rollup marks off (a database of its own), for what
    // marking costs the write path.
    let off = if args.citus {
        None
    } else {
        log("rollups off: the same full-speed phase in a database without rollup marks…");
        Some(durable_without_rollups(&stack, args, requests).await?)
    };
    let share = off.as_ref().and_then(|o| {
        let (on, off, maint) = (full.cpu?.total(), o.cpu?.total(), rollup.cpu?.total());
        Some(((on - off + maint) / (off).max(0.001) * 1000.0).round() / 1000.0)
    });
    #[allow(clippy::cast_precision_loss)]
    let result = json!({
        "values": copy_rows,
        "workers": workers,
        "single_node_durable_values_per_s": single.map(f64::round),
        "ratio_vs_single_node": single.map(|v| (full.values_per_s / v * 100.0).round() / 100.0),
        "clients": args.clients,
        "batch_readings": args.batch,
        "values_per_request": load.per_request,
        "entities": args.entities,
        "hot_change_every": args.hot_change_every,
        "batch_interval_ms": args.batch_interval_ms,
        "batch_rows": args.batch_rows,
        "writers": args.writers,
        "durable_values_per_s": full.values_per_s.round(),
        "raw_copy_values_per_s": baselines.copy_per_s.round(),
        "naive_insert_values_per_s": baselines.naive_per_s.round(),
        "ratio_vs_copy": (full.values_per_s / baselines.copy_per_s * 100.0).round() / 100.0,
        "ratio_vs_naive": (full.values_per_s / baselines.naive_per_s * 10.0).round() / 10.0,
        "ack_p50_ms": (percentile(&full.latencies, 0.5) * 10.0).round() / 10.0,
        "ack_p99_ms": (percentile(&full.latencies, 0.99) * 10.0).round() / 10.0,
        "half_load_values_per_s": (target_req_per_s * load.per_request as f64).round(),
        "half_load_ack_p50_ms": (percentile(&half, 0.5) * 10.0).round() / 10.0,
        "half_load_ack_p99_ms": (percentile(&half, 0.99) * 10.0).round() / 10.0,
        "durable_cpu_us_per_value": full.cpu.map(|c| (c.total() * 100.0).round() / 100.0),
        "primary_cpu_us_per_value": full.cpu.map(|c| (c.primary * 100.0).round() / 100.0),
        "replica_cpu_us_per_value": full.cpu.map(|c| (c.replica * 100.0).round() / 100.0),
        "workers_cpu_us_per_value": full.cpu.map(|c| (c.workers * 100.0).round() / 100.0),
        "server_cpu_us_per_value": full.cpu.map(|c| (c.server * 100.0).round() / 100.0),
        "raw_copy_primary_cpu_us_per_value": baselines.copy_cpu.map(|c| (c.primary * 100.0).round() / 100.0),
        "raw_copy_replica_cpu_us_per_value": baselines.copy_cpu.map(|c| (c.replica * 100.0).round() / 100.0),
        "raw_copy_cpu_us_per_value": baselines.copy_cpu.map(|c| (c.total() * 100.0).round() / 100.0),
        "cpu_ratio_vs_copy": baselines.copy_cpu
            .zip(full.cpu)
            .map(|(c, d)| (c.total() / d.total() * 100.0).round() / 100.0),
        "durable_wal_bytes_per_value": full.wal.bytes_per_value(full.sent),
        "raw_copy_wal_bytes_per_value": baselines.copy_wal.bytes_per_value(copy_rows as f64),
        "checkpoints_during_durable": full.wal.checkpoints,
        "checkpoints_during_copy": baselines.copy_wal.checkpoints,
        "idle_slots": idle_slots.iter().map(|(slot, _)| slot.as_str()).collect::<Vec<_>>(),
        "server_rss_mb": full.rss.map(f64::round),
        "server_peak_rss_mb": peak_rss.map(f64::round),
    });
    let mut result = result;
    #[allow(clippy::cast_precision_loss)]
    let rollups = json!({
        "rollups_off_values_per_s": off.as_ref().map(|o| o.values_per_s.round()),
        "ratio_rollups_on_vs_off": off.as_ref().map(|o| (full.values_per_s / o.values_per_s * 1000.0).round() / 1000.0),
        "rollups_off_cpu_us_per_value": off.as_ref().and_then(|o| o.cpu).map(|c| (c.total() * 100.0).round() / 100.0),
        "rollups_off_wal_bytes_per_value": off.as_ref().map(|o| o.wal.bytes_per_value(o.sent)),
        "rollup_maintenance_values": rollup.values,
        "rollup_maintenance_s": (rollup.seconds * 100.0).round() / 100.0,
        "rollup_maintenance_buckets": rollup.buckets,
        "rollup_maintenance_cpu_us_per_value": rollup.cpu.map(|c| (c.total() * 100.0).round() / 100.0),
        "rollup_maintenance_wal_bytes_per_value": rollup.wal.bytes_per_value(rollup.values as f64),
        "rollup_cpu_share_of_ingest": share,
    });
    if let (Some(r), Some(extra)) = (result.as_object_mut(), rollups.as_object()) {
        r.extend(extra.clone());
    }
    if args.json {
        println!("{result}");
    } else {
        print_table(&result);
    }
    Ok(())
}

/// The bench tenant, its key and its entities (attributes of every type, 5 of 10 hot).
pub(super) struct Fleet {
    pub(super) key: String,
    pub(super) tenant: TenantId,
    pub(super) ids: Arc<Vec<i64>>,
}

impl Fleet {
    pub(super) async fn create(urls: &StackUrls, entities: usize) -> Result<Self> {
        let store = Store::connect(&urls.database_url, &[], 4)?;
        for (name, t, hot) in [
            ("temperature", DataType::Decimal, false),
            ("humidity", DataType::Integer, false),
            ("status", DataType::String, true),
            ("priority", DataType::Integer, true),
            ("online", DataType::Boolean, true),
            ("firmware", DataType::String, false),
            ("serviced", DataType::Date, false),
            ("booted", DataType::Timestamp, false),
            ("config", DataType::Json, true),
            ("region", DataType::String, true),
        ] {
            store
                .define_attribute(&AttributeSpec {
                    attribute_name: name.into(),
                    data_type: t,
                    is_hot: hot,
                    is_indexed: false,
                    validation_regex: None,
                    allow_rounding: false,
                })
                .await?;
        }
        let tenant = store.create_tenant("bench").await?;
        let key = store.issue_api_key(tenant.tenant_id, "bench").await?.secret;
        let tid = TenantId(tenant.tenant_id);
        let ids: Vec<i64> = store
            .with_tenant(tid, move |tx| {
                async move {
                    let new: Vec<NewEntity> = (0..entities)
                        .map(|_| NewEntity {
                            entity_type: "sensor".into(),
                            cold_attrs: json!({}),
                        })
                        .collect();
                    let mut ids = Vec::new();
                    for chunk in new.chunks(1000) {
                        ids.extend(
                            entities::register(tx, tid, chunk)
                                .await?
                                .iter()
                                .map(|e| e.entity_id),
                        );
                    }
                    Ok::<_, StoreError>(ids)
                }
                .boxed()
            })
            .await?;
        Ok(Self {
            key,
            tenant: tid,
            ids: Arc::new(ids),
        })
    }
}

/// The server's `[ingest]` settings for a run.
fn server_settings(args: &IngestArgs) -> String {
    format!(
        "[ingest]\nbatch_interval_ms = {}\nbatch_rows = {}\nwriters = {}\n",
        args.batch_interval_ms, args.batch_rows, args.writers
    )
}

/// The full-speed durable phase alone on the single-node stack (`--citus`'s baseline):
/// values per second.
async fn single_node_durable(config: &Config, args: &IngestArgs, requests: u64) -> Result<f64> {
    let spec = StackSpec::local(config.stack_dir.clone());
    let stack = tokio::task::spawn_blocking(move || Stack::up(&spec)).await??;
    let (urls, bench_admin) = fresh_db(&stack).await?;
    let fleet = Fleet::create(&urls, args.entities).await?;
    let (server, base) = start_server(&urls, &server_settings(args)).await?;
    let pid = server.0.id();
    let load = Arc::new(Load::new(args, base, &fleet)?);
    let full = full_speed(&load, args, requests, &stack, &bench_admin, pid).await?;
    drop(server);
    Ok(full.values_per_s)
}

/// What bringing the rollups up to date cost after the HTTP phases.
struct RollupCost {
    /// Values the phases stored.
    values: i64,
    /// Buckets aggregated (minutes, hours, days).
    buckets: i64,
    seconds: f64,
    /// CPU of the stack per stored value (µs).
    cpu: Option<CpuSample>,
    wal: WalStats,
}

/// Runs the maintainer's rollup step over everything the phases wrote (as of tomorrow, so
/// every bucket is settled) and measures it per stored value.
async fn rollup_maintenance(
    stack: &Stack,
    bench_admin: &tokio_postgres::Client,
    urls: &atlas_stack::StackUrls,
    log: impl Fn(&str),
) -> Result<RollupCost> {
    log("rollups: aggregating the marked minutes, hours and days…");
    let values: i64 = bench_admin
        .query_one("SELECT count(*) FROM entity_values_ts", &[])
        .await?
        .get(0);
    settle(bench_admin).await?;
    let store = atlas_store::Store::connect(&urls.database_url, &[], 2)?;
    let maintainer = atlas_maintain::Maintainer::new(store, atlas_maintain::Settings::default());
    let cpu_before = cpu_sample(stack, None);
    let wal_before = stack_wal_stats(stack, bench_admin).await?;
    let started = Instant::now();
    let buckets = maintainer
        .rollups(chrono::Utc::now() + chrono::Duration::days(1))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_sample(stack, None);
    let wal = stack_wal_stats(stack, bench_admin)
        .await?
        .since(&wal_before);
    #[allow(clippy::cast_precision_loss)]
    let per = values.max(1) as f64;
    Ok(RollupCost {
        values,
        buckets,
        seconds,
        cpu: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| b.since(&a).per_value(per)),
        wal,
    })
}

/// The full-speed durable phase in a fresh database whose writes leave no rollup marks
/// (`atlas.rollups = off`, set on the database before the server connects).
async fn durable_without_rollups(
    stack: &Stack,
    args: &IngestArgs,
    requests: u64,
) -> Result<FullSpeed> {
    let (urls, bench_admin) = fresh_db(stack).await?;
    bench_admin
        .batch_execute("ALTER DATABASE atlas_bench SET atlas.rollups = 'off'")
        .await?;
    let fleet = Fleet::create(&urls, args.entities).await?;
    let (server, base) = start_server(&urls, &server_settings(args)).await?;
    let pid = server.0.id();
    let load = Arc::new(Load::new(args, base, &fleet)?);
    let full = full_speed(&load, args, requests, stack, &bench_admin, pid).await?;
    drop(server);
    let marks: i64 = bench_admin
        .query_one("SELECT count(*) FROM rollup_dirty", &[])
        .await?
        .get(0);
    if marks != 0 {
        bail!("the rollups-off database holds {marks} rollup marks: the setting did not apply");
    }
    Ok(full)
}

/// What the two HTTP phases send, and how.
struct Load {
    http: reqwest::Client,
    base: String,
    key: String,
    ids: Arc<Vec<i64>>,
    batch: usize,
    hot_every: u64,
    per_request: u64,
    base_ms: i64,
}

impl Load {
    fn new(args: &IngestArgs, base: String, fleet: &Fleet) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(args.clients)
                .build()?,
            base,
            key: fleet.key.clone(),
            ids: Arc::clone(&fleet.ids),
            batch: args.batch,
            hot_every: args.hot_change_every,
            per_request: args.batch as u64 * VALUES_PER_READING,
            base_ms: chrono::Utc::now().timestamp_millis() - 6 * 3_600_000,
        })
    }

    /// Sends request number `req` (its readings' times follow from it) and returns its
    /// latency in milliseconds; a refused request ends the bench.
    async fn send(&self, req: u64) -> Result<f64> {
        let body = request_body(req, self.batch, &self.ids, self.base_ms, self.hot_every);
        let t0 = Instant::now();
        let resp = post_telemetry(&self.http, &self.base, &self.key, body).await?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "request {req} failed: {status} {}",
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }
}

/// POSTs a JSON body of readings to `/v1/telemetry` (durable).
pub(super) async fn post_telemetry(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/v1/telemetry"))
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
}

/// Phase 1's figures.
struct FullSpeed {
    /// Acknowledgement latencies (ms), sorted.
    latencies: Vec<f64>,
    values_per_s: f64,
    /// Values sent.
    sent: f64,
    /// CPU per value of the whole stack (µs).
    cpu: Option<CpuSample>,
    wal: WalStats,
    /// The server's RSS after the load (MB).
    rss: Option<f64>,
}

/// Phase 1: `requests` requests from `args.clients` clients, each with one in flight.
async fn full_speed(
    load: &Arc<Load>,
    args: &IngestArgs,
    requests: u64,
    stack: &Stack,
    bench_admin: &tokio_postgres::Client,
    pid: u32,
) -> Result<FullSpeed> {
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(requests * load.per_request)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} values ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicU64::new(0));
    settle(bench_admin).await?;
    let cpu_before = cpu_sample(stack, Some(pid));
    let wal_before = stack_wal_stats(stack, bench_admin).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (load, next, bar) = (Arc::clone(load), Arc::clone(&next), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let req = next.fetch_add(1, Ordering::Relaxed);
                if req >= requests {
                    return Ok::<_, anyhow::Error>(lat);
                }
                lat.push(load.send(req).await?);
                bar.inc(load.per_request);
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_sample(stack, Some(pid));
    let wal = stack_wal_stats(stack, bench_admin)
        .await?
        .since(&wal_before);
    bar.finish_and_clear();
    #[allow(clippy::cast_precision_loss)]
    let sent = (requests * load.per_request) as f64;
    latencies.sort_by(f64::total_cmp);
    Ok(FullSpeed {
        latencies,
        values_per_s: sent / elapsed,
        sent,
        cpu: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| b.since(&a).per_value(sent)),
        wal,
        rss: rss_mb(pid, "VmRSS:"),
    })
}

/// Phase 2: `target_req_per_s` requests per second, paced, for `args.half_load_seconds`
/// (the latency target applies here); numbered after phase 1's `offset` requests. Returns the
/// latencies (ms).
async fn half_load(
    load: &Arc<Load>,
    args: &IngestArgs,
    offset: u64,
    target_req_per_s: f64,
) -> Result<Vec<f64>> {
    #[allow(clippy::cast_precision_loss)]
    let phase2_requests = (target_req_per_s * args.half_load_seconds as f64).max(1.0);
    #[allow(clippy::cast_precision_loss)]
    let interval = Duration::from_secs_f64(args.clients as f64 / target_req_per_s);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let per_client = (phase2_requests / args.clients as f64).ceil() as u64;
    let mut tasks = Vec::new();
    for c in 0..args.clients as u64 {
        let load = Arc::clone(load);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 0..per_client {
                tick.tick().await;
                lat.push(load.send(offset + c * per_client + i).await?);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut half = Vec::new();
    for t in tasks {
        half.extend(t.await??);
    }
    Ok(half)
}

/// The baselines' figures.
struct Baselines {
    copy_per_s: f64,
    /// CPU per value of the stack under COPY (µs).
    copy_cpu: Option<CpuSample>,
    copy_wal: WalStats,
    naive_per_s: f64,
}

/// (a) raw binary COPY of `copy_rows` rows straight into entity_values_ts; (b) per-row
/// autocommit INSERT over `args.clients` connections.
async fn baselines(
    stack: &Stack,
    bench_admin: &tokio_postgres::Client,
    urls: &StackUrls,
    fleet: &Fleet,
    copy_rows: u64,
    args: &IngestArgs,
    log: impl Fn(&str),
) -> Result<Baselines> {
    log("baseline: raw binary COPY into entity_values_ts…");
    settle(bench_admin).await?;
    let cpu_before = cpu_sample(stack, None);
    let wal_before = stack_wal_stats(stack, bench_admin).await?;
    // Into the next month's partition, empty like the current one was when phase 1 began:
    // COPY into the partition phase 1 filled would pay for a larger primary key (measured: a
    // COPY's CPU per value grows with the partition) and flatter the durable path.
    let (copy_month, naive_month) = empty_months(bench_admin).await?;
    let copy_per_s = raw_copy(bench_admin, &fleet.ids, fleet.tenant, copy_rows, copy_month).await?;
    #[allow(clippy::cast_precision_loss)]
    let copy_cpu = cpu_before
        .zip(cpu_sample(stack, None))
        .map(|(a, b)| b.since(&a).per_value(copy_rows as f64));
    let copy_wal = stack_wal_stats(stack, bench_admin)
        .await?
        .since(&wal_before);
    log("baseline: per-row autocommit INSERT…");
    let naive_per_s = naive_insert(
        &urls.admin_database_url,
        &fleet.ids,
        fleet.tenant,
        args.naive_rows,
        args.clients,
        naive_month,
    )
    .await?;
    Ok(Baselines {
        copy_per_s,
        copy_cpu,
        copy_wal,
        naive_per_s,
    })
}

fn print_table(r: &serde_json::Value) {
    println!(
        "durable HTTP ingest   {:>10} values/s   (ack p50 {} ms, p99 {} ms at full speed)",
        r["durable_values_per_s"], r["ack_p50_ms"], r["ack_p99_ms"]
    );
    println!(
        "  at half load        {:>10} values/s   (ack p50 {} ms, p99 {} ms)",
        r["half_load_values_per_s"], r["half_load_ack_p50_ms"], r["half_load_ack_p99_ms"]
    );
    println!(
        "raw binary COPY       {:>10} values/s   → ratio {}",
        r["raw_copy_values_per_s"], r["ratio_vs_copy"]
    );
    println!(
        "per-row INSERT        {:>10} values/s   → ratio {}",
        r["naive_insert_values_per_s"], r["ratio_vs_naive"]
    );
    println!(
        "CPU per value         {} µs durable, {} µs raw COPY → ratio {}",
        r["durable_cpu_us_per_value"], r["raw_copy_cpu_us_per_value"], r["cpu_ratio_vs_copy"]
    );
    println!(
        "  of it, µs           primary {} · replica {} · server {} durable; primary {} · replica {} COPY",
        r["primary_cpu_us_per_value"],
        r["replica_cpu_us_per_value"],
        r["server_cpu_us_per_value"],
        r["raw_copy_primary_cpu_us_per_value"],
        r["raw_copy_replica_cpu_us_per_value"]
    );
    println!(
        "WAL per value         {} B durable, {} B raw COPY",
        r["durable_wal_bytes_per_value"], r["raw_copy_wal_bytes_per_value"]
    );
    if !r["ratio_rollups_on_vs_off"].is_null() {
        println!(
            "rollups off           {:>10} values/s   → on/off ratio {} ({} µs CPU, {} B WAL per value off)",
            r["rollups_off_values_per_s"],
            r["ratio_rollups_on_vs_off"],
            r["rollups_off_cpu_us_per_value"],
            r["rollups_off_wal_bytes_per_value"]
        );
    }
    println!(
        "rollup maintenance    {} buckets in {} s: {} µs CPU, {} B WAL per value → rollups cost {} of ingest CPU",
        r["rollup_maintenance_buckets"],
        r["rollup_maintenance_s"],
        r["rollup_maintenance_cpu_us_per_value"],
        r["rollup_maintenance_wal_bytes_per_value"],
        r["rollup_cpu_share_of_ingest"]
    );
    println!(
        "server RSS            {} MB after load, peak {} MB",
        r["server_rss_mb"], r["server_peak_rss_mb"]
    );
}

/// The first moments (epoch ms) of next month and of the month after, one day in: the
/// baselines' rows go there, each into a partition that is still empty — the state phase 1
/// started from. The migrations make both partitions (the current month plus two).
async fn empty_months(admin: &tokio_postgres::Client) -> Result<(i64, i64)> {
    // Two statements, no correlated subquery (Citus plans none over a subquery).
    let row = admin
        .query_one(
            "SELECT (extract(epoch FROM m + interval '1 month 1 day') * 1000)::bigint, \
                    (extract(epoch FROM m + interval '2 months 1 day') * 1000)::bigint, \
                    m + interval '1 month', m + interval '3 months' \
             FROM (SELECT date_trunc('month', now(), 'UTC') AS m) x",
            &[],
        )
        .await?;
    let (from, to): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        (row.get(2), row.get(3));
    let taken = admin
        .query_opt(
            "SELECT 1 FROM entity_values_ts WHERE ingested_at >= $1 AND ingested_at < $2 LIMIT 1",
            &[&from, &to],
        )
        .await?
        .is_some();
    if taken {
        bail!("the bench database already holds rows in the baselines' months");
    }
    Ok((row.get(0), row.get(1)))
}

async fn raw_copy(
    admin: &tokio_postgres::Client,
    ids: &[i64],
    tenant: TenantId,
    rows: u64,
    base_ms: i64,
) -> Result<f64> {
    let attrs: Vec<(i64, String)> = admin
        .query("SELECT attribute_id, attribute_name::text FROM attributes WHERE attribute_name IN ('temperature','humidity','status','priority','online') ORDER BY attribute_id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let types = [
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::NUMERIC,
        Type::BOOL,
        Type::TIMESTAMPTZ,
    ];
    let started = Instant::now();
    let sink = admin
        .copy_in("COPY entity_values_ts (entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool, ingested_at) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    let readings = rows / VALUES_PER_READING;
    for n in 0..readings {
        let entity = ids[usize::try_from(n).unwrap_or(0) % ids.len()];
        let round = n / ids.len() as u64;
        let at =
            chrono::DateTime::from_timestamp_millis(base_ms + i64::try_from(round).unwrap_or(0))
                .unwrap_or_default();
        for (id, name) in &attrs {
            let (text, int, dec, b): (
                Option<&str>,
                Option<i64>,
                Option<rust_decimal::Decimal>,
                Option<bool>,
            ) = match name.as_str() {
                "temperature" => (
                    None,
                    None,
                    Some(rust_decimal::Decimal::new(
                        200 + i64::try_from(n % 100).unwrap_or(0),
                        1,
                    )),
                    None,
                ),
                "humidity" => (
                    None,
                    Some(40 + i64::try_from(n % 30).unwrap_or(0)),
                    None,
                    None,
                ),
                "status" => (Some("online"), None, None, None),
                "priority" => (None, Some(1), None, None),
                _ => (None, None, None, Some(true)),
            };
            let row: [&(dyn ToSql + Sync); 8] =
                [&entity, &tenant.0, id, &text, &int, &dec, &b, &at];
            writer.as_mut().write(&row).await?;
        }
    }
    writer.finish().await?;
    #[allow(clippy::cast_precision_loss)]
    Ok((readings * VALUES_PER_READING) as f64 / started.elapsed().as_secs_f64())
}

async fn naive_insert(
    url: &str,
    ids: &[i64],
    tenant: TenantId,
    rows: u64,
    clients: usize,
    base_ms: i64,
) -> Result<f64> {
    let attr: i64 = crate::connect(url)
        .await?
        .query_one(
            "SELECT attribute_id FROM attributes WHERE attribute_name = 'humidity'",
            &[],
        )
        .await?
        .get(0);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, next, ids) = (url.to_owned(), Arc::clone(&next), ids.to_vec());
        tasks.push(tokio::spawn(async move {
            let client = crate::connect(&url).await?;
            let stmt = client
                .prepare("INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_int, ingested_at) VALUES ($1, $2, $3, $4, $5)")
                .await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= rows {
                    return Ok::<_, anyhow::Error>(());
                }
                let entity = ids[usize::try_from(n).unwrap_or(0) % ids.len()];
                let at = chrono::DateTime::from_timestamp_millis(base_ms + i64::try_from(n).unwrap_or(0)).unwrap_or_default();
                client.execute(&stmt, &[&entity, &tenant.0, &attr, &i64::try_from(n).unwrap_or(0), &at]).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::super::harness::{idle_slots, proc_stat};
    use super::{empty_months, request_body};

    #[tokio::test]
    async fn the_baselines_go_into_empty_partitions_of_the_next_two_months() {
        let db = atlas_testkit::TestDb::new().await;
        let admin = db.admin().await;
        let (copy, naive) = empty_months(&admin)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        // Day 2 of the next two months, 00:00 UTC, worked out here with chrono.
        use chrono::Datelike as _;
        let month = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let day_two = |months: u32| {
            let first = chrono::Utc::now()
                .date_naive()
                .with_day(1)
                .and_then(|d| d.checked_add_months(chrono::Months::new(months)))
                .unwrap_or_default();
            (first + chrono::Days::new(1))
                .and_hms_opt(0, 0, 0)
                .unwrap_or_default()
                .and_utc()
        };
        let expected = (day_two(1), day_two(2));
        assert_eq!((month(copy), month(naive)), expected);
        // The COPY month has its partition (the migrations make two ahead), and a row already
        // there is refused rather than measured over.
        admin
            .batch_execute(
                "INSERT INTO tenants (tenant_id, tenant_name) VALUES (9, 't');
                 INSERT INTO attributes (attribute_id, attribute_name, data_type) VALUES (90, 'x', 'integer');
                 INSERT INTO entities (entity_id, tenant_id, entity_type) VALUES (900, 9, 's');",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let at = chrono::DateTime::from_timestamp_millis(copy).unwrap_or_default();
        admin
            .execute(
                "INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_int, ingested_at) \
                 VALUES (900, 9, 90, 1, $1)",
                &[&at],
            )
            .await
            .unwrap_or_else(|e| panic!("no partition for the COPY baseline: {e}"));
        let err = empty_months(&admin)
            .await
            .err()
            .unwrap_or_else(|| panic!("a month holding rows was taken"));
        assert!(err.to_string().contains("already holds rows"), "{err:#}");
        // A slot nobody consumes is reported with the WAL it holds. The slot is dropped
        // before the assertion, so a failure leaves nothing behind on the shared stack.
        let slot = atlas_testkit::create_idle_slot(
            &admin,
            &format!("bench_idle_probe_{}", std::process::id()),
        )
        .await;
        let slots = idle_slots(&admin).await;
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let slots = slots.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            slots.iter().any(|(name, mb)| *name == slot && *mb >= 0.0),
            "{slots:?}"
        );
        assert!(
            !idle_slots(&admin)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"))
                .iter()
                .any(|(name, _)| *name == slot)
        );
    }

    #[test]
    fn request_body_is_the_documented_workload() {
        let entities = [7, 8, 9];
        let body = request_body(2, 4, &entities, 1_000, 2);
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let readings = v.as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(readings.len(), 4);
        // Reading n = 2 * 4 + k: entity n % 3, time base + n / 3, status every 2 rounds.
        assert_eq!(
            readings[0],
            serde_json::json!({"entity_id": 9, "ts": 1_002, "values": {
                "temperature": 20.8, "humidity": 48, "status": "degraded", "priority": 1, "online": true}})
        );
        assert_eq!(readings[3]["entity_id"], 9);
        assert_eq!(readings[3]["ts"], 1_003);
        assert_eq!(readings[3]["values"]["temperature"], 21.1);
        assert_eq!(readings[3]["values"]["status"], "degraded");
    }

    #[test]
    fn proc_stat_reads_parent_and_growing_cpu_time() {
        let me = std::process::id();
        let (ppid, before) = proc_stat(me).unwrap_or_else(|| panic!("no /proc/{me}/stat"));
        assert_eq!(ppid, std::os::unix::process::parent_id());
        // Burn CPU until the user + system ticks (10 ms each) grow; a busy loop of five
        // seconds that never moves them means the fields are misread.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let grew = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            let (_, now) = proc_stat(me).unwrap_or_else(|| panic!("no /proc/{me}/stat"));
            if now[0] + now[1] > before[0] + before[1] {
                break true;
            }
            if start.elapsed() > std::time::Duration::from_secs(5) {
                break false;
            }
        };
        assert!(grew, "CPU ticks never grew from {before:?}");
        assert_eq!(proc_stat(u32::MAX), None, "no such process");
    }
}
