//! The web console in a real browser (headless Chromium through chromedriver) against a real
//! server, database and Redis: signing in, the fleet, search, an entity's chart, editing
//! properties, signing out, a second tenant seeing nothing of the first, refused and expired
//! sessions, and the admin views. Screenshots of each page go to `target/console/`; page load
//! and chart draw times are printed and written to `target/console/timings.json` (reported,
//! not asserted).

use std::path::PathBuf;
use std::time::Instant;

use atlas_testkit::browser::Browser;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN, Server, call};

/// Values of the charted entity's temperature in the last hour.
const CHART_POINTS: i64 = 10_000;

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console")
}

struct Fleet {
    key_a: String,
    key_b: String,
    a: Vec<i64>,
    b: Vec<i64>,
    /// A's entities whose status is "alarm".
    alarms: Vec<i64>,
    /// The time of every entity's first readings (a different value then is a conflict).
    conflict_ts: i64,
    charted: i64,
}

async fn fleet(server: &Server) -> Fleet {
    for (name, t, hot) in [
        ("temperature", "decimal", false),
        ("status", "string", true),
        ("priority", "integer", true),
    ] {
        server
            .define(json!({"attribute_name": name, "data_type": t, "is_hot": hot}))
            .await;
    }
    let (_, key_a) = server.tenant("console-a").await;
    let (_, key_b) = server.tenant("console-b").await;
    let a = server.entities(&key_a, 120).await;
    let (s, body) = call(
        server
            .as_tenant(&key_b, Method::POST, "/v1/entities")
            .json(&json!([
                {"entity_type": "pump", "cold_attrs": {"owner": "tenant-b"}},
                {"entity_type": "pump", "cold_attrs": {"owner": "tenant-b"}},
                {"entity_type": "pump", "cold_attrs": {"owner": "tenant-b"}},
            ])),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let b: Vec<i64> = body["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["entity_id"].as_i64()).collect())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp_millis();
    let mut items_a = Vec::new();
    let mut alarms = Vec::new();
    let charted = a[7];
    for (i, e) in a.iter().enumerate() {
        let status = if i % 10 == 3 { "alarm" } else { "ok" };
        if status == "alarm" {
            alarms.push(*e);
        }
        let mut values = json!({"status": status, "priority": i % 5});
        if *e != charted {
            values["temperature"] = json!(20 + (i % 7));
        }
        items_a.push(json!({"entity_id": e, "ts": now - 60_000, "values": values}));
    }
    // The charted entity: 10 000 readings over the last 50 minutes, a sine wave.
    for i in 0..CHART_POINTS {
        let v = 20.0 + 5.0 * ((i as f64) / 300.0).sin();
        items_a.push(
            json!({"entity_id": charted, "ts": now - 3_000_000 + i * 300,
            "values": {"temperature": (v * 100.0).round() / 100.0}}),
        );
    }
    let items_b: Vec<Value> = b
        .iter()
        .map(|e| json!({"entity_id": e, "ts": now - 60_000, "values": {"status": "alarm", "priority": 9}}))
        .collect();
    for (key, items) in [(&key_a, items_a), (&key_b, items_b)] {
        for chunk in items.chunks(2_000) {
            let (s, body) = call(
                server
                    .as_tenant(key, Method::POST, "/v1/telemetry")
                    .json(&Value::Array(chunk.to_vec())),
            )
            .await;
            assert_eq!(s, 200, "{body}");
        }
    }
    Fleet {
        key_a,
        key_b,
        a,
        b,
        alarms,
        charted,
        conflict_ts: now - 60_000,
    }
}

async fn sign_in(br: &Browser, base: &str, kind: &str, secret: &str) {
    br.goto(&format!("{base}/console#/signin")).await;
    let k = br.find("#signin-kind").await;
    br.select(&k, kind).await;
    let s = br.find("#signin-secret").await;
    br.fill(&s, secret).await;
    br.click(&br.find("#signin-submit").await).await;
}

/// Ids of the fleet table's rows.
async fn fleet_ids(br: &Browser) -> Vec<i64> {
    let v = br
        .js(
            "return [...document.querySelectorAll('#fleet tbody tr')].map(r => Number(r.dataset.entity))",
            vec![],
        )
        .await;
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Waits until the fleet table's row ids satisfy `ok` (the table is replaced when the page's
/// request answers, so earlier rows are never mistaken for the new page).
async fn wait_rows(br: &Browser, what: &str, ok: impl Fn(&[i64]) -> bool) -> Vec<i64> {
    br.wait_for(what, || async {
        let ids = fleet_ids(br).await;
        ok(&ids).then_some(ids)
    })
    .await
}

/// The browser's navigation timing of the current document, ms.
async fn navigation_ms(br: &Browser) -> f64 {
    br.js(
        "const n = performance.getEntriesByType('navigation')[0]; \
         return n ? n.duration : null",
        vec![],
    )
    .await
    .as_f64()
    .unwrap_or(-1.0)
}

/// Nothing of `secret` in the URL, resource URLs, localStorage or cookies.
async fn no_secret_leaks(br: &Browser, secret: &str) {
    let url = br.url().await;
    assert!(!url.contains(secret), "the key is in the URL: {url}");
    let leaks = br
        .js(
            "const s = arguments[0]; \
             const urls = performance.getEntriesByType('resource').map(e => e.name).concat([location.href]); \
             return { urls: urls.filter(u => u.includes(s)), local: JSON.stringify(localStorage).includes(s) || localStorage.length > 0, cookie: document.cookie }",
            vec![json!(secret)],
        )
        .await;
    assert_eq!(leaks["urls"], json!([]), "key in a requested URL");
    assert_eq!(leaks["local"], json!(false), "localStorage is used");
    assert_eq!(leaks["cookie"], json!(""), "cookies are set");
}

#[tokio::test]
async fn console_in_a_real_browser() {
    let server = Server::start().await;
    let f = fleet(&server).await;
    let base = server.base.clone();
    let dir = shots();
    let br = Browser::start().await;
    let mut timings = serde_json::Map::new();

    // The console is served with a strict policy, from the binary.
    let resp = server
        .req(Method::GET, "/console")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // Signed out: any page goes to sign-in.
    br.goto(&format!("{base}/console#/fleet")).await;
    br.find("#signin").await;
    assert!(br.url().await.ends_with("#/signin"));
    br.screenshot(&dir.join("signin.png")).await;

    // A wrong key is refused with a readable message.
    sign_in(&br, &base, "tenant", "atlas_not-a-real-key").await;
    let msg = br.wait_text("#signin-error", "refused").await;
    assert!(msg.contains("wrong or has been revoked"), "{msg}");

    // Tenant A: the fleet, first page of 50 in id order, then the next.
    let t0 = Instant::now();
    sign_in(&br, &base, "tenant", &f.key_a).await;
    let first = wait_rows(&br, "A's first page", |ids| ids.len() == 50).await;
    timings.insert("fleet_ms".into(), json!(t0.elapsed().as_millis()));
    assert_eq!(first, f.a[..50].to_vec());
    let badges = br.text_of("#fleet tbody tr").await.unwrap_or_default();
    assert!(
        badges.contains("status: ok") || badges.contains("status: alarm"),
        "{badges}"
    );
    br.screenshot(&dir.join("fleet.png")).await;
    br.click(&br.find("#page-next").await).await;
    let second = wait_rows(&br, "A's second page", |ids| ids.first() == Some(&f.a[50])).await;
    assert_eq!(second, f.a[50..100].to_vec());
    br.click(&br.find("#page-next").await).await;
    let third = wait_rows(&br, "A's last page", |ids| ids.first() == Some(&f.a[100])).await;
    assert_eq!(third, f.a[100..].to_vec());
    let next = br.find("#page-next").await;
    assert_eq!(
        br.attr(&next, "disabled").await,
        json!(""),
        "no page after the last"
    );

    // Entities by type: A's types (not B's), each a link to its fleet.
    br.goto(&format!("{base}/console#/fleet")).await;
    wait_rows(&br, "the fleet", |ids| ids.len() == 50).await;
    let types = br.wait_text("#fleet-types", "sensor").await;
    assert!(!types.contains("pump"), "B's type: {types}");
    br.click(&br.find("#fleet-types a[data-type=sensor]").await)
        .await;
    br.wait_for("the sensor fleet", || async {
        br.url().await.contains("type=sensor").then_some(())
    })
    .await;
    let sensors = wait_rows(&br, "A's sensors", |ids| ids.len() == 50).await;
    assert_eq!(sensors, f.a[..50].to_vec());

    // Live refresh: a new hot value shows up on the open page without navigating.
    br.goto(&format!("{base}/console#/fleet?live=1")).await;
    wait_rows(&br, "the live fleet", |ids| ids.len() == 50).await;
    let (s, body) = call(
        server
            .as_tenant(&f.key_a, Method::POST, "/v1/telemetry")
            .json(&json!({"entity_id": f.a[0], "values": {"status": "live-check"}})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let url = br.url().await;
    br.wait_text("#fleet", "live-check").await;
    assert_eq!(br.url().await, url, "refreshed in place");

    // Search by a hot attribute: exactly A's alarms.
    br.goto(&format!("{base}/console#/fleet")).await;
    wait_rows(&br, "the fleet", |ids| ids.len() == 50).await;
    br.fill(&br.find("#f-contains").await, "status=\"alarm\"")
        .await;
    br.click(&br.find("#f-apply").await).await;
    let found = wait_rows(&br, "A's alarms", |ids| ids.len() == f.alarms.len()).await;
    assert_eq!(found, f.alarms);
    let t = br.text_of("#fleet").await.unwrap_or_default();
    assert!(!t.contains("status: ok"), "{t}");
    br.screenshot(&dir.join("search.png")).await;
    // A malformed filter names itself, nothing is sent.
    br.fill(&br.find("#f-contains").await, "status").await;
    br.click(&br.find("#f-apply").await).await;
    br.wait_text("#f-error", "name=value").await;

    // The charted entity: latest values, hot attributes, a chart of every reading.
    let t0 = Instant::now();
    br.goto(&format!("{base}/console#/entity/{}?range=1h", f.charted))
        .await;
    let canvas = br
        .find("canvas[data-attribute=temperature][data-points]")
        .await;
    timings.insert("entity_page_ms".into(), json!(t0.elapsed().as_millis()));
    assert_eq!(
        br.attr(&canvas, "data-points").await,
        json!(CHART_POINTS.to_string())
    );
    assert_eq!(br.attr(&canvas, "data-kind").await, json!("raw"));
    let draw: f64 = br
        .attr(&canvas, "data-render-ms")
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1.0);
    timings.insert("chart_10000_points_draw_ms".into(), json!(draw));
    let latest = br.text_of("#latest").await.unwrap_or_default();
    assert!(
        latest.contains("temperature") && latest.contains("status"),
        "{latest}"
    );
    let hot = br.text_of("#hot").await.unwrap_or_default();
    assert!(hot.contains("status") && hot.contains("priority"), "{hot}");
    br.screenshot(&dir.join("entity.png")).await;
    // Drag across the middle half of the chart: the page zooms to that window (fewer of the
    // readings, all of them within it), and "Reset zoom" brings every reading back.
    br.js(
        "const c = document.querySelector('canvas[data-attribute=temperature]'); \
         const r = c.getBoundingClientRect(); const y = r.top + r.height / 2; \
         const at = (f) => r.left + r.width * f; \
         c.dispatchEvent(new MouseEvent('mousedown', {clientX: at(0.35), clientY: y, bubbles: true})); \
         c.dispatchEvent(new MouseEvent('mouseup', {clientX: at(0.75), clientY: y, bubbles: true}));",
        vec![],
    )
    .await;
    let zoomed = br
        .wait_for("the zoomed chart", || async {
            let url = br.url().await;
            if !url.contains("range=zoom") {
                return None;
            }
            let n = br
                .js(
                    "const c = document.querySelector('canvas[data-attribute=temperature][data-points]'); \
                     return c ? Number(c.dataset.points) : null",
                    vec![],
                )
                .await
                .as_i64()?;
            (n < CHART_POINTS).then_some((url, n))
        })
        .await;
    assert!(
        zoomed.1 > CHART_POINTS / 5 && zoomed.1 < CHART_POINTS * 7 / 10,
        "the window holds about half the readings: {zoomed:?}"
    );
    br.click(&br.find("#zoom-reset").await).await;
    br.wait_for("every reading after the reset", || async {
        let n = br
            .js(
                "const c = document.querySelector('canvas[data-attribute=temperature][data-points]'); \
                 return c && !location.hash.includes('zoom') ? Number(c.dataset.points) : null",
                vec![],
            )
            .await
            .as_i64()?;
        (n == CHART_POINTS).then_some(())
    })
    .await;
    // The table view shows the same readings (of the reset range: every reading).
    br.click(&br.find("#as-table").await).await;
    let rows = br
        .wait_for("the table view", || async {
            let n = br
                .js("return document.querySelectorAll('.chart[data-attribute=temperature] .chart-table tbody tr').length", vec![])
                .await
                .as_i64()?;
            (n > 0).then_some(n)
        })
        .await;
    assert_eq!(rows, 2_000, "the table view shows its first 2 000 rows");
    // A year: buckets from the aggregates with the min–max band.
    br.goto(&format!("{base}/console#/entity/{}?range=365d", f.charted))
        .await;
    let canvas = br
        .find("canvas[data-attribute=temperature][data-kind=buckets]")
        .await;
    let buckets: i64 = br
        .attr(&canvas, "data-points")
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(buckets >= 1, "a year of buckets holds the hour of readings");

    // Properties: edit and save (versioned); a concurrent change is refused, not overwritten.
    br.goto(&format!("{base}/console#/entity/{}", f.a[0])).await;
    br.wait_text("h1", &format!("Entity #{} ", f.a[0])).await;
    let props = br.find("#props").await;
    br.fill(&props, "{\"site\": \"north\", \"floor\": 3}").await;
    br.click(&br.find("#props-save").await).await;
    br.wait_text("#props-msg", "Saved").await;
    let (s, e) =
        call(server.as_tenant(&f.key_a, Method::GET, &format!("/v1/entities/{}", f.a[0]))).await;
    assert_eq!(s, 200);
    assert_eq!(e["cold_attrs"], json!({"site": "north", "floor": 3}));
    let (s, _) = call(
        server
            .as_tenant(&f.key_a, Method::PATCH, &format!("/v1/entities/{}", f.a[0]))
            .json(&json!({"cold_attrs": {"site": "south"}})),
    )
    .await;
    assert_eq!(s, 200);
    br.fill(&props, "{\"site\": \"west\"}").await;
    br.click(&br.find("#props-save").await).await;
    br.wait_text("#props-msg", "someone changed this entity")
        .await;
    let (_, e) =
        call(server.as_tenant(&f.key_a, Method::GET, &format!("/v1/entities/{}", f.a[0]))).await;
    assert_eq!(e["cold_attrs"], json!({"site": "south"}), "not overwritten");
    no_secret_leaks(&br, &f.key_a).await;

    // Ingest view, with the reading the server refused as a conflict among its dead letters.
    let (s, body) = call(
        server
            .as_tenant(&f.key_a, Method::POST, "/v1/telemetry")
            .json(&json!([{"entity_id": f.a[1], "ts": f.conflict_ts, "values": {"priority": 42}}])),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    // A's per-tenant figures (summed in Redis, refreshed every 5 s): that refusal by its
    // reason, and the values the fixture stored.
    br.goto(&format!("{base}/console#/ingest")).await;
    br.wait_text("#ingest", "Values charged today").await;
    let dead = br.wait_text("#dead-letters", "already stored").await;
    assert!(
        dead.contains(&format!("#{}", f.a[1])) && dead.contains("42"),
        "{dead}"
    );
    let refused = br.wait_text("#ingest-refused", "not_stored").await;
    assert!(refused.contains("not_stored\t1"), "{refused}");
    let stored = br.text_of("#ingest-stored").await.unwrap_or_default();
    assert!(stored.parse::<i64>().is_ok_and(|n| n > 0), "{stored}");
    assert!(
        br.text_of("#ingest-latency")
            .await
            .unwrap_or_default()
            .contains("p99"),
        "latency of A's acknowledged requests"
    );
    br.screenshot(&dir.join("ingest.png")).await;

    // An expired session goes back to sign-in.
    br.js(
        "const s = JSON.parse(sessionStorage.getItem('atlas.console.session')); \
         s.expires = 0; sessionStorage.setItem('atlas.console.session', JSON.stringify(s));",
        vec![],
    )
    .await;
    br.goto(&format!("{base}/console#/fleet")).await;
    br.wait_text("#signin-error", "expired").await;
    assert_eq!(
        br.js("return sessionStorage.length", vec![]).await,
        json!(0),
        "the expired key is forgotten"
    );

    // Sign out forgets the key.
    sign_in(&br, &base, "tenant", &f.key_a).await;
    wait_rows(&br, "the fleet", |ids| ids.len() == 50).await;
    br.click(&br.find("#signout").await).await;
    br.find("#signin").await;
    assert_eq!(
        br.js("return sessionStorage.length", vec![]).await,
        json!(0)
    );
    br.goto(&format!("{base}/console#/fleet")).await;
    br.find("#signin").await;

    // Tenant B sees only its own entities, in every view.
    sign_in(&br, &base, "tenant", &f.key_b).await;
    let ids = wait_rows(&br, "B's fleet", |ids| !ids.is_empty()).await;
    assert_eq!(ids, f.b);
    let types = br.wait_text("#fleet-types", "pump").await;
    assert!(!types.contains("sensor"), "A's type: {types}");
    br.fill(&br.find("#f-contains").await, "status=\"alarm\"")
        .await;
    br.click(&br.find("#f-apply").await).await;
    let found = wait_rows(&br, "B's alarms", |ids| ids.len() == f.b.len()).await;
    assert_eq!(found, f.b, "A's alarms are not B's");
    br.goto(&format!("{base}/console#/entity/{}", f.charted))
        .await;
    let err = br.wait_text("main .error", "not found").await;
    assert!(!err.contains("temperature"), "{err}");
    let page = br.js("return document.body.innerText", vec![]).await;
    assert!(
        !page.as_str().unwrap_or_default().contains("north"),
        "{page}"
    );
    br.goto(&format!("{base}/console#/ingest")).await;
    br.find("#dead-letters-none").await;
    br.find("#ingest-refused-none").await;
    br.goto(&format!("{base}/console#/fleet?type=sensor")).await;
    br.find("#fleet[data-rows]").await;
    assert_eq!(
        fleet_ids(&br).await,
        Vec::<i64>::new(),
        "A's sensors are not B's"
    );

    // A revoked key: the next call signs the console out with a readable message.
    let (s, keys) = call(server.admin(
        Method::GET,
        &format!(
            "/v1/admin/tenants/{}/keys",
            tenant_of(&server, "console-b").await
        ),
    ))
    .await;
    assert_eq!(s, 200, "{keys}");
    let key_id = keys["items"][0]["key_id"].as_i64().unwrap_or(0);
    let (s, _) = call(server.admin(
        Method::DELETE,
        &format!(
            "/v1/admin/tenants/{}/keys/{key_id}",
            tenant_of(&server, "console-b").await
        ),
    ))
    .await;
    assert_eq!(s, 200, "revoked");
    br.goto(&format!("{base}/console#/fleet")).await;
    br.wait_text("#signin-error", "refused").await;
    sign_in(&br, &base, "tenant", &f.key_b).await;
    br.wait_text("#signin-error", "revoked").await;

    // Admin views.
    sign_in(&br, &base, "admin", ADMIN).await;
    br.wait_text("#tenants", "console-a").await;
    br.screenshot(&dir.join("admin-tenants.png")).await;
    br.fill(&br.find("#new-tenant").await, "console-c").await;
    br.click(&br.find("#create-tenant").await).await;
    br.find("#key-name").await;
    br.fill(&br.find("#key-name").await, "ops").await;
    br.click(&br.find("#issue-key").await).await;
    let secret_el = br.find("#new-key").await;
    let new_key = br.text(&secret_el).await;
    let (s, me) = call(server.as_tenant(&new_key, Method::GET, "/v1/me")).await;
    assert_eq!((s, me["tenant_name"].clone()), (200, json!("console-c")));
    br.click(&br.find("#keys .revoke-key").await).await;
    br.wait_text("#keys", "revoked").await;
    let (s, _) = call(server.as_tenant(&new_key, Method::GET, "/v1/me")).await;
    assert_eq!(s, 401, "the console's revoke took effect");
    br.goto(&format!("{base}/console#/admin/attributes")).await;
    br.find("#attributes").await;
    br.fill(&br.find("#attr-name").await, "humidity").await;
    br.click(&br.find("#define-attr").await).await;
    br.wait_text("#attr-msg", "Defined humidity").await;
    let flip = br.find("tr[data-attribute=temperature] .flip-hot").await;
    br.click(&flip).await;
    let done = br.wait_text("#attr-msg", "temperature is now hot").await;
    // The server's backfill report, as the console shows it: every live entity looked at.
    let temperature = server.attribute_id("temperature").await;
    let (s, report) = call(server.admin(
        Method::GET,
        &format!("/v1/admin/attributes/{temperature}/backfill"),
    ))
    .await;
    assert_eq!((s, &report["state"]), (200, &json!("done")), "{report}");
    assert!(
        done.contains(&format!("{} entities looked at", report["entities_done"])),
        "{done} / {report}"
    );
    let (_, hot) = call(server.as_tenant(
        &f.key_a,
        Method::GET,
        &format!("/v1/entities/{}/attributes", f.charted),
    ))
    .await;
    assert!(
        hot["attributes"]["temperature"].is_number(),
        "backfilled: {hot}"
    );
    br.screenshot(&dir.join("admin-attributes.png")).await;
    br.goto(&format!("{base}/console#/admin/health")).await;
    br.wait_text("#health", "primary").await;
    br.wait_text("#alerts", "partition_horizon").await;
    timings.insert("health_page_nav_ms".into(), json!(navigation_ms(&br).await));
    br.screenshot(&dir.join("admin-health.png")).await;
    no_secret_leaks(&br, ADMIN).await;

    let timings = Value::Object(timings);
    println!("console timings (ms, debug build): {timings}");
    std::fs::write(dir.join("timings.json"), timings.to_string()).unwrap_or_else(|e| panic!("{e}"));
    br.quit().await;
    server.stop().await;
}

async fn tenant_of(server: &Server, name: &str) -> i64 {
    let (_, page) = call(server.admin(Method::GET, "/v1/admin/tenants?limit=1000")).await;
    page["items"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["tenant_name"] == name))
        .and_then(|t| t["tenant_id"].as_i64())
        .unwrap_or_else(|| panic!("no tenant {name}: {page}"))
}
