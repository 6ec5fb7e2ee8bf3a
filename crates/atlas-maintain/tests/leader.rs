//! Two servers' workers on one database: exactly one leads (maintains and writes heartbeats);
//! killing it hands leadership over.

use std::time::Duration;

use atlas_maintain::{Settings, Worker, WorkerHandle};
use atlas_testkit::TestDb;

fn worker(db: &TestDb, source: &str) -> WorkerHandle {
    Worker {
        store: db.store(2),
        cache: atlas_cache::Cache::disabled(),
        settings: Settings {
            heartbeat: Duration::from_millis(100),
            interval: Duration::from_secs(1),
            ..Settings::default()
        },
        database_url: db.urls.database_url.clone(),
        source: source.into(),
    }
    .spawn()
}

async fn heartbeat_sources_since(db: &TestDb, after_id: i32) -> Vec<String> {
    db.admin()
        .await
        .query(
            "SELECT DISTINCT source::text FROM replication_heartbeat WHERE id > $1 ORDER BY 1",
            &[&after_id],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn last_heartbeat_id(db: &TestDb) -> i32 {
    db.admin()
        .await
        .query_one(
            "SELECT coalesce(max(id), 0) FROM replication_heartbeat",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0)
}

#[tokio::test]
async fn exactly_one_worker_leads_and_a_killed_leader_hands_over() {
    let db = TestDb::new().await;
    let a = worker(&db, "server-a");
    let b = worker(&db, "server-b");

    // Within a few ticks one of them leads, and only one.
    let mut leaders = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        leaders = usize::from(a.is_leader()) + usize::from(b.is_leader());
        if leaders == 1 {
            break;
        }
    }
    assert_eq!(leaders, 1);
    let (leader, follower, leader_name, follower_name) = if a.is_leader() {
        (a, b, "server-a", "server-b")
    } else {
        (b, a, "server-b", "server-a")
    };
    // Over a second of heartbeats, only the leader wrote any, and the follower stayed one.
    let mark = last_heartbeat_id(&db).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(leader.is_leader() && !follower.is_leader());
    }
    assert_eq!(heartbeat_sources_since(&db, mark).await, vec![leader_name]);
    // The leader ran the maintenance round.
    let rounds: i64 = db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM maintenance_runs WHERE task = 'partitions'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(rounds >= 1);

    // Kill the leader as a crash would: its connection closes and the lock with it.
    leader.abort();
    let mut took_over = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if follower.is_leader() {
            took_over = true;
            break;
        }
    }
    assert!(took_over, "the follower did not take over");
    let mark = last_heartbeat_id(&db).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        heartbeat_sources_since(&db, mark).await,
        vec![follower_name]
    );
    follower.stop().await;
}
