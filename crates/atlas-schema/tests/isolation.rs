//! Tenant isolation, enforced by PostgreSQL against the server's own login (atlas_app).

use atlas_testkit::TestDb;

use crate::support::{Value, at, fleet, flush, set_tenant, sqlstate, stage};

const TENANT_TABLES: &[&str] = &[
    "entities",
    "entity_values_ts",
    "entity_jsonb",
    "tenant_attribute_stats",
];

async fn write_some_values(db: &TestDb) -> crate::support::Fleet {
    let f = fleet(db).await;
    let app = db.app().await;
    let now = &at("10:00:00");
    for (tenant, entity) in [(f.tenant_a, f.a1), (f.tenant_a, f.a2), (f.tenant_b, f.b1)] {
        stage(&app, tenant, entity, f.status, Value::Text("online"), now).await;
        stage(
            &app,
            tenant,
            entity,
            f.temperature,
            Value::Decimal("20.5"),
            now,
        )
        .await;
    }
    assert_eq!(flush(&app).await, 6);
    app.execute("SELECT refresh_attribute_stats()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    f
}

#[tokio::test]
async fn no_tenant_context_sees_nothing_and_writes_nothing() {
    let db = TestDb::new().await;
    let f = write_some_values(&db).await;
    let app = db.app().await;
    for table in TENANT_TABLES {
        let n: i64 = app
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"))
            .get(0);
        assert_eq!(n, 0, "{table} leaks rows without a tenant context");
    }
    // Same with the setting present but empty, as a reused connection reports it.
    let tx_rows: i64 = {
        let mut app = db.app().await;
        let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        tx.execute("SELECT set_config('app.current_tenant_id', '', true)", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.query_one("SELECT count(*) FROM entities", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0)
    };
    assert_eq!(tx_rows, 0);

    let insert = app
        .execute(
            "INSERT INTO entities (tenant_id, entity_type) VALUES ($1, 'x')",
            &[&f.tenant_a],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(
        insert.as_deref(),
        Some("42501"),
        "insert without context must be refused by RLS"
    );
    let insert_ts = app
        .execute(
            "INSERT INTO entity_values_ts (tenant_id, entity_id, attribute_id, value, ingested_at) VALUES ($1, $2, $3, 'x', now())",
            &[&f.tenant_a, &f.a1, &f.status],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(insert_ts.as_deref(), Some("42501"));
    let updated = app
        .execute("UPDATE entities SET version = version + 1", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(updated, 0);
}

#[tokio::test]
async fn one_tenant_cannot_read_or_write_anothers_rows() {
    let db = TestDb::new().await;
    let f = write_some_values(&db).await;
    let mut app = db.app().await;
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_a).await;
    for table in ["entities", "entity_values_ts", "entity_jsonb"] {
        let foreign: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM public.{table} WHERE tenant_id <> $1"),
                &[&f.tenant_a],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        assert_eq!(foreign, 0, "{table}: tenant A sees B's rows");
        let own: i64 = tx
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        assert!(own > 0, "{table}: tenant A must see its own rows");
    }
    // B's entity by id: invisible, and not updatable.
    let by_id = tx
        .query("SELECT 1 FROM entities WHERE entity_id = $1", &[&f.b1])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(by_id.is_empty());
    let n = tx
        .execute(
            "UPDATE entities SET is_deleted = true WHERE entity_id = $1",
            &[&f.b1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 0);
    let n = tx
        .execute(
            "UPDATE entity_jsonb SET hot_attrs = '{}' WHERE entity_id = $1",
            &[&f.b1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 0);
    // Moving one's own row to tenant B is refused by WITH CHECK.
    let moved = tx
        .execute(
            "UPDATE entities SET tenant_id = $1 WHERE entity_id = $2",
            &[&f.tenant_b, &f.a1],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(moved.as_deref(), Some("42501"));
    drop(tx);

    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_a).await;
    let forged = tx
        .execute(
            "INSERT INTO entity_values_ts (tenant_id, entity_id, attribute_id, value, ingested_at) VALUES ($1, $2, $3, 'x', now())",
            &[&f.tenant_b, &f.b1, &f.status],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(
        forged.as_deref(),
        Some("42501"),
        "writing B's rows from A's context"
    );
    drop(tx);

    // Stats: only the tenant's own attributes.
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_b).await;
    let stats: Vec<(i64, i64)> = tx
        .query(
            "SELECT attribute_id, total_values FROM tenant_attribute_stats ORDER BY 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stats,
        vec![(f.temperature, 1), (f.status, 1)],
        "tenant B has one value per attribute"
    );

    // Nothing of B changed.
    let admin = db.admin().await;
    let b_deleted: bool = admin
        .query_one(
            "SELECT is_deleted FROM entities WHERE entity_id = $1",
            &[&f.b1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(!b_deleted);
}

#[tokio::test]
async fn a_reused_pooled_connection_never_carries_the_previous_tenant() {
    let db = TestDb::new().await;
    let f = write_some_values(&db).await;
    // One connection, so every checkout reuses it.
    let store = db.store(1);
    let seen = store
        .with_tenant(atlas_store::TenantId(f.tenant_a), |tx| {
            Box::pin(async move {
                let n: i64 = tx
                    .query_one("SELECT count(*) FROM entities", &[])
                    .await?
                    .get(0);
                Ok::<_, atlas_store::StoreError>(n)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen, 2);
    let client = store
        .primary()
        .get()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let setting: Option<String> = client
        .query_one("SELECT current_setting('app.current_tenant_id', true)", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(
        setting.unwrap_or_default().is_empty(),
        "tenant context outlived its transaction"
    );
    let rows: i64 = client
        .query_one("SELECT count(*) FROM entities", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(rows, 0);
    drop(client);

    // A closure that fails rolls back and leaves the connection clean for the next tenant.
    let failed = store
        .with_tenant(atlas_store::TenantId(f.tenant_a), |tx| {
            Box::pin(async move {
                tx.execute("UPDATE entities SET version = 99", &[]).await?;
                Err::<(), _>(atlas_store::StoreError::PoolBuild(
                    "simulated failure".into(),
                ))
            })
        })
        .await;
    assert!(failed.is_err());
    let versions = store
        .with_tenant(atlas_store::TenantId(f.tenant_b), |tx| {
            Box::pin(async move {
                let rows = tx.query("SELECT version FROM entities", &[]).await?;
                Ok::<_, atlas_store::StoreError>(
                    rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
                )
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, vec![1], "B sees only its own entity, unchanged");
    let admin = db.admin().await;
    let max_version: i32 = admin
        .query_one("SELECT max(version) FROM entities", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        max_version, 1,
        "the failed closure's update was rolled back"
    );
}

#[tokio::test]
async fn partitions_cannot_be_named_directly() {
    let db = TestDb::new().await;
    let f = write_some_values(&db).await;
    let app = db.app().await;
    let month: String = app
        .query_one(
            "SELECT 'entity_values_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    for part in ["entities_p0", "entity_jsonb_p0", month.as_str()] {
        let err = app
            .query(&format!("SELECT count(*) FROM public.{part}"), &[])
            .await
            .err()
            .map(|e| sqlstate(&e));
        assert_eq!(err.as_deref(), Some("42501"), "{part} must be denied");
    }
    let err = app
        .execute(
            "INSERT INTO public.entities_p0 (entity_id, tenant_id, entity_type) VALUES (999, $1, 'x')",
            &[&f.tenant_b],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(err.as_deref(), Some("42501"));
    for denied in [
        "SELECT count(*) FROM public.entity_values_ingest",
        "SELECT count(*) FROM public.entity_values_dead_letter",
        "SELECT count(*) FROM public.mv_entity_attribute_stats",
        "DELETE FROM public.entity_values_ingest",
    ] {
        let err = app.query(denied, &[]).await.err().map(|e| sqlstate(&e));
        assert_eq!(err.as_deref(), Some("42501"), "{denied}");
    }
}

#[tokio::test]
async fn definer_functions_are_denied_to_other_login_roles() {
    let db = TestDb::new().await;
    let f = write_some_values(&db).await;
    let admin = db.admin().await;
    // A login role that is neither the app nor an owner (roles are cluster-wide: reuse it).
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE atlas_intruder LOGIN PASSWORD 'intruder'; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = db
        .urls
        .database_url
        .replacen("atlas_app:", "atlas_intruder:", 1)
        .replacen(
            &format!(":{}@", app_password(&db.urls.database_url)),
            ":intruder@",
            1,
        );
    let intruder = atlas_testkit::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for call in [
        "SELECT * FROM public.stage_flush(10)",
        "SELECT public.upsert_hot_attrs(1, '{}', now())",
        "SELECT public.refresh_attribute_stats()",
        "SELECT * FROM public.staging_stats(1)",
        "SELECT public.ensure_ts_partitions(now(), 2)",
        "SELECT public.hot_attrs_apply(ARRAY[1], ARRAY[1], ARRAY['{}'::jsonb], ARRAY['{}'::jsonb])",
    ] {
        let err = intruder.query(call, &[]).await.err().map(|e| sqlstate(&e));
        assert_eq!(err.as_deref(), Some("42501"), "{call} must be denied");
    }
    let err = intruder
        .query("SELECT count(*) FROM public.entities", &[])
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(err.as_deref(), Some("42501"));
    let _ = f;
}

fn app_password(url: &str) -> String {
    url.split("atlas_app:")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn upsert_hot_attrs_takes_the_tenant_from_the_session_only() {
    let db = TestDb::new().await;
    let f = write_some_values(&db).await;
    let mut app = db.app().await;
    let err = app
        .query_one(
            "SELECT upsert_hot_attrs($1, '{\"status\": \"x\"}', now())",
            &[&f.a1],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(err.as_deref(), Some("42501"), "no tenant context");

    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_a).await;
    let err = tx
        .query_one(
            "SELECT upsert_hot_attrs($1, '{\"status\": \"hacked\"}', now())",
            &[&f.b1],
        )
        .await
        .err()
        .map(|e| sqlstate(&e));
    assert_eq!(
        err.as_deref(),
        Some("P0002"),
        "B's entity is not found from A's context"
    );
    drop(tx);

    let mut tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_a).await;
    for bad in [
        r#"{"temperature": 1}"#,
        r#"{"nope": 1}"#,
        r#"{"priority": "8"}"#,
        r#"{"priority": 1.5}"#,
        "[1]",
    ] {
        let sp = tx.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        let err = sp
            .query_one(
                "SELECT upsert_hot_attrs($1, $2::text::jsonb, now())",
                &[&f.a1, &bad],
            )
            .await
            .err()
            .map(|e| sqlstate(&e));
        assert_eq!(err.as_deref(), Some("22023"), "{bad} must be refused");
        sp.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let changed: bool = tx
        .query_one(
            "SELECT upsert_hot_attrs($1, '{\"priority\": 9}', '2030-01-01T00:00:00Z')",
            &[&f.a1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(changed);
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let admin = db.admin().await;
    let b: serde_json::Value = admin
        .query_one(
            "SELECT hot_attrs FROM entity_jsonb WHERE entity_id = $1",
            &[&f.b1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        b,
        serde_json::json!({"status": "online"}),
        "B's projection untouched"
    );
}

#[tokio::test]
async fn a_temp_table_cannot_shadow_staging_for_the_flush() {
    let db = TestDb::new().await;
    let f = crate::support::fleet(&db).await;
    let app = db.app().await;
    stage(
        &app,
        f.tenant_a,
        f.a1,
        f.priority,
        Value::Int(7),
        &at("10:00:00"),
    )
    .await;
    // The session's own TEMP table of the same name comes first in its search_path…
    app.batch_execute(
        "CREATE TEMP TABLE entity_values_ingest (entity_id bigint, tenant_id bigint, attribute_id bigint, \
             value text, value_int bigint, value_decimal numeric, value_bool boolean, value_date date, \
             value_timestamp timestamptz, ingested_at timestamptz, staged_at timestamptz DEFAULT now()); \
         CREATE TEMP TABLE attributes (attribute_id bigint, attribute_name text, data_type text, is_hot boolean); \
         CREATE TEMP TABLE entities (entity_id bigint, tenant_id bigint, is_deleted boolean);",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    app.execute(
        "INSERT INTO entity_values_ingest (tenant_id, entity_id, attribute_id, value_int, ingested_at) VALUES ($1, $2, $3, 666, now())",
        &[&f.tenant_b, &f.b1, &f.priority],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // …but stage_flush reads only public.entity_values_ingest.
    let stored = flush(&app).await;
    assert_eq!(stored, 1);
    let admin = db.admin().await;
    let values: Vec<i64> =
        atlas_testkit::column(&admin, "SELECT value_int FROM entity_values_ts", &[]).await;
    assert_eq!(values, vec![7]);
}

#[test]
fn no_sql_is_built_by_formatting_values_into_strings() {
    // Every SQL statement in the crates' sources must use bind parameters; identifiers that
    // cannot be bound are quoted by PostgreSQL (format %I/%L), never by Rust's format!.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sql = regex_lite_sql();
    let mut offenders = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                // Test code may build SQL from fixed table names; shipped code may not.
                if !path.ends_with("tests") && !path.ends_with("target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, _) in text.match_indices("format!(") {
                    // The macro's first argument, however many lines it spans.
                    let call: String = text[i..]
                        .chars()
                        .take_while(|c| *c != ';')
                        .take(400)
                        .collect();
                    let upper = call.to_uppercase();
                    if sql.iter().any(|k| upper.contains(k)) {
                        let line = text[..i].lines().count();
                        offenders.push(format!(
                            "{}:{line}: {}",
                            path.display(),
                            call.lines().next().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "SQL built with format!:\n{}",
        offenders.join("\n")
    );
}

fn regex_lite_sql() -> Vec<&'static str> {
    vec![
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
        "\"CREATE ",
        "\"ALTER ",
        "\"DROP ",
        "\"GRANT ",
        "\"SET ",
        " WHERE ",
        " FROM PUBLIC.",
    ]
}

/// `entities_known(tenant, ids)` as the caller, sorted.
async fn entities_known(
    c: &impl tokio_postgres::GenericClient,
    tenant: i64,
    ids: &[i64],
) -> Vec<i64> {
    let mut known: Vec<i64> = atlas_testkit::column(
        c,
        "SELECT e FROM public.entities_known($1, $2) AS e",
        &[&tenant, &ids],
    )
    .await;
    known.sort_unstable();
    known
}

#[tokio::test]
async fn entities_known_answers_for_the_named_tenant_and_leaves_the_callers_context() {
    // The telemetry route's one-statement entity check answers for the named tenant only,
    // and a session's own tenant binds it.
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    db.admin()
        .await
        .execute(
            "UPDATE entities SET is_deleted = true WHERE entity_id = $1",
            &[&f.a2],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut app = db.app().await;
    let ids = vec![f.a1, f.a2, f.b1, 999_999];
    // Outside a transaction: only tenant A's live entity.
    assert_eq!(entities_known(&app, f.tenant_a, &ids).await, [f.a1]);
    let after: Option<String> = app
        .query_one(
            "SELECT NULLIF(current_setting('app.current_tenant_id', true), '')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(after, None, "the context outlived the call");
    let visible: i64 = app
        .query_one("SELECT count(*) FROM entities", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(visible, 0);

    // Inside tenant B's transaction it answers for B only, and B's context is back after…
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_b).await;
    assert_eq!(entities_known(&tx, f.tenant_b, &ids).await, [f.b1]);
    let seen: Vec<i64> =
        atlas_testkit::column(&tx, "SELECT entity_id FROM entities ORDER BY 1", &[]).await;
    assert_eq!(seen, [f.b1], "tenant B's context was not restored");
    // …and refuses to say which of tenant A's ids exist.
    assert_refused(
        &tx,
        "SELECT e FROM public.entities_known($1, $2) AS e",
        &[&f.tenant_a, &ids],
    )
    .await;
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    // tenant_dead_letters makes the same check.
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, f.tenant_b).await;
    assert_refused(
        &tx,
        "SELECT * FROM public.tenant_dead_letters($1, NULL, NULL, 10)",
        &[&f.tenant_a],
    )
    .await;
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
}

/// `sql` fails with insufficient_privilege: a session asked about another tenant.
async fn assert_refused(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) {
    let err = tx
        .query(sql, params)
        .await
        .err()
        .unwrap_or_else(|| panic!("answered across tenants: {sql}"));
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{sql}: {err}"
    );
}
