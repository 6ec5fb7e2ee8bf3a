//! The Redis cache layer (the seed's layer 0) in front of PostgreSQL.
//!
//! Key patterns (every key starts with the configured namespace prefix; tenant data keys carry
//! the tenant):
//! - `entity:{tenant}:{entity}` — an entity's hot attributes (JSON), TTL 300 s;
//! - `entity:list:{tenant}:{entity_type}` — a set of the ids of a type, TTL 60 s;
//! - `agg:{tenant}:{generation}:{query}` — an aggregate result, TTL 60 s;
//! - `attribute:name_to_id` and `attribute:meta` — hashes of the global catalogue, TTL 1 h;
//! - `quota:values:{tenant}:{day}` — not a cache: the tenant's count of values written that
//!   UTC day, for its values-per-day quota, TTL 2 days.
//!
//! Rules that keep it correct:
//! - **Redis is never required.** Every call has a short timeout; an error or a timeout is a
//!   miss (counted), and the caller reads PostgreSQL.
//! - **No stale set.** A reader takes a *lease* (`<key>:lease`, a random token) before it reads
//!   the database, and its fill is a Lua script that stores the value only if its lease is
//!   still there. Writers invalidate after COMMIT by deleting the key *and* its lease, so a
//!   fill that read the database before the commit finds its lease gone and stores nothing.
//!   Aggregates use a per-tenant generation instead: a writer replaces the generation after
//!   COMMIT; a reader reads the generation before the database, so a late fill lands under a
//!   generation nobody reads any more.
//! - **Atomic multi-command writes.** A fill (value + TTL, set members + TTL, both hashes +
//!   TTL) runs as one Lua script; invalidations run in MULTI/EXEC: no key is left without TTL.
//! - **TTL jitter** (±10 %) so entries filled together do not expire together.
//! - **Single-flight** ([`SingleFlight`]): concurrent misses of one key in a process share one
//!   database read.
//! - **A cache epoch fences what Redis kept through an outage.** Every value, set and hash
//!   carries the epoch (`cache:epoch`, a random token) read before its database read; a
//!   lookup answers only what carries the epoch as this process last read it (re-read every
//!   [`EPOCH_REFRESH`], so a lookup is still one plain read and Redis's own hit rate stays
//!   true), and a fill stores nothing once the epoch moved. A process trusts the cache only
//!   after it has replaced the epoch itself following its last failed invalidation or epoch
//!   re-read (a server also at start, [`Cache::renew_epoch`], as a predecessor may have died
//!   with invalidations undone; a short-lived writer waits for it before exiting,
//!   [`Cache::settle`]): an invalidation that failed — Redis down, failing over, or restarted
//!   from its AOF or a replica that kept older entries — thus can never let an old entry
//!   answer once Redis is back. Until then every lookup is a *bypass* to PostgreSQL without
//!   touching Redis (no waiting out timeouts), and invalidations are skipped for 250 ms after
//!   a failure (counted as failures, so the next epoch covers them). A background task
//!   replaces the epoch as soon as Redis answers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use rand::Rng;
use redis::aio::ConnectionManager;

/// How long one Redis call may take before it counts as a miss.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// A lease outlives any database read it guards; an abandoned one expires by itself.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// TTL of an entity's hot attributes (seed: 300 s).
pub const ENTITY_TTL: Duration = Duration::from_secs(300);
/// TTL of an entity-type list (seed: 60 s).
pub const LIST_TTL: Duration = Duration::from_secs(60);
/// TTL of an aggregate (seed: 60 s).
pub const AGG_TTL: Duration = Duration::from_secs(60);
/// TTL of the attribute catalogue hashes (seed: 1 h).
pub const META_TTL: Duration = Duration::from_secs(3600);
/// A tenant's aggregate generation lives this long after its last write.
const GENERATION_TTL: Duration = Duration::from_secs(3600);
/// After a failed call, Redis is left alone this long (invalidations skipped, lookups
/// bypassed) and the epoch is re-tried this often.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How often a process re-reads the epoch: another server's new epoch takes effect here
/// within this time, and a Redis that went away is noticed (and the cache distrusted) even
/// by a server that made no other call meanwhile.
pub const EPOCH_REFRESH: Duration = Duration::from_millis(100);
/// The hash field that holds the catalogue's epoch (`:` is not allowed in attribute names).
const META_EPOCH_FIELD: &str = ":epoch";

/// Why the cache could not be set up (running without it is always possible).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The Redis URL is invalid.
    #[error("invalid redis_url: {0}")]
    Url(#[from] redis::RedisError),
}

/// What a cache entry holds (the `kind` label of the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An entity's hot attributes.
    Entity,
    /// The ids of an entity type.
    List,
    /// An aggregate answer (`agg:{tenant}:{generation}:{query}`).
    Agg,
    /// The attribute catalogue.
    Meta,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Entity => "entity",
            Kind::List => "list",
            Kind::Agg => "agg",
            Kind::Meta => "meta",
        }
    }
}

/// A reader's claim to fill one key (see the crate docs): the epoch read before the database
/// and, for keys that writers delete, a lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    /// Empty for keys made unreachable by writers instead (aggregate generations).
    token: String,
    epoch: String,
}

/// Redis's own keyspace counters (`INFO stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyspaceStats {
    /// Lookups that found a key.
    pub hits: u64,
    /// Lookups that found no entry (or an entry of another epoch).
    pub misses: u64,
}

impl KeyspaceStats {
    /// Hits over lookups; `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// The cache; cheap to clone. Without Redis every lookup is a miss and writes do nothing.
#[derive(Clone, Default)]
pub struct Cache {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The connection to the current master (None until Sentinel named one).
    conn: std::sync::RwLock<Option<ConnectionManager>>,
    prefix: String,
    sentinel: Option<SentinelSource>,
    trust: Trust,
    /// The epoch as this process last read it from Redis (every [`EPOCH_REFRESH`], and with
    /// every lease), which lookups compare entries with.
    epoch: std::sync::RwLock<Option<String>>,
    /// The task refreshing `epoch` runs.
    refreshing: AtomicBool,
}

impl Inner {
    fn new(
        conn: Option<ConnectionManager>,
        prefix: &str,
        sentinel: Option<SentinelSource>,
    ) -> Self {
        Self {
            conn: std::sync::RwLock::new(conn),
            prefix: prefix.to_owned(),
            sentinel,
            trust: Trust::new(),
            epoch: std::sync::RwLock::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    fn epoch_key(&self) -> String {
        format!("{}cache:epoch", self.prefix)
    }

    /// The epoch as last read.
    fn known_epoch(&self) -> Option<String> {
        self.epoch.read().ok().and_then(|e| e.clone())
    }

    fn learn_epoch(&self, epoch: &str) {
        if let Ok(mut e) = self.epoch.write()
            && e.as_deref() != Some(epoch)
        {
            *e = Some(epoch.to_owned());
        }
    }
}

/// Whether this process may use what Redis holds: every failed call counts, and the cache is
/// trusted again only when an epoch replaced after the last counted failure stands.
struct Trust {
    /// Failed (or skipped) calls since start.
    failures: AtomicU64,
    /// The failure count the last replaced epoch covers.
    healed: AtomicU64,
    /// A task replacing the epoch is running.
    healing: AtomicBool,
    /// Milliseconds since `origin` of the last failed call, and of the last successful one.
    failed_at: AtomicU64,
    ok_at: AtomicU64,
    origin: Instant,
}

impl Trust {
    fn new() -> Self {
        Self {
            failures: AtomicU64::new(0),
            healed: AtomicU64::new(0),
            healing: AtomicBool::new(false),
            failed_at: AtomicU64::new(0),
            ok_at: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn trusted(&self) -> bool {
        self.healed.load(Ordering::SeqCst) == self.failures.load(Ordering::SeqCst)
    }

    /// Redis failed within the last [`RETRY_AFTER`] and has not answered since.
    fn resting(&self) -> bool {
        let failed = self.failed_at.load(Ordering::SeqCst);
        failed > self.ok_at.load(Ordering::SeqCst)
            && self.now().saturating_sub(failed)
                < u64::try_from(RETRY_AFTER.as_millis()).unwrap_or(250)
    }
}

/// Where the master's address comes from when Sentinels are configured.
struct SentinelSource {
    sentinels: Vec<redis::Client>,
    master_name: String,
    /// Credentials and database of the master (its host and port come from Sentinel).
    base: redis::ConnectionInfo,
    /// When the master was last asked for, so failures do not storm the Sentinels.
    last_ask: Mutex<Option<std::time::Instant>>,
    /// The master's address in use.
    current: Mutex<Option<(String, u16)>>,
}

/// Sentinels are asked again at most this often.
const SENTINEL_ASK_EVERY: Duration = Duration::from_millis(250);

fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("enabled", &self.inner.is_some())
            .field("prefix", &self.inner.as_ref().map(|i| i.prefix.as_str()))
            .finish()
    }
}

// Reads the epoch, creating it when absent (a Redis that lost it starts a new one, which
// nothing it still holds carries).
const EPOCH: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[1]
  redis.call('SET', KEYS[1], e)
end
return e";

// KEYS: key, lease, epoch. ARGV: token ('' without a lease), epoch, value, ttl.
const FILL_VALUE: &str = r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[3], 'PX', ARGV[4])
if ARGV[1] ~= '' then redis.call('DEL', KEYS[2]) end
return 1";

// KEYS: key, lease, epoch. ARGV: token, epoch, ttl, ids. The member `e:<epoch>` marks the set
// as filled under that epoch, so a type with no entities is cached too.
const FILL_SET: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], 'e:' .. ARGV[2])
local i = 4
while i <= #ARGV do
  local last = math.min(i + 499, #ARGV)
  redis.call('SADD', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return 1";

// KEYS: name_to_id, meta, lease, epoch. ARGV: token, epoch, ttl, then (name, id, json) triples.
const FILL_META: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], ':epoch', ARGV[2])
local i = 4
while i + 2 <= #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  i = i + 3
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
return 1";

const GENERATION: &str = r"
local g = redis.call('GET', KEYS[1])
if not g then
  g = ARGV[1]
  redis.call('SET', KEYS[1], g, 'PX', ARGV[2])
end
return g";

fn count(kind: Kind, result: &'static str) {
    metrics::counter!("atlas_cache_requests_total", "kind" => kind.label(), "result" => result)
        .increment(1);
}

fn jitter(ttl: Duration) -> u64 {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let spread = ms / 10;
    ms - spread + rand::rng().random_range(0..=spread * 2)
}

fn token() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// How [`Cache::claim`] takes the lease of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// No lease: only the epoch.
    Stamp,
    /// Taken over from any other holder.
    Lease,
    /// Only when nobody holds it.
    Exclusive,
}

fn lease_key(key: &str) -> String {
    format!("{key}:lease")
}

impl Cache {
    /// No Redis: every lookup misses, every write is skipped.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// A cache on Redis at `url`; every key starts with `prefix` (empty in production, a
    /// per-database namespace in tests). Connects lazily and reconnects by itself, so a
    /// server starts and serves while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        Ok(Self::start(Inner::new(Some(conn), prefix, None)))
    }

    fn start(inner: Inner) -> Self {
        Self {
            inner: Some(Arc::new(inner)),
        }
    }

    /// A cache on the master that the `sentinels` name `master_name`; `url` supplies the
    /// master's credentials and database. The master is asked for at first use and again
    /// whenever a call fails (at most every 250 ms): redis-rs keeps a connection's address
    /// for good, so after a failover only asking Sentinel again finds the promoted replica.
    pub fn with_sentinel(
        url: &str,
        sentinels: &[String],
        master_name: &str,
        prefix: &str,
    ) -> Result<Self, CacheError> {
        let base = redis::IntoConnectionInfo::into_connection_info(url)?;
        let sentinels = sentinels
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::start(Inner::new(
            None,
            prefix,
            Some(SentinelSource {
                sentinels,
                master_name: master_name.to_owned(),
                base,
                last_ask: Mutex::new(None),
                current: Mutex::new(None),
            }),
        )))
    }

    /// Asks the Sentinels for the master and, when it moved, connects to the new one.
    async fn ask_sentinel(inner: &Arc<Inner>) {
        let Some(source) = &inner.sentinel else {
            return;
        };
        {
            let mut last = source.last_ask.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < SENTINEL_ASK_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        for sentinel in &source.sentinels {
            let ask = async {
                let mut c = sentinel.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&source.master_name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            let Ok(Ok(Some(addr))) = tokio::time::timeout(CONNECT_TIMEOUT, ask).await else {
                continue;
            };
            let (moved, had) = {
                let mut current = source.current.lock().unwrap_or_else(|p| p.into_inner());
                let moved = current.as_ref() != Some(&addr);
                let had = current.is_some();
                *current = Some(addr.clone());
                (moved, had)
            };
            if moved && had {
                // Invalidations the old master acknowledged may not have reached the new one.
                Self::failed(inner, false);
            }
            let have = inner.conn.read().map(|c| c.is_some()).unwrap_or(false);
            if moved || !have {
                let info = source
                    .base
                    .clone()
                    .set_addr(redis::ConnectionAddr::Tcp(addr.0.clone(), addr.1));
                match redis::Client::open(info)
                    .and_then(|c| ConnectionManager::new_lazy_with_config(c, manager_config()))
                {
                    Ok(m) => {
                        tracing::debug!(host = %addr.0, port = addr.1, "cache uses the Redis master Sentinel names");
                        if let Ok(mut conn) = inner.conn.write() {
                            *conn = Some(m);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to the master Sentinel names")
                    }
                }
            }
            return;
        }
        tracing::warn!("no Sentinel answered; the cache is unavailable until one does");
    }

    /// Whether a Redis is configured.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn prefix(&self) -> &str {
        self.inner.as_ref().map(|i| i.prefix.as_str()).unwrap_or("")
    }

    /// Key of an entity's hot attributes.
    pub fn entity_key(&self, tenant: i64, entity_id: i64) -> String {
        format!("{}entity:{tenant}:{entity_id}", self.prefix())
    }

    /// Key of the id set of an entity type.
    pub fn list_key(&self, tenant: i64, entity_type: &str) -> String {
        format!("{}entity:list:{tenant}:{entity_type}", self.prefix())
    }

    /// Key of a tenant's aggregate generation.
    pub fn agg_generation_key(&self, tenant: i64) -> String {
        format!("{}agg:gen:{tenant}", self.prefix())
    }

    /// Key of an aggregate under a generation; `query` identifies its parameters.
    pub fn agg_key(&self, tenant: i64, generation: &str, query: &str) -> String {
        format!("{}agg:{tenant}:{generation}:{query}", self.prefix())
    }

    /// Keys of the catalogue hashes: (`attribute:name_to_id`, `attribute:meta`).
    pub fn meta_keys(&self) -> (String, String) {
        let p = self.prefix();
        (
            format!("{p}attribute:name_to_id"),
            format!("{p}attribute:meta"),
        )
    }

    /// Key of the cache epoch.
    fn epoch_key(&self) -> String {
        self.inner
            .as_ref()
            .map(|i| i.epoch_key())
            .unwrap_or_default()
    }

    /// Runs one command or pipeline with the call timeout; `None` on any failure (a failed
    /// invalidation or epoch read distrusts the cache until a new epoch stands).
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        f: impl for<'c> FnOnce(&'c mut ConnectionManager) -> BoxFuture<'c, redis::RedisResult<T>>,
    ) -> Option<T> {
        let inner = self.inner.as_ref()?;
        Self::call(inner, what, f).await
    }

    async fn call<T: redis::FromRedisValue>(
        inner: &Arc<Inner>,
        what: &'static str,
        f: impl for<'c> FnOnce(&'c mut ConnectionManager) -> BoxFuture<'c, redis::RedisResult<T>>,
    ) -> Option<T> {
        let mut current = inner.conn.read().ok().and_then(|c| c.clone());
        if current.is_none() {
            // Sentinel has not named a master yet: ask (bounded by its timeouts).
            Self::ask_sentinel(inner).await;
            current = inner.conn.read().ok().and_then(|c| c.clone());
        }
        if let Some(mut conn) = current {
            match tokio::time::timeout(CALL_TIMEOUT, f(&mut conn)).await {
                Ok(Ok(v)) => {
                    inner.trust.ok_at.store(inner.trust.now(), Ordering::SeqCst);
                    return Some(v);
                }
                Ok(Err(e)) => tracing::debug!(error = %e, op = what, "redis call failed"),
                Err(_) => tracing::debug!(op = what, "redis call timed out"),
            }
        }
        metrics::counter!("atlas_cache_errors_total", "op" => what).increment(1);
        // Only a failed invalidation or epoch read can leave an entry that hides a write; a
        // lookup or fill that failed lost nothing (a timeout under load must not cost a
        // cache-wide refill), and an outage it reveals fails the next epoch re-read.
        if matches!(what, "invalidate" | "epoch") {
            Self::failed(inner, true);
        }
        // The master may have moved (or this one is now a read-only replica).
        if inner.sentinel.is_some() {
            let inner = Arc::clone(inner);
            tokio::spawn(async move { Self::ask_sentinel(&inner).await });
        }
        None
    }

    /// Counts a failure (`called`: a call failed, so Redis rests; else an invalidation was
    /// skipped or the master moved) and makes sure a new epoch follows.
    fn failed(inner: &Arc<Inner>, called: bool) {
        inner.trust.failures.fetch_add(1, Ordering::SeqCst);
        if called {
            inner
                .trust
                .failed_at
                .store(inner.trust.now(), Ordering::SeqCst);
        }
        Self::heal(inner);
    }

    /// Starts the task that replaces the epoch, unless one runs.
    fn heal(inner: &Arc<Inner>) {
        if inner.trust.healing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(inner);
        tokio::spawn(Self::heal_loop(weak));
    }

    /// Replaces the epoch until one stands that covers every counted failure; ends with the
    /// cache (it holds only a weak reference).
    async fn heal_loop(weak: Weak<Inner>) {
        loop {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let trust = &inner.trust;
            if trust.trusted() {
                trust.healing.store(false, Ordering::SeqCst);
                // A failure counted between the check and the store found `healing` set.
                if trust.trusted() || trust.healing.swap(true, Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            if !trust.resting() {
                let covers = trust.failures.load(Ordering::SeqCst);
                let epoch = token();
                let mut cmd = redis::cmd("SET");
                cmd.arg(inner.epoch_key()).arg(&epoch);
                let set = Self::call(&inner, "epoch", move |c| {
                    async move { cmd.query_async::<()>(c).await }.boxed()
                })
                .await;
                if set.is_some() {
                    inner.learn_epoch(&epoch);
                    trust.healed.fetch_max(covers, Ordering::SeqCst);
                    if trust.trusted() {
                        tracing::info!("new cache epoch set: serving from Redis");
                    }
                    continue;
                }
            }
            drop(inner);
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }

    /// Re-reads the epoch every [`EPOCH_REFRESH`] while the cache is trusted (while it is
    /// not, the healer probes Redis); ends with the cache.
    async fn refresh_loop(weak: Weak<Inner>) {
        loop {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if inner.trust.trusted() {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(EPOCH).arg(1).arg(inner.epoch_key()).arg(token());
                if let Some(epoch) = Self::call(&inner, "epoch", move |c| {
                    async move { cmd.query_async::<String>(c).await }.boxed()
                })
                .await
                {
                    inner.learn_epoch(&epoch);
                }
            }
            drop(inner);
            tokio::time::sleep(EPOCH_REFRESH).await;
        }
    }

    /// The cache when it may be used; otherwise (distrusted) counts a bypass of `kind` and
    /// makes sure a new epoch is on its way.
    fn usable(&self, kind: Option<Kind>) -> Option<&Arc<Inner>> {
        let inner = self.inner.as_ref()?;
        if inner.trust.trusted() {
            if !inner.refreshing.swap(true, Ordering::SeqCst) {
                tokio::spawn(Self::refresh_loop(Arc::downgrade(inner)));
            }
            return Some(inner);
        }
        if let Some(kind) = kind {
            count(kind, "bypass");
        }
        Self::heal(inner);
        None
    }

    /// Whether this process currently answers from Redis (false while a new epoch is due:
    /// at start and after a failed call, until Redis answers again).
    pub fn is_trusted(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.trust.trusted())
    }

    /// Distrusts what Redis holds until this process has replaced the epoch (started at once,
    /// in the background). A server calls it at start: its predecessor may have died with
    /// invalidations that failed, and nothing else would ever replace them. Call it within a
    /// Tokio runtime.
    pub fn renew_epoch(&self) {
        if let Some(inner) = &self.inner {
            Self::failed(inner, false);
        }
    }

    /// Waits up to `within` until no failed invalidation is left uncovered by a new epoch;
    /// returns whether none is. A short-lived process that wrote calls it before it exits.
    pub async fn settle(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.inner.is_none() || self.is_trusted() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counts a lookup of `kind` with the value it found under the current epoch (a value of
    /// another epoch is a miss).
    fn looked_up<T>(kind: Kind, found: Option<Option<T>>) -> Option<T> {
        match found {
            Some(Some(v)) => {
                count(kind, "hit");
                Some(v)
            }
            Some(None) => {
                count(kind, "miss");
                None
            }
            None => {
                count(kind, "error");
                None
            }
        }
    }

    /// The cached string at `key`; a miss on absence, on another epoch's value, or any Redis
    /// failure.
    pub async fn get(&self, kind: Kind, key: &str) -> Option<String> {
        let epoch = self.usable(Some(kind))?.known_epoch();
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let found = self
            .run("get", move |c| {
                async move { cmd.query_async::<Option<String>>(c).await }.boxed()
            })
            .await
            .map(|value| {
                let (epoch, value) = (epoch?, value?);
                value
                    .strip_prefix(epoch.as_str())
                    .and_then(|v| v.strip_prefix(':'))
                    .map(str::to_owned)
            });
        Self::looked_up(kind, found)
    }

    /// The members of the id set at `key` (without its epoch marker); a miss when absent or
    /// filled under another epoch.
    pub async fn members(&self, kind: Kind, key: &str) -> Option<Vec<i64>> {
        let epoch = self.usable(Some(kind))?.known_epoch();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(key);
        let found = self
            .run("smembers", move |c| {
                async move { cmd.query_async::<Vec<String>>(c).await }.boxed()
            })
            .await
            .map(|members| {
                let marker = format!("e:{}", epoch?);
                members.contains(&marker).then(|| {
                    members
                        .iter()
                        .filter_map(|m| m.parse::<i64>().ok())
                        .collect()
                })
            });
        Self::looked_up(kind, found)
    }

    /// The catalogue hash `attribute:meta` (name → JSON); a miss when absent or filled under
    /// another epoch.
    pub async fn meta(&self) -> Option<Vec<(String, String)>> {
        let epoch = self.usable(Some(Kind::Meta))?.known_epoch();
        let (_, meta) = self.meta_keys();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(meta);
        let found = self
            .run("hgetall", move |c| {
                async move { cmd.query_async::<Vec<(String, String)>>(c).await }.boxed()
            })
            .await
            .map(|mut pairs| {
                let epoch = epoch?;
                let at = pairs.iter().position(|(f, _)| f == META_EPOCH_FIELD)?;
                (pairs.swap_remove(at).1 == epoch).then_some(pairs)
            });
        Self::looked_up(Kind::Meta, found)
    }

    /// Takes the lease to fill `key` and reads the epoch the fill will carry; call it *before*
    /// reading the database. `None` when Redis is unavailable (then do not fill).
    pub async fn lease(&self, key: &str) -> Option<Lease> {
        self.claim(key, Claim::Lease).await
    }

    /// [`Cache::lease`], but only when no other filler holds the lease: `None` when another
    /// does (or Redis is unavailable). For fills that are expensive to run concurrently: a
    /// plain lease is taken over by each new taker, so under a burst of misses every request
    /// reads the database and the fills fence each other out, and nobody fills.
    pub async fn exclusive_lease(&self, key: &str) -> Option<Lease> {
        self.claim(key, Claim::Exclusive).await
    }

    /// The epoch a fill of `key` will carry, without a lease: for keys that writers make
    /// unreachable rather than delete (aggregates under a generation). Call it *before*
    /// reading the database.
    pub async fn stamp(&self, key: &str) -> Option<Lease> {
        self.claim(key, Claim::Stamp).await
    }

    /// Reads the epoch (creating it when absent), after taking the lease on `key` when
    /// `with_lease`, in one round trip. A failure here lost nothing, so it does not distrust
    /// the cache.
    async fn claim(&self, key: &str, how: Claim) -> Option<Lease> {
        let inner = Arc::clone(self.usable(None)?);
        let token = if how == Claim::Stamp {
            String::new()
        } else {
            token()
        };
        let mut pipe = redis::pipe();
        if how != Claim::Stamp {
            let set = pipe
                .cmd("SET")
                .arg(lease_key(key))
                .arg(&token)
                .arg("PX")
                .arg(u64::try_from(LEASE_TTL.as_millis()).unwrap_or(10_000));
            if how == Claim::Exclusive {
                set.arg("NX");
            } else {
                set.ignore();
            }
        }
        pipe.cmd("EVAL")
            .arg(EPOCH)
            .arg(1)
            .arg(inner.epoch_key())
            .arg(self::token());
        // SET … NX answers nil when another holds the lease; the other forms are ignored.
        let (taken, epoch) = if how == Claim::Exclusive {
            self.run("lease", move |c| {
                async move { pipe.query_async::<(Option<String>, String)>(c).await }.boxed()
            })
            .await?
        } else {
            let (epoch,) = self
                .run("lease", move |c| {
                    async move { pipe.query_async::<(String,)>(c).await }.boxed()
                })
                .await?;
            (Some(String::new()), epoch)
        };
        inner.learn_epoch(&epoch);
        taken?;
        Some(Lease {
            key: key.to_owned(),
            token,
            epoch,
        })
    }

    /// Stores `value` under the lease's key with `ttl` (jittered) if the lease is still held
    /// and the epoch has not moved; returns whether it was stored.
    pub async fn fill(&self, lease: Lease, value: &str, ttl: Duration) -> bool {
        if self.usable(None).is_none() {
            return false;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FILL_VALUE)
            .arg(3)
            .arg(&lease.key)
            .arg(lease_key(&lease.key))
            .arg(self.epoch_key())
            .arg(&lease.token)
            .arg(&lease.epoch)
            .arg(value)
            .arg(jitter(ttl));
        self.run("fill", move |c| {
            async move { cmd.query_async::<i64>(c).await }.boxed()
        })
        .await
            == Some(1)
    }

    /// Stores an id set under the lease's key with `ttl` (jittered) if the lease is still held
    /// and the epoch has not moved.
    pub async fn fill_set(&self, lease: Lease, ids: &[i64], ttl: Duration) -> bool {
        if self.usable(None).is_none() {
            return false;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FILL_SET)
            .arg(3)
            .arg(&lease.key)
            .arg(lease_key(&lease.key))
            .arg(self.epoch_key())
            .arg(&lease.token)
            .arg(&lease.epoch)
            .arg(jitter(ttl))
            .arg(ids);
        self.run("fill_set", move |c| {
            async move { cmd.query_async::<i64>(c).await }.boxed()
        })
        .await
            == Some(1)
    }

    /// Takes the lease on the catalogue hashes.
    pub async fn meta_lease(&self) -> Option<Lease> {
        let (_, meta) = self.meta_keys();
        self.lease(&meta).await
    }

    /// Stores the catalogue: `(name, id, metadata JSON)` for every attribute, both hashes and
    /// their TTL in one script, if the lease is still held and the epoch has not moved.
    pub async fn fill_meta(&self, lease: Lease, attributes: &[(String, i64, String)]) -> bool {
        if self.usable(None).is_none() {
            return false;
        }
        let (name_to_id, _) = self.meta_keys();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FILL_META)
            .arg(4)
            .arg(name_to_id)
            .arg(&lease.key)
            .arg(lease_key(&lease.key))
            .arg(self.epoch_key())
            .arg(&lease.token)
            .arg(&lease.epoch)
            .arg(jitter(META_TTL));
        for (name, id, json) in attributes {
            cmd.arg(name).arg(id).arg(json);
        }
        self.run("fill_meta", move |c| {
            async move { cmd.query_async::<i64>(c).await }.boxed()
        })
        .await
            == Some(1)
    }

    /// A tenant's current aggregate generation (created when absent); read it *before* the
    /// database. `None` when Redis is unavailable (then neither read nor fill).
    pub async fn agg_generation(&self, tenant: i64) -> Option<String> {
        self.usable(Some(Kind::Agg))?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GENERATION)
            .arg(1)
            .arg(self.agg_generation_key(tenant))
            .arg(token())
            .arg(u64::try_from(GENERATION_TTL.as_millis()).unwrap_or(3_600_000));
        self.run("generation", move |c| {
            async move { cmd.query_async::<String>(c).await }.boxed()
        })
        .await
    }

    /// Runs an invalidation after COMMIT: applied, or counted as a failure so that a new epoch
    /// follows (skipped at once while Redis rests after a failure, instead of waiting out its
    /// timeout).
    async fn invalidation(&self, what: impl FnOnce() -> redis::Pipeline, n: usize) {
        let Some(inner) = &self.inner else {
            return;
        };
        if inner.trust.resting() {
            Self::failed(inner, false);
            return;
        }
        let pipe = what();
        if self
            .run("invalidate", move |c| {
                async move { pipe.query_async::<()>(c).await }.boxed()
            })
            .await
            .is_none()
        {
            tracing::warn!(
                keys = n,
                "cache invalidation failed; a new cache epoch replaces every entry once Redis answers"
            );
        }
    }

    /// Deletes keys and their leases (one DEL, atomic). Call after COMMIT.
    pub async fn invalidate(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        self.invalidation(
            || {
                let mut pipe = redis::pipe();
                let del = pipe.cmd("DEL");
                for k in keys {
                    del.arg(k).arg(lease_key(k));
                }
                pipe.ignore();
                pipe
            },
            keys.len(),
        )
        .await;
    }

    /// After a commit that changed these entities' values: drops their hot-attribute entries
    /// and moves each tenant to a new aggregate generation, in one MULTI/EXEC.
    pub async fn entities_changed(&self, hot: &[(i64, i64)], tenants: &[i64]) {
        if hot.is_empty() && tenants.is_empty() {
            return;
        }
        self.invalidation(
            || {
                let mut pipe = redis::pipe();
                pipe.atomic();
                if !hot.is_empty() {
                    let mut del = redis::cmd("DEL");
                    for (t, e) in hot {
                        let k = self.entity_key(*t, *e);
                        del.arg(lease_key(&k)).arg(k);
                    }
                    pipe.add_command(del).ignore();
                }
                let ttl = u64::try_from(GENERATION_TTL.as_millis()).unwrap_or(3_600_000);
                for t in tenants {
                    pipe.cmd("SET")
                        .arg(self.agg_generation_key(*t))
                        .arg(token())
                        .arg("PX")
                        .arg(ttl)
                        .ignore();
                }
                pipe
            },
            hot.len() + tenants.len(),
        )
        .await;
    }

    /// The key of a tenant's count of values written on `day` (`YYYY-MM-DD`, UTC).
    pub fn day_count_key(&self, tenant: i64, day: &str) -> String {
        format!("{}quota:values:{tenant}:{day}", self.prefix())
    }

    /// Adds `n` (negative to give back) to a tenant's count of values for `day` and returns
    /// the new count; the count lives two days. Not a cached copy of anything, so it does not
    /// wait for the cache epoch: `None` only when Redis is not configured or does not answer.
    pub async fn day_count_add(&self, tenant: i64, day: &str, n: i64) -> Option<i64> {
        let key = self.day_count_key(tenant, day);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCRBY")
            .arg(&key)
            .arg(n)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(2 * 86_400_000_u64)
            .ignore();
        self.run("quota", move |c| {
            async move { pipe.query_async::<(i64,)>(c).await }.boxed()
        })
        .await
        .map(|(v,)| v)
    }

    /// A tenant's count of values for `day` (0 when none); `None` when Redis does not answer.
    pub async fn day_count(&self, tenant: i64, day: &str) -> Option<i64> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.day_count_key(tenant, day));
        self.run("quota", move |c| {
            async move { cmd.query_async::<Option<i64>>(c).await }.boxed()
        })
        .await
        .map(|v| v.unwrap_or(0))
    }

    /// The key of the newest backfill report of an attribute.
    pub fn backfill_key(&self, attribute_id: i64) -> String {
        format!("{}backfill:{attribute_id}", self.prefix())
    }

    /// Stores `value` under `key` for `ttl`: a report any server may read back, not a cached
    /// copy of the database (no lease, no epoch). Returns whether Redis took it.
    pub async fn put_report(&self, key: &str, value: &str, ttl: Duration) -> bool {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.run("report", move |c| {
            async move { cmd.query_async::<()>(c).await }.boxed()
        })
        .await
        .is_some()
    }

    /// A report stored by [`Cache::put_report`]: `Some(None)` when there is none, `None` when
    /// Redis is not configured or does not answer.
    pub async fn report(&self, key: &str) -> Option<Option<String>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.run("report", move |c| {
            async move { cmd.query_async::<Option<String>>(c).await }.boxed()
        })
        .await
    }

    /// The key of a tenant's ingest figures for one UTC minute (`minute`: minutes since the
    /// Unix epoch).
    pub fn ingest_stats_key(&self, tenant: i64, minute: i64) -> String {
        format!("{}ingest:{tenant}:{minute}", self.prefix())
    }

    /// Adds each `(key, field, n)` to its hash field (`HINCRBY`) and keeps every key `ttl`,
    /// in one transaction (`MULTI`/`EXEC`). Not a cached copy of anything (sums every server
    /// adds to), so it does not wait for the cache epoch. Returns whether Redis took them.
    /// Callers keep each call small: it has the [`CALL_TIMEOUT`] of any call.
    pub async fn hash_add(&self, adds: &[(String, String, i64)], ttl: Duration) -> bool {
        if adds.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        // All or nothing, so a failed call can be retried whole.
        pipe.atomic();
        let mut keys = std::collections::BTreeSet::new();
        for (key, field, n) in adds {
            pipe.cmd("HINCRBY").arg(key).arg(field).arg(*n).ignore();
            keys.insert(key);
        }
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        for key in keys {
            pipe.cmd("PEXPIRE").arg(key).arg(ms).ignore();
        }
        self.run("stats", move |c| {
            async move { pipe.query_async::<()>(c).await }.boxed()
        })
        .await
        .is_some()
    }

    /// The fields of each hash in `keys` (an empty map for a missing key), in one pipeline;
    /// `None` when Redis is not configured or does not answer.
    pub async fn hashes(
        &self,
        keys: &[String],
    ) -> Option<Vec<std::collections::HashMap<String, i64>>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        self.run("stats", move |c| {
            async move {
                pipe.query_async::<Vec<std::collections::HashMap<String, i64>>>(c)
                    .await
            }
            .boxed()
        })
        .await
    }

    /// Whether Redis answers PING within the call timeout (`None` when not configured).
    pub async fn ping(&self) -> Option<bool> {
        self.inner.as_ref()?;
        let cmd = redis::cmd("PING");
        Some(
            self.run("ping", move |c| {
                async move { cmd.query_async::<String>(c).await }.boxed()
            })
            .await
            .is_some(),
        )
    }

    /// Redis's `INFO stats` keyspace hits and misses (the whole server, every client).
    pub async fn keyspace_stats(&self) -> Option<KeyspaceStats> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("stats");
        let text = self
            .run("info", move |c| {
                async move { cmd.query_async::<String>(c).await }.boxed()
            })
            .await?;
        parse_keyspace_stats(&text)
    }
}

/// Reads `keyspace_hits` and `keyspace_misses` from `INFO stats` output.
pub fn parse_keyspace_stats(info: &str) -> Option<KeyspaceStats> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(KeyspaceStats {
        hits: field("keyspace_hits")?,
        misses: field("keyspace_misses")?,
    })
}

type Flight<T> = Shared<BoxFuture<'static, T>>;

/// Concurrent callers asking for the same key share one computation (one database read per
/// key per process at a time).
pub struct SingleFlight<T: Clone> {
    flights: Arc<Mutex<HashMap<String, Flight<T>>>>,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<T: Clone> std::fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The result of `make()` for `key`, shared with every caller that asks while it runs.
    pub async fn run<F>(&self, key: String, make: impl FnOnce() -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let flight = {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(f) => {
                    metrics::counter!("atlas_cache_singleflight_joined_total").increment(1);
                    f.clone()
                }
                None => {
                    let flights = Arc::clone(&self.flights);
                    let k = key.clone();
                    let fut = make();
                    let shared = async move {
                        let out = fut.await;
                        flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                        out
                    }
                    .boxed()
                    .shared();
                    map.insert(key, shared.clone());
                    shared
                }
            }
        };
        flight.await
    }

    /// Keys with a computation in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn keyspace_stats_are_parsed_from_info() {
        let info =
            "# Stats\r\ntotal_connections_received:3\r\nkeyspace_hits:90\r\nkeyspace_misses:10\r\n";
        let s = parse_keyspace_stats(info);
        assert_eq!(
            s,
            Some(KeyspaceStats {
                hits: 90,
                misses: 10
            })
        );
        assert_eq!(s.and_then(|s| s.hit_rate()), Some(0.9));
        assert_eq!(parse_keyspace_stats("# Stats\r\n"), None);
    }

    #[test]
    fn ttl_jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(300));
            assert!((270_000..=330_000).contains(&j), "{j}");
        }
    }

    #[test]
    fn keys_carry_prefix_and_tenant() {
        let c = Cache::disabled();
        assert_eq!(c.entity_key(7, 42), "entity:7:42");
        assert_eq!(c.list_key(7, "sensor"), "entity:list:7:sensor");
        assert_eq!(c.agg_key(7, "g", "q"), "agg:7:g:q");
    }

    #[tokio::test]
    async fn single_flight_runs_once_for_concurrent_callers() {
        let sf: Arc<SingleFlight<usize>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let sf = Arc::clone(&sf);
            let runs = Arc::clone(&runs);
            let gate = Arc::clone(&gate);
            tasks.push(tokio::spawn(async move {
                sf.run("k".into(), move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    7
                })
                .await
            }));
        }
        // Let every task join the flight, then release it.
        while sf.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.ok(), Some(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }
}
