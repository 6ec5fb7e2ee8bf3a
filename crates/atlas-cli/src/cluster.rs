//! `atlas cluster …` and `atlas tenant isolate`: growing a Citus cluster (as the admin
//! connection, on the coordinator).

use anyhow::{Context, Result, bail};
use atlas_config::Config;
use atlas_store::cluster;
use clap::Subcommand;
use indicatif::ProgressBar;

/// What to do with the Citus cluster.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The coordinator and the workers, with their shard counts and bytes.
    Nodes {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register a worker (`HOST:PORT`). The worker must run PostgreSQL 15 with Citus
    /// preloaded and have this database with `CREATE EXTENSION citus` done; reference tables
    /// are copied to it. Shards move to it only with `atlas cluster rebalance`.
    AddWorker {
        /// The worker's address as the coordinator reaches it.
        address: String,
    },
    /// Move shards so every worker holds a fair share, while Atlas keeps running (writes to
    /// the shard group being copied wait for its copy; reads and other shards go on).
    Rebalance,
}

/// `HOST:PORT`, checked.
fn parse_address(address: &str) -> Result<(String, i32)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("address must be HOST:PORT, got `{address}`"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("address: `{port}` is not a port number"))?;
    if host.is_empty() || port == 0 {
        bail!("address must be HOST:PORT with a port above 0, got `{address}`");
    }
    Ok((host.to_owned(), i32::from(port)))
}

async fn coordinator(config: &Config) -> Result<tokio_postgres::Client> {
    let client = crate::connect(&crate::stack::admin_url(config)?).await?;
    if !cluster::is_citus(&client).await? {
        bail!(
            "the database is not a Citus coordinator (no citus extension): \
             `atlas cluster` manages a Citus cluster (`atlas stack up --citus`)"
        );
    }
    Ok(client)
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Runs a cluster command.
pub async fn run(config: &Config, cmd: ClusterCmd) -> Result<()> {
    let client = coordinator(config).await?;
    match cmd {
        ClusterCmd::Nodes { json } => {
            let nodes = cluster::citus_nodes(&client).await?;
            crate::admin::print_list(
                json,
                &nodes,
                &["NODE", "ADDRESS", "ROLE", "STATE", "SHARDS", "BYTES"],
                |n| {
                    vec![
                        n.node_id.to_string(),
                        format!("{}:{}", n.host, n.port),
                        if n.coordinator {
                            "coordinator"
                        } else {
                            "worker"
                        }
                        .to_owned(),
                        if n.active { "active" } else { "INACTIVE" }.to_owned(),
                        n.shards.to_string(),
                        n.bytes.to_string(),
                    ]
                },
            )
        }
        ClusterCmd::AddWorker { address } => {
            let (host, port) = parse_address(&address)?;
            let id = cluster::citus_add_worker(&client, &host, port)
                .await
                .with_context(|| {
                    format!(
                        "adding worker {address} (does it run Citus, with this database and \
                         `CREATE EXTENSION citus` in it, and accept the coordinator's logins?)"
                    )
                })?;
            println!(
                "worker {address} is node {id}; run `atlas cluster rebalance` to move shards to it"
            );
            Ok(())
        }
        ClusterCmd::Rebalance => {
            let bar = spinner("moving shards (writes to a moving shard wait for its copy)…");
            let moved = cluster::citus_rebalance(&client).await;
            bar.finish_and_clear();
            let moved = moved.context("rebalancing")?;
            println!("rebalanced: {moved} shard moves");
            Ok(())
        }
    }
}

/// `atlas tenant isolate`: the tenant's rows on a shard of their own.
pub async fn isolate_tenant(config: &Config, tenant: i64) -> Result<()> {
    let client = coordinator(config).await?;
    let bar = spinner("splitting the tenant's shards (their writes wait for the copy)…");
    let shard = cluster::citus_isolate_tenant(&client, tenant).await;
    bar.finish_and_clear();
    let shard = shard.with_context(|| format!("isolating tenant {tenant}"))?;
    println!(
        "tenant {tenant} has shard {shard} of its own; `atlas cluster rebalance` (or \
         citus_move_shard_placement) can give it a worker"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            parse_address("10.0.0.5:5432").ok(),
            Some(("10.0.0.5".to_owned(), 5432))
        );
        assert!(parse_address("10.0.0.5").is_err());
        assert!(parse_address(":5432").is_err());
        assert!(parse_address("h:0").is_err());
        assert!(parse_address("h:99999").is_err());
    }
}
