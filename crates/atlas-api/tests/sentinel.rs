//! Redis failover through Sentinel: the cache's master is killed, every request keeps
//! succeeding from PostgreSQL, Sentinel promotes the replica, and fills and invalidations
//! resume against it (the cache asks Sentinel again; redis-rs alone would keep the old address).

use std::process::Child;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::support::{Server, call, free_port, redis_flags, redis_server};

/// A Redis primary, its replica and one Sentinel, of this test's own.
struct Trio {
    primary: Option<Child>,
    replica: Child,
    sentinel: Child,
    ports: (u16, u16, u16),
    dir: std::path::PathBuf,
}

impl Trio {
    fn start() -> Self {
        let ports = (free_port(), free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("atlas-sentinel-{}-{}", std::process::id(), ports.2));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let primary = redis_server(&redis_flags(ports.0), ports.0);
        let mut args = redis_flags(ports.1);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            ports.0.to_string(),
        ]);
        let replica = redis_server(&args, ports.1);
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {}\ndir {}\nsentinel monitor atlas 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds atlas 1000\nsentinel failover-timeout atlas 5000\n",
                ports.2,
                dir.display(),
                ports.0
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sentinel = redis_server(
            &[conf.to_string_lossy().into_owned(), "--sentinel".into()],
            ports.2,
        );
        Trio {
            primary: Some(primary),
            replica,
            sentinel,
            ports,
            dir,
        }
    }

    fn kill_primary(&mut self) {
        if let Some(mut p) = self.primary.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    async fn master_port(&self) -> Option<u16> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.ports.2)).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("atlas")
            .query_async::<Option<(String, u16)>>(&mut c)
            .await
            .ok()
            .flatten()
            .map(|a| a.1)
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        self.kill_primary();
        for c in [&mut self.replica, &mut self.sentinel] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_redis_failover_the_cache_follows_sentinel_to_the_promoted_replica() {
    let mut trio = Trio::start();
    let db = atlas_testkit::TestDb::new().await;
    let store = db.store(8);
    let cache = atlas_cache::Cache::with_sentinel(
        &format!("redis://127.0.0.1:{}/", trio.ports.0),
        &[format!("redis://127.0.0.1:{}/", trio.ports.2)],
        "atlas",
        &crate::support::cache_prefix(&db),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let server = Server::with_cache(
        db,
        store,
        atlas_config::Limits::default(),
        atlas_ingest::IngestConfig::default(),
        cache,
    )
    .await;
    let (s, b) = call(
        server
            .admin(Method::POST, "/v1/admin/attributes")
            .json(&json!({"attribute_name": "mode", "data_type": "string", "is_hot": true})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (_, key) = server.tenant("acme").await;
    let e = server.entities(&key, 1).await[0];
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    let write = |i: i64, mode: String| {
        let (server, key) = (&server, key.clone());
        async move {
            let (s, b) = call(
                server
                    .as_tenant(&key, Method::POST, "/v1/telemetry")
                    .json(&json!({"entity_id": e, "ts": t + i, "values": {"mode": mode}})),
            )
            .await;
            assert_eq!(s, 200, "{b}");
        }
    };
    let read = || {
        let (server, key) = (&server, key.clone());
        async move {
            let resp = server
                .as_tenant(&key, Method::GET, &format!("/v1/entities/{e}/attributes"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let cache = resp
                .headers()
                .get("x-atlas-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let (s, b) = crate::support::split(resp).await;
            assert_eq!(s, 200, "{b}");
            (
                b["attributes"]["mode"].as_str().unwrap_or("").to_owned(),
                cache,
            )
        }
    };

    write(0, "eco".into()).await;
    assert_eq!(read().await.0, "eco");
    assert_eq!(read().await, ("eco".to_owned(), "hit".to_owned()));

    // The master dies. Reads and writes keep succeeding while Sentinel fails over.
    trio.kill_primary();
    let started = Instant::now();
    let mut i = 1;
    let mut promoted = false;
    while started.elapsed() < Duration::from_secs(30) {
        write(i, format!("m{i}")).await;
        assert_eq!(
            read().await.0,
            format!("m{i}"),
            "a read missed a committed write"
        );
        i += 1;
        if trio.master_port().await == Some(trio.ports.1) {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(promoted, "Sentinel did not promote the replica");

    // Against the promoted replica: fills land (a hit follows a miss) and a write's
    // invalidation reaches it (the next read shows the new value, not the cached one).
    let mut hit = false;
    for _ in 0..50 {
        let (mode, cache) = read().await;
        assert_eq!(mode, format!("m{}", i - 1));
        if cache == "hit" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hit, "the cache never filled the promoted master");
    write(i, "after".into()).await;
    let (mode, cache) = read().await;
    assert_eq!((mode.as_str(), cache.as_str()), ("after", "miss"));
    assert_eq!(read().await, ("after".to_owned(), "hit".to_owned()));
    server.stop().await;
}
