//! `atlas load`: NDJSON and CSV through the API's validation, durably.

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
    crate::support::atlas_for(db)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn count(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM entity_values_ts", &[])
        .await
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
        String::from_utf8_lossy(&out.stdout)
            .contains("600 values stored, 0 already stored, 0 lines refused"),
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
    // Loading the same file again is a replay: nothing new, and it says so (the tenant by
    // name this time).
    let out = atlas(
        &db,
        &["load", csv.to_str().unwrap_or(""), "--tenant", "loader"],
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("0 values stored, 2 already stored, 0 lines refused"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
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
    assert!(err.contains("nothing of the file was written"), "{err}");
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

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_stopped_load_says_which_lines_were_written_and_skip_invalid_keeps_the_rest() {
    let db = TestDb::new().await;
    let (_, ids) = setup(&db).await;
    let dir = std::env::temp_dir().join(format!("atlas-skip-{}-{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    let file = dir.join("mixed.ndjson");
    let good = |i: i64| {
        format!(
            "{{\"entity_id\": {}, \"ts\": {}, \"values\": {{\"priority\": {i}}}}}\n",
            ids[0],
            t0 + i
        )
    };
    let mut body = good(1);
    body.push_str(&format!(
        "{{\"entity_id\": {}, \"ts\": {t0}, \"values\": {{\"priority\": \"high\"}}}}\n",
        ids[1]
    ));
    body.push_str(&good(3));
    body.push_str("not json at all\n");
    body.push_str(&format!(
        "{{\"entity_id\": 999999, \"ts\": {t0}, \"values\": {{\"priority\": 1}}}}\n"
    ));
    body.push_str(&good(6));
    std::fs::write(&file, body).unwrap_or_else(|e| panic!("{e}"));
    let path = file.to_str().unwrap_or("");

    // One reading a batch: line 1 is stored before line 2 stops the load, and it says so.
    let out = atlas(&db, &["load", path, "--tenant", "loader", "--batch", "1"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("1 values stored"), "{said}");
    assert!(said.contains("written: line 1; no other line"), "{said}");
    assert!(said.contains("line 2.values.priority"), "{said}");
    assert_eq!(count(&db).await, 1);

    // --skip-invalid: every valid line stored, each refused one in the rejects file with its
    // error and input, in line order.
    let rejects = dir.join("rejects.ndjson");
    let out = atlas(
        &db,
        &[
            "load",
            path,
            "--tenant",
            "loader",
            "--skip-invalid",
            rejects.to_str().unwrap_or(""),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("2 values stored, 1 already stored, 3 lines refused"),
        "{said}"
    );
    assert_eq!(count(&db).await, 3);
    let refused: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let lines: Vec<i64> = refused.iter().filter_map(|r| r["line"].as_i64()).collect();
    assert_eq!(lines, [2, 4, 5], "{refused:?}");
    assert_eq!(refused[1]["input"], "not json at all");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("priority"),
        "{refused:?}"
    );
    assert!(
        refused[2]["error"]
            .as_str()
            .unwrap_or("")
            .contains("entity 999999"),
        "{refused:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn csv_is_read_as_rfc4180_and_round_trips_every_type() {
    let db = TestDb::new().await;
    let (_, ids) = setup(&db).await;
    let store = db.store(2);
    for (name, t) in [
        ("config", DataType::Json),
        ("firmware", DataType::String),
        ("serviced", DataType::Date),
    ] {
        store
            .define_attribute(&AttributeSpec {
                attribute_name: name.into(),
                data_type: t,
                is_hot: false,
                is_indexed: false,
                validation_regex: None,
                allow_rounding: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = std::env::temp_dir().join(format!("atlas-csv-{}-{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let at = chrono::Utc::now() - chrono::Duration::minutes(5);
    let ms = at.timestamp_millis();
    let rfc =
        (at + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let e = ids[0];
    // Columns in another order; quoted cells with commas, quotes and a line break; ts as
    // epoch ms and as RFC 3339.
    let csv = format!(
        "value,attribute,entity_id,ts\n\
         \"{{\"\"a\"\":1,\"\"b\"\":[2,3]}}\",config,{e},{ms}\n\
         1.10,firmware,{e},{ms}\n\
         \"v2, \"\"beta\"\"\nsecond line\",firmware,{e},{rfc}\n\
         21.25,temperature,{e},{ms}\n\
         7,priority,{e},{ms}\n\
         2026-01-31,serviced,{e},{ms}\n"
    );
    let file = dir.join("export.csv");
    std::fs::write(&file, csv).unwrap_or_else(|e| panic!("{e}"));
    let out = atlas(
        &db,
        &["load", file.to_str().unwrap_or(""), "--tenant", "loader"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("6 values stored"), "{}", text(&out));

    let admin = db.admin().await;
    let rows = admin
        .query(
            "SELECT a.attribute_name, \
                    coalesce(v.value, v.value_int::text, v.value_decimal::text, v.value_date::text), \
                    (extract(epoch FROM v.ingested_at) * 1000)::bigint \
             FROM entity_values_ts v JOIN attributes a USING (attribute_id) \
             WHERE v.entity_id = $1 ORDER BY 1, 3",
            &[&e],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let config = serde_json::from_str::<serde_json::Value>(&got[0].1)
        .unwrap_or_else(|err| panic!("{err}: {got:?}"));
    assert_eq!(config, serde_json::json!({"a": 1, "b": [2, 3]}), "{got:?}");
    assert_eq!(
        got[1..].to_vec(),
        vec![
            ("firmware".to_owned(), "1.10".to_owned(), ms),
            (
                "firmware".to_owned(),
                "v2, \"beta\"\nsecond line".to_owned(),
                ms + 1000
            ),
            ("priority".to_owned(), "7".to_owned(), ms),
            ("serviced".to_owned(), "2026-01-31".to_owned(), ms),
            ("temperature".to_owned(), "21.25000".to_owned(), ms),
        ]
    );

    // A header naming an unknown column, and one missing `value`, are refused up front.
    for (header, says) in [
        ("entity_id,ts,attribute,value,unit", "unknown column `unit`"),
        ("entity_id,ts,attribute", "no `value` column"),
    ] {
        std::fs::write(&file, format!("{header}\n{e},{ms},priority,1\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = atlas(
            &db,
            &["load", file.to_str().unwrap_or(""), "--tenant", "loader"],
        );
        assert!(!out.status.success());
        assert!(text(&out).contains(says), "{}", text(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn byte_order_marks_are_skipped_and_lines_that_are_not_utf8_are_refused() {
    let db = TestDb::new().await;
    let (_, ids) = setup(&db).await;
    let dir = std::env::temp_dir().join(format!("atlas-bom-{}-{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    let e = ids[0];
    // A spreadsheet's CSV export: a byte-order mark, CRLF line ends, one row not UTF-8.
    let mut csv = b"\xef\xbb\xbfentity_id,ts,attribute,value\r\n".to_vec();
    csv.extend(format!("{e},{t0},priority,1\r\n").as_bytes());
    csv.extend(format!("{e},{},status,caf", t0 + 1).as_bytes());
    csv.extend(b"\xe9\r\n");
    csv.extend(format!("{e},{},priority,3\r\n", t0 + 2).as_bytes());
    let file = dir.join("export.csv");
    std::fs::write(&file, csv).unwrap_or_else(|e| panic!("{e}"));
    let rejects = dir.join("rejects.ndjson");
    let out = atlas(
        &db,
        &[
            "load",
            file.to_str().unwrap_or(""),
            "--tenant",
            "loader",
            "--skip-invalid",
            rejects.to_str().unwrap_or(""),
        ],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("2 values stored, 0 already stored, 1 lines refused"),
        "{said}"
    );
    let refused = std::fs::read_to_string(&rejects).unwrap_or_default();
    assert!(
        refused.contains("\"line\":3") && refused.contains("not UTF-8"),
        "{refused}"
    );

    // NDJSON with a byte-order mark on its first line.
    let file = dir.join("bom.ndjson");
    let mut nd = b"\xef\xbb\xbf".to_vec();
    nd.extend(
        format!(
            "{{\"entity_id\": {e}, \"ts\": {}, \"values\": {{\"priority\": 4}}}}\n",
            t0 + 3
        )
        .as_bytes(),
    );
    std::fs::write(&file, nd).unwrap_or_else(|e| panic!("{e}"));
    let out = atlas(
        &db,
        &["load", file.to_str().unwrap_or(""), "--tenant", "loader"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&db).await, 3);
    let _ = std::fs::remove_dir_all(&dir);
}
