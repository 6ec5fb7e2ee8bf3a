//! Redis failover through Sentinel and restarts from the AOF: the cache's master is killed,
//! every request keeps succeeding from PostgreSQL, Sentinel promotes the replica (or Redis comes
//! back with its data), fills and invalidations resume against it (the cache asks Sentinel
//! again; redis-rs alone would keep the old address), and no write made while Redis was away
//! is hidden by an entry Redis kept.

use std::process::Child;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Server, call, free_port, get_cached, redis_flags, redis_server};

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
        Self::start_with(1000)
    }

    /// Points a server's cache at this master through this Sentinel.
    fn configure(&self, c: &mut atlas_config::Config) {
        c.redis_url = Some(format!("redis://127.0.0.1:{}/", self.ports.0));
        c.redis_sentinel_urls = vec![format!("redis://127.0.0.1:{}/", self.ports.2)];
        c.redis_master_name = "atlas".into();
    }

    /// A trio whose Sentinel declares the master down after `down_after_ms`.
    fn start_with(down_after_ms: u32) -> Self {
        let ports = (free_port(), free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("atlas-sentinel-{}-{}", std::process::id(), ports.2));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        // Their own directory: a replica's full sync writes an RDB file there.
        let in_dir = |port: u16| {
            let mut args = redis_flags(port);
            args.extend(["--dir".into(), dir.to_string_lossy().into_owned()]);
            args
        };
        let primary = redis_server(&in_dir(ports.0), ports.0);
        let mut args = in_dir(ports.1);
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
                 sentinel down-after-milliseconds atlas {down_after_ms}\nsentinel failover-timeout atlas 5000\n",
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
    let server = Server::configured(db, |c| trio.configure(c)).await;
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
            let (s, b, cache) =
                get_cached(server, &key, &format!("/v1/entities/{e}/attributes")).await;
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

/// What a dashboard reads, warmed into Redis and then written behind its back: an entity's hot
/// attributes, its type's list, a tenant aggregate and the latest value.
struct Scenario {
    server: Server,
    key: String,
    entity: i64,
    t: i64,
}

impl Scenario {
    async fn start(
        db: atlas_testkit::TestDb,
        redis: impl FnOnce(&mut atlas_config::Config),
    ) -> Self {
        let server = Server::configured(db, |c| {
            redis(c);
            // Short batch windows: the writes made while Redis is away take milliseconds, well
            // inside the time Sentinel takes to fail over.
            c.ingest.batch_interval = Duration::from_millis(5);
        })
        .await;
        server
            .define(json!({"attribute_name": "status", "data_type": "string", "is_hot": true}))
            .await;
        server
            .define(json!({"attribute_name": "level", "data_type": "integer"}))
            .await;
        let (_, key) = server.tenant("acme").await;
        let entity = server.entities(&key, 1).await[0];
        let s = Self {
            server,
            key,
            entity,
            t: chrono::Utc::now().timestamp_millis() - 600_000,
        };
        s.write(0, "before").await;
        s
    }

    async fn write(&self, i: i64, status: &str) {
        let (s, b) = call(self.server.as_tenant(&self.key, Method::POST, "/v1/telemetry").json(
            &json!({"entity_id": self.entity, "ts": self.t + i, "values": {"status": status, "level": i}}),
        ))
        .await;
        assert_eq!(s, 200, "{b}");
    }

    fn paths(&self) -> [String; 4] {
        [
            format!("/v1/entities/{}/attributes", self.entity),
            "/v1/entities?entity_type=sensor".to_owned(),
            format!(
                "/v1/aggregates?attribute=level&from={}&to={}&bucket=1d&fn=count",
                self.t - 3_600_000,
                self.t + 3_600_000
            ),
            format!("/v1/entities/{}/latest?attribute=status", self.entity),
        ]
    }

    async fn get(&self, path: &str) -> (Value, String) {
        let (s, b, cache) = get_cached(&self.server, &self.key, path).await;
        assert_eq!(s, 200, "{path}: {b}");
        (b, cache)
    }

    /// (status, ids of the type, count of the aggregate, latest status) as the API answers.
    async fn state(&self) -> (String, Vec<i64>, i64, String) {
        let [hot, list, agg, latest] = self.paths();
        let (h, _) = self.get(&hot).await;
        let (l, _) = self.get(&list).await;
        let (a, _) = self.get(&agg).await;
        let (n, _) = self.get(&latest).await;
        let ids = l["items"]
            .as_array()
            .map(|i| i.iter().filter_map(|e| e["entity_id"].as_i64()).collect())
            .unwrap_or_default();
        (
            h["attributes"]["status"].as_str().unwrap_or("").to_owned(),
            ids,
            a["items"][0]["value"].as_i64().unwrap_or(-1),
            n["latest"]["value"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Reads until Redis serves the hot attributes and the aggregate (the list has no header:
    /// its key is checked by the caller).
    async fn warm(&self) {
        let [hot, _, agg, _] = self.paths();
        for p in [hot, agg] {
            let mut hit = false;
            for _ in 0..100 {
                if self.get(&p).await.1 == "hit" {
                    hit = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(hit, "{p} never became a cache hit");
        }
        let _ = self.state().await;
    }

    /// Writes while Redis is away: a new status and level, and a new entity of the type.
    async fn write_behind(&self) -> i64 {
        let started = Instant::now();
        for i in 1..=10 {
            self.write(i, "after").await;
        }
        let added = self.server.entities(&self.key, 1).await[0];
        // Reads while Redis is away go straight to PostgreSQL (reported, not asserted).
        let [hot, ..] = self.paths();
        let reads = Instant::now();
        for _ in 0..20 {
            let (b, c) = self.get(&hot).await;
            assert_eq!(
                (b["attributes"]["status"].as_str(), c.as_str()),
                (Some("after"), "miss")
            );
        }
        eprintln!(
            "redis away: 10 writes + 1 registration in {:?}; 20 hot reads in {:?}",
            reads - started,
            reads.elapsed()
        );
        added
    }

    /// The first reads once Redis is back see every write made while it was away, and the
    /// cache serves again afterwards.
    async fn assert_nothing_hidden(&self, added: i64) {
        let (status, ids, count, latest) = self.state().await;
        assert_eq!(status, "after", "hot attributes hid a committed write");
        assert!(
            ids.contains(&added),
            "the entity list hid a registration: {ids:?}"
        );
        assert_eq!(count, 11, "the aggregate hid committed writes");
        assert_eq!(latest, "after");
        self.warm().await;
        assert_eq!(
            self.state().await,
            ("after".to_owned(), ids, 11, "after".to_owned())
        );
        // And invalidation works against the Redis that came back.
        self.write(20, "later").await;
        let [hot, ..] = self.paths();
        let (b, c) = self.get(&hot).await;
        assert_eq!(
            (b["attributes"]["status"].as_str(), c.as_str()),
            (Some("later"), "miss")
        );
    }
}

/// Keys of this test's cache that a Redis holds.
async fn cached_keys(port: u16, prefix: &str) -> Vec<String> {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return Vec::new();
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return Vec::new();
    };
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

/// Waits until the Redis on `port` holds the entity, list and aggregate entries.
async fn wait_for_entries(port: u16, prefix: &str) {
    for _ in 0..100 {
        let keys = cached_keys(port, prefix).await;
        let has = |part: &str| {
            keys.iter()
                .any(|k| k.contains(part) && !k.ends_with(":lease"))
        };
        if has(":entity:list:")
            && has("agg:")
            && keys
                .iter()
                .any(|k| k.starts_with(&format!("{prefix}entity:")) && !k.contains("list"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Redis on {port} never held the warmed entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_made_while_the_master_was_down_are_visible_on_the_promoted_replica() {
    // Sentinel waits 4 s before failing over: the writes below land while there is no master.
    let mut trio = Trio::start_with(4000);
    let db = atlas_testkit::TestDb::new().await;
    let prefix = crate::support::cache_prefix(&db);
    let s = Scenario::start(db, |c| trio.configure(c)).await;
    s.warm().await;
    // The replica holds what the master cached: after the failover it serves them.
    wait_for_entries(trio.ports.1, &prefix).await;

    trio.kill_primary();
    let added = s.write_behind().await;
    assert!(
        trio.master_port().await != Some(trio.ports.1),
        "the writes were to land before the failover completed"
    );
    let mut promoted = false;
    for _ in 0..600 {
        if trio.master_port().await == Some(trio.ports.1) {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(promoted, "Sentinel did not promote the replica");
    s.assert_nothing_hidden(added).await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_made_while_redis_restarted_from_its_aof_are_visible_after() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("atlas-aof-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut args = redis_flags(port);
    // Every write is in the AOF before Redis answers, so a restart brings all entries back.
    args.extend(
        ["--appendonly", "yes", "--appendfsync", "always", "--dir"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    args.push(dir.to_string_lossy().into_owned());
    let mut redis = redis_server(&args, port);
    let db = atlas_testkit::TestDb::new().await;
    let prefix = crate::support::cache_prefix(&db);
    let s = Scenario::start(db, |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}/"))
    })
    .await;
    s.warm().await;
    wait_for_entries(port, &prefix).await;

    let _ = redis.kill();
    let _ = redis.wait();
    let added = s.write_behind().await;
    redis = redis_server(&args, port);
    assert!(
        !cached_keys(port, &prefix).await.is_empty(),
        "Redis came back without its entries: the test proves nothing"
    );
    s.assert_nothing_hidden(added).await;
    s.server.stop().await;
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
