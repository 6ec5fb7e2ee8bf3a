//! Atlas on Citus: the distributed schema, where each tenant's rows live, tenant isolation on
//! every node, and the faults: a worker added and shards rebalanced under ingest, a worker
//! killed. These run only against the Citus stack (`ATLAS_TEST_CITUS=1`, the second phase of
//! `scripts/test`, which also runs the isolation, ingest, read and search modules of this
//! binary there); the single-node phase skips `citus::`. The `citus_fault_` tests stop or add
//! nodes of the shared stack: they run on their own, one at a time, after the others.

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

    // Distribution of every table (partitions aside): reference lookups, tenant tables (the
    // rollups too) by tenant_id in one co-location group; staging, the stats MV, the rollup
    // marks, tenant limits and the bookkeeping tables stay local to the coordinator (absent
    // here).
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
            want("rollup_1d", "h", "tenant_id"),
            want("rollup_1h", "h", "tenant_id"),
            want("rollup_1m", "h", "tenant_id"),
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
    let kind: Vec<String> = atlas_testkit::column(
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

/// Acknowledged readings `(tenant, entity, ts ms)`.
type Acked = Vec<(i64, i64, i64)>;

/// Writes one durable reading per entity per round until `stop`, for every tenant; returns
/// what was acknowledged and every status that was not 200.
async fn write_until(
    server: &Server,
    fleet: &[(i64, String, Vec<i64>)],
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Acked, Vec<(i64, u16)>) {
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let base = chrono::Utc::now().timestamp_millis() - 300_000;
    let mut round = 0_i64;
    while !*stop.borrow() {
        for (tenant, key, ids) in fleet {
            let body: Vec<serde_json::Value> = ids
                .iter()
                .map(|e| json!({"entity_id": e, "ts": base + round, "values": {"temperature": 20.5}}))
                .collect();
            let (s, _) = call(
                server
                    .as_tenant(key, Method::POST, "/v1/telemetry")
                    .json(&body),
            )
            .await;
            if s == 200 {
                acked.extend(ids.iter().map(|e| (*tenant, *e, base + round)));
            } else {
                refused.push((*tenant, s));
            }
        }
        round += 1;
    }
    (acked, refused)
}

/// Every acknowledged reading is stored exactly once, and nothing else for these tenants.
async fn assert_stored_once(server: &Server, acked: &Acked) {
    let c = server.db.admin().await;
    let tenants: Vec<i64> = acked.iter().map(|a| a.0).collect();
    let entities: Vec<i64> = acked.iter().map(|a| a.1).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = acked
        .iter()
        .map(|a| chrono::DateTime::from_timestamp_millis(a.2).unwrap_or_default())
        .collect();
    // Keys are distinct and (with one attribute) the primary key holds at most one row per
    // key: every key matched, and nothing else stored for these tenants, is "exactly once".
    let matched = atlas_testkit::scalar(
        &c,
        "SELECT count(*) FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS k (t, e, at) \
         JOIN public.entity_values_ts s \
           ON s.tenant_id = k.t AND s.entity_id = k.e AND s.ingested_at = k.at",
        &[&tenants, &entities, &times],
    )
    .await;
    assert_eq!(
        matched,
        i64::try_from(acked.len()).unwrap_or(0),
        "acknowledged readings missing"
    );
    let mut distinct = tenants.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let stored = atlas_testkit::scalar(
        &c,
        "SELECT count(*) FROM public.entity_values_ts WHERE tenant_id = ANY ($1)",
        &[&distinct],
    )
    .await;
    assert_eq!(
        stored,
        i64::try_from(acked.len()).unwrap_or(0),
        "stored beyond the acknowledged"
    );
}

#[tokio::test]
async fn citus_fault_adding_a_worker_and_rebalancing_under_ingest_loses_and_duplicates_nothing() {
    require_citus();
    const EXTRA: u16 = 61447;
    let server = Server::start().await;
    server
        .define(json!({"attribute_name": "temperature", "data_type": "decimal", "is_hot": true}))
        .await;
    let mut fleet = Vec::new();
    for i in 0..6 {
        let (tenant, key) = server.tenant(&format!("t{i}")).await;
        let ids = server.entities(&key, 2).await;
        fleet.push((tenant, key, ids));
    }

    // A third worker with this database, Citus in it, not yet in the cluster.
    let stack = atlas_testkit::cluster().stack.clone();
    tokio::task::spawn_blocking(move || stack.up_extra_worker(EXTRA))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("extra worker: {e}"));
    let node = atlas_testkit::connect(
        &atlas_testkit::cluster()
            .stack
            .admin_url_at(EXTRA, "postgres"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (stack, name) = (
        atlas_testkit::cluster().stack.clone(),
        server.db.name.clone(),
    );
    tokio::task::spawn_blocking(move || stack.citus_worker_database(EXTRA, &name))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("the database on the extra worker: {e}"));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let fleet: Vec<(i64, String, Vec<i64>)> = fleet.clone();
        let server_ref = &server;
        async move { write_until(server_ref, &fleet, stop_rx).await }
    };
    // Reads all along: each tenant's first entity's latest value.
    let (read_stop_tx, read_stop_rx) = tokio::sync::watch::channel(false);
    let reader = {
        let fleet = fleet.clone();
        let server_ref = &server;
        async move {
            let mut bad = Vec::new();
            let mut n = 0;
            while !*read_stop_rx.borrow() {
                for (_, key, ids) in &fleet {
                    let (s, b) = call(server_ref.as_tenant(
                        key,
                        Method::GET,
                        &format!("/v1/entities/{}/latest?attribute=temperature", ids[0]),
                    ))
                    .await;
                    n += 1;
                    if s >= 500 {
                        bad.push((s, b));
                    }
                }
            }
            (n, bad)
        }
    };
    let grow = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let admin = server.db.admin().await;
        atlas_store::cluster::citus_add_worker(&admin, "127.0.0.1", i32::from(EXTRA))
            .await
            .unwrap_or_else(|e| panic!("add worker: {e:?}"));
        let moved = atlas_store::cluster::citus_rebalance(&admin)
            .await
            .unwrap_or_else(|e| panic!("rebalance: {e:?}"));
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let _ = stop_tx.send(true);
        let _ = read_stop_tx.send(true);
        moved
    };
    let ((acked, refused), (reads, bad_reads), moved) = tokio::join!(writer, reader, grow);

    assert!(moved > 0, "the rebalance planned no move");
    let c = server.db.admin().await;
    let on_new = atlas_testkit::scalar(
        &c,
        "SELECT count(*) FROM citus_shards WHERE nodeport = $1 AND citus_table_type = 'distributed'",
        &[&i32::from(EXTRA)],
    )
    .await;
    assert!(on_new > 0, "no shard moved to the new worker");
    assert!(
        reads > 0 && bad_reads.is_empty(),
        "reads failed during the rebalance: {bad_reads:?}"
    );
    assert!(
        refused.is_empty(),
        "writes refused during the rebalance: {refused:?}"
    );
    assert!(acked.len() > 12, "too little ingest ran: {}", acked.len());
    assert_stored_once(&server, &acked).await;

    // The test's database on the extra worker goes with the test.
    let name = server.db.name.clone();
    server.stop().await;
    let drop = node
        .query_one(
            "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
            &[&name],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get::<_, String>(0);
    let _ = node.batch_execute(&drop).await;
}

#[tokio::test]
async fn citus_fault_a_killed_worker_fails_only_its_tenants_and_loses_nothing() {
    require_citus();
    // Durable batches wait 1 s (not 15) for their worker before answering 503.
    let server = Server::configured(atlas_testkit::TestDb::new().await, |c| {
        c.ingest.retry_unavailable = std::time::Duration::from_secs(1);
    })
    .await;
    let tenants = two_tenants_on_two_workers(&server).await;
    let (a, a_key, a_ids, a_port) = tenants[0].clone();
    let (b, b_key, b_ids, _) = tenants[1].clone();
    // What two_tenants_on_two_workers wrote (acknowledged) counts too.
    let mut acked: Acked = Vec::new();
    let before = server.db.admin().await;
    for tenant in [a, b] {
        let rows = before
            .query(
                "SELECT entity_id, (extract(epoch FROM ingested_at) * 1000)::bigint \
                 FROM public.entity_values_ts WHERE tenant_id = $1",
                &[&tenant],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        acked.extend(
            rows.iter()
                .map(|r| (tenant, r.get::<_, i64>(0), r.get::<_, i64>(1))),
        );
    }
    assert_eq!(acked.len(), a_ids.len() + b_ids.len());
    let stack = atlas_testkit::cluster().stack.clone();
    let index = stack
        .spec()
        .workers
        .iter()
        .position(|p| i32::from(*p) == a_port)
        .unwrap_or_else(|| panic!("worker {a_port} is not one of the stack's"));
    let pid = stack
        .worker_pid(index)
        .unwrap_or_else(|| panic!("worker {a_port} has no postmaster.pid"));

    // kill -9 of the worker's postmaster; its backends end when they notice.
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let post = |key: &str, ids: &[i64], ts: i64| {
        let body: Vec<serde_json::Value> = ids
            .iter()
            .map(|e| json!({"entity_id": e, "ts": ts, "values": {"temperature": 21.5}}))
            .collect();
        server
            .as_tenant(key, Method::POST, "/v1/telemetry")
            .json(&body)
    };
    // Newer than what two_tenants_on_two_workers wrote (a minute ago).
    let t = chrono::Utc::now().timestamp_millis() - 30_000;
    // Tenant A (on the dead worker): a clear 503 with Retry-After, for writes and reads.
    let resp = post(&a_key, &a_ids, t)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let (s, _) = call(server.as_tenant(
        &a_key,
        Method::GET,
        &format!("/v1/entities/{}/latest?attribute=temperature", a_ids[0]),
    ))
    .await;
    assert_eq!(s, 503, "tenant A's read while its worker is down");
    // Tenant B (the other worker): unaffected.
    for k in 0..5 {
        let (s, body) = call(post(&b_key, &b_ids, t + k)).await;
        assert_eq!(s, 200, "tenant B's write while A's worker is down: {body}");
        acked.extend(b_ids.iter().map(|e| (b, *e, t + k)));
    }
    let (s, latest) = call(server.as_tenant(
        &b_key,
        Method::GET,
        &format!("/v1/entities/{}/latest?attribute=temperature", b_ids[0]),
    ))
    .await;
    assert_eq!((s, latest["latest"]["ts"].as_i64()), (200, Some(t + 4)));

    // Back up: tenant A is served again and nothing acknowledged is missing.
    let restart = stack.clone();
    tokio::task::spawn_blocking(move || {
        // The killed postmaster's backends may hold its shared memory for a moment.
        for _ in 0..60 {
            if restart.start_worker(index).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("the killed worker did not start again");
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut served = false;
    for k in 10..70 {
        let (s, _) = call(post(&a_key, &a_ids, t + k)).await;
        if s == 200 {
            acked.extend(a_ids.iter().map(|e| (a, *e, t + k)));
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(served, "tenant A is not served after its worker restarted");
    let (s, _) = call(post(&b_key, &b_ids, t + 100)).await;
    assert_eq!(s, 200);
    acked.extend(b_ids.iter().map(|e| (b, *e, t + 100)));
    assert_stored_once(&server, &acked).await;
}

#[tokio::test]
async fn citus_an_isolated_tenant_gets_a_shard_of_its_own_and_keeps_its_rows() {
    require_citus();
    let server = Server::start().await;
    let tenants = two_tenants_on_two_workers(&server).await;
    let (a, a_key, a_ids, _) = &tenants[0];
    let c = server.db.admin().await;
    let count = |tenant: i64| {
        let c = &c;
        async move {
            atlas_testkit::scalar(
                c,
                "SELECT count(*) FROM public.entity_values_ts WHERE tenant_id = $1",
                &[&tenant],
            )
            .await
        }
    };
    let before = (count(*a).await, count(tenants[1].0).await);
    let old_shard = atlas_testkit::scalar(
        &c,
        "SELECT get_shard_id_for_distribution_column('public.entities', $1::bigint)",
        &[a],
    )
    .await;

    let new_shard = atlas_store::cluster::citus_isolate_tenant(&c, *a)
        .await
        .unwrap_or_else(|e| panic!("isolate: {e:?}"));
    assert_ne!(new_shard, old_shard);
    // The new shard's hash range is the tenant's hash alone: no other tenant can land there.
    let span = atlas_testkit::scalar(
        &c,
        "SELECT (shardmaxvalue::bigint - shardminvalue::bigint) FROM pg_dist_shard WHERE shardid = $1",
        &[&new_shard],
    )
    .await;
    assert_eq!(span, 0);
    assert_eq!(
        atlas_testkit::scalar(
            &c,
            "SELECT get_shard_id_for_distribution_column('public.entities', $1::bigint)",
            &[a],
        )
        .await,
        new_shard
    );
    // Nothing lost or moved to the wrong tenant, and the API still serves the tenant.
    assert_eq!((count(*a).await, count(tenants[1].0).await), before);
    let (s, latest) = call(server.as_tenant(
        a_key,
        Method::GET,
        &format!("/v1/entities/{}/latest?attribute=temperature", a_ids[0]),
    ))
    .await;
    assert_eq!(s, 200, "{latest}");
    assert!(latest["latest"]["ts"].is_i64(), "{latest}");
}

#[tokio::test]
async fn citus_cdc_refuses_a_citus_database_naming_why() {
    require_citus();
    let server = Server::start().await;
    let err = atlas_cdc::Source::connect(&server.db.urls.admin_database_url, "atlas_cdc_test")
        .await
        .err()
        .unwrap_or_else(|| panic!("atlas cdc accepted a Citus database"));
    let message = err.to_string();
    assert!(
        message.contains("Citus") && message.contains("worker"),
        "{message}"
    );
    // And no slot was made.
    let slots = server
        .scalar(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'atlas_cdc_test'",
            &[],
        )
        .await;
    assert_eq!(slots, 0);
}
