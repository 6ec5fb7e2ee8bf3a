//! `atlas load FILE`: bulk telemetry from NDJSON or CSV through the same validation and the
//! same durable pipeline as `POST /v1/telemetry`, reporting what was stored, what was already
//! stored and what was refused, line by line.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use atlas_config::Config;
use atlas_ingest::typing::type_readings;
use atlas_ingest::{Catalog, Durability, IngestConfig, IngestError, Ingestor, Reading, TimeRules};
use atlas_store::TenantId;
use atlas_store::admin::DataType;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Input formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One reading per line: `{"entity_id": 1, "ts": 1764072000000, "values": {...}}`.
    Ndjson,
    /// RFC 4180 CSV with a header naming the columns `entity_id`, `ts` (optional),
    /// `attribute` and `value` in any order (without a header: exactly those four, in that
    /// order). `ts` is epoch milliseconds or RFC 3339, empty for the receipt time; a value is
    /// read as its attribute's type says (a string attribute takes the cell as text, a json one
    /// as a JSON document).
    Csv,
}

/// `atlas load` options.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The file (NDJSON or CSV).
    file: PathBuf,
    /// The tenant whose entities the readings are for (name or id).
    #[arg(long)]
    tenant: String,
    /// Input format (default: from the file name; .csv is CSV, anything else NDJSON).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Readings per submitted batch.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Store every valid line and write each refused one to FILE as a JSON line
    /// `{"line", "error", "input"}` instead of stopping at the first.
    #[arg(long, value_name = "FILE")]
    skip_invalid: Option<PathBuf>,
}

/// One input record: its line, the reading or why it is not one, and its text.
struct Record {
    line: usize,
    reading: Result<Reading, String>,
    text: String,
}

/// Where the columns of a CSV file are.
#[derive(Debug, Clone, Copy)]
struct Columns {
    entity_id: usize,
    ts: Option<usize>,
    attribute: usize,
    value: usize,
}

impl Columns {
    const DEFAULT: Columns = Columns {
        entity_id: 0,
        ts: Some(1),
        attribute: 2,
        value: 3,
    };

    /// The columns a header names; `None` when the row is not a header (data in the default
    /// order).
    fn from_header(row: &csv::StringRecord) -> Result<Option<Columns>> {
        let names: Vec<String> = row.iter().map(|c| c.trim().to_ascii_lowercase()).collect();
        if row.len() == 4 && row.get(0).is_some_and(|c| c.trim().parse::<i64>().is_ok()) {
            return Ok(None);
        }
        let find = |name: &str| names.iter().position(|n| n == name);
        if let Some(unknown) = names
            .iter()
            .find(|n| !["entity_id", "ts", "attribute", "value"].contains(&n.as_str()))
        {
            bail!(
                "line 1: unknown column `{unknown}`: the header names entity_id, ts (optional), \
                 attribute and value, in any order"
            );
        }
        let need = |name: &str| {
            find(name).with_context(|| format!("line 1: the header has no `{name}` column"))
        };
        Ok(Some(Columns {
            entity_id: need("entity_id")?,
            ts: find("ts"),
            attribute: need("attribute")?,
            value: need("value")?,
        }))
    }
}

/// The time of a CSV cell: empty (the receipt time), epoch milliseconds or RFC 3339.
fn csv_ts(cell: &str) -> Result<Option<i64>, String> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(None);
    }
    if let Ok(ms) = cell.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(cell)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| format!("ts `{cell}` is neither epoch milliseconds nor RFC 3339"))
}

/// A CSV cell as the value its attribute takes: text for a string attribute, a JSON document
/// for a json one, otherwise JSON when it reads as JSON (numbers, true/false), else text (dates,
/// timestamps) — the typing then checks it as the API does.
fn csv_value(cell: &str, data_type: Option<DataType>) -> Result<Value, String> {
    match data_type {
        Some(DataType::String) => Ok(Value::String(cell.to_owned())),
        Some(DataType::Json) => serde_json::from_str(cell)
            .map_err(|e| format!("value is not a JSON document ({e}) for a json attribute")),
        _ => Ok(serde_json::from_str::<Value>(cell.trim())
            .ok()
            .filter(|v| !v.is_string())
            .unwrap_or_else(|| Value::String(cell.to_owned()))),
    }
}

fn csv_reading(
    row: &csv::StringRecord,
    cols: Columns,
    catalog: &Catalog,
) -> Result<Reading, String> {
    let cell = |i: usize, name: &str| {
        row.get(i)
            .ok_or_else(|| format!("no `{name}` cell (the row has {} cells)", row.len()))
    };
    let entity = cell(cols.entity_id, "entity_id")?.trim();
    let entity_id = entity
        .parse::<i64>()
        .map_err(|_| format!("entity_id `{entity}` is not an integer"))?;
    let ts = match cols.ts {
        Some(i) => csv_ts(cell(i, "ts")?)?,
        None => None,
    };
    let attribute = cell(cols.attribute, "attribute")?.trim().to_owned();
    let value = csv_value(
        cell(cols.value, "value")?,
        catalog.resolve(&attribute).map(|r| r.data_type),
    )
    .map_err(|e| format!("{attribute}: {e}"))?;
    let mut values = serde_json::Map::new();
    values.insert(attribute, value);
    Ok(Reading {
        entity_id,
        ts,
        values,
    })
}

/// The records of the input file, one at a time.
enum Input {
    Ndjson {
        reader: BufReader<std::fs::File>,
        line: usize,
        read: u64,
    },
    Csv {
        reader: csv::Reader<std::fs::File>,
        columns: Option<Columns>,
    },
}

impl Input {
    fn open(path: &std::path::Path, format: Format) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(match format {
            Format::Ndjson => Input::Ndjson {
                reader: BufReader::new(file),
                line: 0,
                read: 0,
            },
            Format::Csv => Input::Csv {
                // Records end at `\n` only (a CRLF row's `\r` is trimmed off its last cell):
                // with the default CRLF terminator the reader counts a CRLF file's lines one
                // behind, and errors must name the right line.
                reader: csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_reader(file),
                columns: None,
            },
        })
    }

    /// Bytes read so far (for the progress bar).
    fn position(&self) -> u64 {
        match self {
            Input::Ndjson { read, .. } => *read,
            Input::Csv { reader, .. } => reader.position().byte(),
        }
    }

    /// The next record; `None` at the end. Only I/O and header errors are `Err`: a record
    /// that is not a reading carries its reason.
    fn next(&mut self, catalog: &Catalog) -> Result<Option<Record>> {
        match self {
            Input::Ndjson { reader, line, read } => loop {
                let mut bytes = Vec::new();
                let n = reader.read_until(b'\n', &mut bytes)?;
                if n == 0 {
                    return Ok(None);
                }
                *read += n as u64;
                *line += 1;
                // A line that is not UTF-8 is refused like any other bad line.
                let (text, utf8) = match String::from_utf8(bytes) {
                    Ok(t) => (t, true),
                    Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), false),
                };
                let text = without_bom(text.trim_end(), *line).to_owned();
                if text.trim().is_empty() {
                    continue;
                }
                let reading = if utf8 {
                    serde_json::from_str::<Reading>(&text)
                        .map_err(|e| format!("not a telemetry reading: {e}"))
                } else {
                    Err("the line is not UTF-8 text".to_owned())
                };
                return Ok(Some(Record {
                    line: *line,
                    reading,
                    text,
                }));
            },
            Input::Csv { reader, columns } => loop {
                let mut bytes = csv::ByteRecord::new();
                if !reader.read_byte_record(&mut bytes)? {
                    return Ok(None);
                }
                let line = bytes
                    .position()
                    .map_or(0, |p| usize::try_from(p.line()).unwrap_or(0));
                let mut row = match csv::StringRecord::from_byte_record(bytes) {
                    Ok(row) => row,
                    Err(e) => {
                        let raw = e.into_byte_record();
                        let text: Vec<String> = raw
                            .iter()
                            .map(|c| String::from_utf8_lossy(c).into_owned())
                            .collect();
                        return Ok(Some(Record {
                            line,
                            reading: Err("the row is not UTF-8 text".to_owned()),
                            text: text.join(","),
                        }));
                    }
                };
                // Spreadsheets start their CSV exports with a byte-order mark and end rows
                // with CRLF.
                let last = row.len().saturating_sub(1);
                if (line == 1 && row.get(0).is_some_and(|c| c.starts_with('\u{feff}')))
                    || row.get(last).is_some_and(|c| c.ends_with('\r'))
                {
                    let cells: Vec<String> = row
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let c = if i == 0 { without_bom(c, line) } else { c };
                            let c = if i == last {
                                c.strip_suffix('\r').unwrap_or(c)
                            } else {
                                c
                            };
                            c.to_owned()
                        })
                        .collect();
                    row = csv::StringRecord::from(cells);
                }
                if row.iter().all(|c| c.trim().is_empty()) {
                    continue;
                }
                let cols = match columns {
                    Some(c) => *c,
                    None => match Columns::from_header(&row)? {
                        Some(c) => {
                            *columns = Some(c);
                            continue;
                        }
                        None => *columns.insert(Columns::DEFAULT),
                    },
                };
                let mut text = Vec::new();
                {
                    let mut w = csv::Writer::from_writer(&mut text);
                    w.write_record(&row)?;
                }
                return Ok(Some(Record {
                    line,
                    reading: csv_reading(&row, cols, catalog),
                    text: String::from_utf8_lossy(&text).trim_end().to_owned(),
                }));
            },
        }
    }
}

/// `text` without the byte-order mark a first line may start with.
fn without_bom(text: &str, line: usize) -> &str {
    if line == 1 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    }
}

/// What a load did, for the summary.
#[derive(Debug, Default)]
struct Outcome {
    stored: usize,
    already: usize,
    refused: usize,
    /// The line ranges of the batches the database acknowledged (first, last line).
    written: Vec<(usize, usize)>,
}

impl Outcome {
    /// Which lines were written, for a load that stopped: merged ranges in line order.
    fn written_lines(&self) -> String {
        let mut ranges = self.written.clone();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        if merged.is_empty() {
            return "nothing of the file was written".to_owned();
        }
        let list: Vec<String> = merged
            .iter()
            .map(|(a, b)| {
                if a == b {
                    format!("{a}")
                } else {
                    format!("{a}–{b}")
                }
            })
            .collect();
        let plural = if merged.len() > 1 || merged[0].0 != merged[0].1 {
            "s"
        } else {
            ""
        };
        format!("written: line{plural} {}; no other line", list.join(", "))
    }
}

/// Refused lines: written to the rejects file with `--skip-invalid`, else the load stops.
struct Rejects {
    file: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
}

impl Rejects {
    fn reject(&mut self, line: usize, error: &str, input: &str) -> Result<()> {
        let Some((path, w)) = &mut self.file else {
            bail!("line {line}: {error}");
        };
        serde_json::to_writer(
            &mut *w,
            &serde_json::json!({"line": line, "error": error, "input": input}),
        )?;
        w.write_all(b"\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Runs `atlas load`.
pub async fn run(config: &Config, args: &LoadArgs) -> Result<()> {
    let resolved = crate::stack::resolved(config)?;
    let store = crate::stack::store(config)?;
    let t = crate::admin::resolve_tenant(&store, &args.tenant).await?;
    let tenant = TenantId(t.tenant_id);
    if !t.is_active {
        bail!("tenant {} is deactivated", t.tenant_name);
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
    let mut input = Input::open(&args.file, format)?;
    let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let catalog = Catalog::new(store.list_attributes().await?);
    let coverage = store.ts_partition_coverage().await?;
    let mut rejects = Rejects {
        file: match &args.skip_invalid {
            Some(path) => Some((
                path.clone(),
                std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                ),
            )),
            None => None,
        },
    };
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
    let mut out = Outcome::default();
    // Lines without ts take the receipt time, each its own microsecond.
    let receipt = atlas_ingest::ReceiptClock::default();
    let mut batch: Vec<Record> = Vec::new();
    let mut in_flight: Vec<tokio::task::JoinHandle<Submitted>> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    loop {
        let record = match input.next(&catalog) {
            Ok(r) => r,
            Err(e) => {
                failure = Some(e);
                None
            }
        };
        bar.set_position(input.position());
        let done = record.is_none();
        if let Some(r) = record {
            batch.push(r);
        }
        if batch.len() >= args.batch as usize || (done && !batch.is_empty()) {
            let records = std::mem::take(&mut batch);
            let first_line = records.first().map_or(0, |r| r.line);
            let time = TimeRules {
                now: receipt.reserve_for(
                    &records
                        .iter()
                        .filter_map(|r| r.reading.as_ref().ok().cloned())
                        .collect::<Vec<_>>(),
                ),
                max_future: chrono::Duration::from_std(resolved.limits.max_future_skew)
                    .unwrap_or(chrono::Duration::MAX),
                coverage: coverage.clone(),
            };
            match validate(&store, tenant, &t.tenant_name, records, &catalog, &time).await {
                Ok((rows, lines, refused)) => {
                    for (line, error, text) in refused {
                        if let Err(e) = rejects.reject(line, &error, &text) {
                            failure = Some(e);
                            break;
                        }
                        out.refused += 1;
                    }
                    // Without --skip-invalid nothing of a batch with a bad line is written.
                    if failure.is_none() && !rows.is_empty() {
                        let ing = ingestor.clone();
                        let last = lines.last().copied().unwrap_or(first_line);
                        in_flight.push(tokio::spawn(async move {
                            let count = rows.len();
                            Submitted {
                                lines: (first_line, last),
                                count,
                                result: ing.submit(rows, Durability::Durable).await,
                            }
                        }));
                    }
                }
                Err(e) => failure = Some(e),
            }
            // A few batches in flight keep the writers busy; each is acknowledged durably.
            while in_flight.len() >= 4 || (failure.is_some() && !in_flight.is_empty()) {
                let s = in_flight.remove(0).await?;
                if let Err(e) = s.record(&mut out) {
                    failure.get_or_insert(e);
                }
            }
            #[allow(clippy::cast_precision_loss)]
            bar.set_message(format!(
                "{:.0} values/s",
                out.stored as f64 / started.elapsed().as_secs_f64().max(1e-3)
            ));
        }
        if done || failure.is_some() {
            break;
        }
    }
    for t in in_flight {
        let s = t.await?;
        if let Err(e) = s.record(&mut out) {
            failure.get_or_insert(e);
        }
    }
    drop(ingestor);
    pipeline.shutdown().await;
    bar.finish_and_clear();
    if let Some((path, w)) = &mut rejects.file {
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    crate::admin::settle(&cache).await;
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = out.stored as f64 / secs.max(1e-3);
    let mut summary = format!(
        "{} values stored, {} already stored, {} lines refused in {secs:.1} s ({rate:.0} new values/s, durable)",
        out.stored, out.already, out.refused
    );
    if let Some((path, _)) = &rejects.file
        && out.refused > 0
    {
        summary.push_str(&format!("; refused lines are in {}", path.display()));
    }
    match failure {
        None => {
            println!("{summary}");
            Ok(())
        }
        Some(e) => {
            eprintln!("{summary}");
            let through = out.written_lines();
            Err(e.context(format!(
                "the load stopped: {through} (fix the line and load the file again: stored \
                 values are recognised, or use --skip-invalid FILE to store the valid lines)"
            )))
        }
    }
}

/// A batch handed to the pipeline, and its answer.
struct Submitted {
    /// The first and last line of the batch.
    lines: (usize, usize),
    count: usize,
    result: Result<atlas_ingest::Ack, IngestError>,
}

impl Submitted {
    /// Adds the answer to the outcome; a batch not acknowledged in full is an error.
    fn record(self, out: &mut Outcome) -> Result<()> {
        match self.result {
            Ok(ack) => {
                let stored = ack.stored.unwrap_or(ack.accepted);
                out.stored += stored;
                out.already += ack.accepted.saturating_sub(stored);
                out.written.push(self.lines);
                Ok(())
            }
            Err(IngestError::Refused {
                refused,
                reason,
                stored,
                ..
            }) => {
                let stored = stored.unwrap_or(0);
                out.stored += stored;
                out.already += self.count.saturating_sub(refused + stored);
                out.refused += refused;
                // The batch's other values are stored.
                out.written.push(self.lines);
                bail!(
                    "{refused} value(s) of lines {}–{} were refused by the database and \
                     dead-lettered (the others are stored): {reason}",
                    self.lines.0,
                    self.lines.1
                )
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        }
    }
}

/// Refused lines of a batch: (line, error, input).
type Refusals = Vec<(usize, String, String)>;

/// Types a batch as the API does. Returns the rows to store, the lines they came from, and
/// the refused lines; every refusal is one line's, so with `--skip-invalid` the rest are
/// stored. An error only when the database cannot answer.
async fn validate(
    store: &atlas_store::Store,
    tenant: TenantId,
    tenant_name: &str,
    records: Vec<Record>,
    catalog: &Catalog,
    time: &TimeRules,
) -> Result<(Vec<atlas_ingest::Row>, Vec<usize>, Refusals)> {
    let mut refused = Vec::new();
    let mut good: Vec<(usize, Reading, String)> = Vec::new();
    for r in records {
        match r.reading {
            Ok(reading) => good.push((r.line, reading, r.text)),
            Err(e) => refused.push((r.line, e, r.text)),
        }
    }
    // Entities of another tenant, deleted or unknown: one lookup for the batch.
    let ids: Vec<i64> = good.iter().map(|(_, r, _)| r.entity_id).collect();
    let live: HashSet<i64> = store
        .live_entity_ids(tenant, &ids)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .collect();
    let (known, unknown): (Vec<_>, Vec<_>) = good
        .into_iter()
        .partition(|(_, r, _)| live.contains(&r.entity_id));
    for (line, r, text) in unknown {
        refused.push((
            line,
            format!(
                "entity {} is not a live entity of tenant {tenant_name}",
                r.entity_id
            ),
            text,
        ));
    }
    let mut good = known;
    // The typing stops at its first refusal: take that line out and type the rest again.
    loop {
        let readings: Vec<Reading> = good.iter().map(|(_, r, _)| r.clone()).collect();
        let lines: Vec<usize> = good.iter().map(|(l, _, _)| *l).collect();
        match type_readings(tenant, &readings, catalog, time, &|i| {
            format!("line {}", lines[i])
        }) {
            Ok(rows) => {
                refused.sort_by_key(|(line, _, _)| *line);
                return Ok((rows, lines, refused));
            }
            Err(e) => {
                let message = format!("{}: {}", e.field, e.message);
                let line = e
                    .field
                    .strip_prefix("line ")
                    .and_then(|rest| {
                        rest.split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse::<usize>()
                            .ok()
                    })
                    .and_then(|line| good.iter().position(|(l, _, _)| *l == line));
                let Some(at) = line else {
                    bail!("{message}");
                };
                let (line, _, text) = good.remove(at);
                refused.push((line, message, text));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lines_are_merged_ranges_in_order() {
        let mut out = Outcome::default();
        assert_eq!(out.written_lines(), "nothing of the file was written");
        out.written = vec![(1, 1)];
        assert_eq!(out.written_lines(), "written: line 1; no other line");
        // Acknowledged out of order, one batch in between never written.
        out.written = vec![(201, 300), (1, 100), (101, 200), (401, 500)];
        assert_eq!(
            out.written_lines(),
            "written: lines 1–300, 401–500; no other line"
        );
    }

    #[test]
    fn csv_times_are_epoch_ms_or_rfc3339() {
        assert_eq!(csv_ts(""), Ok(None));
        assert_eq!(csv_ts(" 1764072000000 "), Ok(Some(1_764_072_000_000)));
        assert_eq!(csv_ts("2025-11-25T12:00:00Z"), Ok(Some(1_764_072_000_000)));
        assert_eq!(
            csv_ts("2025-11-25T13:00:00.5+01:00"),
            Ok(Some(1_764_072_000_500))
        );
        assert!(csv_ts("yesterday").is_err());
    }

    #[test]
    fn csv_values_follow_their_attributes_type() {
        assert_eq!(
            csv_value("1.10", Some(DataType::String)),
            Ok(Value::String("1.10".into()))
        );
        assert_eq!(
            csv_value(r#"{"a":1,"b":2}"#, Some(DataType::Json)),
            Ok(serde_json::json!({"a": 1, "b": 2}))
        );
        assert!(csv_value("{not json", Some(DataType::Json)).is_err());
        assert_eq!(
            csv_value("7", Some(DataType::Integer)),
            Ok(serde_json::json!(7))
        );
        assert_eq!(
            csv_value("true", Some(DataType::Boolean)),
            Ok(serde_json::json!(true))
        );
        assert_eq!(
            csv_value("2026-01-01", Some(DataType::Date)),
            Ok(Value::String("2026-01-01".into()))
        );
        // A quoted JSON string stays the text it is, quotes included, for a string attribute.
        assert_eq!(
            csv_value(r#""x""#, Some(DataType::String)),
            Ok(Value::String(r#""x""#.into()))
        );
    }
}
