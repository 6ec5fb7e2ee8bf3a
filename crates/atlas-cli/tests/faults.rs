//! Failure tests: every acknowledged value is stored exactly once, whatever dies.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_testkit::{Stack, TestDb, connect};
use serde_json::json;

use crate::cdc;
use crate::support::{Serve, fleet, private_stack};

#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) acked: HashSet<(i64, i64)>,
    pub(crate) unavailable: usize,
    pub(crate) errors: usize,
    /// Responses other than 200/503, by status (a 500 here is a bug: down means 503).
    pub(crate) other_statuses: std::collections::BTreeMap<u16, usize>,
    pub(crate) acked_after_outage: usize,
}

/// Clients sending one reading per request with unique times, until `until`; records what
/// was acknowledged. `outage_over` flags successes after the outage ended.
pub(crate) async fn drive(
    base: String,
    key: String,
    entities: Vec<i64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    outage_over: Arc<std::sync::atomic::AtomicBool>,
    acked_count: Arc<std::sync::atomic::AtomicUsize>,
) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let start_ms = chrono::Utc::now().timestamp_millis() - 120_000;
    let mut tasks = Vec::new();
    // Each lone request waits for its batch (≤ 100 ms): many clients make the load.
    for (c, chunk) in entities.chunks(entities.len().div_ceil(16)).enumerate() {
        let (base, key, chunk, outcome, over, stop, count) = (
            base.clone(),
            key.clone(),
            chunk.to_vec(),
            Arc::clone(&outcome),
            Arc::clone(&outage_over),
            Arc::clone(&stop),
            Arc::clone(&acked_count),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            let mut seq: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seq += 1;
                let entity = chunk[usize::try_from(seq).unwrap_or(0) % chunk.len()];
                // Unique per client and sequence: never a replay of another request.
                let ts = start_ms + seq * 32 + i64::try_from(c).unwrap_or(0);
                let body = json!({"entity_id": entity, "ts": ts, "values": {"priority": seq}});
                let result = http
                    .post(format!("{base}/v1/telemetry"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                let failed = !matches!(&result, Ok(r) if r.status() == 200);
                {
                    let mut o = outcome.lock().unwrap_or_else(|p| p.into_inner());
                    match result.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            o.acked.insert((entity, ts));
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if over.load(std::sync::atomic::Ordering::SeqCst) {
                                o.acked_after_outage += 1;
                            }
                        }
                        Ok(503) => o.unavailable += 1,
                        Ok(status) => *o.other_statuses.entry(status).or_default() += 1,
                        Err(_) => o.errors += 1,
                    }
                }
                if failed {
                    // Back off a little, as a client does after a 503 (not the full Retry-After).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(outcome)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default()
}

pub(crate) async fn stored(admin_url: &str) -> Vec<(i64, i64)> {
    let admin = connect(admin_url).await.unwrap_or_else(|e| panic!("{e}"));
    admin
        .query(
            "SELECT entity_id, (extract(epoch FROM ingested_at) * 1000)::bigint FROM entity_values_ts",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub(crate) fn assert_every_ack_stored_once(acked: &HashSet<(i64, i64)>, stored: &[(i64, i64)]) {
    eprintln!(
        "acknowledged {} values, {} stored",
        acked.len(),
        stored.len()
    );
    let stored_set: HashSet<(i64, i64)> = stored.iter().copied().collect();
    assert_eq!(stored_set.len(), stored.len(), "a value is stored twice");
    let missing: Vec<_> = acked
        .iter()
        .filter(|a| !stored_set.contains(a))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged values are missing, e.g. {missing:?}",
        acked.iter().filter(|a| !stored_set.contains(a)).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_values_survive_kill_9_of_the_server() {
    let db = TestDb::new().await;
    let mut serve = Serve::start(&db.urls.database_url, &[], &db.urls.redis_url).await;
    let (key, entities) = fleet(&serve.base, 40).await;
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let driver = tokio::spawn(drive(
        serve.base.clone(),
        key,
        entities,
        Arc::clone(&stop),
        over,
        Arc::clone(&acked),
    ));
    // Kill during sustained ingest: once a good number of values were acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no graceful anything.
    serve.child.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = serve.child.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcome = driver.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        outcome.acked.len() >= 100,
        "the load ran: {} acked",
        outcome.acked.len()
    );
    assert!(
        outcome.errors > 0,
        "requests failed once the server was gone"
    );
    assert!(
        outcome.other_statuses.is_empty(),
        "{:?}",
        outcome.other_statuses
    );
    assert_every_ack_stored_once(&outcome.acked, &stored(&db.urls.admin_database_url).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_values_survive_an_immediate_postgres_stop_and_the_server_recovers() {
    // A cluster of its own: stopping the shared test cluster would disturb other tests.
    let (stack, urls, spec) =
        private_stack("atlas-fault-stack", (61539, 61540, 63900), "fault").await;
    // Batches are not retried here, so the outage shows as 503s (the failover test covers
    // the retry that rides one out).
    let serve = Serve::start_with(
        &urls.database_url,
        &[],
        &urls.redis_url,
        &[("ATLAS_INGEST__RETRY_UNAVAILABLE_MS", "0")],
    )
    .await;
    let (key, entities) = fleet(&serve.base, 40).await;
    // `atlas cdc` streams throughout and must ride out the outage by itself too.
    let target = cdc::Target::of(&urls);
    let (config, _) = cdc::config_file(&target, "");
    let consumer = cdc::Killed(
        cdc::atlas(&target, &config)
            .arg("cdc")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let driver = tokio::spawn(drive(
        serve.base.clone(),
        key,
        entities,
        Arc::clone(&stop),
        Arc::clone(&over),
        Arc::clone(&acked),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = stack.clone();
    tokio::task::spawn_blocking(move || s.stop_primary(true))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = stack.clone();
    tokio::task::spawn_blocking(move || s.start_primary())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    over.store(true, std::sync::atomic::Ordering::SeqCst);
    // Keep going until the recovered server has acknowledged plenty (or a generous limit).
    let recovered_from = acked.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < recovered_from + 100
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcome = driver.await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "503 while down: {}, transport errors: {}, other statuses: {:?}, acked after the restart: {}",
        outcome.unavailable, outcome.errors, outcome.other_statuses, outcome.acked_after_outage
    );
    assert!(outcome.unavailable > 0, "503s while PostgreSQL was down");
    // 429 is legitimate (the tenant's budget); any other 5xx than 503 is not.
    assert!(
        outcome.other_statuses.keys().all(|s| *s == 429),
        "while the database is down every failure is a 503: {:?}",
        outcome.other_statuses
    );
    assert!(
        outcome.acked_after_outage > 20,
        "the server recovered by itself: {} acked after",
        outcome.acked_after_outage
    );
    assert_every_ack_stored_once(&outcome.acked, &stored(&urls.admin_database_url).await);
    drop(serve);

    // The consumer reconnected after the restart and catches up with the primary: every row
    // once in the analytics store.
    let primary = cdc::readings(&urls.admin_database_url, "entity_values_ts")
        .await
        .len();
    let an = cdc::analytics_url(&target);
    let deadline = Instant::now() + Duration::from_secs(90);
    while cdc::scalar(&an, "SELECT count(*) FROM public.entity_values_ts").await
        < i64::try_from(primary).unwrap_or(i64::MAX)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(consumer);
    cdc::assert_store_matches_primary(&target).await;
    // The cluster outlives the test: its slot must not keep WAL for ever.
    let admin = connect(&urls.admin_database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&target.slot_name()],
        )
        .await;
    let _ = tokio::task::spawn_blocking(move || Stack::down(&spec, false)).await;
}
