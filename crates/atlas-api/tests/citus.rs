//! Atlas on Citus: the distributed schema, where each tenant's rows live, and tenant isolation
//! on every node. These run only against the Citus stack (`ATLAS_TEST_CITUS=1`, the second
//! phase of `scripts/test`, which also runs the isolation, ingest, read and search modules of
//! this binary there); the single-node phase skips `citus::`.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::json;
use tokio_postgres::Client;

use crate::support::{Server, call};

/// Every distributed table that holds tenant rows under a tenant policy.
const RLS_TABLES: [&str; 4] = [
    "entities",
    "entity_values_ts",
    "entity_jsonb",
    "entity_values_dead_letter",
];

fn require_citus() {
    assert!(
        atlas_testkit::citus(),
        "the citus:: tests need the Citus stack: run them with ATLAS_TEST_CITUS=1"
    );
}

async fn strings(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    atlas_testkit::column(c, sql, params).await
}

/// The worker port each shard of `table` is placed on, by shard name.
async fn shards(c: &Client, table: &str) -> Vec<(String, i32)> {
    c.query(
        "SELECT shard_name::text, nodeport FROM citus_shards WHERE table_name = $1::text::regclass \
         ORDER BY shardid",
        &[&table],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The port of the worker holding `tenant`'s shard (of every co-located table).
async fn worker_of(c: &Client, tenant: i64) -> i32 {
    c.query_one(
        "SELECT nodeport FROM citus_shards \
         WHERE shardid = get_shard_id_for_distribution_column('public.entities', $1::bigint)",
        &[&tenant],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .get(0)
}

#[tokio::test]
async fn citus_schema_is_distributed_by_tenant_and_colocated() {
    require_citus();
    let server = Server::start().await;
    let c = server.db.admin().await;

    // Distribution of every table (partitions aside): reference lookups, tenant tables by
    // tenant_id in one co-location group; staging, the stats MV and the bookkeeping tables stay
    // local to the coordinator (absent here).
    let rows = c
        .query(
            "SELECT p.logicalrelid::regclass::text, p.partmethod::text, \
                    coalesce(column_to_column_name(p.logicalrelid, p.partkey), ''), p.colocationid \
             FROM pg_dist_partition p \
             WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = p.logicalrelid) \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want = |t: &str, m: &str, k: &str| (t.to_owned(), m.to_owned(), k.to_owned());
    assert_eq!(
        got,
        [
            want("api_keys", "h", "tenant_id"),
            want("attributes", "n", ""),
            want("entities", "h", "tenant_id"),
            want("entity_jsonb", "h", "tenant_id"),
            want("entity_values_dead_letter", "h", "tenant_id"),
            want("entity_values_ts", "h", "tenant_id"),
            want("tenants", "n", ""),
        ]
    );
    let groups: BTreeSet<i32> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) == "h")
        .map(|r| r.get(3))
        .collect();
    assert_eq!(
        groups.len(),
        1,
        "tenant tables are not co-located: {groups:?}"
    );

    // Monthly partitions of the series are distributed in the same group; the projection is
    // one table (its hash partitions are gone: the shards split it).
    let partitions = c
        .query_one(
            "SELECT count(*), count(DISTINCT p.colocationid) FROM pg_inherits i \
             JOIN pg_dist_partition p ON p.logicalrelid = i.inhrelid \
             WHERE i.inhparent = 'public.entity_values_ts'::regclass",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        partitions.get::<_, i64>(0) >= 3,
        "monthly partitions not distributed"
    );
    assert_eq!(partitions.get::<_, i64>(1), 1);
    let kind = strings(
        &c,
        "SELECT relkind::text FROM pg_class WHERE oid = 'public.entity_jsonb'::regclass",
        &[],
    )
    .await;
    assert_eq!(kind, ["r"]);

    // Shards on both workers.
    let ports: BTreeSet<i32> = shards(&c, "entities")
        .await
        .into_iter()
        .map(|s| s.1)
        .collect();
    let workers: BTreeSet<i32> = server
        .db
        .worker_ports()
        .into_iter()
        .map(i32::from)
        .collect();
    assert_eq!(ports, workers);

    // Every primary key and unique index of a distributed table holds tenant_id.
    let unique = c
        .query(
            "SELECT i.indexrelid::regclass::text, \
                    EXISTS (SELECT 1 FROM unnest(i.indkey) k JOIN pg_attribute a \
                            ON a.attrelid = i.indrelid AND a.attnum = k WHERE a.attname = 'tenant_id') \
             FROM pg_index i JOIN pg_dist_partition p ON p.logicalrelid = i.indrelid \
             WHERE p.partmethod = 'h' AND i.indisunique \
               AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indrelid)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        unique.len() >= 6,
        "too few unique indexes found: {}",
        unique.len()
    );
    for r in &unique {
        assert!(
            r.get::<_, bool>(1),
            "{} lacks tenant_id",
            r.get::<_, String>(0)
        );
    }
}

#[tokio::test]
async fn citus_shards_are_row_secured_on_every_worker_and_the_app_role_is_plain() {
    require_citus();
    let server = Server::start().await;
    let c = server.db.admin().await;
    for port in server.db.worker_ports() {
        let w = server.db.admin_at(port).await;
        let role = w
            .query_one(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'atlas_app'",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (role.get::<_, bool>(0), role.get::<_, bool>(1)),
            (false, false),
            "atlas_app on worker {port}"
        );
        w.batch_execute("SET citus.override_table_visibility = off")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut checked = 0;
        for table in RLS_TABLES {
            for (shard, at) in shards(&c, table).await {
                if at != i32::from(port) {
                    continue;
                }
                let r = w
                    .query_one(
                        "SELECT c.relrowsecurity, c.relforcerowsecurity, \
                                (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) \
                         FROM pg_class c WHERE c.relname = $1",
                        &[&shard],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{shard} on {port}: {e}"));
                assert_eq!(
                    (r.get::<_, bool>(0), r.get::<_, bool>(1), r.get::<_, i64>(2)),
                    (true, true, 1),
                    "{shard} on worker {port}: RLS, FORCE, policy"
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * 4, "only {checked} shards on worker {port}");
    }
}

/// Two tenants whose shards are on different workers, each with entities and values written
/// through the API: `(tenant, key, entities, worker port)` for each.
async fn two_tenants_on_two_workers(server: &Server) -> Vec<(i64, String, Vec<i64>, i32)> {
    server
        .define(json!({"attribute_name": "temperature", "data_type": "decimal", "is_hot": true}))
        .await;
    let c = server.db.admin().await;
    let mut by_worker: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    for i in 0..40 {
        let (tenant, key) = server.tenant(&format!("t{i}")).await;
        by_worker
            .entry(worker_of(&c, tenant).await)
            .or_insert((tenant, key));
        if by_worker.len() == 2 {
            break;
        }
    }
    assert_eq!(by_worker.len(), 2, "no two tenants on two workers in 40");
    let mut out = Vec::new();
    for (n, (port, (tenant, key))) in by_worker.into_iter().enumerate() {
        let ids = server.entities(&key, 2 + n).await;
        let t = chrono::Utc::now().timestamp_millis() - 60_000;
        for (k, e) in ids.iter().enumerate() {
            let (s, b) = call(server.as_tenant(&key, Method::POST, "/v1/telemetry").json(
                &json!({"entity_id": e, "ts": t + i64::try_from(k).unwrap_or(0),
                        "values": {"temperature": 20.5}}),
            ))
            .await;
            assert_eq!(s, 200, "{b}");
        }
        out.push((tenant, key, ids, port));
    }
    out
}

#[tokio::test]
async fn citus_rows_live_on_the_worker_their_shard_names() {
    require_citus();
    let server = Server::start().await;
    let tenants = two_tenants_on_two_workers(&server).await;
    let c = server.db.admin().await;
    for port in server.db.worker_ports() {
        let w = server.db.admin_at(port).await;
        w.batch_execute("SET citus.override_table_visibility = off")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (tenant, _, ids, home) in &tenants {
            for table in ["entities", "entity_values_ts", "entity_jsonb"] {
                let mut here = 0;
                for (shard, at) in shards(&c, table).await {
                    if at == i32::from(port) {
                        // A shard name from the catalog, quoted as an identifier.
                        let sql = format!(
                            "SELECT count(*) FROM public.\"{}\" WHERE tenant_id = $1",
                            shard.replace('"', "\"\"")
                        );
                        here += atlas_testkit::scalar(&w, &sql, &[tenant]).await;
                    }
                }
                let want = if *home == i32::from(port) {
                    i64::try_from(ids.len()).unwrap_or(0)
                } else {
                    0
                };
                assert_eq!(
                    here, want,
                    "tenant {tenant}'s {table} rows on worker {port}"
                );
            }
        }
    }
}

#[tokio::test]
async fn citus_app_role_sees_only_its_tenant_on_the_coordinator_and_on_each_worker() {
    require_citus();
    let server = Server::start().await;
    let tenants = two_tenants_on_two_workers(&server).await;
    let (a, _, a_ids, a_home) = &tenants[0];
    let (b, _, _, _) = &tenants[1];

    // The coordinator, as the app role: no tenant, no rows from any shard.
    let mut app = server.db.app().await;
    for table in ["entities", "entity_values_ts", "entity_jsonb"] {
        let n =
            atlas_testkit::scalar(&app, &format!("SELECT count(*) FROM public.{table}"), &[]).await;
        assert_eq!(n, 0, "{table} without a tenant");
    }
    // Dead letters are not the app role's to read at all.
    let denied = app
        .query("SELECT 1 FROM public.entity_values_dead_letter", &[])
        .await
        .err()
        .unwrap_or_else(|| panic!("the app role read dead letters"));
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{denied}"
    );
    // set_config() does not reach the workers: still nothing (fails closed, never open).
    app.execute(
        "SELECT set_config('app.current_tenant_id', $1, false)",
        &[&a.to_string()],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        atlas_testkit::scalar(&app, "SELECT count(*) FROM public.entities", &[]).await,
        0
    );
    app.execute("SELECT set_config('app.current_tenant_id', '', false)", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // SET LOCAL does: tenant A's rows, none of B's even when asked for by id.
    let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    tx.batch_execute(&format!("SET LOCAL app.current_tenant_id = '{a}'"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen: Vec<i64> =
        atlas_testkit::column(&tx, "SELECT entity_id FROM public.entities ORDER BY 1", &[]).await;
    assert_eq!(&seen, a_ids);
    let of_b = atlas_testkit::scalar(
        &tx,
        "SELECT count(*) FROM public.entity_values_ts WHERE tenant_id = $1",
        &[b],
    )
    .await;
    assert_eq!(of_b, 0);
    // Writing a row for B under A's context is refused by the shard's policy.
    let err = tx
        .execute(
            "INSERT INTO public.entities (tenant_id, entity_type) VALUES ($1, 'sensor')",
            &[b],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("tenant A wrote a row of tenant B"));
    let message = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("row-level security"), "{err:?}");
    drop(tx);

    // Directly on each worker, as the app role, on the shard tables themselves.
    let c = server.db.admin().await;
    for port in server.db.worker_ports() {
        let mut w = server.db.app_at(port).await;
        w.batch_execute("SET citus.override_table_visibility = off")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mine: Vec<String> = shards(&c, "entities")
            .await
            .into_iter()
            .filter(|s| s.1 == i32::from(port))
            .map(|s| s.0)
            .collect();
        assert!(!mine.is_empty());
        let count_all = |names: &[String]| {
            names
                .iter()
                .map(|s| {
                    format!(
                        "SELECT count(*) AS n FROM public.\"{}\"",
                        s.replace('"', "\"\"")
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        };
        let total = format!(
            "SELECT coalesce(sum(n), 0)::bigint FROM ({}) x",
            count_all(&mine)
        );
        assert_eq!(
            atlas_testkit::scalar(&w, &total, &[]).await,
            0,
            "worker {port} without a tenant"
        );
        let tx = w.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        tx.batch_execute(&format!("SET LOCAL app.current_tenant_id = '{a}'"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let want = if *a_home == i32::from(port) {
            i64::try_from(a_ids.len()).unwrap_or(0)
        } else {
            0
        };
        assert_eq!(
            atlas_testkit::scalar(&tx, &total, &[]).await,
            want,
            "worker {port}, tenant A"
        );
        tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
