//! The baseline and the function files: a database migrated before them upgrades to exactly
//! the schema a new one gets, and the rules that keep functions in one place hold.

use atlas_schema::{Functions, Migration, SCHEMA, Schema, SchemaError, migrate, migrate_set};
use atlas_testkit::TestDb;
use tokio_postgres::Client;

/// Every schema object, described by what PostgreSQL would rebuild it from.
const SNAPSHOT: &str = include_str!("catalog_snapshot.sql");

/// Migrations 0001-0020 as they were at 942bc40, the commit before the baseline replaced them:
/// what a database migrated then has applied. Kept compressed as a frozen record, not source.
const LEGACY: &[u8] = include_bytes!("fixtures/migrations-0001-0020.sql.gz");

/// The legacy migrations as a versioned-only schema (how the migrator then applied them).
fn legacy_schema() -> Schema {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::GzDecoder::new(LEGACY)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    let text: &'static str = Box::leak(text.into_boxed_str());
    let migrations: Vec<Migration> = text
        .split("-- @@ ")
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, sql) = part
                .split_once('\n')
                .unwrap_or_else(|| panic!("fixture part without a name"));
            let version = name[..4]
                .parse()
                .unwrap_or_else(|e| panic!("fixture name {name}: {e}"));
            Migration { version, name, sql }
        })
        .collect();
    Schema {
        migrations: Box::leak(migrations.into_boxed_slice()),
        functions: &[],
        after_migrate: "",
        squashed: &[],
    }
}

async fn snapshot(client: &Client) -> Vec<String> {
    client
        .query(SNAPSHOT, &[])
        .await
        .unwrap_or_else(|e| panic!("catalog snapshot: {e}"))
        .iter()
        .map(|r| {
            format!(
                "{} {}: {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect()
}

fn assert_same(upgraded: &[String], fresh: &[String]) {
    let head = |l: &&String| l.split(':').next().unwrap_or_default().to_owned();
    let only_upgraded: Vec<String> = upgraded
        .iter()
        .filter(|l| !fresh.contains(l))
        .map(|l| head(&l))
        .collect();
    let only_fresh: Vec<String> = fresh
        .iter()
        .filter(|l| !upgraded.contains(l))
        .map(|l| head(&l))
        .collect();
    if !(only_upgraded.is_empty() && only_fresh.is_empty()) {
        // Both snapshots in full, to diff.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        let _ = std::fs::write(dir.join("catalog-upgraded.txt"), upgraded.join("\n"));
        let _ = std::fs::write(dir.join("catalog-fresh.txt"), fresh.join("\n"));
    }
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "catalogs differ (target/catalog-upgraded.txt, target/catalog-fresh.txt)\n\
         --- only in the upgraded database:\n{}\n--- only in the fresh one:\n{}",
        only_upgraded.join("\n"),
        only_fresh.join("\n"),
    );
    assert!(
        fresh.len() > 500,
        "the snapshot sees the schema ({} rows)",
        fresh.len()
    );
}

#[tokio::test]
async fn a_database_migrated_before_the_baseline_upgrades_to_the_same_catalog() {
    let db = TestDb::new().await;
    let legacy = db.empty_sibling("legacy").await;
    let fresh = db.empty_sibling("fresh").await;
    let mut old = legacy.admin().await;
    let schema = legacy_schema();
    let report = migrate_set(&mut old, None, &schema)
        .await
        .unwrap_or_else(|e| panic!("migrating with the legacy files: {e}"));
    assert_eq!(report.applied.len(), 20, "{report:?}");

    let upgrade = migrate(&mut old, None)
        .await
        .unwrap_or_else(|e| panic!("upgrading: {e}"));
    // The baseline is not re-run; only migrations after it are applied.
    let after_baseline: Vec<&str> = SCHEMA.migrations[1..].iter().map(|m| m.name).collect();
    assert_eq!(upgrade.applied, after_baseline, "{upgrade:?}");
    let files: Vec<&str> = SCHEMA.functions.iter().map(|f| f.name).collect();
    assert_eq!(upgrade.functions_applied, files);
    let mut new = fresh.admin().await;
    let report = migrate(&mut new, None)
        .await
        .unwrap_or_else(|e| panic!("migrating a new database: {e}"));
    let every: Vec<&str> = SCHEMA.migrations.iter().map(|m| m.name).collect();
    assert_eq!(report.applied, every);
    assert_eq!(report.applied[0], "0020_baseline.sql");

    assert_same(&snapshot(&old).await, &snapshot(&new).await);
    // Upgraded once, current after: nothing runs again.
    let again = migrate(&mut old, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        again.applied.is_empty() && again.functions_applied.is_empty(),
        "{again:?}"
    );
    let status = atlas_schema::migration_status(&old)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.iter().all(|s| s.is_current()), "{status:?}");
}

#[tokio::test]
async fn a_database_stopped_between_the_replaced_migrations_is_refused() {
    let db = TestDb::new().await;
    let partial = db.empty_sibling("partial").await;
    let mut client = partial.admin().await;
    let legacy = legacy_schema();
    let first_ten = Schema {
        migrations: &legacy.migrations[..10],
        ..legacy
    };
    migrate_set(&mut client, None, &first_ten)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = migrate(&mut client, None).await.err();
    assert!(
        matches!(
            &err,
            Some(SchemaError::BeforeBaseline {
                missing: "0011_inline_helpers.sql",
                ..
            })
        ),
        "{err:?}"
    );
}

/// A function file and a versioned migration for a scratch schema.
fn leak_functions(sql: &str) -> &'static [Functions] {
    let sql: &'static str = Box::leak(sql.to_owned().into_boxed_str());
    Box::leak(
        vec![Functions {
            name: "probe.sql",
            sql,
        }]
        .into_boxed_slice(),
    )
}

#[tokio::test]
async fn a_changed_signature_needs_a_versioned_drop() {
    let db = TestDb::new().await;
    let scratch = db.empty_sibling("sig").await;
    let mut client = scratch.admin().await;
    const TABLE: &[Migration] = &[Migration {
        version: 1,
        name: "0001_t.sql",
        sql: "CREATE TABLE public.t (x integer);",
    }];
    let v1 = Schema {
        migrations: TABLE,
        functions: leak_functions(
            "CREATE OR REPLACE FUNCTION public.probe(p integer) RETURNS integer LANGUAGE sql AS 'SELECT p';",
        ),
        after_migrate: "",
        squashed: &[],
    };
    migrate_set(&mut client, None, &v1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Same name, one more argument: CREATE OR REPLACE makes a second function.
    let v2 = Schema {
        functions: leak_functions(
            "CREATE OR REPLACE FUNCTION public.probe(p integer, q integer) RETURNS integer LANGUAGE sql AS 'SELECT p + q';",
        ),
        ..v1
    };
    let err = migrate_set(&mut client, None, &v2).await.err();
    match &err {
        Some(SchemaError::Orphaned { file, function }) => {
            assert_eq!(*file, "probe.sql");
            assert_eq!(function, "public.probe(p integer)");
        }
        other => panic!("expected Orphaned, got {other:?}"),
    }
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("DROP FUNCTION public.probe(p integer)"),
        "{message}"
    );
    // A new return type fails in PostgreSQL itself.
    let v3 = Schema {
        functions: leak_functions(
            "CREATE OR REPLACE FUNCTION public.probe(p integer) RETURNS bigint LANGUAGE sql AS 'SELECT p::bigint';",
        ),
        ..v1
    };
    let err = migrate_set(&mut client, None, &v3).await.err();
    assert!(
        matches!(
            &err,
            Some(SchemaError::Failed {
                name: "probe.sql",
                ..
            })
        ),
        "{err:?}"
    );
    // With the versioned DROP both go through, and only the new function is left.
    let with_drop: &'static [Migration] = Box::leak(
        vec![
            TABLE[0],
            Migration {
                version: 2,
                name: "0002_drop_probe.sql",
                sql: "DROP FUNCTION public.probe(integer);",
            },
        ]
        .into_boxed_slice(),
    );
    migrate_set(
        &mut client,
        None,
        &Schema {
            migrations: with_drop,
            ..v2
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<String> = atlas_testkit::column(
        &client,
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proname = 'probe'",
        &[],
    )
    .await;
    assert_eq!(left, vec!["probe(integer,integer)"]);
}

#[tokio::test]
async fn a_function_no_file_defines_is_refused() {
    let db = TestDb::new().await;
    let mut admin = db.admin().await;
    admin
        .batch_execute(
            "SET ROLE atlas_owner; \
             CREATE FUNCTION public.stray() RETURNS integer LANGUAGE sql AS 'SELECT 1'; RESET ROLE;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = migrate(&mut admin, None).await.err();
    match &err {
        Some(SchemaError::Unmanaged { function }) => assert_eq!(function, "public.stray()"),
        other => panic!("expected Unmanaged, got {other:?}"),
    }
}

#[tokio::test]
async fn every_function_body_is_valid() {
    // The migrator creates functions without checking their bodies (they call each other across
    // files); with all of them present, re-create each file with the check on, and roll back.
    let db = TestDb::new().await;
    let mut admin = db.admin().await;
    let tx = admin.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    tx.batch_execute("SET LOCAL ROLE atlas_owner; SET LOCAL check_function_bodies = on")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for file in SCHEMA.functions {
        tx.batch_execute(file.sql)
            .await
            .unwrap_or_else(|e| panic!("functions/{}: {:?}", file.name, e.as_db_error()));
    }
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
}
