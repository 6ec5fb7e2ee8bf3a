//! `POST /v1/telemetry`: typed storage, hot projection, cache invalidation, idempotence,
//! the bad-input table, staged mode, other producers and backpressure.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Server, assert_error, call};

/// Defines the attributes every test here uses; returns nothing (names are used).
async fn catalogue(server: &Server) {
    for body in [
        json!({"attribute_name": "temperature", "data_type": "decimal"}),
        json!({"attribute_name": "gain", "data_type": "decimal", "allow_rounding": true}),
        json!({"attribute_name": "status", "data_type": "string", "is_hot": true}),
        json!({"attribute_name": "serial", "data_type": "string", "validation_regex": "^[A-Z]{2}[0-9]{4}$"}),
        json!({"attribute_name": "priority", "data_type": "integer", "is_hot": true}),
        json!({"attribute_name": "online", "data_type": "boolean", "is_hot": true}),
        json!({"attribute_name": "serviced", "data_type": "date"}),
        json!({"attribute_name": "booted", "data_type": "timestamp"}),
        json!({"attribute_name": "config", "data_type": "json", "is_hot": true}),
    ] {
        server.define(body).await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn post(server: &Server, key: &str, body: &Value) -> (u16, Value) {
    call(
        server
            .as_tenant(key, Method::POST, "/v1/telemetry")
            .json(body),
    )
    .await
}

async fn count_values(server: &Server) -> i64 {
    server
        .scalar("SELECT count(*) FROM entity_values_ts", &[])
        .await
}

async fn hot(server: &Server, entity: i64) -> Value {
    server
        .db
        .admin()
        .await
        .query_opt(
            "SELECT hot_attrs FROM entity_jsonb WHERE entity_id = $1",
            &[&entity],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|r| r.get(0))
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn values_land_typed_and_hot_ones_are_projected_last_writer_wins() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 60_000;

    // A cached copy of the entity's hot attributes, which the write must invalidate.
    let redis =
        redis::Client::open(server.db.urls.redis_url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cache_key = server.state.cache().entity_key(tenant, e);
    let _: () = redis::cmd("SET")
        .arg(&cache_key)
        .arg("stale")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let (s, ack) = post(
        &server,
        &key,
        &json!({"entity_id": e, "ts": t, "values": {
            "temperature": 21.5, "gain": 0.1234567, "status": "online", "serial": "AB1234", "priority": 8,
            "online": true, "serviced": "2026-01-31", "booted": "2026-11-25T08:00:00+02:00", "config": {"rate": [1, 2]}
        }}),
    )
    .await;
    assert_eq!(
        (s, ack["accepted"].as_i64(), ack["durability"].as_str()),
        (200, Some(9), Some("durable")),
        "{ack}"
    );

    // Durable means: in entity_values_ts the moment the response arrives.
    let rows = server
        .db
        .admin()
        .await
        .query(
            "SELECT a.attribute_name::text, v.value, v.value_int, v.value_decimal::text, v.value_bool, v.value_date::text, \
                    v.value_timestamp, num_nonnulls(v.value, v.value_int, v.value_decimal, v.value_bool, v.value_date, v.value_timestamp) \
             FROM entity_values_ts v JOIN attributes a USING (attribute_id) WHERE v.entity_id = $1 ORDER BY 1",
            &[&e],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let by_name = |n: &str| {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == n)
            .unwrap_or_else(|| panic!("{n} not stored"))
    };
    assert!(
        rows.iter().all(|r| r.get::<_, i32>(7) == 1),
        "exactly one typed column per row"
    );
    assert_eq!(
        by_name("temperature")
            .get::<_, Option<String>>(3)
            .as_deref(),
        Some("21.50000")
    );
    assert_eq!(
        by_name("gain").get::<_, Option<String>>(3).as_deref(),
        Some("0.12346"),
        "rounded, as the attribute allows"
    );
    assert_eq!(by_name("priority").get::<_, Option<i64>>(2), Some(8));
    assert_eq!(by_name("online").get::<_, Option<bool>>(4), Some(true));
    assert_eq!(
        by_name("serviced").get::<_, Option<String>>(5).as_deref(),
        Some("2026-01-31")
    );
    let booted: Option<chrono::DateTime<chrono::Utc>> = by_name("booted").get(6);
    assert_eq!(
        booted.map(|b| b.to_rfc3339()),
        Some("2026-11-25T06:00:00+00:00".to_owned())
    );
    assert_eq!(
        by_name("config").get::<_, Option<String>>(1).as_deref(),
        Some(r#"{"rate":[1,2]}"#)
    );
    assert_eq!(
        by_name("serial").get::<_, Option<String>>(1).as_deref(),
        Some("AB1234")
    );

    // Only hot attributes are projected, typed (8, not "8").
    assert_eq!(
        hot(&server, e).await,
        json!({"status": "online", "priority": 8, "online": true, "config": {"rate": [1, 2]}})
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&cache_key)
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exists, 0, "the entity's cache key is gone after the write");

    // A late, older reading is stored but does not overwrite the newer hot value.
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "ts": t - 30_000, "values": {"status": "offline"}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(hot(&server, e).await["status"], "online");
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "ts": t + 30_000, "values": {"status": "maintenance"}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(hot(&server, e).await["status"], "maintenance");
    assert_eq!(count_values(&server).await, 11);
    server.stop().await;
}

#[tokio::test]
async fn replays_and_in_request_duplicates_store_nothing_twice() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 5_000;
    let batch = json!([
        {"entity_id": e, "ts": t, "values": {"priority": 1, "temperature": 20.0}},
        {"entity_id": e, "ts": t, "values": {"priority": 1}},
        {"entity_id": e, "ts": t + 1, "values": {"priority": 2}}
    ]);
    let (s, ack) = post(&server, &key, &batch).await;
    assert_eq!((s, ack["accepted"].as_i64()), (200, Some(4)));
    assert_eq!(
        count_values(&server).await,
        3,
        "the in-request duplicate collapsed"
    );
    for _ in 0..2 {
        let (s, _) = post(&server, &key, &batch).await;
        assert_eq!(
            s, 200,
            "a replay is acknowledged (the readings are stored)…"
        );
    }
    assert_eq!(count_values(&server).await, 3, "…and adds nothing");
    server.stop().await;
}

/// Asserts a refusal: its status, the field it names and a phrase of its message.
fn assert_refused(status: u16, body: &Value, expected: u16, field: &str, says: &str) {
    assert_eq!(
        assert_error(status, body, expected).as_deref(),
        Some(field),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(says)),
        "{body}"
    );
}

#[tokio::test]
async fn no_value_is_acknowledged_and_lost_to_another_at_the_same_key() {
    // One (entity, attribute, time) is one stored value. Readings without ts in one request
    // take successive microseconds of the receipt time, so each is stored and the last is
    // the newest; two different values at one explicit ts are refused, naming the second.
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let untimed = json!([
        {"entity_id": e, "values": {"priority": 1, "status": "a"}},
        {"entity_id": e, "values": {"priority": 2}},
        {"entity_id": e, "values": {"priority": 3, "status": "b"}}
    ]);
    let (s, ack) = post(&server, &key, &untimed).await;
    assert_eq!((s, ack["accepted"].as_i64()), (200, Some(5)), "{ack}");
    assert_eq!(count_values(&server).await, 5, "every untimed value stored");
    let times = server
        .scalar(
            "SELECT count(DISTINCT ingested_at) FROM entity_values_ts v JOIN attributes a USING (attribute_id) \
             WHERE a.attribute_name = 'priority'",
            &[],
        )
        .await;
    assert_eq!(times, 3);
    assert_eq!(hot(&server, e).await, json!({"priority": 3, "status": "b"}));

    let t = now_ms() - 1_000;
    let (s, body) = post(
        &server,
        &key,
        &json!([
            {"entity_id": e, "ts": t, "values": {"priority": 7, "status": "c"}},
            {"entity_id": e, "ts": t, "values": {"status": "c"}},
            {"entity_id": e, "ts": t, "values": {"priority": 8}}
        ]),
    )
    .await;
    assert_refused(s, &body, 422, "[2].values.priority", "[0]");
    // The same attribute by name and by id, with different values, in one reading.
    let priority = server
        .scalar(
            "SELECT attribute_id FROM attributes WHERE attribute_name = 'priority'",
            &[],
        )
        .await;
    let (s, body) = post(
        &server,
        &key,
        &json!({"entity_id": e, "ts": t, "values": {"priority": 7, priority.to_string(): 9}}),
    )
    .await;
    let field = assert_error(s, &body, 422).unwrap_or_default();
    assert!(
        field == "values.priority" || field == format!("values.{priority}"),
        "{body}"
    );
    assert_eq!(
        count_values(&server).await,
        5,
        "nothing of a refused request"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_different_value_at_a_stored_key_is_refused_not_acknowledged() {
    // A replay (same value) is acknowledged and stores nothing; a different value at a stored
    // (entity, attribute, ts) was acknowledged the same way and silently dropped. It is now
    // refused with 409 naming it, the stored value stays, and the request's other values are
    // stored as 409 says.
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 10_000;
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "ts": t, "values": {"priority": 1, "config": {"a": 1, "b": [2]}}}),
    )
    .await;
    assert_eq!(s, 200);
    // A replay, the JSON written with another key order and spacing: the same value.
    let replay = server
        .as_tenant(&key, Method::POST, "/v1/telemetry")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"entity_id": {e}, "ts": {t}, "values": {{"config": {{"b": [2],  "a": 1}}, "priority": 1.0}}}}"#
        ));
    let (s, body) = call(replay).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = post(
        &server,
        &key,
        &json!([
            {"entity_id": e, "ts": t + 1, "values": {"priority": 3}},
            {"entity_id": e, "ts": t, "values": {"priority": 2}}
        ]),
    )
    .await;
    assert_refused(
        s,
        &body,
        409,
        "[1].values.priority",
        "different value is already stored",
    );
    let stored = server
        .scalar(
            "SELECT count(*) FROM entity_values_ts v JOIN attributes a USING (attribute_id) \
             WHERE a.attribute_name = 'priority' AND v.value_int = 2",
            &[],
        )
        .await;
    assert_eq!(stored, 0, "the stored value stays");
    assert_eq!(
        count_values(&server).await,
        3,
        "the request's new value is stored"
    );
    let dead = server
        .scalar(
            "SELECT count(*) FROM entity_values_dead_letter WHERE value_int = 2",
            &[],
        )
        .await;
    assert_eq!(dead, 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let limits = atlas_config::Limits {
        max_body_bytes: 16 * 1024,
        ..atlas_config::Limits::default()
    };
    let server = Server::start_with(limits).await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other_key) = server.tenant("other").await;
    let e = server.entities(&key, 1).await[0];
    let foreign = server.entities(&other_key, 1).await[0];
    let t = now_ms();
    let one = |values: Value| json!({"entity_id": e, "ts": t, "values": values});
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("unknown attribute", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"nope": 1}))), 422, "values.nope"),
        ("wrong type", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"priority": "8"}))), 422, "values.priority"),
        ("fraction for integer", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"priority": 8.5}))), 422, "values.priority"),
        ("NaN as a string", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"temperature": "NaN"}))), 422, "values.temperature"),
        ("1e16", server.as_tenant(&key, Method::POST, "/v1/telemetry").header("content-type", "application/json")
            .body(format!(r#"{{"entity_id": {e}, "ts": {t}, "values": {{"temperature": 1e16}}}}"#)), 422, "values.temperature"),
        ("too many decimals", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"temperature": 1.123456}))), 422, "values.temperature"),
        ("regex mismatch", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"serial": "ab1234"}))), 422, "values.serial"),
        ("bad date", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"serviced": "2026-02-30"}))), 422, "values.serviced"),
        ("bad timestamp", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"booted": "yesterday"}))), 422, "values.booted"),
        ("NUL in a string", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"status": "a\u{0}b"}))), 422, "values.status"),
        ("bare NaN (not JSON)", server.as_tenant(&key, Method::POST, "/v1/telemetry").header("content-type", "application/json")
            .body(format!(r#"{{"entity_id": {e}, "values": {{"temperature": NaN}}}}"#)), 400, "body"),
        ("malformed JSON", server.as_tenant(&key, Method::POST, "/v1/telemetry").header("content-type", "application/json").body("{\"entity_id\": "), 400, "body"),
        ("empty body", server.as_tenant(&key, Method::POST, "/v1/telemetry").header("content-type", "application/json").body(""), 400, "body"),
        ("oversized body", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&one(json!({"status": "x".repeat(20_000)}))), 413, "body"),
        ("far-future ts", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": e, "ts": t + 3_600_000, "values": {"priority": 1}})), 422, "ts"),
        ("ts before retention", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": e, "ts": 946_684_800_000_i64, "values": {"priority": 1}})), 422, "ts"),
        ("another tenant's entity", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": foreign, "ts": t, "values": {"priority": 1}})), 404, "entity_id"),
        ("unknown entity", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": 987_654, "ts": t, "values": {"priority": 1}})), 404, "entity_id"),
        ("no values", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": e, "values": {}})), 422, "values"),
        ("missing values", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": e})), 400, "values"),
        ("tenant_id smuggled", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!({"entity_id": e, "tenant_id": 1, "values": {"priority": 1}})), 400, "tenant_id"),
        ("bad item in an array", server.as_tenant(&key, Method::POST, "/v1/telemetry")
            .json(&json!([{"entity_id": e, "ts": t, "values": {"priority": 1}}, {"entity_id": e, "ts": t, "values": {"online": "yes"}}])), 422, "[1].values.online"),
        ("empty array", server.as_tenant(&key, Method::POST, "/v1/telemetry").json(&json!([])), 422, "body"),
        ("bad durability", server.as_tenant(&key, Method::POST, "/v1/telemetry?durability=maybe").json(&one(json!({"priority": 1}))), 400, "durability"),
    ];
    for (what, req, status, field) in cases {
        let (s, body) = call(req).await;
        assert_eq!(
            assert_error(s, &body, status).as_deref(),
            Some(field),
            "{what}: {body}"
        );
    }
    assert_eq!(
        count_values(&server).await,
        0,
        "nothing written by any refused request (the valid item of a bad array included)"
    );
    let staged = server
        .scalar("SELECT count(*) FROM entity_values_ingest", &[])
        .await;
    assert_eq!(staged, 0);
    server.stop().await;
}

#[tokio::test]
async fn staged_values_and_other_producers_rows_are_flushed_in_the_background() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 1_000;
    let (s, ack) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry?durability=staged")
            .json(&json!({"entity_id": e, "ts": t, "values": {"priority": 5}})),
    )
    .await;
    assert_eq!((s, ack["durability"].as_str()), (202, Some("staged")));
    // Another program COPYs straight into staging.
    let app = server.db.app().await;
    app.execute(
        "INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, value, ingested_at) \
         SELECT $1, $2, attribute_id, 'from-sql', now() FROM attributes WHERE attribute_name = 'status'",
        &[&tenant, &e],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut stored = 0;
    for _ in 0..50 {
        stored = count_values(&server).await;
        if stored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, 2, "the background flusher stored both");
    assert_eq!(
        hot(&server, e).await,
        json!({"priority": 5, "status": "from-sql"})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let db = atlas_testkit::TestDb::new().await;
    let server = Server::configured(db, |c| {
        c.pool_size = 4;
        c.ingest.queue_rows = 3;
    })
    .await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let resp = server
        .as_tenant(&key, Method::POST, "/v1/telemetry")
        .json(&json!({"entity_id": e, "values": {"priority": 1, "online": true, "status": "a", "temperature": 1.5}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let (s, body) = crate::support::split(resp).await;
    assert_error(s, &body, 503);
    assert_eq!(count_values(&server).await, 0);
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "values": {"priority": 1}}),
    )
    .await;
    assert_eq!(s, 200, "a request that fits the queue is taken");
    server.stop().await;
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn ingest_and_http_metrics_are_exported() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let text0 = server.metrics().await;
    let outcome = |text: &str, outcome: &str| {
        metric(
            text,
            "atlas_ingest_values_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    let (stored0, replayed0, staged0) = (
        outcome(&text0, "stored"),
        outcome(&text0, "replayed"),
        outcome(&text0, "staged"),
    );
    let rejected0 = metric(
        &text0,
        "atlas_ingest_values_total",
        &["reason=\"unknown_attribute\""],
    );
    let checked = |text: &str, source: &str| {
        metric(
            text,
            "atlas_entity_checks_total",
            &[&format!("source=\"{source}\"")],
        )
    };
    let (asked0, cached0) = (checked(&text0, "database"), checked(&text0, "cache"));
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "values": {"priority": 1, "online": true}}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "values": {"nope": 1}}),
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "values": {"priority": 2}}),
    )
    .await;
    assert_eq!(s, 200);
    // A retried request: acknowledged again, stored once, counted as replayed.
    let ts = chrono::Utc::now().timestamp_millis() - 60_000;
    let retried = json!({"entity_id": e, "ts": ts,
                         "values": {"priority": 3, "online": false, "status": "r"}});
    for _ in 0..2 {
        let (s, _) = post(&server, &key, &retried).await;
        assert_eq!(s, 200);
    }
    let resp = server
        .as_tenant(&key, Method::POST, "/v1/telemetry?durability=staged")
        .json(&json!({"entity_id": e, "values": {"priority": 4}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 202);
    let text = server.metrics().await;
    // Tests share one process-wide recorder: compare deltas, not absolutes.
    // The entity was asked of the database once, then answered from the route's cache.
    assert!(checked(&text, "database") >= asked0 + 1.0, "{text}");
    assert!(checked(&text, "cache") >= cached0 + 1.0, "{text}");
    assert!(outcome(&text, "stored") >= stored0 + 5.0, "{text}");
    assert!(outcome(&text, "replayed") >= replayed0 + 3.0, "{text}");
    assert!(outcome(&text, "staged") >= staged0 + 1.0, "{text}");
    assert!(
        metric(
            &text,
            "atlas_ingest_values_total",
            &["reason=\"unknown_attribute\""]
        ) >= rejected0 + 1.0
    );
    assert!(
        metric(
            &text,
            "atlas_http_requests_total",
            &["route=\"/v1/telemetry\"", "status=\"200\""]
        ) >= 1.0
    );
    assert!(
        text.contains("atlas_ingest_flush_seconds"),
        "flush latency histogram"
    );
    assert!(
        text.contains("atlas_ingest_batch_rows"),
        "batch size histogram"
    );
    server.stop().await;
}

/// Regressions found by Schemathesis on /v1/telemetry.
#[tokio::test]
async fn schema_integers_and_nulls_are_read_as_json_schema_means_them() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 10_000;
    // 5.0 is an integer in JSON Schema; so is a ts written 123.0; null ts is "absent".
    let body = format!(
        r#"[{{"entity_id": {e}.0, "ts": {t}.0, "values": {{"priority": 1}}}}, {{"entity_id": {e}, "ts": null, "values": {{"priority": 2}}}}]"#
    );
    let (s, ack) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!((s, ack["accepted"].as_i64()), (200, Some(2)), "{ack}");
    assert_eq!(count_values(&server).await, 2);
    let body = format!(r#"{{"entity_id": {e}.5, "values": {{"priority": 1}}}}"#);
    let (s, resp) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(assert_error(s, &resp, 400).as_deref(), Some("entity_id"));
    let (s, resp) = post(
        &server,
        &key,
        &json!({"entity_id": e, "values": {"priority": 1}, "extra": 1}),
    )
    .await;
    assert_eq!(assert_error(s, &resp, 400).as_deref(), Some("extra"));
    server.stop().await;
}

/// Deletes an entity behind the server's back, as another server would.
async fn delete_in_sql(server: &Server, entity: i64) {
    server
        .db
        .admin()
        .await
        .execute(
            "UPDATE entities SET is_deleted = true WHERE entity_id = $1",
            &[&entity],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The telemetry route trusts an entity it confirmed within `entity_cache_ttl_ms`, and no
/// value for a deleted entity is ever stored: deleted through this server it is a 404 at once;
/// deleted elsewhere (here: straight in SQL) within the TTL, the values are refused with 409,
/// dead-lettered, and the entity's next request is a 404. Unknown ids are never cached, and
/// with a TTL of 0 every request asks the database.
#[tokio::test]
async fn confirmed_entities_are_trusted_for_a_while_and_deleted_ones_never_take_values() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other_key) = server.tenant("other").await;
    let ids = server.entities(&key, 2).await;
    let (here, elsewhere) = (ids[0], ids[1]);
    let t = now_ms() - 5_000;
    let reading =
        |e: i64, dt: i64| json!({"entity_id": e, "ts": t + dt, "values": {"priority": 1}});
    for e in [here, elsewhere] {
        let (s, b) = post(&server, &key, &reading(e, 0)).await;
        assert_eq!(s, 200, "{b}");
    }
    // Cached for acme, still nobody else's.
    let (s, b) = post(&server, &other_key, &reading(here, 1)).await;
    assert_eq!(assert_error(s, &b, 404).as_deref(), Some("entity_id"));

    // Deleted through this server: 404 at once.
    let (s, _) =
        call(server.as_tenant(&key, Method::DELETE, &format!("/v1/entities/{here}"))).await;
    assert_eq!(s, 204);
    let (s, b) = post(&server, &key, &reading(here, 1)).await;
    assert_eq!(
        assert_error(s, &b, 404).as_deref(),
        Some("entity_id"),
        "{b}"
    );

    // Deleted by another server: refused by the database, not stored, dead-lettered (and
    // counted so).
    let dead_lettered = || async {
        metric(
            &server.metrics().await,
            "atlas_ingest_values_total",
            &["outcome=\"dead_lettered\""],
        )
    };
    let dead_lettered0 = dead_lettered().await;
    delete_in_sql(&server, elsewhere).await;
    let (s, b) = post(&server, &key, &reading(elsewhere, 1)).await;
    assert_eq!(
        assert_error(s, &b, 409).as_deref(),
        Some("values.priority"),
        "{b}"
    );
    assert!(dead_lettered().await >= dead_lettered0 + 1.0);
    assert_eq!(
        count_values(&server).await,
        2,
        "only the two first values are stored"
    );
    let dead = server
        .scalar(
            "SELECT count(*) FROM entity_values_dead_letter WHERE entity_id = $1",
            &[&elsewhere],
        )
        .await;
    assert_eq!(dead, 1);
    let (s, b) = post(&server, &key, &reading(elsewhere, 2)).await;
    assert_eq!(
        assert_error(s, &b, 404).as_deref(),
        Some("entity_id"),
        "after a refusal the entity is asked about again: {b}"
    );
    server.stop().await;

    // TTL 0: nothing is trusted, the database's answer is a 404 at once.
    let server = Server::start_with(atlas_config::Limits {
        entity_cache_ttl: std::time::Duration::ZERO,
        ..atlas_config::Limits::default()
    })
    .await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let (s, b) = post(&server, &key, &reading(e, 0)).await;
    assert_eq!(s, 200, "{b}");
    delete_in_sql(&server, e).await;
    let (s, b) = post(&server, &key, &reading(e, 1)).await;
    assert_eq!(
        assert_error(s, &b, 404).as_deref(),
        Some("entity_id"),
        "{b}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_tenant_reads_its_own_dead_letters_newest_first_a_page_at_a_time() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 10_000;
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": e, "ts": t, "values": {"priority": 1}}),
    )
    .await;
    assert_eq!(s, 200);
    // Three conflicting readings, one request each: three dead letters.
    for v in [2, 3, 4] {
        let (s, body) = post(
            &server,
            &key,
            &json!({"entity_id": e, "ts": t, "values": {"priority": v}}),
        )
        .await;
        assert_eq!(s, 409, "{body}");
    }
    let (s, page) = call(server.as_tenant(&key, Method::GET, "/v1/dead-letters?limit=2")).await;
    assert_eq!(s, 200, "{page}");
    let values = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["value"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(values(&page), ["4", "3"], "newest first: {page}");
    let first = &page["items"][0];
    assert_eq!(first["entity_id"], json!(e));
    assert_eq!(first["attribute"], json!("priority"));
    assert!(
        first["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("already stored"),
        "{first}"
    );
    let cursor = page["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no cursor: {page}"));
    let (s, rest) = call(server.as_tenant(
        &key,
        Method::GET,
        &format!("/v1/dead-letters?limit=2&cursor={cursor}"),
    ))
    .await;
    assert_eq!(s, 200, "{rest}");
    assert_eq!(values(&rest), ["2"]);
    assert!(rest.get("next_cursor").is_none(), "{rest}");
    // Another tenant sees none of them; a malformed cursor is refused naming it.
    let (s, none) = call(server.as_tenant(&other, Method::GET, "/v1/dead-letters")).await;
    assert_eq!((s, none["items"].clone()), (200, json!([])));
    let (s, body) = call(server.as_tenant(&key, Method::GET, "/v1/dead-letters?cursor=12")).await;
    assert_eq!(assert_error(s, &body, 400).as_deref(), Some("cursor"));
    let (s, body) = call(server.as_tenant(&key, Method::GET, "/v1/dead-letters?limit=0")).await;
    assert_eq!(assert_error(s, &body, 400).as_deref(), Some("limit"));
    server.stop().await;
}

/// `GET /v1/ingest-stats?minutes` until `done` holds of it (the servers write their sums to
/// Redis once a second).
async fn ingest_stats_until(server: &Server, key: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (s, body) =
            call(server.as_tenant(key, Method::GET, "/v1/ingest-stats?minutes=5")).await;
        assert_eq!(s, 200, "{body}");
        if done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ingest figures never settled: {last}")
}

/// A tenant's ingest view: values stored, refused by reason (validation, unknown entity, a
/// conflict the database refused, the rate limit) and the latency of what was acknowledged —
/// its own only, and summed over servers in Redis.
#[tokio::test]
async fn a_tenant_sees_its_own_ingest_figures_stored_refused_by_reason_and_latency() {
    let server = Server::start_with(atlas_config::Limits {
        // 20 values, and almost no refill: the fifth request is over the limit.
        telemetry_values_per_second: 0.01,
        telemetry_values_burst: 20.0,
        ..atlas_config::Limits::default()
    })
    .await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let es = server.entities(&key, 2).await;
    let t = now_ms() - 5_000;
    let reading = |e: i64, ts: i64, p: i64| json!({"entity_id": e, "ts": ts, "values": {"priority": p, "status": "ok", "online": true}});
    // 6 stored; 1 refused by type; 1 for an unknown entity; 1 refused by the database (a
    // different value for a stored reading); 15 over the rate limit.
    let (s, body) = post(
        &server,
        &key,
        &json!([reading(es[0], t, 1), reading(es[1], t, 1)]),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": es[0], "values": {"priority": "high"}}),
    )
    .await;
    assert!(s == 400 || s == 422, "{s}");
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": 987_654_321, "values": {"priority": 1}}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = post(
        &server,
        &key,
        &json!({"entity_id": es[0], "ts": t, "values": {"priority": 2}}),
    )
    .await;
    assert_eq!(s, 409);
    let many: Vec<Value> = (0..5).map(|i| reading(es[0], t + 1 + i, 3)).collect();
    let (s, body) = post(&server, &key, &Value::Array(many)).await;
    assert_eq!(s, 429, "{body}");

    let stats = ingest_stats_until(&server, &key, |b| {
        b["stored"] == json!(6) && b["refused"].as_object().map(|r| r.len()) == Some(4)
    })
    .await;
    assert_eq!(
        stats["refused"],
        json!({"invalid_value": 1, "unknown_entity": 1, "not_stored": 1, "rate_limited": 15}),
        "{stats}"
    );
    assert_eq!(
        stats["requests"],
        json!(1),
        "only acknowledged requests are timed"
    );
    let latency = &stats["latency"];
    assert!(
        latency["mean_ms"].as_f64().is_some_and(|m| m > 0.0),
        "{stats}"
    );
    assert!(
        latency["p50_ms"].as_u64() <= latency["p99_ms"].as_u64(),
        "{stats}"
    );
    // The minutes add up to the window.
    let minutes = stats["per_minute"].as_array().cloned().unwrap_or_default();
    assert!(!minutes.is_empty(), "{stats}");
    let summed: i64 = minutes.iter().filter_map(|m| m["stored"].as_i64()).sum();
    assert_eq!(summed, 6);

    // The other tenant sees nothing of it.
    let (s, theirs) = call(server.as_tenant(&other, Method::GET, "/v1/ingest-stats")).await;
    assert_eq!(s, 200, "{theirs}");
    assert_eq!(
        (&theirs["stored"], &theirs["refused"], &theirs["per_minute"]),
        (&json!(0), &json!({}), &json!([])),
        "{theirs}"
    );
    assert!(theirs.get("latency").is_none(), "{theirs}");

    // A second server on the same database and Redis adds to the same figures.
    let second = atlas_server::Server::build(&crate::support::config_for(&server.db))
        .unwrap_or_else(|e| panic!("second server: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let base = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = second
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    let (s, body) = call(
        server
            .http
            .post(format!("{base}/v1/telemetry"))
            .bearer_auth(&key)
            .json(&reading(es[1], t + 100, 4)),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    ingest_stats_until(&server, &key, |b| {
        b["stored"] == json!(9) && b["requests"] == json!(2)
    })
    .await;
    let _ = stop.send(());
    let _ = task.await;

    // The window is checked and named.
    for bad in ["minutes=0", "minutes=1441", "minutes=ten", "hours=1"] {
        let (s, body) =
            call(server.as_tenant(&key, Method::GET, &format!("/v1/ingest-stats?{bad}"))).await;
        let field = assert_error(s, &body, 400);
        if bad.starts_with("minutes") {
            assert_eq!(field.as_deref(), Some("minutes"), "{bad}: {body}");
        }
    }
    server.stop().await;
}
