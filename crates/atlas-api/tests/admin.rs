//! The admin API: tenants, keys (shown once, hashed at rest, revocable) and attributes.

use reqwest::Method;
use serde_json::json;

use crate::support::{Server, assert_error, call};

#[tokio::test]
async fn tenants_are_created_listed_paged_and_deactivated() {
    let server = Server::start().await;
    let mut ids = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let (s, t) = call(
            server
                .admin(Method::POST, "/v1/admin/tenants")
                .json(&json!({"tenant_name": name})),
        )
        .await;
        assert_eq!(s, 201, "{t}");
        assert_eq!(t["is_active"], true);
        ids.push(t["tenant_id"].as_i64().unwrap_or_default());
    }
    let (s, body) = call(
        server
            .admin(Method::POST, "/v1/admin/tenants")
            .json(&json!({"tenant_name": "beta"})),
    )
    .await;
    assert_eq!(assert_error(s, &body, 409).as_deref(), Some("tenant_name"));

    let (_, page1) = call(server.admin(Method::GET, "/v1/admin/tenants?limit=2")).await;
    let (_, page2) = call(server.admin(
        Method::GET,
        &format!(
            "/v1/admin/tenants?limit=2&cursor={}",
            page1["next_cursor"].as_str().unwrap_or("")
        ),
    ))
    .await;
    let names: Vec<&str> = page1["items"]
        .as_array()
        .into_iter()
        .chain(page2["items"].as_array())
        .flatten()
        .filter_map(|t| t["tenant_name"].as_str())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert!(
        page2.get("next_cursor").is_none(),
        "last page has no cursor: {page2}"
    );

    let (s, t) = call(server.admin(
        Method::POST,
        &format!("/v1/admin/tenants/{}/deactivate", ids[1]),
    ))
    .await;
    assert_eq!((s, t["is_active"].as_bool()), (200, Some(false)));
    let (s, t) = call(server.admin(Method::GET, &format!("/v1/admin/tenants/{}", ids[1]))).await;
    assert_eq!((s, t["is_active"].as_bool()), (200, Some(false)));
    for path in [
        "/v1/admin/tenants/999999",
        "/v1/admin/tenants/999999/deactivate",
    ] {
        let method = if path.ends_with("deactivate") {
            Method::POST
        } else {
            Method::GET
        };
        let (s, body) = call(server.admin(method, path)).await;
        assert_error(s, &body, 404);
    }
    server.stop().await;
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_revocable() {
    let server = Server::start().await;
    let (tenant, first) = server.tenant("acme").await;
    let (s, issued) = call(
        server
            .admin(Method::POST, &format!("/v1/admin/tenants/{tenant}/keys"))
            .json(&json!({"name": "ci-bot"})),
    )
    .await;
    assert_eq!(s, 201);
    let secret = issued["secret"].as_str().unwrap_or_default().to_owned();
    assert!(
        secret.starts_with(&format!(
            "atlas_{}_",
            issued["prefix"].as_str().unwrap_or("?")
        )),
        "{secret}"
    );
    assert_eq!(
        secret.len(),
        "atlas_".len() + 12 + 1 + 64,
        "256 random bits as hex"
    );

    let (_, list) =
        call(server.admin(Method::GET, &format!("/v1/admin/tenants/{tenant}/keys"))).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert!(
        !list.to_string().contains(&secret[20..]),
        "listing shows no secret"
    );
    let stored: Vec<Vec<u8>> = server
        .db
        .admin()
        .await
        .query("SELECT key_hash FROM api_keys", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(stored.iter().all(|h| {
        h.len() == 32
            && !secret
                .as_bytes()
                .windows(16)
                .any(|w| h.windows(16).any(|x| x == w))
    }));

    // Both keys work; revoking one leaves the other working.
    for key in [&first, &secret] {
        let (s, _) = call(server.as_tenant(key, Method::GET, "/v1/me")).await;
        assert_eq!(s, 200);
    }
    let key_id = issued["key_id"].as_i64().unwrap_or_default();
    let (s, revoked) = call(server.admin(
        Method::DELETE,
        &format!("/v1/admin/tenants/{tenant}/keys/{key_id}"),
    ))
    .await;
    assert_eq!(s, 200);
    assert!(revoked["revoked_at"].is_string());
    let (s, body) = call(server.as_tenant(&secret, Method::GET, "/v1/me")).await;
    assert_error(s, &body, 401);
    let (s, _) = call(server.as_tenant(&first, Method::GET, "/v1/me")).await;
    assert_eq!(s, 200);
    // Revoking again is idempotent; another tenant's key id is not found under this tenant.
    let (s, _) = call(server.admin(
        Method::DELETE,
        &format!("/v1/admin/tenants/{tenant}/keys/{key_id}"),
    ))
    .await;
    assert_eq!(s, 200);
    let (other, _) = server.tenant("other").await;
    let (s, body) = call(server.admin(
        Method::DELETE,
        &format!("/v1/admin/tenants/{other}/keys/{key_id}"),
    ))
    .await;
    assert_error(s, &body, 404);
    let (s, body) = call(
        server
            .admin(Method::POST, "/v1/admin/tenants/999999/keys")
            .json(&json!({})),
    )
    .await;
    assert_error(s, &body, 404);
    server.stop().await;
}

#[tokio::test]
async fn attributes_are_defined_validated_and_updated() {
    let server = Server::start().await;
    let (s, a) = call(
        server
            .admin(Method::POST, "/v1/admin/attributes")
            .json(&json!({"attribute_name": "serial", "data_type": "string", "validation_regex": "^[A-Z]{2}[0-9]{6}$"})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(
        (a["is_hot"].as_bool(), a["data_type"].as_str()),
        (Some(false), Some("string"))
    );
    let id = a["attribute_id"].as_i64().unwrap_or_default();

    let bad = [
        (
            json!({"attribute_name": "serial", "data_type": "string"}),
            409,
            "attribute_name",
        ),
        (
            json!({"attribute_name": "9lives", "data_type": "string"}),
            422,
            "attribute_name",
        ),
        (
            json!({"attribute_name": "t", "data_type": "integer", "validation_regex": "^1$"}),
            422,
            "validation_regex",
        ),
        (
            json!({"attribute_name": "t", "data_type": "string", "validation_regex": "(a)\\1"}),
            422,
            "validation_regex",
        ),
        (
            json!({"attribute_name": "t", "data_type": "string", "validation_regex": "x".repeat(2000)}),
            422,
            "validation_regex",
        ),
        (json!({"attribute_name": "t"}), 400, "data_type"),
        (
            json!({"attribute_name": "t", "data_type": "string", "is_hot": "yes"}),
            400,
            "is_hot",
        ),
    ];
    for (body, status, field) in bad {
        let (s, resp) = call(
            server
                .admin(Method::POST, "/v1/admin/attributes")
                .json(&body),
        )
        .await;
        assert_eq!(
            assert_error(s, &resp, status).as_deref(),
            Some(field),
            "{body}"
        );
    }

    let (s, a) = call(
        server
            .admin(Method::PATCH, &format!("/v1/admin/attributes/{id}"))
            .json(&json!({"is_hot": true})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (a["is_hot"].as_bool(), a["validation_regex"].as_str()),
        (Some(true), Some("^[A-Z]{2}[0-9]{6}$"))
    );
    let (s, a) = call(
        server
            .admin(Method::PATCH, &format!("/v1/admin/attributes/{id}"))
            .json(&json!({"validation_regex": null})),
    )
    .await;
    assert_eq!((s, a["validation_regex"].is_null()), (200, true));
    let (s, body) = call(
        server
            .admin(Method::PATCH, &format!("/v1/admin/attributes/{id}"))
            .json(&json!({"data_type": "integer"})),
    )
    .await;
    assert_eq!(
        assert_error(s, &body, 400).as_deref(),
        Some("data_type"),
        "data_type is fixed"
    );
    let (s, body) = call(
        server
            .admin(Method::PATCH, "/v1/admin/attributes/424242")
            .json(&json!({"is_hot": true})),
    )
    .await;
    assert_error(s, &body, 404);

    // Tenants read the catalogue.
    let (_, key) = server.tenant("acme").await;
    let (s, list) = call(server.as_tenant(&key, Method::GET, "/v1/attributes")).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"][0]["attribute_name"], "serial");
    server.stop().await;
}
