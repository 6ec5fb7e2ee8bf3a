//! `atlas migrate` semantics: idempotent, and refuses edited or unknown history.

use atlas_schema::{MIGRATIONS, SchemaError, migrate, migration_status};
use atlas_testkit::TestDb;

#[tokio::test]
async fn migrating_a_current_database_is_a_no_op() {
    let db = TestDb::new().await;
    let mut admin = db.admin().await;
    const OBJECTS: &str =
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
    let before: i64 = admin
        .query_one(OBJECTS, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    for _ in 0..2 {
        let report = migrate(&mut admin, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(report.already_applied, MIGRATIONS.len());
    }
    let after: i64 = admin
        .query_one(OBJECTS, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(after, before);
    let status = migration_status(&admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.iter().all(|s| s.is_current()));
}

#[tokio::test]
async fn migrating_an_empty_database_applies_everything_in_order() {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    // A fresh, empty database next to the test's own.
    let empty = format!("{}_empty", db.name);
    let stmt: String = admin
        .query_one("SELECT format('CREATE DATABASE %I', $1::text)", &[&empty])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    admin
        .batch_execute(&stmt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = db.urls.admin_database_url.replacen(&db.name, &empty, 1);
    let result = {
        let mut client = atlas_testkit::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let first = migrate(&mut client, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let second = migrate(&mut client, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let owner: String = client
            .query_one("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        (first, second, owner)
    };
    let drop: String = admin
        .query_one(
            "SELECT format('DROP DATABASE %I WITH (FORCE)', $1::text)",
            &[&empty],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    admin
        .batch_execute(&drop)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (first, second, owner) = result;
    let names: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    assert_eq!(first.applied, names);
    assert!(second.applied.is_empty());
    assert_eq!(owner, "atlas_owner");
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused_by_name() {
    let db = TestDb::new().await;
    let mut admin = db.admin().await;
    // Simulate editing 0002 after it was applied: the recorded checksum no longer matches.
    admin
        .execute(
            "UPDATE atlas_schema_migrations SET checksum = repeat('0', 64) WHERE version = 2",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = migrate(&mut admin, None).await.err();
    match &err {
        Some(SchemaError::Modified { version, name, .. }) => {
            assert_eq!(*version, 2);
            assert_eq!(name, "0002_partitions.sql");
        }
        other => panic!("expected Modified, got {other:?}"),
    }
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("0002_partitions.sql") && message.contains("changed after it was applied"),
        "{message}"
    );
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused() {
    let db = TestDb::new().await;
    let mut admin = db.admin().await;
    admin
        .execute(
            "INSERT INTO atlas_schema_migrations (version, name, checksum) VALUES (9999, '9999_future.sql', 'x')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = migrate(&mut admin, None).await.err();
    assert!(
        matches!(&err, Some(SchemaError::Unknown { version: 9999, .. })),
        "{err:?}"
    );
}
