//! The admin verbs as a user types them: names instead of ids, tables with headers or JSON,
//! one-line errors, plain logs when not on a terminal.

use atlas_testkit::TestDb;
use serde_json::Value;

use crate::support::atlas_for;

fn atlas(db: &TestDb, args: &[&str], log: &str) -> std::process::Output {
    atlas_for(db)
        .args(args)
        .env("ATLAS_LOG", log)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn out(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tenants_keys_and_attributes_by_name_as_tables_or_json() {
    let db = TestDb::new().await;
    let ok = |args: &[&str]| {
        let o = atlas(&db, args, "warn");
        let (stdout, stderr) = out(&o);
        assert!(o.status.success(), "{args:?}: {stderr}");
        stdout
    };
    ok(&["tenant", "create", "acme"]);
    ok(&["tenant", "create", "globex"]);
    // A user error is one line, even with RUST_BACKTRACE=1.
    let dup = atlas(&db, &["tenant", "create", "acme"], "warn");
    let (_, stderr) = out(&dup);
    assert!(!dup.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("tenant_name"),
        "{stderr}"
    );

    // Names work wherever a tenant is named.
    ok(&["key", "create", "--tenant", "acme", "--name", "gw"]);
    ok(&["tenant", "deactivate", "globex"]);
    let table = ok(&["tenant", "list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "STATE", "CREATED"], "{table}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert!(
        rows.iter().any(|r| r[1] == "acme" && r[2] == "active"),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r[1] == "globex" && r[2] == "deactivated"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&ok(&["tenant", "list", "--json"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");

    let keys = ok(&["key", "list", "--tenant", "acme"]);
    assert!(keys.starts_with("ID") && keys.contains("gw"), "{keys}");
    let keys: Value = serde_json::from_str(&ok(&["key", "list", "--tenant", "acme", "--json"]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keys[0]["name"], "gw", "{keys}");
    let missing = atlas(&db, &["key", "list", "--tenant", "initech"], "warn");
    assert!(!missing.status.success());
    assert!(
        out(&missing).1.contains("no tenant `initech`"),
        "{:?}",
        out(&missing)
    );

    // Attributes by name; the list's header.
    ok(&["attribute", "define", "mode", "--type", "string"]);
    ok(&["attribute", "update", "mode", "--hot", "true"]);
    let attrs = ok(&["attribute", "list"]);
    assert!(attrs.starts_with("ID"), "{attrs}");
    let mode = attrs
        .lines()
        .find(|l| l.contains("mode"))
        .unwrap_or_else(|| panic!("{attrs}"));
    assert!(mode.contains("string") && mode.contains("yes"), "{attrs}");

    // The other lists: migrations and the stack's services, as tables or JSON.
    let migrations = ok(&["migrate", "--status"]);
    assert!(migrations.starts_with("VERSION"), "{migrations}");
    let migrations: Value = serde_json::from_str(&ok(&["migrate", "--status", "--json"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let states: Vec<&str> = migrations
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["state"].as_str()).collect())
        .unwrap_or_default();
    // The baseline and every function file, each applied.
    assert!(
        states.len() >= 6 && states.iter().all(|s| *s == "applied"),
        "{migrations}"
    );
    assert_eq!(migrations[0]["name"], "0020_baseline.sql", "{migrations}");
    assert!(
        migrations.as_array().is_some_and(|a| a
            .iter()
            .any(|m| m["name"] == "ingest.sql" && m["version"].is_null())),
        "{migrations}"
    );
    let stack_dir = std::env::var("ATLAS_TEST_STACK_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/atlas-test-stack").to_owned()
    });
    let services: Value = serde_json::from_str(&ok(&[
        "--stack-dir",
        &stack_dir,
        "stack",
        "status",
        "--test",
        "--json",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = services
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["service"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        ["primary", "replica", "redis", "redis replica", "sentinel"],
        "{services}"
    );

    // Through Sentinel, a command says nothing about how it found the Redis master.
    let o = atlas_for(&db)
        .args(["attribute", "define", "quiet", "--type", "string"])
        .env(
            "ATLAS_REDIS_SENTINEL_URLS",
            db.urls.redis_sentinel_urls.join(","),
        )
        .env("ATLAS_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "{:?}", out(&o));
    assert!(!out(&o).1.contains("Sentinel"), "{}", out(&o).1);

    // Logs that do not go to a terminal carry no colour codes.
    let since = (chrono::Utc::now() - chrono::Duration::days(120))
        .date_naive()
        .to_string();
    let o = atlas(&db, &["maintain", "backfill", "--since", &since], "info");
    let logs = out(&o).1;
    assert!(
        logs.contains("backfill created a partition"),
        "nothing was logged: {logs}"
    );
    assert!(!logs.contains('\u{1b}'), "{logs}");
}

#[tokio::test]
async fn tenant_limits_are_shown_set_and_reset_by_name_and_bad_ones_refused_in_one_line() {
    let db = TestDb::new().await;
    let run = |args: &[&str]| atlas(&db, args, "warn");
    assert!(run(&["tenant", "create", "acme"]).status.success());
    let o = run(&[
        "tenant",
        "limits",
        "acme",
        "--set",
        "raw_days=90",
        "--set",
        "max_entities=5000",
    ]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["LIMIT", "VALUE", "SOURCE"], "{stdout}");
    assert!(rows.contains(&vec!["raw_days", "90", "tenant"]), "{stdout}");
    assert!(
        rows.contains(&vec!["max_entities", "5000", "tenant"]),
        "{stdout}"
    );
    assert!(
        rows.contains(&vec!["rollup_1h_days", "400", "default"]),
        "{stdout}"
    );
    assert!(
        rows.contains(&vec!["max_values_per_day", "none", "default"]),
        "{stdout}"
    );
    // Reset one; JSON shows what applies and what the tenant set.
    let o = run(&["tenant", "limits", "acme", "--reset", "raw_days", "--json"]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(doc["overrides"]["raw_days"], Value::Null, "{doc}");
    assert_eq!(doc["limits"]["raw_days"], 0, "{doc}");
    assert_eq!(doc["limits"]["max_entities"], 5000, "{doc}");
    // Bad input: one line naming what is wrong, nothing changed.
    for (args, says) in [
        (vec!["--set", "raw_days=-1"], "from 0 to 36500"),
        (vec!["--set", "raw_days"], "NAME=VALUE"),
        (vec!["--set", "speed=3"], "not a limit"),
        (vec!["--reset", "speed"], "not a limit"),
    ] {
        let mut full = vec!["tenant", "limits", "acme"];
        full.extend(args.iter().copied());
        let o = run(&full);
        let (_, stderr) = out(&o);
        assert!(!o.status.success(), "{full:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{full:?}: {stderr}");
    }
    let o = run(&["tenant", "limits", "initech"]);
    assert!(!o.status.success() && out(&o).1.contains("no tenant `initech`"));
    let doc: Value = serde_json::from_str(&out(&run(&["tenant", "limits", "acme", "--json"])).0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doc["limits"]["max_entities"], 5000, "{doc}");
}
