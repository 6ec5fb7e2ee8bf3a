//! `atlas cdc` as a process, with `atlas serve` ingesting: a kill -9 between the sink write
//! and the slot advance loses and duplicates nothing; a stopped consumer makes the slot retain
//! WAL (reported by `atlas status`) and catches up without loss; analytics reads are served
//! from the store while it is within budget.

use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atlas_testkit::{StackUrls, TestDb, connect};
use serde_json::Value;

use crate::faults::{Outcome, drive};
use crate::support::{Serve, fleet};

/// The database a CDC test streams from, with the slot and analytics-store names the test
/// kit also cleans up.
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) urls: StackUrls,
}

impl Target {
    pub(crate) fn of(urls: &StackUrls) -> Target {
        let u = url::Url::parse(&urls.admin_database_url).unwrap_or_else(|e| panic!("{e}"));
        Target {
            name: u.path().trim_start_matches('/').to_owned(),
            urls: urls.clone(),
        }
    }
    pub(crate) fn slot_name(&self) -> String {
        atlas_testkit::slot_name_for(&self.name)
    }
    fn analytics_name(&self) -> String {
        atlas_testkit::analytics_name_for(&self.name)
    }
}

/// A config file naming this test's slot, analytics database and NDJSON directory.
pub(crate) fn config_file(db: &Target, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cdc-{}", db.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let ndjson = dir.join("ndjson");
    let path = dir.join("atlas.toml");
    std::fs::write(
        &path,
        format!(
            "[cdc]\nslot_name = \"{}\"\nanalytics_database = \"{}\"\nndjson_dir = \"{}\"\n\
             batch_events = 200\nbatch_interval_ms = 100\nheartbeat_interval_ms = 500\n{extra}",
            db.slot_name(),
            db.analytics_name(),
            ndjson.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (path, ndjson)
}

pub(crate) fn atlas(db: &Target, config: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atlas"));
    c.env("ATLAS_CONFIG", config)
        .env("ATLAS_ADMIN_DATABASE_URL", &db.urls.admin_database_url)
        .env("ATLAS_DATABASE_URL", &db.urls.database_url)
        .env("ATLAS_REDIS_URL", &db.urls.redis_url)
        .env("ATLAS_STACK_DIR", "/nonexistent-atlas-stack")
        .env("ATLAS_LOG", "warn");
    c
}

/// `atlas cdc` as a service, serving its metrics on `port`.
pub(crate) fn cdc_with_metrics(db: &Target, config: &std::path::Path, port: u16) -> Command {
    let mut c = atlas(db, config);
    c.args(["cdc", "--metrics-listen", &format!("127.0.0.1:{port}")]);
    c
}

fn run_once(db: &Target, config: &std::path::Path) -> Value {
    run_once_with(db, config, &[])
}

/// `atlas cdc --once` with `flags`; it must succeed. Its summary.
fn run_once_with(db: &Target, config: &std::path::Path, flags: &[&str]) -> Value {
    let out = atlas(db, config)
        .args(["cdc", "--once"])
        .args(flags)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

fn status(db: &Target, config: &std::path::Path) -> Value {
    let out = atlas(db, config)
        .args(["status", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

pub(crate) struct Killed(pub(crate) Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ingest through `atlas serve` in the background; returns a stopper.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Load {
    async fn start(serve: &Serve) -> Load {
        let (key, entities) = fleet(&serve.base, 20).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(drive(
            serve.base.clone(),
            key,
            entities,
            Arc::clone(&stop),
            Arc::new(AtomicBool::new(false)),
            Arc::clone(&acked),
        ));
        Load { stop, acked, task }
    }

    async fn until_acked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(self.acked.load(Ordering::SeqCst) >= n, "the load runs");
    }

    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_else(|e| panic!("{e}"))
    }
}

type Reading = (i64, i64, i64);

pub(crate) async fn readings(url: &str, table: &str) -> Vec<Reading> {
    let c = connect(url).await.unwrap_or_else(|e| panic!("{e}"));
    c.query(
        &format!(
            "SELECT entity_id, attribute_id, (extract(epoch FROM ingested_at) * 1000000)::bigint FROM {table} ORDER BY 1, 2, 3"
        ),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

pub(crate) async fn scalar(url: &str, sql: &str) -> i64 {
    let client = connect(url).await.unwrap_or_else(|e| panic!("{e}"));
    atlas_testkit::scalar(&client, sql, &[]).await
}

pub(crate) fn analytics_url(db: &Target) -> String {
    atlas_cdc::with_database(&db.urls.admin_database_url, &db.analytics_name())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every row of the primary is in the analytics store once, and the history holds each
/// insert once.
pub(crate) async fn assert_store_matches_primary(db: &Target) -> usize {
    let primary = readings(&db.urls.admin_database_url, "entity_values_ts").await;
    let an = analytics_url(db);
    let copy = readings(&an, "public.entity_values_ts").await;
    assert_eq!(
        copy.len(),
        primary.len(),
        "rows in the store vs the primary"
    );
    assert!(
        copy == primary,
        "the store holds exactly the primary's rows"
    );
    // Rows stored before the slot existed come as snapshot reads, the rest as inserts.
    let inserts = scalar(
        &an,
        "SELECT count(*) FROM cdc.change_events WHERE table_name = 'entity_values_ts' AND op = 'c'",
    )
    .await;
    let rows_seen = scalar(
        &an,
        "SELECT count(DISTINCT key) FROM cdc.change_events WHERE table_name = 'entity_values_ts' AND op IN ('r', 'c')",
    )
    .await;
    assert_eq!(
        usize::try_from(rows_seen).unwrap_or(0),
        primary.len(),
        "every row in the history"
    );
    assert!(inserts > 0);
    let applied = scalar(&an, "SELECT sum(events)::bigint FROM cdc.sink_progress").await;
    let held = scalar(
        &an,
        "SELECT count(*) FROM cdc.change_events WHERE op <> 'r'",
    )
    .await;
    assert_eq!(applied, held, "every streamed event is in the history once");
    primary.len()
}

fn ndjson_readings(dir: &std::path::Path) -> HashSet<Reading> {
    let mut out = HashSet::new();
    let Ok(files) = std::fs::read_dir(dir.join("entity_values_ts")) else {
        return out;
    };
    for f in files {
        let text = std::fs::read_to_string(f.unwrap_or_else(|e| panic!("{e}")).path())
            .unwrap_or_else(|e| panic!("{e}"));
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"));
            let a = &v["after"];
            if v["op"] != "c" && v["op"] != "r" {
                continue;
            }
            let at = chrono::DateTime::parse_from_rfc3339(a["ingested_at"].as_str().unwrap_or(""))
                .unwrap_or_else(|e| panic!("{e}"));
            out.insert((
                a["entity_id"].as_i64().unwrap_or(0),
                a["attribute_id"].as_i64().unwrap_or(0),
                at.timestamp_micros(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_sink_write_and_slot_advance_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let t = Target::of(&db.urls);
    let (config, ndjson) = config_file(&t, "");
    let serve = Serve::start(&db.urls.database_url, &[], &db.urls.redis_url).await;
    let load = Load::start(&serve).await;
    load.until_acked(50).await;

    // A consumer that stops right after its sinks confirmed a batch…
    let mut child = atlas(&t, &config)
        .args(["cdc", "--pause-before-advance"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut paused = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("pausing before the slot advance") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the consumer never wrote a batch: {e}"));
    // …is killed there: the store has the batch, the slot has not moved past it.
    paused.0.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = paused.0.wait();
    let an = analytics_url(&t);
    let sunk = scalar(&an, "SELECT end_lsn FROM cdc.sink_progress").await;
    let admin = connect(&db.urls.admin_database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let confirmed: i64 = admin
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&t.slot_name()],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(
        confirmed < sunk,
        "killed before the advance: slot {confirmed} < sink {sunk}"
    );
    let in_store_before = scalar(&an, "SELECT count(*) FROM cdc.change_events").await;
    assert!(in_store_before > 0, "the batch reached the store");

    // Ingest goes on, then the consumer is restarted and drains.
    load.until_acked(load.acked.load(Ordering::SeqCst) + 50)
        .await;
    let outcome = load.finish().await;
    let report = run_once(&t, &config);
    assert!(report["events"].as_u64().unwrap_or(0) > 0, "{report}");

    let n = assert_store_matches_primary(&t).await;
    assert!(
        n >= outcome.acked.len(),
        "{n} stored, {} acked",
        outcome.acked.len()
    );
    // NDJSON is at-least-once: every row is there (the replayed batch may be twice).
    let files = ndjson_readings(&ndjson);
    let primary: HashSet<Reading> = readings(&db.urls.admin_database_url, "entity_values_ts")
        .await
        .into_iter()
        .collect();
    assert!(
        primary.is_subset(&files),
        "{} rows missing from NDJSON",
        primary.difference(&files).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_consumer_retains_wal_visibly_and_catches_up_without_loss() {
    let db = TestDb::new().await;
    let t = Target::of(&db.urls);
    let (config, _) = config_file(&t, "[maintenance]\nalert_slot_retained_bytes = 65536\n");
    let serve = Serve::start(&db.urls.database_url, &[], &db.urls.redis_url).await;
    let first = run_once(&t, &config); // creates the slot and the store
    assert_eq!(first["events"], 0, "{first}");
    let s0 = status(&t, &config);
    let r0 = s0["cdc"]["slot"]["retained_wal_bytes"]
        .as_i64()
        .unwrap_or(-1);
    assert!(r0 >= 0, "{}", s0["cdc"]);

    // Ingest while no consumer runs: the slot keeps the WAL.
    let load = Load::start(&serve).await;
    load.until_acked(400).await;
    let s1 = status(&t, &config);
    let r1 = s1["cdc"]["slot"]["retained_wal_bytes"]
        .as_i64()
        .unwrap_or(-1);
    assert!(r1 > r0 + 65_536, "retained WAL grows: {r0} → {r1}");
    assert_eq!(s1["cdc"]["slot"]["active"], false);
    let alerts = s1["alerts"].as_array().cloned().unwrap_or_default();
    assert!(
        alerts.iter().any(|a| a["alert"]
            .as_str()
            .is_some_and(|n| n.starts_with("slot_retained_wal"))
            && a["firing"] == true),
        "the retained-WAL alert fires: {alerts:?}"
    );

    // A consumer started while the load still runs catches up; then the load stops.
    let metrics_port = crate::support::free_port();
    let consumer = Killed(
        cdc_with_metrics(&t, &config, metrics_port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    load.until_acked(load.acked.load(Ordering::SeqCst) + 200)
        .await;
    let outcome = load.finish().await;
    let stopped_at: String = connect(&t.urls.admin_database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    let primary = readings(&db.urls.admin_database_url, "entity_values_ts")
        .await
        .len();
    let an = analytics_url(&t);
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(&an, "SELECT count(*) FROM public.entity_values_ts").await
        < i64::try_from(primary).unwrap_or(0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Caught up: the slot's confirmed position passes every write of the load. (What it
    // retains shrinks only at the next running-transactions record, up to 15 s later.)
    let behind_sql = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND confirmed_flush_lsn < '{}'::pg_lsn",
        t.slot_name(),
        stopped_at
    );
    while scalar(&t.urls.admin_database_url, &behind_sql).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        scalar(&t.urls.admin_database_url, &behind_sql).await,
        0,
        "the slot confirmed past {stopped_at}"
    );
    // Its Prometheus metrics say what it did and what the slot holds.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "atlas_cdc_events_total{table=\"entity_values_ts\",op=\"c\"}",
        "atlas_cdc_batches_total",
        "atlas_cdc_lag_seconds",
        "atlas_cdc_slot_retained_wal_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    drop(consumer);
    let n = assert_store_matches_primary(&t).await;
    assert!(n >= outcome.acked.len());
    let s2 = status(&t, &config);
    assert_eq!(s2["cdc"]["analytics"]["state"], "up", "{}", s2["cdc"]);
    let out = atlas(&t, &config)
        .arg("status")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("cdc slot               {} retains", t.slot_name()))
            && table.contains(&format!(
                "analytics store        {}: lag",
                t.analytics_name()
            )),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analytics_reads_are_served_by_the_store_within_budget() {
    let db = TestDb::new().await;
    let t = Target::of(&db.urls);
    let (config, _) = config_file(&t, "lag_budget_ms = 3000\n");
    let cfg = config.to_string_lossy().into_owned();
    let serve = Serve::start_with(
        &db.urls.database_url,
        &[],
        &db.urls.redis_url,
        &[("ATLAS_CONFIG", &cfg)],
    )
    .await;
    let (key, entities) = fleet(&serve.base, 2).await;
    let http = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let body: Vec<Value> = (0..10)
        .map(|i| serde_json::json!({"entity_id": entities[0], "ts": now - 60_000 + i * 1000, "values": {"priority": i}}))
        .collect();
    let r = http
        .post(format!("{}/v1/telemetry", serve.base))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let series = |consistency: &'static str| {
        let (http, base, key) = (http.clone(), serve.base.clone(), key.clone());
        let id = entities[0];
        async move {
            let r = http
                .get(format!(
                    "{base}/v1/entities/{id}/series?attribute=priority&from={}&to={}&consistency={consistency}",
                    now - 3_600_000,
                    now + 60_000
                ))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.status(), 200);
            let by = r
                .headers()
                .get("x-atlas-served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body: Value = r.json().await.unwrap_or_else(|e| panic!("{e}"));
            (by, body)
        }
    };
    // Before the store has anything, analytics reads fall back and still answer.
    let (by, _) = series("analytics").await;
    assert_ne!(by, "analytics");

    // A store that failed is skipped for 5 s, then tried again (each round delivers a fresh
    // heartbeat, so the store stays within the 3 s budget).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut by, mut from_store) = (String::new(), Value::Null);
    while by != "analytics" && Instant::now() < deadline {
        run_once(&t, &config);
        (by, from_store) = series("analytics").await;
        if by != "analytics" {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(by, "analytics");
    let (by, from_primary) = series("strong").await;
    assert_eq!(by, "primary");
    assert_eq!(
        from_store, from_primary,
        "the store answers as the primary does"
    );
    assert_eq!(from_store["items"].as_array().map(Vec::len), Some(10));

    // Past the budget (no consumer, no heartbeats) the primary answers.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (by, late) = series("analytics").await;
    assert_eq!(by, "primary");
    assert_eq!(late, from_primary);
}

/// A slot that lost its WAL (`max_slot_wal_keep_size` exceeded while no consumer kept up) can
/// never be resumed: `atlas cdc` stops and names the remedy instead of retrying forever, and
/// `--resnapshot-lost-slot` re-creates the slot and rebuilds the analytics state from a new
/// snapshot. On a private stack: provoking a lost slot lowers a cluster-wide setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_atlas_cdc_with_its_remedy_and_resnapshot_rebuilds_the_store() {
    let (_stack, urls, spec) =
        crate::support::private_stack("atlas-lost-stack", (61839, 61840, 64200), "lost").await;
    let db = Target::of(&urls);
    let (config, _) = config_file(&db, "");
    let source = connect(&urls.admin_database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    source
        .batch_execute(
            "INSERT INTO attributes (attribute_name, data_type) VALUES ('lost_probe', 'integer');",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = run_once(&db, &config);
    assert!(first["end_lsn"].is_number(), "{first}");

    // Keep at most 1 MB of WAL for slots, write and switch past two segments, checkpoint:
    // the idle slot is invalidated.
    let slot_status = || async {
        source
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot_name()],
            )
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default()
    };
    // ALTER SYSTEM cannot share a statement batch (an implicit transaction) with the reload.
    let set_keep = |statement: &'static str| {
        let source = &source;
        async move {
            for sql in [statement, "SELECT pg_reload_conf()"] {
                source
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            }
        }
    };
    set_keep("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").await;
    let start = Instant::now();
    while slot_status().await != "lost" && start.elapsed() < Duration::from_secs(60) {
        source
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS filler (x int); \
                 INSERT INTO filler SELECT generate_series(1, 50000); \
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let lost = slot_status().await;
    set_keep("ALTER SYSTEM RESET max_slot_wal_keep_size").await;
    assert_eq!(lost, "lost", "could not provoke a lost slot");

    // Without the flag: a clear refusal, once and as a service (no endless retries).
    let out = atlas(&db, &config)
        .args(["cdc", "--once"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lost WAL") && err.contains("--resnapshot-lost-slot"),
        "{err}"
    );
    let mut service = atlas(&db, &config)
        .arg("cdc")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let exited = loop {
        if let Ok(Some(status)) = service.try_wait() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = service.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        exited.is_some_and(|s| !s.success()),
        "atlas cdc kept running on a lost slot"
    );

    // With it: a new slot and a new snapshot; the store has the rows again.
    let analytics = analytics_url(&db);
    let snapshot_reads = "SELECT count(*) FROM cdc.change_events WHERE op = 'r'";
    let reads_before = scalar(&analytics, snapshot_reads).await;
    run_once_with(&db, &config, &["--resnapshot-lost-slot"]);
    assert_eq!(slot_status().await, "reserved");
    let reads_after = scalar(&analytics, snapshot_reads).await;
    assert!(reads_after > reads_before, "no new snapshot delivered");
    let probe = scalar(
        &analytics,
        "SELECT count(*) FROM public.attributes WHERE attribute_name = 'lost_probe'",
    )
    .await;
    assert_eq!(probe, 1);
    drop(source);
    let _ = tokio::task::spawn_blocking(move || atlas_testkit::Stack::down(&spec, false)).await;
}
