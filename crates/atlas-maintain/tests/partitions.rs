//! Partition premaking (monthly and daily) and retention with the maintainer's clock moved.

use atlas_maintain::{Maintainer, Settings};
use atlas_testkit::TestDb;
use chrono::{DateTime, Duration, Utc};

async fn coverage(db: &TestDb) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    db.store(1)
        .ts_partitions()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| (p.name, p.from, p.to))
        .collect()
}

fn contiguous(parts: &[(String, DateTime<Utc>, DateTime<Utc>)]) -> bool {
    parts.windows(2).all(|w| w[0].2 == w[1].1)
}

#[tokio::test]
async fn moving_the_clock_premakes_partitions_and_retention_drops_old_ones() {
    let db = TestDb::new().await;
    let settings = Settings {
        retention: Some(Duration::days(30)),
        ..Settings::default()
    };
    let m = Maintainer::new(db.store(2), settings);
    let now = Utc::now();

    let first = m.run_once(now).await;
    assert!(first.errors.is_empty(), "{first:?}");
    let parts = coverage(&db).await;
    let horizon = parts.last().map(|p| p.2).unwrap_or(now);
    assert!(horizon >= now + Duration::days(62), "{parts:?}");
    assert!(contiguous(&parts), "{parts:?}");
    assert!(
        first.dropped.is_empty(),
        "nothing is 30 days old yet: {first:?}"
    );
    assert!(
        first.stats_rows.is_some(),
        "the first round refreshes the stats"
    );

    // A value in the current month, stored as the owner would.
    let admin = db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO tenants (tenant_name) VALUES ('t');
             INSERT INTO attributes (attribute_name, data_type) VALUES ('temperature', 'decimal');
             INSERT INTO entities (tenant_id, entity_type) SELECT tenant_id, 'sensor' FROM tenants;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 SELECT e.entity_id, e.tenant_id, a.attribute_id, 1, now() FROM entities e, attributes a;",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // 70 days later: partitions reach 62 days past that, and everything that ended more than
    // 30 days before it (the current month included) is gone.
    let later = now + Duration::days(70);
    let report = m.run_once(later).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        !report.created.is_empty() && !report.dropped.is_empty(),
        "{report:?}"
    );
    let parts = coverage(&db).await;
    assert!(contiguous(&parts), "{parts:?}");
    assert!(
        parts
            .last()
            .is_some_and(|p| p.2 >= later + Duration::days(62)),
        "{parts:?}"
    );
    assert!(
        parts.iter().all(|p| p.2 > later - Duration::days(30)),
        "a partition past retention survived: {parts:?}"
    );
    let current = format!("entity_values_{}", now.format("%Y_%m"));
    assert!(report.dropped.contains(&current), "{report:?}");
    let left: i64 = admin
        .query_one("SELECT count(*) FROM entity_values_ts", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(left, 0);

    // Switching to daily partitions continues from the newest bound, one day each.
    let daily = Maintainer::new(
        db.store(2),
        Settings {
            daily: true,
            ..Settings::default()
        },
    );
    let much_later = later + Duration::days(70);
    let report = daily.run_once(much_later).await;
    assert!(report.errors.is_empty(), "{report:?}");
    let parts = coverage(&db).await;
    assert!(contiguous(&parts), "{parts:?}");
    let new_daily: Vec<_> = parts
        .iter()
        .filter(|p| report.created.contains(&p.0))
        .collect();
    assert!(!new_daily.is_empty());
    assert!(
        new_daily.iter().all(|p| p.2 - p.1 == Duration::days(1)),
        "{new_daily:?}"
    );
    assert!(
        parts
            .last()
            .is_some_and(|p| p.2 >= much_later + Duration::days(62))
    );

    // Each task's run is recorded.
    let runs = atlas_maintain::last_runs(&db.store(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tasks: Vec<&str> = runs.iter().map(|r| r.task.as_str()).collect();
    for t in [
        "brin",
        "entity_partitions",
        "heartbeat_cleanup",
        "partitions",
        "retention",
        "stats_refresh",
    ] {
        assert!(tasks.contains(&t), "{t} not recorded: {tasks:?}");
    }
    assert!(runs.iter().all(|r| r.ok), "{runs:?}");
}

#[tokio::test]
async fn retention_gives_up_on_a_lock_it_cannot_get_within_its_timeout() {
    let db = TestDb::new().await;
    let m = Maintainer::new(
        db.store(2),
        Settings {
            retention: Some(Duration::days(30)),
            lock_timeout_ms: 200,
            ..Settings::default()
        },
    );
    let now = Utc::now();
    assert!(m.run_once(now).await.errors.is_empty());
    // A long reader holds a lock on the time series: DETACH must wait for it…
    let mut reader = db.admin().await;
    let tx = reader.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    tx.execute("SELECT count(*) FROM entity_values_ts", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // …so premaking and retention give up after their lock timeout, and report it.
    let started = std::time::Instant::now();
    let report = m.run_once(now + Duration::days(70)).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    for task in ["partitions", "retention"] {
        assert!(
            report.errors.iter().any(|e| e.starts_with(task)),
            "{task}: {report:?}"
        );
    }
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    // Next round, with the lock free, it succeeds.
    let report = m.run_once(now + Duration::days(70)).await;
    assert!(
        report.errors.is_empty() && !report.dropped.is_empty(),
        "{report:?}"
    );
}

#[tokio::test]
async fn backfill_extends_the_time_series_backward_and_refuses_what_retention_would_drop() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let before = coverage(&db).await;
    let oldest = before.first().map_or(now, |p| p.1);

    // Monthly: whole months back to the one holding `since`, contiguous with what was there.
    let monthly = Maintainer::new(db.store(2), Settings::default());
    let since = oldest - Duration::days(100);
    let created = monthly
        .backfill(since, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let parts = coverage(&db).await;
    assert!(contiguous(&parts), "{parts:?}");
    let first = &parts[0];
    assert_eq!(first.0, format!("entity_values_{}", since.format("%Y_%m")));
    assert!(first.1 <= since && since < first.2, "{first:?}");
    assert_eq!(first.1.format("%d %H:%M:%S").to_string(), "01 00:00:00");
    assert_eq!(created.len(), parts.len() - before.len(), "{created:?}");
    assert_eq!(created.last(), Some(&first.0), "newest first: {created:?}");
    assert!(
        monthly
            .backfill(since, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "already covered"
    );

    // A row for that time is stored.
    db.admin()
        .await
        .batch_execute(&format!(
            "INSERT INTO tenants (tenant_name) VALUES ('t');
             INSERT INTO attributes (attribute_name, data_type) VALUES ('temperature', 'decimal');
             INSERT INTO entities (tenant_id, entity_type) SELECT tenant_id, 'sensor' FROM tenants;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 SELECT e.entity_id, e.tenant_id, a.attribute_id, 1, '{}' FROM entities e, attributes a;",
            since.to_rfc3339()
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Daily: one day each, back to the day holding `since`.
    let daily = Maintainer::new(
        db.store(2),
        Settings {
            daily: true,
            ..Settings::default()
        },
    );
    let oldest = parts[0].1;
    let since = oldest - Duration::hours(60);
    let created = daily
        .backfill(since, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.len(), 3, "{created:?}");
    let parts = coverage(&db).await;
    assert!(contiguous(&parts), "{parts:?}");
    assert!(
        parts[..3].iter().all(|p| p.2 - p.1 == Duration::days(1)),
        "{parts:?}"
    );
    assert_eq!(
        parts[0].0,
        format!("entity_values_{}", since.format("%Y_%m_%d"))
    );

    // Past retention: refused, nothing created. Further back than 20 years: refused.
    let kept = Maintainer::new(
        db.store(2),
        Settings {
            retention: Some(Duration::days(30)),
            ..Settings::default()
        },
    );
    let err = kept.backfill(now - Duration::days(31), now).await;
    assert!(
        matches!(
            err,
            Err(atlas_maintain::MaintainError::BeforeRetention { .. })
        ),
        "{err:?}"
    );
    let err = monthly.backfill(now - Duration::days(21 * 365), now).await;
    assert!(
        matches!(err, Err(atlas_maintain::MaintainError::TooFarBack { .. })),
        "{err:?}"
    );
    assert_eq!(coverage(&db).await, parts);
}

#[tokio::test]
async fn a_round_in_the_first_hours_of_a_month_covers_the_day_before() {
    let db = TestDb::new().await;
    // The database's oldest partition starts on the first of a month; two hours into that
    // month, a device's readings from the evening before must still be storable.
    let oldest = coverage(&db).await.first().map(|p| p.1);
    let oldest = oldest.unwrap_or_else(|| panic!("no partitions"));
    let now = oldest + Duration::hours(2);
    let report = Maintainer::new(db.store(2), Settings::default())
        .run_once(now)
        .await;
    assert!(report.errors.is_empty(), "{report:?}");
    let yesterday = now - Duration::days(1);
    let name = format!("entity_values_{}", yesterday.format("%Y_%m"));
    assert_eq!(report.created, std::slice::from_ref(&name), "{report:?}");
    let parts = coverage(&db).await;
    assert!(contiguous(&parts), "{parts:?}");
    assert!(parts[0].0 == name && parts[0].1 <= yesterday, "{parts:?}");
}
