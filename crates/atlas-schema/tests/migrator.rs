//! `atlas migrate` semantics: idempotent, and refuses edited or unknown history.

use atlas_schema::{FUNCTIONS, MIGRATIONS, SchemaError, migrate, migration_status};
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
    let empty = db.empty_sibling("empty").await;
    let result = {
        let mut client = empty.admin().await;
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
    let (first, second, owner) = result;
    let names: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    assert_eq!(first.applied, names);
    let files: Vec<&str> = FUNCTIONS.iter().map(|f| f.name).collect();
    assert_eq!(first.functions_applied, files);
    assert!(second.applied.is_empty() && second.functions_applied.is_empty());
    assert_eq!(owner, "atlas_owner");
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused_by_name() {
    let db = TestDb::new().await;
    let mut admin = db.admin().await;
    // Simulate editing the baseline after it was applied: the recorded checksum no longer matches.
    admin
        .execute(
            "UPDATE atlas_schema_migrations SET checksum = repeat('0', 64) WHERE version = 20",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = migrate(&mut admin, None).await.err();
    match &err {
        Some(SchemaError::Modified { version, name, .. }) => {
            assert_eq!(*version, 20);
            assert_eq!(name, "0020_baseline.sql");
        }
        other => panic!("expected Modified, got {other:?}"),
    }
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("0020_baseline.sql") && message.contains("changed after it was applied"),
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
