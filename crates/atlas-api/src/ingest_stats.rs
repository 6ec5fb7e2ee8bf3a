//! Per-tenant ingest figures (the console's ingest view, `GET /v1/ingest-stats`): values
//! stored, values refused by reason, and how long stored requests took — per tenant and UTC
//! minute, summed over every server in Redis.
//!
//! Prometheus's metrics stay process-wide (a tenant label would be thousands of series per
//! metric); these sums are what a tenant's operator asks about. Each process adds up what it
//! answered and writes the sums once a second in one pipeline, so a request pays a mutex, not
//! a Redis round trip. Best effort by design: without Redis there are no figures (never a
//! failed request), and a process that stops loses at most its last second of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use atlas_cache::Cache;
use atlas_store::TenantId;

/// Upper bounds (ms) of the latency histogram's buckets; one more bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
/// How long a minute's figures are kept in Redis: a day, and the minute the window starts in.
pub const KEPT: Duration = Duration::from_secs(86_400 + 120);
/// The longest window `GET /v1/ingest-stats` answers for, in minutes (what is kept).
pub const MAX_MINUTES: i64 = 1440;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Hash fields written per Redis call at most (plus one (tenant, minute)'s overshoot).
const FIELDS_PER_CALL: usize = 400;

/// The hash fields of one minute: `stored`, `refused:<reason>`, `requests`, `latency_us`
/// (their sum) and `latency:<bucket index>`.
#[derive(Debug, Default)]
struct Sums {
    fields: BTreeMap<String, i64>,
}

impl Sums {
    fn add(&mut self, field: String, n: i64) {
        *self.fields.entry(field).or_default() += n;
    }
}

/// What this process counted and has not written yet, by (tenant, minute).
#[derive(Default)]
pub struct IngestStats {
    pending: Mutex<HashMap<(i64, i64), Sums>>,
    flushing: AtomicBool,
}

impl std::fmt::Debug for IngestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestStats").finish_non_exhaustive()
    }
}

/// The minute (since the Unix epoch) that `at` falls in.
fn minute_of(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

/// The index of the latency bucket holding `took`.
fn bucket(took: Duration) -> usize {
    let ms = took.as_secs_f64() * 1000.0;
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&b| ms <= b as f64)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

impl IngestStats {
    /// Counts a request whose `values` were acknowledged after `took`.
    pub fn stored(
        self: &Arc<Self>,
        cache: &Cache,
        tenant: TenantId,
        values: usize,
        took: Duration,
    ) {
        let latency_us = i64::try_from(took.as_micros()).unwrap_or(i64::MAX);
        self.add(cache, tenant, |s| {
            s.add("stored".into(), i64::try_from(values).unwrap_or(i64::MAX));
            s.add("requests".into(), 1);
            s.add("latency_us".into(), latency_us);
            s.add(format!("latency:{}", bucket(took)), 1);
        });
    }

    /// Counts a request whose `values` were refused for `reason`.
    pub fn refused(self: &Arc<Self>, cache: &Cache, tenant: TenantId, reason: &str, values: usize) {
        self.add(cache, tenant, |s| {
            s.add(
                format!("refused:{reason}"),
                i64::try_from(values).unwrap_or(i64::MAX),
            );
        });
    }

    fn add(self: &Arc<Self>, cache: &Cache, tenant: TenantId, f: impl FnOnce(&mut Sums)) {
        if !cache.is_enabled() {
            return;
        }
        let minute = minute_of(chrono::Utc::now());
        if let Ok(mut pending) = self.pending.lock() {
            f(pending.entry((tenant.0, minute)).or_default());
        }
        if !self.flushing.swap(true, Ordering::SeqCst) {
            tokio::spawn(flush_loop(Arc::downgrade(self), cache.clone()));
        }
    }

    /// Writes what is pending to Redis; kept for the next try when Redis does not answer.
    async fn flush(&self, cache: &Cache) {
        let taken = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        if taken.is_empty() {
            return;
        }
        // A few hundred fields per call, each (tenant, minute) whole in one: a call stays well
        // within Redis's call timeout however many tenants wrote this second, and what a
        // failed call carried is put back without counting the others twice.
        let mut failed = Vec::new();
        let mut chunk: Vec<((i64, i64), Sums)> = Vec::new();
        let mut fields = 0;
        let mut entries = taken.into_iter().peekable();
        while let Some((k, sums)) = entries.next() {
            fields += sums.fields.len();
            chunk.push((k, sums));
            if fields >= FIELDS_PER_CALL || entries.peek().is_none() {
                let adds: Vec<(String, String, i64)> = chunk
                    .iter()
                    .flat_map(|((tenant, minute), sums)| {
                        let key = cache.ingest_stats_key(*tenant, *minute);
                        sums.fields
                            .iter()
                            .map(move |(f, n)| (key.clone(), f.clone(), *n))
                    })
                    .collect();
                if !cache.hash_add(&adds, KEPT).await {
                    failed.append(&mut chunk);
                }
                chunk.clear();
                fields = 0;
            }
        }
        if failed.is_empty() {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            // Merged with what came meanwhile; bounded by the minutes kept.
            let oldest = minute_of(chrono::Utc::now()) - MAX_MINUTES;
            for (k, sums) in failed {
                if k.1 >= oldest {
                    let into = p.entry(k).or_default();
                    for (f, n) in sums.fields {
                        into.add(f, n);
                    }
                }
            }
        }
    }
}

/// Flushes every second while the stats are alive (the state that owns them).
async fn flush_loop(stats: Weak<IngestStats>, cache: Cache) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(stats) = stats.upgrade() else { return };
        stats.flush(&cache).await;
    }
}

/// One minute's figures as read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    /// Values acknowledged.
    pub stored: i64,
    /// Values refused, by reason.
    pub refused: BTreeMap<String, i64>,
    /// Acknowledged requests.
    pub requests: i64,
    /// Their summed latency, µs.
    pub latency_us: i64,
    /// Acknowledged requests per latency bucket (see [`LATENCY_BOUNDS_MS`]).
    pub latency: Vec<i64>,
}

impl Minute {
    /// Reads one minute's hash.
    pub fn from_fields(minute: i64, fields: &HashMap<String, i64>) -> Self {
        let mut m = Minute {
            minute,
            latency: vec![0; LATENCY_BOUNDS_MS.len() + 1],
            ..Minute::default()
        };
        for (f, &n) in fields {
            match f.as_str() {
                "stored" => m.stored = n,
                "requests" => m.requests = n,
                "latency_us" => m.latency_us = n,
                other => {
                    if let Some(reason) = other.strip_prefix("refused:") {
                        m.refused.insert(reason.to_owned(), n);
                    } else if let Some(i) = other
                        .strip_prefix("latency:")
                        .and_then(|i| i.parse::<usize>().ok())
                        && let Some(slot) = m.latency.get_mut(i)
                    {
                        *slot = n;
                    }
                }
            }
        }
        m
    }

    /// Whether nothing was counted in it.
    pub fn is_empty(&self) -> bool {
        self.stored == 0 && self.requests == 0 && self.refused.values().all(|&n| n == 0)
    }
}

/// The upper bound (ms) of the bucket holding the `q` quantile of `counts`; `None` for no
/// requests, and the last finite bound's double for the overflow bucket.
pub fn quantile_ms(counts: &[i64], q: f64) -> Option<u64> {
    let total: i64 = counts.iter().sum();
    if total <= 0 {
        return None;
    }
    // The smallest rank r with r >= q * total (rank 1 for q = 0).
    let rank = ((q * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for (i, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                LATENCY_BOUNDS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_of_their_upper_bound() {
        assert_eq!(bucket(Duration::from_micros(500)), 0);
        assert_eq!(bucket(Duration::from_millis(1)), 0);
        assert_eq!(bucket(Duration::from_micros(1001)), 1);
        assert_eq!(bucket(Duration::from_millis(7)), 3);
        assert_eq!(bucket(Duration::from_secs(60)), LATENCY_BOUNDS_MS.len());
    }

    #[test]
    fn quantiles_are_the_bounds_of_their_buckets() {
        let mut counts = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        assert_eq!(quantile_ms(&counts, 0.5), None);
        counts[2] = 98; // ≤ 5 ms
        counts[6] = 2; // ≤ 100 ms
        assert_eq!(quantile_ms(&counts, 0.5), Some(5));
        assert_eq!(quantile_ms(&counts, 0.98), Some(5));
        assert_eq!(quantile_ms(&counts, 0.99), Some(100));
        counts[LATENCY_BOUNDS_MS.len()] = 100;
        assert_eq!(quantile_ms(&counts, 0.99), Some(10_000));
    }

    #[test]
    fn a_minute_reads_back_its_fields_and_ignores_strangers() {
        let fields: HashMap<String, i64> = [
            ("stored", 10),
            ("requests", 2),
            ("latency_us", 3000),
            ("latency:2", 2),
            ("latency:99", 5),
            ("refused:invalid_value", 3),
            ("other", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let m = Minute::from_fields(7, &fields);
        assert_eq!(
            (m.minute, m.stored, m.requests, m.latency_us),
            (7, 10, 2, 3000)
        );
        assert_eq!(m.latency[2], 2);
        assert_eq!(m.latency.iter().sum::<i64>(), 2);
        assert_eq!(m.refused.get("invalid_value"), Some(&3));
        assert!(!m.is_empty());
        assert!(Minute::from_fields(1, &HashMap::new()).is_empty());
    }
}
