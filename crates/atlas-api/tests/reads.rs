//! The read API: hot attributes through Redis, search, latest, series, aggregates, stats,
//! cached entity lists, the `is_hot` backfill/clear, the stale-set race and Redis outages.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Server, assert_error, call, get_cached};

/// status (hot string), priority (hot integer), temperature (cold decimal), mode (cold string).
async fn catalogue(server: &Server) {
    server
        .define(json!({"attribute_name": "status", "data_type": "string", "is_hot": true}))
        .await;
    server
        .define(json!({"attribute_name": "priority", "data_type": "integer", "is_hot": true}))
        .await;
    server
        .define(json!({"attribute_name": "temperature", "data_type": "decimal"}))
        .await;
    server
        .define(json!({"attribute_name": "mode", "data_type": "string"}))
        .await;
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn write(server: &Server, key: &str, body: Value) {
    let (s, b) = call(
        server
            .as_tenant(key, Method::POST, "/v1/telemetry")
            .json(&body),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

async fn get(server: &Server, key: &str, path: &str) -> (u16, Value) {
    call(server.as_tenant(key, Method::GET, path)).await
}

async fn search(server: &Server, key: &str, body: Value) -> (u16, Value) {
    call(
        server
            .as_tenant(key, Method::POST, "/v1/entities/search")
            .json(&body),
    )
    .await
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|i| i["entity_id"].as_i64().unwrap_or_default())
        .collect()
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn delete(server: &Server, key: &str, id: i64) {
    let (s, b) = call(server.as_tenant(key, Method::DELETE, &format!("/v1/entities/{id}"))).await;
    assert_eq!(s, 204, "{b}");
}

#[tokio::test]
async fn hot_attributes_are_served_from_redis_and_every_write_invalidates_them() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let e = server.entities(&key, 2).await;
    let t = now_ms() - 60_000;
    write(
        &server,
        &key,
        json!({"entity_id": e[0], "ts": t, "values": {"status": "online", "priority": 8, "temperature": 21.5}}),
    )
    .await;

    let path = format!("/v1/entities/{}/attributes", e[0]);
    let (s, first, c1) = get_cached(&server, &key, &path).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(c1, "miss");
    assert_eq!(
        first["attributes"],
        json!({"status": "online", "priority": 8})
    );
    assert_eq!(first["ts"], json!({"status": t, "priority": t}));
    let (_, second, c2) = get_cached(&server, &key, &path).await;
    assert_eq!((c2.as_str(), &second), ("hit", &first));

    // Redis holds it under the tenant's key with the seed's 300 s TTL (jittered ±10 %).
    let mut redis = redis_conn(&server.db.urls.redis_url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(server.state.cache().entity_key(tenant, e[0]))
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!((200_000..=330_000).contains(&ttl), "ttl {ttl}");

    // A newer value: the next read misses and shows it; an older one changes nothing.
    write(
        &server,
        &key,
        json!({"entity_id": e[0], "ts": t + 1000, "values": {"status": "offline"}}),
    )
    .await;
    let (_, after, c3) = get_cached(&server, &key, &path).await;
    assert_eq!(c3, "miss");
    assert_eq!(after["attributes"]["status"], "offline");
    write(
        &server,
        &key,
        json!({"entity_id": e[0], "ts": t - 1000, "values": {"status": "booting"}}),
    )
    .await;
    let (_, late, _) = get_cached(&server, &key, &path).await;
    assert_eq!(late["attributes"]["status"], "offline");

    // No hot values yet: an empty object. Another tenant's entity, an unknown id: 404.
    let (s, empty) = get(&server, &key, &format!("/v1/entities/{}/attributes", e[1])).await;
    assert_eq!((s, &empty["attributes"]), (200, &json!({})));
    let (s, b) = get(&server, &other, &path).await;
    assert_error(s, &b, 404);
    let (s, b) = get(&server, &key, "/v1/entities/999999999/attributes").await;
    assert_error(s, &b, 404);

    // Deleted after being cached: gone at once.
    delete(&server, &key, e[0]).await;
    let (s, b) = get(&server, &key, &path).await;
    assert_error(s, &b, 404);

    // Hits and misses are exported.
    let metrics = server.metrics().await;
    for series in [
        "atlas_cache_requests_total{kind=\"entity\",result=\"hit\"}",
        "atlas_cache_requests_total{kind=\"entity\",result=\"miss\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    server.stop().await;
}

#[tokio::test]
async fn search_serves_every_operator_with_pagination_types_and_isolation() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let e = server.entities(&key, 6).await;
    let theirs = server.entities(&other, 1).await[0];
    let t = now_ms() - 60_000;
    let statuses = ["online", "online", "offline", "online", "maintenance"];
    for (i, s) in statuses.iter().enumerate() {
        write(
            &server,
            &key,
            json!({"entity_id": e[i], "ts": t, "values": {"status": s, "priority": i}}),
        )
        .await;
    }
    // e[5] has only a priority; the other tenant's entity is online too.
    write(
        &server,
        &key,
        json!({"entity_id": e[5], "ts": t, "values": {"priority": 9}}),
    )
    .await;
    write(
        &server,
        &other,
        json!({"entity_id": theirs, "ts": t, "values": {"status": "online"}}),
    )
    .await;

    let (s, online) = search(&server, &key, json!({"contains": {"status": "online"}})).await;
    assert_eq!(s, 200, "{online}");
    assert_eq!(ids(&online), vec![e[0], e[1], e[3]]);
    assert_eq!(online["items"][0]["entity_type"], "sensor");
    assert_eq!(online["items"][0]["attributes"]["priority"], 0);

    // Typed containment: the integer 2 matches, the string "2" does not.
    let (_, typed) = search(&server, &key, json!({"contains": {"priority": 2}})).await;
    assert_eq!(ids(&typed), vec![e[2]]);
    let (_, untyped) = search(&server, &key, json!({"contains": {"priority": "2"}})).await;
    assert_eq!(ids(&untyped), Vec::<i64>::new());

    let (_, has_key) = search(&server, &key, json!({"has_key": "status"})).await;
    assert_eq!(ids(&has_key), e[..5].to_vec());
    let (_, any) = search(&server, &key, json!({"has_any": ["status", "nothing"]})).await;
    assert_eq!(ids(&any), e[..5].to_vec());
    let (_, all) = search(&server, &key, json!({"has_all": ["status", "priority"]})).await;
    assert_eq!(ids(&all), e[..5].to_vec());
    let (_, none) = search(&server, &key, json!({"has_all": ["status", "nothing"]})).await;
    assert_eq!(
        (
            none["items"].as_array().map(Vec::len),
            none.get("next_cursor")
        ),
        (Some(0), None)
    );
    // Conditions combine.
    let (_, both) = search(
        &server,
        &key,
        json!({"contains": {"status": "online"}, "has_key": "priority", "entity_type": "sensor"}),
    )
    .await;
    assert_eq!(ids(&both), vec![e[0], e[1], e[3]]);
    let (_, wrong_type) = search(
        &server,
        &key,
        json!({"contains": {"status": "online"}, "entity_type": "valve"}),
    )
    .await;
    assert_eq!(ids(&wrong_type), Vec::<i64>::new());

    // Pages of 2 follow the cursor to the end.
    let (_, p1) = search(&server, &key, json!({"has_key": "priority", "limit": 2})).await;
    let c1 = p1["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, p2) = search(
        &server,
        &key,
        json!({"has_key": "priority", "limit": 2, "cursor": c1}),
    )
    .await;
    let c2 = p2["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, p3) = search(
        &server,
        &key,
        json!({"has_key": "priority", "limit": 2, "cursor": c2}),
    )
    .await;
    let mut all_pages = ids(&p1);
    all_pages.extend(ids(&p2));
    all_pages.extend(ids(&p3));
    assert_eq!(all_pages, e.clone());

    // Deleted entities drop out; the other tenant never sees ours, nor we theirs.
    delete(&server, &key, e[1]).await;
    let (_, after) = search(&server, &key, json!({"contains": {"status": "online"}})).await;
    assert_eq!(ids(&after), vec![e[0], e[3]]);
    let (_, theirs_view) = search(&server, &other, json!({"contains": {"status": "online"}})).await;
    assert_eq!(ids(&theirs_view), vec![theirs]);
    server.stop().await;
}

#[tokio::test]
async fn latest_and_series_return_typed_values_in_order_with_pages() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let e = server.entities(&key, 2).await;
    let base = now_ms() - 3_600_000;
    let temps = ["20.5", "21.25", "19", "22.125", "23.00001"];
    let items: Vec<Value> = temps
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let n: Value = serde_json::from_str(v).unwrap_or_default();
            json!({"entity_id": e[0], "ts": base + 60_000 * i64::try_from(i).unwrap_or_default(), "values": {"temperature": n}})
        })
        .collect();
    write(&server, &key, Value::Array(items)).await;

    let (s, latest) = get(
        &server,
        &key,
        &format!("/v1/entities/{}/latest?attribute=temperature", e[0]),
    )
    .await;
    assert_eq!(s, 200, "{latest}");
    assert_eq!(latest["attribute"], "temperature");
    assert_eq!(latest["latest"]["ts"], base + 4 * 60_000);
    // Exact decimal, not an f64 approximation.
    assert_eq!(latest["latest"]["value"].to_string(), "23.00001");
    // By id too; an entity without values has none.
    let (_, none) = get(
        &server,
        &key,
        &format!("/v1/entities/{}/latest?attribute=temperature", e[1]),
    )
    .await;
    assert_eq!(none["latest"], Value::Null);

    let e0 = e[0];
    let series = |query: String| {
        let server = &server;
        let key = key.clone();
        async move {
            get(
                server,
                &key,
                &format!("/v1/entities/{e0}/series?attribute=temperature&{query}"),
            )
            .await
        }
    };
    let (s, all) = series(format!("from={}&to={}", base, base + 3_600_000)).await;
    assert_eq!(s, 200, "{all}");
    let values: Vec<String> = all["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{all}"))
        .iter()
        .map(|p| p["value"].to_string())
        .collect();
    assert_eq!(values, vec!["20.5", "21.25", "19", "22.125", "23.00001"]);
    assert!(all.get("next_cursor").is_none(), "{all}");

    // `to` is exclusive; RFC 3339 works as well as epoch ms.
    let from = chrono::DateTime::from_timestamp_millis(base + 60_000)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    let (_, window) = series(format!(
        "from={}&to={}",
        urlencode(&from),
        base + 3 * 60_000
    ))
    .await;
    let ts: Vec<i64> = window["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{window}"))
        .iter()
        .map(|p| p["ts"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(ts, vec![base + 60_000, base + 120_000]);

    // Newest first, two per page, following the cursor.
    let (_, d1) = series(format!(
        "from={}&to={}&order=desc&limit=2",
        base,
        base + 3_600_000
    ))
    .await;
    let cursor = d1["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, d2) = series(format!(
        "from={}&to={}&order=desc&limit=2&cursor={cursor}",
        base,
        base + 3_600_000
    ))
    .await;
    let pages: Vec<i64> = d1["items"]
        .as_array()
        .into_iter()
        .chain(d2["items"].as_array())
        .flatten()
        .map(|p| p["ts"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(
        pages,
        vec![
            base + 240_000,
            base + 180_000,
            base + 120_000,
            base + 60_000
        ]
    );

    // An empty range is an empty page; other tenants and deleted entities are 404.
    let (s, empty) = series(format!("from={}&to={}", base - 7_200_000, base - 3_600_000)).await;
    assert_eq!((s, empty["items"].as_array().map(Vec::len)), (200, Some(0)));
    let (s, b) = get(
        &server,
        &other,
        &format!("/v1/entities/{}/latest?attribute=temperature", e[0]),
    )
    .await;
    assert_error(s, &b, 404);
    delete(&server, &key, e[0]).await;
    let (s, b) = series(format!("from={}&to={}", base, base + 3_600_000)).await;
    assert_error(s, &b, 404);
    server.stop().await;
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn aggregates_are_exact_scoped_and_cached_until_the_next_write() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 3).await;
    // Hour-aligned, two hours ago: buckets are aligned in UTC.
    let hour = (now_ms() / 3_600_000 - 2) * 3_600_000;
    let mut items = Vec::new();
    for (i, id) in e.iter().enumerate() {
        for m in 0..3 {
            let v = (i * 10 + m) as f64 + 0.5;
            items.push(json!({"entity_id": id, "ts": hour + 60_000 * i64::try_from(m).unwrap_or_default(), "values": {"temperature": v}}));
        }
    }
    // One value in the next hour for e[0].
    items.push(json!({"entity_id": e[0], "ts": hour + 3_600_000, "values": {"temperature": 100}}));
    write(&server, &key, Value::Array(items)).await;

    let agg = |q: String| {
        let server = &server;
        let key = key.clone();
        async move {
            get_cached(
                server,
                &key,
                &format!(
                    "/v1/aggregates?attribute=temperature&from={}&to={}&{q}",
                    hour,
                    hour + 2 * 3_600_000
                ),
            )
            .await
        }
    };
    let (s, avg, c) = agg("bucket=1h&fn=avg".into()).await;
    assert_eq!((s, c.as_str()), (200, "miss"), "{avg}");
    // First hour: 0.5 1.5 2.5 10.5 11.5 12.5 20.5 21.5 22.5 → 103.5 / 9 = 11.5.
    assert_eq!(
        avg["items"],
        json!([{"ts": hour, "value": 11.5, "count": 9}, {"ts": hour + 3_600_000, "value": 100, "count": 1}])
    );
    let (_, again, c) = agg("bucket=1h&fn=avg".into()).await;
    assert_eq!((c.as_str(), &again), ("hit", &avg));
    // Day buckets are UTC days: between midnight and 02:00 UTC the two hours fall into two.
    let (_, sum, _) = agg("bucket=1d&fn=sum".into()).await;
    let day = |ms: i64| ms - ms.rem_euclid(86_400_000);
    let days: Vec<(i64, String)> = sum["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| (b["ts"].as_i64().unwrap_or(-1), b["value"].to_string()))
                .collect()
        })
        .unwrap_or_default();
    if day(hour) == day(hour + 3_600_000) {
        assert_eq!(days, [(day(hour), "203.5".to_owned())], "{sum}");
    } else {
        assert_eq!(
            days,
            [
                (day(hour), "103.5".to_owned()),
                (day(hour + 3_600_000), "100".to_owned())
            ],
            "{sum}"
        );
    }
    let (_, max, _) = agg(format!("bucket=1h&fn=max&entity_id={}", e[1])).await;
    assert_eq!(
        max["items"],
        json!([{"ts": hour, "value": 12.5, "count": 3}])
    );
    let (_, min, _) = agg("bucket=1h&fn=min&entity_type=sensor".into()).await;
    assert_eq!(min["items"][0]["value"], 0.5);
    let (_, count, _) = agg("bucket=1m&fn=count".into()).await;
    assert_eq!(count["items"].as_array().map(Vec::len), Some(4));
    let (_, valves, _) = agg("bucket=1h&fn=count&entity_type=valve".into()).await;
    assert_eq!(valves["items"], json!([]));

    // A write of the tenant moves it to a new generation: the next read misses and sees it.
    write(
        &server,
        &key,
        json!({"entity_id": e[2], "ts": hour + 3_600_000 + 1, "values": {"temperature": 0}}),
    )
    .await;
    let (_, fresh, c) = agg("bucket=1h&fn=avg".into()).await;
    assert_eq!(c, "miss");
    assert_eq!(
        fresh["items"][1],
        json!({"ts": hour + 3_600_000, "value": 50, "count": 2})
    );
    // Deleting an entity removes its values from the tenant's aggregates.
    delete(&server, &key, e[0]).await;
    let (_, without, c) = agg("bucket=1h&fn=count".into()).await;
    assert_eq!(c, "miss");
    assert_eq!(
        without["items"],
        json!([{"ts": hour, "value": 6, "count": 6}, {"ts": hour + 3_600_000, "value": 1, "count": 1}])
    );
    // The entries live under the tenant's generation with a 60 s TTL.
    let mut redis = redis_conn(&server.db.urls.redis_url).await;
    let pattern = format!("{}agg:{tenant}:*", crate::support::cache_prefix(&server.db));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!keys.is_empty());
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut redis)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((0..=66_000).contains(&ttl), "{k}: {ttl}");
    }
    server.stop().await;
}

#[tokio::test]
async fn attribute_stats_show_only_the_tenants_rows_and_read_during_a_refresh() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let e = server.entities(&key, 2).await;
    let theirs = server.entities(&other, 1).await[0];
    let t = now_ms() - 60_000;
    for id in &e {
        write(
            &server,
            &key,
            json!({"entity_id": id, "ts": t, "values": {"temperature": 1, "status": "on"}}),
        )
        .await;
    }
    write(
        &server,
        &other,
        json!({"entity_id": theirs, "ts": t, "values": {"mode": "eco"}}),
    )
    .await;
    let (s, before) = get(&server, &key, "/v1/stats/attributes").await;
    assert_eq!((s, &before["items"]), (200, &json!([])), "{before}");
    let admin = server.db.admin().await;
    admin
        .execute("SELECT public.refresh_attribute_stats()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, mine) = get(&server, &key, "/v1/stats/attributes").await;
    let names: Vec<&str> = mine["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{mine}"))
        .iter()
        .filter_map(|r| r["attribute_name"].as_str())
        .collect();
    assert_eq!(names, vec!["status", "temperature"]);
    assert_eq!(mine["items"][1]["distinct_entities"], 2);
    let (_, theirs_stats) = get(&server, &other, "/v1/stats/attributes").await;
    assert_eq!(theirs_stats["items"].as_array().map(Vec::len), Some(1));

    // A refresh holding its lock in an open transaction does not block readers (CONCURRENTLY).
    let mut refresher = server.db.admin().await;
    let tx = refresher
        .transaction()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.execute("SELECT public.refresh_attribute_stats()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        get(&server, &key, "/v1/stats/attributes"),
    )
    .await;
    assert!(
        matches!(&read, Ok((200, b)) if b["items"].as_array().map(Vec::len) == Some(2)),
        "{read:?}"
    );
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    server.stop().await;
}

#[tokio::test]
async fn entity_lists_by_type_come_from_a_redis_set_kept_in_step_with_writes() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let sensors = server.entities(&key, 5).await;
    let list = |q: &str| {
        let path = format!("/v1/entities?entity_type=sensor{q}");
        let (server, key) = (&server, key.clone());
        async move { get(server, &key, &path).await }
    };
    let (s, p1) = list("&limit=3").await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(ids(&p1), sensors[..3].to_vec());
    let cursor = p1["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, p2) = list(&format!("&limit=3&cursor={cursor}")).await;
    assert_eq!(ids(&p2), sensors[3..].to_vec());
    assert!(p2.get("next_cursor").is_none(), "{p2}");

    let set_key = server.state.cache().list_key(tenant, "sensor");
    let mut redis = redis_conn(&server.db.urls.redis_url).await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&set_key)
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let epoch: String = redis::cmd("GET")
        .arg(format!(
            "{}cache:epoch",
            crate::support::cache_prefix(&server.db)
        ))
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (marker, members): (Vec<String>, Vec<String>) =
        members.into_iter().partition(|m| m.starts_with("e:"));
    let mut members: Vec<i64> = members.iter().filter_map(|m| m.parse().ok()).collect();
    members.sort_unstable();
    assert_eq!(
        (marker, members),
        (vec![format!("e:{epoch}")], sensors.clone()),
        "the set holds the ids and the epoch it was filled under"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&set_key)
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!((40_000..=66_000).contains(&ttl), "ttl {ttl}");

    // Register, delete, retype: each shows at once.
    let new = server.entities(&key, 1).await[0];
    let (_, all) = list("").await;
    assert_eq!(ids(&all).last(), Some(&new));
    delete(&server, &key, sensors[0]).await;
    let (_, all) = list("").await;
    assert!(!ids(&all).contains(&sensors[0]));
    let (s, b) = call(
        server
            .as_tenant(&key, Method::PATCH, &format!("/v1/entities/{}", sensors[1]))
            .json(&json!({"entity_type": "valve"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, all) = list("").await;
    assert!(!ids(&all).contains(&sensors[1]));
    let (_, valves) = get(&server, &key, "/v1/entities?entity_type=valve").await;
    assert_eq!(ids(&valves), vec![sensors[1]]);
    // An empty type is cached too, and lists nothing.
    let (s, none) = get(&server, &key, "/v1/entities?entity_type=pump").await;
    assert_eq!((s, ids(&none)), (200, vec![]));
    server.stop().await;
}

#[tokio::test]
async fn making_an_attribute_hot_backfills_the_projection_and_cold_clears_it() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 2).await;
    let t = now_ms() - 60_000;
    write(
        &server,
        &key,
        json!([
            {"entity_id": e[0], "ts": t, "values": {"mode": "eco", "status": "on"}},
            {"entity_id": e[0], "ts": t + 1, "values": {"mode": "boost"}},
            {"entity_id": e[1], "ts": t, "values": {"mode": "eco"}}
        ]),
    )
    .await;
    let path = format!("/v1/entities/{}/attributes", e[0]);
    let (_, before, _) = get_cached(&server, &key, &path).await;
    assert_eq!(before["attributes"], json!({"status": "on"}));
    let mode = server.attribute_id("mode").await;

    let (s, b) = call(
        server
            .admin(Method::PATCH, &format!("/v1/admin/attributes/{mode}"))
            .json(&json!({"is_hot": true})),
    )
    .await;
    assert_eq!((s, &b["is_hot"]), (200, &json!(true)), "{b}");
    // Its progress, as the console polls it while the change runs: done, every live entity
    // looked at, both projections changed.
    let (s, report) = call(server.admin(
        Method::GET,
        &format!("/v1/admin/attributes/{mode}/backfill"),
    ))
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        (
            &report["state"],
            &report["entities_done"],
            &report["entities_total"],
            &report["projections_changed"]
        ),
        (&json!("done"), &json!(2), &json!(2), &json!(2)),
        "{report}"
    );
    assert!(
        report["finished_at"].is_string() && report.get("error").is_none(),
        "{report}"
    );
    // An attribute without a backfill answers `none`; no attribute, 404; a bad id and a
    // tenant key are refused.
    let status = server.attribute_id("status").await;
    let (s, none) = call(server.admin(
        Method::GET,
        &format!("/v1/admin/attributes/{status}/backfill"),
    ))
    .await;
    assert_eq!(
        (s, &none["state"], &none["entities_done"]),
        (200, &json!("none"), &json!(0)),
        "{none}"
    );
    assert!(none.get("started_at").is_none(), "{none}");
    let (s, body) = call(server.admin(Method::GET, "/v1/admin/attributes/999999/backfill")).await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = call(server.admin(Method::GET, "/v1/admin/attributes/x/backfill")).await;
    assert_eq!(s, 400, "{body}");
    let (s, _) = call(server.as_tenant(
        &key,
        Method::GET,
        &format!("/v1/admin/attributes/{mode}/backfill"),
    ))
    .await;
    assert!(s == 401 || s == 403, "{s}");
    // Backfilled with the newest value, and the cached copy was dropped.
    let (_, hot, c) = get_cached(&server, &key, &path).await;
    assert_eq!(c, "miss");
    assert_eq!(hot["attributes"], json!({"status": "on", "mode": "boost"}));
    assert_eq!(hot["ts"]["mode"], t + 1);
    let (_, found) = search(&server, &key, json!({"contains": {"mode": "eco"}})).await;
    assert_eq!(ids(&found), vec![e[1]]);
    // The Redis catalogue says hot now.
    let mut redis = redis_conn(&server.db.urls.redis_url).await;
    let (name_to_id, meta) = server.state.cache().meta_keys();
    let cached: Option<String> = redis::cmd("HGET")
        .arg(&meta)
        .arg("mode")
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cached: Value = serde_json::from_str(&cached.unwrap_or_default()).unwrap_or_default();
    assert_eq!(cached["is_hot"], true);
    let id: Option<i64> = redis::cmd("HGET")
        .arg(&name_to_id)
        .arg("mode")
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id, Some(mode));

    let (s, b) = call(
        server
            .admin(Method::PATCH, &format!("/v1/admin/attributes/{mode}"))
            .json(&json!({"is_hot": false})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, cold, _) = get_cached(&server, &key, &path).await;
    assert_eq!(cold["attributes"], json!({"status": "on"}));
    let (_, found) = search(&server, &key, json!({"has_key": "mode"})).await;
    assert_eq!(ids(&found), Vec::<i64>::new());
    server.stop().await;
}

#[tokio::test]
async fn a_fill_that_read_before_a_commit_never_overwrites_the_invalidation() {
    // Readers hammer the server: no rate limit in the way.
    let server = Server::start_with(atlas_config::Limits {
        rate_per_second: 1e6,
        rate_burst: 1e6,
        ..atlas_config::Limits::default()
    })
    .await;
    catalogue(&server).await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = now_ms() - 60_000;
    write(
        &server,
        &key,
        json!({"entity_id": e, "ts": t, "values": {"status": "old"}}),
    )
    .await;
    let cache = server.state.cache().clone();
    let entity_key = cache.entity_key(tenant, e);

    // The reader misses, takes its lease and reads the database (the old value)…
    assert_eq!(
        cache.get(atlas_cache::Kind::Entity, &entity_key).await,
        None
    );
    let lease = cache
        .lease(&entity_key)
        .await
        .unwrap_or_else(|| panic!("redis is up"));
    let stale = server
        .state
        .store()
        .with_tenant(atlas_store::TenantId(tenant), move |tx| {
            Box::pin(async move {
                atlas_store::reads::hot_attributes(tx, atlas_store::TenantId(tenant), e).await
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stale = serde_json::to_string(&stale).unwrap_or_default();
    assert!(stale.contains("\"old\""));
    // …the writer commits and invalidates…
    write(
        &server,
        &key,
        json!({"entity_id": e, "ts": t + 1000, "values": {"status": "new"}}),
    )
    .await;
    // …and the reader's late fill is refused.
    assert!(!cache.fill(lease, &stale, Duration::from_secs(300)).await);
    let (_, now, c) = get_cached(&server, &key, &format!("/v1/entities/{e}/attributes")).await;
    assert_eq!(
        (c.as_str(), &now["attributes"]["status"]),
        ("miss", &json!("new"))
    );

    // Under load: readers fill while a writer moves the value forward; once the writer is
    // done, every read shows its last value.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (http, url, key, stop) = (
            server.http.clone(),
            format!("{}/v1/entities/{e}/attributes", server.base),
            key.clone(),
            std::sync::Arc::clone(&stop),
        );
        readers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http.get(&url).bearer_auth(&key).send().await;
            }
        }));
    }
    for i in 0..30 {
        write(
            &server,
            &key,
            json!({"entity_id": e, "ts": t + 2000 + i, "values": {"priority": i}}),
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    for _ in 0..3 {
        let (_, v, _) = get_cached(&server, &key, &format!("/v1/entities/{e}/attributes")).await;
        assert_eq!(v["attributes"]["priority"], 29, "{v}");
    }
    server.stop().await;
}

/// A Redis server of the test's own, so stopping it does not disturb other tests.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = crate::support::free_port();
        let mut r = Self { port, child: None };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn restart(&mut self) {
        let flags = crate::support::redis_flags(self.port);
        self.child = Some(crate::support::redis_server(&flags, self.port));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn with_redis_down_every_request_succeeds_and_the_hit_rate_recovers_after() {
    let mut redis = OwnRedis::start();
    let db = atlas_testkit::TestDb::new().await;
    let url = redis.url();
    let server = Server::configured(db, |c| c.redis_url = Some(url)).await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 2).await;
    let t = now_ms() - 60_000;
    let hot = format!("/v1/entities/{}/attributes", e[0]);
    let agg = format!(
        "/v1/aggregates?attribute=temperature&from={}&to={}&bucket=1h&fn=avg",
        t - 3_600_000,
        t + 3_600_000
    );
    let reads = [
        hot.clone(),
        agg.clone(),
        "/v1/entities?entity_type=sensor".to_owned(),
        format!("/v1/entities/{}/latest?attribute=temperature", e[0]),
        "/v1/attributes".to_owned(),
    ];
    write(
        &server,
        &key,
        json!({"entity_id": e[0], "ts": t, "values": {"status": "up", "temperature": 1}}),
    )
    .await;
    for p in &reads {
        let (s, b) = get(&server, &key, p).await;
        assert_eq!(s, 200, "{p}: {b}");
    }
    let (_, _, c) = get_cached(&server, &key, &hot).await;
    assert_eq!(c, "hit");

    redis.stop();
    for round in 0..3 {
        for p in &reads {
            let (s, b) = get(&server, &key, p).await;
            assert_eq!(s, 200, "Redis down, round {round}, {p}: {b}");
        }
        let (s, b) = search(&server, &key, json!({"has_key": "status"})).await;
        assert_eq!(s, 200, "{b}");
        // Writes too: nothing to invalidate is not a failure.
        write(
            &server,
            &key,
            json!({"entity_id": e[0], "ts": t + 1 + round, "values": {"status": format!("r{round}")}}),
        )
        .await;
        let (_, v, c) = get_cached(&server, &key, &hot).await;
        assert_eq!(
            (c.as_str(), &v["attributes"]["status"]),
            ("miss", &json!(format!("r{round}")))
        );
    }
    // Health reports it.
    let (_, ready) = call(server.req(Method::GET, "/readyz")).await;
    assert_eq!(ready["redis"], "down", "{ready}");

    redis.restart();
    // The connection comes back by itself; the first read fills, the next ones hit.
    let mut hit = false;
    for _ in 0..100 {
        let (s, v, c) = get_cached(&server, &key, &hot).await;
        assert_eq!((s, &v["attributes"]["status"]), (200, &json!("r2")));
        if c == "hit" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hit, "the cache did not recover after Redis came back");
    let (_, _, c) = get_cached(&server, &key, &agg).await;
    let (_, _, c2) = get_cached(&server, &key, &agg).await;
    assert_eq!((c.as_str(), c2.as_str()), ("miss", "hit"));
    server.stop().await;
}

#[tokio::test]
async fn bad_read_input_is_a_4xx_naming_the_field() {
    let server = Server::start().await;
    catalogue(&server).await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let now = now_ms();
    let day = 86_400_000;
    let series = format!("/v1/entities/{e}/series");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{series}?attribute=temperature&to={now}"),
            400,
            "from",
        ),
        (
            format!("{series}?attribute=temperature&from={now}"),
            400,
            "to",
        ),
        (
            format!("{series}?attribute=temperature&from={now}&to={}", now - 1),
            422,
            "to",
        ),
        (
            format!("{series}?attribute=temperature&from={now}&to={now}"),
            422,
            "to",
        ),
        (
            format!(
                "{series}?attribute=temperature&from={}&to={now}",
                now - 40 * day
            ),
            422,
            "to",
        ),
        (
            format!("{series}?attribute=temperature&from=yesterday&to={now}"),
            400,
            "from",
        ),
        (
            format!("{series}?from={}&to={now}", now - day),
            400,
            "attribute",
        ),
        (
            format!("{series}?attribute=nope&from={}&to={now}", now - day),
            404,
            "attribute",
        ),
        (
            format!(
                "{series}?attribute=temperature&from={}&to={now}&limit=0",
                now - day
            ),
            400,
            "limit",
        ),
        (
            format!(
                "{series}?attribute=temperature&from={}&to={now}&order=sideways",
                now - day
            ),
            400,
            "order",
        ),
        (
            format!(
                "{series}?attribute=temperature&from={}&to={now}&cursor=abc",
                now - day
            ),
            400,
            "cursor",
        ),
        (
            format!(
                "{series}?attribute=temperature&from={}&to={now}&colour=red",
                now - day
            ),
            400,
            "colour",
        ),
        (format!("/v1/entities/{e}/latest"), 400, "attribute"),
        (
            format!("/v1/entities/{e}/latest?attribute=nope"),
            404,
            "attribute",
        ),
        (
            "/v1/entities/abc/latest?attribute=temperature".to_owned(),
            400,
            "id",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&fn=avg",
                now - day
            ),
            400,
            "bucket",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=7x&fn=avg",
                now - day
            ),
            400,
            "bucket",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=1h&fn=median",
                now - day
            ),
            400,
            "fn",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=1h",
                now - day
            ),
            400,
            "fn",
        ),
        (
            format!(
                "/v1/aggregates?attribute=status&from={}&to={now}&bucket=1h&fn=avg",
                now - day
            ),
            422,
            "fn",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=1m&fn=avg",
                now - 30 * day
            ),
            422,
            "bucket",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={now}&to={}&bucket=1h&fn=avg",
                now - day
            ),
            422,
            "to",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=1h&fn=avg&entity_id={e}&entity_type=sensor",
                now - day
            ),
            422,
            "entity_type",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=1h&fn=avg&entity_id=x",
                now - day
            ),
            400,
            "entity_id",
        ),
        (
            format!(
                "/v1/aggregates?attribute=temperature&from={}&to={now}&bucket=1h&fn=avg&entity_id=999999999",
                now - day
            ),
            404,
            "",
        ),
        (
            "/v1/entities?entity_type=bad%20type".to_owned(),
            400,
            "entity_type",
        ),
    ];
    for (path, status, field) in cases {
        let (s, b) = get(&server, &key, &path).await;
        let f = assert_error(s, &b, status);
        if !field.is_empty() {
            assert_eq!(f.as_deref(), Some(field), "{path}: {b}");
        }
    }

    let searches: Vec<(Value, u16, &str)> = vec![
        (json!({}), 422, "body"),
        (json!({"contains": [1, 2]}), 422, "contains"),
        (json!({"contains": "online"}), 422, "contains"),
        (json!({"contains": {"s": "a\u{0000}b"}}), 422, "contains.s"),
        (json!({"has_key": 5}), 400, "has_key"),
        (json!({"has_any": []}), 422, "has_any"),
        (json!({"has_all": ["a", 1]}), 400, "has_all[1]"),
        (json!({"has_key": "a", "limit": 0}), 422, "limit"),
        (json!({"has_key": "a", "limit": 2.5}), 400, "limit"),
        (json!({"has_key": "a", "cursor": "x"}), 422, "cursor"),
        (
            json!({"has_key": "a", "entity_type": "a b"}),
            422,
            "entity_type",
        ),
        (json!({"has_key": "a", "colour": "red"}), 400, "colour"),
    ];
    for (body, status, field) in searches {
        let (s, b) = search(&server, &key, body.clone()).await;
        let f = assert_error(s, &b, status);
        assert_eq!(f.as_deref(), Some(field), "{body}: {b}");
    }
    let (s, b) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/entities/search")
            .header("content-type", "application/json")
            .body("{\"contains\": "),
    )
    .await;
    assert_error(s, &b, 400);
    server.stop().await;
}

/// The exclusive lease (what fills a type's id set): one filler at a time — the others page
/// from PostgreSQL instead of reading the ids too — and an invalidation frees it and fences
/// the holder's fill out, as for a plain lease.
#[tokio::test]
async fn an_exclusive_lease_has_one_holder_and_an_invalidation_fences_it() {
    let server = Server::start().await;
    let (tenant, key) = server.tenant("acme").await;
    let cache = server.state.cache().clone();
    let list = cache.list_key(tenant, "pump");
    let first = cache
        .exclusive_lease(&list)
        .await
        .unwrap_or_else(|| panic!("redis is up and the lease is free"));
    assert!(cache.exclusive_lease(&list).await.is_none(), "held");
    // A write to the type invalidates: the lease is free again and the old fill is refused.
    cache.invalidate(std::slice::from_ref(&list)).await;
    let second = cache
        .exclusive_lease(&list)
        .await
        .unwrap_or_else(|| panic!("freed by the invalidation"));
    assert!(
        !cache
            .fill_set(first, &[1, 2], Duration::from_secs(60))
            .await
    );
    assert!(cache.fill_set(second, &[3], Duration::from_secs(60)).await);
    assert_eq!(
        cache.members(atlas_cache::Kind::List, &list).await,
        Some(vec![3])
    );

    // Through the API: a burst of first pages of a type all answer its entities, and its set
    // is filled once the burst is over.
    let valves_registered: Vec<i64> = {
        let (s, body) = call(
            server
                .as_tenant(&key, Method::POST, "/v1/entities")
                .json(&json!([{"entity_type": "valve"}, {"entity_type": "valve"}])),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["entity_id"].as_i64())
            .collect()
    };
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let req = server.as_tenant(&key, Method::GET, "/v1/entities?entity_type=valve");
            tokio::spawn(call(req))
        })
        .collect();
    for r in burst {
        let (s, page) = r.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s, ids(&page)), (200, valves_registered.clone()), "{page}");
    }
    let valves = cache.list_key(tenant, "valve");
    let mut filled = None;
    for _ in 0..50 {
        filled = cache.members(atlas_cache::Kind::List, &valves).await;
        if filled.is_some() {
            break;
        }
        let _ = call(server.as_tenant(&key, Method::GET, "/v1/entities?entity_type=valve")).await;
    }
    let mut filled = filled.unwrap_or_default();
    filled.sort_unstable();
    assert_eq!(filled, valves_registered);
    server.stop().await;
}
