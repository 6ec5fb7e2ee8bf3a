//! Alerts: each is a Prometheus gauge `atlas_alert_firing{alert}` (1 firing, 0 not) plus a
//! warning log while it fires, and a row in `atlas status`.
//!
//! - `staging_backlog`: staged rows waiting (bounded count) over the threshold;
//! - `staged_age`: the oldest staged row waited longer than the threshold;
//! - `partition_horizon`: time-series partitions end sooner than the premake setting;
//! - `replica_lag`: a replica's heartbeat lag (primary `now()` minus the newest heartbeat the
//!   replica has replayed — both primary-clock values, so no clock skew) over the threshold,
//!   or the replica does not answer (quiet while the primary has no heartbeat yet either);
//! - `slot_retained_wal`: a replication slot retains more WAL than the threshold;
//! - `slot_inactive:NAME`, one per slot: the slot has had no consumer for longer than the
//!   threshold (as seen by this monitor; it holds back vacuum and retains WAL), or it has
//!   lost WAL it needs (`wal_status = 'lost'`: its consumer can never resume);
//! - `xid_age`: the database's transaction-id age over the threshold (wraparound risk);
//! - `cache_hit_rate`: Redis's hit rate since the previous check below the threshold (only
//!   with at least 100 lookups in between).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use atlas_cache::{Cache, KeyspaceStats};
use atlas_store::Store;
use atlas_store::cluster::{Slot, WalStatus};

use crate::MaintainError;

/// Alert thresholds (from `[maintenance]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Staged rows.
    pub backlog_rows: i64,
    /// Seconds the oldest staged row waited.
    pub staged_age_s: f64,
    /// Replica lag in seconds.
    pub replica_lag_s: f64,
    /// WAL bytes a slot retains.
    pub slot_retained_bytes: i64,
    /// Seconds a slot may stay inactive.
    pub slot_inactive_s: f64,
    /// Transaction-id age.
    pub xid_age: i64,
    /// Lowest acceptable Redis hit rate.
    pub cache_hit_rate: f64,
}

impl Thresholds {
    /// From the `[maintenance]` section.
    pub fn from_config(m: &atlas_config::Maintenance) -> Self {
        Self {
            backlog_rows: m.alert_backlog_rows,
            staged_age_s: m.alert_staged_age.as_secs_f64(),
            replica_lag_s: m.alert_replica_lag.as_secs_f64(),
            slot_retained_bytes: m.alert_slot_retained_bytes,
            slot_inactive_s: m.alert_slot_inactive.as_secs_f64(),
            xid_age: m.alert_xid_age,
            cache_hit_rate: m.alert_cache_hit_rate,
        }
    }
}

/// One alert's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Its name (the `alert` label).
    pub alert: String,
    /// Whether it fires.
    pub firing: bool,
    /// What was measured (None: could not be measured).
    pub value: Option<f64>,
    /// The threshold.
    pub threshold: f64,
    /// A readable explanation.
    pub message: String,
}

fn alert(name: &str, value: Option<f64>, threshold: f64, firing: bool, message: String) -> Alert {
    Alert {
        alert: name.to_owned(),
        firing,
        value,
        threshold,
        message,
    }
}

pub use atlas_replication::ReplicaLag;

/// What the monitor remembers of a slot between checks.
#[derive(Debug, Clone, Copy, Default)]
struct SlotSeen {
    idle_since: Option<DateTime<Utc>>,
    position: Option<u64>,
}

/// Checks the alerts; remembers Redis counters between checks for the interval hit rate.
#[derive(Debug)]
pub struct Monitor {
    store: Store,
    cache: Cache,
    thresholds: Thresholds,
    premake: chrono::Duration,
    last_keyspace: Mutex<Option<KeyspaceStats>>,
    /// Every slot of the previous check: since when it has been seen without a consumer, and
    /// its position then.
    slots_seen: Mutex<HashMap<String, SlotSeen>>,
}

impl Monitor {
    /// A monitor of `store` and `cache`; `premake` is the partition horizon to keep.
    pub fn new(
        store: Store,
        cache: Cache,
        thresholds: Thresholds,
        premake: chrono::Duration,
    ) -> Self {
        Self {
            store,
            cache,
            thresholds,
            premake,
            last_keyspace: Mutex::new(None),
            slots_seen: Mutex::new(HashMap::new()),
        }
    }

    /// One `slot_inactive:NAME` alert per slot. PostgreSQL 15 does not say since when a slot
    /// is inactive, so the monitor remembers when it first saw it so. A slot is consumed while
    /// a consumer holds it (`active`) or when its position moved since the previous check (a
    /// consumer that peeks and advances, as `atlas cdc` does); a slot dropped since the
    /// previous check gets one last quiet alert, so its gauge does not stay at 1.
    fn slot_alerts(&self, slots: &[Slot], now: DateTime<Utc>) -> Vec<Alert> {
        let threshold = self.thresholds.slot_inactive_s;
        let Ok(mut seen) = self.slots_seen.lock() else {
            return Vec::new();
        };
        let mut previous = std::mem::take(&mut *seen);
        let mut alerts = Vec::new();
        for s in slots {
            let before = previous.remove(&s.name);
            let moved = before.is_some_and(|b| b.position.is_some() && b.position != s.confirmed);
            let since = if s.active || moved {
                None
            } else {
                Some(before.and_then(|b| b.idle_since).unwrap_or(now))
            };
            seen.insert(
                s.name.clone(),
                SlotSeen {
                    idle_since: since,
                    position: s.confirmed,
                },
            );
            let inactive_s = since.map_or(0.0, |t| (now - t).num_milliseconds() as f64 / 1000.0);
            let lost = s.wal_status == Some(WalStatus::Lost);
            let holds = s
                .xmin_age
                .map(|a| format!(", holding vacuum back by {a} transactions"))
                .unwrap_or_default();
            let message = if lost {
                format!(
                    "slot {} has lost WAL it needs (wal_status lost): its consumer can never \
                     resume (atlas cdc: run it with --resnapshot-lost-slot; a replica: clone \
                     it again, as atlas stack up does)",
                    s.name
                )
            } else if since.is_some() {
                format!(
                    "slot {} has had no consumer for {inactive_s:.0} s (wal_status {}){holds}",
                    s.name,
                    s.wal_status.map_or("none", WalStatus::as_str)
                )
            } else {
                format!("slot {} is in use", s.name)
            };
            alerts.push(alert(
                &format!("slot_inactive:{}", s.name),
                Some(inactive_s),
                threshold,
                lost || since.is_some_and(|_| inactive_s >= threshold),
                message,
            ));
        }
        for gone in previous.into_keys() {
            alerts.push(alert(
                &format!("slot_inactive:{gone}"),
                None,
                threshold,
                false,
                format!("slot {gone} no longer exists"),
            ));
        }
        alerts
    }

    /// Heartbeat lag of every replica, from the primary's clock.
    pub async fn replica_lags(&self) -> Vec<ReplicaLag> {
        atlas_replication::measure(&self.store).await
    }

    /// Every alert as of `now` (the partition horizon is judged against `now`).
    pub async fn check(&self, now: DateTime<Utc>) -> Result<Vec<Alert>, MaintainError> {
        let t = &self.thresholds;
        let mut alerts = Vec::new();
        let client = self.store.primary().get().await?;

        // Bounded: at most this many staged rows are counted (and searched for the oldest,
        // which heap order puts first).
        let cap = i32::try_from(
            t.backlog_rows
                .saturating_add(1)
                .max(1_000_000)
                .min(i64::from(i32::MAX)),
        )
        .unwrap_or(i32::MAX);
        let staged = self.store.staging_backlog(cap).await?;
        let backlog = staged.rows;
        let age: Option<f64> = staged
            .oldest_staged_at
            .map(|t| ((Utc::now() - t).num_milliseconds() as f64 / 1000.0).max(0.0));
        alerts.push(alert(
            "staging_backlog",
            Some(backlog as f64),
            t.backlog_rows as f64,
            backlog > t.backlog_rows,
            format!(
                "{backlog} staged rows waiting (threshold {})",
                t.backlog_rows
            ),
        ));
        let age = age.unwrap_or(0.0);
        alerts.push(alert(
            "staged_age",
            Some(age),
            t.staged_age_s,
            age > t.staged_age_s,
            format!(
                "the oldest staged row waited {age:.1} s (threshold {} s)",
                t.staged_age_s
            ),
        ));

        let horizon: Option<DateTime<Utc>> = self
            .store
            .ts_partition_coverage()
            .await?
            .iter()
            .map(|r| r.1)
            .max();
        let days = horizon.map(|h| (h - now).num_seconds() as f64 / 86_400.0);
        let want = self.premake.num_seconds() as f64 / 86_400.0;
        metrics::gauge!("atlas_partition_horizon_seconds").set(days.unwrap_or(0.0) * 86_400.0);
        alerts.push(alert(
            "partition_horizon",
            days,
            want,
            days.is_none_or(|d| d < want),
            match days {
                Some(d) => format!("time partitions end in {d:.1} days (keep {want:.0} ahead)"),
                None => "there are no time partitions".into(),
            },
        ));

        for lag in self.replica_lags().await {
            let firing =
                !lag.awaiting_first_heartbeat && lag.lag_s.is_none_or(|l| l >= t.replica_lag_s);
            alerts.push(alert(
                &format!("replica_lag:{}", lag.replica),
                lag.lag_s,
                t.replica_lag_s,
                firing,
                match (&lag.lag_s, &lag.error) {
                    (Some(l), _) => format!("replica {} lags {l:.1} s", lag.replica),
                    (None, _) if lag.awaiting_first_heartbeat => format!(
                        "replica {}: no heartbeat written yet on the primary, nothing to measure",
                        lag.replica
                    ),
                    (None, Some(e)) => format!("replica {} is unhealthy: {e}", lag.replica),
                    (None, None) => format!("replica {} is unhealthy", lag.replica),
                },
            ));
        }

        // One read of the slots for both slot alerts.
        let slots = atlas_store::cluster::slots(&client).await?;
        let retaining = slots
            .iter()
            .filter_map(|s| s.retained_bytes.map(|b| (s.name.as_str(), b as f64)));
        let (worst_slot, worst) =
            retaining.clone().fold(
                ("", 0.0_f64),
                |acc, (n, b)| if b > acc.1 { (n, b) } else { acc },
            );
        for (name, bytes) in retaining {
            metrics::gauge!("atlas_slot_retained_wal_bytes", "slot" => name.to_owned()).set(bytes);
        }
        alerts.push(alert(
            "slot_retained_wal",
            Some(worst),
            t.slot_retained_bytes as f64,
            worst > t.slot_retained_bytes as f64,
            if worst_slot.is_empty() {
                "no replication slot retains WAL".into()
            } else {
                format!("slot {worst_slot} retains {worst:.0} bytes of WAL")
            },
        ));
        alerts.extend(self.slot_alerts(&slots, Utc::now()));

        let xid_age: i32 = client
            .query_one(
                "SELECT age(datfrozenxid) FROM pg_catalog.pg_database WHERE datname = current_database()",
                &[],
            )
            .await?
            .get(0);
        metrics::gauge!("atlas_xid_age").set(f64::from(xid_age));
        alerts.push(alert(
            "xid_age",
            Some(f64::from(xid_age)),
            t.xid_age as f64,
            i64::from(xid_age) > t.xid_age,
            format!("transaction-id age {xid_age}"),
        ));

        if self.cache.is_enabled() {
            let now_stats = self.cache.keyspace_stats().await;
            let previous = self
                .last_keyspace
                .lock()
                .ok()
                .and_then(|mut l| std::mem::replace(&mut *l, now_stats));
            let (rate, lookups) = match (now_stats, previous) {
                (Some(n), Some(p)) if n.hits >= p.hits && n.misses >= p.misses => {
                    let d = KeyspaceStats {
                        hits: n.hits - p.hits,
                        misses: n.misses - p.misses,
                    };
                    (d.hit_rate(), d.hits + d.misses)
                }
                (Some(n), _) => (n.hit_rate(), n.hits + n.misses),
                (None, _) => (None, 0),
            };
            if let Some(r) = rate {
                metrics::gauge!("atlas_cache_hit_rate").set(r);
            }
            alerts.push(alert(
                "cache_hit_rate",
                rate,
                t.cache_hit_rate,
                lookups >= 100 && rate.is_some_and(|r| r < t.cache_hit_rate),
                match rate {
                    Some(r) => format!("Redis hit rate {:.1} % over {lookups} lookups", r * 100.0),
                    None => "Redis hit rate unknown (unreachable or no lookups)".into(),
                },
            ));
        }

        for a in &alerts {
            metrics::gauge!("atlas_alert_firing", "alert" => a.alert.clone()).set(if a.firing {
                1.0
            } else {
                0.0
            });
            if a.firing {
                tracing::warn!(alert = %a.alert, value = ?a.value, threshold = a.threshold, "{}", a.message);
            }
        }
        Ok(alerts)
    }
}
