//! High availability on a real Patroni + etcd cluster of two PostgreSQL nodes with a
//! synchronous standby: under sustained durable ingest through `atlas serve`, SIGKILL of the
//! primary's postmaster, a planned switchover and a partition of the primary from etcd each
//! move the primary, and every acknowledged value is on the new primary exactly once.
//!
//! One test walks the three failures in turn on one cluster (bringing a cluster up costs
//! more than each failure), each section naming what it checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atlas_testkit::proxy::Proxy;
use atlas_testkit::{HaSpec, HaStack, connect};

use crate::cdc;
use crate::faults::{Outcome, assert_every_ack_stored_once, drive, stored};
use crate::support::{Serve, fleet, migrated_database};

/// Ports of the proxies between each node's Patroni and etcd (cut to partition a node).
const ETCD_PROXIES: [u16; 2] = [61483, 61484];

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Statuses of reads made during a failure, by consistency.
#[derive(Debug, Default)]
struct Reads {
    eventual: BTreeMap<u16, usize>,
    strong: BTreeMap<u16, usize>,
    /// Strong reads answered 503 without a Retry-After header.
    strong_503_without_retry_after: usize,
}

/// Reads one entity's latest values, eventual and strong, every 50 ms until `stop`.
async fn read_during(base: String, key: String, entity: i64, stop: Arc<AtomicBool>) -> Reads {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("{base}/v1/entities/{entity}/latest?attribute=priority");
    let mut reads = Reads::default();
    while !stop.load(Ordering::SeqCst) {
        for consistency in ["eventual", "strong"] {
            let r = http
                .get(&url)
                .bearer_auth(&key)
                .header("X-Atlas-Consistency", consistency)
                .send()
                .await;
            let status = r.as_ref().map_or(0, |r| r.status().as_u16());
            if consistency == "eventual" {
                *reads.eventual.entry(status).or_default() += 1;
            } else {
                *reads.strong.entry(status).or_default() += 1;
                if status == 503
                    && r.as_ref()
                        .is_ok_and(|r| !r.headers().contains_key("retry-after"))
                {
                    reads.strong_503_without_retry_after += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reads
}

/// Drives durable ingest (and reads) through `serve`, runs `failure` once 100 values are
/// acknowledged, goes on until 100 more are acknowledged after it (or 90 s), and returns
/// what the clients saw.
async fn under_load<F, Fut>(
    serve: &Serve,
    key: &str,
    entities: &[i64],
    failure: F,
) -> (Outcome, Reads)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let over = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let driver = tokio::spawn(drive(
        serve.base.clone(),
        key.to_owned(),
        entities.to_vec(),
        Arc::clone(&stop),
        Arc::clone(&over),
        Arc::clone(&acked),
    ));
    let reader = tokio::spawn(read_during(
        serve.base.clone(),
        key.to_owned(),
        entities[0],
        Arc::clone(&stop),
    ));
    let wait_acks = |n: usize| {
        let acked = Arc::clone(&acked);
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while acked.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acks(100).await;
    failure().await;
    over.store(true, Ordering::SeqCst);
    wait_acks(acked.load(Ordering::SeqCst) + 100).await;
    stop.store(true, Ordering::SeqCst);
    let outcome = driver.await.unwrap_or_else(|e| panic!("{e}"));
    let reads = reader.await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "acked {} ({} after the failure), 503: {}, transport errors: {}, other: {:?}; reads {reads:?}",
        outcome.acked.len(),
        outcome.acked_after_outage,
        outcome.unavailable,
        outcome.errors,
        outcome.other_statuses
    );
    (outcome, reads)
}

/// What must hold after every failure: writes resumed by themselves, no failure other than
/// 503 (or a client timeout), every acknowledged value once on the (new) primary.
async fn check(what: &str, outcome: &Outcome, admin_url: &str) {
    assert!(
        outcome.acked_after_outage >= 100,
        "{what}: writes resumed by themselves ({} acknowledged after)",
        outcome.acked_after_outage
    );
    assert!(
        outcome.other_statuses.keys().all(|s| *s == 429),
        "{what}: while there is no primary every refusal is a 503: {:?}",
        outcome.other_statuses
    );
    assert_every_ack_stored_once(&outcome.acked, &stored(admin_url).await);
}

async fn leader(stack: &HaStack) -> String {
    let s = stack.clone();
    blocking(move || s.wait_healthy(Duration::from_secs(120)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .leader()
        .map(|m| m.name.clone())
        .unwrap_or_else(|| panic!("no leader"))
}

async fn in_recovery(stack: &HaStack, node: &str, database: &str) -> Option<bool> {
    let node = stack.node(node)?;
    let client = connect(&stack.node_admin_url(node, database)).await.ok()?;
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Waits until the standby holds a copy of the CDC slot that Patroni would consider safe
/// after a promotion: the primary's physical slot for that standby reports a catalog_xmin,
/// and the copy's is not older (Patroni copies the slot, restarting the standby, then
/// advances it every loop).
async fn slot_ready_on_standby(stack: &HaStack, slot: &str) {
    let xmin = "SELECT catalog_xmin::text::bigint FROM pg_replication_slots WHERE slot_name = $1";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let members = stack.members().unwrap_or_default();
        let primary = members
            .iter()
            .find(|m| m.is_leader())
            .map(|m| m.name.clone());
        let standby = members
            .iter()
            .find(|m| !m.is_leader())
            .map(|m| m.name.clone());
        if let (Some(primary), Some(standby)) = (primary, standby) {
            let on = |node: &str| {
                let url = stack
                    .node(node)
                    .map(|n| stack.node_admin_url(n, "postgres"))
                    .unwrap_or_default();
                async move { connect(&url).await.ok() }
            };
            if let (Some(p), Some(s)) = (on(&primary).await, on(&standby).await) {
                let physical: Option<i64> = p
                    .query_opt(xmin, &[&standby])
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.get(0));
                let copy: Option<i64> = s
                    .query_opt(xmin, &[&slot])
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.get(0));
                if let (Some(physical), Some(copy)) = (physical, copy)
                    && physical <= copy
                {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Patroni did not copy the CDC slot {slot} to the standby"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the analytics store has as many readings as the primary, then checks it holds
/// exactly them, each change once in its history.
async fn analytics_caught_up(target: &cdc::Target) {
    let primary = cdc::readings(&target.urls.admin_database_url, "entity_values_ts")
        .await
        .len();
    let an = cdc::analytics_url(target);
    let deadline = Instant::now() + Duration::from_secs(90);
    while cdc::scalar(&an, "SELECT count(*) FROM public.entity_values_ts").await
        < i64::try_from(primary).unwrap_or(i64::MAX)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cdc::assert_store_matches_primary(target).await;
    // Resumed from the slot's copy, never from a new snapshot: readings (all written after
    // the consumer started) arrived as inserts only, none as snapshot reads.
    assert_eq!(
        cdc::scalar(
            &an,
            "SELECT count(*) FROM cdc.change_events WHERE table_name = 'entity_values_ts' AND op = 'r'",
        )
        .await,
        0,
        "atlas cdc took a new snapshot after the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_switched_or_partitioned_primary_loses_no_acknowledged_value() {
    let proxies = [
        Proxy::start(ETCD_PROXIES[0], HaSpec::test("").etcd_port).await,
        Proxy::start(ETCD_PROXIES[1], HaSpec::test("").etcd_port).await,
    ];
    let dir = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/atlas-ha-stack/ha"
    ));
    let mut spec = HaSpec::test(&dir);
    for (node, port) in spec.nodes.iter_mut().zip(ETCD_PROXIES) {
        node.etcd_port = Some(port);
    }
    // A fresh cluster: a left-over one would run with another run's proxies in its config.
    let up = spec.clone();
    let stack = blocking(move || {
        HaStack::down(&up, true)?;
        HaStack::up(&up)
    })
    .await
    .unwrap_or_else(|e| panic!("HA stack: {e}"));

    let name = format!("atlas_ha_{}", std::process::id());
    migrated_database(
        &stack.urls_for("postgres").admin_database_url,
        &name,
        stack.app_password(),
    )
    .await;
    let urls = stack.urls_for(&name);

    let serve = Serve::start(&urls.database_url, &urls.replica_urls, &urls.redis_url).await;
    let (key, entities) = fleet(&serve.base, 40).await;

    // 1. SIGKILL of the primary's postmaster: the synchronous standby is promoted, writes
    //    resume by themselves, the old primary comes back as a standby with every value.
    // `atlas cdc` streams throughout, its slot a Patroni permanent slot.
    let target = cdc::Target {
        name: name.clone(),
        urls: urls.clone(),
    };
    let (config, _) = cdc::config_file(&target, "");
    let _consumer = cdc::Killed(
        cdc::atlas(&target, &config)
            .arg("cdc")
            .env(
                "ATLAS_REPLICATION__PATRONI_URLS",
                stack.patroni_urls().join(","),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    slot_ready_on_standby(&stack, &target.slot_name()).await;

    let first = leader(&stack).await;
    let (outcome, reads) = under_load(&serve, &key, &entities, || {
        let (stack, first) = (stack.clone(), first.clone());
        async move {
            let node = stack
                .node(&first)
                .cloned()
                .unwrap_or_else(|| panic!("{first}"));
            stack
                .kill_postmaster(&node)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    })
    .await;
    check("SIGKILL of the primary", &outcome, &urls.admin_database_url).await;
    assert!(outcome.unavailable + outcome.errors > 0 || outcome.acked_after_outage > 0);
    assert!(
        reads.eventual.keys().all(|s| *s == 200),
        "eventual reads answer throughout (a standby or the cache): {:?}",
        reads.eventual
    );
    assert!(
        reads.strong.keys().all(|s| matches!(s, 200 | 503)),
        "strong reads answer or say 503: {:?}",
        reads.strong
    );
    assert_eq!(
        reads.strong_503_without_retry_after, 0,
        "a 503 says when to retry"
    );
    let second = leader(&stack).await;
    assert_ne!(first, second, "the standby was promoted");
    assert_eq!(
        in_recovery(&stack, &first, &name).await,
        Some(true),
        "the old primary is a standby again"
    );
    // It has every acknowledged value (synchronous replication, then streaming again).
    let old = stack
        .node(&first)
        .cloned()
        .unwrap_or_else(|| panic!("{first}"));
    let old_url = stack.node_admin_url(&old, &name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_old: std::collections::HashSet<(i64, i64)> =
            stored(&old_url).await.into_iter().collect();
        if outcome.acked.iter().all(|a| on_old.contains(a)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined standby lacks acknowledged values"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The maintainer's leadership (an advisory lock) moved with the primary: heartbeats are
    // written on the new one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admin = connect(&urls.admin_database_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let age_ms = atlas_testkit::scalar(
            &admin,
            "SELECT (extract(epoch FROM now() - max(\"timestamp\")) * 1000)::bigint \
             FROM public.replication_heartbeat",
            &[],
        )
        .await;
        if age_ms < 3_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on the new primary ({age_ms} ms old)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // CDC resumed on the new primary from its slot's copy: every change, once.
    analytics_caught_up(&target).await;

    // 2. A planned switchover under load: no value lost, nothing but 503.
    slot_ready_on_standby(&stack, &target.slot_name()).await;
    let (outcome, _) = under_load(&serve, &key, &entities, || {
        let stack = stack.clone();
        async move {
            blocking(move || stack.switchover(None))
                .await
                .unwrap_or_else(|e| panic!("switchover: {e}"));
        }
    })
    .await;
    check("switchover", &outcome, &urls.admin_database_url).await;
    let third = leader(&stack).await;
    assert_ne!(third, second, "the switchover moved the primary");

    // 3. The primary's Patroni cut off from etcd: it demotes itself, the standby takes the
    //    leader lock, and nothing acknowledged is lost (an acknowledgement from the old
    //    primary after it lost the lock would be missing on the new one).
    slot_ready_on_standby(&stack, &target.slot_name()).await;
    let cut_at = Instant::now();
    let index = stack
        .spec()
        .nodes
        .iter()
        .position(|n| n.name == third)
        .unwrap_or_else(|| panic!("{third}"));
    let cut = &proxies[index];
    let (outcome, _) = under_load(&serve, &key, &entities, || async {
        cut.cut();
        // The load goes on; what is acknowledged from here on must come from the new primary.
        loop {
            if in_recovery(&stack, &third, &name).await == Some(true) {
                break;
            }
            assert!(
                cut_at.elapsed() < Duration::from_secs(60),
                "the partitioned primary demoted itself"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "the partitioned primary was a standby {:?} after the cut",
            cut_at.elapsed()
        );
    })
    .await;
    check("partition from etcd", &outcome, &urls.admin_database_url).await;
    let members = stack.members().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        members.iter().any(|m| m.is_leader() && m.name != third),
        "the other node took the leader lock: {members:?}"
    );
    cut.heal();
    let fourth = leader(&stack).await;
    assert_ne!(fourth, third, "the other node leads after the partition");

    analytics_caught_up(&target).await;

    // `atlas status` shows the cluster: both members, the synchronous standby, and the last
    // change of primary (the partition's) to the node that leads now.
    let out = cdc::atlas(&target, &config)
        .args(["status", "--json"])
        .env(
            "ATLAS_REPLICATION__PATRONI_URLS",
            stack.patroni_urls().join(","),
        )
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let cluster = &status["cluster"];
    assert_eq!(cluster["state"], "up", "{cluster}");
    assert_eq!(
        cluster["members"].as_array().map(Vec::len),
        Some(2),
        "{cluster}"
    );
    assert_eq!(
        cluster["last_failover"]["new_primary"],
        fourth.as_str(),
        "{cluster}"
    );
    let standby = if fourth == "node1" { "node2" } else { "node1" };
    assert_eq!(cluster["synchronous_standby"], standby, "{cluster}");

    drop(serve);
    let down = spec.clone();
    blocking(move || HaStack::down(&down, true))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
