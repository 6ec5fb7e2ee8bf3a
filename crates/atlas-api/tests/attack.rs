//! Cross-tenant attack suite: tenant B armed with tenant A's ids, injection strings in every
//! string parameter, and the database-level checks re-run through the server's own pool.

use futures_util::FutureExt;
use reqwest::Method;
use serde_json::{Value, json};

use atlas_store::{StoreError, TenantId};

use crate::support::{Server, assert_error, call};

async fn snapshot(server: &Server) -> Vec<(i64, i64, String, bool, i32, Value)> {
    server
        .db
        .admin()
        .await
        .query(
            "SELECT e.entity_id, e.tenant_id, e.entity_type, e.is_deleted, e.version, coalesce(j.cold_attrs, '{}') \
             FROM entities e LEFT JOIN entity_jsonb j USING (entity_id, tenant_id) ORDER BY 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_and_nothing_changes() {
    let server = Server::start().await;
    let (_, key_a) = server.tenant("tenant-a").await;
    let (_, key_b) = server.tenant("tenant-b").await;
    let a_ids = server.entities(&key_a, 3).await;
    let b_ids = server.entities(&key_b, 1).await;
    let before = snapshot(&server).await;

    for id in &a_ids {
        let (s, b) =
            call(server.as_tenant(&key_b, Method::GET, &format!("/v1/entities/{id}"))).await;
        assert_error(s, &b, 404);
        let (s, b) = call(
            server
                .as_tenant(&key_b, Method::PATCH, &format!("/v1/entities/{id}"))
                .json(&json!({"cold_attrs": {"owned": "by B"}, "entity_type": "hijacked"})),
        )
        .await;
        assert_error(s, &b, 404);
        let (s, b) = call(
            server
                .as_tenant(&key_b, Method::PATCH, &format!("/v1/entities/{id}"))
                .json(&json!({"version": 1})),
        )
        .await;
        assert_error(s, &b, 404);
        let (s, b) =
            call(server.as_tenant(&key_b, Method::DELETE, &format!("/v1/entities/{id}"))).await;
        assert_error(s, &b, 404);
    }
    // Writing telemetry for A's entities is refused as not found, nothing stored.
    let (s, b) = call(
        server
            .as_tenant(&key_b, Method::POST, "/v1/telemetry")
            .json(&json!([{"entity_id": b_ids[0], "values": {}}, {"entity_id": a_ids[0], "values": {"x": 1}}])),
    )
    .await;
    assert!((400..500).contains(&s), "{b}");
    let (s, b) = call(
        server
            .as_tenant(&key_b, Method::POST, "/v1/telemetry")
            .json(&json!({"entity_id": a_ids[1], "values": {"owned": "by B"}})),
    )
    .await;
    assert!(s == 404 || s == 422, "{s} {b}");
    // Listing from just before A's ids shows only B's own.
    let cursor = a_ids[0] - 1;
    let (s, page) = call(server.as_tenant(
        &key_b,
        Method::GET,
        &format!("/v1/entities?cursor={cursor}&limit=1000"),
    ))
    .await;
    assert_eq!(s, 200);
    let seen: Vec<i64> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["entity_id"].as_i64())
        .collect();
    assert_eq!(seen, b_ids);
    // A tenant id smuggled into bodies and queries is refused, not obeyed.
    let (s, b) = call(
        server
            .as_tenant(&key_b, Method::POST, "/v1/entities")
            .json(&json!({"entity_type": "sensor", "tenant_id": 1})),
    )
    .await;
    assert_eq!(assert_error(s, &b, 400).as_deref(), Some("tenant_id"));
    let (s, b) = call(server.as_tenant(&key_b, Method::GET, "/v1/entities?tenant_id=1")).await;
    assert_eq!(assert_error(s, &b, 400).as_deref(), Some("tenant_id"));

    assert_eq!(snapshot(&server).await, before, "nothing of A changed");
    server.stop().await;
}

const INJECTIONS: &[&str] = &[
    "' OR '1'='1",
    "x'; DROP TABLE entities; --",
    "1 UNION SELECT tenant_id FROM tenants",
    "\"; SELECT set_config('app.current_tenant_id', '1', false); --",
    "sensor%' OR 1=1 --",
    "\\x00\u{0}",
];

#[tokio::test]
async fn injection_strings_in_every_string_parameter_are_refused() {
    let server = Server::start().await;
    let (a, key_a) = server.tenant("tenant-a").await;
    let (_, key_b) = server.tenant("tenant-b").await;
    server.entities(&key_a, 2).await;
    let before = snapshot(&server).await;
    for inj in INJECTIONS {
        let q = urlencode(inj);
        let cases = vec![
            server.as_tenant(
                &key_b,
                Method::GET,
                &format!("/v1/entities?entity_type={q}"),
            ),
            server.as_tenant(&key_b, Method::GET, &format!("/v1/entities?cursor={q}")),
            server.as_tenant(&key_b, Method::GET, &format!("/v1/entities?limit={q}")),
            server.as_tenant(&key_b, Method::GET, &format!("/v1/entities/{q}")),
            server
                .as_tenant(&key_b, Method::POST, "/v1/entities")
                .json(&json!({"entity_type": inj})),
            server
                .as_tenant(&key_b, Method::POST, "/v1/entities")
                .json(&json!([{"entity_type": "ok"}, {"entity_type": inj}])),
            server
                .admin(Method::POST, "/v1/admin/tenants")
                .json(&json!({"tenant_name": inj})),
            server
                .admin(Method::POST, &format!("/v1/admin/tenants/{a}/keys"))
                .json(&json!({"name": inj})),
            server
                .admin(Method::POST, "/v1/admin/attributes")
                .json(&json!({"attribute_name": inj, "data_type": "string"})),
            server
                .admin(Method::POST, "/v1/admin/attributes")
                .json(&json!({"attribute_name": "x", "data_type": inj})),
            server.admin(Method::GET, &format!("/v1/admin/tenants/{q}")),
        ];
        let mut cases = cases;
        // A NUL cannot even be put in a header; the others go in as a bearer token.
        if !inj.contains('\u{0}') {
            cases.push(server.req(Method::GET, "/v1/me").bearer_auth(inj));
        }
        for req in cases {
            let (s, body) = call(req).await;
            assert!(
                (400..500).contains(&s),
                "{inj}: expected 4xx, got {s}: {body}"
            );
            let text = body.to_string();
            assert!(!text.contains("tenant-a"), "{inj}: leaked: {text}");
        }
    }
    assert_eq!(snapshot(&server).await, before);
    let tenants: i64 = server
        .db
        .admin()
        .await
        .query_one("SELECT count(*) FROM tenants", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(tenants, 2, "no tenant was created by an injection string");
    server.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The foundation's SQL-level isolation checks, through the server's own pool.
#[tokio::test]
async fn the_servers_pool_enforces_isolation_in_the_database() {
    let server = Server::start().await;
    let (a, key_a) = server.tenant("tenant-a").await;
    let (b, _) = server.tenant("tenant-b").await;
    let a_ids = server.entities(&key_a, 2).await;
    let store = server.state.store();

    let client = store
        .primary()
        .get()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for table in [
        "entities",
        "entity_values_ts",
        "entity_jsonb",
        "tenant_attribute_stats",
    ] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        assert_eq!(n, 0, "{table} without tenant context");
    }
    let denied = client
        .query("SELECT count(*) FROM public.entities_p0", &[])
        .await;
    assert!(denied.is_err(), "partitions are not granted");
    drop(client);

    let seen = store
        .with_tenant(TenantId(b), |tx| {
            async move {
                let n: i64 = tx
                    .query_one("SELECT count(*) FROM entities", &[])
                    .await?
                    .get(0);
                let touched = tx.execute("UPDATE entities SET version = 42", &[]).await?;
                Ok::<_, StoreError>((n, touched))
            }
            .boxed()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen, (0, 0), "B sees and touches none of A's entities");
    let versions = store
        .with_tenant(TenantId(a), |tx| {
            async move {
                let rows = tx
                    .query("SELECT version FROM entities ORDER BY entity_id", &[])
                    .await?;
                Ok::<_, StoreError>(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>())
            }
            .boxed()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, vec![1; a_ids.len()]);
    server.stop().await;
}
