//! The migrations build exactly the seed's objects (catalog queries, not assumptions).

use atlas_testkit::TestDb;
use tokio_postgres::Client;

async fn column_types(db: &Client, table: &str) -> Vec<(String, String)> {
    db.query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = ('public.' || $1)::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        &[&table],
    )
    .await
    .unwrap_or_else(|e| panic!("{table}: {e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The first column of every row of `sql`, as text.
async fn texts(db: &Client, sql: &str) -> Vec<String> {
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn cols(spec: &[(&str, &str)]) -> Vec<(String, String)> {
    spec.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn tables_have_the_seed_columns_and_types() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    assert_eq!(
        column_types(&c, "tenants").await,
        cols(&[
            ("tenant_id", "bigint"),
            ("tenant_name", "character varying(255)"),
            ("created_at", "timestamp with time zone"),
            ("is_active", "boolean"),
        ])
    );
    assert_eq!(
        column_types(&c, "attributes").await,
        cols(&[
            ("attribute_id", "bigint"),
            ("attribute_name", "character varying(255)"),
            ("data_type", "character varying(50)"),
            ("is_indexed", "boolean"),
            ("is_hot", "boolean"),
            ("validation_regex", "text"),
            ("created_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
            ("allow_rounding", "boolean"),
        ])
    );
    assert_eq!(
        column_types(&c, "entities").await,
        cols(&[
            ("entity_id", "bigint"),
            ("tenant_id", "bigint"),
            ("entity_type", "character varying(100)"),
            ("created_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
            ("is_deleted", "boolean"),
            ("version", "integer"),
        ])
    );
    let value_cols = [
        ("entity_id", "bigint"),
        ("tenant_id", "bigint"),
        ("attribute_id", "bigint"),
        ("value", "text"),
        ("value_int", "bigint"),
        ("value_decimal", "numeric(20,5)"),
        ("value_bool", "boolean"),
        ("value_date", "date"),
        ("value_timestamp", "timestamp with time zone"),
        ("ingested_at", "timestamp with time zone"),
    ];
    let mut ts = value_cols.to_vec();
    ts.push(("created_at", "timestamp with time zone"));
    assert_eq!(column_types(&c, "entity_values_ts").await, cols(&ts));
    let mut staging = value_cols.to_vec();
    staging.push(("staged_at", "timestamp with time zone"));
    assert_eq!(
        column_types(&c, "entity_values_ingest").await,
        cols(&staging)
    );
    assert_eq!(
        column_types(&c, "entity_jsonb").await,
        cols(&[
            ("entity_id", "bigint"),
            ("tenant_id", "bigint"),
            ("hot_attrs", "jsonb"),
            ("hot_attrs_at", "jsonb"),
            ("cold_attrs", "jsonb"),
            ("updated_at", "timestamp with time zone"),
            // Internal to the projection, not published.
            ("hot_attrs_newest", "bigint"),
        ])
    );
    assert_eq!(
        column_types(&c, "replication_heartbeat").await,
        cols(&[
            ("id", "integer"),
            ("timestamp", "timestamp with time zone"),
            ("source", "character varying(50)"),
        ])
    );
    assert_eq!(
        column_types(&c, "mv_entity_attribute_stats").await,
        cols(&[
            ("tenant_id", "bigint"),
            ("attribute_id", "bigint"),
            ("attribute_name", "character varying(255)"),
            ("distinct_entities", "bigint"),
            ("total_values", "bigint"),
            ("oldest", "timestamp with time zone"),
            ("newest", "timestamp with time zone"),
        ])
    );
    let kind: String = c
        .query_one("SELECT relkind::text FROM pg_class WHERE oid = 'public.mv_entity_attribute_stats'::regclass", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        kind, "m",
        "mv_entity_attribute_stats is a materialized view"
    );
}

#[tokio::test]
async fn primary_keys_are_the_seeds() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    for (table, pk) in [
        ("tenants", "PRIMARY KEY (tenant_id)"),
        ("attributes", "PRIMARY KEY (attribute_id)"),
        ("entities", "PRIMARY KEY (entity_id, tenant_id)"),
        (
            "entity_values_ts",
            "PRIMARY KEY (tenant_id, entity_id, attribute_id, ingested_at)",
        ),
        ("entity_jsonb", "PRIMARY KEY (entity_id, tenant_id)"),
        ("replication_heartbeat", "PRIMARY KEY (id)"),
    ] {
        let def: String = c
            .query_one(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = ('public.' || $1)::regclass AND contype = 'p'",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"))
            .get(0);
        assert_eq!(def, pk, "{table}");
    }
    let check: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.attributes'::regclass AND contype = 'c'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    for t in [
        "string",
        "integer",
        "decimal",
        "boolean",
        "date",
        "timestamp",
        "json",
    ] {
        assert!(
            check.contains(&format!("'{t}'")),
            "data_type CHECK lacks {t}: {check}"
        );
    }
}

#[tokio::test]
async fn partitioning_matches_the_seed() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    let strategy = |t: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT pg_get_partkeydef(('public.' || $1)::regclass)",
                &[&t],
            )
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .get::<_, String>(0)
        }
    };
    assert_eq!(strategy("entities").await, "RANGE (entity_id)");
    assert_eq!(strategy("entity_values_ts").await, "RANGE (ingested_at)");
    assert_eq!(strategy("entity_jsonb").await, "HASH (entity_id)");

    let bounds = |t: &'static str| {
        let c = &c;
        async move {
            c.query(
                "SELECT p.relname::text, pg_get_expr(p.relpartbound, p.oid) FROM pg_inherits i \
                 JOIN pg_class p ON p.oid = i.inhrelid WHERE i.inhparent = ('public.' || $1)::regclass ORDER BY 1",
                &[&t],
            )
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
        }
    };

    let jsonb = bounds("entity_jsonb").await;
    assert_eq!(jsonb.len(), 100);
    // Half of each projection page stays free for the row's next (HOT) version.
    let packed = texts(
        &c,
        "SELECT p.relname::text FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid \
             WHERE i.inhparent = 'public.entity_jsonb'::regclass \
               AND NOT coalesce('fillfactor=50' = ANY (p.reloptions), false) ORDER BY 1",
    )
    .await;
    assert!(packed.is_empty(), "without fillfactor 50: {packed:?}");
    for r in 0..100 {
        let name = format!("entity_jsonb_p{r}");
        let bound = format!("FOR VALUES WITH (modulus 100, remainder {r})");
        assert!(
            jsonb.contains(&(name.clone(), bound)),
            "{name} missing or wrong"
        );
    }

    // entities: 1 M ids per partition, at least one partition beyond the sequence.
    let entities = bounds("entities").await;
    assert!(entities.len() >= 2, "{entities:?}");
    assert!(entities.contains(&(
        "entities_p0".into(),
        "FOR VALUES FROM ('0') TO ('1000000')".into()
    )));
    assert!(entities.contains(&(
        "entities_p1".into(),
        "FOR VALUES FROM ('1000000') TO ('2000000')".into()
    )));
    let covered: bool = c
        .query_one(
            "SELECT (SELECT last_value FROM entities_entity_id_seq) / 1000000 + 1 < $1",
            &[&i64::try_from(entities.len()).unwrap_or(0)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(
        covered,
        "entities partitions must run ahead of the id sequence"
    );

    // entity_values_ts: the current month and at least 2 ahead, UTC bounds on the 1st.
    let ts = bounds("entity_values_ts").await;
    let expected: Vec<(String, String)> = c
        .query(
            "SELECT 'entity_values_' || to_char(m, 'YYYY_MM'), \
                    format('FOR VALUES FROM (''%s 00:00:00+00'') TO (''%s 00:00:00+00'')', \
                           to_char(m, 'YYYY-MM-DD'), to_char(m + interval '1 month', 'YYYY-MM-DD')) \
             FROM generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'), \
                                  date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months', interval '1 month') m",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(expected.len(), 3);
    // The test stack runs with timezone UTC, so the bound text is the UTC instant.
    for e in &expected {
        assert!(ts.contains(e), "missing {e:?} in {ts:?}");
    }
    let no_default: bool = c
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partdefid <> 0 AND partrelid IN \
             ('public.entities'::regclass, 'public.entity_values_ts'::regclass, 'public.entity_jsonb'::regclass))",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(
        no_default,
        "a default partition would block creating future partitions"
    );
}

#[tokio::test]
async fn indexes_have_the_seed_methods_columns_and_predicates() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    let rows = c
        .query(
            "SELECT i.relname::text, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = 'public' AND t.relkind IN ('r', 'p', 'm') AND NOT t.relispartition",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let defs: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expect = [
        (
            "idx_attributes_name",
            "CREATE UNIQUE INDEX idx_attributes_name ON public.attributes USING btree (attribute_name)",
        ),
        (
            "idx_attributes_hot",
            "CREATE INDEX idx_attributes_hot ON public.attributes USING btree (attribute_id) WHERE (is_hot = true)",
        ),
        (
            "idx_entities_tenant",
            "CREATE INDEX idx_entities_tenant ON ONLY public.entities USING btree (tenant_id, entity_id)",
        ),
        (
            "idx_entities_type",
            "CREATE INDEX idx_entities_type ON ONLY public.entities USING btree (entity_type, tenant_id)",
        ),
        (
            "idx_entities_updated",
            "CREATE INDEX idx_entities_updated ON ONLY public.entities USING btree (updated_at) WHERE (is_deleted = false)",
        ),
        (
            "idx_entity_values_ts_brin",
            "CREATE INDEX idx_entity_values_ts_brin ON ONLY public.entity_values_ts USING brin (ingested_at) WITH (autosummarize='on')",
        ),
        (
            "idx_entity_values_ts_attr_time",
            "CREATE INDEX idx_entity_values_ts_attr_time ON ONLY public.entity_values_ts USING btree (tenant_id, attribute_id, ingested_at)",
        ),
        (
            "idx_entity_jsonb_hot_attrs",
            "CREATE INDEX idx_entity_jsonb_hot_attrs ON ONLY public.entity_jsonb USING gin (hot_attrs)",
        ),
        (
            "idx_entity_jsonb_tenant",
            "CREATE INDEX idx_entity_jsonb_tenant ON ONLY public.entity_jsonb USING btree (tenant_id)",
        ),
        (
            "idx_mv_stats_tenant_attr",
            "CREATE UNIQUE INDEX idx_mv_stats_tenant_attr ON public.mv_entity_attribute_stats USING btree (tenant_id, attribute_id)",
        ),
        (
            "idx_mv_stats_tenant",
            "CREATE INDEX idx_mv_stats_tenant ON public.mv_entity_attribute_stats USING btree (tenant_id)",
        ),
    ];
    for (name, def) in expect {
        assert_eq!(defs.get(name).map(String::as_str), Some(def), "{name}");
    }
    // The GIN uses the default jsonb_ops (serves @> ? ?| ?&), not jsonb_path_ops.
    let opclass: String = c
        .query_one(
            "SELECT o.opcname::text FROM pg_index x JOIN pg_opclass o ON o.oid = x.indclass[0] \
             WHERE x.indexrelid = 'public.idx_entity_jsonb_hot_attrs'::regclass",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(opclass, "jsonb_ops");
    // Staging has no index at all; partitioned indexes reach every partition.
    let staging_indexes: i64 = c
        .query_one("SELECT count(*) FROM pg_index WHERE indrelid = 'public.entity_values_ingest'::regclass", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(staging_indexes, 0);
    let gin_partitions: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.idx_entity_jsonb_hot_attrs'::regclass",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(gin_partitions, 100);
}

#[tokio::test]
async fn staging_is_unlogged_and_tenant_tables_force_rls() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    let persistence = |t: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT relpersistence::text FROM pg_class WHERE oid = ('public.' || $1)::regclass",
                &[&t],
            )
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .get::<_, String>(0)
        }
    };
    assert_eq!(persistence("entity_values_ingest").await, "u");
    assert_eq!(persistence("entity_values_ts").await, "p");

    for table in [
        "entities",
        "entity_values_ts",
        "entity_jsonb",
        "entity_values_dead_letter",
    ] {
        let row = c
            .query_one(
                "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = ('public.' || $1)::regclass",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert!(row.get::<_, bool>(0), "{table}: RLS not enabled");
        assert!(row.get::<_, bool>(1), "{table}: RLS not forced");
        assert_eq!(row.get::<_, String>(2), "atlas_owner", "{table}: owner");
        let policies = c
            .query(
                "SELECT cmd::text, qual, with_check FROM pg_policies WHERE schemaname = 'public' AND tablename = $1",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policies.len(), 1, "{table}");
        let expr = "(tenant_id = (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::bigint)";
        assert_eq!(policies[0].get::<_, String>(0), "ALL");
        assert_eq!(
            policies[0].get::<_, Option<String>>(1).as_deref(),
            Some(expr),
            "{table} USING"
        );
        assert_eq!(
            policies[0].get::<_, Option<String>>(2).as_deref(),
            Some(expr),
            "{table} WITH CHECK"
        );
    }
}

#[tokio::test]
async fn roles_own_what_they_should_and_no_more() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    let row = c
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'atlas_app'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && row.get::<_, bool>(2));
    let owner = c
        .query_one(
            "SELECT rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname = 'atlas_owner'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!owner.get::<_, bool>(0), "owner must be NOLOGIN");
    assert!(
        !owner.get::<_, bool>(1),
        "owner must not bypass RLS (FORCE binds it)"
    );

    let app_owns: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = 'atlas_app'::regrole) \
                  + (SELECT count(*) FROM pg_proc WHERE proowner = 'atlas_app'::regrole)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(app_owns, 0, "atlas_app owns nothing");
    let not_owner = texts(
        &c,
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m','S','i','I') \
               AND pg_get_userbyid(c.relowner) NOT IN ('atlas_owner', 'atlas_definer')",
    )
    .await;
    assert!(
        not_owner.is_empty(),
        "objects not owned by the owner roles: {not_owner:?}"
    );

    // The app role is granted parent tables only, never a partition.
    let partition_grants = texts(
        &c,
        "SELECT c.relname::text FROM pg_class c WHERE c.relispartition \
               AND has_table_privilege('atlas_app', c.oid, 'SELECT,INSERT,UPDATE,DELETE')",
    )
    .await;
    assert!(partition_grants.is_empty(), "{partition_grants:?}");
    let mv: bool = c
        .query_one(
            "SELECT has_table_privilege('atlas_app', 'public.mv_entity_attribute_stats', 'SELECT')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(
        !mv,
        "the MV has no RLS: the app reads it only through tenant_attribute_stats"
    );
}

#[tokio::test]
async fn security_definer_functions_are_hardened() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    let rows = c
        .query(
            "SELECT p.proname::text, pg_get_userbyid(p.proowner)::text, p.proconfig, \
                    has_function_privilege('public', p.oid, 'EXECUTE') \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'public' AND p.prosecdef ORDER BY 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        [
            "drop_oldest_ts_partition_before",
            "ensure_entity_partitions",
            "ensure_ts_partitions",
            "ensure_ts_partitions_from",
            "ensure_ts_partitions_until",
            "entities_known",
            "hot_attr_backfill",
            "hot_attr_clear",
            "ingest_rows",
            "ingest_rows",
            "refresh_attribute_stats",
            "replication_replay_lag",
            "retention_purge",
            "rollup_apply",
            "rollup_backlog",
            "rollup_claim",
            "rollup_seal",
            "search_entities",
            "search_entities_plan",
            "stage_flush",
            "stage_flush_own",
            "staging_stats",
            "summarize_closed_brin",
            "tenant_dead_letters",
            "tenant_entity_counts",
            "tenant_stored_values",
            "upsert_hot_attrs"
        ]
    );
    for r in &rows {
        let name: String = r.get(0);
        let owner: String = r.get(1);
        let config: Vec<String> = r.get::<_, Option<Vec<String>>>(2).unwrap_or_default();
        let public_exec: bool = r.get(3);
        assert!(
            config.contains(&"search_path=pg_catalog, public, pg_temp".to_owned()),
            "{name}: search_path not pinned: {config:?}"
        );
        assert!(!public_exec, "{name} is executable by PUBLIC");
        // Partition DDL needs the tables' owner; everything else crosses tenants.
        let expected_owner = if name.starts_with("ensure_")
            || name == "drop_oldest_ts_partition_before"
            || name == "summarize_closed_brin"
        {
            "atlas_owner"
        } else {
            "atlas_definer"
        };
        assert_eq!(owner, expected_owner, "{name}");
    }
    // Nothing in the schema is executable by PUBLIC.
    let public_funcs = texts(
        &c,
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'public' AND has_function_privilege('public', p.oid, 'EXECUTE')",
    )
    .await;
    assert!(public_funcs.is_empty(), "{public_funcs:?}");
}

#[tokio::test]
async fn publication_covers_the_four_tables_via_partition_root() {
    let db = TestDb::new().await;
    let c = db.admin().await;
    let via_root: bool = c
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = 'eav_cdc'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(via_root);
    let tables = texts(&c, "SELECT c.relname::text FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_class c ON c.oid = pr.prrelid WHERE p.pubname = 'eav_cdc' ORDER BY 1").await;
    assert_eq!(
        tables,
        ["attributes", "entities", "entity_jsonb", "entity_values_ts"]
    );
    // Consumers see the projection's columns, not its internal newest time.
    let published = texts(
        &c,
        "SELECT array_to_string(attnames, ',') FROM pg_publication_tables \
         WHERE pubname = 'eav_cdc' AND tablename = 'entity_jsonb'",
    )
    .await;
    assert_eq!(
        published,
        ["entity_id,tenant_id,hot_attrs,hot_attrs_at,cold_attrs,updated_at"]
    );
    let wal_level: String = c
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(wal_level, "logical");
    let keep: String = c
        .query_one("SHOW max_slot_wal_keep_size", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_ne!(
        keep, "-1",
        "a stopped consumer must not retain unbounded WAL"
    );
}

#[tokio::test]
async fn partition_functions_premake_ahead_in_utc_and_are_idempotent() {
    let db = TestDb::new().await;
    let app = db.app().await;
    let created = texts(
        &app,
        "SELECT ensure_ts_partitions('2031-05-31 23:30:00-05', 1)",
    )
    .await;
    // 23:30 at UTC-5 is June 1st 04:30 UTC: June and July, not May.
    assert_eq!(created, ["entity_values_2031_06", "entity_values_2031_07"]);
    let again = app
        .query(
            "SELECT ensure_ts_partitions('2031-06-15 00:00:00+00', 1)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.is_empty(), "second call creates nothing");
    let bad = app
        .query("SELECT ensure_ts_partitions(now(), -1)", &[])
        .await;
    assert!(bad.is_err(), "a negative horizon is refused");

    // Entities: moving the sequence past a boundary and asking again premakes the next one.
    let admin = db.admin().await;
    admin
        .execute("SELECT setval('entities_entity_id_seq', 2500000)", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let made = texts(&app, "SELECT ensure_entity_partitions(1)").await;
    assert_eq!(made, ["entities_p2", "entities_p3"]);
}

#[tokio::test]
async fn the_flushes_plan_every_call_for_its_batch() {
    // A generic plan estimates every unnest() at 10 rows and turned flush_moved's
    // classification into a nested loop over the batch.
    let db = TestDb::new().await;
    let c = db.admin().await;
    for name in [
        "public.flush_moved(public.entity_values_ingest[])",
        "public.ingest_rows(public.entity_values_ingest[])",
    ] {
        let config: Vec<String> = c
            .query_one(
                "SELECT coalesce(p.proconfig, '{}') FROM pg_proc p WHERE p.oid = $1::text::regprocedure",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .get(0);
        assert!(
            config.contains(&"plan_cache_mode=force_custom_plan".to_owned()),
            "{name}: {config:?}"
        );
    }
}
