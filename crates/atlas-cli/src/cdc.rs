//! `atlas cdc`: the logical CDC consumer — slot `cdc.slot_name` on the primary's Atlas
//! database, NDJSON files under `cdc.ndjson_dir`, the analytics store `cdc.analytics_database`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use atlas_cdc::{AnalyticsSink, Consumer, NdjsonSink, Settings, Sink, Source};
use atlas_config::Config;

/// Options of `atlas cdc`.
#[derive(Debug, clap::Args)]
pub struct CdcArgs {
    /// Deliver what the slot holds now, print a summary and exit.
    #[arg(long)]
    pub once: bool,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Drop the slot (releasing the WAL it retains) and exit.
    #[arg(long)]
    pub drop_slot: bool,
    /// When the slot has lost WAL it needed (it fell further behind than
    /// `max_slot_wal_keep_size`), drop it, create it again and deliver a new initial snapshot
    /// (the analytics state is rebuilt; the change history has a gap). Without this flag
    /// `atlas cdc` stops and says so instead.
    #[arg(long)]
    pub resnapshot_lost_slot: bool,
    /// Test hook: stop after the sinks confirmed a batch, before the slot advance.
    #[arg(long, hide = true)]
    pub pause_before_advance: bool,
}

/// The URLs CDC uses: the slot's database and the analytics store, both as the admin (a
/// superuser may use slots and writes every tenant's rows). `resolved`: the config with the
/// local stack's defaults filled in.
fn urls(resolved: &Config) -> Result<(String, Option<String>)> {
    let Some(admin) = resolved.admin_database_url.clone() else {
        bail!("atlas cdc needs admin_database_url (a role that may use replication slots)");
    };
    let analytics = if resolved.cdc.analytics_database.is_empty() {
        None
    } else {
        Some(atlas_cdc::with_database(
            &admin,
            &resolved.cdc.analytics_database,
        )?)
    };
    Ok((admin, analytics))
}

/// The consumer's settings from `[cdc]` (test hooks and the lost-slot remedy off).
pub(crate) fn settings(c: &atlas_config::Cdc) -> Settings {
    Settings {
        batch_events: c.batch_events.get(),
        batch_interval: c.batch_interval,
        heartbeat_interval: c.heartbeat_interval,
        pause_before_advance: false,
        resnapshot_lost_slot: false,
        history_retention: (c.history_retention_days > 0)
            .then(|| Duration::from_secs(u64::from(c.history_retention_days) * 86_400)),
        prune_interval: c.prune_interval,
    }
}

/// The consumer for a resolved `config`: sinks, analytics store prepared, slot and snapshot.
async fn consumer(config: &Config, args: &CdcArgs) -> Result<Consumer> {
    let (admin, analytics) = urls(config)?;
    let c = &config.cdc;
    let source = Source::connect(&admin, &c.slot_name).await?;
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !c.ndjson_dir.is_empty() {
        sinks.push(Box::new(NdjsonSink::new(&c.ndjson_dir)));
    }
    if let Some(url) = &analytics {
        atlas_cdc::prepare_analytics(&admin, &c.analytics_database)
            .await
            .context("preparing the analytics store")?;
        sinks.push(Box::new(AnalyticsSink::connect(url, &c.slot_name).await?));
    }
    if sinks.is_empty() {
        bail!("no sink: set cdc.ndjson_dir and/or cdc.analytics_database");
    }
    let mut consumer = Consumer::new(
        source,
        sinks,
        Settings {
            pause_before_advance: args.pause_before_advance,
            resnapshot_lost_slot: args.resnapshot_lost_slot,
            ..settings(c)
        },
    );
    let rows = consumer.start(&admin).await.map_err(|e| match e {
        lost @ atlas_cdc::CdcError::SlotLost { .. } => anyhow::Error::new(lost).context(
            "atlas cdc cannot resume; run it once with --resnapshot-lost-slot to re-create the \
             slot from a new initial snapshot (the analytics state is rebuilt, its change \
             history keeps a gap), or --drop-slot to remove it",
        ),
        other => other.into(),
    })?;
    if rows > 0 {
        tracing::info!(slot = %c.slot_name, rows, "initial snapshot delivered");
    }
    if !config.replication.patroni_urls.is_empty() {
        let database = consumer.source().database().to_owned();
        if let Err(e) =
            register_permanent_slot(&config.replication.patroni_urls, &c.slot_name, &database).await
        {
            tracing::warn!(error = %format!("{e:#}"), slot = %c.slot_name,
                "could not make the slot a Patroni permanent slot: after a failover the new \
                 primary will not have it, and atlas cdc will start again from a new snapshot");
        }
    }
    Ok(consumer)
}

/// Declares the slot a Patroni permanent slot (PATCH of the cluster's dynamic configuration,
/// idempotent): Patroni then keeps a copy on every standby and advances it as the primary's
/// confirmed position moves, so after a failover `atlas cdc` finds its slot on the new
/// primary (at most one Patroni loop behind: those changes are replayed and the sinks skip
/// what they already hold) instead of starting again from a snapshot.
async fn register_permanent_slot(urls: &[String], slot: &str, database: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let body = serde_json::json!({
        "slots": {slot: {"type": "logical", "database": database, "plugin": "pgoutput"}}
    });
    let mut errors = Vec::new();
    for url in urls {
        let url = format!("{}/config", url.trim_end_matches('/'));
        match http.patch(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(slot, %url, "slot is a Patroni permanent slot");
                return Ok(());
            }
            Ok(r) => errors.push(format!("{url}: {}", r.status())),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    bail!("no Patroni member accepted the slot: {}", errors.join("; "))
}

/// Runs `atlas cdc`.
pub async fn run(config: &Config, args: &CdcArgs) -> Result<()> {
    let config = crate::stack::resolved(config)?;
    if args.drop_slot {
        let (admin, _) = urls(&config)?;
        Source::connect(&admin, &config.cdc.slot_name)
            .await?
            .drop_slot()
            .await?;
        println!("dropped slot {}", config.cdc.slot_name);
        return Ok(());
    }
    if args.once {
        let mut c = consumer(&config, args).await?;
        let started = std::time::Instant::now();
        // A heartbeat first: the store's newest commit time is then "now", not the last write.
        c.heartbeat_if_due().await?;
        let report = c.drain().await?;
        let pruned = c.prune().await?;
        let state = c.export_slot_state().await?;
        println!(
            "{}",
            serde_json::json!({
                "transactions": report.transactions,
                "events": report.events,
                "end_lsn": report.end_lsn,
                "lag_ms": report.lag_ms,
                "seconds": started.elapsed().as_secs_f64(),
                "retained_wal_bytes": state.and_then(|s| s.retained_bytes),
                "pruned_history": pruned.history,
                "pruned_values": pruned.values,
                "pruned_ndjson_files": pruned.files,
            })
        );
        return Ok(());
    }
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let mut s = stop.clone();
        tokio::spawn(atlas_api::metrics::serve_metrics_only(
            listener,
            async move {
                let _ = s.changed().await;
            },
        ));
    }
    tokio::spawn(async move {
        crate::admin::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(slot = %config.cdc.slot_name, "atlas cdc running");
    // A lost connection (restart, failover) is retried from the slot's confirmed position:
    // nothing the sinks did not confirm was advanced past.
    // The delay grows while attempts fail quickly and starts small again after a run that
    // worked for a while. A lost slot is not retried: no attempt can succeed.
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        let result = match consumer(&config, args).await {
            Ok(mut c) => c.run(&mut stop).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if *stop.borrow() {
            tracing::info!("atlas cdc stopped");
            return Ok(());
        }
        if let Err(e) = result {
            if matches!(
                e.downcast_ref::<atlas_cdc::CdcError>(),
                Some(atlas_cdc::CdcError::SlotLost { .. })
            ) {
                return Err(e);
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(200);
            }
            tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis(), "cdc failed; reconnecting");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
