//! ingest_rows (the server's durable flush): its fast path for clean, new batches and the
//! general path every other batch falls back to must store and project the same.

use atlas_testkit::TestDb;
use serde_json::json;
use tokio_postgres::Client;

use crate::support::{Fleet, add_entities, at, fleet, hot_attrs, sqlstate};

/// One value for ingest_rows: (tenant, entity, attribute, text, integer, RFC 3339 time).
type In<'a> = (i64, i64, i64, Option<&'a str>, Option<i64>, String);

/// What ingest_rows answered, and whether it fell back to the general path.
#[derive(Debug)]
struct Out {
    /// (tenant, entity, stored, hot_changed) of the summary rows, sorted.
    stored: Vec<(i64, i64, i32, bool)>,
    /// Reasons of dead-lettered values.
    dead: Vec<String>,
    /// flush_moved was called: the batch took the general path.
    general: bool,
}

/// Calls of flush_moved (the general path) in this transaction so far. Pending function counts
/// survive until the backend reports them, which it does only outside a transaction block:
/// the difference within one transaction is its own calls'.
const FLUSH_MOVED_CALLS: &str = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions WHERE funcname = 'flush_moved'";

async fn track_functions(db: &TestDb) {
    let admin = db.admin().await;
    let stmt: String = admin
        .query_one(
            "SELECT format('ALTER DATABASE %I SET track_functions = ''all''', current_database())",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    admin
        .batch_execute(&stmt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn ingest(app: &mut Client, rows: &[In<'_>]) -> Result<Out, tokio_postgres::Error> {
    let tenants: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let entities: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let attributes: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let texts: Vec<Option<&str>> = rows.iter().map(|r| r.3).collect();
    let ints: Vec<Option<i64>> = rows.iter().map(|r| r.4).collect();
    let ats: Vec<&str> = rows.iter().map(|r| r.5.as_str()).collect();
    let tx = app.transaction().await?;
    let before: i64 = tx.query_one(FLUSH_MOVED_CALLS, &[]).await?.get(0);
    let result = tx
        .query(
            "SELECT tenant_id, entity_id, stored, hot_changed, dead_reason FROM ingest_rows(ARRAY(\
               SELECT ROW(x.e, x.t, x.a, x.v, x.vi, NULL, NULL, NULL, NULL, x.at::timestamptz, NULL)::entity_values_ingest \
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::text[]) \
                    AS x (e, t, a, v, vi, at)))",
            &[&entities, &tenants, &attributes, &texts, &ints, &ats],
        )
        .await?;
    let after: i64 = tx.query_one(FLUSH_MOVED_CALLS, &[]).await?.get(0);
    tx.commit().await?;
    let mut stored = Vec::new();
    let mut dead = Vec::new();
    for r in result {
        match r.get::<_, Option<String>>(4) {
            Some(reason) => dead.push(reason),
            None => stored.push((r.get(0), r.get(1), r.get(2), r.get(3))),
        }
    }
    stored.sort_unstable();
    Ok(Out {
        stored,
        dead,
        general: after > before,
    })
}

/// One stage_flush call in its own transaction: (values stored, whether it called flush_moved).
async fn drain_tracked(app: &mut Client) -> (i64, bool) {
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    let count = |r: tokio_postgres::Row| r.get::<_, i64>(0);
    let before = count(
        tx.query_one(FLUSH_MOVED_CALLS, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let stored: Option<i64> = tx
        .query_one("SELECT sum(stored)::bigint FROM stage_flush(1000)", &[])
        .await
        .unwrap_or_else(|e| panic!("stage_flush: {e}"))
        .get(0);
    let after = count(
        tx.query_one(FLUSH_MOVED_CALLS, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    (stored.unwrap_or(0), after > before)
}

async fn must_ingest(app: &mut Client, rows: &[In<'_>]) -> Out {
    ingest(app, rows)
        .await
        .unwrap_or_else(|e| panic!("ingest_rows: {e:?}"))
}

async fn stored_values(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM entity_values_ts", &[])
        .await
}

#[tokio::test]
async fn clean_batches_take_the_fast_path_and_every_other_batch_the_general_one() {
    let db = TestDb::new().await;
    track_functions(&db).await;
    let Fleet {
        tenant_a: ta,
        a1,
        a2,
        b1,
        status,
        priority,
        ..
    } = fleet(&db).await;
    let mut app = db.app().await;

    // A clean batch: stored by the plain INSERT, projected from the parameters.
    let first: [In; 4] = [
        (ta, a1, status, Some("online"), None, at("10:00:00")),
        (ta, a1, priority, None, Some(8), at("10:00:00")),
        (ta, a1, status, Some("booting"), None, at("09:00:00")),
        (ta, a2, status, Some("idle"), None, at("10:00:00")),
    ];
    let out = must_ingest(&mut app, &first).await;
    assert!(!out.general, "a clean batch fell back: {out:?}");
    assert_eq!(out.stored, [(ta, a1, 3, true), (ta, a2, 1, true)]);
    assert!(out.dead.is_empty());
    assert_eq!(stored_values(&db).await, 4);
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "online", "priority": 8})
    );
    assert_eq!(hot_attrs(&db, a2).await, json!({"status": "idle"}));

    // The same batch again: the general path stores nothing and changes nothing.
    let out = must_ingest(&mut app, &first).await;
    assert!(out.general, "a replay must take the general path");
    assert!(out.stored.iter().all(|s| !s.3), "{out:?}");
    assert!(out.dead.is_empty());
    assert_eq!(stored_values(&db).await, 4);

    // A duplicate inside a batch is stored once; a replayed row next to a new one adds only
    // the new one.
    let out = must_ingest(
        &mut app,
        &[
            (ta, a1, priority, None, Some(9), at("11:00:00")),
            (ta, a1, priority, None, Some(9), at("11:00:00")),
            (ta, a2, status, Some("idle"), None, at("10:00:00")),
            (ta, a2, priority, None, Some(1), at("11:00:00")),
        ],
    )
    .await;
    assert!(out.general);
    assert_eq!(out.stored, [(ta, a1, 1, true), (ta, a2, 1, true)]);
    assert_eq!(stored_values(&db).await, 6);
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "online", "priority": 9})
    );

    // Invalid rows are dead-lettered by the general path; the valid rows of the batch are
    // stored.
    let out = must_ingest(
        &mut app,
        &[
            (ta, a1, 999_999, Some("x"), None, at("12:00:00")),
            (ta, b1, status, Some("theirs"), None, at("12:00:00")),
            (ta, a2, priority, Some("8"), None, at("12:00:00")),
            (ta, a2, status, Some("busy"), None, at("12:00:00")),
        ],
    )
    .await;
    assert!(out.general);
    let mut dead = out.dead.clone();
    dead.sort();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead[0].starts_with("entity does not exist"), "{dead:?}");
    assert_eq!(dead[1], "unknown attribute_id");
    assert!(dead[2].starts_with("value does not match data_type integer"));
    assert_eq!(out.stored, [(ta, a2, 1, true)]);
    assert_eq!(stored_values(&db).await, 7);
    assert_eq!(
        hot_attrs(&db, a2).await,
        json!({"status": "busy", "priority": 1})
    );

    // Clean but late or mixed: stored by the fast path, and the projection keeps each newer
    // value (the key-by-key merge of hot_attrs_apply).
    let out = must_ingest(
        &mut app,
        &[
            (ta, a1, status, Some("late"), None, at("09:30:00")),
            (ta, a2, status, Some("newest"), None, at("13:00:00")),
            (ta, a2, priority, None, Some(0), at("10:30:00")),
        ],
    )
    .await;
    assert!(!out.general, "{out:?}");
    assert_eq!(out.stored, [(ta, a1, 1, false), (ta, a2, 2, true)]);
    assert_eq!(stored_values(&db).await, 10);
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "online", "priority": 9})
    );
    assert_eq!(
        hot_attrs(&db, a2).await,
        json!({"status": "newest", "priority": 1})
    );

    // A NULL row is refused; an empty batch does nothing.
    let err = app
        .query(
            "SELECT * FROM ingest_rows(ARRAY[NULL::entity_values_ingest])",
            &[],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("a NULL row was accepted"));
    assert_eq!(sqlstate(&err), "22023");
    let out = must_ingest(&mut app, &[]).await;
    assert!(out.stored.is_empty() && out.dead.is_empty());
    assert_eq!(stored_values(&db).await, 10);
}

#[tokio::test]
async fn the_projections_concatenation_agrees_with_the_key_by_key_merge() {
    // hot_attrs_apply concatenates when every delta time is newer than every projection time
    // and merges key by key otherwise. Random projections and deltas (ties and mixes
    // included), applied through the four-array form (no newest times, as hot_attr_backfill
    // and upsert_hot_attrs call it), must come out as hot_attrs_merge says, and exactly the
    // rows hot_attrs_newer calls changed must be rewritten.
    let db = TestDb::new().await;
    let admin = random_cases(&db, 0.25, false).await;
    let fast = count(
        &admin,
        "SELECT count(*) FROM cases WHERE hot_attrs_all_newer(cur_at, delta_at)",
    )
    .await;
    let merged = count(
        &admin,
        "SELECT count(*) FROM cases WHERE NOT hot_attrs_all_newer(cur_at, delta_at) AND hot_attrs_newer(cur_at, delta_at)",
    )
    .await;
    assert!(
        fast > 20 && merged > 20,
        "both paths must be exercised: {fast} fast, {merged} merged"
    );
    apply_cases_and_compare_with_the_merge(&admin, false).await;
}

#[tokio::test]
async fn concurrent_writers_with_overlapping_batches_store_each_value_once() {
    // Four writers send batches concurrently; writers 0 and 1 share half their readings (a
    // client retrying through two servers), writer 2 sends each of its batches twice, writer 3
    // its own.
    // Racing plain INSERTs meet the other's uncommitted keys, fail over to the general path,
    // and every reading ends up stored once, with the newest hot value projected.
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let mut app = db.app().await;
    let entities = add_entities(&mut app, f.tenant_a, 30).await;
    // From now: writer 3's batches reach ~12 days ahead, within the two months of partitions
    // the migrations make ahead.
    let start = chrono::Utc::now();
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let mut client = db.app().await;
        let (entities, tenant, priority) = (entities.clone(), f.tenant_a, f.priority);
        writers.push(tokio::spawn(async move {
            let mut sent = std::collections::HashSet::new();
            for batch in 0..15i64 {
                let base = if w == 3 { 1_000_000 } else { 0 } + batch * 100;
                let ats: Vec<String> = (0..entities.len())
                    .map(|k| {
                        let k = i64::try_from(k).unwrap_or(0);
                        // Writer 1 shares only every other reading with writer 0: a batch
                        // that meets stored keys still has new rows to store.
                        let own = if w == 1 && k % 2 == 1 { 500_000 } else { 0 };
                        let s = base + own + k % 7;
                        (start + chrono::Duration::seconds(s)).to_rfc3339()
                    })
                    .collect();
                let rows: Vec<In> = entities
                    .iter()
                    .zip(&ats)
                    .map(|(e, at)| (tenant, *e, priority, None, Some(base), at.clone()))
                    .collect();
                for _ in 0..if w == 2 { 2 } else { 1 } {
                    let out = ingest(&mut client, &rows)
                        .await
                        .unwrap_or_else(|e| panic!("writer {w}: {e:?}"));
                    assert!(out.dead.is_empty(), "writer {w}: {:?}", out.dead);
                }
                sent.extend(rows.iter().map(|r| (r.1, r.5.clone())));
            }
            sent
        }));
    }
    let mut expected = std::collections::HashSet::new();
    for w in writers {
        expected.extend(w.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let admin = db.admin().await;
    let (rows, distinct): (i64, i64) = {
        let r = admin
            .query_one(
                "SELECT count(*), count(DISTINCT (entity_id, attribute_id, ingested_at)) FROM entity_values_ts",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (r.get(0), r.get(1))
    };
    assert_eq!(rows, distinct, "a value was stored twice");
    assert_eq!(usize::try_from(rows).ok(), Some(expected.len()));
    // Writer 3's last batch is the newest reading of every entity.
    let wrong: i64 = admin
        .query_one(
            "SELECT count(*) FROM entity_jsonb WHERE entity_id = ANY($1) AND hot_attrs -> 'priority' <> '1001400'::jsonb",
            &[&entities],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        wrong, 0,
        "the projection is not the newest value everywhere"
    );
}

#[tokio::test]
async fn the_previous_releases_ten_array_call_still_stores() {
    // A server of the previous release keeps writing while a deployment migrates first and
    // replaces its servers after: its ten-array call goes through the same checks.
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let app = db.app().await;
    let call = "SELECT stored, hot_changed, dead_reason FROM ingest_rows($1::bigint[], $2::bigint[], \
                $3::bigint[], $4::text[], $5::bigint[], ARRAY[NULL, NULL]::numeric[], \
                ARRAY[NULL, NULL]::boolean[], ARRAY[NULL, NULL]::date[], ARRAY[NULL, NULL]::timestamptz[], \
                $6::text[]::timestamptz[])";
    let (ten, eleven) = (at("10:00:00"), at("11:00:00"));
    let rows = app
        .query(
            call,
            &[
                &vec![f.a1, f.b1],
                &vec![f.tenant_a, f.tenant_a],
                &vec![f.status, f.status],
                &vec![Some("online"), Some("theirs")],
                &vec![None::<i64>, None],
                &vec![ten.as_str(), eleven.as_str()],
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outcomes: Vec<(i32, bool, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    outcomes.sort();
    // Tenant A's entity is stored and projected; tenant B's entity under tenant A is not.
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0].0, 0);
    assert!(
        outcomes[0]
            .2
            .as_deref()
            .is_some_and(|r| r.starts_with("entity does not exist")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], (1, true, None));
    assert_eq!(hot_attrs(&db, f.a1).await, json!({"status": "online"}));
    let err = app
        .query(
            call,
            &[
                &vec![f.a1],
                &vec![f.tenant_a, f.tenant_a],
                &vec![f.status],
                &vec![Some("x")],
                &vec![None::<i64>],
                &vec![ten.as_str()],
            ],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("mismatched arrays were accepted"));
    assert_eq!(sqlstate(&err), "22023");
}

#[tokio::test]
async fn the_background_drain_takes_the_fast_path_for_clean_staged_rows() {
    let db = TestDb::new().await;
    track_functions(&db).await;
    let Fleet {
        tenant_a: ta,
        a1,
        a2,
        status,
        priority,
        ..
    } = fleet(&db).await;
    let mut app = db.app().await;
    // Another SQL producer's connection.
    let producer = db.app().await;
    let staged = |rows: Vec<In<'static>>| {
        let producer = &producer;
        async move {
            for (tenant, entity, attribute, text, int, at) in rows {
                let at: chrono::DateTime<chrono::Utc> =
                    at.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
                producer
                    .execute(
                        "INSERT INTO entity_values_ingest (entity_id, tenant_id, attribute_id, value, value_int, ingested_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&entity, &tenant, &attribute, &text, &int, &at],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    };

    // Clean and new: stored and projected without the general path.
    staged(vec![
        (ta, a1, status, Some("online"), None, at("10:00:00")),
        (ta, a1, priority, None, Some(3), at("10:00:00")),
        (ta, a2, status, Some("idle"), None, at("10:00:00")),
    ])
    .await;
    assert_eq!(drain_tracked(&mut app).await, (3, false));
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "online", "priority": 3})
    );

    // A replayed row next to a new one: the general path stores only the new one.
    staged(vec![
        (ta, a1, status, Some("online"), None, at("10:00:00")),
        (ta, a1, status, Some("busy"), None, at("11:00:00")),
    ])
    .await;
    assert_eq!(drain_tracked(&mut app).await, (1, true));
    assert_eq!(stored_values(&db).await, 4);
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "busy", "priority": 3})
    );

    // A poison row (another tenant's entity id would do; here an unknown attribute): dead-
    // lettered by the general path, its neighbour stored.
    staged(vec![
        (ta, a2, 999_999, Some("x"), None, at("12:00:00")),
        (ta, a2, priority, None, Some(7), at("12:00:00")),
    ])
    .await;
    assert_eq!(drain_tracked(&mut app).await, (1, true));
    let dead: i64 = db
        .admin()
        .await
        .query_one("SELECT count(*) FROM entity_values_dead_letter", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(dead, 1);
    assert_eq!(stored_values(&db).await, 5);
}

/// An entity's stored `hot_attrs_newest` and the newest time its `hot_attrs_at` holds.
async fn newest(db: &TestDb, entity: i64) -> (Option<i64>, Option<i64>) {
    let row = db
        .admin()
        .await
        .query_one(
            "SELECT hot_attrs_newest, (SELECT max(v::bigint) FROM jsonb_each_text(hot_attrs_at) x (k, v)) \
             FROM entity_jsonb WHERE entity_id = $1",
            &[&entity],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn the_projection_keeps_its_newest_time_exact_or_unknown_never_too_low() {
    let db = TestDb::new().await;
    let Fleet {
        tenant_a: ta,
        a1,
        a2,
        status,
        priority,
        ..
    } = fleet(&db).await;
    let mut app = db.app().await;
    let micros = |hms: &str| {
        chrono::DateTime::parse_from_rfc3339(&at(hms))
            .map(|t| t.timestamp_micros())
            .unwrap_or_else(|e| panic!("{e}"))
    };

    // One reading per entity: the delta has one time, which becomes the newest.
    must_ingest(
        &mut app,
        &[
            (ta, a1, status, Some("online"), None, at("10:00:00")),
            (ta, a1, priority, None, Some(1), at("10:00:00")),
            (ta, a2, status, Some("idle"), None, at("10:00:00")),
        ],
    )
    .await;
    let ten = Some(micros("10:00:00"));
    assert_eq!(newest(&db, a1).await, (ten, ten));

    // A newer one-time delta is concatenated by the integer test and moves it.
    must_ingest(
        &mut app,
        &[(ta, a1, status, Some("degraded"), None, at("11:00:00"))],
    )
    .await;
    let eleven = Some(micros("11:00:00"));
    assert_eq!(newest(&db, a1).await, (eleven, eleven));
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "degraded", "priority": 1})
    );

    // A late one-time delta (older than the newest, newer than priority's time) fails the
    // integer test; the key-by-key merge takes priority only and leaves the newest unknown.
    must_ingest(
        &mut app,
        &[
            (ta, a1, status, Some("offline"), None, at("10:30:00")),
            (ta, a1, priority, None, Some(2), at("10:30:00")),
        ],
    )
    .await;
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "degraded", "priority": 2})
    );
    assert_eq!(newest(&db, a1).await, (None, eleven));

    // Unknown: the next delta is tested by the jsonpath, and a one-time delta sets it again.
    must_ingest(
        &mut app,
        &[(ta, a1, priority, None, Some(3), at("12:00:00"))],
    )
    .await;
    let twelve = Some(micros("12:00:00"));
    assert_eq!(newest(&db, a1).await, (twelve, twelve));

    // A delta of several times (two readings of the entity in one batch) is concatenated when
    // all are newer, and leaves the newest unknown.
    must_ingest(
        &mut app,
        &[
            (ta, a2, status, Some("busy"), None, at("12:00:00")),
            (ta, a2, priority, None, Some(5), at("12:30:00")),
        ],
    )
    .await;
    assert_eq!(
        hot_attrs(&db, a2).await,
        json!({"status": "busy", "priority": 5})
    );
    assert_eq!(newest(&db, a2).await, (None, Some(micros("12:30:00"))));

    // Too high is only slower: with the newest claimed far ahead, a newer one-time delta goes
    // through the merge and is still applied.
    db.admin()
        .await
        .execute(
            "UPDATE entity_jsonb SET hot_attrs_newest = hot_attrs_newest + 3600000000 * 24 WHERE entity_id = $1",
            &[&a1],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    must_ingest(
        &mut app,
        &[(ta, a1, status, Some("online"), None, at("13:00:00"))],
    )
    .await;
    assert_eq!(
        hot_attrs(&db, a1).await,
        json!({"status": "online", "priority": 3})
    );
    assert_eq!(newest(&db, a1).await, (None, Some(micros("13:00:00"))));
}

#[tokio::test]
async fn the_newest_time_test_agrees_with_the_key_by_key_merge() {
    // The five-array hot_attrs_apply over random projections - their newest time exact,
    // unknown or too high - and random deltas, half of them of one time: the projection must
    // come out as hot_attrs_merge says, exactly the rows with a newer value must change, and
    // no stored newest time may be below a time its row holds.
    let db = TestDb::new().await;
    let admin = random_cases(&db, 0.5, true).await;
    let by_integer = count(
        &admin,
        "SELECT count(*) FROM cases WHERE cur_newest IS NOT NULL AND delta_newest IS NOT NULL \
         AND cur_newest < delta_newest",
    )
    .await;
    let integer_then_merge = count(
        &admin,
        "SELECT count(*) FROM cases WHERE cur_newest IS NOT NULL AND delta_newest IS NOT NULL \
         AND cur_newest >= delta_newest AND hot_attrs_newer(cur_at, delta_at)",
    )
    .await;
    assert!(
        by_integer > 20 && integer_then_merge > 10,
        "both outcomes of the integer test must be exercised: {by_integer}, {integer_then_merge}"
    );
    apply_cases_and_compare_with_the_merge(&admin, true).await;
    let too_low: Vec<(i64, i64, serde_json::Value)> = admin
        .query(
            "SELECT j.entity_id, j.hot_attrs_newest, j.hot_attrs_at FROM cases c
             JOIN entity_jsonb j USING (entity_id, tenant_id)
             WHERE j.hot_attrs_newest < (SELECT max(v::bigint) FROM jsonb_each_text(j.hot_attrs_at) x (k, v))",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        too_low.is_empty(),
        "a newest time below a stored time: {too_low:?}"
    );
}

async fn count(admin: &Client, sql: &str) -> i64 {
    atlas_testkit::scalar(admin, sql, &[]).await
}

/// 400 entities' random projections and deltas over four keys with times 1..5 (ties and mixes
/// included) in the session's TEMP TABLE `cases`, half the deltas of one time; `kind` picks
/// the stored newest time (0 unknown, 1 exact, 2 too high) and `delta_newest` is what
/// hot_attrs_project passes for the delta. The projections are stored - with their newest
/// time when `with_newest`, else unknown as before 0018. Returns the session holding `cases`.
async fn random_cases(db: &TestDb, seed: f64, with_newest: bool) -> Client {
    let f = fleet(db).await;
    let mut app = db.app().await;
    add_entities(&mut app, f.tenant_a, 400).await;
    let admin = db.admin().await;
    admin
        .execute("SELECT setseed($1)", &[&seed])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .batch_execute(
            "CREATE TEMP TABLE cases AS
             SELECT e.entity_id, e.tenant_id,
                    coalesce((SELECT jsonb_object_agg(k, to_jsonb(k || floor(random() * 3)::int)) FROM unnest(c.keys) k), '{}') AS cur,
                    coalesce((SELECT jsonb_object_agg(k, floor(random() * 5 + 1)::int) FROM unnest(c.keys) k), '{}') AS cur_at,
                    c.kind,
                    coalesce((SELECT jsonb_object_agg(k, to_jsonb('new-' || k)) FROM unnest(c.dkeys) k), '{}') AS delta,
                    coalesce((SELECT jsonb_object_agg(k, CASE WHEN c.one_time THEN c.t ELSE floor(random() * 5 + 1)::int END)
                              FROM unnest(c.dkeys) k), '{}') AS delta_at
             FROM entities e,
                  LATERAL (SELECT ARRAY(SELECT k FROM unnest(ARRAY['a','b','c','d']) k WHERE random() < 0.6 + 0 * e.entity_id) AS keys,
                                  ARRAY(SELECT k FROM unnest(ARRAY['a','b','c','d']) k WHERE random() < 0.6 + 0 * e.entity_id) AS dkeys,
                                  floor(random() * 3 + 0 * e.entity_id)::int AS kind,
                                  random() < 0.5 + 0 * e.entity_id AS one_time,
                                  floor(random() * 5 + 1 + 0 * e.entity_id)::int AS t) c;
             ALTER TABLE cases ADD COLUMN cur_newest bigint, ADD COLUMN delta_newest bigint;
             UPDATE cases SET
                 cur_newest = CASE kind WHEN 0 THEN NULL
                                        WHEN 1 THEN (SELECT max(v::bigint) FROM jsonb_each_text(cur_at) x (k, v))
                                        ELSE (SELECT max(v::bigint) + 2 FROM jsonb_each_text(cur_at) x (k, v)) END,
                 delta_newest = (SELECT CASE WHEN min(v::bigint) = max(v::bigint) THEN max(v::bigint) END
                                 FROM jsonb_each_text(delta_at) x (k, v));",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .execute(
            "INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs, hot_attrs_at, hot_attrs_newest)
             SELECT entity_id, tenant_id, cur, cur_at, CASE WHEN $1 THEN cur_newest END FROM cases
             ON CONFLICT (entity_id, tenant_id) DO UPDATE SET hot_attrs = EXCLUDED.hot_attrs,
                 hot_attrs_at = EXCLUDED.hot_attrs_at, hot_attrs_newest = EXCLUDED.hot_attrs_newest",
            &[&with_newest],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cases = count(&admin, "SELECT count(*) FROM cases").await;
    assert!(cases >= 400, "{cases}");
    admin
}

/// Applies every case's delta - with its one time (the five-array form) when `with_newest`,
/// else through the four-array form - and checks the outcome against hot_attrs_merge:
/// exactly the rows with a newer value are rewritten, each as the merge makes it, and the
/// others keep their projection.
async fn apply_cases_and_compare_with_the_merge(admin: &Client, with_newest: bool) {
    let apply = if with_newest {
        "SELECT array_agg(h.entity_id ORDER BY h.entity_id) FROM hot_attrs_apply(
             (SELECT array_agg(tenant_id ORDER BY entity_id) FROM cases),
             (SELECT array_agg(entity_id ORDER BY entity_id) FROM cases),
             (SELECT array_agg(delta ORDER BY entity_id) FROM cases),
             (SELECT array_agg(delta_at ORDER BY entity_id) FROM cases),
             (SELECT array_agg(delta_newest ORDER BY entity_id) FROM cases)) h"
    } else {
        "SELECT array_agg(h.entity_id ORDER BY h.entity_id) FROM hot_attrs_apply(
             (SELECT array_agg(tenant_id ORDER BY entity_id) FROM cases),
             (SELECT array_agg(entity_id ORDER BY entity_id) FROM cases),
             (SELECT array_agg(delta ORDER BY entity_id) FROM cases),
             (SELECT array_agg(delta_at ORDER BY entity_id) FROM cases)) h"
    };
    let applied: Vec<i64> = admin
        .query_one(apply, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    let expected: Vec<i64> = admin
        .query_one(
            "SELECT array_agg(entity_id ORDER BY entity_id) FROM cases WHERE hot_attrs_newer(cur_at, delta_at)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        applied, expected,
        "rows rewritten vs rows with a newer value"
    );
    let wrong: Vec<(i64, serde_json::Value, serde_json::Value)> = admin
        .query(
            "SELECT c.entity_id, to_jsonb(j.*) - 'updated_at' - 'cold_attrs', to_jsonb(m.*)
             FROM cases c
             JOIN entity_jsonb j USING (entity_id, tenant_id),
                  hot_attrs_merge(c.cur, c.cur_at, c.delta, c.delta_at) m
             WHERE (j.hot_attrs, j.hot_attrs_at) IS DISTINCT FROM
                   (CASE WHEN hot_attrs_newer(c.cur_at, c.delta_at) THEN m.hot_attrs ELSE c.cur END,
                    CASE WHEN hot_attrs_newer(c.cur_at, c.delta_at) THEN m.hot_attrs_at ELSE c.cur_at END)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        wrong.is_empty(),
        "projection differs from the merge: {wrong:?}"
    );
}

/// hot_attr_backfill, batch by batch as the server calls it: every live entity of every tenant
/// once, in (tenant, entity) order; each projected with its newest value unless a newer one is
/// projected already; deleted entities and entities without a value left alone.
#[tokio::test]
async fn the_backfill_projects_every_live_entity_once_batch_by_batch() {
    let db = TestDb::new().await;
    let f = fleet(&db).await;
    let mut app = db.app().await;
    let more = add_entities(&mut app, f.tenant_a, 3).await;
    let admin = db.admin().await;
    let level: i64 = admin
        .query_one(
            "INSERT INTO attributes (attribute_name, data_type) VALUES ('level', 'integer') RETURNING attribute_id",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    let (no_value, deleted) = (more[0], more[1]);
    // Two readings each (1 at 01:00, 2 at 02:00), except `no_value`.
    for e in [f.a1, f.a2, f.b1, more[1], more[2]] {
        let tenant = if e == f.b1 { f.tenant_b } else { f.tenant_a };
        for (v, t) in [(1_i64, "01:00:00"), (2, "02:00:00")] {
            admin
                .execute(
                    "INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_int, ingested_at) \
                     VALUES ($1, $2, $3, $4, $5::text::timestamptz)",
                    &[&e, &tenant, &level, &v, &at(t)],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // a2 has a newer value projected already; `deleted` is deleted.
    admin
        .execute(
            "SELECT * FROM hot_attrs_apply(ARRAY[$1::bigint], ARRAY[$2::bigint], ARRAY['{\"level\": 9}'::jsonb], \
                    ARRAY[jsonb_build_object('level', (extract(epoch FROM $3::text::timestamptz) * 1000000)::bigint)])",
            &[&f.tenant_a, &f.a2, &at("03:00:00")],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .execute(
            "UPDATE entities SET is_deleted = true WHERE entity_id = $1",
            &[&deleted],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let batch = |after: (i64, i64), n: i32| {
        let app = &app;
        async move {
            app.query(
                "SELECT tenant_id, entity_id, changed FROM hot_attr_backfill($1, $2, $3, $4)",
                &[&level, &after.0, &after.1, &n],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)))
            .collect::<Vec<_>>()
        }
    };
    // Not hot yet: nothing to do.
    assert!(batch((i64::MIN, i64::MIN), 2).await.is_empty());
    admin
        .execute(
            "UPDATE attributes SET is_hot = true WHERE attribute_id = $1",
            &[&level],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(batch((i64::MIN, i64::MIN), 0).await.is_empty());

    let mut seen = Vec::new();
    let mut after = (i64::MIN, i64::MIN);
    let mut batches = 0;
    loop {
        let rows = batch(after, 2).await;
        batches += 1;
        assert!(rows.len() <= 2);
        if let Some(&(t, e, _)) = rows.last() {
            after = (t, e);
        }
        let short = rows.len() < 2;
        seen.extend(rows);
        if short {
            break;
        }
    }
    let mut live = vec![
        (f.tenant_a, f.a1),
        (f.tenant_a, f.a2),
        (f.tenant_a, no_value),
        (f.tenant_a, more[2]),
        (f.tenant_b, f.b1),
    ];
    live.sort_unstable();
    assert_eq!(
        seen.iter().map(|&(t, e, _)| (t, e)).collect::<Vec<_>>(),
        live,
        "every live entity once, in order"
    );
    assert_eq!(batches, 3, "5 entities in batches of 2");
    // One batch over all of them comes back in keyset order too (the caller resumes after
    // its last row), now changing nothing.
    let whole = batch((i64::MIN, i64::MIN), 100).await;
    assert_eq!(
        whole.iter().map(|&(t, e, _)| (t, e)).collect::<Vec<_>>(),
        live
    );
    assert!(whole.iter().all(|r| !r.2), "already projected: {whole:?}");
    let changed: Vec<i64> = seen.iter().filter(|r| r.2).map(|r| r.1).collect();
    let mut expected = vec![f.a1, more[2], f.b1];
    expected.sort_unstable();
    let mut changed_sorted = changed.clone();
    changed_sorted.sort_unstable();
    assert_eq!(changed_sorted, expected);
    for e in [f.a1, more[2], f.b1] {
        assert_eq!(hot_attrs(&db, e).await["level"], json!(2), "entity {e}");
    }
    assert_eq!(
        hot_attrs(&db, f.a2).await["level"],
        json!(9),
        "the newer value stays"
    );
    let untouched: i64 = db
        .scalar(
            "SELECT count(*) FROM entity_jsonb WHERE entity_id = ANY($1) AND hot_attrs ? 'level'",
            &[&vec![no_value, deleted]],
        )
        .await;
    assert_eq!(untouched, 0, "no value, or deleted: not projected");
}
