//! The read path's plans, as the app role under RLS, on a fleet large enough for the planner
//! to choose indexes for real: search uses the GIN index, latest/series the primary key,
//! aggregates the (tenant, attribute, time) index, and entity lookups prune to one partition.

use atlas_store::aggregate::{self, AggFn, Scope};
use atlas_store::reads;
use atlas_testkit::TestDb;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::support::set_tenant;

struct Fixture {
    db: TestDb,
    tenant: i64,
    entity: i64,
    temperature: i64,
}

/// Three tenants (the first owns 90 % of the fleet: the case where search matters), 30 000
/// entities with hot attributes, 60 000 values; analyzed.
async fn fixture() -> Fixture {
    fixture_of(30_000).await
}

/// [`fixture`] with `entities` entities.
async fn fixture_of(entities: i64) -> Fixture {
    let db = TestDb::new().await;
    let admin = db.admin().await;
    let mut tenants = Vec::new();
    for name in ["main", "second", "third"] {
        tenants.push(
            admin
                .query_one(
                    "INSERT INTO tenants (tenant_name) VALUES ($1) RETURNING tenant_id",
                    &[&name],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .get::<_, i64>(0),
        );
    }
    let temperature: i64 = admin
        .query_one(
            "INSERT INTO attributes (attribute_name, data_type) VALUES ('temperature', 'decimal') RETURNING attribute_id",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    admin
        .batch_execute(&format!(
            "INSERT INTO attributes (attribute_name, data_type) VALUES ('humidity', 'decimal'), ('voltage', 'decimal');
             INSERT INTO entities (tenant_id, entity_type)
                 SELECT CASE WHEN g % 20 = 1 THEN {b} WHEN g % 20 = 2 THEN {c} ELSE {a} END, CASE WHEN g % 7 = 0 THEN 'valve' ELSE 'sensor' END
                 FROM generate_series(1, {entities}) g;
             INSERT INTO entity_jsonb (entity_id, tenant_id, hot_attrs)
                 SELECT entity_id, tenant_id,
                        jsonb_build_object('status', 's' || (entity_id % 50), 'priority', entity_id % 10)
                        || CASE WHEN entity_id % 20000 = 0 THEN '{{\"alarm\": true}}'::jsonb ELSE '{{}}'::jsonb END
                 FROM entities;
             INSERT INTO entity_values_ts (entity_id, tenant_id, attribute_id, value_decimal, ingested_at)
                 SELECT e.entity_id, e.tenant_id, a.attribute_id, (random() * 100)::numeric(20, 5),
                        date_trunc('month', now()) + (t * interval '1 minute') + (e.entity_id % 60) * interval '1 second'
                 FROM (SELECT * FROM entities ORDER BY entity_id LIMIT 1000) e
                 CROSS JOIN attributes a
                 CROSS JOIN generate_series(1, 20) t;",
            a = tenants[0],
            b = tenants[1],
            c = tenants[2],
        ))
        .await
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    // As autovacuum would: statistics, and the GIN pending list merged into the index (until
    // then the planner prices the GIN by its unsorted pending list and avoids it).
    admin
        .batch_execute("VACUUM ANALYZE")
        .await
        .unwrap_or_else(|e| panic!("vacuum: {e}"));
    let entity: i64 = admin
        .query_one(
            "SELECT min(entity_id) FROM entities WHERE tenant_id = $1",
            &[&tenants[0]],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    Fixture {
        db,
        tenant: tenants[0],
        entity,
        temperature,
    }
}

/// EXPLAIN of `sql` with `params` as the app role in the tenant's context.
async fn explain_as_app(
    app: &mut Client,
    tenant: i64,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> String {
    explain_as_app_with(app, tenant, sql, params, "").await
}

/// [`explain_as_app`] after `settings` (e.g. `SET LOCAL enable_seqscan = off`).
async fn explain_as_app_with(
    app: &mut Client,
    tenant: i64,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    settings: &str,
) -> String {
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    set_tenant(&tx, tenant).await;
    tx.batch_execute(settings)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = tx
        .query(&format!("EXPLAIN {sql}"), params)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"));
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A search case: name, contains, has_key, has_any, has_all.
type SearchCase<'a> = (
    &'a str,
    Option<serde_json::Value>,
    Option<&'a str>,
    Option<Vec<&'a str>>,
    Option<Vec<&'a str>>,
);

fn scans_of(plan: &str, relation_prefix: &str) -> usize {
    plan.lines()
        .filter(|l| l.contains(&format!(" on {relation_prefix}")))
        .count()
}

#[tokio::test]
async fn search_uses_the_gin_index_for_every_operator_despite_rls() {
    // 2 000 rows per hash partition: enough that reading a partition costs more than the index.
    let f = fixture_of(200_000).await;
    let mut admin = f.db.admin().await;
    let admin = admin.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    // search_entities_plan explains, as the definer, the very statement search_entities runs.
    set_tenant(&admin, f.tenant).await;
    // Rare conditions (one entity in 20 000 is alarmed): the index is the right plan.
    // (A condition most entities match is better served by reading the tenant's entities in
    // id order until the page is full, and the planner rightly does that.)
    let cases: [SearchCase; 4] = [
        (
            "contains",
            Some(serde_json::json!({"alarm": true})),
            None,
            None,
            None,
        ),
        ("has_key", None, Some("alarm"), None, None),
        ("has_any", None, None, Some(vec!["alarm", "siren"]), None),
        ("has_all", None, None, None, Some(vec!["alarm", "status"])),
    ];
    for (name, contains, has_key, has_any, has_all) in cases {
        let rows = admin
            .query(
                "SELECT * FROM public.search_entities_plan($1, $2, $3, $4, NULL, 0, 100)",
                &[&contains, &has_key, &has_any, &has_all],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan: String = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            plan.contains("Bitmap Index Scan on entity_jsonb_p") && plan.contains("hot_attrs_idx"),
            "{name}: the search does not use the GIN index:\n{plan}"
        );
    }

    // The trap this function exists for: the app role's own query with the same condition is
    // not served by the GIN index even when nothing else is allowed (the operator is not
    // leakproof, so the policy's filter must run first).
    let mut app = f.db.app().await;
    let direct = explain_as_app_with(
        &mut app,
        f.tenant,
        "SELECT entity_id FROM public.entity_jsonb WHERE tenant_id = $1 AND hot_attrs @> $2",
        &[&f.tenant, &serde_json::json!({"status": "s7"})],
        "SET LOCAL enable_seqscan = off",
    )
    .await;
    assert!(
        !direct.contains("hot_attrs_idx"),
        "PostgreSQL now uses the GIN index under RLS; search_entities may no longer be needed:\n{direct}"
    );
}

#[tokio::test]
async fn latest_and_series_read_the_primary_key_as_the_app_role() {
    let f = fixture().await;
    let mut app = f.db.app().await;
    let latest = explain_as_app(
        &mut app,
        f.tenant,
        reads::LATEST_SQL,
        &[&f.tenant, &f.entity, &f.temperature],
    )
    .await;
    assert!(
        latest.contains("Index Scan Backward using entity_values_") && latest.contains("_pkey"),
        "latest:\n{latest}"
    );
    assert!(
        !latest.contains("Seq Scan on entity_values"),
        "latest:\n{latest}"
    );

    // A day of the fixture's values (they start at the beginning of the month).
    let from: chrono::DateTime<chrono::Utc> = app
        .query_one("SELECT date_trunc('month', now())", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    let now = from + chrono::Duration::days(1);
    let none: Option<chrono::DateTime<chrono::Utc>> = None;
    for sql in [reads::SERIES_ASC_SQL, reads::SERIES_DESC_SQL] {
        let plan = explain_as_app(
            &mut app,
            f.tenant,
            sql,
            &[
                &f.tenant,
                &f.entity,
                &f.temperature,
                &from,
                &now,
                &none,
                &100_i64,
            ],
        )
        .await;
        assert!(
            plan.contains("Index Scan") && plan.contains("_pkey"),
            "series:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "series:\n{plan}");
    }
}

#[tokio::test]
async fn aggregates_use_the_indexes_of_rollups_and_values_tenant_wide_and_per_entity() {
    let f = fixture().await;
    let mut app = f.db.app().await;
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    let hour = chrono::Duration::hours(1);
    let minute = chrono::Duration::minutes(1);
    // One range per level, as a 31-day aggregate with ragged edges is covered.
    let d = (vec![now - day * 30], vec![now - day]);
    let h = (vec![now - day], vec![now - hour]);
    let m = (vec![now - hour], vec![now - minute]);
    let r = (vec![now - minute], vec![now]);
    let attrs = vec![f.temperature];
    // Rollups of 500 entities reaching well beyond the ranges asked (a year of days, two
    // weeks of hours, six hours of minutes), analyzed.
    let admin = f.db.admin().await;
    for (table, unit, count) in [
        ("rollup_1d", "day", 365),
        ("rollup_1h", "hour", 336),
        ("rollup_1m", "minute", 360),
    ] {
        admin
            .execute(
                &[
                    "INSERT INTO ", table, " (tenant_id, entity_id, attribute_id, bucket, n, sum, min, max, \
                                              first_at, first_value, last_at, last_value) \
                     SELECT e.tenant_id, e.entity_id, $1, date_trunc($2, now()) - k * ('1 ' || $2)::interval, \
                            1, 1, 1, 1, now(), 1, now(), 1 \
                     FROM (SELECT * FROM entities ORDER BY entity_id LIMIT 500) e \
                     CROSS JOIN generate_series(1, $3::int) k",
                ]
                .concat(),
                &[&f.temperature, &unit, &count],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    admin
        .batch_execute("ANALYZE rollup_1d, rollup_1h, rollup_1m")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // As the server sends it: typed parameters, planned for them. Tenant-wide (every source
    // grouped in the database), then as a dashboard asks (named entities, level rows sent
    // as they are).
    use tokio_postgres::types::Type;
    let tsa = Type::TIMESTAMPTZ_ARRAY;
    let named: Vec<i64> = admin
        .query(
            "SELECT entity_id FROM entities ORDER BY entity_id LIMIT 5",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (raw_from, raw_to) = (now - minute, now);
    for (scope, per_series, grouped, ids, indexes) in [
        (
            Scope::Tenant,
            false,
            [true; 4],
            Vec::new(),
            [
                "idx_rollup_1d_attr_bucket",
                "idx_rollup_1h_attr_bucket",
                "idx_rollup_1m_attr_bucket",
                "tenant_id_attribute_id_ingested_at_idx",
            ],
        ),
        (
            Scope::Entities(named.clone()),
            true,
            [false, false, false, true],
            named.clone(),
            [
                "rollup_1d_pkey",
                "rollup_1h_pkey",
                "rollup_1m_pkey",
                "_pkey",
            ],
        ),
    ] {
        let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        set_tenant(&tx, f.tenant).await;
        let plan = tx
            .query_typed(
                &[
                    "EXPLAIN ",
                    &aggregate::aggregate_sql(AggFn::Avg, &scope, per_series, [true; 4], grouped),
                ]
                .concat(),
                &[
                    (&f.tenant, Type::INT8),
                    (&attrs, Type::INT8_ARRAY),
                    (&3_600_000_i64, Type::INT8),
                    (&d.0, tsa.clone()),
                    (&d.1, tsa.clone()),
                    (&h.0, tsa.clone()),
                    (&h.1, tsa.clone()),
                    (&m.0, tsa.clone()),
                    (&m.1, tsa.clone()),
                    (&r.0, tsa.clone()),
                    (&r.1, tsa.clone()),
                    (&ids, Type::INT8_ARRAY),
                    (&raw_from, Type::TIMESTAMPTZ),
                    (&raw_to, Type::TIMESTAMPTZ),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n");
        tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
        for index in indexes {
            assert!(plan.contains(index), "{scope:?}: {index}:\n{plan}");
        }
        // The month holding the values is read by the index (empty premade months may be
        // scanned: nothing to read).
        let month = now.format("entity_values_%Y_%m ").to_string();
        assert!(
            !plan.contains(&format!("Seq Scan on {month}")),
            "{scope:?}:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan on rollup_"), "{scope:?}:\n{plan}");
    }
}

#[tokio::test]
async fn an_entity_lookup_reads_one_partition_of_each_table() {
    let f = fixture().await;
    let mut app = f.db.app().await;
    let entity = explain_as_app(
        &mut app,
        f.tenant,
        atlas_store::entities::SELECT_ENTITY,
        &[&f.tenant, &f.entity],
    )
    .await;
    assert_eq!(scans_of(&entity, "entities_p"), 1, "{entity}");
    assert_eq!(scans_of(&entity, "entity_jsonb_p"), 1, "{entity}");
    let hot = explain_as_app(&mut app, f.tenant, reads::HOT_SQL, &[&f.tenant, &f.entity]).await;
    assert_eq!(scans_of(&hot, "entities_p"), 1, "{hot}");
    assert_eq!(scans_of(&hot, "entity_jsonb_p"), 1, "{hot}");
}

/// A page of entities deep in the id space, as the server runs it: a cached statement whose
/// generic plan probes `entity_jsonb` once per listed entity (one partition each), rather than
/// merging every partition from its first row up to the page.
#[tokio::test]
async fn an_entity_page_probes_the_projection_per_entity_under_a_generic_plan() {
    let f = fixture().await;
    let mut app = f.db.app().await;
    for (name, sql, args) in [
        (
            "by type",
            atlas_store::entities::LIST_TYPE,
            "$1, $2, 100, 'valve'",
        ),
        ("any type", atlas_store::entities::LIST_ALL, "$1, $2, 100"),
    ] {
        let types = if name == "by type" {
            "bigint, bigint, bigint, text"
        } else {
            "bigint, bigint, bigint"
        };
        let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        set_tenant(&tx, f.tenant).await;
        tx.batch_execute(&format!(
            "SET LOCAL plan_cache_mode = force_generic_plan; PREPARE page({types}) AS {sql}"
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The cursor near the end of the fleet: a merge would read almost every row.
        let deep = f.entity + 25_000;
        let execute = format!(
            "EXECUTE page({})",
            args.replace("$1", &f.tenant.to_string())
                .replace("$2", &deep.to_string())
        );
        let plan: String = tx
            .query(
                &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {execute}"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n");
        tx.batch_execute("DEALLOCATE page")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(plan.contains("Nested Loop"), "{name}:\n{plan}");
        assert!(
            !plan.contains("Merge Append")
                && !plan.contains("Merge Join")
                && !plan.contains("Merge Left Join"),
            "{name}: the projection is merged, not probed:\n{plan}"
        );
        // Each listed entity's probe returns its one row (rows=1 per loop, never more).
        assert!(
            plan.lines()
                .any(|l| l.contains("Aggregate") && l.contains("rows=1 loops=")),
            "{name}:\n{plan}"
        );
    }
}

/// The plan of `EXPLAIN (VERBOSE, COSTS OFF) <sql>`, as one text.
async fn verbose_plan(c: &Client, sql: &str) -> String {
    c.query(&["EXPLAIN (VERBOSE, COSTS OFF) ", sql].concat(), &[])
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_flush_per_row_helpers_are_inlined_into_its_plans() {
    // A helper with a SET clause is a function call per row; without one the planner inlines
    // its body (values.sql): the plan shows the CASE, not the function.
    let db = TestDb::new().await;
    let c = db.admin().await;
    for (helper, call) in [
        (
            "value_matches_type",
            "public.value_matches_type(x.t, x.v, x.i, NULL, NULL, NULL, NULL)",
        ),
        (
            "typed_value_jsonb",
            "public.typed_value_jsonb(x.t, x.v, x.i, NULL, NULL, NULL, NULL)",
        ),
        (
            "jsonb_matches_type",
            "public.jsonb_matches_type(x.t, to_jsonb(x.i))",
        ),
    ] {
        let text = verbose_plan(
            &c,
            &[
                "SELECT ",
                call,
                " FROM (SELECT g::text AS t, g::text AS v, g::bigint AS i FROM generate_series(1, 10) g) x",
            ]
            .concat(),
        )
        .await;
        assert!(
            !text.contains(helper),
            "{helper} is called, not inlined:\n{text}"
        );
        assert!(text.contains("CASE"), "{helper}: {text}");
    }
    let merge = verbose_plan(
        &c,
        "SELECT m.* FROM (VALUES ('{}'::jsonb)) v(j), public.hot_attrs_merge(v.j, v.j, v.j, v.j) m",
    )
    .await;
    assert!(
        !merge.contains("Function Scan on hot_attrs_merge"),
        "{merge}"
    );
    // The projection's fast-path test is inlined into hot_attrs_apply's upsert: declared
    // IMMUTABLE around the STABLE jsonb_build_object it would be a function call per entity.
    let newer = verbose_plan(
        &c,
        "SELECT public.hot_attrs_all_newer(x.j, x.j) \
         FROM (SELECT jsonb_build_object('k', g) AS j FROM generate_series(1, 10) g) x",
    )
    .await;
    assert!(
        !newer.contains("hot_attrs_all_newer") && newer.contains("jsonb_path_exists"),
        "{newer}"
    );
}
