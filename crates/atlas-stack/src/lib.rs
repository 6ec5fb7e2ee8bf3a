//! Private local services for Atlas, all under one directory: a PostgreSQL 15 primary
//! (`wal_level = logical`), one streaming replica made with `pg_basebackup -R`, and a Redis
//! configured as the seed says (LRU cache, no persistence). Used by `atlas stack` and by the
//! test kit, so developers, tests and CI run the same services.
//!
//! Never touches the machine's default clusters or ports: everything listens on 127.0.0.1 on
//! the ports of a [`StackSpec`], with data under its directory. Missing packages are installed
//! with apt when running as root (without creating Debian's default cluster or starting
//! services), otherwise the exact command is reported.

mod citus;
mod error;
mod ha;
mod packages;
mod process;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use citus::{CITUS_BUILD_ENV, CitusInstall, citus_installed, install as install_citus};
pub use error::StackError;
pub use ha::{
    HaMember, HaNode, HaSpec, HaStack, HaStatus, LOOP_WAIT_S, RETRY_TIMEOUT_S, SCOPE, TTL_S,
};
pub use packages::{ensure_ha_packages, ensure_packages, missing_packages};
use process::{Cmd, is_root};

/// Where PostgreSQL 15's server programs live on Debian.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The database Atlas uses in the local stack (spelled out in the stack's SQL literals too).
pub const DATABASE: &str = "atlas";
/// Name of the replica's physical replication slot on the primary.
pub const REPLICA_SLOT: &str = "atlas_replica_1";

/// Which directory and ports a stack uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    /// Root directory (state file, logs, Redis data; PostgreSQL data when reachable).
    pub dir: PathBuf,
    /// Primary PostgreSQL port.
    pub pg_port: u16,
    /// Replica PostgreSQL port.
    pub replica_port: u16,
    /// Redis port.
    pub redis_port: u16,
    /// fsync on (developer/bench stacks) or off (test stacks: faster, still crash-safe for a
    /// process kill or an immediate PostgreSQL stop, only not for an OS crash).
    pub durable: bool,
    /// Ports of Citus workers. Empty: a single-node stack. Otherwise every node loads Citus,
    /// the primary is the coordinator and these workers are registered with it.
    pub workers: Vec<u16>,
}

impl StackSpec {
    /// The developer stack (`atlas stack up`): ports 54329/54330/63790.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pg_port: 54329,
            replica_port: 54330,
            redis_port: 63790,
            durable: true,
            workers: Vec::new(),
        }
    }

    /// The developer Citus stack (`atlas stack up --citus`): coordinator 54337 (its streaming
    /// replica 54338), workers 54339 and 54340, Redis 63820.
    pub fn citus_local(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pg_port: 54337,
            replica_port: 54338,
            redis_port: 63820,
            durable: true,
            workers: vec![54339, 54340],
        }
    }

    /// The test suite's Citus stack: coordinator 61443 (replica 61444), workers 61445 and
    /// 61446, Redis 63830; 61447 is left free for a worker a test adds.
    pub fn citus_test(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pg_port: 61443,
            replica_port: 61444,
            redis_port: 63830,
            durable: false,
            workers: vec![61445, 61446],
        }
    }

    /// Whether this is a Citus stack.
    pub fn is_citus(&self) -> bool {
        !self.workers.is_empty()
    }

    /// The same spec with an absolute directory (services chdir; paths must not depend on ours).
    fn absolute(&self) -> Result<Self, StackError> {
        Ok(Self {
            dir: std::path::absolute(&self.dir).map_err(io(&self.dir))?,
            ..self.clone()
        })
    }

    /// The test stack: its own ports (61439/61440/63800) so it runs beside a developer stack.
    /// Above Linux's ephemeral range (32768-60999), where no client connection can hold them.
    pub fn test(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pg_port: 61439,
            replica_port: 61440,
            redis_port: 63800,
            durable: false,
            workers: Vec::new(),
        }
    }
}

/// Stops the Redis process named by `<dir>/<name>/<name>.pid`, if it still runs and is a
/// Redis (a stale pidfile may name a reused pid), and removes the pidfile.
pub(crate) fn stop_redis_by_pidfile(dir: &Path, name: &str) {
    let pidfile = dir.join(name).join(format!("{name}.pid"));
    let Ok(pid) = fs::read_to_string(&pidfile) else {
        return;
    };
    let pid = pid.trim();
    // A running (not zombie) process whose name starts with "redis".
    let running_redis = || {
        pid.bytes().all(|b| b.is_ascii_digit())
            && fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let mut fields = stat.split_whitespace().skip(1);
                let name_is_redis = fields.next().is_some_and(|n| n.starts_with("(redis"));
                name_is_redis && fields.next() != Some("Z")
            })
    };
    if running_redis() {
        let _ = Cmd::new("kill").arg(pid).output_quiet();
        let _ = wait_for(Duration::from_secs(5), || !running_redis());
    }
    let _ = fs::remove_file(&pidfile);
}

/// Secrets and locations chosen at the first `up`, kept in `<dir>/stack.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StackState {
    pg_root: PathBuf,
    admin_password: String,
    app_password: String,
    redis_password: String,
    /// The ports the stack was created with (they win over a later spec's).
    #[serde(default)]
    ports: Option<(u16, u16, u16)>,
    /// The replication login of an HA stack's nodes (Patroni creates it).
    #[serde(default = "random_secret")]
    replication_password: String,
}

/// A stack that is (or was) brought up: how to reach each service.
#[derive(Debug, Clone)]
pub struct Stack {
    spec: StackSpec,
    state: StackState,
}

/// Connection URLs of a running stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackUrls {
    /// Superuser connection to the `atlas` database (migrations, admin).
    pub admin_database_url: String,
    /// `atlas_app` connection to the primary.
    pub database_url: String,
    /// `atlas_app` connections to the replicas.
    pub replica_urls: Vec<String>,
    /// Redis (the primary).
    pub redis_url: String,
    /// The Redis Sentinel watching the primary and its replica (master name `atlas`).
    pub redis_sentinel_urls: Vec<String>,
}

/// Whether each service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackStatus {
    /// Primary accepts connections.
    pub primary: bool,
    /// Replica accepts connections.
    pub replica: bool,
    /// Redis answers PING.
    pub redis: bool,
    /// The Redis replica answers PING.
    pub redis_replica: bool,
    /// The Sentinel answers PING.
    pub sentinel: bool,
    /// Each Citus worker (in the spec's order) accepts connections.
    pub workers: Vec<bool>,
}

impl StackStatus {
    /// True when every service answers.
    pub fn all_up(&self) -> bool {
        self.primary
            && self.replica
            && self.redis
            && self.redis_replica
            && self.sentinel
            && self.workers.iter().all(|w| *w)
    }
}

pub(crate) fn random_secret() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StackError + '_ {
    move |source| StackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Stack {
    /// The stack recorded in `spec.dir`, if `up` ever ran there.
    pub fn open(spec: &StackSpec) -> Result<Option<Self>, StackError> {
        let spec = &spec.absolute()?;
        let path = spec.dir.join("stack.json");
        match fs::read_to_string(&path) {
            Ok(text) => {
                let state: StackState =
                    serde_json::from_str(&text).map_err(|e| StackError::State {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let mut spec = spec.clone();
                if let Some((pg, replica, redis)) = state.ports {
                    (spec.pg_port, spec.replica_port, spec.redis_port) = (pg, replica, redis);
                }
                Ok(Some(Self { spec, state }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Brings every service up; idempotent (a running service is left as it is).
    pub fn up(spec: &StackSpec) -> Result<Self, StackError> {
        ensure_packages()?;
        if spec.is_citus() {
            citus::ensure_installed()?;
        }
        let stack = Self::prepare(spec)?;
        stack.up_primary()?;
        for (i, port) in stack.spec.workers.iter().enumerate() {
            stack.up_server(&stack.worker_dir(i), *port, &format!("worker{}", i + 1))?;
        }
        if stack.spec.is_citus() {
            stack.citus_setup(DATABASE)?;
        }
        stack.up_replica()?;
        stack.up_redis()?;
        Ok(stack)
    }

    /// The stack recorded in `spec.dir`, or a new one (secrets chosen, state saved) with
    /// nothing started yet.
    pub(crate) fn prepare(spec: &StackSpec) -> Result<Self, StackError> {
        let spec = &spec.absolute()?;
        fs::create_dir_all(spec.dir.join("logs")).map_err(io(&spec.dir))?;
        let stack = match Self::open(spec)? {
            Some(s) => s,
            None => {
                let state = StackState {
                    pg_root: choose_pg_root(&spec.dir)?,
                    admin_password: random_secret(),
                    app_password: random_secret(),
                    redis_password: random_secret(),
                    replication_password: random_secret(),
                    ports: Some((spec.pg_port, spec.replica_port, spec.redis_port)),
                };
                let s = Self {
                    spec: spec.clone(),
                    state,
                };
                s.save_state()?;
                s
            }
        };
        Ok(stack)
    }

    /// Stops every service (fast shutdown); with `purge`, deletes all data too.
    pub fn down(spec: &StackSpec, purge: bool) -> Result<(), StackError> {
        let Some(stack) = Self::open(spec)? else {
            return Ok(());
        };
        // The Sentinel first (it would fail the primary over), then the replica, the primary.
        stop_redis_by_pidfile(&spec.dir, "sentinel");
        for port in [spec.redis_port + 1, spec.redis_port] {
            let _ = Cmd::new("redis-cli")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "--no-auth-warning",
                ])
                .args(["-a", &stack.state.redis_password, "shutdown", "nosave"])
                .output_quiet();
        }
        // A stack started on other ports than `spec` names (the tests' private stacks: the
        // ports are not kept in stack.json) still has its pidfiles.
        for name in ["redis-replica", "redis"] {
            stop_redis_by_pidfile(&spec.dir, name);
        }
        let workers = (0..spec.workers.len()).map(|i| stack.worker_dir(i));
        // Extra workers a test or a user added (`worker-<port>`).
        let extra: Vec<PathBuf> = fs::read_dir(&stack.state.pg_root)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("worker-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let servers: Vec<PathBuf> = [stack.replica_dir(), stack.primary_dir()]
            .into_iter()
            .chain(workers)
            .chain(extra)
            .collect();
        for data in servers {
            if data.join("postmaster.pid").exists() {
                stack
                    .pg(&format!("{PG_BIN}/pg_ctl"))
                    .args([
                        "-D",
                        &data.to_string_lossy(),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "60",
                        "stop",
                    ])
                    .run("stopping PostgreSQL")?;
            }
        }
        if purge {
            if stack.state.pg_root != spec.dir.join("pg") {
                fs::remove_dir_all(&stack.state.pg_root)
                    .or_else(ignore_missing(&stack.state.pg_root))?;
            }
            fs::remove_dir_all(&spec.dir).or_else(ignore_missing(&spec.dir))?;
        }
        Ok(())
    }

    /// Which services answer now.
    pub fn status(&self) -> StackStatus {
        StackStatus {
            primary: self.pg_ready(self.spec.pg_port),
            replica: self.pg_ready(self.spec.replica_port),
            redis: self.redis_ping(),
            redis_replica: self.ping_port(self.redis_replica_port(), true),
            sentinel: self.ping_port(self.sentinel_port(), false),
            workers: self
                .spec
                .workers
                .iter()
                .map(|p| self.pg_ready(*p))
                .collect(),
        }
    }

    /// How to reach the services.
    pub fn urls(&self) -> StackUrls {
        self.urls_for(DATABASE)
    }

    /// How to reach the services, for another database of the same cluster.
    pub fn urls_for(&self, database: &str) -> StackUrls {
        let pg = |user: &str, password: &str, port: u16| {
            format!("postgres://{user}:{password}@127.0.0.1:{port}/{database}")
        };
        StackUrls {
            admin_database_url: pg("postgres", &self.state.admin_password, self.spec.pg_port),
            database_url: pg("atlas_app", &self.state.app_password, self.spec.pg_port),
            replica_urls: vec![pg(
                "atlas_app",
                &self.state.app_password,
                self.spec.replica_port,
            )],
            redis_url: format!(
                "redis://:{}@127.0.0.1:{}/0",
                self.state.redis_password, self.spec.redis_port
            ),
            redis_sentinel_urls: vec![format!("redis://127.0.0.1:{}/", self.sentinel_port())],
        }
    }

    /// The spec this stack was opened with.
    pub fn spec(&self) -> &StackSpec {
        &self.spec
    }

    /// The password of the `atlas_app` login (set by `atlas migrate`).
    pub fn app_password(&self) -> &str {
        &self.state.app_password
    }

    /// Data directory of the primary.
    pub fn primary_dir(&self) -> PathBuf {
        self.state.pg_root.join("primary")
    }

    /// Data directory of the replica.
    pub fn replica_dir(&self) -> PathBuf {
        self.state.pg_root.join("replica")
    }

    /// Data directory of the `i`-th Citus worker (0-based).
    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.state.pg_root.join(format!("worker{}", i + 1))
    }

    /// Superuser URL of one database on one node of this stack (a Citus worker, say).
    pub fn admin_url_at(&self, port: u16, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{port}/{database}",
            self.state.admin_password
        )
    }

    /// The app login's URL of one database on one node of this stack (a Citus worker, say).
    pub fn app_url_at(&self, port: u16, database: &str) -> String {
        format!(
            "postgres://atlas_app:{}@127.0.0.1:{port}/{database}",
            self.state.app_password
        )
    }

    /// Stops the `i`-th Citus worker; `immediate` is a crash-like stop. For failure tests.
    pub fn stop_worker(&self, i: usize, immediate: bool) -> Result<(), StackError> {
        self.stop_pg(&self.worker_dir(i), immediate, "stopping a worker")
    }

    /// Starts the `i`-th Citus worker again.
    pub fn start_worker(&self, i: usize) -> Result<(), StackError> {
        let port = self.spec.workers.get(i).copied().unwrap_or_default();
        self.start_pg(&self.worker_dir(i), port, &format!("worker{}", i + 1))
    }

    /// The postmaster pid of the `i`-th Citus worker (for a `kill -9` in failure tests).
    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        process::postmaster_pid(&self.worker_dir(i))
    }

    /// Stops the primary: `immediate` is a crash-like stop (no checkpoint; WAL replay at the
    /// next start), otherwise a fast, clean shutdown. For failure tests.
    pub fn stop_primary(&self, immediate: bool) -> Result<(), StackError> {
        self.stop_pg(&self.primary_dir(), immediate, "stopping the primary")
    }

    /// Starts the primary again (after [`Stack::stop_primary`]).
    pub fn start_primary(&self) -> Result<(), StackError> {
        self.start_pg(&self.primary_dir(), self.spec.pg_port, "primary")
    }

    /// Stops the replica (see [`Stack::stop_primary`]). For failure tests.
    pub fn stop_replica(&self, immediate: bool) -> Result<(), StackError> {
        self.stop_pg(&self.replica_dir(), immediate, "stopping the replica")
    }

    /// Starts the replica again (after [`Stack::stop_replica`]).
    pub fn start_replica(&self) -> Result<(), StackError> {
        self.start_pg(&self.replica_dir(), self.spec.replica_port, "replica")
    }

    fn stop_pg(&self, data: &Path, immediate: bool, what: &str) -> Result<(), StackError> {
        let mode = if immediate { "immediate" } else { "fast" };
        self.pg(&format!("{PG_BIN}/pg_ctl"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ])
            .run(what)
            .map(|_| ())
    }

    fn save_state(&self) -> Result<(), StackError> {
        let path = self.spec.dir.join("stack.json");
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| StackError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_private(&path, &text)
    }

    /// A command that runs as the postgres OS user when we are root (initdb refuses root).
    pub(crate) fn pg(&self, program: &str) -> Cmd {
        let passfile = self.state.pg_root.join("pgpass");
        Cmd::pg(program).env("PGPASSFILE", passfile.to_string_lossy().as_ref())
    }

    pub(crate) fn pg_ready(&self, port: u16) -> bool {
        self.pg(&format!("{PG_BIN}/pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-d",
                "postgres",
            ])
            .output_quiet()
            .is_ok_and(|o| o.status.success())
    }

    pub(crate) fn psql(&self, port: u16, db: &str, sql: &str) -> Result<String, StackError> {
        let out = self
            .pg(&format!("{PG_BIN}/psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .args(["-c", sql])
            .run("running psql")?;
        Ok(out.trim().to_owned())
    }

    fn up_primary(&self) -> Result<(), StackError> {
        self.up_server(&self.primary_dir(), self.spec.pg_port, "primary")
    }

    /// Creates (initdb) and starts one PostgreSQL server that is not a replica, and its
    /// `atlas` database: the primary, or a Citus worker.
    fn up_server(&self, data: &Path, port: u16, name: &str) -> Result<(), StackError> {
        let data = data.to_path_buf();
        fs::create_dir_all(&self.state.pg_root).map_err(io(&self.state.pg_root))?;
        process::chown_to_postgres(&self.state.pg_root)?;
        let passfile = self.state.pg_root.join("pgpass");
        write_private(
            &passfile,
            &format!("127.0.0.1:*:*:postgres:{}\n", self.state.admin_password),
        )?;
        process::chown_to_postgres(&passfile)?;

        if !data.join("PG_VERSION").exists() {
            let pwfile = self.state.pg_root.join("initdb.pw");
            write_private(&pwfile, &format!("{}\n", self.state.admin_password))?;
            process::chown_to_postgres(&pwfile)?;
            let result = self
                .pg(&format!("{PG_BIN}/initdb"))
                .args([
                    "-D",
                    &data.to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                ])
                .args([
                    "--pwfile",
                    &pwfile.to_string_lossy(),
                    "--no-locale",
                    "-E",
                    "UTF8",
                ])
                .run("initdb");
            let _ = fs::remove_file(&pwfile);
            result?;
            self.write_pg_config(&data)?;
        } else {
            self.write_atlas_conf(&data)?;
        }
        self.start_pg(&data, port, name)?;
        let exists = self.psql(
            port,
            "postgres",
            "SELECT 1 FROM pg_database WHERE datname = 'atlas'",
        )?;
        if exists != "1" {
            self.psql(port, "postgres", "CREATE DATABASE atlas")?;
        }
        Ok(())
    }

    /// `atlas.conf`, the settings the stack owns. Rewritten before every start of either
    /// server, so a stack made by an older version gets today's settings at its next start.
    fn write_atlas_conf(&self, data: &Path) -> Result<(), StackError> {
        let durability = if self.spec.durable {
            ""
        } else {
            "fsync = off\nfull_page_writes = off\n"
        };
        let citus = if self.spec.is_citus() {
            citus::SERVER_SETTINGS
        } else {
            ""
        };
        let conf = format!(
            "# Written by atlas stack.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n\
             max_connections = 300\n\
             shared_buffers = '256MB'\n\
             wal_level = logical\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             max_slot_wal_keep_size = '2GB'\n\
             wal_keep_size = '128MB'\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             # The replica reports its oldest snapshot every second instead of every 10 s: until\n\
             # then the primary keeps every dead version of a hot projection row.\n\
             wal_receiver_status_interval = '1s'\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             {durability}{citus}"
        );
        let path = data.join("atlas.conf");
        fs::write(&path, conf).map_err(io(&path))?;
        process::chown_to_postgres(&path)
    }

    fn write_pg_config(&self, data: &Path) -> Result<(), StackError> {
        self.write_atlas_conf(data)?;
        let main = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&main).map_err(io(&main))?;
        text.push_str("\ninclude 'atlas.conf'\n");
        fs::write(&main, text).map_err(io(&main))?;
        let hba = data.join("pg_hba.conf");
        fs::write(
            &hba,
            "# Written by atlas stack: loopback only, passwords required.\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .map_err(io(&hba))?;
        for p in [main, hba] {
            process::chown_to_postgres(&p)?;
        }
        Ok(())
    }

    fn start_pg(&self, data: &Path, port: u16, name: &str) -> Result<(), StackError> {
        if self.pg_ready(port) {
            if data.join("postmaster.pid").exists() {
                return Ok(());
            }
            return Err(StackError::PortInUse {
                port,
                what: format!("PostgreSQL {name}"),
            });
        }
        let log = self.spec.dir.join("logs").join(format!("{name}.log"));
        if !log.exists() {
            fs::write(&log, "").map_err(io(&log))?;
        }
        process::chown_to_postgres(&log)?;
        // A port in Linux's ephemeral range (32768-60999; the developer stack's 54329/54330)
        // may be held for a moment by a client connection of this machine (seen in CI before
        // the test stacks moved above it: "could not bind … Address already in use"). Such a
        // clash is retried for a while; any other failure is reported at once.
        let mut attempt = 0;
        loop {
            let started = self
                .pg(&format!("{PG_BIN}/pg_ctl"))
                .args(["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy()])
                .args(["-o", &format!("-p {port}"), "-w", "-t", "120", "start"])
                .run(&format!(
                    "starting PostgreSQL {name} (log: {})",
                    log.display()
                ));
            match started {
                Ok(_) => break,
                Err(e) if attempt < 20 && log_tail_says_port_taken(&log) => {
                    attempt += 1;
                    tracing::warn!(port, attempt, error = %e, "port briefly taken; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
        wait_for(Duration::from_secs(60), || self.pg_ready(port)).map_err(|()| {
            StackError::Timeout {
                what: format!("PostgreSQL {name} on port {port}"),
            }
        })
    }

    fn up_replica(&self) -> Result<(), StackError> {
        let data = self.replica_dir();
        if data.join("PG_VERSION").exists() {
            // A replica whose slot is gone (dropped, or invalidated by max_slot_wal_keep_size
            // while it was away) can never catch up: it retries forever and its reads go
            // stale. It holds nothing the primary lacks, so it is cloned again.
            let slot = self.psql(
                self.spec.pg_port,
                "postgres",
                "SELECT coalesce((SELECT wal_status FROM pg_replication_slots \
                 WHERE slot_name = 'atlas_replica_1'), 'missing')",
            )?;
            if slot == "missing" || slot == "lost" {
                tracing::warn!(
                    slot = REPLICA_SLOT,
                    state = %slot,
                    "the replica's slot is {slot}: cloning the replica again"
                );
                if self.pg_ready(self.spec.replica_port) {
                    self.stop_replica(false)?;
                }
                fs::remove_dir_all(&data).map_err(io(&data))?;
            }
        }
        if !data.join("PG_VERSION").exists() {
            if data.exists() {
                fs::remove_dir_all(&data).map_err(io(&data))?;
            }
            // A slot left by an earlier replica would make -C fail; it is ours to drop.
            self.psql(
                self.spec.pg_port,
                "postgres",
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = 'atlas_replica_1' AND NOT active",
            )?;
            self.pg(&format!("{PG_BIN}/pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.spec.pg_port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args([
                    "-D",
                    &data.to_string_lossy(),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ])
                .args(["-C", "-S", REPLICA_SLOT])
                .run("pg_basebackup for the replica")?;
        }
        self.write_atlas_conf(&data)?;
        self.start_pg(&data, self.spec.replica_port, "replica")
    }

    /// Redis as the seed runs it: a primary, a replica and a Sentinel watching them.
    pub(crate) fn up_redis(&self) -> Result<(), StackError> {
        self.up_redis_primary()?;
        self.up_redis_replica()?;
        self.up_sentinel()
    }

    /// The Redis replica's port (the primary's + 1).
    pub fn redis_replica_port(&self) -> u16 {
        self.spec.redis_port + 1
    }

    /// The Sentinel's port (the primary's + 2).
    pub fn sentinel_port(&self) -> u16 {
        self.spec.redis_port + 2
    }

    fn ping_port(&self, port: u16, password: bool) -> bool {
        let mut cmd = Cmd::new("redis-cli").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ]);
        if password {
            cmd = cmd.args(["-a", &self.state.redis_password]);
        }
        cmd.arg("ping")
            .output_quiet()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    fn redis_ping(&self) -> bool {
        self.ping_port(self.spec.redis_port, true)
    }

    /// Writes `<dir>/<name>/<name>.conf` and starts `redis-server` on it (in Sentinel mode, which
    /// takes no password, when `sentinel`), unless something of ours already answers on
    /// `port`; waits until it answers.
    fn start_redis(
        &self,
        what: &str,
        name: &str,
        port: u16,
        sentinel: bool,
        settings: &str,
    ) -> Result<(), StackError> {
        let password = !sentinel;
        if self.ping_port(port, password) {
            return Ok(());
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Something answers there, but not as ours: not our Redis.
            return Err(StackError::PortInUse {
                port,
                what: what.into(),
            });
        }
        let dir = self.spec.dir.join(name);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let conf = format!(
            "# Written by atlas stack.\n\
             bind 127.0.0.1\n\
             port {port}\n\
             daemonize yes\n\
             dir {dir}\n\
             pidfile {dir}/{name}.pid\n\
             logfile {log}\n\
             {settings}",
            dir = dir.display(),
            log = self
                .spec
                .dir
                .join("logs")
                .join(format!("{name}.log"))
                .display(),
        );
        let path = dir.join(format!("{name}.conf"));
        write_private(&path, &conf)?;
        let mut cmd = Cmd::new("redis-server").arg(&path.to_string_lossy());
        if sentinel {
            cmd = cmd.arg("--sentinel");
        }
        cmd.run(&format!("starting {what}"))?;
        wait_for(Duration::from_secs(30), || self.ping_port(port, password)).map_err(|()| {
            StackError::Timeout {
                what: format!("{what} on port {port}"),
            }
        })
    }

    /// The seed's cache settings: bounded memory with LRU eviction, no persistence (the cache
    /// is rebuilt from PostgreSQL).
    fn redis_data_settings(&self) -> String {
        format!(
            "protected-mode yes\n\
             requirepass {password}\n\
             maxmemory 256mb\n\
             maxmemory-policy allkeys-lru\n\
             save \"\"\n\
             appendonly no\n",
            password = self.state.redis_password,
        )
    }

    fn up_redis_primary(&self) -> Result<(), StackError> {
        let settings = self.redis_data_settings();
        self.start_redis("Redis", "redis", self.spec.redis_port, false, &settings)
    }

    fn up_redis_replica(&self) -> Result<(), StackError> {
        let settings = format!(
            "{}masterauth {}\nreplicaof 127.0.0.1 {}\n",
            self.redis_data_settings(),
            self.state.redis_password,
            self.spec.redis_port
        );
        let port = self.redis_replica_port();
        self.start_redis("the Redis replica", "redis-replica", port, false, &settings)
    }

    fn up_sentinel(&self) -> Result<(), StackError> {
        // Quorum 1 (one Sentinel); a master silent for 1 s is failed over. Sentinel rewrites
        // its file with what it learns, so the file is written afresh at each start.
        let settings = format!(
            "sentinel monitor atlas 127.0.0.1 {primary} 1\n\
             sentinel auth-pass atlas {password}\n\
             sentinel down-after-milliseconds atlas 1000\n\
             sentinel failover-timeout atlas 5000\n",
            password = self.state.redis_password,
            primary = self.spec.redis_port,
        );
        let port = self.sentinel_port();
        self.start_redis("the Redis Sentinel", "sentinel", port, true, &settings)
    }
}

pub(crate) fn ignore_missing(
    path: &Path,
) -> impl FnOnce(std::io::Error) -> Result<(), StackError> + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(io(path)(e))
        }
    }
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), StackError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// PostgreSQL's data must be writable by the postgres OS user. As root, a directory under an
/// unreadable parent (e.g. /root) cannot be; then the data goes under /var/lib/atlas-stack.
pub(crate) fn choose_pg_root(dir: &Path) -> Result<PathBuf, StackError> {
    let preferred = dir.join("pg");
    if !is_root() {
        return Ok(preferred);
    }
    fs::create_dir_all(&preferred).map_err(io(&preferred))?;
    process::chown_to_postgres(&preferred)?;
    let reachable = Cmd::pg("test")
        .args(["-w", &preferred.to_string_lossy()])
        .output_quiet()
        .is_ok_and(|o| o.status.success());
    if reachable {
        return Ok(preferred);
    }
    let _ = fs::remove_dir(&preferred);
    let abs = fs::canonicalize(dir).map_err(io(dir))?;
    let tag: String = abs
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(PathBuf::from("/var/lib/atlas-stack").join(tag).join("pg"))
}

pub(crate) fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(())
}

/// Whether the last lines of a PostgreSQL log say its port could not be bound.
fn log_tail_says_port_taken(log: &Path) -> bool {
    fs::read_to_string(log).is_ok_and(|text| {
        text.lines()
            .rev()
            .take(8)
            .any(|l| l.contains("Address already in use"))
    })
}
