//! Atlas configuration: one [`Config`], layered defaults → `atlas.toml` → `ATLAS_*` environment
//! → command-line flags (later layers win).
//!
//! The environment and flag layers are the same clap arguments ([`ConfigArgs`]): every `atlas`
//! subcommand takes each setting as a flag, and clap reads the `ATLAS_*` variable when the flag
//! is absent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the config file is looked for when neither `--config` nor `ATLAS_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "atlas.toml";

/// The settings of one Atlas process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Superuser (role-creating) connection, used only by `atlas migrate` and the local stack.
    pub admin_database_url: Option<String>,
    /// The server's login as the non-owner app role `atlas_app`.
    pub database_url: Option<String>,
    /// Streaming replicas for eventual reads.
    pub replica_urls: Vec<String>,
    /// Redis (cache) URL.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, to share one Redis between deployments (default: none).
    pub cache_prefix: String,
    /// Redis Sentinels (`redis://host:port`): when set, the Redis master's address comes from
    /// them (asked again whenever the master stops answering); `redis_url` then supplies only
    /// the credentials and database.
    pub redis_sentinel_urls: Vec<String>,
    /// The master's name at the Sentinels.
    pub redis_master_name: String,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Bearer token of the admin API.
    pub admin_token: Option<String>,
    /// Directory of the private local stack (`atlas stack up`).
    pub stack_dir: PathBuf,
    /// Connections per database pool.
    pub pool_size: usize,
    /// Request limits of the HTTP API.
    pub limits: Limits,
    /// The ingest pipeline.
    pub ingest: Ingest,
    /// The maintainer and its alerts.
    pub maintenance: Maintenance,
    /// Read routing to replicas.
    pub replication: Replication,
    /// Logical CDC (`atlas cdc`) and the analytics store.
    pub cdc: Cdc,
}

/// Logical CDC and the analytics store (`[cdc]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cdc {
    /// The analytics store's database, on the primary's cluster; the server's analytics reads
    /// and the sink use the primary's URLs with this database name. Empty: no analytics store.
    pub analytics_database: String,
    /// The logical replication slot `atlas cdc` reads (created when missing).
    pub slot_name: String,
    /// A batch goes to the sinks after this many change events…
    pub batch_events: usize,
    /// …or this long after the previous one (ms).
    pub batch_interval_ms: u64,
    /// A heartbeat message is written to the WAL this often (ms), so the slot advances and
    /// the lag stays measured on an idle system.
    pub heartbeat_interval_ms: u64,
    /// Directory of the NDJSON sink (one file per table and hour); empty: no NDJSON sink.
    pub ndjson_dir: String,
    /// Reads with consistency `analytics` go to the primary when the store is further behind
    /// than this (ms): the seed's 5-minute budget.
    pub lag_budget_ms: i64,
    /// Days of change history (`cdc.change_events`) the analytics store keeps; 0 keeps all.
    pub history_retention_days: u32,
    /// Seconds between prunes of the analytics store (history retention, and time-series
    /// rows the primary's retention dropped).
    pub prune_interval_s: u64,
}

impl Default for Cdc {
    fn default() -> Self {
        Self {
            analytics_database: "atlas_analytics".into(),
            slot_name: "atlas_cdc".into(),
            batch_events: 10_000,
            batch_interval_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            ndjson_dir: String::new(),
            lag_budget_ms: 300_000,
            history_retention_days: 0,
            prune_interval_s: 300,
        }
    }
}

/// Read routing (`[replication]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// Consistency of reads that do not name one: `strong`, `eventual` or `analytics`.
    pub default_read_consistency: String,
    /// A replica's circuit opens at this heartbeat lag (ms)…
    pub breaker_open_ms: i64,
    /// …and closes again only below this one (ms): the eventual-read budget.
    pub breaker_close_ms: i64,
    /// How often replica lag is measured (ms).
    pub lag_check_interval_ms: u64,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            default_read_consistency: "strong".into(),
            breaker_open_ms: 5_000,
            breaker_close_ms: 3_000,
            lag_check_interval_ms: 1_000,
        }
    }
}

/// Time-series partition width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionInterval {
    /// One partition per month (the seed's default).
    Month,
    /// One partition per day (for high volume; applies from the newest existing partition on).
    Day,
}

/// The maintainer (`[maintenance]` in `atlas.toml`): one leader across servers does the work
/// the seed gives pg_partman and pg_cron, and raises the alerts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maintenance {
    /// Run the maintainer (and heartbeat) inside `atlas serve`.
    pub enabled: bool,
    /// Seconds between maintenance rounds (partitions, retention, BRIN, alerts).
    pub interval_s: u64,
    /// Monthly or daily time-series partitions.
    pub partition_interval: PartitionInterval,
    /// Keep partitions premade this many days ahead (default 62: two months).
    pub premake_days: u32,
    /// Drop time-series partitions whose data is all older than this many days (0: keep all).
    pub retention_days: u32,
    /// Seconds between refreshes of the attribute statistics view.
    pub stats_refresh_s: u64,
    /// Longest wait for a partition's locks when detaching it.
    pub lock_timeout_ms: u32,
    /// Milliseconds between replication heartbeats (well under the 3 s lag budget).
    pub heartbeat_interval_ms: u64,
    /// Alert: staged rows waiting.
    pub alert_backlog_rows: i64,
    /// Alert: seconds the oldest staged row has waited.
    pub alert_staged_age_s: f64,
    /// Alert: replica lag in seconds.
    pub alert_replica_lag_s: f64,
    /// Alert: WAL bytes a replication slot retains.
    pub alert_slot_retained_bytes: i64,
    /// Alert: seconds a replication slot may stay without its consumer (an inactive slot
    /// holds back vacuum and retains WAL until it is lost).
    pub alert_slot_inactive_s: f64,
    /// Alert: transaction-id age of the database.
    pub alert_xid_age: i64,
    /// Alert: Redis hit rate below this fraction.
    pub alert_cache_hit_rate: f64,
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_s: 30,
            partition_interval: PartitionInterval::Month,
            premake_days: 62,
            retention_days: 0,
            stats_refresh_s: 3_600,
            lock_timeout_ms: 2_000,
            heartbeat_interval_ms: 1_000,
            alert_backlog_rows: 1_000_000,
            alert_staged_age_s: 60.0,
            alert_replica_lag_s: 5.0,
            alert_slot_retained_bytes: 1 << 30,
            alert_slot_inactive_s: 300.0,
            alert_xid_age: 500_000_000,
            alert_cache_hit_rate: 0.9,
        }
    }
}

/// The ingest pipeline (`[ingest]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    /// A batch is written when it holds this many values…
    pub batch_rows: usize,
    /// …or this many milliseconds after its first request arrived (the seed's 100 ms).
    pub batch_interval_ms: u64,
    /// Values that may wait in memory; beyond that requests get 503.
    pub queue_rows: usize,
    /// Batches written concurrently, each on its own connection.
    pub writers: usize,
}

impl Default for Ingest {
    fn default() -> Self {
        Self {
            batch_rows: 5_000,
            batch_interval_ms: 100,
            queue_rows: 200_000,
            writers: 3,
        }
    }
}

/// Request limits of the HTTP API (`[limits]` in `atlas.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most values in one telemetry request.
    pub max_values_per_request: usize,
    /// Most entities registered by one request.
    pub max_entities_per_request: usize,
    /// Largest page a list or search may ask for.
    pub max_page_size: i64,
    /// Page size when none is asked for.
    pub default_page_size: i64,
    /// Longest time range of a series or aggregate query, in days.
    pub max_time_range_days: i64,
    /// How far in the future a telemetry `ts` may be, in seconds (clock skew allowance).
    pub max_future_skew_s: i64,
    /// Sustained requests per second per tenant (token bucket refill rate; 429 above).
    pub rate_per_second: f64,
    /// Burst size of the per-tenant token bucket.
    pub rate_burst: f64,
    /// Sustained telemetry values per second per tenant (a telemetry request is charged per
    /// value, besides its one request; 429 above). Per server.
    pub telemetry_values_per_second: f64,
    /// Burst of telemetry values per tenant (at least `max_values_per_request`).
    pub telemetry_values_burst: f64,
    /// How long a looked-up API key is trusted before it is read again, in milliseconds
    /// (a revocation made on another server takes effect within this time).
    pub key_cache_ttl_ms: u64,
    /// How long an entity confirmed as one of a tenant's live entities is trusted by the
    /// telemetry route, in milliseconds (0: ask the database on every request). An entity
    /// deleted on another server meanwhile gets 409 (values refused, dead-lettered) instead of
    /// 404; deleted on the same server, 404 at once.
    pub entity_cache_ttl_ms: u64,
    /// Longest a request may take before it is answered 503 with `Retry-After`, in
    /// milliseconds (its database work is cancelled with it).
    pub request_timeout_ms: u64,
    /// Browser origins allowed by CORS (e.g. `https://dashboard.example.com`, or `*`); empty
    /// (the default) answers no preflight and adds no CORS header.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_values_per_request: 10_000,
            max_entities_per_request: 1_000,
            max_page_size: 1_000,
            default_page_size: 100,
            max_time_range_days: 31,
            max_future_skew_s: 300,
            rate_per_second: 500.0,
            rate_burst: 1_000.0,
            telemetry_values_per_second: 100_000.0,
            telemetry_values_burst: 200_000.0,
            key_cache_ttl_ms: 5_000,
            entity_cache_ttl_ms: 60_000,
            request_timeout_ms: 30_000,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_database_url: None,
            database_url: None,
            replica_urls: Vec::new(),
            redis_url: None,
            cache_prefix: String::new(),
            redis_sentinel_urls: Vec::new(),
            redis_master_name: "atlas".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            stack_dir: PathBuf::from(".atlas"),
            pool_size: 16,
            limits: Limits::default(),
            ingest: Ingest::default(),
            maintenance: Maintenance::default(),
            replication: Replication::default(),
            cdc: Cdc::default(),
        }
    }
}

/// Whether `s` may stand in an HTTP header (visible ASCII).
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file exists but could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Config`]; the message names line and column.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with the offending line.
        source: toml::de::Error,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid setting `{field}`: {message}")]
    Invalid {
        /// The setting's name as written in `atlas.toml`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The environment and flag layer: each field is a flag that falls back to its `ATLAS_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Config file (default: ./atlas.toml when present).
    #[arg(long, global = true, env = "ATLAS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Superuser connection for migrations and the local stack.
    #[arg(
        long,
        global = true,
        env = "ATLAS_ADMIN_DATABASE_URL",
        hide_env_values = true
    )]
    pub admin_database_url: Option<String>,
    /// The server's connection as atlas_app.
    #[arg(
        long,
        global = true,
        env = "ATLAS_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Comma-separated replica connection URLs.
    #[arg(
        long,
        global = true,
        env = "ATLAS_REPLICA_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub replica_urls: Option<Vec<String>>,
    /// Redis URL.
    #[arg(long, global = true, env = "ATLAS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, global = true, env = "ATLAS_CACHE_PREFIX")]
    pub cache_prefix: Option<String>,
    /// Comma-separated Redis Sentinel URLs.
    #[arg(
        long,
        global = true,
        env = "ATLAS_REDIS_SENTINEL_URLS",
        value_delimiter = ','
    )]
    pub redis_sentinel_urls: Option<Vec<String>>,
    /// HTTP listen address, e.g. 127.0.0.1:8080.
    #[arg(long, global = true, env = "ATLAS_LISTEN")]
    pub listen: Option<String>,
    /// Admin API bearer token.
    #[arg(long, global = true, env = "ATLAS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Local stack directory.
    #[arg(long, global = true, env = "ATLAS_STACK_DIR")]
    pub stack_dir: Option<PathBuf>,
    /// Connections per database pool.
    #[arg(long, global = true, env = "ATLAS_POOL_SIZE")]
    pub pool_size: Option<usize>,
}

impl Config {
    /// Parses a TOML document (the `atlas.toml` layer) over the defaults.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads all layers: defaults, the config file (the named one must exist; the default
    /// `atlas.toml` is optional), then environment and flags from `args`.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let (path, required) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml(&text, &path)?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        config.apply(args)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies the environment/flag layer on top of this config.
    pub fn apply(&mut self, args: &ConfigArgs) -> Result<(), ConfigError> {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        if args.admin_database_url.is_some() {
            self.admin_database_url.clone_from(&args.admin_database_url);
        }
        if args.database_url.is_some() {
            self.database_url.clone_from(&args.database_url);
        }
        if args.redis_url.is_some() {
            self.redis_url.clone_from(&args.redis_url);
        }
        if args.admin_token.is_some() {
            self.admin_token.clone_from(&args.admin_token);
        }
        if let Some(urls) = &args.replica_urls {
            self.replica_urls = urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
        }
        if let Some(listen) = &args.listen {
            self.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                field: "listen",
                message: format!("`{listen}` is not an address like 127.0.0.1:8080 ({e})"),
            })?;
        }
        set(&mut self.cache_prefix, &args.cache_prefix);
        if let Some(urls) = &args.redis_sentinel_urls {
            self.redis_sentinel_urls = urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
        }
        set(&mut self.stack_dir, &args.stack_dir);
        set(&mut self.pool_size, &args.pool_size);
        Ok(())
    }

    /// Checks values that every command relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_size == 0 || self.pool_size > 1000 {
            return Err(ConfigError::Invalid {
                field: "pool_size",
                message: format!("must be between 1 and 1000, got {}", self.pool_size),
            });
        }
        let l = &self.limits;
        let checks: [(&'static str, bool); 9] = [
            (
                "limits.telemetry_values_per_second",
                l.telemetry_values_per_second > 0.0
                    && l.telemetry_values_burst.is_finite()
                    && l.telemetry_values_burst >= l.max_values_per_request as f64,
            ),
            ("limits.max_body_bytes", l.max_body_bytes >= 1024),
            (
                "limits.request_timeout_ms",
                (100..=3_600_000).contains(&l.request_timeout_ms),
            ),
            (
                "limits.cors_allowed_origins",
                l.cors_allowed_origins.iter().all(|o| {
                    o == "*"
                        || ((o.starts_with("http://") || o.starts_with("https://"))
                            && !o.ends_with('/')
                            && header_safe(o))
                }),
            ),
            (
                "limits.max_values_per_request",
                l.max_values_per_request >= 1,
            ),
            (
                "limits.max_entities_per_request",
                l.max_entities_per_request >= 1,
            ),
            (
                "limits.max_page_size",
                l.max_page_size >= 1
                    && l.default_page_size >= 1
                    && l.default_page_size <= l.max_page_size,
            ),
            ("limits.max_time_range_days", l.max_time_range_days >= 1),
            (
                "limits.rate_per_second",
                l.rate_per_second > 0.0 && l.rate_burst >= 1.0,
            ),
        ];
        let i = &self.ingest;
        let ingest_checks: [(&'static str, bool); 4] = [
            ("ingest.batch_rows", i.batch_rows >= 1),
            (
                "ingest.batch_interval_ms",
                (1..=10_000).contains(&i.batch_interval_ms),
            ),
            ("ingest.queue_rows", i.queue_rows >= i.batch_rows),
            ("ingest.writers", (1..=64).contains(&i.writers)),
        ];
        let r = &self.replication;
        if !["strong", "eventual", "analytics"].contains(&r.default_read_consistency.as_str()) {
            return Err(ConfigError::Invalid {
                field: "replication.default_read_consistency",
                message: "must be strong, eventual or analytics".into(),
            });
        }
        if r.breaker_close_ms <= 0 || r.breaker_close_ms > r.breaker_open_ms {
            return Err(ConfigError::Invalid {
                field: "replication.breaker_close_ms",
                message: "must be above 0 and at most breaker_open_ms".into(),
            });
        }
        if !(50..=60_000).contains(&r.lag_check_interval_ms) {
            return Err(ConfigError::Invalid {
                field: "replication.lag_check_interval_ms",
                message: "must be between 50 and 60000".into(),
            });
        }
        let c = &self.cdc;
        let slot_ok = !c.slot_name.is_empty()
            && c.slot_name.len() <= 63
            && c.slot_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let cdc_checks: [(&'static str, bool); 8] = [
            ("cdc.slot_name", slot_ok),
            ("cdc.analytics_database", c.analytics_database.len() <= 63),
            (
                "cdc.batch_events",
                (1..=1_000_000).contains(&c.batch_events),
            ),
            (
                "cdc.batch_interval_ms",
                (10..=600_000).contains(&c.batch_interval_ms),
            ),
            (
                "cdc.heartbeat_interval_ms",
                (100..=600_000).contains(&c.heartbeat_interval_ms),
            ),
            ("cdc.lag_budget_ms", c.lag_budget_ms >= 1),
            (
                "cdc.prune_interval_s",
                (1..=86_400).contains(&c.prune_interval_s),
            ),
            (
                "cdc.history_retention_days",
                c.history_retention_days <= 36_500,
            ),
        ];
        if let Some((field, _)) = cdc_checks.iter().find(|(_, ok)| !ok) {
            return Err(ConfigError::Invalid {
                field,
                message: "out of range (see README: CDC; slot names are [a-z0-9_], at most 63)"
                    .into(),
            });
        }
        let m = &self.maintenance;
        let maintenance_checks: [(&'static str, bool); 7] = [
            (
                "maintenance.interval_s",
                (1..=86_400).contains(&m.interval_s),
            ),
            (
                "maintenance.premake_days",
                (1..=3_650).contains(&m.premake_days),
            ),
            ("maintenance.stats_refresh_s", m.stats_refresh_s >= 1),
            (
                "maintenance.lock_timeout_ms",
                (1..=60_000).contains(&m.lock_timeout_ms),
            ),
            (
                "maintenance.heartbeat_interval_ms",
                (50..=60_000).contains(&m.heartbeat_interval_ms),
            ),
            (
                "maintenance.alert_cache_hit_rate",
                (0.0..=1.0).contains(&m.alert_cache_hit_rate),
            ),
            (
                "maintenance.alert_slot_inactive_s",
                (0.0..=31_536_000.0).contains(&m.alert_slot_inactive_s),
            ),
        ];
        if let Some((field, _)) = checks
            .iter()
            .chain(ingest_checks.iter())
            .chain(maintenance_checks.iter())
            .find(|(_, ok)| !ok)
        {
            return Err(ConfigError::Invalid {
                field,
                message: "out of range (see README: Limits)".into(),
            });
        }
        if let Some(token) = &self.admin_token
            && token.len() < 16
        {
            return Err(ConfigError::Invalid {
                field: "admin_token",
                message: "must be at least 16 characters".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_layer_overrides_defaults_and_args_override_file() {
        let file = Config::from_toml(
            "database_url = \"postgres://file\"\nreplica_urls = [\"postgres://r1\"]\nlisten = \"127.0.0.1:9000\"\n",
            Path::new("atlas.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.database_url.as_deref(), Some("postgres://file"));
        assert_eq!(file.pool_size, Config::default().pool_size);

        let mut config = file;
        let args = ConfigArgs {
            database_url: Some("postgres://env".into()),
            replica_urls: Some(vec![
                "postgres://a".into(),
                " postgres://b ".into(),
                String::new(),
            ]),
            ..ConfigArgs::default()
        };
        config.apply(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.database_url.as_deref(), Some("postgres://env"));
        assert_eq!(config.replica_urls, vec!["postgres://a", "postgres://b"]);
        assert_eq!(config.listen.port(), 9000);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let err = Config::from_toml("databse_url = \"x\"\n", Path::new("atlas.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("databse_url"), "{err}");

        let mut config = Config::default();
        let args = ConfigArgs {
            listen: Some("not-an-address".into()),
            ..ConfigArgs::default()
        };
        let err = config
            .apply(&args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`listen`"), "{err}");

        let config = Config {
            pool_size: 0,
            ..Config::default()
        };
        let err = config
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("pool_size"), "{err}");
    }

    #[test]
    fn ingest_settings_are_read_and_checked() {
        let config = Config::from_toml(
            "[ingest]\nbatch_interval_ms = 25\nwriters = 2\n",
            Path::new("atlas.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                config.ingest.batch_interval_ms,
                config.ingest.writers,
                config.ingest.batch_rows
            ),
            (25, 2, 5_000)
        );
        assert!(config.validate().is_ok());
        let bad = Config::from_toml("[ingest]\nwriters = 0\n", Path::new("atlas.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ingest.writers"), "{err}");
        let err = Config::from_toml("[ingest]\nwritter = 1\n", Path::new("atlas.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("writter"), "{err}");
    }

    #[test]
    fn maintenance_and_replication_settings_are_read_and_checked() {
        let config = Config::from_toml(
            "[maintenance]\npartition_interval = \"day\"\nretention_days = 90\n\
             [replication]\ndefault_read_consistency = \"eventual\"\n",
            Path::new("atlas.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.maintenance.partition_interval,
            PartitionInterval::Day
        );
        assert_eq!(config.maintenance.retention_days, 90);
        assert_eq!(config.replication.default_read_consistency, "eventual");
        assert!(config.validate().is_ok());
        for (toml, field) in [
            ("[maintenance]\ninterval_s = 0\n", "maintenance.interval_s"),
            (
                "[maintenance]\nalert_cache_hit_rate = 1.5\n",
                "maintenance.alert_cache_hit_rate",
            ),
            (
                "[maintenance]\nheartbeat_interval_ms = 10\n",
                "maintenance.heartbeat_interval_ms",
            ),
            (
                "[maintenance]\nalert_slot_inactive_s = -1.0\n",
                "maintenance.alert_slot_inactive_s",
            ),
            (
                "[replication]\ndefault_read_consistency = \"sometimes\"\n",
                "replication.default_read_consistency",
            ),
            (
                "[replication]\nbreaker_close_ms = 6000\n",
                "replication.breaker_close_ms",
            ),
            (
                "[replication]\nlag_check_interval_ms = 1\n",
                "replication.lag_check_interval_ms",
            ),
        ] {
            let err = Config::from_toml(toml, Path::new("atlas.toml"))
                .unwrap_or_else(|e| panic!("{e}"))
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(field), "{toml}: {err}");
        }
        let err = Config::from_toml(
            "[maintenance]\npartition_interval = \"week\"\n",
            Path::new("atlas.toml"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("partition_interval"), "{err}");
    }

    #[test]
    fn cdc_settings_are_read_and_checked() {
        let config = Config::from_toml(
            "[cdc]\nslot_name = \"fleet_cdc\"\nbatch_events = 500\nndjson_dir = \"/tmp/cdc\"\n",
            Path::new("atlas.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cdc.slot_name, "fleet_cdc");
        assert_eq!(config.cdc.batch_events, 500);
        assert_eq!(config.cdc.ndjson_dir, "/tmp/cdc");
        assert_eq!(config.cdc.batch_interval_ms, 30_000);
        assert!(config.validate().is_ok());
        for (toml, field) in [
            ("[cdc]\nslot_name = \"Bad-Slot\"\n", "cdc.slot_name"),
            ("[cdc]\nslot_name = \"\"\n", "cdc.slot_name"),
            ("[cdc]\nbatch_events = 0\n", "cdc.batch_events"),
            ("[cdc]\nbatch_interval_ms = 1\n", "cdc.batch_interval_ms"),
            (
                "[cdc]\nheartbeat_interval_ms = 5\n",
                "cdc.heartbeat_interval_ms",
            ),
            ("[cdc]\nlag_budget_ms = 0\n", "cdc.lag_budget_ms"),
            ("[cdc]\nprune_interval_s = 0\n", "cdc.prune_interval_s"),
            (
                "[cdc]\nhistory_retention_days = 40000\n",
                "cdc.history_retention_days",
            ),
        ] {
            let err = Config::from_toml(toml, Path::new("atlas.toml"))
                .unwrap_or_else(|e| panic!("{e}"))
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn named_config_file_must_exist() {
        let args = ConfigArgs {
            config: Some(PathBuf::from("/nonexistent/atlas.toml")),
            ..ConfigArgs::default()
        };
        assert!(matches!(Config::load(&args), Err(ConfigError::Read { .. })));
    }
}
