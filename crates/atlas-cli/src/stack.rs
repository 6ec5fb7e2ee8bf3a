//! `atlas stack …` and `atlas migrate`: local services, and URLs resolved from them.

use anyhow::{Context, Result, bail};
use atlas_config::Config;
use atlas_schema::{AppLogin, migrate as run_migrations, migration_status};
use atlas_stack::{HaSpec, HaStack, Stack, StackSpec, StackUrls};
use atlas_store::Store;
use clap::Subcommand;

/// What to do with the local stack.
#[derive(Debug, Subcommand)]
pub enum StackAction {
    /// Install the Debian packages the stack needs (apt as root; otherwise print the command).
    Install {
        /// Also Patroni and etcd, for `stack up --ha`.
        #[arg(long)]
        ha: bool,
        /// Also Citus, for `stack up --citus`: Citus's Debian package when apt knows it,
        /// else the build script of --citus-build.
        #[arg(long)]
        citus: bool,
        /// A script that builds and installs Citus into PostgreSQL 15, used with --citus when
        /// apt has no Citus package (ignored without --citus).
        #[arg(long, env = "ATLAS_CITUS_BUILD")]
        citus_build: Option<std::path::PathBuf>,
    },
    /// Install what is missing, start PostgreSQL primary + replica and Redis, print the URLs.
    Up {
        /// Print the URLs as `export ATLAS_…=…` lines only.
        #[arg(long)]
        env: bool,
        /// Use the test suite's ports (the stack the tests share).
        #[arg(long)]
        test: bool,
        /// The high-availability stack instead: etcd and two PostgreSQL nodes run by
        /// Patroni with a synchronous standby (in `<stack dir>/ha`, on its own ports).
        #[arg(long)]
        ha: bool,
        /// With --ha: `synchronous_mode_strict` (never acknowledge a commit held on one
        /// node only; writes block while no standby is there). Takes effect when the
        /// cluster is first created.
        #[arg(long, requires = "ha")]
        strict: bool,
        /// The Citus stack instead: a coordinator (with a streaming replica) and two workers
        /// (in `<stack dir>/citus`, on its own ports).
        #[arg(long, conflicts_with = "ha")]
        citus: bool,
    },
    /// Stop every service.
    Down {
        /// Also delete all data.
        #[arg(long)]
        purge: bool,
        /// Use the test suite's ports.
        #[arg(long)]
        test: bool,
        /// The high-availability stack.
        #[arg(long)]
        ha: bool,
        /// The Citus stack.
        #[arg(long, conflicts_with = "ha")]
        citus: bool,
    },
    /// Show which services answer (with --ha: each node's role, timeline and lag).
    Status {
        /// Use the test suite's ports.
        #[arg(long)]
        test: bool,
        /// The high-availability stack.
        #[arg(long)]
        ha: bool,
        /// The Citus stack.
        #[arg(long, conflicts_with = "ha")]
        citus: bool,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A planned switchover of the HA stack's primary (for maintenance): Patroni stops
    /// writes, lets the standby catch up and promotes it; the old primary follows it.
    Switchover {
        /// The member to promote (default: the synchronous standby).
        #[arg(long)]
        candidate: Option<String>,
        /// Use the test suite's ports.
        #[arg(long)]
        test: bool,
    },
}

fn ha_spec(config: &Config, test: bool) -> HaSpec {
    let dir = config.stack_dir.join("ha");
    if test {
        HaSpec::test(dir)
    } else {
        HaSpec::local(dir)
    }
}

fn print_urls(urls: &StackUrls) {
    println!(
        "export ATLAS_ADMIN_DATABASE_URL='{}'",
        urls.admin_database_url
    );
    println!("export ATLAS_DATABASE_URL='{}'", urls.database_url);
    println!(
        "export ATLAS_REPLICA_URLS='{}'",
        urls.replica_urls.join(",")
    );
    println!("export ATLAS_REDIS_URL='{}'", urls.redis_url);
    println!(
        "export ATLAS_REDIS_SENTINEL_URLS='{}'",
        urls.redis_sentinel_urls.join(",")
    );
}

fn ha_status(config: &Config, test: bool, json: bool) -> Result<()> {
    let spec = ha_spec(config, test);
    let Some(stack) = HaStack::open(&spec)? else {
        bail!(
            "no HA stack in {}: run `atlas stack up --ha`",
            spec.dir.display()
        );
    };
    let s = stack.status();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        crate::admin::print_list(
            false,
            &s.members,
            &["MEMBER", "ADDRESS", "ROLE", "STATE", "TIMELINE", "LAG MB"],
            |m| {
                vec![
                    m.name.clone(),
                    m.host.clone(),
                    m.role.clone(),
                    m.state.clone(),
                    m.timeline.map_or_else(String::new, |t| t.to_string()),
                    m.lag_mb
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string),
                ]
            },
        )?;
        let up = |b: bool| if b { "up" } else { "DOWN" };
        println!(
            "etcd 127.0.0.1:{}: {}; redis: {}; sentinel: {}",
            spec.etcd_port,
            up(s.etcd),
            up(s.redis),
            up(s.sentinel)
        );
    }
    if !(s.healthy(spec.nodes.len()) && s.redis && s.sentinel) {
        bail!(
            "the HA stack is not healthy: run `atlas stack up --ha` (logs in {})",
            spec.dir.join("logs").display()
        );
    }
    Ok(())
}

fn spec(config: &Config) -> StackSpec {
    StackSpec::local(config.stack_dir.clone())
}

fn spec_for(config: &Config, test: bool) -> StackSpec {
    if test {
        StackSpec::test(config.stack_dir.clone())
    } else {
        spec(config)
    }
}

/// The Citus stack's spec: in `<stack dir>/citus`.
pub fn citus_spec(config: &Config, test: bool) -> StackSpec {
    let dir = config.stack_dir.join("citus");
    if test {
        StackSpec::citus_test(dir)
    } else {
        StackSpec::citus_local(dir)
    }
}

fn plain_or_citus(config: &Config, test: bool, citus: bool) -> StackSpec {
    if citus {
        citus_spec(config, test)
    } else {
        spec_for(config, test)
    }
}

/// Runs a stack action.
pub fn run(config: &Config, action: StackAction) -> Result<()> {
    match action {
        StackAction::Install {
            ha,
            citus,
            citus_build,
        } => {
            atlas_stack::ensure_packages()?;
            println!("postgresql-15, postgresql-15-wal2json and redis-server are installed");
            if ha {
                atlas_stack::ensure_ha_packages()?;
                println!("patroni, etcd-server and etcd-client are installed");
            }
            if citus {
                match atlas_stack::install_citus(citus_build.as_deref())? {
                    atlas_stack::CitusInstall::Present => println!("citus is installed"),
                    atlas_stack::CitusInstall::Package => {
                        println!("citus is installed (Debian package)");
                    }
                    atlas_stack::CitusInstall::Built(script) => {
                        println!("citus is installed (built by {})", script.display());
                    }
                }
            }
            Ok(())
        }
        StackAction::Up {
            env,
            test,
            ha: true,
            strict,
            ..
        } => {
            let spec = HaSpec {
                strict,
                ..ha_spec(config, test)
            };
            let stack = HaStack::up(&spec)?;
            if !env {
                println!("Atlas HA stack is up in {}:", spec.dir.display());
            }
            print_urls(&stack.urls());
            Ok(())
        }
        StackAction::Up {
            env, test, citus, ..
        } => {
            let spec = plain_or_citus(config, test, citus);
            let stack = Stack::up(&spec)?;
            if !env {
                let what = if citus { "Citus" } else { "local" };
                println!("Atlas {what} stack is up in {}:", spec.dir.display());
            }
            print_urls(&stack.urls());
            Ok(())
        }
        StackAction::Down {
            purge,
            test,
            ha: true,
            ..
        } => {
            let spec = ha_spec(config, test);
            HaStack::down(&spec, purge)?;
            println!("Atlas HA stack in {} is down", spec.dir.display());
            Ok(())
        }
        StackAction::Switchover { candidate, test } => {
            let spec = ha_spec(config, test);
            let Some(stack) = HaStack::open(&spec)? else {
                bail!(
                    "no HA stack in {}: run `atlas stack up --ha`",
                    spec.dir.display()
                );
            };
            let leader = stack.switchover(candidate.as_deref())?;
            println!(
                "switched over: {} is the primary ({})",
                leader.name, leader.host
            );
            Ok(())
        }
        StackAction::Status {
            test,
            ha: true,
            json,
            ..
        } => ha_status(config, test, json),
        StackAction::Down {
            purge, test, citus, ..
        } => {
            let spec = plain_or_citus(config, test, citus);
            Stack::down(&spec, purge)?;
            let what = if citus { "Citus" } else { "local" };
            println!("Atlas {what} stack in {} is down", spec.dir.display());
            Ok(())
        }
        StackAction::Status {
            test, json, citus, ..
        } => {
            let spec = plain_or_citus(config, test, citus);
            let Some(stack) = Stack::open(&spec)? else {
                bail!("no stack in {}: run `atlas stack up`", spec.dir.display());
            };
            let s = stack.status();
            /// One service of the stack, as listed.
            #[derive(serde::Serialize)]
            struct Service {
                service: &'static str,
                address: String,
                up: bool,
            }
            let service = |service, port: u16, up| Service {
                service,
                address: format!("127.0.0.1:{port}"),
                up,
            };
            let primary = if citus { "coordinator" } else { "primary" };
            let workers = stack.spec().workers.iter().zip(&s.workers);
            let services: Vec<Service> = [
                service(primary, spec.pg_port, s.primary),
                service("replica", spec.replica_port, s.replica),
                service("redis", spec.redis_port, s.redis),
                service("redis replica", stack.redis_replica_port(), s.redis_replica),
                service("sentinel", stack.sentinel_port(), s.sentinel),
            ]
            .into_iter()
            .chain(workers.map(|(port, up)| service("citus worker", *port, *up)))
            .collect();
            crate::admin::print_list(json, &services, &["SERVICE", "ADDRESS", "STATE"], |s| {
                vec![
                    s.service.to_owned(),
                    s.address.clone(),
                    if s.up { "up" } else { "DOWN" }.to_owned(),
                ]
            })?;
            if !s.all_up() {
                bail!("some services are down: run `atlas stack up`");
            }
            Ok(())
        }
    }
}

/// Settings left unset are taken from the local stack, when one was brought up.
fn with_stack_defaults(config: &Config) -> Result<Config> {
    let mut config = config.clone();
    // The local stacks that were brought up here, in this order: the plain one, the Citus
    // one, the HA one. The first whose PostgreSQL answers wins, else the first that exists.
    let answers = |port: u16| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::time::Duration::from_millis(200),
        )
        .is_ok()
    };
    let mut found: Vec<(bool, StackUrls, Vec<String>)> = Vec::new();
    for s in [
        Stack::open(&spec(&config))?,
        Stack::open(&citus_spec(&config, false))?,
    ]
    .into_iter()
    .flatten()
    {
        found.push((answers(s.spec().pg_port), s.urls(), Vec::new()));
    }
    let ha_spec = ha_spec(&config, false);
    if let Some(ha) = HaStack::open(&ha_spec)? {
        let up = ha_spec.nodes.iter().any(|n| answers(n.pg_port));
        found.push((up, ha.urls(), ha.patroni_urls()));
    }
    let chosen = match found.iter().position(|f| f.0) {
        Some(i) => Some(found.swap_remove(i)),
        None if !found.is_empty() => Some(found.swap_remove(0)),
        None => None,
    };
    let urls = chosen.map(|(_, urls, patroni)| {
        if config.replication.patroni_urls.is_empty() {
            config.replication.patroni_urls = patroni;
        }
        urls
    });
    if let Some(urls) = urls {
        config
            .admin_database_url
            .get_or_insert(urls.admin_database_url);
        config.database_url.get_or_insert(urls.database_url);
        if config.replica_urls.is_empty() {
            config.replica_urls = urls.replica_urls;
        }
        // The stack's Redis comes with a replica and a Sentinel: use the master it names.
        if config.redis_url.is_none() && config.redis_sentinel_urls.is_empty() {
            config.redis_sentinel_urls = urls.redis_sentinel_urls;
        }
        config.redis_url.get_or_insert(urls.redis_url);
    }
    Ok(config)
}

/// The config with unset settings filled from the local stack.
pub fn resolved(config: &Config) -> Result<Config> {
    with_stack_defaults(config)
}

/// The admin URL, or an error saying how to provide one.
pub fn admin_url(config: &Config) -> Result<String> {
    with_stack_defaults(config)?
        .admin_database_url
        .context("no admin database: set ATLAS_ADMIN_DATABASE_URL (or run `atlas stack up`)")
}

/// The Redis cache, from config or the local stack (disabled when none is configured).
pub fn cache(config: &Config) -> Result<atlas_cache::Cache> {
    Ok(atlas_server::cache(&with_stack_defaults(config)?)?)
}

/// Pools for the app role, from config or the local stack.
pub fn store(config: &Config) -> Result<Store> {
    Ok(atlas_server::store(&with_stack_defaults(config)?)?)
}

/// `atlas migrate`: applies pending migrations; sets the app login's password from
/// ATLAS_DATABASE_URL so the server can log in.
pub async fn migrate(config: &Config, status_only: bool, json: bool) -> Result<()> {
    let resolved = with_stack_defaults(config)?;
    let mut client = crate::connect(&admin_url(config)?).await?;
    if status_only {
        /// One migration, as listed.
        #[derive(serde::Serialize)]
        struct Row {
            /// `None` for a function file (re-applied whenever it changes).
            version: Option<i32>,
            name: &'static str,
            state: &'static str,
        }
        let rows: Vec<Row> = migration_status(&client)
            .await?
            .iter()
            .map(|s| Row {
                version: s.version,
                name: s.name,
                state: match &s.applied_checksum {
                    None => "pending",
                    Some(_) if s.is_current() => "applied",
                    Some(_) if s.is_edited() => "changed since applied",
                    Some(_) => "changed, re-applied by migrate",
                },
            })
            .collect();
        return crate::admin::print_list(json, &rows, &["VERSION", "NAME", "STATE"], |r| {
            vec![
                r.version
                    .map_or_else(|| "functions".to_owned(), |v| v.to_string()),
                r.name.to_owned(),
                r.state.to_owned(),
            ]
        });
    }
    let app = match &resolved.database_url {
        Some(url) => {
            let pg: tokio_postgres::Config = url
                .parse()
                .context("ATLAS_DATABASE_URL is not a valid URL")?;
            match (pg.get_user(), pg.get_password()) {
                (Some(user), Some(password)) => Some(AppLogin {
                    user: user.to_owned(),
                    password: String::from_utf8_lossy(password).into_owned(),
                }),
                _ => None,
            }
        }
        None => None,
    };
    let report = run_migrations(&mut client, app.as_ref()).await?;
    if report.applied.is_empty() && report.functions_applied.is_empty() {
        println!(
            "schema is up to date ({} migrations applied, functions current)",
            report.already_applied
        );
    } else {
        for name in &report.applied {
            println!("applied {name}");
        }
        for name in &report.functions_applied {
            println!("applied functions/{name}");
        }
    }
    Ok(())
}
