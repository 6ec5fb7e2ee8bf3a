//! Atlas configuration: one [`Config`], layered defaults → `atlas.toml` → `ATLAS_*` environment
//! → command-line flags (later layers win).
//!
//! Each section is a type in its own module, with its `Default` and a `validate()` whose
//! message names the allowed range. Every key of a section can be set from the environment as
//! `ATLAS_<SECTION>__<KEY>` (e.g. `ATLAS_INGEST__WRITERS=4`), typed by the key's own type; the
//! top-level settings are clap arguments ([`ConfigArgs`]): every `atlas` subcommand takes each
//! as a flag, and clap reads its `ATLAS_*` variable when the flag is absent.

mod cdc;
pub mod duration;
mod ingest;
mod lifecycle;
mod limits;
mod maintenance;
mod replication;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cdc::Cdc;
pub use ingest::Ingest;
pub use lifecycle::{Lifecycle, MAX_RETENTION_DAYS};
pub use limits::Limits;
pub use maintenance::{Maintenance, PartitionInterval};
pub use replication::{ReadConsistency, Replication};

/// Where the config file is looked for when neither `--config` nor `ATLAS_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "atlas.toml";

/// The settings of one Atlas process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// Retention of rollups and dead letters, and default tenant quotas.
    pub lifecycle: Lifecycle,
    /// Read routing to replicas.
    pub replication: Replication,
    /// Logical CDC (`atlas cdc`) and the analytics store.
    pub cdc: Cdc,
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
            lifecycle: Lifecycle::default(),
            replication: Replication::default(),
            cdc: Cdc::default(),
        }
    }
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
    /// An `ATLAS_<SECTION>__<KEY>` variable names no setting or holds a value of the wrong type.
    #[error("environment variable {variable}: {message}")]
    Env {
        /// The variable.
        variable: String,
        /// What is wrong with it.
        message: String,
    },
}

/// `Ok` when `ok`, else [`ConfigError::Invalid`] saying the value must be `allowed`.
pub(crate) fn require(field: &'static str, ok: bool, allowed: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            message: format!("must be {allowed}"),
        })
    }
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
        Self::from_layers(text, path, std::iter::empty())
    }

    /// Parses a TOML document with `ATLAS_<SECTION>__<KEY>` variables from `env` over it.
    pub fn from_layers(
        text: &str,
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse = |source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse)?;
        if !overlay_env(&mut table, env)? {
            // From the text itself, so that errors show the offending line.
            return toml::from_str(text).map_err(parse);
        }
        Self::deserialize(toml::Value::Table(table)).map_err(parse)
    }

    /// Loads all layers: defaults, the config file (the named one must exist; the default
    /// `atlas.toml` is optional), `ATLAS_<SECTION>__<KEY>` variables, then the top-level
    /// environment and flags from `args`.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let (path, required) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let mut config = Self::from_layers(&text, &path, std::env::vars())?;
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

    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            "pool_size",
            (1..=1000).contains(&self.pool_size),
            &format!("between 1 and 1000, got {}", self.pool_size),
        )?;
        if let Some(token) = &self.admin_token {
            require("admin_token", token.len() >= 16, "at least 16 characters")?;
        }
        self.limits.validate()?;
        self.ingest.validate()?;
        self.maintenance.validate()?;
        self.lifecycle.validate()?;
        self.replication.validate()?;
        self.cdc.validate()
    }
}

/// The sections a `ATLAS_<SECTION>__<KEY>` variable may name.
const SECTIONS: [&str; 6] = [
    "limits",
    "ingest",
    "maintenance",
    "lifecycle",
    "replication",
    "cdc",
];

/// Sets `[section] key` in `table` from every `ATLAS_<SECTION>__<KEY>` variable, typed like the
/// key's default value: text as is, numbers and booleans parsed, lists comma-separated.
/// Returns whether any variable was set.
fn overlay_env(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<bool, ConfigError> {
    let mut any = false;
    let defaults = toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Env {
        variable: "ATLAS_*".into(),
        message: e.to_string(),
    })?;
    for (variable, raw) in env {
        let Some((section, key)) = variable
            .strip_prefix("ATLAS_")
            .and_then(|rest| rest.split_once("__"))
        else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let fail = |message: String| ConfigError::Env {
            variable: variable.clone(),
            message,
        };
        if !SECTIONS.contains(&section.as_str()) {
            return Err(fail(format!(
                "no section `{section}` (sections: {})",
                SECTIONS.join(", ")
            )));
        }
        let default = defaults
            .get(&section)
            .and_then(|s| s.get(&key))
            .ok_or_else(|| fail(format!("no setting `{key}` in [{section}]")))?;
        let value = typed_like(default, &raw).map_err(fail)?;
        let slot = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match slot.as_table_mut() {
            Some(t) => {
                t.insert(key, value);
                any = true;
            }
            None => {
                return Err(fail(format!(
                    "`{section}` in the config file is not a table"
                )));
            }
        }
    }
    Ok(any)
}

/// `raw` as a TOML value of `default`'s type.
fn typed_like(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    use toml::Value;
    let trimmed = raw.trim();
    match default {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => trimmed
            .parse()
            .map(Value::Integer)
            .map_err(|_| format!("`{raw}` is not an integer")),
        Value::Float(_) => trimmed
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("`{raw}` is not a number")),
        Value::Boolean(_) => trimmed
            .parse()
            .map(Value::Boolean)
            .map_err(|_| format!("`{raw}` is not true or false")),
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        Value::Datetime(_) | Value::Table(_) => Err("cannot be set from the environment".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(toml: &str) -> Config {
        Config::from_toml(toml, Path::new("atlas.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error a document gets, from parsing or from validation.
    fn error_of(toml: &str) -> String {
        Config::from_toml(toml, Path::new("atlas.toml"))
            .and_then(|c| c.validate())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn file_layer_overrides_defaults_and_args_override_file() {
        let file = parse(
            "database_url = \"postgres://file\"\nreplica_urls = [\"postgres://r1\"]\nlisten = \"127.0.0.1:9000\"\n",
        );
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
        assert!(error_of("databse_url = \"x\"\n").contains("databse_url"));

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

        let err = error_of("pool_size = 0\n");
        assert!(
            err.contains("pool_size") && err.contains("between 1 and 1000"),
            "{err}"
        );
    }

    #[test]
    fn every_section_key_is_settable_from_the_environment_with_its_type() {
        let config = Config::from_layers(
            "[ingest]\nwriters = 2\n",
            Path::new("atlas.toml"),
            env(&[
                ("ATLAS_INGEST__WRITERS", "5"),
                ("ATLAS_INGEST__BATCH_INTERVAL_MS", "25"),
                ("ATLAS_LIMITS__RATE_PER_SECOND", "12.5"),
                (
                    "ATLAS_LIMITS__CORS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("ATLAS_MAINTENANCE__ENABLED", "false"),
                ("ATLAS_MAINTENANCE__PARTITION_INTERVAL", "day"),
                ("ATLAS_REPLICATION__DEFAULT_READ_CONSISTENCY", "eventual"),
                ("ATLAS_CDC__SLOT_NAME", "123"),
                ("ATLAS_CDC__ANALYTICS_DATABASE", ""),
                // Not ours to read: no section separator.
                ("ATLAS_DATABASE_URL", "postgres://x"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The environment wins over the file.
        assert_eq!(config.ingest.writers.get(), 5);
        assert_eq!(config.ingest.batch_interval, Duration::from_millis(25));
        assert!((config.limits.rate_per_second - 12.5).abs() < f64::EPSILON);
        assert_eq!(
            config.limits.cors_allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert!(!config.maintenance.enabled);
        assert_eq!(
            config.maintenance.partition_interval,
            PartitionInterval::Day
        );
        assert_eq!(
            config.replication.default_read_consistency,
            ReadConsistency::Eventual
        );
        // A text setting keeps digits as text.
        assert_eq!(config.cdc.slot_name, "123");
        assert_eq!(config.cdc.analytics_database, "");
        assert!(config.validate().is_ok());
        assert_eq!(config.database_url, None, "top-level keys are clap's");

        for (vars, says) in [
            (
                &[("ATLAS_INGEST__WRITERZ", "1")][..],
                "ATLAS_INGEST__WRITERZ",
            ),
            (&[("ATLAS_INGST__WRITERS", "1")][..], "no section `ingst`"),
            (
                &[("ATLAS_INGEST__WRITERS", "many")][..],
                "`many` is not an integer",
            ),
            (&[("ATLAS_INGEST__WRITERS", "0")][..], "writers"),
            (
                &[("ATLAS_MAINTENANCE__ENABLED", "yes")][..],
                "not true or false",
            ),
            (
                &[("ATLAS_REPLICATION__DEFAULT_READ_CONSISTENCY", "sometimes")][..],
                "sometimes",
            ),
        ] {
            let err = Config::from_layers("", Path::new("atlas.toml"), env(vars))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(says), "{vars:?}: {err}");
        }
    }

    #[test]
    fn ingest_settings_are_read_and_checked() {
        let config = parse("[ingest]\nbatch_interval_ms = 25\nwriters = 2\n");
        assert_eq!(
            (
                config.ingest.batch_interval,
                config.ingest.writers.get(),
                config.ingest.batch_rows.get()
            ),
            (Duration::from_millis(25), 2, 5_000)
        );
        assert!(config.validate().is_ok());
        for (toml, says) in [
            ("[ingest]\nwriters = 0\n", "writers"),
            ("[ingest]\nwriters = 65\n", "between 1 and 64"),
            ("[ingest]\nbatch_interval_ms = 0\n", "between 1 and 10000"),
            ("[ingest]\nwritter = 1\n", "writter"),
        ] {
            let err = error_of(toml);
            assert!(err.contains(says), "{toml}: {err}");
        }
    }

    #[test]
    fn maintenance_and_replication_settings_are_read_and_checked() {
        let config = parse(
            "[maintenance]\npartition_interval = \"day\"\nretention_days = 90\nalert_staged_age_s = 1.5\n\
             [replication]\ndefault_read_consistency = \"eventual\"\n",
        );
        assert_eq!(
            config.maintenance.partition_interval,
            PartitionInterval::Day
        );
        assert_eq!(config.maintenance.retention_days, 90);
        assert_eq!(
            config.maintenance.alert_staged_age,
            Duration::from_millis(1500)
        );
        assert_eq!(
            config.replication.default_read_consistency,
            ReadConsistency::Eventual
        );
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
                "alert_slot_inactive_s",
            ),
            (
                "[replication]\ndefault_read_consistency = \"sometimes\"\n",
                "default_read_consistency",
            ),
            (
                "[replication]\nbreaker_close_ms = 6000\n",
                "replication.breaker_close_ms",
            ),
            (
                "[replication]\nlag_check_interval_ms = 1\n",
                "replication.lag_check_interval_ms",
            ),
            (
                "[maintenance]\npartition_interval = \"week\"\n",
                "partition_interval",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn cdc_settings_are_read_and_checked() {
        let config = parse(
            "[cdc]\nslot_name = \"fleet_cdc\"\nbatch_events = 500\nndjson_dir = \"/tmp/cdc\"\n",
        );
        assert_eq!(config.cdc.slot_name, "fleet_cdc");
        assert_eq!(config.cdc.batch_events.get(), 500);
        assert_eq!(config.cdc.ndjson_dir, "/tmp/cdc");
        assert_eq!(config.cdc.batch_interval, Duration::from_secs(30));
        assert!(config.validate().is_ok());
        for (toml, field) in [
            ("[cdc]\nslot_name = \"Bad-Slot\"\n", "cdc.slot_name"),
            ("[cdc]\nslot_name = \"\"\n", "cdc.slot_name"),
            ("[cdc]\nbatch_events = 0\n", "batch_events"),
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
            let err = error_of(toml);
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn limits_say_their_allowed_range() {
        for (toml, says) in [
            ("[limits]\nmax_body_bytes = 10\n", "limits.max_body_bytes"),
            (
                "[limits]\nrequest_timeout_ms = 5\n",
                "between 100 and 3600000",
            ),
            (
                "[limits]\ndefault_page_size = 5000\n",
                "between 1 and max_page_size",
            ),
            (
                "[limits]\ncors_allowed_origins = [\"https://a.example/\"]\n",
                "no trailing slash",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(says), "{toml}: {err}");
        }
    }

    #[test]
    fn failover_settings_say_their_allowed_range() {
        let config = parse(
            "[ingest]\nretry_unavailable_ms = 0\ncommit_timeout_ms = 2500\n\
             [replication]\npatroni_urls = [\"http://10.0.0.1:8008\"]\n",
        );
        assert_eq!(config.ingest.retry_unavailable, Duration::ZERO);
        assert_eq!(config.ingest.commit_timeout, Duration::from_millis(2500));
        assert!(config.validate().is_ok());
        for (toml, says) in [
            (
                "[ingest]\nretry_unavailable_ms = 120001\n",
                "ingest.retry_unavailable_ms",
            ),
            (
                "[ingest]\ncommit_timeout_ms = 99\n",
                "between 100 and 600000",
            ),
            (
                "[replication]\npatroni_urls = [\"10.0.0.1:8008\"]\n",
                "replication.patroni_urls",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(says), "{toml}: {err}");
        }
    }

    /// A default as README's tables write it: numbers plain, text quoted, lists `[]`.
    fn shown(value: &toml::Value) -> String {
        match value {
            toml::Value::String(s) => format!("\"{s}\""),
            toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) if a.is_empty() => "[]".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn readme_lists_every_setting_with_its_default() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap_or_else(|e| panic!("README.md: {e}"));
        let defaults = toml::Value::try_from(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let table = |value: &toml::Value| value.as_table().cloned().unwrap_or_default();
        // Top level: the settings table names every key.
        let config_section = readme
            .split("\n## Configuration")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .unwrap_or_else(|| panic!("README has no Configuration section"));
        // Unset options serialize to nothing: name them.
        let mut keys: Vec<String> = Vec::new();
        keys.extend(
            [
                "admin_database_url",
                "database_url",
                "redis_url",
                "admin_token",
            ]
            .iter()
            .map(|k| (*k).to_owned()),
        );
        keys.extend(
            table(&defaults)
                .iter()
                .filter(|(k, v)| !v.is_table() && !SECTIONS.contains(&k.as_str()))
                .map(|(k, _)| k.clone()),
        );
        for key in keys {
            assert!(
                config_section.contains(&format!("| `{key}` |")),
                "README's settings table lacks `{key}`"
            );
        }
        // Sections: each `[section]` table lists every key with its default.
        for section in SECTIONS {
            let marker = format!("`[{section}]` in `atlas.toml` (defaults shown)");
            let text = readme
                .split(&marker)
                .nth(1)
                .and_then(|rest| rest.split("\n#").next())
                .unwrap_or_else(|| panic!("README lacks {marker}"));
            let mut listed: Vec<(String, String)> = Vec::new();
            for row in text.lines().filter(|l| l.starts_with("| `")) {
                let cells: Vec<&str> = row.split(" | ").collect();
                let names: Vec<String> = cells[0]
                    .trim_start_matches("| ")
                    .split(" / ")
                    .map(|k| k.trim_matches('`').to_owned())
                    .collect();
                let values: Vec<&str> = cells.get(1).map_or(vec![], |v| v.split(" / ").collect());
                assert_eq!(names.len(), values.len(), "README [{section}]: {row}");
                for (name, value) in names.into_iter().zip(values) {
                    listed.push((name, value.trim_matches('`').to_owned()));
                }
            }
            let section_defaults = table(&defaults[section]);
            for (key, value) in &section_defaults {
                let row = listed.iter().find(|(k, _)| k == key);
                assert_eq!(
                    row.map(|(_, v)| v.as_str()),
                    Some(shown(value).as_str()),
                    "README [{section}] `{key}`: default"
                );
            }
            for (key, _) in &listed {
                assert!(
                    section_defaults.contains_key(key),
                    "README [{section}] lists `{key}`, which is no setting"
                );
            }
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
