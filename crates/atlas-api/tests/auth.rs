//! Every endpoint refuses missing, wrong, revoked and misplaced credentials.

use reqwest::Method;
use serde_json::json;

use crate::support::{ADMIN, Server, assert_error, call};

/// (method, path, body) of every tenant endpoint; `{e}` is an entity of the caller.
fn tenant_endpoints(e: i64) -> Vec<(Method, String, Option<serde_json::Value>)> {
    vec![
        (Method::GET, "/v1/me".into(), None),
        (Method::GET, "/v1/attributes".into(), None),
        (
            Method::POST,
            "/v1/entities".into(),
            Some(json!({"entity_type": "sensor"})),
        ),
        (Method::GET, "/v1/entities".into(), None),
        (Method::GET, format!("/v1/entities/{e}"), None),
        (
            Method::PATCH,
            format!("/v1/entities/{e}"),
            Some(json!({"cold_attrs": {"a": 1}})),
        ),
        (Method::DELETE, format!("/v1/entities/{e}"), None),
    ]
}

/// (method, path, body) of every admin endpoint.
fn admin_endpoints(
    tenant: i64,
    key: i64,
    attribute: i64,
) -> Vec<(Method, String, Option<serde_json::Value>)> {
    vec![
        (
            Method::POST,
            "/v1/admin/tenants".into(),
            Some(json!({"tenant_name": "auth-probe"})),
        ),
        (Method::GET, "/v1/admin/tenants".into(), None),
        (Method::GET, format!("/v1/admin/tenants/{tenant}"), None),
        (
            Method::POST,
            format!("/v1/admin/tenants/{tenant}/deactivate"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/admin/tenants/{tenant}/activate"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/admin/tenants/{tenant}/keys"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/v1/admin/tenants/{tenant}/keys"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/admin/tenants/{tenant}/keys/{key}"),
            None,
        ),
        (
            Method::POST,
            "/v1/admin/attributes".into(),
            Some(json!({"attribute_name": "probe", "data_type": "string"})),
        ),
        (Method::GET, "/v1/admin/attributes".into(), None),
        (
            Method::PATCH,
            format!("/v1/admin/attributes/{attribute}"),
            Some(json!({"is_hot": true})),
        ),
    ]
}

fn with_body(
    req: reqwest::RequestBuilder,
    body: &Option<serde_json::Value>,
) -> reqwest::RequestBuilder {
    match body {
        Some(b) => req.json(b),
        None => req,
    }
}

#[tokio::test]
async fn tenant_endpoints_refuse_bad_credentials() {
    let server = Server::start().await;
    let (tenant, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let (_, revoked_key) = {
        let (status, k) = call(
            server
                .admin(Method::POST, &format!("/v1/admin/tenants/{tenant}/keys"))
                .json(&json!({"name": "old"})),
        )
        .await;
        assert_eq!(status, 201);
        let id = k["key_id"].as_i64().unwrap_or_default();
        let (status, _) = call(server.admin(
            Method::DELETE,
            &format!("/v1/admin/tenants/{tenant}/keys/{id}"),
        ))
        .await;
        assert_eq!(status, 200);
        (id, k["secret"].as_str().unwrap_or_default().to_owned())
    };
    // A well-formed key with the right prefix but the wrong secret.
    let forged = format!(
        "{}{}",
        &key[..key.len() - 4],
        if key.ends_with("0000") {
            "1111"
        } else {
            "0000"
        }
    );
    let unknown = format!("atlas_ZZZZZZZZZZZZ_{}", "ab".repeat(32));

    for (method, path, body) in tenant_endpoints(e) {
        for (what, auth) in [
            ("no key", None),
            ("garbage", Some("not-a-key")),
            ("unknown key", Some(unknown.as_str())),
            ("forged secret", Some(forged.as_str())),
            ("revoked key", Some(revoked_key.as_str())),
            ("admin token", Some(ADMIN)),
        ] {
            let mut req = server.req(method.clone(), &path);
            if let Some(a) = auth {
                req = req.bearer_auth(a);
            }
            let (status, resp) = call(with_body(req, &body)).await;
            assert_error(status, &resp, 401);
            let _ = what;
        }
    }
    // Deactivated tenant: 403 everywhere, and back after reactivation.
    let (status, _) = call(server.admin(
        Method::POST,
        &format!("/v1/admin/tenants/{tenant}/deactivate"),
    ))
    .await;
    assert_eq!(status, 200);
    for (method, path, body) in tenant_endpoints(e) {
        let (status, resp) = call(with_body(server.as_tenant(&key, method, &path), &body)).await;
        assert_error(status, &resp, 403);
    }
    let (status, _) = call(server.admin(
        Method::POST,
        &format!("/v1/admin/tenants/{tenant}/activate"),
    ))
    .await;
    assert_eq!(status, 200);
    let (status, me) = call(server.as_tenant(&key, Method::GET, "/v1/me")).await;
    assert_eq!((status, me["tenant_id"].as_i64()), (200, Some(tenant)));
    server.stop().await;
}

#[tokio::test]
async fn admin_endpoints_refuse_everything_but_the_admin_token() {
    let server = Server::start().await;
    let (tenant, key) = server.tenant("acme").await;
    let (_, keys) =
        call(server.admin(Method::GET, &format!("/v1/admin/tenants/{tenant}/keys"))).await;
    let key_id = keys["items"][0]["key_id"].as_i64().unwrap_or_default();
    let (status, attr) = call(
        server
            .admin(Method::POST, "/v1/admin/attributes")
            .json(&json!({"attribute_name": "status", "data_type": "string", "is_hot": true})),
    )
    .await;
    assert_eq!(status, 201, "{attr}");
    let attribute = attr["attribute_id"].as_i64().unwrap_or_default();

    for (method, path, body) in admin_endpoints(tenant, key_id, attribute) {
        for auth in [
            None,
            Some(key.as_str()),
            Some("test-admin-token-012345678"),
            Some(""),
        ] {
            let mut req = server.req(method.clone(), &path);
            if let Some(a) = auth {
                req = req.bearer_auth(a);
            }
            let (status, resp) = call(with_body(req, &body)).await;
            assert_error(status, &resp, 401);
        }
        let (status, resp) = call(with_body(server.admin(method.clone(), &path), &body)).await;
        assert!(
            status < 300,
            "{method} {path} with the admin token: {status} {resp}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_configured_the_admin_api_is_closed() {
    let db = atlas_testkit::TestDb::new().await;
    let state = atlas_api::AppState::new(
        db.store(2),
        None,
        atlas_cache::Cache::disabled(),
        atlas_config::Limits::default(),
        &atlas_config::Replication::default(),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(atlas_api::serve(listener, state, std::future::pending()));
    let (status, body) = crate::support::split(
        reqwest::Client::new()
            .get(format!("http://{addr}/v1/admin/tenants"))
            .bearer_auth("")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_error(status, &body, 401);
    task.abort();
}
