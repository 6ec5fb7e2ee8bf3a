//! The circuit breaker against a real streaming replica (a private stack: pausing or
//! stopping the shared test replica would disturb other tests): paused replay sends eventual
//! reads to the primary once lag reaches 5 s and back only below 3 s, without flapping; a
//! stopped replica fails no request.

use std::time::{Duration, Instant};

use atlas_testkit::connect;
use serde_json::json;

use crate::support::{Serve, fleet, private_stack};

/// One eventual read: (status, served by, lag ms).
async fn eventual(http: &reqwest::Client, url: &str, key: &str) -> (u16, String, i64) {
    match http
        .get(url)
        .bearer_auth(key)
        .header("X-Atlas-Consistency", "eventual")
        .send()
        .await
    {
        Ok(r) => {
            let h = |n: &str| {
                r.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            (
                r.status().as_u16(),
                h("x-atlas-served-by"),
                h("x-atlas-lag-ms").parse().unwrap_or(-1),
            )
        }
        Err(_) => (0, String::new(), -1),
    }
}

/// Polls eventual reads every 100 ms until `served_by` answers or `limit` passes; returns
/// every answer seen.
async fn until(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    served_by: &str,
    limit: Duration,
) -> Vec<(Duration, u16, String, i64)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < limit {
        let (s, by, lag) = eventual(http, url, key).await;
        seen.push((start.elapsed(), s, by.clone(), lag));
        if by == served_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_replay_opens_the_circuit_at_5_s_and_closes_it_below_3_s_and_a_stopped_replica_fails_nothing()
 {
    let (stack, urls, spec) =
        private_stack("atlas-repl-stack", (61639, 61640, 64000), "repl").await;
    let serve = Serve::start(&urls.database_url, &urls.replica_urls, &urls.redis_url).await;
    let (key, entities) = fleet(&serve.base, 1).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/telemetry", serve.base))
        .bearer_auth(&key)
        .json(&json!({"entity_id": entities[0], "values": {"priority": 1}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let url = format!(
        "{}/v1/entities/{}/latest?attribute=priority",
        serve.base, entities[0]
    );

    // Heartbeats flow (1 s), lag is measured (1 s): eventual reads reach the replica.
    let seen = until(&http, &url, &key, "replica-1", Duration::from_secs(20)).await;
    assert!(
        seen.last().is_some_and(|s| s.2 == "replica-1"),
        "never served by the replica: {seen:?}"
    );

    // Pause replay: the replica's heartbeat lag grows by a second every second.
    let replica_admin = replica_admin_url(&urls, &spec);
    let replica = connect(&replica_admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    replica
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let paused = until(&http, &url, &key, "primary", Duration::from_secs(20)).await;
    let switched = paused
        .last()
        .filter(|s| s.2 == "primary")
        .unwrap_or_else(|| panic!("eventual reads stayed on the paused replica: {paused:?}"));
    assert!(paused.iter().all(|s| s.1 == 200), "{paused:?}");
    // Not before the lag could reach 5 s, and within a heartbeat and a measurement after.
    assert!(
        switched.0 >= Duration::from_secs(3) && switched.0 <= Duration::from_secs(9),
        "switched after {:?}: {paused:?}",
        switched.0
    );
    let last_replica_lag = paused
        .iter()
        .filter(|s| s.2 == "replica-1")
        .map(|s| s.3)
        .max()
        .unwrap_or(0);
    assert!(
        last_replica_lag < 5_000,
        "served with {last_replica_lag} ms lag"
    );
    // While paused it stays on the primary.
    for _ in 0..15 {
        let (s, by, _) = eventual(&http, &url, &key).await;
        assert_eq!((s, by.as_str()), (200, "primary"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Resume: back to the replica once lag is under 3 s, and it stays there (no flapping).
    replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let resumed = until(&http, &url, &key, "replica-1", Duration::from_secs(20)).await;
    assert!(
        resumed.last().is_some_and(|s| s.2 == "replica-1"),
        "never returned to the replica: {resumed:?}"
    );
    assert!(resumed.iter().all(|s| s.1 == 200), "{resumed:?}");
    for _ in 0..20 {
        let (s, by, lag) = eventual(&http, &url, &key).await;
        assert_eq!(
            (s, by.as_str()),
            (200, "replica-1"),
            "flapped back (lag {lag})"
        );
        assert!(lag < 3_000, "{lag}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop the replica: every eventual read still succeeds, from the primary.
    drop(replica);
    let s = stack.clone();
    tokio::task::spawn_blocking(move || s.stop_replica(true))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let mut primary_answers = 0;
    while start.elapsed() < Duration::from_secs(4) {
        let (s, by, _) = eventual(&http, &url, &key).await;
        assert_eq!(s, 200, "a request failed with the replica down ({by})");
        if by == "primary" {
            primary_answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(primary_answers > 0);
    drop(serve);
    let _ = tokio::task::spawn_blocking(move || atlas_testkit::Stack::down(&spec, false)).await;
}

/// `stack up` clones the replica again when its slot is gone (dropped, or invalidated by
/// `max_slot_wal_keep_size` while the replica was away): restarted as it was, it would retry
/// forever and serve ever staler reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_up_clones_again_a_replica_whose_slot_is_gone() {
    let (stack, urls, spec) =
        private_stack("atlas-heal-stack", (61739, 61740, 64100), "heal").await;
    let s = stack.clone();
    tokio::task::spawn_blocking(move || s.stop_replica(true))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = connect(&urls.admin_database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .batch_execute(
            "SELECT pg_drop_replication_slot('atlas_replica_1');
             CREATE TABLE written_while_away AS SELECT 1 AS x;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let up = spec.clone();
    tokio::task::spawn_blocking(move || atlas_testkit::Stack::up(&up))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("stack up: {e}"));
    let replica_admin = replica_admin_url(&urls, &spec);
    let start = Instant::now();
    let (mut seen, mut streaming) = (None, false);
    while start.elapsed() < Duration::from_secs(30) && !(seen == Some(1) && streaming) {
        if let Ok(replica) = connect(&replica_admin).await {
            seen = replica
                .query_one("SELECT count(*) FROM written_while_away", &[])
                .await
                .ok()
                .map(|r| r.get::<_, i64>(0));
        }
        streaming = admin
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots \
                 WHERE slot_name = 'atlas_replica_1'",
                &[],
            )
            .await
            .is_ok_and(|r| r.get::<_, bool>(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, Some(1), "the replica never saw the new table");
    assert!(streaming, "the replica does not stream through its slot");
    drop(admin);

    // `stack down --test` with only the directory (the default test ports, not this stack's)
    // stops every service of it: PostgreSQL by its data directories, Redis by its pidfiles.
    let by_dir = atlas_testkit::StackSpec::test(&spec.dir);
    tokio::task::spawn_blocking(move || atlas_testkit::Stack::down(&by_dir, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("stack down: {e}"));
    for port in [
        spec.pg_port,
        spec.replica_port,
        spec.redis_port,
        spec.redis_port + 1,
        spec.redis_port + 2,
    ] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
    }
}

/// The admin URL of the private stack's replica.
fn replica_admin_url(urls: &atlas_testkit::StackUrls, spec: &atlas_testkit::StackSpec) -> String {
    urls.admin_database_url.replace(
        &format!(":{}/", spec.pg_port),
        &format!(":{}/", spec.replica_port),
    )
}
