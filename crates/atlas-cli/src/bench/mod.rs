//! `atlas bench …`: speed measured on the private stack, each figure against a baseline run
//! in the same process. The shared harness (a fresh database, the server as users run it, CPU
//! and WAL accounting, percentiles) is in `harness`; each verb is a module.

mod cdc;
mod failover;
mod harness;
mod ingest;
mod read;

use anyhow::Result;
use atlas_config::Config;

/// Bench verbs.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Durable HTTP ingest vs raw COPY and per-row INSERT.
    Ingest(ingest::IngestArgs),
    /// Read latencies of every read endpoint, on cache hit and miss, at a fixed rate.
    Read(read::ReadArgs),
    /// CDC: events/s from the slot to the analytics store, and commit-to-store lag at a
    /// steady ingest rate.
    Cdc(cdc::CdcArgs),
    /// Failover on the HA stack: SIGKILL of the primary during durable ingest at half of
    /// full speed (values acknowledged, lost, duplicated; write outage), and synchronous vs
    /// asynchronous replication throughput.
    Failover(failover::FailoverArgs),
}

/// Runs a bench verb.
pub async fn run(config: &Config, cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Ingest(args) => ingest::run(config, &args).await,
        BenchCmd::Read(args) => read::run(config, &args).await,
        BenchCmd::Cdc(args) => cdc::run(config, &args).await,
        BenchCmd::Failover(args) => failover::run(config, &args).await,
    }
}
