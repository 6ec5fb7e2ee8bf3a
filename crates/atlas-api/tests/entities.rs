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

/// The server's sessions, on the primary and on the replicas, run with JIT off: a generic plan
/// of an entity page is priced as a scan of every projection partition, and JIT compiled it for
/// seconds before running milliseconds of work.
#[tokio::test]
async fn the_servers_sessions_run_without_jit() {
    let server = Server::start().await;
    let store = server.state.store();
    let pools = std::iter::once(store.primary()).chain(store.replicas());
    let mut seen = 0;
    for pool in pools {
        // A replica may not have replayed the test database's creation yet.
        let mut tries = 0;
        let client = loop {
            match pool.get().await {
                Ok(c) => break c,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        let row = client
            .query_one("SHOW jit", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(row.get::<_, String>(0), "off");
        seen += 1;
    }
    assert!(seen >= 2, "the primary and at least one replica");
    server.stop().await;
}

/// `GET /v1/entity-types`: the tenant's types with a live entity, in order and paged; another
/// tenant's types never appear.
#[tokio::test]
async fn a_tenant_lists_its_entity_types() {
    let server = Server::start().await;
    let (_, key) = server.tenant("acme").await;
    let (_, other) = server.tenant("globex").await;
    let register = |key: String, t: &'static str| {
        let req = server
            .as_tenant(&key, Method::POST, "/v1/entities")
            .json(&json!({"entity_type": t}));
        async move {
            let (s, e) = call(req).await;
            assert_eq!(s, 201, "{e}");
            e["items"][0]["entity_id"].as_i64().unwrap_or_default()
        }
    };
    for t in ["valve", "sensor", "sensor", "valve"] {
        register(key.clone(), t).await;
    }
    let gone = register(key.clone(), "pump").await;
    let (s, _) =
        call(server.as_tenant(&key, Method::DELETE, &format!("/v1/entities/{gone}"))).await;
    assert_eq!(s, 204);
    register(other.clone(), "meter").await;

    let (s, all) = call(server.as_tenant(&key, Method::GET, "/v1/entity-types")).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(
        all,
        json!({"items": ["sensor", "valve"]}),
        "no deleted type, no other tenant's"
    );
    let (_, theirs) = call(server.as_tenant(&other, Method::GET, "/v1/entity-types")).await;
    assert_eq!(theirs["items"], json!(["meter"]));

    let mut seen = Vec::new();
    let mut path = "/v1/entity-types?limit=1".to_owned();
    for _ in 0..5 {
        let (s, page) = call(server.as_tenant(&key, Method::GET, &path)).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/entity-types?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, [json!("sensor"), json!("valve")]);

    for (bad, field) in [
        ("cursor=%20x", "cursor"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("type=sensor", ""),
    ] {
        let (s, body) =
            call(server.as_tenant(&key, Method::GET, &format!("/v1/entity-types?{bad}"))).await;
        let named = assert_error(s, &body, 400);
        if !field.is_empty() {
            assert_eq!(named.as_deref(), Some(field), "{bad}: {body}");
        }
    }
    server.stop().await;
}
