//! `atlas`: the one binary — local stack, migrations, demo data and operations.

mod admin;
mod bench;
mod cdc;
mod cluster;
mod demo;
mod load;
mod stack;
mod status;

use anyhow::{Context, Result};
use atlas_config::{Config, ConfigArgs};
use clap::{Parser, Subcommand};

/// Atlas: a multi-tenant telemetry store for device fleets on PostgreSQL and Redis.
#[derive(Debug, Parser)]
#[command(name = "atlas", version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Private local PostgreSQL (primary + replica) and Redis.
    Stack {
        #[command(subcommand)]
        action: stack::StackAction,
    },
    /// Apply pending migrations (as the admin connection).
    Migrate {
        /// Only show which migrations are applied.
        #[arg(long)]
        status: bool,
        /// With --status: one JSON array instead of a table.
        #[arg(long, requires = "status")]
        json: bool,
    },
    /// Load a small demo fleet: tenants, attributes of every type, entities and an hour of values.
    Demo(demo::DemoArgs),
    /// Serve the HTTP API.
    Serve,
    /// Load telemetry from an NDJSON or CSV file (same validation as the API, durable).
    Load(load::LoadArgs),
    /// Tenants: create, list, deactivate and reactivate (by name or id).
    Tenant {
        #[command(subcommand)]
        cmd: admin::TenantCmd,
    },
    /// Tenant API keys.
    Key {
        #[command(subcommand)]
        cmd: admin::KeyCmd,
    },
    /// The attribute catalogue.
    Attribute {
        #[command(subcommand)]
        cmd: admin::AttributeCmd,
    },
    /// Benchmarks (print figures; see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
    /// One maintenance round now (partitions, retention, BRIN, heartbeat cleanup, stats),
    /// whoever leads; `refresh-stats` only refreshes the attribute statistics.
    Maintain {
        #[command(subcommand)]
        what: Option<MaintainCmd>,
    },
    /// The whole system at a glance: databases, Redis hit rate, staging backlog, partitions.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Logical CDC: stream the publication eav_cdc as Debezium-shaped events to the NDJSON
    /// files and the analytics store (at-least-once; the store applies each change once).
    Cdc(cdc::CdcArgs),
    /// A Citus cluster: its nodes, adding a worker, rebalancing shards.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Move staged rows into the time series until staging is empty.
    Flush {
        /// Rows per stage_flush call.
        #[arg(long, default_value_t = 50_000)]
        batch: i32,
    },
}

#[derive(Debug, Subcommand)]
enum MaintainCmd {
    /// Refresh the attribute statistics view now (CONCURRENTLY: readers are not blocked).
    RefreshStats,
    /// Create time-series partitions back to a date (UTC), so older readings can be stored:
    /// history imported with `atlas load`. Monthly or daily as `[maintenance]` says; a date
    /// retention would drop again is refused.
    Backfill {
        /// The oldest day to cover, YYYY-MM-DD.
        #[arg(long)]
        since: chrono::NaiveDate,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colour only for a person at a terminal: logs redirected to files stay plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATLAS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, whatever RUST_BACKTRACE says: these are answers to
            // the user, not crashes (a panic still prints its backtrace).
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Stack { action } => stack::run(&config, action),
        Command::Migrate { status, json } => stack::migrate(&config, status, json).await,
        Command::Demo(args) => demo::run(&config, &args).await,
        Command::Serve => admin::serve(&config).await,
        Command::Load(args) => load::run(&config, &args).await,
        Command::Bench { cmd } => bench::run(&config, cmd).await,
        Command::Tenant { cmd } => admin::tenant(&config, cmd).await,
        Command::Cluster { cmd } => cluster::run(&config, cmd).await,
        Command::Key { cmd } => admin::key(&config, cmd).await,
        Command::Attribute { cmd } => admin::attribute(&config, cmd).await,
        Command::Status { json } => status::run(&config, json).await,
        Command::Cdc(args) => cdc::run(&config, &args).await,
        Command::Maintain { what } => {
            let resolved = stack::resolved(&config)?;
            let m = atlas_maintain::Maintainer::new(
                stack::store(&config)?,
                atlas_maintain::Settings::from_config(&resolved.maintenance),
            );
            match what {
                Some(MaintainCmd::RefreshStats) => {
                    let started = std::time::Instant::now();
                    let rows = m.refresh_stats().await?;
                    println!(
                        "refreshed mv_entity_attribute_stats: {rows} rows in {:.2} s",
                        started.elapsed().as_secs_f64()
                    );
                    Ok(())
                }
                Some(MaintainCmd::Backfill { since }) => {
                    let created = m
                        .backfill(
                            since.and_time(chrono::NaiveTime::MIN).and_utc(),
                            chrono::Utc::now(),
                        )
                        .await
                        .with_context(|| format!("backfill --since {since}"))?;
                    match (created.last(), created.first()) {
                        (Some(oldest), Some(newest)) => println!(
                            "created {} partition(s), {oldest} to {newest}; readings from {since} on can be stored",
                            created.len()
                        ),
                        _ => println!("{since} is already covered: no partition created"),
                    }
                    Ok(())
                }
                None => {
                    let report = m.run_once(chrono::Utc::now()).await;
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    if report.errors.is_empty() {
                        Ok(())
                    } else {
                        anyhow::bail!("{} maintenance task(s) failed", report.errors.len())
                    }
                }
            }
        }
        Command::Flush { batch } => {
            let store = stack::store(&config)?;
            // The backlog (bounded count) sizes the bar; rows staged meanwhile extend it.
            let waiting = store.staging_backlog(i32::MAX).await?.rows;
            let bar = indicatif::ProgressBar::new(u64::try_from(waiting).unwrap_or(0));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "flushing {bar:40} {pos}/{len} staged rows stored ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let total = demo::flush_all(&store, batch, Some(&bar)).await?;
            bar.finish_and_clear();
            println!("flushed {total} values");
            Ok(())
        }
    }
}

/// Connects one client (its connection task runs in the background).
pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    atlas_store::connect(url)
        .await
        .context("connecting to PostgreSQL")
}
