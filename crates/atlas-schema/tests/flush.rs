//! stage_flush: typed storage, hot projection, idempotence, poison, and concurrency.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atlas_testkit::TestDb;
use serde_json::json;

use crate::support::{Value, add_entities, at, fleet, flush, hot_attrs, set_tenant, stage};

#[tokio::test]
async fn values_land_typed_and_hot_ones_are_projected_last_writer_wins() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let app = db.app().await;
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.temperature,
        Value::Decimal("21.50"),
        &at("10:00:00"),
    )
    .await;
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.status,
        Value::Text("online"),
        &at("10:00:00"),
    )
    .await;
    // An older reading arriving in the same batch, and one arriving later.
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.status,
        Value::Text("offline"),
        &at("09:00:00"),
    )
    .await;
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.priority,
        Value::Int(8),
        &at("10:00:00"),
    )
    .await;
    assert_eq!(flush(&app).await, 4);
    assert_eq!(
        hot_attrs(&db, f.a1).await,
        json!({"status": "online", "priority": 8})
    );

    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.status,
        Value::Text("rebooting"),
        &at("09:30:00"),
    )
    .await;
    assert_eq!(
        flush(&app).await,
        1,
        "the late reading is stored in the time series"
    );
    assert_eq!(
        hot_attrs(&db, f.a1).await,
        json!({"status": "online", "priority": 8}),
        "a late, older event must not overwrite the newer hot value"
    );
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.status,
        Value::Text("maintenance"),
        &at("11:00:00"),
    )
    .await;
    flush(&app).await;
    assert_eq!(
        hot_attrs(&db, f.a1).await,
        json!({"status": "maintenance", "priority": 8})
    );

    let admin = db.admin().await;
    let row = admin
        .query_one(
            "SELECT value, value_int, value_decimal::text, value_bool, value_date, value_timestamp \
             FROM entity_values_ts WHERE attribute_id = $1",
            &[&f.temperature],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Option<i64>>(1), None);
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("21.50000"));
    assert_eq!(row.get::<_, Option<bool>>(3), None);
    // Cold attributes stay out of the projection; the hot integer is a JSON number.
    let contains: bool = admin
        .query_one(
            "SELECT hot_attrs @> '{\"priority\": 8}' AND NOT hot_attrs @> '{\"priority\": \"8\"}' AND NOT hot_attrs ? 'temperature' \
             FROM entity_jsonb WHERE entity_id = $1",
            &[&f.a1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(contains);
}

#[tokio::test]
async fn replays_and_in_batch_duplicates_store_nothing_twice() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let app = db.app().await;
    for _ in 0..3 {
        stage(
            &app,
            f.tenant_a,
            f.a1,
            f.priority,
            Value::Int(1),
            &at("10:00:00"),
        )
        .await;
    }
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.priority,
        Value::Int(2),
        &at("10:01:00"),
    )
    .await;
    assert_eq!(flush(&app).await, 2);
    // The same batch again, later.
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.priority,
        Value::Int(1),
        &at("10:00:00"),
    )
    .await;
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.priority,
        Value::Int(2),
        &at("10:01:00"),
    )
    .await;
    assert_eq!(flush(&app).await, 0);
    let n: i64 = db
        .admin()
        .await
        .query_one("SELECT count(*) FROM entity_values_ts", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(n, 2);
    let changed: Vec<bool> =
        atlas_testkit::column(&app, "SELECT hot_changed FROM stage_flush(10)", &[]).await;
    assert!(changed.is_empty());
}

#[tokio::test]
async fn poison_rows_are_dead_lettered_and_the_flush_goes_on() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let app = db.app().await;
    let good = &at("10:00:00");
    stage(&app, f.tenant_a, f.a1, f.priority, Value::Int(5), good).await; // fine
    stage(&app, f.tenant_b, f.a1, f.priority, Value::Int(5), good).await; // A's entity under B
    stage(&app, f.tenant_a, f.a1, f.priority, Value::Text("5"), good).await; // wrong column
    stage(&app, f.tenant_a, f.a1, 999_999, Value::Int(5), good).await; // unknown attribute
    stage(
        &app,
        f.tenant_a,
        f.a2,
        f.priority,
        Value::Int(6),
        "1999-01-01T00:00:00Z",
    )
    .await; // no partition
    app.execute(
        "INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, ingested_at) VALUES ($1, $2, $3, now())",
        &[&f.tenant_a, &f.a1, &f.temperature],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}")); // no value at all
    app.execute(
        "INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, value_decimal, ingested_at) VALUES ($1, $2, $3, 'NaN', now())",
        &[&f.tenant_a, &f.a1, &f.temperature],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}")); // NaN compares greater than everything
    stage(&app, f.tenant_a, f.a2, f.priority, Value::Int(7), good).await; // fine, after the poison

    assert_eq!(flush(&app).await, 2);
    let admin = db.admin().await;
    let reasons: Vec<String> = atlas_testkit::column(
        &admin,
        "SELECT reason FROM entity_values_dead_letter ORDER BY dead_letter_id",
        &[],
    )
    .await;
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    for expected in [
        "entity does not exist for this tenant",
        "unknown attribute_id",
        "value does not match data_type integer",
        "value does not match data_type decimal",
        "no partition of relation",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no dead letter for {expected}: {reasons:?}"
        );
    }
    let left: i64 = app
        .query_one("SELECT backlog FROM staging_stats()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_deleted_entity_takes_no_new_values() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let mut app = db.app().await;
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_a).await;
    tx.execute(
        "UPDATE entities SET is_deleted = true WHERE entity_id = $1",
        &[&f.a2],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    stage(
        &app,
        f.tenant_a,
        f.a2,
        f.priority,
        Value::Int(1),
        &at("10:00:00"),
    )
    .await;
    assert_eq!(flush(&app).await, 0);
}

/// Two flushers and three producers (one replaying every batch it sends) running at once:
/// every produced reading is stored exactly once and staging ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flushers_and_replaying_producers_reconcile_exactly() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let mut app = db.app().await;
    let entities = add_entities(&mut app, f.tenant_a, 40).await;
    let attrs = [f.priority, f.status];
    let producing = Arc::new(AtomicBool::new(true));

    let mut producers = Vec::new();
    for p in 0..3i64 {
        let client = db.app().await;
        let entities = entities.clone();
        producers.push(tokio::spawn(async move {
            let mut produced = HashSet::new();
            for batch in 0..20i64 {
                let mut rows = Vec::new();
                for (k, e) in entities.iter().enumerate() {
                    let k = i64::try_from(k).unwrap_or(0);
                    // Producers 0 and 1 overlap on purpose (same readings), 2 is distinct.
                    let minute = batch * 40 + k + if p == 2 { 100_000 } else { 0 };
                    let attr = attrs[usize::try_from((batch + k) % 2).unwrap_or(0)];
                    rows.push((*e, attr, minute));
                }
                let sends = if p == 1 { 2 } else { 1 };
                for _ in 0..sends {
                    let es: Vec<i64> = rows.iter().map(|r| r.0).collect();
                    let ats: Vec<i64> = rows.iter().map(|r| r.1).collect();
                    let ms: Vec<i64> = rows.iter().map(|r| r.2).collect();
                    client
                        .execute(
                            "INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, value, value_int, ingested_at) \
                             SELECT $1, e, a, CASE WHEN a = $5 THEN 's' || m END, CASE WHEN a = $6 THEN m END, \
                                    date_trunc('month', now()) + make_interval(secs => m) \
                             FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS t (e, a, m)",
                            &[&f.tenant_a, &es, &ats, &ms, &f.status, &f.priority],
                        )
                        .await
                        .unwrap_or_else(|e| panic!("produce: {e}"));
                }
                produced.extend(rows);
            }
            produced
        }));
    }
    let mut flushers = Vec::new();
    for _ in 0..2 {
        let client = db.app().await;
        let producing = Arc::clone(&producing);
        flushers.push(tokio::spawn(async move {
            let mut stored = 0i64;
            loop {
                let still_producing = producing.load(Ordering::SeqCst);
                let n: Option<i64> = client
                    .query_one("SELECT sum(stored)::bigint FROM stage_flush(500)", &[])
                    .await
                    .unwrap_or_else(|e| panic!("flush: {e}"))
                    .get(0);
                stored += n.unwrap_or(0);
                if n.is_none() && !still_producing {
                    let left: i64 = client
                        .query_one("SELECT backlog FROM staging_stats(1)", &[])
                        .await
                        .unwrap_or_else(|e| panic!("{e}"))
                        .get(0);
                    if left == 0 {
                        return stored;
                    }
                }
            }
        }));
    }
    let mut expected = HashSet::new();
    for p in producers {
        expected.extend(p.await.unwrap_or_else(|e| panic!("{e}")));
    }
    producing.store(false, Ordering::SeqCst);
    let mut stored = 0;
    for fl in flushers {
        stored += fl.await.unwrap_or_else(|e| panic!("{e}"));
    }

    let admin = db.admin().await;
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT (entity_id, attribute_id, ingested_at)) FROM entity_values_ts",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (total, distinct): (i64, i64) = (row.get(0), row.get(1));
    let expected_n = i64::try_from(expected.len()).unwrap_or(-1);
    assert_eq!(total, expected_n, "every produced reading stored once");
    assert_eq!(distinct, total, "no duplicates");
    assert_eq!(stored, total, "flushers report exactly what they stored");
    let dead: i64 = admin
        .query_one("SELECT count(*) FROM entity_values_dead_letter", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(dead, 0);
    let left: i64 = admin
        .query_one("SELECT count(*) FROM entity_values_ingest", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(left, 0, "staging drained");
    // The projection holds, per entity, the newest value of each hot attribute.
    let mismatches: i64 = admin
        .query_one(
            "SELECT count(*) FROM entity_jsonb j JOIN LATERAL ( \
                 SELECT DISTINCT ON (attribute_id) attribute_id, value, value_int FROM entity_values_ts v \
                 WHERE v.entity_id = j.entity_id AND v.attribute_id = $1 ORDER BY attribute_id, ingested_at DESC) n ON true \
             WHERE j.hot_attrs -> 'priority' <> to_jsonb(n.value_int)",
            &[&f.priority],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        mismatches, 0,
        "projection must equal the newest stored value"
    );
}
