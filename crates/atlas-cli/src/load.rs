//! `atlas load FILE`: bulk telemetry from NDJSON or CSV through the same validation and the
//! same durable pipeline as `POST /v1/telemetry`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use atlas_config::Config;
use atlas_ingest::typing::type_readings;
use atlas_ingest::{Catalog, Durability, IngestConfig, Ingestor, Reading, TimeRules};
use atlas_store::{StoreError, TenantId};
use indicatif::{ProgressBar, ProgressStyle};

/// Input formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One reading per line: `{"entity_id": 1, "ts": 1764072000000, "values": {...}}`.
    Ndjson,
    /// Header `entity_id,ts,attribute,value`; `ts` may be empty; a value that parses as JSON
    /// (number, true/false, object…) is taken as such, anything else as a string.
    Csv,
}

/// `atlas load` options.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The file (NDJSON or CSV).
    file: PathBuf,
    /// The tenant whose entities the readings are for.
    #[arg(long)]
    tenant: i64,
    /// Input format (default: from the file name; .csv is CSV, anything else NDJSON).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Readings per submitted batch.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
}

fn parse_csv_line(line: &str, n: usize) -> Result<Reading> {
    // Four fields; the value is the rest of the line (it may contain commas, e.g. JSON).
    let mut parts = line.splitn(4, ',');
    let (Some(entity), Some(ts), Some(attribute), Some(value)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("line {n}: expected entity_id,ts,attribute,value");
    };
    let entity_id: i64 = entity
        .trim()
        .parse()
        .with_context(|| format!("line {n}: entity_id `{entity}` is not an integer"))?;
    let ts = match ts.trim() {
        "" => None,
        t => Some(
            t.parse::<i64>()
                .with_context(|| format!("line {n}: ts `{t}` is not epoch milliseconds"))?,
        ),
    };
    let raw = value.trim();
    let value =
        serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()));
    let mut values = serde_json::Map::new();
    values.insert(attribute.trim().to_owned(), value);
    Ok(Reading {
        entity_id,
        ts,
        values,
    })
}

/// Runs `atlas load`.
pub async fn run(config: &Config, args: &LoadArgs) -> Result<()> {
    let resolved = crate::stack::resolved(config)?;
    let store = crate::stack::store(config)?;
    let tenant = TenantId(args.tenant);
    let t = store
        .get_tenant(args.tenant)
        .await?
        .with_context(|| format!("no tenant {}", args.tenant))?;
    if !t.is_active {
        bail!("tenant {} is deactivated", args.tenant);
    }
    let format = args.format.unwrap_or_else(|| {
        if args
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            Format::Csv
        } else {
            Format::Ndjson
        }
    });
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let catalog = Catalog::new(store.list_attributes().await?);
    let coverage = store.ts_partition_coverage().await?;
    let cache = crate::stack::cache(config)?;
    let (ingestor, pipeline) = Ingestor::start(
        store.clone(),
        cache.clone(),
        IngestConfig::from_settings(&resolved.ingest),
    );

    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({msg})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut stored = 0usize;
    let mut batch: Vec<(usize, Reading)> = Vec::new();
    // Lines without ts take the receipt time, each its own microsecond.
    let receipt = atlas_ingest::ReceiptClock::default();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut n = 0usize;
    let mut in_flight = Vec::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        bar.inc(read as u64);
        let done = read == 0;
        if !done {
            n += 1;
            let text = line.trim_end();
            let skip = text.is_empty()
                || (matches!(format, Format::Csv) && n == 1 && text.starts_with("entity_id"));
            if !skip {
                let reading = match format {
                    Format::Ndjson => serde_json::from_str::<Reading>(text)
                        .with_context(|| format!("line {n}: not a telemetry reading"))?,
                    Format::Csv => parse_csv_line(text, n)?,
                };
                batch.push((n, reading));
            }
        }
        if batch.len() >= args.batch as usize || (done && !batch.is_empty()) {
            let lines: Vec<usize> = batch.iter().map(|(l, _)| *l).collect();
            let readings: Vec<Reading> = std::mem::take(&mut batch)
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            let time = TimeRules {
                now: receipt.reserve_for(&readings),
                max_future: chrono::Duration::seconds(resolved.limits.max_future_skew_s),
                coverage: coverage.clone(),
            };
            // The same validation as the API; errors name the file's line.
            let rows = type_readings(tenant, &readings, &catalog, &time, &|i| {
                format!("line {}", lines[i])
            })
            .map_err(|e| {
                let hint = backfill_hint(&readings, &time, e.reason).unwrap_or_default();
                anyhow::anyhow!("{}: {}{hint}", e.field, e.message)
            })?;
            let unknown = atlas_ingest::typing::first_unknown_entity(&store, tenant, &readings)
                .await
                .map_err(|e: StoreError| anyhow::anyhow!(e))?;
            if let Some(i) = unknown {
                bail!(
                    "line {}: entity {} is not a live entity of tenant {}",
                    lines[i],
                    readings[i].entity_id,
                    args.tenant
                );
            }
            let count = rows.len();
            let ing = ingestor.clone();
            // A few batches in flight keep the writers busy; each is acknowledged durably.
            in_flight.push(tokio::spawn(async move {
                ing.submit(rows, Durability::Durable).await.map(|_| count)
            }));
            if in_flight.len() >= 4 {
                stored += in_flight.remove(0).await??;
            }
            #[allow(clippy::cast_precision_loss)]
            bar.set_message(format!(
                "{:.0} values/s",
                stored as f64 / started.elapsed().as_secs_f64().max(1e-3)
            ));
        }
        if done {
            break;
        }
    }
    for t in in_flight {
        stored += t.await??;
    }
    drop(ingestor);
    pipeline.shutdown().await;
    bar.finish_and_clear();
    crate::admin::settle(&cache).await;
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = stored as f64 / secs.max(1e-3);
    println!(
        "loaded {stored} values from {} lines in {secs:.1} s ({rate:.0} values/s, durable)",
        n
    );
    Ok(())
}

/// For a reading refused because it is older than every partition, how an operator makes
/// room for it (a new installation has partitions from its first month on): the history a
/// loader imports is exactly such data.
fn backfill_hint(readings: &[Reading], time: &TimeRules, reason: &str) -> Option<String> {
    if reason != "time_out_of_range" {
        return None;
    }
    // type_readings stops at the first refusal, so the refused reading is the first whose
    // time fails.
    let ts = readings.iter().find(|r| time.check(r.ts).is_err())?.ts?;
    let at = chrono::DateTime::from_timestamp_millis(ts)?;
    let oldest = time.coverage.iter().map(|(lo, _)| *lo).min()?;
    (at < oldest).then(|| {
        format!(
            " (to store older readings, first run: atlas maintain backfill --since {})",
            at.date_naive()
        )
    })
}
