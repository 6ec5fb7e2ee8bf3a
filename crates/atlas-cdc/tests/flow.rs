//! CDC against the real PostgreSQL of the test stack: every published table's inserts,
//! updates, deletes and truncates reach both sinks with the right envelope; replays apply
//! nothing twice; the analytics store is tenant-isolated like the primary.
#![allow(clippy::panic, reason = "a failed expectation fails the test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use atlas_cdc::{
    AnalyticsSink, Batch, Consumer, Decoder, NdjsonSink, Settings, Sink, Source, prepare_analytics,
    with_database,
};
use atlas_testkit::{TestDb, connect};
use serde_json::{Value, json};

fn settings() -> Settings {
    Settings {
        batch_events: 1_000,
        batch_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(100),
        pause_before_advance: false,
        resnapshot_lost_slot: false,
        history_retention: None,
        prune_interval: Duration::from_secs(300),
    }
}

fn ndjson_dir(db: &TestDb) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cdc-{}", db.name));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn consumer(db: &TestDb, dir: &Path) -> Consumer {
    consumer_with(db, dir, settings()).await
}

async fn consumer_with(db: &TestDb, dir: &Path, settings: Settings) -> Consumer {
    let admin = &db.urls.admin_database_url;
    prepare_analytics(admin, &db.analytics_name())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let source = Source::connect(admin, &db.slot_name())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let analytics = AnalyticsSink::connect(
        &with_database(admin, &db.analytics_name()).unwrap_or_else(|e| panic!("{e}")),
        &db.slot_name(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut c = Consumer::new(
        source,
        vec![Box::new(NdjsonSink::new(dir)), Box::new(analytics)],
        settings,
    );
    c.start(admin).await.unwrap_or_else(|e| panic!("{e}"));
    c
}

fn read_ndjson(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for table in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{e}")) {
        for file in std::fs::read_dir(table.unwrap_or_else(|e| panic!("{e}")).path())
            .unwrap_or_else(|e| panic!("{e}"))
        {
            let text = std::fs::read_to_string(file.unwrap_or_else(|e| panic!("{e}")).path())
                .unwrap_or_else(|e| panic!("{e}"));
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}"))),
            );
        }
    }
    out
}

/// An entity_jsonb event carries the published columns, not the projection's internal
/// newest time (0018's column list), in the stream and in the snapshot alike.
fn assert_published_projection_columns(event: &Value) {
    let mut keys: Vec<&str> = event["after"]
        .as_object()
        .unwrap_or_else(|| panic!("no an event has an after image"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cold_attrs",
            "entity_id",
            "hot_attrs",
            "hot_attrs_at",
            "tenant_id",
            "updated_at"
        ],
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_table_reaches_both_sinks_with_the_right_envelope() {
    let db = TestDb::new().await;
    let dir = ndjson_dir(&db);
    let mut cdc = consumer(&db, &dir).await;
    let admin = db.admin().await;
    let ids = admin
        .query_one(
            "WITH t AS (INSERT INTO tenants (tenant_name) VALUES ('cdc') RETURNING tenant_id), \
                  a AS (INSERT INTO attributes (attribute_name, data_type, is_hot) VALUES ('temp_cdc', 'decimal', true) RETURNING attribute_id) \
             SELECT t.tenant_id, a.attribute_id FROM t, a",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (t, a): (i64, i64) = (ids.get(0), ids.get(1));
    admin
        .batch_execute(&format!(
            "UPDATE attributes SET is_indexed = true WHERE attribute_id = {a};
             INSERT INTO attributes (attribute_name, data_type) VALUES ('gone_cdc', 'string');
             DELETE FROM attributes WHERE attribute_name = 'gone_cdc';
             INSERT INTO entities (entity_id, tenant_id, entity_type) VALUES (101, {t}, 'sensor'), (102, {t}, 'sensor');
             UPDATE entities SET entity_type = 'meter', version = 2 WHERE entity_id = 101;
             DELETE FROM entities WHERE entity_id = 102;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 VALUES (101, {t}, {a}, 21.5, now()), (102, {t}, {a}, 1, now());
             UPDATE entity_values_ts SET value_decimal = 99999999999999.12345 WHERE entity_id = 101;
             DELETE FROM entity_values_ts WHERE entity_id = 102;
             INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs) VALUES (101, {t}, '{{\"temp_cdc\": 21.5}}'), (102, {t}, '{{}}');
             UPDATE entity_jsonb SET hot_attrs = '{{\"temp_cdc\": 22.25}}' WHERE entity_id = 101;
             DELETE FROM entity_jsonb WHERE entity_id = 102;
             INSERT INTO entity_jsonb (entity_id, tenant_id) VALUES (103, {t});
             TRUNCATE entity_jsonb;"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let report = cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.events >= 17, "{report:?}");

    // NDJSON: Debezium envelopes under the partition root's name.
    let events = read_ndjson(&dir);
    let mut ops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["source"]["schema"], "public");
        assert!(
            e["source"]["lsn"]
                .as_u64()
                .unwrap_or_else(|| panic!("no lsn"))
                > 0
        );
        assert!(
            e["source"]["txId"]
                .as_u64()
                .unwrap_or_else(|| panic!("no txId"))
                > 0
        );
        assert!(
            e["source"]["ts_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("no ts_ms"))
                > 1_700_000_000_000
        );
        ops.entry(
            e["source"]["table"]
                .as_str()
                .unwrap_or_else(|| panic!("no source.table"))
                .to_owned(),
        )
        .or_default()
        .insert(
            e["op"]
                .as_str()
                .unwrap_or_else(|| panic!("no op"))
                .to_owned(),
        );
    }
    let want = |list: &[&str]| {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(ops["attributes"], want(&["c", "d", "u"]));
    assert_eq!(ops["entities"], want(&["c", "d", "u"]));
    assert_eq!(ops["entity_values_ts"], want(&["c", "d", "u"]));
    assert_eq!(ops["entity_jsonb"], want(&["c", "d", "t", "u"]));
    assert_eq!(ops.len(), 4, "only published tables: {:?}", ops.keys());

    let find = |table: &str, op: &str, entity: i64| {
        events
            .iter()
            .find(|e| {
                e["source"]["table"] == table
                    && e["op"] == op
                    && (e["after"]["entity_id"] == entity || e["before"]["entity_id"] == entity)
            })
            .unwrap_or_else(|| panic!("no {op} on {table} for {entity}"))
    };
    let created = find("entity_values_ts", "c", 101);
    assert_eq!(created["before"], Value::Null);
    assert_eq!(
        created["after"]["value_decimal"], "21.50000",
        "exact decimal"
    );
    assert_eq!(created["after"]["value_int"], Value::Null);
    let at = created["after"]["ingested_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no ingested_at"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'),
        "{at}"
    );
    let updated = find("entity_values_ts", "u", 101);
    assert_eq!(updated["after"]["value_decimal"], "99999999999999.12345");
    let deleted = find("entity_values_ts", "d", 102);
    assert_eq!(deleted["after"], Value::Null);
    assert_eq!(
        deleted["before"]["attribute_id"], a,
        "a delete carries the key"
    );
    let jsonb = find("entity_jsonb", "u", 101);
    assert_published_projection_columns(jsonb);
    assert_eq!(
        jsonb["after"]["hot_attrs"],
        json!({"temp_cdc": 22.25}),
        "jsonb as JSON"
    );
    let entity = find("entities", "u", 101);
    assert_eq!(entity["after"]["entity_type"], "meter");
    assert_eq!(entity["after"]["is_deleted"], false);
    let truncate = events
        .iter()
        .find(|e| e["op"] == "t")
        .unwrap_or_else(|| panic!("no a truncate event"));
    assert_eq!(
        (&truncate["before"], &truncate["after"]),
        (&Value::Null, &Value::Null)
    );

    // The analytics store: the history with op, before and after…
    let an = connect(
        &with_database(&db.urls.admin_database_url, &db.analytics_name())
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let history: Vec<(String, String, i64)> = an
        .query(
            "SELECT table_name, op::text, count(*) FROM cdc.change_events GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut from_ndjson: BTreeMap<(String, String), i64> = BTreeMap::new();
    for e in &events {
        *from_ndjson
            .entry((
                e["source"]["table"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no source.table"))
                    .to_owned(),
                e["op"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no op"))
                    .to_owned(),
            ))
            .or_default() += 1;
    }
    let history_map: BTreeMap<(String, String), i64> =
        history.into_iter().map(|(t, o, n)| ((t, o), n)).collect();
    assert_eq!(history_map, from_ndjson, "both sinks hold the same changes");
    let before_after: (Value, Option<Value>) = an
        .query_one(
            "SELECT before, after FROM cdc.change_events WHERE table_name = 'entities' AND op = 'd'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before_after.0["entity_id"], 102);
    assert_eq!(before_after.1, None);

    // …and the current state, as the primary has it.
    let state: Vec<(String, i64)> = an
        .query(
            "SELECT 'entities:' || entity_type, entity_id FROM public.entities \
             UNION ALL SELECT 'value:' || value_decimal::text, entity_id FROM public.entity_values_ts \
             UNION ALL SELECT 'jsonb', entity_id FROM public.entity_jsonb \
             UNION ALL SELECT 'attr:' || attribute_name || ':' || is_indexed, attribute_id FROM public.attributes \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        state,
        vec![
            ("attr:temp_cdc:true".to_owned(), a),
            ("entities:meter".to_owned(), 101),
            ("value:99999999999999.12345".to_owned(), 101),
        ]
    );

    // Tenant isolation holds in the analytics store too: forced RLS on every tenant table…
    let unforced: Vec<String> = atlas_testkit::column(&an, "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' \
             WHERE c.relkind = 'r' AND n.nspname IN ('public', 'cdc') \
               AND NOT (c.relrowsecurity AND c.relforcerowsecurity AND \
                        EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))",
            &[]).await;
    assert!(
        unforced.is_empty(),
        "tenant tables without forced RLS: {unforced:?}"
    );
    // …and the app role sees nothing without a tenant, only its tenant's rows with one.
    let app = connect(
        &with_database(&db.urls.database_url, &db.analytics_name())
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        atlas_testkit::scalar(&app, "SELECT count(*) FROM public.entity_values_ts", &[]).await,
        0
    );
    app.batch_execute(&format!("SET app.current_tenant_id = '{}'", t + 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        atlas_testkit::scalar(&app, "SELECT count(*) FROM public.entities", &[]).await,
        0
    );
    app.batch_execute(&format!("SET app.current_tenant_id = '{t}'"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        atlas_testkit::scalar(&app, "SELECT count(*) FROM public.entities", &[]).await,
        1
    );
    assert!(
        app.query("SELECT * FROM cdc.change_events", &[])
            .await
            .is_err(),
        "history is not the app's"
    );

    // Consumed means advanced: nothing is delivered again.
    assert_eq!(
        cdc.drain().await.unwrap_or_else(|e| panic!("{e}")).events,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_changes_nothing_in_the_analytics_store() {
    let db = TestDb::new().await;
    let dir = ndjson_dir(&db);
    drop(consumer(&db, &dir).await); // creates the slot and the store
    let admin = db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO tenants (tenant_id, tenant_name) VALUES (7, 'r');
             INSERT INTO attributes (attribute_id, attribute_name, data_type) VALUES (70, 'n_cdc', 'integer');
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_int, ingested_at)
                 SELECT 1, 7, 70, g, now() - g * interval '1 second' FROM generate_series(1, 500) g;
             DELETE FROM entity_values_ts WHERE value_int <= 100;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_int, ingested_at)
                 SELECT 1, 7, 70, -g, now() - g * interval '1 second' FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Peek and write to the sink as a consumer that dies before advancing would, twice.
    let source = Source::connect(&db.urls.admin_database_url, &db.slot_name())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let an_url = with_database(&db.urls.admin_database_url, &db.analytics_name())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut decoder = Decoder::default();
    let mut transactions = Vec::new();
    for p in source.peek(100_000).await.unwrap_or_else(|e| panic!("{e}")) {
        transactions.extend(
            decoder
                .feed(p.lsn, &p.data)
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let batch = Batch {
        transactions,
        database: db.name.clone(),
        slot: db.slot_name(),
        snapshot: false,
    };
    assert_eq!(batch.events(), 1 + 500 + 100 + 50);
    for _ in 0..2 {
        let mut sink = AnalyticsSink::connect(&an_url, &db.slot_name())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sink.write(&batch).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // The consumer proper then sees the same changes again (never advanced) and replays them.
    let mut cdc = consumer(&db, &dir).await;
    assert_eq!(
        cdc.drain().await.unwrap_or_else(|e| panic!("{e}")).events,
        batch.events()
    );

    let an = connect(&an_url).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        atlas_testkit::scalar(&an, "SELECT count(*) FROM cdc.change_events", &[]).await,
        651
    );
    let dupes = atlas_testkit::scalar(&an, "SELECT count(*) FROM (SELECT 1 FROM cdc.change_events GROUP BY table_name, key, lsn HAVING count(*) > 1) d", &[])
    .await;
    assert_eq!(dupes, 0);
    assert_eq!(
        atlas_testkit::scalar(&an, "SELECT count(*) FROM public.entity_values_ts", &[]).await,
        450
    );
    assert_eq!(
        atlas_testkit::scalar(
            &an,
            "SELECT count(*) FROM public.entity_values_ts WHERE value_int BETWEEN 1 AND 100",
            &[]
        )
        .await,
        0,
        "deleted rows stay deleted after the replay"
    );
    let primary: i64 = admin
        .query_one("SELECT sum(value_int)::bigint FROM entity_values_ts", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        atlas_testkit::scalar(
            &an,
            "SELECT sum(value_int)::bigint FROM public.entity_values_ts",
            &[]
        )
        .await,
        primary
    );
    assert_eq!(
        atlas_testkit::scalar(&an, "SELECT events FROM cdc.sink_progress", &[]).await,
        651,
        "the replays applied nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_advance_the_slot_on_an_idle_system() {
    let db = TestDb::new().await;
    let dir = ndjson_dir(&db);
    let mut cdc = consumer(&db, &dir).await;
    async fn state(c: &Consumer) -> atlas_cdc::Slot {
        c.source()
            .state()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the slot exists"))
    }
    let before = state(&cdc).await.confirmed;
    // Unpublished writes only (the replica heartbeat table): nothing to deliver…
    let admin = db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO replication_heartbeat (source) SELECT 'x' FROM generate_series(1, 1000)",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cdc.drain()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .transactions,
        0
    );
    assert_eq!(
        state(&cdc).await.confirmed,
        before,
        "no commit to advance to"
    );
    // …until a heartbeat gives the slot a transaction to confirm.
    cdc.heartbeat_if_due()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.transactions, r.events), (1, 0));
    let after = state(&cdc).await.confirmed;
    assert!(after > before, "{after:?} > {before:?}");
    let an = connect(
        &with_database(&db.urls.admin_database_url, &db.analytics_name())
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let lag_ms: f64 = an
        .query_one(
            "SELECT extract(epoch FROM now() - commit_ts)::float8 * 1000 FROM cdc.sink_progress",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(
        lag_ms < 60_000.0,
        "the store's commit time is fresh: {lag_ms} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_the_slot_arrive_as_a_snapshot_then_the_stream_continues() {
    let db = TestDb::new().await;
    let dir = ndjson_dir(&db);
    let admin = db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO tenants (tenant_id, tenant_name) VALUES (5, 's');
             INSERT INTO attributes (attribute_id, attribute_name, data_type, is_hot) VALUES (50, 'snap_cdc', 'decimal', true);
             INSERT INTO entities (entity_id, tenant_id, entity_type) SELECT g, 5, 'pump' FROM generate_series(1, 300) g;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 SELECT g, 5, 50, g / 8.0, now() - interval '1 minute' FROM generate_series(1, 300) g;
             INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs, hot_attrs_at, hot_attrs_newest)
                 VALUES (1, 5, '{\"snap_cdc\": 0.125}', '{\"snap_cdc\": 7}', 7);",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = consumer(&db, &dir).await;
    let an_url = with_database(&db.urls.admin_database_url, &db.analytics_name())
        .unwrap_or_else(|e| panic!("{e}"));
    let an = connect(&an_url).await.unwrap_or_else(|e| panic!("{e}"));
    let reads = "SELECT count(*) FROM cdc.change_events WHERE op = 'r'";
    assert_eq!(
        atlas_testkit::scalar(&an, reads, &[]).await,
        1 + 300 + 300 + 1,
        "the attribute, entities, values and projection"
    );
    // A snapshot whose completion was not recorded (a crash) is sent again on the next start,
    // at the same slot position: it lands once.
    an.batch_execute("DELETE FROM cdc.sink_progress")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(first);
    let mut cdc = consumer(&db, &dir).await;
    assert_eq!(atlas_testkit::scalar(&an, reads, &[]).await, 602);

    // Changes after the slot's start, including to snapshotted rows.
    admin
        .batch_execute(
            "UPDATE entities SET entity_type = 'valve' WHERE entity_id <= 10;
             DELETE FROM entity_values_ts WHERE entity_id > 290;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 VALUES (1, 5, 50, 0.00001, now());",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));

    let compare = "SELECT count(*), sum(value_decimal)::text, sum(entity_id)::bigint FROM public.entity_values_ts";
    let row = |r: tokio_postgres::Row| {
        (
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
        )
    };
    let on_primary = admin
        .query_one(compare, &[])
        .await
        .map(row)
        .unwrap_or_else(|e| panic!("{e}"));
    let in_store = an
        .query_one(compare, &[])
        .await
        .map(row)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(in_store, on_primary);
    assert_eq!(on_primary.0, 291);
    assert_eq!(
        atlas_testkit::scalar(
            &an,
            "SELECT count(*) FROM public.entities WHERE entity_type = 'valve'",
            &[]
        )
        .await,
        10
    );
    assert_eq!(
        atlas_testkit::scalar(&an, "SELECT count(*) FROM public.entities", &[]).await,
        300
    );
    let snap = read_ndjson(&dir)
        .into_iter()
        .filter(|e| e["op"] == "r")
        .collect::<Vec<_>>();
    assert_eq!(
        snap.len(),
        2 * 602,
        "NDJSON is at-least-once: both snapshots"
    );
    assert_published_projection_columns(
        snap.iter()
            .find(|e| e["source"]["table"] == "entity_jsonb")
            .unwrap_or_else(|| panic!("no entity_jsonb snapshot row")),
    );
    assert!(snap.iter().all(|e| e["source"]["snapshot"] == "true"));
    assert!(
        snap.iter()
            .any(|e| e["after"]["value_decimal"] == "0.12500"),
        "snapshot values are typed like the stream's"
    );
}

#[tokio::test]
async fn history_retention_and_the_primarys_retention_prune_the_store() {
    let db = TestDb::new().await;
    let dir = ndjson_dir(&db);
    let mut cdc = consumer_with(
        &db,
        &dir,
        Settings {
            history_retention: Some(Duration::from_secs(3)),
            ..settings()
        },
    )
    .await;
    let admin = db.admin().await;
    // Partitions back to 70 days ago (as a backfill makes them), a value there and one now.
    admin
        .batch_execute(
            "SELECT count(*) FROM ensure_ts_partitions_from(now() - interval '70 days', false);
             INSERT INTO tenants (tenant_id, tenant_name) VALUES (6, 'p');
             INSERT INTO attributes (attribute_id, attribute_name, data_type) VALUES (60, 'prune_cdc', 'decimal');
             INSERT INTO entities (entity_id, tenant_id, entity_type) VALUES (1, 6, 'pump');
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 VALUES (1, 6, 60, 1, now() - interval '65 days'), (1, 6, 60, 2, now());",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    let an = connect(
        &with_database(&db.urls.admin_database_url, &db.analytics_name())
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let values = "SELECT count(*) FROM public.entity_values_ts";
    let history = "SELECT count(*) FROM cdc.change_events";
    assert_eq!(atlas_testkit::scalar(&an, values, &[]).await, 2);
    let events = atlas_testkit::scalar(&an, history, &[]).await;
    assert_eq!(events, 4, "the attribute, the entity and two values");

    // No value has aged out yet: the old one is inside the primary's oldest partition. (The
    // history may already have, on a slow machine: counted together with the next prune.)
    let first = cdc.prune().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.values, 0, "{first:?}");

    // The primary's retention drops the partitions ending 30 days ago or earlier: no delete
    // events, but the store's copy of the time series follows.
    loop {
        let dropped: Option<String> = admin
            .query_one(
                "SELECT drop_oldest_ts_partition_before(now() - interval '30 days', 5000)",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        if dropped.is_none() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    admin
        .batch_execute(
            "INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 VALUES (1, 6, 60, 3, now());",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    // The NDJSON sink's history is its hour files: one that ended five hours ago goes, a file
    // not of its naming stays, and so does the file holding the newest events.
    let table_dir = dir.join("entity_values_ts");
    let old_hour = table_dir.join(format!(
        "{}.ndjson",
        (chrono::Utc::now() - chrono::Duration::hours(5)).format("%Y-%m-%dT%H")
    ));
    std::fs::write(&old_hour, "{}\n").unwrap_or_else(|e| panic!("{e}"));
    let stray = table_dir.join("notes.txt");
    std::fs::write(&stray, "kept").unwrap_or_else(|e| panic!("{e}"));
    let pruned = cdc.prune().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pruned.values, 1, "{pruned:?}");
    // (At least: right after an hour turns, the previous hour's real file may go too.)
    assert!(pruned.files >= 1, "{pruned:?}");
    assert!(!old_hour.exists() && stray.exists());
    assert!(
        std::fs::read_dir(&table_dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .any(|f| f
                .unwrap_or_else(|e| panic!("{e}"))
                .file_name()
                .to_string_lossy()
                .ends_with(".ndjson")),
        "the current hour's file stays"
    );
    let compare = "SELECT count(*), sum(value_decimal)::text FROM public.entity_values_ts";
    let row = |r: tokio_postgres::Row| (r.get::<_, i64>(0), r.get::<_, String>(1));
    assert_eq!(
        an.query_one(compare, &[])
            .await
            .map(row)
            .unwrap_or_else(|e| panic!("{e}")),
        admin
            .query_one(compare, &[])
            .await
            .map(row)
            .unwrap_or_else(|e| panic!("{e}")),
        "the store's time series is the primary's again"
    );
    // History older than 3 s went; the last insert's event stays.
    assert_eq!(
        first.history + pruned.history,
        u64::try_from(events).unwrap_or_else(|e| panic!("{e}")),
        "{first:?} {pruned:?}"
    );
    assert_eq!(atlas_testkit::scalar(&an, history, &[]).await, 1);
    // Pruning again finds nothing.
    assert_eq!(
        cdc.prune().await.unwrap_or_else(|e| panic!("{e}")),
        atlas_cdc::Pruned::default()
    );
}

/// `public.<table>` of the store equals the source row for row, on every column the
/// publication carries (which must be the store's columns, less its `_lsn`/`_commit_ts`).
async fn assert_store_equals_source(source: &tokio_postgres::Client, an: &tokio_postgres::Client) {
    for table in ["attributes", "entities", "entity_jsonb", "entity_values_ts"] {
        let mut columns: Vec<String> = an
            .query_one(
                "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute \
                 WHERE attrelid = ('public.' || $1)::regclass AND attnum > 0 AND NOT attisdropped \
                   AND attname NOT IN ('_lsn', '_commit_ts')",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        let mut published: Vec<String> = source
            .query_one(
                "SELECT attnames::text[] FROM pg_publication_tables WHERE pubname = 'eav_cdc' AND tablename = $1",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        let sql = format!(
            "SELECT to_jsonb(t)::text FROM (SELECT {} FROM public.{table}) t ORDER BY 1",
            columns.join(", ")
        );
        columns.sort();
        published.sort();
        assert_eq!(columns, published, "{table}: the store's columns");
        let on_source: Vec<String> = atlas_testkit::column(source, &sql, &[]).await;
        let in_store: Vec<String> = atlas_testkit::column(an, &sql, &[]).await;
        assert_eq!(in_store.len(), on_source.len(), "{table}: row count");
        for (s, d) in on_source.iter().zip(&in_store) {
            let short = |v: &str| v.chars().take(300).collect::<String>();
            assert!(
                s == d,
                "{table}: source {} …\nstore {} …",
                short(s),
                short(d)
            );
        }
    }
}

/// Random hex of `n` × 32 characters: incompressible enough that a value stays above the
/// TOAST threshold, out of line, once stored.
fn big(n: u32) -> String {
    format!("(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {n}))")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_out_of_line_values_survive_later_updates_of_their_rows() {
    let db = TestDb::new().await;
    let dir = ndjson_dir(&db);
    let admin = db.admin().await;
    // Entity 4 exists before the slot: the snapshot gives the store its small properties.
    admin
        .batch_execute(
            "INSERT INTO tenants (tenant_id, tenant_name) VALUES (9, 'toast');
             INSERT INTO entities (entity_id, tenant_id, entity_type) VALUES (4, 9, 'sensor');
             INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs, cold_attrs)
                 VALUES (4, 9, '{\"temp\": 1}', '{\"label\": \"sensor-0\"}');",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cdc = consumer(&db, &dir).await;
    let blob = |n| format!("jsonb_build_object('blob', {})", big(n));
    // One batch: every TOASTable published column set large, then its row changed elsewhere
    // (pgoutput then sends the large column as unchanged), created rows included, deletes and
    // a transaction holding both changes.
    admin
        .batch_execute(&format!(
            "INSERT INTO attributes (attribute_id, attribute_name, data_type, validation_regex, allow_rounding)
                 VALUES (90, 'big_cdc', 'string', '^' || {r} || '$', true);
             UPDATE attributes SET is_hot = true WHERE attribute_id = 90;
             INSERT INTO entities (entity_id, tenant_id, entity_type) VALUES (1, 9, 'sensor'), (2, 9, 'sensor'), (3, 9, 'sensor');
             INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs, hot_attrs_at, cold_attrs)
                 VALUES (1, 9, {b1}, {b2}, {b3}), (2, 9, '{{}}', '{{}}', {b4});
             UPDATE entity_jsonb SET updated_at = now() WHERE entity_id = 1;
             UPDATE entity_jsonb SET hot_attrs = '{{\"temp\": 21}}' WHERE entity_id = 2;
             UPDATE entity_jsonb SET cold_attrs = {b5} WHERE entity_id = 4;
             UPDATE entity_jsonb SET hot_attrs = '{{\"temp\": 21}}' WHERE entity_id = 4;
             BEGIN;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value, ingested_at)
                 VALUES (1, 9, 90, {v1}, now() - interval '1 minute'), (2, 9, 90, {v2}, now() - interval '2 minutes');
             UPDATE entity_values_ts SET created_at = now() - interval '1 second' WHERE entity_id = 1;
             COMMIT;
             DELETE FROM entity_values_ts WHERE entity_id = 2;
             DELETE FROM entities WHERE entity_id = 3;",
            r = big(300),
            b1 = blob(300),
            b2 = blob(300),
            b3 = blob(300),
            b4 = blob(300),
            b5 = blob(300),
            v1 = big(300),
            v2 = big(300),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    let an_url = with_database(&db.urls.admin_database_url, &db.analytics_name())
        .unwrap_or_else(|e| panic!("{e}"));
    let an = connect(&an_url).await.unwrap_or_else(|e| panic!("{e}"));
    assert_store_equals_source(&admin, &an).await;

    // Later batches: a row whose large columns the store already holds is updated again
    // (they stay as stored), a large value replaced and followed by telemetry, a row created,
    // updated and deleted within the batch, and the next batch mixing both.
    admin
        .batch_execute(&format!(
            "UPDATE entity_jsonb SET updated_at = now() WHERE entity_id = 1;
             UPDATE attributes SET is_indexed = true WHERE attribute_id = 90;
             UPDATE entity_values_ts SET created_at = now() WHERE entity_id = 1;
             UPDATE entity_jsonb SET cold_attrs = {b6} WHERE entity_id = 2;
             UPDATE entity_jsonb SET hot_attrs = '{{\"temp\": 22}}' WHERE entity_id = 2;
             INSERT INTO entities (entity_id, tenant_id, entity_type) VALUES (5, 9, 'sensor');
             INSERT INTO entity_jsonb (entity_id, tenant_id, cold_attrs) VALUES (5, 9, {b7});
             UPDATE entity_jsonb SET hot_attrs = '{{\"temp\": 5}}' WHERE entity_id = 5;
             DELETE FROM entity_jsonb WHERE entity_id = 5;",
            b6 = blob(300),
            b7 = blob(300),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    assert_store_equals_source(&admin, &an).await;
    admin
        .batch_execute(&format!(
            "INSERT INTO entity_jsonb (entity_id, tenant_id, cold_attrs) VALUES (5, 9, {b8});
             UPDATE entity_jsonb SET hot_attrs = '{{\"temp\": 6}}' WHERE entity_id = 5;
             UPDATE entity_jsonb SET hot_attrs_at = {b9} WHERE entity_id = 4;
             UPDATE entity_jsonb SET updated_at = now() WHERE entity_id = 4;
             UPDATE entity_jsonb SET updated_at = now() WHERE entity_id = 4;",
            b8 = blob(300),
            b9 = blob(300),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cdc.drain().await.unwrap_or_else(|e| panic!("{e}"));
    assert_store_equals_source(&admin, &an).await;

    // The path under test was taken: every table's history has updates that left a large
    // column out.
    let unavailable: Vec<String> = atlas_testkit::column(
        &an,
        "SELECT DISTINCT table_name FROM cdc.change_events \
             WHERE op = 'u' AND after::text LIKE '%__debezium_unavailable_value%' ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        unavailable,
        ["attributes", "entity_jsonb", "entity_values_ts"],
        "(entities has no TOASTable column)"
    );
}
