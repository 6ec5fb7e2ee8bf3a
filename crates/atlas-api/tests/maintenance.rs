//! The maintainer under a running server: partitions are premade before they are needed, and
//! when retention drops the partition ingest is writing to, values for that time are refused
//! at the API (never stuck in staging, never a 5xx).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{Server, call};

#[tokio::test]
async fn retention_under_ingest_refuses_uncovered_times_at_the_api() {
    let server = Server::start_with(atlas_config::Limits {
        rate_per_second: 1e6,
        rate_burst: 1e6,
        ..atlas_config::Limits::default()
    })
    .await;
    server
        .define(json!({"attribute_name": "temperature", "data_type": "decimal"}))
        .await;
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];

    // Ingest at the current time, continuously, recording every status.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, url, key, stop) = (
            server.http.clone(),
            format!("{}/v1/telemetry", server.base),
            key.clone(),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"entity_id": e, "values": {"temperature": i}}))
                    .send()
                    .await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 70 days on, with 30 days of retention, the current month's partition goes.
    let m = atlas_maintain::Maintainer::new(
        server.db.store(2),
        atlas_maintain::Settings {
            retention: Some(chrono::Duration::days(30)),
            lock_timeout_ms: 5_000,
            ..atlas_maintain::Settings::default()
        },
    );
    let now = chrono::Utc::now();
    let report = m.run_once(now + chrono::Duration::days(70)).await;
    assert!(report.errors.is_empty(), "{report:?}");
    let current = format!("entity_values_{}", now.format("%Y_%m"));
    assert!(report.dropped.contains(&current), "{report:?}");

    // Once the server's view of the partitions is refreshed (at most 5 s), a value for now is
    // refused with 422 naming its time.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (s, body) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .json(&json!({"entity_id": e, "values": {"temperature": 1}})),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["error"]["field"], "ts", "{body}");
    stop.store(true, Ordering::Relaxed);
    let statuses = writer.await.unwrap_or_default();
    assert!(statuses.contains(&200), "ingest ran before the drop");
    assert!(statuses.contains(&422), "ingest was refused after it");
    // In the moment between the drop and the refresh a write may be refused as 409 (its rows
    // dead-lettered with the reason); nothing else, and never a 5xx.
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 409 | 422)),
        "{statuses:?}"
    );
    let staged: i64 = server
        .db
        .admin()
        .await
        .query_one("SELECT count(*) FROM entity_values_ingest", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(staged, 0, "nothing is stuck in staging");
    server.stop().await;
}

#[tokio::test]
async fn history_is_refused_before_a_backfill_and_stored_and_read_back_at_once_after_it() {
    let server = Server::start().await;
    server
        .define(json!({"attribute_name": "temperature", "data_type": "decimal"}))
        .await;
    let (_, key) = server.tenant("historian").await;
    let e = server.entities(&key, 1).await[0];
    let old = chrono::Utc::now() - chrono::Duration::days(400);
    let ts = old.timestamp_millis();
    let post = || {
        call(
            server
                .as_tenant(&key, Method::POST, "/v1/telemetry")
                .json(&json!([{"entity_id": e, "ts": ts, "values": {"temperature": 12.5}}])),
        )
    };

    let (s, body) = post().await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["error"]["field"], "[0].ts", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("before the stored time range")),
        "{body}"
    );

    let created =
        atlas_maintain::Maintainer::new(server.db.store(2), atlas_maintain::Settings::default())
            .backfill(old, chrono::Utc::now())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(!created.is_empty());

    // No wait for the server's 5 s coverage refresh: an uncovered time re-reads it at once.
    let (s, body) = post().await;
    assert_eq!(s, 200, "{body}");
    let (s, series) = call(server.as_tenant(
        &key,
        Method::GET,
        &format!(
            "/v1/entities/{e}/series?attribute=temperature&from={}&to={}",
            ts - 1,
            ts + 1
        ),
    ))
    .await;
    assert_eq!(s, 200, "{series}");
    assert_eq!(
        series["items"].as_array().map(Vec::len),
        Some(1),
        "{series}"
    );
    assert_eq!(series["items"][0]["value"], json!(12.5), "{series}");
    server.stop().await;
}
