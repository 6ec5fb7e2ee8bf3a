//! The HTTP contract: one error shape naming the field, limits, 503 when the database is
//! gone, and an OpenAPI document that covers every route.

use reqwest::Method;
use serde_json::{Value, json};

use atlas_config::Limits;

use crate::support::{Server, assert_error, call, header, split};

#[tokio::test]
async fn bad_bodies_get_the_uniform_error_naming_the_field() {
    let limits = Limits {
        max_body_bytes: 4096,
        ..Limits::default()
    };
    let server = Server::start_with(limits).await;
    let (_, key) = server.tenant("acme").await;
    let post = |body: reqwest::Body, ct: Option<&str>| {
        let mut r = server
            .as_tenant(&key, Method::POST, "/v1/entities")
            .body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r
    };
    let json_ct = Some("application/json");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (post("{\"entity_type\": ".into(), json_ct), 400, "body"),
        (post("".into(), json_ct), 400, "body"),
        (post("   ".into(), json_ct), 400, "body"),
        (post("\"just a string\"".into(), json_ct), 400, "body"),
        (
            post("{\"entity_type\": 5}".into(), json_ct),
            400,
            "entity_type",
        ),
        (post("{}".into(), json_ct), 400, "entity_type"),
        (
            post(
                "{\"entity_type\": \"s\", \"cold_attrs\": [1]}".into(),
                json_ct,
            ),
            422,
            "cold_attrs",
        ),
        (
            post(
                "[{\"entity_type\": \"s\"}, {\"entity_type\": true}]".into(),
                json_ct,
            ),
            400,
            "[1].entity_type",
        ),
        (
            post(
                "[{\"entity_type\": \"s\"}, {\"entity_type\": \"bad type!\"}]".into(),
                json_ct,
            ),
            422,
            "body[1].entity_type",
        ),
        (post("[]".into(), json_ct), 422, "body"),
        (
            post("{\"entity_type\": \"s\"}".into(), Some("text/plain")),
            415,
            "body",
        ),
        (post("{\"entity_type\": \"s\"}".into(), None), 415, "body"),
        (
            post(
                format!("{{\"entity_type\": \"{}\"}}", "x".repeat(5000)).into(),
                json_ct,
            ),
            413,
            "body",
        ),
    ];
    for (req, status, field) in cases {
        let (s, body) = call(req).await;
        assert_eq!(
            assert_error(s, &body, status).as_deref(),
            Some(field),
            "{body}"
        );
    }
    let (s, body) = call(
        server
            .admin(Method::POST, "/v1/admin/attributes")
            .json(&json!({"attribute_name": "x", "data_type": "float"})),
    )
    .await;
    assert_eq!(assert_error(s, &body, 400).as_deref(), Some("data_type"));
    let (s, body) = call(server.admin(Method::POST, "/v1/admin/attributes").json(
        &json!({"attribute_name": "x", "data_type": "string", "validation_regex": "(unclosed"}),
    ))
    .await;
    assert_eq!(
        assert_error(s, &body, 422).as_deref(),
        Some("validation_regex")
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_routes_and_methods_get_the_uniform_error() {
    let server = Server::start().await;
    let (_, key) = server.tenant("acme").await;
    let cases: Vec<(Method, &str, u16, Option<&str>)> = vec![
        (Method::GET, "/v1/entities/abc", 400, Some("id")),
        (
            Method::GET,
            "/v1/entities/99999999999999999999",
            400,
            Some("id"),
        ),
        (Method::GET, "/v1/entities/0", 404, None),
        (Method::GET, "/v1/entities/-5", 400, Some("id")),
        (Method::GET, "/v1/entities/+1", 400, Some("id")),
        (Method::GET, "/v1/entities/01", 400, Some("id")),
        (Method::GET, "/v1/entities?limit=0", 400, Some("limit")),
        (Method::GET, "/v1/entities?limit=1001", 400, Some("limit")),
        (Method::GET, "/v1/entities?limit=ten", 400, Some("limit")),
        (Method::GET, "/v1/entities?cursor=-1", 400, Some("cursor")),
        (Method::GET, "/v1/entities?cursor=abc", 400, Some("cursor")),
        (Method::GET, "/v1/entities?colour=red", 400, Some("colour")),
        (Method::GET, "/v1/nothing-here", 404, None),
        (Method::PUT, "/v1/entities", 405, None),
    ];
    for (method, path, status, field) in cases {
        let (s, body) = call(server.as_tenant(&key, method.clone(), path)).await;
        assert_eq!(
            assert_error(s, &body, status).as_deref(),
            field,
            "{method} {path}: {body}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let limits = Limits {
        rate_per_second: 1.0,
        rate_burst: 5.0,
        ..Limits::default()
    };
    let server = Server::start_with(limits).await;
    let (_, noisy) = server.tenant("noisy").await;
    let (_, quiet) = server.tenant("quiet").await;
    let mut limited = None;
    for _ in 0..10 {
        let resp = server
            .as_tenant(&noisy, Method::GET, "/v1/me")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if resp.status() == 429 {
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            limited = Some((retry, split(resp).await.1));
            break;
        }
    }
    let (retry, body) = limited.unwrap_or_else(|| panic!("never rate limited"));
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], "rate_limited");
    let (s, _) = call(server.as_tenant(&quiet, Method::GET, "/v1/me")).await;
    assert_eq!(s, 200, "one tenant's budget does not limit another");
    server.stop().await;
}

#[tokio::test]
async fn telemetry_is_charged_per_value_not_per_request() {
    let limits = Limits {
        max_values_per_request: 10,
        telemetry_values_per_second: 1.0,
        telemetry_values_burst: 15.0,
        ..Limits::default()
    };
    let server = Server::start_with(limits).await;
    server
        .define(json!({"attribute_name": "n", "data_type": "integer"}))
        .await;
    let (_, noisy) = server.tenant("noisy").await;
    let (_, quiet) = server.tenant("quiet").await;
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    let ten = |key: &str, e: i64, from: i64| {
        let body: Vec<Value> = (0..10)
            .map(|i| json!({"entity_id": e, "ts": t + from + i, "values": {"n": i}}))
            .collect();
        server
            .as_tenant(key, Method::POST, "/v1/telemetry")
            .json(&body)
    };
    let e = server.entities(&noisy, 1).await[0];
    let (s, b) = call(ten(&noisy, e, 0)).await;
    assert_eq!(s, 200, "{b}");
    // Ten more values do not fit the five left: refused as a whole, with how long to wait.
    let resp = ten(&noisy, e, 100)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((4..=6).contains(&retry), "retry-after {retry}");
    assert_eq!(
        server
            .scalar("SELECT count(*) FROM entity_values_ts", &[])
            .await,
        10
    );
    // Reads of the same tenant are requests, not values; another tenant's values are its own.
    let (s, _) = call(server.as_tenant(&noisy, Method::GET, "/v1/me")).await;
    assert_eq!(s, 200);
    let q = server.entities(&quiet, 1).await[0];
    let (s, b) = call(ten(&quiet, q, 0)).await;
    assert_eq!(s, 200, "{b}");
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_503_with_retry_after_and_readyz_says_so() {
    let db = atlas_testkit::TestDb::new().await;
    // Pools pointing at a port where nothing listens.
    let server = Server::configured(db, |c| {
        c.database_url = Some("postgres://atlas_app:x@127.0.0.1:1/nowhere".into());
        c.replica_urls.clear();
        c.pool_size = 2;
    })
    .await;
    let key = format!("atlas_AAAAAAAAAAAA_{}", "ab".repeat(32));
    let resp = server
        .as_tenant(&key, Method::GET, "/v1/me")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let (s, body) = split(resp).await;
    assert_error(s, &body, 503);
    let (s, body) = call(
        server
            .admin(Method::POST, "/v1/admin/tenants")
            .json(&json!({"tenant_name": "x"})),
    )
    .await;
    assert_error(s, &body, 503);
    let (s, ready) = call(server.req(Method::GET, "/readyz")).await;
    assert_eq!((s, ready["primary"].as_str()), (503, Some("down")));
    let (s, health) = call(server.req(Method::GET, "/healthz")).await;
    assert_eq!((s, health["status"].as_str()), (200, Some("ok")));
    server.stop().await;
}

#[tokio::test]
async fn readyz_reports_primary_migrations_replica_and_redis() {
    let server = Server::start().await;
    // The test's database reaches the replica by WAL replay, a moment after it was created.
    let mut ready = json!(null);
    let mut s = 0;
    for _ in 0..100 {
        (s, ready) = call(server.req(Method::GET, "/readyz")).await;
        if ready["replicas"] == json!(["up"]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["primary"], "up");
    assert_eq!(ready["migrations"], "current");
    assert_eq!(ready["replicas"], json!(["up"]));
    assert_eq!(ready["redis"], "up");
    // An applied migration that no longer matches the binary makes the server not ready.
    server
        .db
        .admin()
        .await
        .execute(
            "UPDATE atlas_schema_migrations SET checksum = 'x' WHERE version = 20",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (s, ready) = call(server.req(Method::GET, "/readyz")).await;
    assert_eq!((s, ready["migrations"].as_str()), (503, Some("changed")));
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_error() {
    let server = Server::start().await;
    let (s, doc) = call(server.req(Method::GET, "/openapi.json")).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    // The router and the document come from one route list: every documented operation is
    // served (no 404/405 from the router), and these are among them.
    let operations: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("no paths"))
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    for (path, method) in [
        ("/healthz", "get"),
        ("/v1/admin/tenants/{id}/keys/{key_id}", "delete"),
        ("/v1/entities/{id}", "patch"),
        ("/v1/telemetry", "post"),
        ("/v1/entities/search", "post"),
        ("/v1/aggregates", "get"),
    ] {
        assert!(
            operations.iter().any(|(p, m)| p == path && m == method),
            "{method} {path} missing: {operations:?}"
        );
    }
    for (path, method) in &operations {
        let concrete = path.replace("{id}", "1").replace("{key_id}", "1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes())
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let s = server
            .req(method.clone(), &concrete)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .status()
            .as_u16();
        assert!(
            s != 404 && s != 405,
            "{method} {path} is documented but not served: {s}"
        );
    }
    let documented: Vec<(&str, &str)> = operations
        .iter()
        .map(|(p, m)| (p.as_str(), m.as_str()))
        .collect();
    for &(path, method) in &documented {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        if path.starts_with("/v1/") {
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{path}"));
            for status in ["401", "503"] {
                let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema,
                    &Value::from("#/components/schemas/ErrorBody"),
                    "{method} {path} {status}"
                );
            }
            assert!(
                op["security"].is_array(),
                "{method} {path} has no security requirement"
            );
        }
    }
    for scheme in ["admin_token", "tenant_key"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
    // The routing headers: every routed read takes the consistency header and
    // says where it was served; every write says its WAL position.
    for &(path, method) in &documented {
        let op = &doc["paths"][path][method];
        let header_params: Vec<&str> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "header")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let ok = op["responses"]
            .as_object()
            .and_then(|r| r.iter().find(|(s, _)| s.starts_with('2')))
            .map(|(_, r)| r["headers"].clone())
            .unwrap_or(Value::Null);
        let is_read = [
            "/v1/entities/search",
            "/v1/aggregates",
            "/v1/stats/attributes",
        ]
        .contains(&path)
            || (method == "get" && path.starts_with("/v1/entities"));
        let is_write = path == "/v1/telemetry"
            || (path.starts_with("/v1/entities")
                && ["post", "patch", "delete"].contains(&method)
                && path != "/v1/entities/search");
        let is_operator = !path.starts_with("/v1/") || path.starts_with("/v1/admin/");
        if is_read {
            assert_eq!(header_params, ["x-atlas-consistency"], "{method} {path}");
            assert!(
                ok["x-atlas-served-by"].is_object() && ok["x-atlas-lag-ms"].is_object(),
                "{method} {path}: {ok}"
            );
        } else if is_write {
            assert!(ok["x-atlas-lsn"].is_object(), "{method} {path}: {ok}");
        } else if is_operator {
            assert!(
                header_params.is_empty() && ok.get("x-atlas-served-by").is_none(),
                "{method} {path}"
            );
        }
    }
    server.stop().await;
}

/// Regressions found by Schemathesis: none of these may be a 500 or a dropped connection.
#[tokio::test]
async fn fuzzer_findings_stay_fixed() {
    let server = Server::start().await;
    let (_, key) = server.tenant("acme").await;
    let id = server.entities(&key, 1).await[0];

    // jsonb cannot hold NUL: 422 naming the path, in values and in keys.
    for (body, field) in [
        (
            json!({"entity_type": "s", "cold_attrs": {"a": ["ok", "bad\u{0}"]}}),
            "cold_attrs.a[1]",
        ),
        (
            json!({"entity_type": "s", "cold_attrs": {"k\u{0}": 1}}),
            "cold_attrs",
        ),
    ] {
        let (s, resp) = call(
            server
                .as_tenant(&key, Method::POST, "/v1/entities")
                .json(&body),
        )
        .await;
        assert_eq!(
            assert_error(s, &resp, 422).as_deref(),
            Some(field),
            "{resp}"
        );
    }
    let (s, resp) = call(
        server
            .as_tenant(&key, Method::PATCH, &format!("/v1/entities/{id}"))
            .json(&json!({"cold_attrs": {"x": "\u{0}"}})),
    )
    .await;
    assert_eq!(assert_error(s, &resp, 422).as_deref(), Some("cold_attrs.x"));

    // Numbers far outside f64's comfortable range round-trip exactly through jsonb.
    let big = r#"{"entity_type": "s", "cold_attrs": {"max": -1.7976931348623157e308, "tiny": 1.2256459097055838e-177, "exact": 0.1000000000000000000001}}"#;
    let (s, created) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/entities")
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let new_id = created["items"][0]["entity_id"]
        .as_i64()
        .unwrap_or_default();
    let (s, got) =
        call(server.as_tenant(&key, Method::GET, &format!("/v1/entities/{new_id}"))).await;
    assert_eq!(s, 200, "{got}");
    let exact: f64 = got["cold_attrs"]["tiny"].as_f64().unwrap_or_default();
    assert!((exact - 1.2256459097055838e-177).abs() < 1e-190, "{got}");
    assert!(
        got.to_string().contains("0.1000000000000000000001"),
        "exact decimal kept: {got}"
    );

    // A struct body sent as an array is not silently accepted.
    let (s, resp) = call(
        server
            .admin(Method::PATCH, "/v1/admin/attributes/1")
            .header("content-type", "application/json")
            .body("[null, null]"),
    )
    .await;
    assert_eq!(assert_error(s, &resp, 400).as_deref(), Some("body"));

    // JSON Schema integers may be written 2.0; 2.5 is not an integer.
    let (s, upd) = call(
        server
            .as_tenant(&key, Method::PATCH, &format!("/v1/entities/{id}"))
            .json(&json!({"version": 1.0})),
    )
    .await;
    assert_eq!((s, upd["version"].as_i64()), (200, Some(2)), "{upd}");
    let (s, resp) = call(
        server
            .as_tenant(&key, Method::PATCH, &format!("/v1/entities/{id}"))
            .json(&json!({"version": 2.5})),
    )
    .await;
    assert_eq!(assert_error(s, &resp, 400).as_deref(), Some("version"));

    // An empty filter is a malformed query parameter (400), not a semantic error.
    let (s, resp) = call(server.as_tenant(&key, Method::GET, "/v1/entities?entity_type=")).await;
    assert_eq!(assert_error(s, &resp, 400).as_deref(), Some("entity_type"));
    server.stop().await;
}

/// Every operation the OpenAPI document says takes a JSON body refuses input after the first
/// document (a second document, stray characters) with 400 `trailing_input`, and nothing of a
/// valid first document is written.
#[tokio::test]
async fn every_json_route_refuses_input_after_its_document_and_writes_nothing() {
    let server = Server::start().await;
    let (tenant, key) = server.tenant("acme").await;
    server
        .define(json!({"attribute_name": "temp", "data_type": "decimal", "is_hot": true}))
        .await;
    let e = server.entities(&key, 1).await[0];
    let (_, doc) = call(server.req(Method::GET, "/openapi.json")).await;
    let paths = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("no paths"));
    let mut routes = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().into_iter().flatten() {
            if op["requestBody"]["content"]["application/json"].is_null() {
                continue;
            }
            routes += 1;
            let url = path
                .replace(
                    "{id}",
                    &if path.starts_with("/v1/admin/tenants") {
                        tenant.to_string()
                    } else {
                        e.to_string()
                    },
                )
                .replace("{key_id}", "1");
            let method = Method::from_bytes(method.to_uppercase().as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            for body in ["{}{}", "{} xyz", "[] ]]]", "{}\n{}\n"] {
                let req = if path.starts_with("/v1/admin/") {
                    server.admin(method.clone(), &url)
                } else {
                    server.as_tenant(&key, method.clone(), &url)
                };
                let (s, b) = call(req.header("content-type", "application/json").body(body)).await;
                assert_eq!(s, 400, "{method} {url} with {body:?}: {b}");
                assert_eq!(b["error"]["code"], "trailing_input", "{method} {url}: {b}");
                assert_eq!(b["error"]["field"], "body", "{method} {url}: {b}");
            }
        }
    }
    assert!(
        routes >= 6,
        "only {routes} JSON routes found in the document"
    );

    // Valid first documents: nothing of them is written.
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    let two_readings = format!(
        r#"{{"entity_id":{e},"ts":{t},"values":{{"temp":2}}}}{{"entity_id":{e},"ts":{},"values":{{"temp":3}}}}"#,
        t + 1
    );
    let one_then_garbage = format!(r#"{{"entity_id":{e},"ts":{t},"values":{{"temp":2}}}} xyz"#);
    for body in [two_readings, one_then_garbage] {
        let (s, b) = call(
            server
                .as_tenant(&key, Method::POST, "/v1/telemetry")
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(
            (s, &b["error"]["code"]),
            (400, &json!("trailing_input")),
            "{b}"
        );
    }
    let writes = [
        (
            server.as_tenant(&key, Method::POST, "/v1/entities"),
            r#"{"entity_type":"g"} ]]]"#,
        ),
        (
            server.admin(Method::POST, "/v1/admin/tenants"),
            r#"{"tenant_name":"x"}{"tenant_name":"y"}"#,
        ),
        (
            server.admin(Method::POST, "/v1/admin/attributes"),
            r#"{"attribute_name":"extra","data_type":"string"} 1"#,
        ),
        (
            server.as_tenant(&key, Method::PATCH, &format!("/v1/entities/{e}")),
            r#"{"cold_attrs":{"changed":true}}{}"#,
        ),
    ];
    for (req, body) in writes {
        let (s, b) = call(req.header("content-type", "application/json").body(body)).await;
        assert_eq!(
            (s, &b["error"]["code"]),
            (400, &json!("trailing_input")),
            "{b}"
        );
    }
    // Durable ingest acknowledges after commit, so a value would be there already.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (sql, want) in [
        ("SELECT count(*) FROM entity_values_ts", 0),
        ("SELECT count(*) FROM entity_values_ingest", 0),
        ("SELECT count(*) FROM entities WHERE entity_type = 'g'", 0),
        (
            "SELECT count(*) FROM tenants WHERE tenant_name IN ('x', 'y')",
            0,
        ),
        (
            "SELECT count(*) FROM attributes WHERE attribute_name = 'extra'",
            0,
        ),
        (
            "SELECT count(*) FROM entity_jsonb WHERE cold_attrs ? 'changed'",
            0,
        ),
    ] {
        assert_eq!(server.scalar(sql, &[]).await, want, "{sql}");
    }
    server.stop().await;
}

/// Refusals say how to fix what they refuse.
#[tokio::test]
async fn errors_point_to_the_fix() {
    let server = Server::start().await;
    let (_, key) = server.tenant("acme").await;
    server
        .define(json!({"attribute_name": "gain", "data_type": "decimal"}))
        .await;
    let e = server.entities(&key, 1).await[0];
    let now = chrono::Utc::now().timestamp_millis();
    let post = |body: Value| {
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .json(&body)
    };
    let in_ms = (now / 1000 * 1000).to_string();
    let cases = [
        (
            json!({"entity_id": e, "ts": now / 1000, "values": {"gain": 1}}),
            "ts",
            vec![
                "looks like epoch seconds",
                "epoch milliseconds",
                in_ms.as_str(),
            ],
        ),
        (
            json!({"entity_id": e, "ts": now - 3 * 365 * 86_400_000_i64, "values": {"gain": 1}}),
            "ts",
            vec![
                "before the stored time range",
                "atlas maintain backfill --since ",
            ],
        ),
        (
            json!({"entity_id": e, "values": {"gian": 1}}),
            "values.gian",
            vec!["unknown attribute `gian`", "atlas attribute define gian"],
        ),
        (
            json!({"entity_id": e, "values": {"gain": 1.1234567}}),
            "values.gain",
            vec!["allow_rounding"],
        ),
    ];
    for (body, field, says) in cases {
        let (s, b) = call(post(body.clone())).await;
        assert_eq!(
            assert_error(s, &b, 422).as_deref(),
            Some(field),
            "{body}: {b}"
        );
        let message = b["error"]["message"].as_str().unwrap_or("");
        for part in says {
            assert!(message.contains(part), "{body}: `{part}` not in {message}");
        }
    }
    let agg = |query: &str| {
        server.as_tenant(
            &key,
            Method::GET,
            &format!(
                "/v1/aggregates?attribute=gain&from={}&to={now}&fn=avg{query}",
                now - 3_600_000
            ),
        )
    };
    let (s, b) = call(agg("&bucket=2mo")).await;
    assert_eq!(assert_error(s, &b, 400).as_deref(), Some("bucket"), "{b}");
    let message = b["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("`2mo` is not a bucket width") && !message.contains("required"),
        "{message}"
    );
    let (s, b) = call(agg("&bucket=1h&bucket=1d")).await;
    assert_eq!(assert_error(s, &b, 400).as_deref(), Some("bucket"), "{b}");
    server.stop().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    e.finish().unwrap_or_else(|e| panic!("{e}"))
}

/// What HTTP clients expect: gzip request bodies (the body limit applies decompressed),
/// compressed answers, `X-Request-Id` in and out, CORS only for configured origins, and a
/// request timeout answered with the uniform 503.
#[tokio::test]
async fn gzip_request_ids_cors_and_timeouts_work_as_clients_expect() {
    let limits = Limits {
        max_body_bytes: 64 * 1024,
        cors_allowed_origins: vec!["https://dash.example".into()],
        request_timeout: std::time::Duration::from_millis(500),
        ..Limits::default()
    };
    let server = Server::start_with(limits).await;
    let (_, key) = server.tenant("acme").await;
    server
        .define(json!({"attribute_name": "temp", "data_type": "integer"}))
        .await;
    let e = server.entities(&key, 1).await[0];
    let t = chrono::Utc::now().timestamp_millis() - 60_000;

    // A gzip body is read decompressed.
    let body = serde_json::to_vec(&json!([
        {"entity_id": e, "ts": t, "values": {"temp": 1}},
        {"entity_id": e, "ts": t + 1, "values": {"temp": 2}},
    ]))
    .unwrap_or_default();
    let (s, b) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(gzip(&body)),
    )
    .await;
    assert_eq!((s, &b["accepted"]), (200, &json!(2)), "{b}");
    assert_eq!(
        server
            .scalar("SELECT count(*) FROM entity_values_ts", &[])
            .await,
        2
    );
    // A small gzip that inflates past the limit is refused, as a large body would be.
    let bomb = gzip(&vec![b' '; 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let (s, b) = call(
        server
            .as_tenant(&key, Method::POST, "/v1/telemetry")
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(bomb),
    )
    .await;
    assert_eq!(assert_error(s, &b, 413).as_deref(), Some("body"), "{b}");
    // An encoding the server does not speak is a 415.
    let resp = server
        .as_tenant(&key, Method::POST, "/v1/telemetry")
        .header("content-type", "application/json")
        .header("content-encoding", "compress")
        .body(body.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 415);

    // Answers are compressed for a client that asks.
    let resp = server
        .req(Method::GET, "/openapi.json")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        resp.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );

    // Every answer carries a request id: the client's, or a new one.
    let resp = server
        .req(Method::GET, "/healthz")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = header(&resp, "x-request-id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
    let resp = server
        .as_tenant(&key, Method::GET, "/v1/entities/abc")
        .header("x-request-id", "gateway-42")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"gateway-42"[..])
    );

    // CORS: the configured origin may call and read the routing headers; another may not.
    let preflight = |origin: &str| {
        server
            .req(Method::OPTIONS, "/v1/telemetry")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight("https://dash.example")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://dash.example"[..])
    );
    let other = preflight("https://evil.example")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let resp = server
        .as_tenant(&key, Method::GET, "/v1/me")
        .header("origin", "https://dash.example")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let exposed = header(&resp, "access-control-expose-headers");
    assert!(exposed.contains("x-atlas-served-by"), "{exposed}");

    // A request stuck longer than the timeout (here behind a lock) is a 503 with Retry-After.
    let mut admin = server.db.admin().await;
    let lock = admin.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    lock.batch_execute("LOCK TABLE public.entities IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = server
        .as_tenant(&key, Method::GET, "/v1/entities")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let (_, b) = crate::support::split(resp).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("took longer than 500 ms")),
        "{b}"
    );
    lock.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    let (s, _) = call(server.as_tenant(&key, Method::GET, "/v1/entities")).await;
    assert_eq!(s, 200);
    server.stop().await;
}

#[tokio::test]
async fn without_configured_origins_no_cors_header_is_sent() {
    let server = Server::start().await;
    let resp = server
        .req(Method::OPTIONS, "/v1/me")
        .header("origin", "https://dash.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

/// Every operation is described beyond its summary, every schema has an example, the document
/// names its server, time parameters say both forms they take, and `/docs` serves an
/// interactive page from the binary itself.
#[tokio::test]
async fn the_openapi_document_is_described_with_examples_and_browsable_offline() {
    let server = Server::start().await;
    let (_, doc) = call(server.req(Method::GET, "/openapi.json")).await;
    assert!(doc["servers"][0]["url"].is_string(), "{}", doc["servers"]);
    let mut operations = 0;
    for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            operations += 1;
            let summary = op["summary"].as_str().unwrap_or("");
            let description = op["description"].as_str().unwrap_or("");
            assert!(
                !summary.is_empty() && description.len() > 40 && description != summary,
                "{method} {path}: summary {summary:?}, description {description:?}"
            );
        }
    }
    assert!(operations >= 28, "{operations}");
    let schemas = doc["components"]["schemas"]
        .as_object()
        .unwrap_or_else(|| panic!("no schemas"));
    for (name, schema) in schemas {
        assert!(
            schema["examples"].as_array().is_some_and(|e| !e.is_empty()),
            "schema {name} has no example"
        );
    }
    for (path, name) in [
        ("/v1/entities/{id}/series", "from"),
        ("/v1/aggregates", "to"),
    ] {
        let params = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}"));
        let p = params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} {name}"));
        let kinds: Vec<&str> = p["schema"]["oneOf"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kinds, ["integer", "string"], "{path} {name}: {p}");
        assert_eq!(p["required"], true, "{path} {name}: {p}");
    }
    // RFC 3339 is accepted where the document says so.
    let (_, key) = server.tenant("acme").await;
    server
        .define(json!({"attribute_name": "temp", "data_type": "integer"}))
        .await;
    let e = server.entities(&key, 1).await[0];
    let (s, b) = call(server.as_tenant(
        &key,
        Method::GET,
        &format!(
            "/v1/entities/{e}/series?attribute=temp&from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00.5%2B01:00"
        ),
    ))
    .await;
    assert_eq!(s, 200, "{b}");

    // The page and its assets come from the binary; nothing is fetched from elsewhere.
    let resp = server
        .req(Method::GET, "/docs/")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let page = resp.text().await.unwrap_or_default();
    assert!(page.contains("swagger-ui"), "{page}");
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "{page}"
    );
    for asset in ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"] {
        let resp = server
            .req(Method::GET, asset)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), 200, "{asset}");
    }
    let init = server
        .req(Method::GET, "/docs/swagger-initializer.js")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(init.contains("/openapi.json"), "{init}");
    server.stop().await;
}
