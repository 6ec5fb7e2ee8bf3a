//! Consistency routing against the test stack's real streaming replica: strong reads on the
//! primary, eventual reads on the replica once its heartbeat lag is measured, read-your-writes
//! by WAL position, no cache fills from a replica, and bad routing headers refused.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Server, assert_error};

struct Answer {
    status: u16,
    body: Value,
    served_by: String,
    lag_ms: Option<i64>,
}

async fn get(server: &Server, key: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = server.as_tenant(key, Method::GET, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{e}"));
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (served_by, lag) = (h("x-atlas-served-by"), h("x-atlas-lag-ms"));
    let (status, body) = crate::support::split(resp).await;
    Answer {
        status,
        body,
        served_by,
        lag_ms: lag.parse().ok(),
    }
}

#[tokio::test]
async fn reads_route_by_consistency_and_read_your_writes_holds() {
    // Heartbeats (the maintainer's) and lag measurement, quicker than in production.
    let server = Server::configured(atlas_testkit::TestDb::new().await, |c| {
        c.limits.rate_per_second = 1e6;
        c.limits.rate_burst = 1e6;
        c.maintenance.enabled = true;
        c.maintenance.heartbeat_interval = Duration::from_millis(100);
        c.replication.lag_check_interval = Duration::from_millis(100);
    })
    .await;

    server
        .define(json!({"attribute_name": "level", "data_type": "integer", "is_hot": true}))
        .await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 2).await;
    let latest = format!("/v1/entities/{}/latest?attribute=level", e[0]);

    // Strong (the default) is the primary.
    let a = get(&server, &key, &latest, &[]).await;
    assert_eq!(
        (a.status, a.served_by.as_str(), a.lag_ms),
        (200, "primary", Some(0))
    );

    // Eventual goes to the replica once its lag is known to be within budget.
    let mut on_replica = None;
    for _ in 0..100 {
        let a = get(
            &server,
            &key,
            &latest,
            &[("X-Atlas-Consistency", "eventual")],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        if a.served_by == "replica-1" {
            on_replica = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = on_replica.unwrap_or_else(|| panic!("eventual reads never reached the replica"));
    assert!(
        a.lag_ms.is_some_and(|l| (0..3000).contains(&l)),
        "lag {:?}",
        a.lag_ms
    );
    // The query parameter works as well as the header.
    let a = get(
        &server,
        &key,
        &format!("{latest}&consistency=eventual"),
        &[],
    )
    .await;
    assert_eq!((a.status, a.served_by.as_str()), (200, "replica-1"));
    let a = get(&server, &key, &latest, &[("X-Atlas-Consistency", "strong")]).await;
    assert_eq!(a.served_by, "primary");

    // Read-your-writes: each write's position, sent back, always shows that write.
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    for i in 0..25 {
        let resp = server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .json(&json!({"entity_id": e[0], "ts": t0 + i, "values": {"level": i}}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 200);
        let lsn = resp
            .headers()
            .get("x-atlas-lsn")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no X-Atlas-Lsn on a write"))
            .to_owned();
        for path in [latest.clone(), format!("/v1/entities/{}/attributes", e[0])] {
            let a = get(
                &server,
                &key,
                &path,
                &[
                    ("X-Atlas-Consistency", "eventual"),
                    ("X-Atlas-Min-Lsn", &lsn),
                ],
            )
            .await;
            let seen = if path.ends_with("attributes") {
                &a.body["attributes"]["level"]
            } else {
                &a.body["latest"]["value"]
            };
            assert_eq!(
                seen,
                &json!(i),
                "{path} after write {i} ({lsn}) via {}",
                a.served_by
            );
        }
    }

    // A replica's answer never fills the cache; the primary's does.
    let hot = format!("/v1/entities/{}/attributes", e[1]);
    let cache_key = server.state.cache().entity_key(tenant, e[1]);
    let mut redis = redis::Client::open(server.db.urls.redis_url.as_str())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut replica_answers = 0;
    for _ in 0..20 {
        let a = get(&server, &key, &hot, &[("X-Atlas-Consistency", "eventual")]).await;
        assert_eq!(a.status, 200);
        if a.served_by == "replica-1" {
            replica_answers += 1;
            let exists: i64 = redis::cmd("EXISTS")
                .arg(&cache_key)
                .query_async(&mut redis)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(exists, 0, "a replica's answer was cached");
        }
    }
    assert!(replica_answers > 0);
    let a = get(&server, &key, &hot, &[]).await;
    assert_eq!(a.served_by, "primary");
    let a = get(&server, &key, &hot, &[]).await;
    assert_eq!(a.served_by, "cache");

    // Bad routing headers are refused, naming the header.
    for (h, v) in [
        ("X-Atlas-Consistency", "sometimes"),
        ("X-Atlas-Min-Lsn", "16B3748"),
        ("X-Atlas-Min-Lsn", "zz/1"),
    ] {
        let a = get(&server, &key, &latest, &[(h, v)]).await;
        let field = assert_error(a.status, &a.body, 400);
        assert_eq!(field.as_deref(), Some(h), "{}", a.body);
    }
    let a = get(
        &server,
        &key,
        &format!("{latest}&consistency=sometimes"),
        &[],
    )
    .await;
    assert_error(a.status, &a.body, 400);

    server.stop().await;
}
