//! The high-availability stack (`atlas stack up --ha`): one etcd member and PostgreSQL 15
//! nodes run by Patroni, with synchronous replication, beside Redis with its Sentinel.
//!
//! Patroni holds the leader lock in etcd; when the primary's postmaster dies (or its Patroni
//! loses etcd), the synchronous standby is promoted and the old primary comes back as a
//! standby by itself (pg_rewind when it diverged). Atlas finds the primary through a
//! multi-host URL with `target_session_attrs=read-write` (see [`HaStack::urls`]).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{self, Cmd};
use crate::{PG_BIN, Stack, StackError, StackSpec, StackUrls, io, wait_for, write_private};

/// Patroni's cluster name (its etcd keys live under `/atlas/atlas/`).
pub const SCOPE: &str = "atlas";
/// Patroni's leader-lock lifetime, s: a primary silent this long loses the lock.
pub const TTL_S: u64 = 10;
/// Patroni's loop period, s.
pub const LOOP_WAIT_S: u64 = 2;
/// How long Patroni retries etcd and PostgreSQL before giving up a loop, s
/// (`loop_wait + 2 × retry_timeout` must stay ≤ `ttl`).
pub const RETRY_TIMEOUT_S: u64 = 4;

/// One PostgreSQL node of an HA stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaNode {
    /// Patroni member name (`node1`, …).
    pub name: String,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// Patroni REST API port.
    pub rest_port: u16,
    /// Where this node's Patroni reaches etcd, when not etcd's own port: a failure test
    /// puts a proxy there to cut the node off from etcd alone.
    pub etcd_port: Option<u16>,
}

/// Which directory and ports an HA stack uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSpec {
    /// Root directory (state, logs, etcd data, Patroni configs; PostgreSQL data when reachable).
    pub dir: PathBuf,
    /// etcd client port (its peer port is the next one).
    pub etcd_port: u16,
    /// The PostgreSQL nodes (two or three).
    pub nodes: Vec<HaNode>,
    /// Redis port (its replica and Sentinel take the next two).
    pub redis_port: u16,
    /// fsync on (developer stacks) or off (test stacks).
    pub durable: bool,
    /// `synchronous_mode_strict`: never acknowledge a commit held on one node only, at the
    /// price of blocking writes while no standby is there (off: writes go on alone).
    pub strict: bool,
}

fn nodes(pg: [u16; 2], rest: [u16; 2]) -> Vec<HaNode> {
    (0..2)
        .map(|i| HaNode {
            name: format!("node{}", i + 1),
            pg_port: pg[i],
            rest_port: rest[i],
            etcd_port: None,
        })
        .collect()
}

impl HaSpec {
    /// The developer HA stack: etcd 52379, PostgreSQL 54331/54332, Patroni 58331/58332,
    /// Redis 63793-63795 (beside the developer stack's ports).
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            etcd_port: 52379,
            nodes: nodes([54331, 54332], [58331, 58332]),
            redis_port: 63793,
            durable: true,
            strict: false,
        }
    }

    /// The tests' HA stack: etcd 61479, PostgreSQL 61441/61442, Patroni 61481/61482, Redis
    /// 63810-63812 (above the ephemeral port range, beside the other test stacks).
    pub fn test(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            etcd_port: 61479,
            nodes: nodes([61441, 61442], [61481, 61482]),
            redis_port: 63810,
            durable: false,
            strict: false,
        }
    }

    fn base(&self) -> StackSpec {
        StackSpec {
            dir: self.dir.clone(),
            pg_port: self.nodes[0].pg_port,
            replica_port: self.nodes.get(1).map_or(0, |n| n.pg_port),
            redis_port: self.redis_port,
            durable: self.durable,
            workers: Vec::new(),
        }
    }
}

/// One member of the Patroni cluster, as `patronictl list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaMember {
    /// Member name.
    #[serde(rename = "Member")]
    pub name: String,
    /// `host:port` of its PostgreSQL.
    #[serde(rename = "Host")]
    pub host: String,
    /// `Leader`, `Sync Standby` or `Replica`.
    #[serde(rename = "Role")]
    pub role: String,
    /// `running`, `streaming`, `stopped`, `starting`, …
    #[serde(rename = "State")]
    pub state: String,
    /// Timeline.
    #[serde(rename = "TL", default)]
    pub timeline: Option<i64>,
    /// Replication lag in MB (replicas).
    #[serde(rename = "Lag in MB", default)]
    pub lag_mb: Option<serde_json::Value>,
}

impl HaMember {
    /// Whether this member is the running leader.
    pub fn is_leader(&self) -> bool {
        self.role == "Leader" && self.state == "running"
    }

    /// Whether this member is a running standby with a known lag (Patroni 3.0 says
    /// `running` for a standby, later versions `streaming`).
    pub fn is_streaming(&self) -> bool {
        self.role != "Leader"
            && matches!(self.state.as_str(), "running" | "streaming")
            && self
                .lag_mb
                .as_ref()
                .is_some_and(serde_json::Value::is_number)
    }

    /// Whether this member is the synchronous standby (commits wait for it).
    pub fn is_sync_standby(&self) -> bool {
        self.role == "Sync Standby" && self.is_streaming()
    }

    /// Its PostgreSQL port.
    pub fn pg_port(&self) -> Option<u16> {
        self.host.rsplit(':').next()?.parse().ok()
    }
}

/// What an HA stack's services say now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaStatus {
    /// etcd answers.
    pub etcd: bool,
    /// The Patroni members (empty when etcd or Patroni cannot be asked).
    pub members: Vec<HaMember>,
    /// Redis answers PING.
    pub redis: bool,
    /// The Sentinel answers PING.
    pub sentinel: bool,
}

impl HaStatus {
    /// A leader runs, every node is a member and every standby streams.
    pub fn healthy(&self, nodes: usize) -> bool {
        self.etcd
            && self.members.len() == nodes
            && self.members.iter().filter(|m| m.is_leader()).count() == 1
            && self
                .members
                .iter()
                .all(|m| m.is_leader() || m.is_streaming())
            && (nodes < 2 || self.members.iter().any(HaMember::is_sync_standby))
    }

    /// The leader, if one runs.
    pub fn leader(&self) -> Option<&HaMember> {
        self.members.iter().find(|m| m.is_leader())
    }
}

/// An HA stack that is (or was) brought up.
#[derive(Debug, Clone)]
pub struct HaStack {
    spec: HaSpec,
    base: Stack,
}

impl HaStack {
    /// The HA stack recorded in `spec.dir`, if `up` ever ran there.
    pub fn open(spec: &HaSpec) -> Result<Option<Self>, StackError> {
        let spec = HaSpec {
            dir: std::path::absolute(&spec.dir).map_err(io(&spec.dir))?,
            ..spec.clone()
        };
        Ok(Stack::open(&spec.base())?.map(|base| Self { spec, base }))
    }

    /// Installs what is missing, starts etcd, every Patroni node and Redis with its
    /// Sentinel, and waits until a leader runs with every standby streaming. Idempotent.
    pub fn up(spec: &HaSpec) -> Result<Self, StackError> {
        crate::ensure_packages()?;
        crate::ensure_ha_packages()?;
        let spec = HaSpec {
            dir: std::path::absolute(&spec.dir).map_err(io(&spec.dir))?,
            ..spec.clone()
        };
        let base = Stack::prepare(&spec.base())?;
        let stack = Self { spec, base };
        stack.prepare_dirs()?;
        stack.up_etcd()?;
        for node in &stack.spec.nodes {
            stack.up_patroni(node)?;
        }
        stack.wait_healthy(Duration::from_secs(180))?;
        stack.ensure_database()?;
        stack.base.up_redis()?;
        Ok(stack)
    }

    /// Stops every service: the standbys' Patroni first (so nothing fails over), then the
    /// leader's, etcd and Redis. With `purge`, deletes all data too.
    pub fn down(spec: &HaSpec, purge: bool) -> Result<(), StackError> {
        let Some(stack) = Self::open(spec)? else {
            return Ok(());
        };
        let leader = stack.status().leader().map(|m| m.name.clone());
        let mut order: Vec<&HaNode> = stack.spec.nodes.iter().collect();
        order.sort_by_key(|n| Some(&n.name) == leader.as_ref());
        for node in order {
            stack.stop_patroni(node)?;
        }
        stack.stop_pidfile("etcd", "etcd")?;
        // Redis and its Sentinel; no PostgreSQL of the base stack runs here.
        Stack::down(&stack.spec.base(), false)?;
        if purge {
            let pg_root = &stack.base.state.pg_root;
            if pg_root != &stack.spec.dir.join("pg") {
                fs::remove_dir_all(pg_root).or_else(crate::ignore_missing(pg_root))?;
            }
            fs::remove_dir_all(&stack.spec.dir).or_else(crate::ignore_missing(&stack.spec.dir))?;
        }
        Ok(())
    }

    /// The spec this stack was opened with.
    pub fn spec(&self) -> &HaSpec {
        &self.spec
    }

    /// The password of the `atlas_app` login (set by `atlas migrate`).
    pub fn app_password(&self) -> &str {
        self.base.app_password()
    }

    /// How to reach the services. The primary URLs list every node with
    /// `target_session_attrs=read-write`: the client tries each and keeps the one that
    /// accepts writes, so a failover needs no change of configuration. Each node is also a
    /// read replica URL of its own (the router measures each one's lag; the one that is the
    /// primary at the moment lags by zero).
    pub fn urls(&self) -> StackUrls {
        self.urls_for(crate::DATABASE)
    }

    /// [`HaStack::urls`] for another database of the cluster.
    pub fn urls_for(&self, database: &str) -> StackUrls {
        let hosts: Vec<String> = self
            .spec
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        let state = &self.base.state;
        // connect_timeout: a node that does not answer at all is skipped after 2 s.
        let multi = |user: &str, password: &str| {
            format!(
                "postgres://{user}:{password}@{}/{database}?target_session_attrs=read-write&connect_timeout=2",
                hosts.join(",")
            )
        };
        let base = self.base.urls_for(database);
        StackUrls {
            admin_database_url: multi("postgres", &state.admin_password),
            database_url: multi("atlas_app", &state.app_password),
            replica_urls: hosts
                .iter()
                .map(|h| {
                    format!(
                        "postgres://atlas_app:{}@{h}/{database}?connect_timeout=2",
                        state.app_password
                    )
                })
                .collect(),
            ..base
        }
    }

    /// The Patroni REST API of every node (`[replication] patroni_urls`).
    pub fn patroni_urls(&self) -> Vec<String> {
        self.spec
            .nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.rest_port))
            .collect()
    }

    /// A superuser URL of one node (whatever its role).
    pub fn node_admin_url(&self, node: &HaNode, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}?connect_timeout=2",
            self.base.state.admin_password, node.pg_port
        )
    }

    /// What every service says now.
    pub fn status(&self) -> HaStatus {
        let base = self.base.status();
        let etcd = self.etcd_healthy();
        HaStatus {
            etcd,
            // Without etcd there is nothing to list (and nothing to wait for).
            members: if etcd {
                self.members().unwrap_or_default()
            } else {
                Vec::new()
            },
            redis: base.redis,
            sentinel: base.sentinel,
        }
    }

    /// The Patroni members, from `patronictl list`.
    pub fn members(&self) -> Result<Vec<HaMember>, StackError> {
        let out = self.patronictl(&["list", "--format", "json"])?;
        serde_json::from_str(out.trim()).map_err(|e| StackError::State {
            path: self.ctl_config(),
            message: format!("unexpected `patronictl list` output ({e}): {out}"),
        })
    }

    /// Waits until a leader runs and every standby streams (after a start, a failover or a
    /// switchover).
    pub fn wait_healthy(&self, limit: Duration) -> Result<HaStatus, StackError> {
        let n = self.spec.nodes.len();
        let mut last = None;
        let mut died = None;
        let ok = wait_for(limit, || {
            // A Patroni that exited (bad config, port taken) never becomes healthy: say so now.
            died = self.spec.nodes.iter().find(|node| {
                let name = format!("patroni-{}", node.name);
                self.pidfile(&name).exists() && self.running_pid(&name, "patroni").is_none()
            });
            if died.is_some() {
                return true;
            }
            let s = self.status();
            let healthy = s.healthy(n);
            last = Some(s);
            healthy
        });
        if let Some(node) = died {
            let log = self
                .spec
                .dir
                .join("logs")
                .join(format!("patroni-{}.log", node.name));
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(StackError::Command {
                what: format!("Patroni {} (log: {})", node.name, log.display()),
                status: "exited".into(),
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        match (ok, last) {
            (Ok(()), Some(s)) => Ok(s),
            (_, last) => Err(StackError::Timeout {
                what: format!(
                    "a Patroni leader with every standby streaming (last seen: {:?}; logs in {})",
                    last.map(|s| s.members),
                    self.spec.dir.join("logs").display()
                ),
            }),
        }
    }

    /// A planned switchover to `candidate` (or to the synchronous standby): Patroni stops
    /// writes on the leader, lets the candidate catch up and promotes it; the old leader
    /// follows it as a standby.
    pub fn switchover(&self, candidate: Option<&str>) -> Result<HaMember, StackError> {
        let status = self.wait_healthy(Duration::from_secs(60))?;
        let Some(leader) = status.leader() else {
            return Err(StackError::Timeout {
                what: "a leader to switch over from".into(),
            });
        };
        let candidate = match candidate {
            Some(c) if c == leader.name || self.node(c).is_none() => {
                let standbys: Vec<&str> = status
                    .members
                    .iter()
                    .filter(|m| !m.is_leader())
                    .map(|m| m.name.as_str())
                    .collect();
                let why = if c == leader.name {
                    "it is the primary"
                } else {
                    "no such member"
                };
                return Err(StackError::BadCandidate {
                    name: c.to_owned(),
                    reason: format!("{why} (standbys: {})", standbys.join(", ")),
                });
            }
            Some(c) => c.to_owned(),
            None => status
                .members
                .iter()
                .find(|m| m.is_sync_standby())
                .or_else(|| status.members.iter().find(|m| m.is_streaming()))
                .map(|m| m.name.clone())
                .ok_or_else(|| StackError::Timeout {
                    what: "a streaming standby to switch over to".into(),
                })?,
        };
        self.patronictl(&[
            "switchover",
            "--leader",
            &leader.name,
            "--candidate",
            &candidate,
            "--force",
        ])?;
        let s = self.wait_healthy(Duration::from_secs(120))?;
        s.leader().cloned().ok_or_else(|| StackError::Timeout {
            what: "the new leader".into(),
        })
    }

    /// Turns Patroni's `synchronous_mode` on or off (through its dynamic configuration in
    /// etcd) and waits until the leader's `synchronous_standby_names` says so: for measuring
    /// what synchronous replication costs. The stack starts with it on.
    pub fn set_synchronous(&self, on: bool) -> Result<(), StackError> {
        self.edit_config("synchronous_mode", on)?;
        let mut last = String::new();
        wait_for(Duration::from_secs(60), || {
            let port = self.status().leader().and_then(HaMember::pg_port);
            last = port
                .and_then(|p| {
                    self.base
                        .psql(p, "postgres", "SHOW synchronous_standby_names")
                        .ok()
                })
                .unwrap_or_default();
            on != last.is_empty()
        })
        .map_err(|()| StackError::Timeout {
            what: format!(
                "synchronous_standby_names to be {} (it is '{last}')",
                if on { "set" } else { "empty" }
            ),
        })
    }

    /// Turns `synchronous_mode_strict` on or off: with it, no commit is acknowledged while
    /// no synchronous standby confirms it (writes block instead). Takes effect at Patroni's
    /// next loop.
    pub fn set_strict(&self, on: bool) -> Result<(), StackError> {
        self.edit_config("synchronous_mode_strict", on)
    }

    fn edit_config(&self, key: &str, value: bool) -> Result<(), StackError> {
        self.patronictl(&[
            "edit-config",
            "--quiet",
            "--force",
            "--set",
            &format!("{key}={value}"),
        ])
        .map(|_| ())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&HaNode> {
        self.spec.nodes.iter().find(|n| n.name == name)
    }

    /// The pid of a node's postmaster, from its `postmaster.pid`.
    pub fn postmaster_pid(&self, node: &HaNode) -> Option<u32> {
        crate::process::postmaster_pid(&self.data_dir(node))
    }

    /// Kills a node's postmaster with SIGKILL: the crash the HA stack exists for. Patroni
    /// notices within a loop and, that node having been the leader, the standby takes over.
    pub fn kill_postmaster(&self, node: &HaNode) -> Result<(), StackError> {
        let pid = self.postmaster_pid(node).ok_or_else(|| StackError::State {
            path: self.data_dir(node),
            message: "no postmaster.pid: PostgreSQL is not running there".into(),
        })?;
        process::signal(pid, "KILL")
    }

    /// Data directory of a node.
    pub fn data_dir(&self, node: &HaNode) -> PathBuf {
        self.base.state.pg_root.join(&node.name)
    }

    fn ctl_config(&self) -> PathBuf {
        self.spec.dir.join("patroni").join("patronictl.yml")
    }

    fn patronictl(&self, args: &[&str]) -> Result<String, StackError> {
        // patronictl retries an unreachable etcd for ever: bounded by coreutils' timeout.
        Cmd::new("timeout")
            .args(["30", "patronictl"])
            .args(["-c", &self.ctl_config().to_string_lossy()])
            .args(args.iter().copied())
            .run(&format!("patronictl {}", args.join(" ")))
    }

    fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.etcd_port)
    }

    fn etcd_healthy(&self) -> bool {
        Cmd::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.etcd_url(), "--dial-timeout=1s"])
            .args(["endpoint", "health"])
            .output_quiet()
            .is_ok_and(|o| o.status.success())
    }

    fn prepare_dirs(&self) -> Result<(), StackError> {
        let root = &self.base.state.pg_root;
        for dir in [root.clone(), self.spec.dir.join("patroni")] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            process::chown_to_postgres(&dir)?;
        }
        // psql's password for the stack's own SQL (creating the database).
        let passfile = root.join("pgpass");
        write_private(
            &passfile,
            &format!(
                "127.0.0.1:*:*:postgres:{}\n",
                self.base.state.admin_password
            ),
        )?;
        process::chown_to_postgres(&passfile)?;
        let ctl = format!(
            "# Written by atlas stack: what patronictl needs to find the cluster.\n\
             scope: {SCOPE}\nnamespace: /atlas/\netcd3:\n  hosts: 127.0.0.1:{}\n",
            self.spec.etcd_port
        );
        write_private(&self.ctl_config(), &ctl)
    }

    fn pidfile(&self, name: &str) -> PathBuf {
        self.spec.dir.join(format!("{name}.pid"))
    }

    fn running_pid(&self, name: &str, needle: &str) -> Option<u32> {
        let pid = fs::read_to_string(self.pidfile(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process::pid_runs(pid, needle).then_some(pid)
    }

    /// Stops the process of a pidfile with SIGTERM and waits for it (SIGKILL after 60 s).
    fn stop_pidfile(&self, name: &str, needle: &str) -> Result<(), StackError> {
        if let Some(pid) = self.running_pid(name, needle) {
            process::signal(pid, "TERM")?;
            if wait_for(Duration::from_secs(60), || !process::pid_runs(pid, needle)).is_err() {
                process::signal(pid, "KILL")?;
            }
        }
        let _ = fs::remove_file(self.pidfile(name));
        Ok(())
    }

    fn up_etcd(&self) -> Result<(), StackError> {
        if self.running_pid("etcd", "etcd").is_some() {
            return Ok(());
        }
        let port = self.spec.etcd_port;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Err(StackError::PortInUse {
                port,
                what: "etcd".into(),
            });
        }
        let data = self.spec.dir.join("etcd");
        let client = self.etcd_url();
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let pid = process::spawn_daemon(
            "etcd",
            &[
                "--name",
                "atlas",
                "--data-dir",
                &data.to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("atlas={peer}"),
                "--initial-cluster-state",
                "new",
            ],
            &self.spec.dir.join("logs").join("etcd.log"),
            false,
        )?;
        fs::write(self.pidfile("etcd"), pid.to_string()).map_err(io(&self.pidfile("etcd")))?;
        wait_for(Duration::from_secs(30), || self.etcd_healthy()).map_err(|()| {
            StackError::Timeout {
                what: format!("etcd on port {port}"),
            }
        })
    }

    fn patroni_config(&self, node: &HaNode) -> String {
        let state = &self.base.state;
        let durability = if self.spec.durable {
            ""
        } else {
            "    fsync: 'off'\n    full_page_writes: 'off'\n"
        };
        format!(
            r"# Written by atlas stack at every `up`.
scope: {SCOPE}
namespace: /atlas/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
  # Talk to the address above only, never to members it would discover: a test cuts a node
  # off from etcd by cutting that address.
  use_proxies: true
bootstrap:
  dcs:
    ttl: {TTL_S}
    loop_wait: {LOOP_WAIT_S}
    retry_timeout: {RETRY_TIMEOUT_S}
    maximum_lag_on_failover: 1048576
    # Fail over at once when the primary's postmaster dies, rather than restart it in place.
    primary_start_timeout: 0
    synchronous_mode: true
    synchronous_mode_strict: {strict}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: logical
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_connections: 300
        max_wal_senders: 10
        max_replication_slots: 10
        max_slot_wal_keep_size: 2GB
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - no-locale
  - auth: scram-sha-256
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {PG_BIN}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
      password: {admin}
    replication:
      username: replicator
      password: {repl}
  pg_hba:
  - host all all 127.0.0.1/32 scram-sha-256
  - host replication replicator 127.0.0.1/32 scram-sha-256
  parameters:
    unix_socket_directories: ''
    shared_buffers: 256MB
    hot_standby_feedback: 'on'
    wal_receiver_status_interval: 1s
    timezone: UTC
    log_timezone: UTC
    logging_collector: 'on'
    log_directory: {logs}
    log_filename: postgres-{name}.log
    log_line_prefix: '%m [%p] %q%u@%d '
{durability}",
            name = node.name,
            rest = node.rest_port,
            etcd = node.etcd_port.unwrap_or(self.spec.etcd_port),
            strict = self.spec.strict,
            pg = node.pg_port,
            data = self.data_dir(node).display(),
            pgpass = state
                .pg_root
                .join(format!("pgpass-{}", node.name))
                .display(),
            admin = state.admin_password,
            repl = state.replication_password,
            logs = self.node_log_dir().display(),
        )
    }

    fn node_log_dir(&self) -> PathBuf {
        self.spec.dir.join("logs").join("postgres")
    }

    fn up_patroni(&self, node: &HaNode) -> Result<(), StackError> {
        let name = format!("patroni-{}", node.name);
        if self.running_pid(&name, "patroni").is_some() {
            return Ok(());
        }
        for port in [node.pg_port, node.rest_port] {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Err(StackError::PortInUse {
                    port,
                    what: format!("Patroni {}", node.name),
                });
            }
        }
        let logs = self.node_log_dir();
        fs::create_dir_all(&logs).map_err(io(&logs))?;
        process::chown_to_postgres(&logs)?;
        let config = self
            .spec
            .dir
            .join("patroni")
            .join(format!("{}.yml", node.name));
        write_private(&config, &self.patroni_config(node))?;
        process::chown_to_postgres(&config)?;
        let log = self.spec.dir.join("logs").join(format!("{name}.log"));
        if !log.exists() {
            fs::write(&log, "").map_err(io(&log))?;
        }
        process::chown_to_postgres(&log)?;
        let pid = process::spawn_daemon("patroni", &[&config.to_string_lossy()], &log, true)?;
        fs::write(self.pidfile(&name), pid.to_string()).map_err(io(&self.pidfile(&name)))
    }

    fn stop_patroni(&self, node: &HaNode) -> Result<(), StackError> {
        // Patroni stops its PostgreSQL when it stops.
        self.stop_pidfile(&format!("patroni-{}", node.name), "patroni")
    }

    /// Stops one node's Patroni (and with it its PostgreSQL), e.g. to take it out of the
    /// cluster; [`HaStack::start_node`] brings it back.
    pub fn stop_node(&self, node: &HaNode) -> Result<(), StackError> {
        self.stop_patroni(node)
    }

    /// Starts one node's Patroni again; it rejoins as a standby (pg_rewind if it diverged).
    pub fn start_node(&self, node: &HaNode) -> Result<(), StackError> {
        self.up_patroni(node)
    }

    fn ensure_database(&self) -> Result<(), StackError> {
        let status = self.status();
        let port =
            status
                .leader()
                .and_then(HaMember::pg_port)
                .ok_or_else(|| StackError::Timeout {
                    what: "a Patroni leader".into(),
                })?;
        let exists = self.base.psql(
            port,
            "postgres",
            "SELECT 1 FROM pg_database WHERE datname = 'atlas'",
        )?;
        if exists != "1" {
            self.base.psql(port, "postgres", "CREATE DATABASE atlas")?;
        }
        Ok(())
    }
}
