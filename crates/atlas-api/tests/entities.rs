//! Entities: register one or many, get, update with optimistic versions, soft delete, list.

use reqwest::Method;
use serde_json::json;

use crate::support::{Server, assert_error, call};

#[tokio::test]
async fn entities_are_registered_read_updated_and_soft_deleted() {
    let server = Server::start().await;
    let (_, key) = server.tenant("acme").await;
    let (s, one) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/entities")
            .json(&json!({"entity_type": "gateway", "cold_attrs": {"site": "north"}})),
    )
    .await;
    assert_eq!(s, 201, "{one}");
    let gw = &one["items"][0];
    assert_eq!(
        (gw["entity_type"].as_str(), gw["version"].as_i64()),
        (Some("gateway"), Some(1))
    );
    assert_eq!(gw["cold_attrs"], json!({"site": "north"}));
    let gw_id = gw["entity_id"].as_i64().unwrap_or_default();
    let sensors = server.entities(&key, 3).await;
    assert!(
        sensors.windows(2).all(|w| w[1] == w[0] + 1),
        "sequential ids: {sensors:?}"
    );
    assert!(sensors[0] > gw_id);

    let (s, got) =
        call(server.as_tenant(&key, Method::GET, &format!("/v1/entities/{gw_id}"))).await;
    assert_eq!((s, &got["cold_attrs"]), (200, &json!({"site": "north"})));

    let (s, upd) = call(
        server
            .as_tenant(&key, Method::PATCH, &format!("/v1/entities/{gw_id}"))
            .json(&json!({"cold_attrs": {"site": "south"}, "version": 1})),
    )
    .await;
    assert_eq!(s, 200, "{upd}");
    assert_eq!(
        (upd["version"].as_i64(), &upd["cold_attrs"]),
        (Some(2), &json!({"site": "south"}))
    );
    assert!(upd["updated_at"].as_str() > gw["updated_at"].as_str());
    // A change based on a stale version is a conflict, not a lost update.
    let (s, body) = call(
        server
            .as_tenant(&key, Method::PATCH, &format!("/v1/entities/{gw_id}"))
            .json(&json!({"entity_type": "router", "version": 1})),
    )
    .await;
    assert_eq!(assert_error(s, &body, 409).as_deref(), Some("version"));

    let (s, body) =
        call(server.as_tenant(&key, Method::DELETE, &format!("/v1/entities/{gw_id}"))).await;
    assert_eq!((s, body), (204, serde_json::Value::Null));
    for (method, status) in [
        (Method::GET, 404),
        (Method::DELETE, 404),
        (Method::PATCH, 404),
    ] {
        let mut req = server.as_tenant(&key, method.clone(), &format!("/v1/entities/{gw_id}"));
        if method == Method::PATCH {
            req = req.json(&json!({"cold_attrs": {}}));
        }
        let (s, body) = call(req).await;
        assert_error(s, &body, status);
    }
    let (_, all) = call(server.as_tenant(&key, Method::GET, "/v1/entities")).await;
    let listed: Vec<i64> = all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["entity_id"].as_i64())
        .collect();
    assert_eq!(listed, sensors, "deleted entities are excluded from lists");
    server.stop().await;
}

#[tokio::test]
async fn lists_page_by_cursor_and_filter_by_type() {
    let server = Server::start().await;
    let (_, key) = server.tenant("acme").await;
    let sensors = server.entities(&key, 5).await;
    let (s, _) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/entities")
            .json(&json!([{"entity_type": "valve"}])),
    )
    .await;
    assert_eq!(s, 201);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/entities?entity_type=sensor&limit=2&cursor={c}"),
            None => "/v1/entities?entity_type=sensor&limit=2".to_owned(),
        };
        let (s, page) = call(server.as_tenant(&key, Method::GET, &path)).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["entity_id"].as_i64()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, sensors);
    assert_eq!(pages, 3);
    let (s, empty) =
        call(server.as_tenant(&key, Method::GET, "/v1/entities?entity_type=pump")).await;
    assert_eq!((s, empty["items"].as_array().map(Vec::len)), (200, Some(0)));
    let (_, key2) = server.tenant("empty-tenant").await;
    let (s, none) = call(server.as_tenant(&key2, Method::GET, "/v1/entities")).await;
    assert_eq!((s, none["items"].as_array().map(Vec::len)), (200, Some(0)));
    server.stop().await;
}
