//! `atlas bench failover`: durable ingest through `atlas serve` on the HA stack (Patroni,
//! synchronous standby) while the primary's postmaster is killed with SIGKILL, and what the
//! clients and the database saw: values acknowledged, lost and duplicated, how long writes
//! stopped, 5xx answers. In the same run, full-speed durable ingest with the synchronous
//! standby against asynchronous replication, alternately, as a ratio.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use atlas_config::Config;
use atlas_stack::{HaSpec, HaStack};
use serde_json::json;

use super::harness::{BENCH_DB, fresh_db_at, percentile, start_server};
use super::ingest::{Fleet, VALUES_PER_READING, post_telemetry, reading_key, request_body};

/// `atlas bench failover` options.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Seconds of paced ingest at half of full speed; the primary is killed half-way.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of each full-speed phase (synchronous and asynchronous alternately, twice
    /// each), which also set the half-speed rate.
    #[arg(long, default_value_t = 8)]
    phase_seconds: u64,
    /// Concurrent HTTP clients of the failover phase, each with at most one request in
    /// flight (enough that half of full speed is not limited by them).
    #[arg(long, default_value_t = 48)]
    clients: usize,
    /// Readings per request in the failover phase (each carries 5 values).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent clients of the full-speed phases (as `atlas bench ingest`).
    #[arg(long, default_value_t = 32)]
    full_clients: usize,
    /// Readings per request of the full-speed phases (as `atlas bench ingest`).
    #[arg(long, default_value_t = 100)]
    full_batch: usize,
    /// Entities in the fleet.
    #[arg(long, default_value_t = 2_000)]
    entities: usize,
    /// Run the failover phase with `synchronous_mode_strict` (set through Patroni for the
    /// phase, off again afterwards): no commit acknowledged on one node only, so writes wait
    /// until the old primary is back as a synchronous standby.
    #[arg(long)]
    strict: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Numbers requests across phases (so no request replays another) and sends them.
struct Sender {
    http: reqwest::Client,
    base: String,
    key: String,
    ids: Arc<Vec<i64>>,
    batch: usize,
    base_ms: i64,
    next: AtomicU64,
}

/// One request of the failover phase.
#[derive(Debug, Clone, Copy)]
struct Sample {
    req: u64,
    sent_s: f64,
    done_s: f64,
    /// HTTP status; 0 for a transport error (timeout, refused).
    status: u16,
}

impl Sender {
    fn per_request(&self) -> u64 {
        self.batch as u64 * VALUES_PER_READING
    }

    /// Sends the next request; returns its number and status (0: transport error).
    async fn send(&self) -> (u64, u16) {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        let body = request_body(req, self.batch, &self.ids, self.base_ms, 10);
        let status = post_telemetry(&self.http, &self.base, &self.key, body)
            .await
            .map_or(0, |r| r.status().as_u16());
        (req, status)
    }
}

/// Full-speed durable ingest for `seconds`: values acknowledged per second.
async fn full_speed(sender: &Arc<Sender>, clients: usize, seconds: u64) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let sender = Arc::clone(sender);
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while Instant::now() < deadline {
                match sender.send().await {
                    (_, 200) => acked += sender.per_request(),
                    (req, status) => bail!("request {req} failed with status {status}"),
                }
            }
            Ok(acked)
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(acked as f64 / started.elapsed().as_secs_f64())
}

/// Paced ingest at `req_per_s` for `seconds`, the leader's postmaster killed half-way.
/// Returns every request and when the kill happened (s from the start).
async fn paced_with_kill(
    sender: &Arc<Sender>,
    stack: &HaStack,
    clients: usize,
    req_per_s: f64,
    seconds: u64,
) -> Result<(Vec<Sample>, f64, String)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    #[allow(clippy::cast_precision_loss)]
    let interval = Duration::from_secs_f64(clients as f64 / req_per_s.max(0.1));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let sender = Arc::clone(sender);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < deadline {
                tick.tick().await;
                let sent_s = started.elapsed().as_secs_f64();
                let (req, status) = sender.send().await;
                samples.push(Sample {
                    req,
                    sent_s,
                    done_s: started.elapsed().as_secs_f64(),
                    status,
                });
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
    let leader = stack
        .status()
        .leader()
        .cloned()
        .context("no Patroni leader to kill")?;
    let node = stack
        .node(&leader.name)
        .cloned()
        .context("the leader is not a node of this stack")?;
    stack.kill_postmaster(&node)?;
    let kill_s = started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    Ok((samples, kill_s, leader.name))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) async fn run(config: &Config, args: &FailoverArgs) -> Result<()> {
    if [
        args.clients,
        args.batch,
        args.full_clients,
        args.full_batch,
        args.entities,
    ]
    .contains(&0)
        || args.seconds < 4
    {
        bail!(
            "--clients, --batch, --full-clients, --full-batch and --entities must be at least 1, --seconds at least 4"
        );
    }
    let log = |m: &str| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    log("bringing up the HA stack (etcd, two PostgreSQL nodes under Patroni, fsync on)…");
    let spec = HaSpec::local(config.stack_dir.join("ha"));
    let stack = tokio::task::spawn_blocking(move || HaStack::up(&spec)).await??;
    let s = stack.clone();
    // On, whatever an interrupted earlier run left.
    tokio::task::spawn_blocking(move || s.set_synchronous(true)).await??;
    let (urls, bench_admin) = fresh_db_at(
        &stack.urls_for("postgres").admin_database_url,
        stack.urls_for(BENCH_DB),
        stack.app_password(),
        None,
    )
    .await?;
    let fleet = Fleet::create(&urls, args.entities).await?;
    let (server, base) = start_server(&urls, "").await?;
    // Two senders, their readings an hour apart, so neither phase replays the other's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients.max(args.full_clients))
        .timeout(Duration::from_secs(60))
        .build()?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let sender_of = |batch: usize, hours_ago: i64| {
        Arc::new(Sender {
            http: http.clone(),
            base: base.clone(),
            key: fleet.key.clone(),
            ids: Arc::clone(&fleet.ids),
            batch,
            base_ms: now_ms - hours_ago * 3_600_000,
            next: AtomicU64::new(0),
        })
    };
    let full = sender_of(args.full_batch, 2);
    let sender = sender_of(args.batch, 1);

    // Synchronous vs asynchronous, alternately (the machine is noisy: medians).
    let (mut sync, mut asyn) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        for on in [true, false] {
            let s = stack.clone();
            tokio::task::spawn_blocking(move || s.set_synchronous(on)).await??;
            let vps = full_speed(&full, args.full_clients, args.phase_seconds).await?;
            log(&format!(
                "full speed, {}: {vps:.0} values/s",
                if on { "synchronous" } else { "asynchronous" }
            ));
            if on { &mut sync } else { &mut asyn }.push(vps);
        }
    }
    let s = stack.clone();
    tokio::task::spawn_blocking(move || s.set_synchronous(true)).await??;
    let (sync_vps, async_vps) = (median(sync), median(asyn));

    #[allow(clippy::cast_precision_loss)]
    let req_per_s = sync_vps / 2.0 / sender.per_request() as f64;
    log(&format!(
        "failover: {req_per_s:.1} requests/s (half of full speed) for {} s, SIGKILL of the primary's postmaster half-way…",
        args.seconds
    ));
    let s = stack.clone();
    let strict = args.strict;
    tokio::task::spawn_blocking(move || s.set_strict(strict)).await??;
    // Patroni applies it at its next loop.
    tokio::time::sleep(Duration::from_secs(2 * atlas_stack::LOOP_WAIT_S)).await;
    let run = paced_with_kill(&sender, &stack, args.clients, req_per_s, args.seconds).await;
    if strict {
        let s = stack.clone();
        tokio::task::spawn_blocking(move || s.set_strict(false)).await??;
    }
    let (samples, kill_s, killed) = run?;
    drop(server);
    let s = stack.clone();
    let healthy =
        tokio::task::spawn_blocking(move || s.wait_healthy(Duration::from_secs(180))).await??;
    let new_leader = healthy.leader().map(|m| m.name.clone()).unwrap_or_default();

    // What the clients saw.
    let acked: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
    let last_before = acked
        .iter()
        .filter(|s| s.done_s <= kill_s)
        .map(|s| s.done_s)
        .fold(f64::NAN, f64::max);
    // The first acknowledgement of a request sent after the kill: it needed the new primary.
    let first_after = acked
        .iter()
        .filter(|s| s.sent_s > kill_s)
        .map(|s| s.done_s)
        .fold(f64::NAN, f64::min);
    let mut latencies: Vec<f64> = acked
        .iter()
        .map(|s| (s.done_s - s.sent_s) * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let count = |f: &dyn Fn(u16) -> bool| samples.iter().filter(|s| f(s.status)).count();

    // What the new primary holds: every value of every acknowledged request, once. (The
    // bench's own admin connection went down with the old primary.)
    drop(bench_admin);
    let bench_admin = crate::connect(&urls.admin_database_url).await?;
    let tenant = fleet.tenant.0;
    let rows = bench_admin
        .query(
            "SELECT entity_id, (extract(epoch FROM ingested_at) * 1000)::bigint, count(*) \
             FROM public.entity_values_ts WHERE tenant_id = $1 GROUP BY 1, 2",
            &[&tenant],
        )
        .await?;
    let stored: HashMap<(i64, i64), i64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let per_reading = i64::try_from(VALUES_PER_READING).unwrap_or(5);
    let mut lost: i64 = 0;
    for s in &acked {
        for k in 0..args.batch as u64 {
            let key = reading_key(s.req * args.batch as u64 + k, &fleet.ids, sender.base_ms);
            lost += (per_reading - stored.get(&key).copied().unwrap_or(0)).max(0);
        }
    }
    let duplicated: i64 = bench_admin
        .query_one(
            "SELECT count(*) - count(DISTINCT (entity_id, attribute_id, ingested_at)) \
             FROM public.entity_values_ts WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?
        .get(0);

    let result = json!({
        "seconds": args.seconds,
        "strict": args.strict,
        "clients": args.clients,
        "values_per_request": sender.per_request(),
        "full_speed_clients": args.full_clients,
        "full_speed_values_per_request": full.per_request(),
        "entities": args.entities,
        "killed": killed,
        "new_primary": new_leader,
        "half_load_values_per_s": (sync_vps / 2.0).round(),
        // What the failover phase achieved (below the target when clients were too few).
        "failover_phase_values_per_s": (acked.len() as f64 * sender.per_request() as f64 / args.seconds as f64).round(),
        "acknowledged_values": acked.len() as u64 * sender.per_request(),
        "lost_values": lost,
        "duplicated_values": duplicated,
        // NaN (no acknowledgement on one side of the kill) becomes null.
        "write_outage_s": ((first_after - last_before) * 100.0).round() / 100.0,
        "unavailable_503": count(&|s| s == 503),
        "errors_5xx": count(&|s| s >= 500 && s != 503),
        "transport_errors": count(&|s| s == 0),
        "other_4xx": count(&|s| (400..500).contains(&s)),
        "ack_p50_ms": round1(percentile(&latencies, 0.5)),
        "ack_p99_ms": round1(percentile(&latencies, 0.99)),
        "ack_max_ms": round1(latencies.last().copied().unwrap_or(0.0)),
        "sync_values_per_s": sync_vps.round(),
        "async_values_per_s": async_vps.round(),
        "sync_vs_async": (sync_vps / async_vps * 100.0).round() / 100.0,
    });
    if args.json {
        println!("{result}");
    } else if let Some(map) = result.as_object() {
        for (k, v) in map {
            println!("{k:<24} {v}");
        }
    }
    if lost > 0 || duplicated > 0 {
        bail!("{lost} acknowledged values lost, {duplicated} duplicated");
    }
    Ok(())
}
