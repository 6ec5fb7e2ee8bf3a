//! The stack's streaming replica: attached, read-only, and replaying what the primary commits.

use std::time::Duration;

use atlas_testkit::TestDb;

use crate::support::{Value, at, fleet, flush, stage};

#[tokio::test]
async fn replica_streams_and_is_read_only() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let admin = db.admin().await;
    let streaming: Vec<(String, Option<String>)> = admin
        .query("SELECT state, slot_name FROM pg_stat_replication JOIN pg_replication_slots ON active_pid = pid", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        streaming,
        vec![("streaming".to_owned(), Some("atlas_replica_1".to_owned()))]
    );

    let app = db.app().await;
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.priority,
        Value::Int(3),
        &at("10:00:00"),
    )
    .await;
    assert_eq!(flush(&app).await, 1);

    let replica = db.replica().await;
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(in_recovery);
    let err = replica
        .execute("INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, value_int) VALUES (1, 1, 1, 1)", &[])
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_owned()));
    assert_eq!(err.as_deref(), Some("25006"), "the replica refuses writes");

    // The committed value becomes visible on the replica, under the same RLS.
    let mut seen: i64 = 0;
    for _ in 0..100 {
        let mut c = db.replica().await;
        let tx = c.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        crate::support::set_tenant(&tx, f.tenant_a).await;
        seen = tx
            .query_one("SELECT count(*) FROM entity_values_ts", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1);
    let without_context: i64 = replica
        .query_one("SELECT count(*) FROM entity_values_ts", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(without_context, 0, "RLS holds on the replica too");
}

/// The replica reports its oldest snapshot to the primary (so replica reads are not cancelled
/// by vacuum) every second: with the default 10 s the primary keeps ten seconds of dead
/// versions of every hot projection row, and its updates stop being HOT.
#[tokio::test]
async fn replica_feeds_back_its_horizon_every_second() {
    let db = TestDb::new().await;
    let replica = db.replica().await;
    let setting = |name: &'static str| {
        let replica = &replica;
        async move {
            replica
                .query_one("SELECT current_setting($1)", &[&name])
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .get::<_, String>(0)
        }
    };
    assert_eq!(setting("hot_standby_feedback").await, "on");
    assert_eq!(setting("wal_receiver_status_interval").await, "1s");
}
