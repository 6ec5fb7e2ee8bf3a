//! What every bench shares: a fresh `atlas_bench` database, `atlas serve` started on it as
//! users run it, CPU and WAL accounting of the whole stack, and percentiles.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use atlas_stack::{Stack, StackUrls};

/// The bench database (dropped and recreated by every run).
pub(crate) const BENCH_DB: &str = "atlas_bench";
/// The analytics store `atlas bench cdc` fills.
pub(crate) const BENCH_ANALYTICS_DB: &str = "atlas_bench_analytics";

/// A child `atlas serve`, killed when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_S: f64 = 100.0;

/// A process's parent and its CPU clock ticks from `/proc/<pid>/stat`: user, system, and the
/// user and system time of the children it has waited for.
pub(crate) fn proc_stat(pid: u32) -> Option<(u32, [u64; 4])> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((
        u32::try_from(num(1)?).ok()?,
        [num(11)?, num(12)?, num(13)?, num(14)?],
    ))
}

/// CPU seconds (user + system) used so far by the primary and the replica — each postmaster,
/// the children it has reaped and its live children — and by the server process. Throughput
/// on a shared machine moves with its neighbours; the CPU spent per value moves much less, so
/// A/B comparisons quote both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    pub(crate) primary: f64,
    pub(crate) replica: f64,
    pub(crate) server: f64,
    /// Citus workers, together (0 on a single node).
    pub(crate) workers: f64,
}

impl CpuSample {
    pub(crate) fn total(&self) -> f64 {
        self.primary + self.replica + self.server + self.workers
    }

    pub(crate) fn since(self, before: &Self) -> Self {
        Self {
            primary: self.primary - before.primary,
            replica: self.replica - before.replica,
            server: self.server - before.server,
            workers: self.workers - before.workers,
        }
    }

    /// Seconds → µs per value.
    pub(crate) fn per_value(self, values: f64) -> Self {
        let per = |secs: f64| secs * 1e6 / values;
        Self {
            primary: per(self.primary),
            replica: per(self.replica),
            server: per(self.server),
            workers: per(self.workers),
        }
    }
}

pub(crate) fn cpu_sample(stack: &Stack, server: Option<u32>) -> Option<CpuSample> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok());
        if let Some((pid, (ppid, _))) = pid.and_then(|p| Some((p, proc_stat(p)?))) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let cluster = |dir: std::path::PathBuf| -> Option<f64> {
        let pidfile = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
        let postmaster: u32 = pidfile.lines().next()?.trim().parse().ok()?;
        let (_, [u, s, cu, cs]) = proc_stat(postmaster)?;
        let mut ticks = u + s + cu + cs;
        for child in children.get(&postmaster).map_or(&[][..], Vec::as_slice) {
            if let Some((_, [u, s, _, _])) = proc_stat(*child) {
                ticks += u + s;
            }
        }
        #[allow(clippy::cast_precision_loss)]
        Some(ticks as f64 / TICKS_PER_S)
    };
    Some(CpuSample {
        primary: cluster(stack.primary_dir())?,
        replica: cluster(stack.replica_dir())?,
        server: match server {
            Some(pid) => process_cpu_secs(pid)?,
            None => 0.0,
        },
        workers: (0..stack.spec().workers.len())
            .map(|i| cluster(stack.worker_dir(i)))
            .sum::<Option<f64>>()?,
    })
}

/// CPU seconds (user + system) one process has used so far, its threads included.
pub(crate) fn process_cpu_secs(pid: u32) -> Option<f64> {
    let (_, [u, s, _, _]) = proc_stat(pid)?;
    #[allow(clippy::cast_precision_loss)]
    Some((u + s) as f64 / TICKS_PER_S)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The primary's WAL position (bytes since `0/0`) and checkpoint count. The position is exact
/// and cluster-wide, so a phase's delta includes the background work of the moment;
/// `pg_stat_wal` is not used: backends report to it at most once a second, and a session never
/// sees its own unreported WAL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalStats {
    pub(crate) bytes: f64,
    pub(crate) checkpoints: i64,
}

impl WalStats {
    pub(crate) fn since(self, before: &Self) -> Self {
        Self {
            bytes: self.bytes - before.bytes,
            checkpoints: self.checkpoints - before.checkpoints,
        }
    }

    pub(crate) fn bytes_per_value(&self, values: f64) -> f64 {
        (self.bytes / values * 10.0).round() / 10.0
    }
}

/// Replication slots of the stack without a consumer that hold WAL back, with the megabytes
/// held. Such a slot (say, of an `atlas cdc` that is not running) keeps the primary from
/// recycling WAL segments: every one is then created and zero-filled anew, which took ~10 % of
/// the machine's CPU in this benchmark (the primary's committing writers and the replica's WAL
/// receiver in `XLogFileInit`).
pub(crate) async fn idle_slots(admin: &tokio_postgres::Client) -> Result<Vec<(String, f64)>> {
    Ok(atlas_store::cluster::slots(admin)
        .await?
        .into_iter()
        .filter(|s| !s.active)
        .filter_map(|s| s.retained_bytes.map(|b| (s.name, b as f64 / 1_048_576.0)))
        .collect())
}

/// Leaves a measured phase nothing of the previous one's background work: vacuums the bench
/// database and checkpoints, so neither autovacuum nor the checkpointer runs in its window
/// (both count in the CPU and WAL figures, which read the whole stack).
pub(crate) async fn settle(admin: &tokio_postgres::Client) -> Result<()> {
    admin.batch_execute("VACUUM").await?;
    admin.batch_execute("CHECKPOINT").await?;
    Ok(())
}

pub(crate) async fn wal_stats(admin: &tokio_postgres::Client) -> Result<WalStats> {
    let checkpoints = admin
        .query_one(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
            &[],
        )
        .await?
        .get(0);
    Ok(WalStats {
        bytes: atlas_store::cluster::wal_position(admin).await? as f64,
        checkpoints,
    })
}

/// [`wal_stats`] summed over the stack's nodes: the primary (`admin`) and, on Citus, every
/// worker, where the shards' WAL is written.
pub(crate) async fn stack_wal_stats(
    stack: &Stack,
    admin: &tokio_postgres::Client,
) -> Result<WalStats> {
    let mut total = wal_stats(admin).await?;
    for port in &stack.spec().workers {
        let worker = crate::connect(&stack.admin_url_at(*port, "postgres")).await?;
        let w = wal_stats(&worker).await?;
        total.bytes += w.bytes;
        total.checkpoints += w.checkpoints;
    }
    Ok(total)
}

/// Drops and recreates the `atlas_bench` database on the local stack and migrates it.
pub(crate) async fn fresh_db(stack: &Stack) -> Result<(StackUrls, tokio_postgres::Client)> {
    // On Citus the workers' copies of the database go too (set up again before migrating).
    for port in &stack.spec().workers {
        let admin = crate::connect(&stack.admin_url_at(*port, "postgres")).await?;
        let stmt: String = admin
            .query_one(
                "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
                &[&BENCH_DB],
            )
            .await?
            .get(0);
        admin.batch_execute(&stmt).await?;
    }
    fresh_db_at(
        &stack.urls_for("postgres").admin_database_url,
        stack.urls_for(BENCH_DB),
        stack.app_password(),
        stack.spec().is_citus().then_some(stack),
    )
    .await
}

/// [`fresh_db`] on any cluster: `admin_url` is a superuser URL of its `postgres` database,
/// `urls` the cluster's URLs for [`BENCH_DB`]; `citus`, the Citus stack whose coordinator
/// that is (the database is made distributed before it is migrated).
pub(crate) async fn fresh_db_at(
    admin_url: &str,
    urls: StackUrls,
    app_password: &str,
    citus: Option<&Stack>,
) -> Result<(StackUrls, tokio_postgres::Client)> {
    let admin = crate::connect(admin_url).await?;
    // A logical slot (left by `atlas bench cdc`) keeps its database from being dropped.
    atlas_store::cluster::drop_idle_slots_of(&admin, BENCH_DB).await?;
    for (generator, db) in [
        (
            "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
            BENCH_ANALYTICS_DB,
        ),
        (
            "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
            BENCH_DB,
        ),
        ("SELECT format('CREATE DATABASE %I', $1::text)", BENCH_DB),
    ] {
        let stmt: String = admin.query_one(generator, &[&db]).await?.get(0);
        admin.batch_execute(&stmt).await?;
    }
    let mut bench_admin = crate::connect(&urls.admin_database_url).await?;
    if let Some(stack) = citus {
        let stack = stack.clone();
        tokio::task::spawn_blocking(move || stack.citus_setup(BENCH_DB)).await??;
    }
    let login = atlas_schema::AppLogin {
        user: "atlas_app".into(),
        password: app_password.to_owned(),
    };
    atlas_schema::migrate(&mut bench_admin, Some(&login)).await?;
    // The benches write readings up to a few hours old (the baselines' ranges lie before the
    // HTTP phase's); a fresh database covers the current month only, so in the first hours of
    // a month they would fall outside every partition.
    bench_admin
        .batch_execute("SELECT public.ensure_ts_partitions(now() - interval '1 day', 0)")
        .await?;
    Ok((urls, bench_admin))
}

/// Waits until the server's maintainer has finished its first round (its end stamp appears in
/// `/metrics`), at most `limit`. The first round refreshes the statistics of the whole value
/// table (seconds at full scale); a read line measured during it measures the refresh.
pub(crate) async fn await_first_maintenance_round(base: &str, limit: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let body = match http.get(format!("{base}/metrics")).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        if body
            .lines()
            .any(|l| l.starts_with("atlas_maintenance_last_round_timestamp_seconds "))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the server's first maintenance round did not end within {limit:?}")
}

/// Starts `atlas serve` on the bench database, as users run it (replicas off, no rate limit,
/// large request limits, plus `extra_toml`), and waits until it is ready. Returns the process
/// and its base URL.
pub(crate) async fn start_server(urls: &StackUrls, extra_toml: &str) -> Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("atlas-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let toml = dir.join("atlas.toml");
    std::fs::write(
        &toml,
        format!(
            "[limits]\nrate_per_second = 1000000000.0\nrate_burst = 1000000000.0\ntelemetry_values_per_second = 1000000000.0\ntelemetry_values_burst = 1000000000.0\nmax_values_per_request = 100000\nmax_body_bytes = 67108864\n\n{extra_toml}"
        ),
    )?;
    let server = Server(
        Command::new(std::env::current_exe()?)
            .arg("serve")
            .env("ATLAS_CONFIG", &toml)
            .env("ATLAS_DATABASE_URL", &urls.database_url)
            .env("ATLAS_REPLICA_URLS", "")
            .env("ATLAS_REDIS_URL", &urls.redis_url)
            // A fresh namespace: the recreated database reuses ids that an earlier run cached.
            .env(
                "ATLAS_CACHE_PREFIX",
                format!("bench-{}-{port}:", std::process::id()),
            )
            .env("ATLAS_LISTEN", format!("127.0.0.1:{port}"))
            .env("ATLAS_STACK_DIR", dir.join("no-stack"))
            // ATLAS_BENCH_SERVER_LOG sets the server's log filter (e.g. atlas_ingest=debug).
            .env(
                "ATLAS_LOG",
                std::env::var("ATLAS_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting atlas serve")?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((server, base));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("atlas serve did not become ready")
}
