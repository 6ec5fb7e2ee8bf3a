//! Each alert fires when provoked, and stays quiet on a healthy fresh database.

use atlas_maintain::monitor::Thresholds;
use atlas_maintain::{Alert, Maintainer, Monitor, Settings};
use atlas_testkit::TestDb;
use chrono::{Duration, Utc};

fn find<'a>(alerts: &'a [Alert], name: &str) -> &'a Alert {
    alerts
        .iter()
        .find(|a| a.alert == name)
        .unwrap_or_else(|| panic!("no {name} alert in {alerts:?}"))
}

fn quiet() -> Thresholds {
    Thresholds::from_config(&atlas_config::Maintenance::default())
}

#[tokio::test]
async fn a_healthy_database_raises_nothing_and_a_backlog_or_stale_staged_row_does() {
    let db = TestDb::new().await;
    let store = db.store(2);
    assert!(
        Maintainer::new(store.clone(), Settings::default())
            .run_once(Utc::now())
            .await
            .errors
            .is_empty()
    );
    let thresholds = Thresholds {
        backlog_rows: 5,
        ..quiet()
    };
    let monitor = monitor_of(store.clone(), thresholds);
    let alerts = check(&monitor).await;
    for name in [
        "staging_backlog",
        "staged_age",
        "partition_horizon",
        "slot_retained_wal",
        "xid_age",
    ] {
        assert!(!find(&alerts, name).firing, "{name}: {alerts:?}");
    }

    // Ten staged rows (over the threshold of 5), one of them two minutes old.
    db.admin()
        .await
        .batch_execute(
            "INSERT INTO entity_values_ingest (entity_id, tenant_id, attribute_id, value_int, staged_at)
                 SELECT g, 1, 1, g, now() FROM generate_series(1, 9) g;
             INSERT INTO entity_values_ingest (entity_id, tenant_id, attribute_id, value_int, staged_at)
                 VALUES (10, 1, 1, 10, now() - interval '2 minutes');",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts = check(&monitor).await;
    let backlog = find(&alerts, "staging_backlog");
    assert!(backlog.firing && backlog.value == Some(10.0), "{backlog:?}");
    let age = find(&alerts, "staged_age");
    assert!(
        age.firing && age.value.is_some_and(|v| v >= 119.0),
        "{age:?}"
    );
}

#[tokio::test]
async fn a_short_partition_horizon_fires() {
    let db = TestDb::new().await;
    let store = db.store(2);
    let monitor = monitor_of(store.clone(), quiet());
    assert!(
        Maintainer::new(store, Settings::default())
            .run_once(Utc::now())
            .await
            .errors
            .is_empty()
    );
    assert!(!find(&check(&monitor).await, "partition_horizon").firing);
    // Seen from 40 days later, fewer than 62 days remain.
    let later = monitor
        .check(Utc::now() + Duration::days(40))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let h = find(&later, "partition_horizon");
    assert!(h.firing && h.value.is_some_and(|d| d < 62.0), "{h:?}");
}

#[tokio::test]
async fn replica_lag_fires_for_a_stale_heartbeat_and_for_an_unreachable_replica() {
    let primary = TestDb::new().await;
    // A "replica" whose newest replayed heartbeat is 10 s old (another database answering the
    // same query: the lag arithmetic is what is under test), and one that does not answer.
    let stale = TestDb::new().await;
    stale
        .admin()
        .await
        .execute(
            "INSERT INTO replication_heartbeat (\"timestamp\", source) VALUES (now() - interval '10 seconds', 'old')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let dead = format!("postgres://atlas_app:x@127.0.0.1:{port}/none");
    let store = atlas_store::Store::connect(
        &primary.urls.database_url,
        &[stale.urls.database_url.clone(), dead],
        2,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let monitor = monitor_of(store, quiet());
    let alerts = check(&monitor).await;
    let lagging = find(&alerts, "replica_lag:1");
    assert!(
        lagging.firing && lagging.value.is_some_and(|l| (9.0..60.0).contains(&l)),
        "{lagging:?}"
    );
    let down = find(&alerts, "replica_lag:2");
    assert!(down.firing && down.value.is_none(), "{down:?}");

    // A fresh heartbeat on the "replica" clears it.
    stale
        .admin()
        .await
        .execute(
            "INSERT INTO replication_heartbeat (source) VALUES ('new')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts = check(&monitor).await;
    assert!(!find(&alerts, "replica_lag:1").firing, "{alerts:?}");
}

#[tokio::test]
async fn replica_lag_waits_for_the_first_heartbeat_then_fires_for_a_replica_without_it() {
    // A new database: neither the primary nor the "replica" (another database answering the
    // same query) has a heartbeat yet — nothing to measure, nothing wrong.
    let primary = TestDb::new().await;
    let replica = TestDb::new().await;
    let store = atlas_store::Store::connect(
        &primary.urls.database_url,
        std::slice::from_ref(&replica.urls.database_url),
        2,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let monitor = monitor_of(store, quiet());
    let a = find(&check(&monitor).await, "replica_lag:1").clone();
    assert!(
        !a.firing && a.value.is_none() && a.message.contains("no heartbeat written yet"),
        "{a:?}"
    );
    // The primary beats; a replica that has not replayed it is not caught up.
    primary
        .admin()
        .await
        .execute(
            "INSERT INTO replication_heartbeat (source) VALUES ('primary')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let a = find(&check(&monitor).await, "replica_lag:1").clone();
    assert!(
        a.firing && a.message.contains("no heartbeat replayed yet"),
        "{a:?}"
    );
}

#[tokio::test]
async fn retained_wal_xid_age_and_a_poor_cache_hit_rate_fire_over_their_thresholds() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let slot = atlas_testkit::create_idle_slot(&admin, &format!("atlas_alert_{}", db.name)).await;
    // Some WAL after the slot's restart point.
    admin
        .batch_execute("CREATE TABLE wal_filler AS SELECT g FROM generate_series(1, 20000) g")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let cache = atlas_cache::Cache::new(&db.urls.redis_url, &format!("{}:", db.name))
        .unwrap_or_else(|e| panic!("{e}"));
    let monitor = Monitor::new(
        db.store(2),
        cache.clone(),
        Thresholds {
            slot_retained_bytes: 1,
            xid_age: 0,
            cache_hit_rate: 0.99,
            ..quiet()
        },
        Duration::days(62),
    );
    let _ = monitor.check(Utc::now()).await;
    // A thousand misses between two checks.
    for i in 0..1000 {
        let _ = cache
            .get(
                atlas_cache::Kind::Entity,
                &format!("{}:absent:{i}", db.name),
            )
            .await;
    }
    let alerts = check(&monitor).await;
    let wal = find(&alerts, "slot_retained_wal");
    assert!(wal.firing && wal.value.is_some_and(|b| b > 1.0), "{wal:?}");
    assert!(find(&alerts, "xid_age").firing, "{alerts:?}");
    let hit = find(&alerts, "cache_hit_rate");
    assert!(hit.firing && hit.value.is_some_and(|r| r < 0.99), "{hit:?}");

    admin
        .query_one("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_slot_without_its_consumer_fires_after_its_threshold_and_a_slot_in_use_never() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let slot = atlas_testkit::create_idle_slot(&admin, &format!("atlas_idle_{}", db.name)).await;
    // The test stack's replica streams through a slot of its own.
    let in_use: String = admin
        .query_one(
            "SELECT slot_name::text FROM pg_replication_slots \
             WHERE active AND slot_type = 'physical' ORDER BY 1 LIMIT 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("the test stack's replica has no active slot: {e}"))
        .get(0);
    let idle = format!("slot_inactive:{slot}");

    // With the default threshold (300 s), a slot just seen idle is no alert yet.
    let patient = monitor_of(db.store(2), quiet());
    let alerts = check(&patient).await;
    let a = find(&alerts, &idle);
    assert!(!a.firing && a.message.contains("no consumer"), "{a:?}");

    let strict = monitor_of(
        db.store(2),
        Thresholds {
            slot_inactive_s: 1.0,
            ..quiet()
        },
    );
    let alerts = check(&strict).await;
    assert!(!find(&alerts, &idle).firing, "first seen idle just now");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let alerts = check(&strict).await;
    let a = find(&alerts, &idle);
    assert!(
        a.firing && a.value.is_some_and(|s| s >= 1.0) && a.message.contains(&slot),
        "{a:?}"
    );
    let busy = find(&alerts, &format!("slot_inactive:{in_use}"));
    assert!(!busy.firing && busy.value == Some(0.0), "{busy:?}");
    assert!(!find(&check(&patient).await, &idle).firing);

    // A consumer that peeks and then advances between checks (as `atlas cdc` does) is never
    // `active` when the monitor looks, but it is a consumer: its slot does not fire.
    let peeked: String = admin
        .query_one(
            "SELECT slot_name::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("atlas_peek_{}", db.name)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    let consumed = format!("slot_inactive:{peeked}");
    for round in 0..4 {
        admin
            .batch_execute("SELECT pg_logical_emit_message(false, 'atlas-test', 'tick')")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        admin
            .query(
                "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
                &[&peeked],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let alerts = check(&strict).await;
        let a = find(&alerts, &consumed);
        assert!(!a.firing, "round {round}: a consumed slot fired: {a:?}");
        if round > 0 {
            assert_eq!(a.value, Some(0.0), "round {round}: {a:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    }
    // Its consumer stops: past the threshold it fires like any idle slot.
    check(&strict).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert!(find(&check(&strict).await, &consumed).firing);
    admin
        .query_one("SELECT pg_drop_replication_slot($1)", &[&peeked])
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Dropped: one last quiet alert (so its gauge falls to 0), then none.
    admin
        .query_one("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts = check(&strict).await;
    let a = find(&alerts, &idle);
    assert!(!a.firing && a.message.contains("no longer exists"), "{a:?}");
    assert!(check(&strict).await.iter().all(|a| a.alert != idle));
}

async fn check(monitor: &Monitor) -> Vec<Alert> {
    monitor
        .check(Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A monitor of `store` without Redis, keeping partitions 62 days ahead.
fn monitor_of(store: atlas_store::Store, thresholds: Thresholds) -> Monitor {
    Monitor::new(
        store,
        atlas_cache::Cache::disabled(),
        thresholds,
        Duration::days(62),
    )
}
