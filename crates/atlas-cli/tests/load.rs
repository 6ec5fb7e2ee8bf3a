//! `atlas load`: NDJSON and CSV through the API's validation, durably.

use std::process::Command;

use atlas_store::TenantId;
use atlas_store::admin::{AttributeSpec, DataType};
use atlas_testkit::TestDb;
use futures_util::FutureExt;

async fn setup(db: &TestDb) -> (i64, Vec<i64>) {
    let store = db.store(2);
    for (name, t, hot) in [
        ("priority", DataType::Integer, true),
        ("status", DataType::String, true),
        ("temperature", DataType::Decimal, false),
    ] {
        store
            .define_attribute(&AttributeSpec {
                attribute_name: name.into(),
                data_type: t,
                is_hot: hot,
                is_indexed: false,
                validation_regex: None,
                allow_rounding: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let tenant = store
        .create_tenant("loader")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .tenant_id;
    let tid = TenantId(tenant);
    let ids = store
        .with_tenant(tid, move |tx| {
            async move {
                let new: Vec<_> = (0..3)
                    .map(|_| atlas_store::entities::NewEntity {
                        entity_type: "sensor".into(),
                        cold_attrs: serde_json::json!({}),
                    })
                    .collect();
                atlas_store::entities::register(tx, tid, &new).await
            }
            .boxed()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|e| e.entity_id)
        .collect();
    (tenant, ids)
}

fn atlas(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_atlas"))
        .args(args)
        .env("ATLAS_DATABASE_URL", &db.urls.database_url)
        .env("ATLAS_REPLICA_URLS", "")
        .env("ATLAS_REDIS_URL", &db.urls.redis_url)
        .env("ATLAS_STACK_DIR", "/nonexistent-atlas-stack")
        .env("ATLAS_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn count(db: &TestDb) -> i64 {
    db.admin()
        .await
        .query_one("SELECT count(*) FROM entity_values_ts", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0)
}

#[tokio::test]
async fn ndjson_and_csv_files_load_durably_and_bad_lines_are_named() {
    let db = TestDb::new().await;
    let (tenant, ids) = setup(&db).await;
    let dir = std::env::temp_dir().join(format!("atlas-load-{}-{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;

    let ndjson = dir.join("readings.ndjson");
    let mut text = String::new();
    for i in 0..300i64 {
        let e = ids[usize::try_from(i).unwrap_or(0) % ids.len()];
        text.push_str(&format!(
            "{{\"entity_id\": {e}, \"ts\": {}, \"values\": {{\"priority\": {}, \"temperature\": 20.5}}}}\n",
            t0 + i,
            i % 10
        ));
    }
    std::fs::write(&ndjson, text).unwrap_or_else(|e| panic!("{e}"));
    let out = atlas(
        &db,
        &[
            "load",
            ndjson.to_str().unwrap_or(""),
            "--tenant",
            &tenant.to_string(),
            "--batch",
            "100",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("loaded 600 values"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(count(&db).await, 600);

    let csv = dir.join("readings.csv");
    std::fs::write(
        &csv,
        format!(
            "entity_id,ts,attribute,value\n{},{},status,online\n{},{},priority,7\n",
            ids[0],
            t0 + 1000,
            ids[1],
            t0 + 1000
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = atlas(
        &db,
        &[
            "load",
            csv.to_str().unwrap_or(""),
            "--tenant",
            &tenant.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db).await, 602);
    // Loading the same file again is a replay: nothing new.
    let out = atlas(
        &db,
        &[
            "load",
            csv.to_str().unwrap_or(""),
            "--tenant",
            &tenant.to_string(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(count(&db).await, 602);

    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        format!(
            "{{\"entity_id\": {e}, \"ts\": {t}, \"values\": {{\"priority\": 1}}}}\n\n{{\"entity_id\": {e}, \"ts\": {t}, \"values\": {{\"priority\": \"high\"}}}}\n",
            e = ids[2],
            t = t0 + 5000
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = atlas(
        &db,
        &[
            "load",
            bad.to_str().unwrap_or(""),
            "--tenant",
            &tenant.to_string(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3.values.priority"), "{err}");
    assert_eq!(
        count(&db).await,
        602,
        "the batch with the bad line wrote nothing"
    );

    let foreign = dir.join("foreign.ndjson");
    std::fs::write(
        &foreign,
        "{\"entity_id\": 999999, \"values\": {\"priority\": 1}}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = atlas(
        &db,
        &[
            "load",
            foreign.to_str().unwrap_or(""),
            "--tenant",
            &tenant.to_string(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: entity 999999"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn history_before_every_partition_is_refused_with_its_remedy_and_loads_after_backfill() {
    let db = TestDb::new().await;
    let (tenant, ids) = setup(&db).await;
    let dir =
        std::env::temp_dir().join(format!("atlas-history-{}-{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let old = chrono::Utc::now() - chrono::Duration::days(400);
    let day = old.date_naive().to_string();
    let file = dir.join("history.ndjson");
    std::fs::write(
        &file,
        format!(
            "{{\"entity_id\": {e}, \"ts\": {t}, \"values\": {{\"priority\": 1, \"temperature\": 20.5}}}}\n\
             {{\"entity_id\": {e}, \"ts\": {t2}, \"values\": {{\"priority\": 2}}}}\n",
            e = ids[0],
            t = old.timestamp_millis(),
            t2 = old.timestamp_millis() + 60_000,
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let load = || {
        atlas(
            &db,
            &[
                "load",
                file.to_str().unwrap_or(""),
                "--tenant",
                &tenant.to_string(),
            ],
        )
    };

    let out = load();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1.ts") && err.contains("before the stored time range"),
        "{err}"
    );
    assert!(
        err.contains(&format!("atlas maintain backfill --since {day}")),
        "{err}"
    );
    assert_eq!(count(&db).await, 0);

    let out = atlas(&db, &["maintain", "backfill", "--since", "last-year"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = atlas(&db, &["maintain", "backfill", "--since", &day]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("created")
            && said.contains(&format!("entity_values_{}", old.format("%Y_%m"))),
        "{said}"
    );
    let out = atlas(&db, &["maintain", "backfill", "--since", &day]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already covered"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = load();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db).await, 3);
    let _ = std::fs::remove_dir_all(&dir);
}
