//! The data lifecycle: rollups equal aggregating the raw values (before and after the
//! maintainer, with late, replayed and out-of-order readings, across bucket and partition
//! boundaries), the multi-series query, and tenant isolation of both.

use atlas_testkit::Rng;
use chrono::{DateTime, Duration, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Server, assert_error, call};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

async fn catalogue(server: &Server) {
    for (name, t) in [
        ("temperature", "decimal"),
        ("count", "integer"),
        ("open", "boolean"),
        ("mode", "string"),
    ] {
        server
            .define(json!({"attribute_name": name, "data_type": t}))
            .await;
    }
}

async fn write(server: &Server, key: &str, items: Vec<Value>) {
    for chunk in items.chunks(2_000) {
        let (s, b) = call(
            server
                .as_tenant(key, Method::POST, "/v1/telemetry")
                .json(&Value::Array(chunk.to_vec())),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
}

/// Random readings of the four attributes for `entities`, at times in `[from, to)` (ms),
/// shuffled (out of order).
fn readings(rng: &mut Rng, entities: &[i64], from: i64, to: i64, n: usize) -> Vec<Value> {
    let span = u64::try_from(to - from).unwrap_or(1);
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let e = entities[usize::try_from(rng.below(entities.len() as u64)).unwrap_or(0)];
        let ts = from + rng.below(span);
        let values = match rng.below(4) {
            0 => {
                let t: f64 = format!("{}.{:02}", rng.below(200) - 100, rng.below(100))
                    .parse()
                    .unwrap_or(0.0);
                json!({ "temperature": t })
            }
            1 => json!({"count": rng.below(1_000_000) - 500_000}),
            2 => json!({"open": rng.below(2) == 1}),
            _ => {
                let mode = ["eco", "boost", "off"][usize::try_from(rng.below(3)).unwrap_or(0)];
                json!({ "mode": mode })
            }
        };
        items.push(json!({"entity_id": e, "ts": ts, "values": values}));
    }
    items
}

fn maintainer(server: &Server) -> atlas_maintain::Maintainer {
    atlas_maintain::Maintainer::new(server.db.store(2), atlas_maintain::Settings::default())
}

/// Rows of rollup level `table` that differ from aggregating its source (raw values for
/// `rollup_1m`, the finer level for the others), both ways.
async fn level_mismatches(server: &Server, table: &str, tenant: i64) -> i64 {
    let raw = "SELECT ev.tenant_id, ev.entity_id, ev.attribute_id, date_trunc('minute', ev.ingested_at) AS bucket, \
                      count(*) AS n, sum(x) AS sum, min(x) AS min, max(x) AS max, min(ev.ingested_at) AS first_at, \
                      (array_agg(x ORDER BY ev.ingested_at))[1] AS first_value, max(ev.ingested_at) AS last_at, \
                      (array_agg(x ORDER BY ev.ingested_at DESC))[1] AS last_value \
               FROM entity_values_ts ev \
               CROSS JOIN LATERAL (SELECT coalesce(ev.value_int::numeric, ev.value_decimal, ev.value_bool::int::numeric) AS x) v \
               WHERE ev.tenant_id = $1 GROUP BY 1, 2, 3, 4";
    let from_level = |finer: &str, unit: &str| {
        format!(
            "SELECT tenant_id, entity_id, attribute_id, date_trunc('{unit}', bucket) AS bucket, sum(n)::bigint, \
                    sum(sum), min(min), max(max), min(first_at), (array_agg(first_value ORDER BY first_at))[1], \
                    max(last_at), (array_agg(last_value ORDER BY last_at DESC))[1] \
             FROM {finer} WHERE tenant_id = $1 GROUP BY 1, 2, 3, 4"
        )
    };
    let expected = match table {
        "rollup_1m" => raw.to_owned(),
        "rollup_1h" => from_level("rollup_1m", "hour"),
        _ => from_level("rollup_1h", "day"),
    };
    let actual = format!(
        "SELECT tenant_id, entity_id, attribute_id, bucket, n, sum, min, max, first_at, first_value, last_at, last_value \
         FROM {table} WHERE tenant_id = $1"
    );
    server
        .scalar(
            &format!(
                "SELECT count(*) FROM (({expected} EXCEPT {actual}) UNION ALL ({actual} EXCEPT {expected})) d"
            ),
            &[&tenant],
        )
        .await
}

/// What `/v1/aggregates` must answer, computed from the raw values: (bucket start ms, value
/// as JSON, count).
async fn raw_aggregate(
    server: &Server,
    tenant: i64,
    attribute: &str,
    func: &str,
    (from, to): (i64, i64),
    width: i64,
    entity: Option<i64>,
) -> Vec<(i64, Value, i64)> {
    let agg = match func {
        "avg" => "trim_scale(round(avg(x), 10))",
        "min" => "trim_scale(min(x))",
        "max" => "trim_scale(max(x))",
        "sum" => "trim_scale(sum(x))",
        "count" => "count(*)::numeric",
        "first" => "trim_scale((array_agg(x ORDER BY ev.ingested_at))[1])",
        _ => "trim_scale((array_agg(x ORDER BY ev.ingested_at DESC))[1])",
    };
    let sql = format!(
        "SELECT (extract(epoch FROM date_bin($5::bigint * interval '1 millisecond', ev.ingested_at, \
                 timestamptz '2000-01-01 00:00:00+00')) * 1000)::bigint AS b, {agg}::text, count(*) \
         FROM entity_values_ts ev JOIN attributes a ON a.attribute_id = ev.attribute_id \
         CROSS JOIN LATERAL (SELECT coalesce(ev.value_int::numeric, ev.value_decimal, ev.value_bool::int::numeric) AS x) v \
         WHERE ev.tenant_id = $1 AND a.attribute_name = $2 \
           AND ev.ingested_at >= to_timestamp($3::bigint / 1000.0) AND ev.ingested_at < to_timestamp($4::bigint / 1000.0) \
           AND ($6::bigint IS NULL OR ev.entity_id = $6) \
         GROUP BY 1 ORDER BY 1"
    );
    let admin = server.db.admin().await;
    admin
        .query(&sql, &[&tenant, &attribute, &from, &to, &width, &entity])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| {
            let v: String = r.get(1);
            (
                r.get(0),
                serde_json::from_str(&v).unwrap_or(Value::Null),
                r.get(2),
            )
        })
        .collect()
}

async fn api_aggregate(
    server: &Server,
    key: &str,
    attribute: &str,
    func: &str,
    (from, to): (i64, i64),
    bucket: &str,
    entity: Option<i64>,
) -> Vec<(i64, Value, i64)> {
    let (s, b) = call(server.as_tenant(
        key,
        Method::GET,
        &format!(
            "/v1/aggregates?attribute={attribute}&fn={func}&from={from}&to={to}&bucket={bucket}{}",
            entity.map(|e| format!("&entity_id={e}")).unwrap_or_default()
        ),
    ))
    .await;
    assert_eq!(s, 200, "{b}");
    b["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{b}"))
        .iter()
        .map(|i| {
            (
                i["ts"].as_i64().unwrap_or(-1),
                i["value"].clone(),
                i["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// Every function and a set of bucket widths, over ranges with ragged edges: the API equals
/// the raw values' aggregate. Tenant-wide (the database groups every source by bucket), or
/// for one entity (level rows combined by the server where a bucket holds a few: 2 h over
/// hours, 2 d over days).
async fn assert_reads_equal_raw(
    server: &Server,
    tenant: i64,
    key: &str,
    from: i64,
    to: i64,
    entity: Option<i64>,
) {
    let widths: &[(&str, i64)] = if entity.is_some() {
        &[("1h", HOUR), ("2h", 2 * HOUR), ("1d", DAY), ("2d", 2 * DAY)]
    } else {
        &[
            ("1h", HOUR),
            ("1d", DAY),
            ("90m", 90 * MIN),
            ("7d", 7 * DAY),
        ]
    };
    // Ranges that start and end inside minutes, hours and days.
    let ranges = [
        (from, to),
        (from + 7 * HOUR + 13 * MIN + 1_234, to - 5 * HOUR - 59_999),
    ];
    for attribute in ["temperature", "count", "open"] {
        for func in ["avg", "min", "max", "sum", "count", "first", "last"] {
            for &(name, w) in widths {
                for (a, b) in ranges {
                    let want =
                        raw_aggregate(server, tenant, attribute, func, (a, b), w, entity).await;
                    let got =
                        api_aggregate(server, key, attribute, func, (a, b), name, entity).await;
                    assert_eq!(got, want, "{attribute} {func} {name} [{a}, {b}) {entity:?}");
                }
            }
        }
    }
    // Counts of strings come from the rollups too.
    let want = raw_aggregate(server, tenant, "mode", "count", (from, to), DAY, entity).await;
    let got = api_aggregate(server, key, "mode", "count", (from, to), "1d", entity).await;
    assert_eq!(got, want, "mode count");
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

#[tokio::test]
async fn rollups_equal_the_raw_aggregates_before_and_after_maintenance_with_late_and_replayed_values()
 {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 4).await;
    let now = Utc::now();
    // 45 days back: at least one month (partition) boundary inside.
    let from = ms(now - Duration::days(45));
    let to = ms(now);
    let m = maintainer(&server);
    m.backfill(now - Duration::days(46), now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let first = readings(&mut rng, &e, from, to, 4_000);
    write(&server, &key, first.clone()).await;
    // Not rolled up yet: everything is dirty and read from raw values.
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, None).await;

    let done = m
        .rollups(now + Duration::days(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(done > 0);
    for level in ["rollup_1m", "rollup_1h", "rollup_1d"] {
        assert_eq!(level_mismatches(&server, level, tenant).await, 0, "{level}");
    }
    assert_eq!(
        server
            .scalar(
                "SELECT count(*) FROM rollup_dirty WHERE tenant_id = $1",
                &[&tenant]
            )
            .await,
        0
    );
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, None).await;
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, Some(e[1])).await;

    // Late readings into rolled-up buckets, a replay of the first batch (no-op) and new
    // minutes: reads stay exact before the maintainer runs, and after.
    let late = readings(&mut rng, &e, from, to, 600);
    write(&server, &key, late).await;
    write(&server, &key, first[..500].to_vec()).await;
    assert!(
        server
            .scalar(
                "SELECT count(*) FROM rollup_dirty WHERE tenant_id = $1",
                &[&tenant]
            )
            .await
            > 0
    );
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, None).await;
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, Some(e[1])).await;
    m.rollups(now + Duration::days(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for level in ["rollup_1m", "rollup_1h", "rollup_1d"] {
        assert_eq!(level_mismatches(&server, level, tenant).await, 0, "{level}");
    }
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, None).await;
    assert_reads_equal_raw(&server, tenant, &key, from, to + 1, Some(e[1])).await;

    // A year-long range answers (whole-minute buckets come from the rollups).
    let (s, b) = call(server.as_tenant(
        &key,
        Method::GET,
        &format!(
            "/v1/aggregates?attribute=temperature&fn=max&from={}&to={to}&bucket=1d",
            ms(now - Duration::days(365))
        ),
    ))
    .await;
    assert_eq!(s, 200, "{b}");
    // A deleted entity's values leave the rollup-served aggregates too.
    let before = api_aggregate(&server, &key, "count", "count", (from, to + 1), "7d", None).await;
    let (s, _) =
        call(server.as_tenant(&key, Method::DELETE, &format!("/v1/entities/{}", e[0]))).await;
    assert_eq!(s, 204);
    let after = api_aggregate(&server, &key, "count", "count", (from, to + 1), "7d", None).await;
    let total = |v: &[(i64, Value, i64)]| v.iter().map(|x| x.2).sum::<i64>();
    let of_e0 = server
        .scalar(
            "SELECT count(*) FROM entity_values_ts ev JOIN attributes a USING (attribute_id) \
             WHERE ev.tenant_id = $1 AND ev.entity_id = $2 AND a.attribute_name = 'count'",
            &[&tenant, &e[0]],
        )
        .await;
    assert!(of_e0 > 0);
    assert_eq!(total(&after), total(&before) - of_e0);
}

#[tokio::test]
async fn a_writer_still_running_when_its_minute_is_claimed_is_in_the_rollup() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await;
    let minute = (ms(Utc::now()) / MIN - 5) * MIN;
    // One committed value makes the minute's mark…
    write(
        &server,
        &key,
        vec![json!({"entity_id": e[0], "ts": minute + 1_000, "values": {"count": 1}})],
    )
    .await;
    // …and a second writer stores into the same minute (finding the mark there: it inserts
    // none) and has not committed when the maintainer claims the mark.
    let mut writer = server.db.admin().await;
    let tx = writer.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    let attr = server
        .scalar(
            "SELECT attribute_id FROM attributes WHERE attribute_name = 'count'",
            &[],
        )
        .await;
    tx.execute(
        "SELECT * FROM ingest_rows(ARRAY[ROW($1, $2, $3, NULL, 41, NULL, NULL, NULL, NULL, \
             to_timestamp($4::bigint / 1000.0), NULL)::entity_values_ingest])",
        &[&e[0], &tenant, &attr, &(minute + 2_000)],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let m = maintainer(&server);
    let run = tokio::spawn(async move { m.rollups(Utc::now() + Duration::hours(1)).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !run.is_finished(),
        "the claim must wait for the running writer"
    );
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    run.await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        server
            .scalar(
                "SELECT sum::bigint FROM rollup_1m WHERE tenant_id = $1 AND entity_id = $2",
                &[&tenant, &e[0]]
            )
            .await,
        42
    );
    assert_eq!(level_mismatches(&server, "rollup_1m", tenant).await, 0);
}

#[tokio::test]
async fn the_multi_series_query_returns_one_series_per_entity_and_attribute() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other_key) = server.tenant("globex").await;
    let e = server.entities(&key, 3).await;
    let theirs = server.entities(&other_key, 1).await;
    let base = (ms(Utc::now()) / DAY - 2) * DAY;
    let mut items = Vec::new();
    for (i, id) in e.iter().enumerate() {
        let i = i64::try_from(i).unwrap_or_default();
        for h in 0..24 {
            items.push(json!({"entity_id": id, "ts": base + h * HOUR, "values": {"temperature": i * 100 + h, "count": h}}));
        }
    }
    write(&server, &key, items).await;
    maintainer(&server)
        .rollups(Utc::now() + Duration::days(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let query = |body: Value| {
        let server = &server;
        let key = key.clone();
        async move {
            call(
                server
                    .as_tenant(&key, Method::POST, "/v1/query")
                    .json(&body),
            )
            .await
        }
    };
    let (s, b) = query(json!({
        "attributes": ["temperature", "count"], "entity_ids": [e[0], e[2]],
        "from": base, "to": base + DAY, "fn": "max", "max_points": 4
    }))
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["bucket"], "6h");
    let series = b["series"].as_array().unwrap_or_else(|| panic!("{b}"));
    let shape: Vec<(i64, &str, usize)> = series
        .iter()
        .map(|s| {
            (
                s["entity_id"].as_i64().unwrap_or(-1),
                s["attribute"].as_str().unwrap_or(""),
                s["points"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (e[0], "temperature", 4),
            (e[0], "count", 4),
            (e[2], "temperature", 4),
            (e[2], "count", 4)
        ]
    );
    assert_eq!(
        series[2]["points"][3],
        json!({"ts": base + 18 * HOUR, "value": 223, "count": 6})
    );
    // By type, with an explicit bucket given in milliseconds.
    let (s, b) = query(json!({
        "attributes": ["count"], "entity_type": "sensor",
        "from": base, "to": base + DAY, "fn": "sum", "bucket": DAY
    }))
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["series"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        b["series"][1]["points"],
        json!([{"ts": base, "value": 276, "count": 24}])
    );

    // Another tenant's entity is not found - named by its place in the request.
    let (s, b) = query(json!({
        "attributes": ["count"], "entity_ids": [e[0], theirs[0]],
        "from": base, "to": base + DAY, "fn": "sum"
    }))
    .await;
    assert_eq!(assert_error(s, &b, 404).as_deref(), Some("entity_ids[1]"));
    // Bad inputs name their field.
    for (body, status, field) in [
        (
            json!({"attributes": [], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "sum"}),
            422,
            "attributes",
        ),
        (
            json!({"attributes": ["nope"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "sum"}),
            404,
            "attributes[0]",
        ),
        (
            json!({"attributes": ["mode"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "avg"}),
            422,
            "attributes[0]",
        ),
        (
            json!({"attributes": ["count"], "from": base, "to": base + DAY, "fn": "sum"}),
            400,
            "entity_ids",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "entity_type": "sensor", "from": base, "to": base + DAY, "fn": "sum"}),
            422,
            "entity_type",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "median"}),
            400,
            "fn",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "sum", "bucket": "7x"}),
            400,
            "bucket",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "sum", "bucket": "1h", "max_points": 5}),
            422,
            "max_points",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "sum", "max_points": 0}),
            422,
            "max_points",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base + DAY, "to": base, "fn": "sum"}),
            422,
            "to",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": true, "to": base, "fn": "sum"}),
            400,
            "from",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base - 400 * DAY, "to": base, "fn": "sum", "bucket": "30s"}),
            422,
            "bucket",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base - 40 * DAY, "to": base, "fn": "sum", "bucket": "350s"}),
            422,
            "to",
        ),
        (
            json!({"attributes": ["count"], "entity_ids": [e[0]], "from": base, "to": base + DAY, "fn": "sum", "extra": 1}),
            400,
            "extra",
        ),
    ] {
        let (s, b) = query(body.clone()).await;
        assert_eq!(
            assert_error(s, &b, status).as_deref(),
            Some(field),
            "{body}: {b}"
        );
    }
}

#[tokio::test]
async fn rollups_and_marks_are_tenant_isolated_and_closed_without_a_tenant() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (a, key_a) = server.tenant("acme").await;
    let (b, key_b) = server.tenant("globex").await;
    let ea = server.entities(&key_a, 1).await;
    let eb = server.entities(&key_b, 1).await;
    let t = (ms(Utc::now()) / MIN - 3) * MIN;
    write(
        &server,
        &key_a,
        vec![json!({"entity_id": ea[0], "ts": t, "values": {"count": 5}})],
    )
    .await;
    write(
        &server,
        &key_b,
        vec![json!({"entity_id": eb[0], "ts": t, "values": {"count": 7}})],
    )
    .await;
    // An open mark of each tenant, then rolled up rows of each.
    let app = server.db.app().await;
    for table in [
        "rollup_dirty",
        "rollup_claimed",
        "rollup_1m",
        "rollup_1h",
        "rollup_1d",
    ] {
        let rows: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        assert_eq!(rows, 0, "{table} without a tenant");
    }
    maintainer(&server)
        .rollups(Utc::now() + Duration::days(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut app = server.db.app().await;
    for table in ["rollup_1m", "rollup_1h", "rollup_1d"] {
        let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        tx.execute("SELECT set_tenant($1)", &[&a])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let tenants: Vec<i64> = tx
            .query(&format!("SELECT DISTINCT tenant_id FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tenants, [a], "{table}");
        // Writing another tenant's rollup row is refused.
        let denied = tx
            .execute(
                &format!(
                    "INSERT INTO {table} (tenant_id, entity_id, attribute_id, bucket, n, first_at, last_at) \
                     VALUES ($1, 1, 1, now(), 1, now(), now())"
                ),
                &[&b],
            )
            .await;
        assert!(denied.is_err(), "{table}");
        drop(tx);
        let none: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        assert_eq!(none, 0, "{table} without a tenant");
    }
    // Through the API, each tenant's aggregate holds its value only.
    let from = t - HOUR;
    let to = t + HOUR;
    assert_eq!(
        api_aggregate(&server, &key_a, "count", "sum", (from, to), "1d", None).await[0].1,
        json!(5)
    );
    assert_eq!(
        api_aggregate(&server, &key_b, "count", "sum", (from, to), "1d", None).await[0].1,
        json!(7)
    );
}

async fn set_limits(server: &Server, tenant: i64, body: Value) -> Value {
    let (s, b) = call(
        server
            .admin(Method::PATCH, &format!("/v1/admin/tenants/{tenant}/limits"))
            .json(&body),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b
}

async fn count(server: &Server, sql: &str, tenant: i64) -> i64 {
    server.scalar(sql, &[&tenant]).await
}

#[tokio::test]
async fn retention_per_tenant_removes_only_that_tenants_expired_data_without_blocking_ingest() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (a, key_a) = server.tenant("acme").await;
    let (b, key_b) = server.tenant("globex").await;
    let ea = server.entities(&key_a, 2).await;
    let eb = server.entities(&key_b, 2).await;
    let now = Utc::now();
    // Raw values are kept 30 days unless a tenant says otherwise.
    let settings = atlas_maintain::Settings {
        retention: Some(Duration::days(30)),
        ..atlas_maintain::Settings::default()
    };
    let m = atlas_maintain::Maintainer::new(server.db.store(2), settings.clone());
    m.backfill(now - Duration::days(21), now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Each tenant: values 20 days and 2 days old, rolled up; a dead letter 40 days old.
    for (key, e) in [(&key_a, &ea), (&key_b, &eb)] {
        let mut items = Vec::new();
        for age in [20, 2] {
            for h in 0..3 {
                items.push(
                    json!({"entity_id": e[0], "ts": ms(now - Duration::days(age)) + h * HOUR,
                                  "values": {"count": age * 10 + h}}),
                );
            }
        }
        write(&server, key, items).await;
    }
    m.rollups(now + Duration::days(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .db
        .admin()
        .await
        .execute(
            "INSERT INTO entity_values_dead_letter (tenant_id, entity_id, attribute_id, value_int, ingested_at, reason, failed_at) \
             SELECT t, 1, 1, 1, now(), 'test', now() - interval '40 days' FROM unnest($1::bigint[]) t",
            &[&vec![a, b]],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // acme keeps raw values 7 days and minutes 5 days; globex keeps its values and dead
    // letters for ever.
    let doc = set_limits(&server, a, json!({"raw_days": 7, "rollup_1m_days": 5})).await;
    assert_eq!(doc["limits"]["raw_days"], 7);
    assert_eq!(doc["overrides"]["rollup_1h_days"], Value::Null);
    assert_eq!(doc["limits"]["rollup_1h_days"], 400);
    set_limits(&server, b, json!({"raw_days": 0, "dead_letter_days": 0})).await;

    // 200 000 expired values of acme (the purge takes a while), written straight in.
    let attr = server
        .scalar(
            "SELECT attribute_id FROM attributes WHERE attribute_name = 'count'",
            &[],
        )
        .await;
    server
        .db
        .admin()
        .await
        .execute(
            "INSERT INTO entity_values_ts (tenant_id, entity_id, attribute_id, value_int, ingested_at) \
             SELECT $1, $2, $3, g, now() - interval '15 days' + g * interval '1 ms' FROM generate_series(1, 200000) g",
            &[&a, &ea[1], &attr],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = m
        .retention_plan(now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // globex keeps its values for ever: no partition may go.
    assert_eq!(plan.drop_before, None);
    let purge = tokio::spawn(async move { m.purge(&plan.purges).await });
    // Both tenants write while it runs.
    let mut writes = 0;
    while !purge.is_finished() {
        for (key, e) in [(&key_a, &ea), (&key_b, &eb)] {
            write(
                &server,
                key,
                vec![json!({"entity_id": e[0], "values": {"count": writes}})],
            )
            .await;
        }
        writes += 1;
    }
    let purged = purge
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(purged >= 200_003, "{purged}");
    assert!(writes > 0, "the writes ran alongside the purge");
    let horizon_a = "now() - interval '7 days'";
    assert_eq!(
        count(&server, &format!("SELECT count(*) FROM entity_values_ts WHERE tenant_id = $1 AND ingested_at < {horizon_a}"), a).await,
        0
    );
    // Its recent values, and every value of globex, remain.
    assert_eq!(
        count(&server, "SELECT count(*) FROM entity_values_ts WHERE tenant_id = $1 AND ingested_at < now() - interval '1 day' AND ingested_at > now() - interval '3 days'", a).await,
        3
    );
    assert_eq!(
        count(&server, "SELECT count(*) FROM entity_values_ts WHERE tenant_id = $1 AND ingested_at < now() - interval '1 day'", b).await,
        6
    );
    // acme's old minutes went; its hours and days stay after their values; globex's minutes stay.
    assert_eq!(
        count(&server, "SELECT count(*) FROM rollup_1m WHERE tenant_id = $1 AND bucket < now() - interval '5 days'", a).await,
        0
    );
    assert_eq!(
        count(&server, "SELECT count(*) FROM rollup_1h WHERE tenant_id = $1 AND bucket < now() - interval '19 days'", a).await,
        3
    );
    assert_eq!(
        count(&server, "SELECT count(*) FROM rollup_1m WHERE tenant_id = $1 AND bucket < now() - interval '19 days'", b).await,
        3
    );
    // The 20-day-old aggregate of acme is still answered, from its hours.
    let old = api_aggregate(
        &server,
        &key_a,
        "count",
        "sum",
        (ms(now - Duration::days(21)), ms(now - Duration::days(19))),
        "1d",
        None,
    )
    .await;
    assert_eq!(old.iter().map(|b| b.2).sum::<i64>(), 3, "{old:?}");
    // Dead letters: acme's (default 30 days) went, globex's (kept for ever) stay.
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM entity_values_dead_letter WHERE tenant_id = $1",
            a
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM entity_values_dead_letter WHERE tenant_id = $1",
            b
        )
        .await,
        1
    );

    // When every tenant's values expire, partitions older than the longest retention go whole.
    set_limits(&server, b, json!({"raw_days": null})).await;
    let plan = atlas_maintain::Maintainer::new(server.db.store(2), settings)
        .retention_plan(now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.drop_before, Some(now - Duration::days(30)));
    assert!(plan.purges.iter().any(|p| p.tenant_id == a && p.kind == 0));
    assert!(!plan.purges.iter().any(|p| p.tenant_id == b && p.kind == 0));
}

#[tokio::test]
async fn quotas_refuse_whole_requests_with_their_name_and_a_raise_applies_at_once() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (a, key_a) = server.tenant("acme").await;
    let (_, key_b) = server.tenant("globex").await;
    let register = |key: &str, n: usize| {
        let body = Value::Array(vec![json!({"entity_type": "sensor"}); n]);
        call(
            server
                .as_tenant(key, Method::POST, "/v1/entities")
                .json(&body),
        )
    };
    // Entities.
    set_limits(&server, a, json!({"max_entities": 3})).await;
    let (s, b) = register(&key_a, 2).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = register(&key_a, 2).await;
    assert_eq!(
        assert_error(s, &b, 409).as_deref(),
        Some("max_entities"),
        "{b}"
    );
    assert_eq!(b["error"]["code"], "quota_exceeded");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_entities of 3"),
        "{b}"
    );
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM entities WHERE tenant_id = $1",
            a
        )
        .await,
        2
    );
    let (s, _) = register(&key_b, 5).await;
    assert_eq!(s, 201, "another tenant is not limited");
    set_limits(&server, a, json!({"max_entities": 4})).await;
    let (s, b) = register(&key_a, 2).await;
    assert_eq!(s, 201, "{b}");
    // Concurrent registrations at the edge: exactly the room left is taken.
    set_limits(&server, a, json!({"max_entities": 9})).await;
    let results = futures_util::future::join_all((0..10).map(|_| register(&key_a, 1))).await;
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 5);
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 409));
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM entities WHERE tenant_id = $1 AND NOT is_deleted",
            a
        )
        .await,
        9
    );
    let ids: Vec<i64> = server
        .db
        .admin()
        .await
        .query(
            "SELECT entity_id FROM entities WHERE tenant_id = $1 ORDER BY 1",
            &[&a],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();

    // Values per day: a request that would pass the quota is refused whole, with Retry-After.
    set_limits(&server, a, json!({"max_values_per_day": 10})).await;
    let values = |n: i64| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"entity_id": ids[0], "values": {"count": i}}))
            .collect()
    };
    let stored = || {
        count(
            &server,
            "SELECT count(*) FROM entity_values_ts WHERE tenant_id = $1",
            a,
        )
    };
    write(&server, &key_a, values(6)).await;
    let resp = server
        .as_tenant(&key_a, Method::POST, "/v1/telemetry")
        .json(&Value::Array(values(5)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (s, b) = crate::support::split(resp).await;
    assert_eq!(
        assert_error(s, &b, 429).as_deref(),
        Some("max_values_per_day"),
        "{b}"
    );
    assert!(
        retry.is_some_and(|r| (1..=86_400).contains(&r)),
        "{retry:?}"
    );
    assert_eq!(stored().await, 6);
    write(&server, &key_a, values(4)).await;
    assert_eq!(stored().await, 10);
    set_limits(&server, a, json!({"max_values_per_day": 20})).await;
    write(&server, &key_a, values(5)).await;
    assert_eq!(stored().await, 15);
    let (s, me) = call(server.as_tenant(&key_a, Method::GET, "/v1/me")).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["limits"]["max_values_per_day"], 20);
    assert_eq!(me["limits"]["max_entities"], 9);
    assert_eq!(me["usage"]["values_today"], 15);
    assert_eq!(me["usage"]["entities"], 9);

    // Stored values (as of the statistics refresh): at the quota, writes are refused.
    maintainer(&server)
        .refresh_stats()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    set_limits(
        &server,
        a,
        json!({"max_stored_values": 15, "max_values_per_day": null}),
    )
    .await;
    let (s, b) = call(
        server
            .as_tenant(&key_a, Method::POST, "/v1/telemetry")
            .json(&Value::Array(values(1))),
    )
    .await;
    assert_eq!(
        assert_error(s, &b, 409).as_deref(),
        Some("max_stored_values"),
        "{b}"
    );
    assert_eq!(stored().await, 15);
    set_limits(&server, a, json!({"max_stored_values": 1000})).await;
    write(&server, &key_a, values(1)).await;
    assert_eq!(stored().await, 16);
    let (_, me) = call(server.as_tenant(&key_a, Method::GET, "/v1/me")).await;
    assert_eq!(me["usage"]["stored_values"], 15);
    assert_eq!(me["limits"]["max_values_per_day"], 0);
}

#[tokio::test]
async fn the_limits_api_refuses_bad_input_naming_the_field() {
    let server = Server::start().await;
    let (a, key) = server.tenant("acme").await;
    let path = format!("/v1/admin/tenants/{a}/limits");
    for (body, status, field) in [
        (json!({"max_entities": -1}), 422, "max_entities"),
        (json!({"raw_days": 40000}), 422, "raw_days"),
        (json!({"raw_days": 1.5}), 400, "raw_days"),
        (json!({"raw_days": "7"}), 400, "raw_days"),
        (json!({"bogus": 1}), 400, "bogus"),
    ] {
        let (s, b) = call(server.admin(Method::PATCH, &path).json(&body)).await;
        assert_eq!(
            assert_error(s, &b, status).as_deref(),
            Some(field),
            "{body}: {b}"
        );
    }
    let (s, b) = call(server.admin(Method::GET, &path)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["overrides"]["raw_days"],
        Value::Null,
        "nothing was changed"
    );
    for (method, p) in [
        (Method::GET, "/v1/admin/tenants/999999/limits"),
        (Method::PATCH, "/v1/admin/tenants/999999/limits"),
    ] {
        let (s, b) = call(server.admin(method, p).json(&json!({"raw_days": 1}))).await;
        assert_error(s, &b, 404);
    }
    // A tenant key is not the admin token.
    let (s, b) = call(
        server
            .as_tenant(&key, Method::PATCH, &path)
            .json(&json!({"max_entities": 0})),
    )
    .await;
    assert_error(s, &b, 401);
    // null returns a limit to the default.
    set_limits(&server, a, json!({"max_entities": 5})).await;
    let doc = set_limits(&server, a, json!({"max_entities": null})).await;
    assert_eq!(doc["overrides"]["max_entities"], Value::Null);
    assert_eq!(doc["limits"]["max_entities"], 0);
}
