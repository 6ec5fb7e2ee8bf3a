//! `atlas status`: the human table and the JSON document, with everything up and with the
//! primary unreachable.

use atlas_testkit::TestDb;
use serde_json::Value;

fn status(db: &TestDb, database_url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["status"];
    all.extend(args);
    atlas(db, database_url, &all)
}

fn atlas(db: &TestDb, database_url: &str, args: &[&str]) -> std::process::Output {
    crate::support::atlas_for(db)
        .args(args)
        .env("ATLAS_DATABASE_URL", database_url)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn status_reports_databases_redis_hit_rate_staging_and_partitions() {
    let db = TestDb::new().await;
    // The new database must have reached the replica.
    drop(db.replica().await);
    // A Redis hit and a miss, so the keyspace counters have something to say.
    let mut redis = redis::Client::open(db.urls.redis_url.as_str())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let key = format!("{}:status-probe", db.name);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .arg("EX")
        .arg(60)
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let out = status(&db, &db.urls.database_url, &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["primary"]["state"], "up", "{s}");
    assert_eq!(s["primary"]["in_recovery"], false, "{s}");
    assert_eq!(s["replicas"][0]["state"], "up", "{s}");
    assert_eq!(s["replicas"][0]["in_recovery"], true, "{s}");
    // The primary's own view of the replica (the cross-check of the heartbeat lag).
    assert!(
        s["wal_senders"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["state"] == "streaming")),
        "{s}"
    );
    assert_eq!(s["redis"]["state"], "up", "{s}");
    let rate = s["redis"]["hit_rate"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&rate), "{s}");
    assert!(
        s["redis"]["keyspace_hits"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    assert_eq!(s["staging"]["rows"], 0, "{s}");
    assert!(
        s["partitions"]["time_partitions"].as_u64().unwrap_or(0) >= 3,
        "{s}"
    );
    assert!(
        s["partitions"]["horizon_days"].as_i64().unwrap_or(0) >= 28,
        "{s}"
    );
    // Where stored time starts: the oldest partition's lower bound, the first of a month.
    let from = s["partitions"]["covered_from"]
        .as_str()
        .and_then(|f| chrono::DateTime::parse_from_rfc3339(f).ok())
        .unwrap_or_else(|| panic!("{s}"));
    assert!(from <= chrono::Utc::now(), "{s}");
    assert_eq!(from.format("%d %H:%M:%S").to_string(), "01 00:00:00", "{s}");

    let out = status(&db, &db.urls.database_url, &[]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "primary",
        "replica 1",
        "redis",
        "hit rate",
        "staging backlog",
        "time partitions",
        "covered from",
    ] {
        assert!(table.contains(expected), "missing {expected}:\n{table}");
    }
    assert!(
        table.lines().next().is_some_and(|l| l.ends_with("up")),
        "{table}"
    );
}

#[tokio::test]
async fn status_fails_and_says_so_when_the_primary_is_unreachable() {
    let db = TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let dead = format!("postgres://atlas_app:x@127.0.0.1:{port}/nothing");
    let out = status(&db, &dead, &["--json"]);
    assert!(!out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["primary"]["state"], "down", "{s}");
    assert!(s["staging"].is_null(), "{s}");
    assert_eq!(s["redis"]["state"], "up", "{s}");
}

#[tokio::test]
async fn a_replica_that_replayed_an_old_last_heartbeat_is_reported_as_no_writer_not_as_lag() {
    let db = TestDb::new().await;
    // The last heartbeat was written a minute ago (as when no server has run since), and the
    // replica has replayed it.
    db.admin()
        .await
        .batch_execute(
            "INSERT INTO public.replication_heartbeat (\"timestamp\", source) VALUES (now() - interval '60 seconds', 'test')",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let replica = db.replica().await;
    for _ in 0..100 {
        let n: i64 = replica
            .query_one("SELECT count(*) FROM public.replication_heartbeat", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = status(&db, &db.urls.database_url, &["--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    let r = &s["replicas"][0];
    assert_eq!(r["lag_s"], Value::Null, "{r}");
    assert!(
        r["lag_error"]
            .as_str()
            .is_some_and(|e| e.contains("no heartbeat writer is running")),
        "{r}"
    );
    let out = status(&db, &db.urls.database_url, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no heartbeat writer is running"), "{text}");
}
