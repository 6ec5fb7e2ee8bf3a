//! Replication flows on the read side: how far behind each replica is, and where a read of a
//! given consistency goes.
//!
//! - **Lag without clock skew**: the primary's `now()` minus the newest heartbeat a replica
//!   has replayed — both are primary-clock values ([`measure`]). A replica that does not
//!   answer is unhealthy. The heartbeat itself is written by the leader (`atlas-maintain`).
//! - **Consistency levels** ([`Consistency`]): `strong` → the primary; `eventual` → a
//!   replica whose circuit is closed, else the primary; `analytics` → like eventual until an
//!   analytics store exists.
//! - **Circuit breaker with hysteresis**: a replica's circuit opens when its lag reaches
//!   `open_ms` (5 s) or it stops answering, and closes again only once the lag is below
//!   `close_ms` (3 s), so a lag hovering around one threshold cannot flap.
//! - **Read-your-writes**: a write answers with the primary's WAL position; a read that sends
//!   it goes to a replica only if that replica's replayed position has reached it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use atlas_store::Store;

/// How long one probe of a database may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a read should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The primary.
    Strong,
    /// A replica within the lag budget, else the primary.
    Eventual,
    /// The analytics store when there is one; a replica otherwise.
    Analytics,
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strong" => Ok(Consistency::Strong),
            "eventual" => Ok(Consistency::Eventual),
            "analytics" => Ok(Consistency::Analytics),
            other => Err(format!(
                "`{other}` is not a consistency level; expected strong, eventual or analytics"
            )),
        }
    }
}

/// A WAL position (`pg_lsn`), as the `X-Atlas-Lsn` token carries it: `hi/lo` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a WAL position like 0/16B3748");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// One replica's measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaLag {
    /// Position in `replica_urls` (1-based).
    pub replica: usize,
    /// Heartbeat lag in seconds; None when unanswered or no heartbeat replayed yet.
    pub lag_s: Option<f64>,
    /// The replica's replayed WAL position.
    #[serde(skip)]
    pub replay_lsn: Option<Lsn>,
    /// Why it could not be measured.
    pub error: Option<String>,
    /// Neither the replica nor the primary has a heartbeat yet (a new database, before the
    /// maintainer's first beat): nothing to measure, and nothing wrong with the replica.
    pub awaiting_first_heartbeat: bool,
    /// The replica answered but the primary did not (it died, or a failover is under way):
    /// its lag cannot be measured, and no commit is being made that it could miss.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub primary_unreachable: bool,
}

async fn probe<T>(
    f: impl std::future::Future<Output = Result<T, atlas_store::StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A newest heartbeat older than this means nothing writes them (the writer beats every
/// second by default).
const STALE_HEARTBEAT: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// Measures every replica's heartbeat lag and replayed position, from the primary's clock.
pub async fn measure(store: &Store) -> Vec<ReplicaLag> {
    let primary_now = probe(async {
        let c = store.primary().get().await?;
        let row = c
            .query_one(
                "SELECT now(), EXISTS (SELECT 1 FROM public.replication_heartbeat), \
                        (SELECT \"timestamp\" FROM public.replication_heartbeat ORDER BY id DESC LIMIT 1)",
                &[],
            )
            .await?;
        Ok((
            row.get::<_, DateTime<Utc>>(0),
            row.get::<_, bool>(1),
            row.get::<_, Option<DateTime<Utc>>>(2),
        ))
    })
    .await;
    let mut out = Vec::new();
    for (i, pool) in store.replicas().iter().enumerate() {
        let seen = probe(async {
            let c = pool.get().await?;
            let row = c
                .query_one(
                    "SELECT (SELECT \"timestamp\" FROM public.replication_heartbeat ORDER BY id DESC LIMIT 1), \
                            pg_last_wal_replay_lsn()::text",
                    &[],
                )
                .await?;
            Ok((
                row.get::<_, Option<DateTime<Utc>>>(0),
                row.get::<_, Option<String>>(1),
            ))
        })
        .await;
        let unmeasured = |replay_lsn, error| ReplicaLag {
            replica: i + 1,
            lag_s: None,
            replay_lsn,
            error: Some(error),
            awaiting_first_heartbeat: false,
            primary_unreachable: false,
        };
        let lag = match (&primary_now, seen) {
            // The replica has replayed the primary's newest heartbeat, and that is old: nothing
            // writes heartbeats (no `atlas serve` leads maintenance), so their age says nothing
            // about replication.
            (Ok((now, _, Some(newest))), Ok((Some(hb), lsn)))
                if hb == *newest && (*now - hb) > STALE_HEARTBEAT =>
            {
                unmeasured(
                    lsn.and_then(|l| l.parse().ok()),
                    format!(
                        "no heartbeat writer is running (the newest heartbeat, {} s old, is \
                         replayed here; atlas serve writes them)",
                        (*now - hb).num_seconds()
                    ),
                )
            }
            (Ok((now, _, _)), Ok((Some(hb), lsn))) => ReplicaLag {
                lag_s: Some(((*now - hb).num_milliseconds() as f64 / 1000.0).max(0.0)),
                error: None,
                ..unmeasured(lsn.and_then(|l| l.parse().ok()), String::new())
            },
            (Ok((_, false, _)), Ok((None, lsn))) => ReplicaLag {
                awaiting_first_heartbeat: true,
                ..unmeasured(
                    lsn.and_then(|l| l.parse().ok()),
                    "no heartbeat written yet".into(),
                )
            },
            (_, Ok((None, lsn))) => unmeasured(
                lsn.and_then(|l| l.parse().ok()),
                "no heartbeat replayed yet".into(),
            ),
            (_, Err(e)) => unmeasured(None, e),
            (Err(e), Ok((_, lsn))) => ReplicaLag {
                primary_unreachable: true,
                ..unmeasured(lsn.and_then(|l| l.parse().ok()), format!("primary: {e}"))
            },
        };
        if let Some(l) = lag.lag_s {
            metrics::gauge!("atlas_replica_lag_seconds", "replica" => (i + 1).to_string()).set(l);
        }
        out.push(lag);
    }
    out
}

/// A streaming replica as the primary sees it (`pg_stat_replication`): the cross-check of
/// the heartbeat lag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalSender {
    /// The replica's `application_name`.
    pub application_name: String,
    /// Its address.
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, …
    pub state: Option<String>,
    /// PostgreSQL's own replay lag (None once the replica is idle and caught up).
    pub replay_lag_s: Option<f64>,
    /// The position it has replayed.
    pub replay_lsn: Option<String>,
}

/// The primary's view of its streaming replicas.
pub async fn wal_senders(store: &Store) -> Result<Vec<WalSender>, String> {
    let rows = probe(async {
        let c = store.primary().get().await?;
        Ok(c.query(
            "SELECT application_name, client_addr, state, replay_lag_s, replay_lsn \
             FROM public.replication_replay_lag()",
            &[],
        )
        .await?)
    })
    .await?;
    let senders: Vec<WalSender> = rows
        .iter()
        .map(|r| WalSender {
            application_name: r.get(0),
            client_addr: r.get(1),
            state: r.get(2),
            replay_lag_s: r.get(3),
            replay_lsn: r.get(4),
        })
        .collect();
    for s in &senders {
        metrics::gauge!("atlas_walsender_replay_lag_seconds", "application_name" => s.application_name.clone())
            .set(s.replay_lag_s.unwrap_or(0.0));
    }
    Ok(senders)
}

/// The breaker's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// A replica's circuit opens at this lag (ms).
    pub open_ms: i64,
    /// An open circuit closes below this lag (ms); fills of the cache need this too.
    pub close_ms: i64,
}

impl Default for Budgets {
    /// The seed's budgets: eventual reads < 3 s, circuit break at 5 s.
    fn default() -> Self {
        Self {
            open_ms: 5_000,
            close_ms: 3_000,
        }
    }
}

#[derive(Debug)]
struct ReplicaState {
    /// Circuit closed: the replica may serve eventual reads.
    closed: AtomicBool,
    /// Last measured lag in ms (-1: unknown).
    lag_ms: AtomicI64,
    /// Last measured replayed position (0: unknown).
    replay_lsn: AtomicU64,
}

/// Where one read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// Replica `index` (0-based in `replica_urls`), last measured `lag_ms` behind.
    Replica {
        /// Index into the store's replicas.
        index: usize,
        /// Its lag when last measured.
        lag_ms: i64,
    },
    /// The analytics store (filled by `atlas cdc`), `lag_ms` behind the primary's commits.
    Analytics {
        /// Commit-to-store lag of the newest change it holds, measured with the read.
        lag_ms: i64,
    },
}

impl Target {
    /// The `X-Atlas-Served-By` value: `primary` or `replica-N` (1-based).
    pub fn served_by(&self) -> String {
        match self {
            Target::Primary => "primary".into(),
            Target::Replica { index, .. } => format!("replica-{}", index + 1),
            Target::Analytics { .. } => "analytics".into(),
        }
    }

    /// The lag the answer may have, in ms (0 for the primary).
    pub fn lag_ms(&self) -> i64 {
        match self {
            Target::Primary => 0,
            Target::Replica { lag_ms, .. } | Target::Analytics { lag_ms } => *lag_ms,
        }
    }
}

/// Routes reads by consistency and measured lag; cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    replicas: Arc<Vec<ReplicaState>>,
    budgets: Budgets,
}

impl Router {
    /// A router for `replicas` replicas, all circuits open until the first measurement.
    pub fn new(replicas: usize, budgets: Budgets) -> Self {
        Self {
            replicas: Arc::new(
                (0..replicas)
                    .map(|_| ReplicaState {
                        closed: AtomicBool::new(false),
                        lag_ms: AtomicI64::new(-1),
                        replay_lsn: AtomicU64::new(0),
                    })
                    .collect(),
            ),
            budgets,
        }
    }

    /// Applies a measurement: opens a circuit at `open_ms` or when unanswered, closes it only
    /// below `close_ms`.
    pub fn observe(&self, lags: &[ReplicaLag]) {
        for lag in lags {
            let Some(state) = lag
                .replica
                .checked_sub(1)
                .and_then(|i| self.replicas.get(i))
            else {
                continue;
            };
            if lag.primary_unreachable {
                // No primary to measure against (a failover is under way): a replica that was
                // serving keeps serving at its last measured lag. Nothing can commit meanwhile,
                // and the synchronous standby holds every acknowledged commit, so its answers
                // are no staler than they were; opening the circuit would send eventual reads
                // to a primary that is not there.
                continue;
            }
            let ms = lag.lag_s.map(|s| (s * 1000.0).round() as i64);
            state.lag_ms.store(ms.unwrap_or(-1), Ordering::Relaxed);
            if let Some(l) = lag.replay_lsn {
                state.replay_lsn.store(l.0, Ordering::Relaxed);
            }
            let was_closed = state.closed.load(Ordering::Relaxed);
            let closed = match ms {
                None => false,
                Some(ms) if was_closed => ms < self.budgets.open_ms,
                Some(ms) => ms < self.budgets.close_ms,
            };
            if closed != was_closed {
                tracing::warn!(
                    replica = lag.replica,
                    lag_ms = ?ms,
                    error = ?lag.error,
                    "replica circuit {}",
                    if closed { "closed: serving eventual reads again" } else { "opened: eventual reads go to the primary" }
                );
            }
            state.closed.store(closed, Ordering::Relaxed);
            metrics::gauge!("atlas_replica_circuit_closed", "replica" => lag.replica.to_string())
                .set(if closed { 1.0 } else { 0.0 });
        }
    }

    /// Where a read of `consistency` goes; with `min_lsn`, only to a replica that has replayed
    /// at least that far.
    pub fn route(&self, consistency: Consistency, min_lsn: Option<Lsn>) -> Target {
        self.route_excluding(consistency, min_lsn, &[])
    }

    /// [`Router::route`] among the replicas not in `failed` (0-based indexes of replicas a
    /// read just failed on: the next best one is tried before the primary, which may be the
    /// very node that died).
    pub fn route_excluding(
        &self,
        consistency: Consistency,
        min_lsn: Option<Lsn>,
        failed: &[usize],
    ) -> Target {
        if consistency == Consistency::Strong {
            return Target::Primary;
        }
        // The least-lagging replica with a closed circuit.
        self.replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .filter(|(_, r)| r.closed.load(Ordering::Relaxed))
            .filter(|(_, r)| min_lsn.is_none_or(|m| r.replay_lsn.load(Ordering::Relaxed) >= m.0))
            .map(|(i, r)| (i, r.lag_ms.load(Ordering::Relaxed)))
            .filter(|(_, lag)| *lag >= 0)
            .min_by_key(|(_, lag)| *lag)
            .map_or(Target::Primary, |(index, lag_ms)| Target::Replica {
                index,
                lag_ms,
            })
    }

    /// Whether a value read at `target` may fill the cache: only the primary's. A replica,
    /// even within budget, may not have replayed a write whose invalidation already ran, and
    /// its fill would then hold the pre-write value for the whole TTL (the lease cannot see
    /// that: it was taken after the invalidation).
    pub fn may_fill_cache(&self, target: Target) -> bool {
        target == Target::Primary
    }

    /// Measures the replicas every `interval` and applies it, until the router's last clone
    /// is gone.
    pub fn spawn_monitor(&self, store: Store, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.replicas);
        let budgets = self.budgets;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(replicas) = weak.upgrade() else {
                    break;
                };
                let router = Router { replicas, budgets };
                let lags = measure(&store).await;
                router.observe(&lags);
            }
        })
    }
}

/// The primary's current WAL position (after a commit: a position at or past it).
pub async fn primary_lsn(store: &Store) -> Option<Lsn> {
    let c = store.primary().get().await.ok()?;
    atlas_store::cluster::wal_position(&c).await.ok().map(Lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(replica: usize, ms: Option<i64>) -> ReplicaLag {
        ReplicaLag {
            replica,
            lag_s: ms.map(|m| m as f64 / 1000.0),
            replay_lsn: Some(Lsn(100)),
            error: None,
            awaiting_first_heartbeat: false,
            primary_unreachable: false,
        }
    }

    #[test]
    fn an_unreachable_primary_leaves_a_serving_replica_serving_and_a_dead_one_out() {
        let r = Router::new(2, Budgets::default());
        r.observe(&[lag(1, Some(100)), lag(2, Some(50))]);
        assert_eq!(
            r.route(Consistency::Eventual, None),
            Target::Replica {
                index: 1,
                lag_ms: 50
            }
        );
        // The primary is gone; replica 2 (say, the old primary's node) is gone with it.
        let gone = ReplicaLag {
            lag_s: None,
            error: Some("connection refused".into()),
            ..lag(2, None)
        };
        let alone = ReplicaLag {
            lag_s: None,
            error: Some("primary: connection refused".into()),
            primary_unreachable: true,
            ..lag(1, None)
        };
        r.observe(&[alone, gone]);
        assert_eq!(
            r.route(Consistency::Eventual, None),
            Target::Replica {
                index: 0,
                lag_ms: 100
            }
        );
        assert_eq!(r.route(Consistency::Strong, None), Target::Primary);
    }

    #[test]
    fn the_breaker_opens_at_5_s_and_closes_only_below_3_s() {
        let r = Router::new(1, Budgets::default());
        assert_eq!(
            r.route(Consistency::Eventual, None),
            Target::Primary,
            "unmeasured"
        );
        r.observe(&[lag(1, Some(100))]);
        assert!(matches!(
            r.route(Consistency::Eventual, None),
            Target::Replica { index: 0, .. }
        ));
        assert_eq!(r.route(Consistency::Strong, None), Target::Primary);
        // Between the thresholds a closed circuit stays closed…
        r.observe(&[lag(1, Some(4_000))]);
        assert!(matches!(
            r.route(Consistency::Eventual, None),
            Target::Replica { .. }
        ));
        r.observe(&[lag(1, Some(5_000))]);
        assert_eq!(r.route(Consistency::Eventual, None), Target::Primary);
        // …and an open one stays open until below 3 s.
        r.observe(&[lag(1, Some(4_000))]);
        assert_eq!(r.route(Consistency::Eventual, None), Target::Primary);
        r.observe(&[lag(1, Some(2_999))]);
        assert!(matches!(
            r.route(Consistency::Analytics, None),
            Target::Replica { .. }
        ));
        r.observe(&[lag(1, None)]);
        assert_eq!(
            r.route(Consistency::Eventual, None),
            Target::Primary,
            "unanswered"
        );
    }

    #[test]
    fn read_your_writes_needs_the_replayed_position() {
        let r = Router::new(2, Budgets::default());
        r.observe(&[lag(1, Some(10)), lag(2, Some(20))]);
        assert_eq!(
            r.route(Consistency::Eventual, Some(Lsn(101))),
            Target::Primary
        );
        assert!(matches!(
            r.route(Consistency::Eventual, Some(Lsn(100))),
            Target::Replica { index: 0, .. }
        ));
        assert!(!r.may_fill_cache(Target::Replica {
            index: 0,
            lag_ms: 0
        }));
        assert!(r.may_fill_cache(Target::Primary));
    }

    #[test]
    fn lsn_tokens_round_trip_and_bad_ones_are_refused() {
        let l: Lsn = "16/B374D848".parse().unwrap_or(Lsn(0));
        assert_eq!(l.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        for bad in ["", "12", "/1", "1/", "x/1", "1/2/3", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert!("eventual".parse::<Consistency>().is_ok());
        assert!("EVENTUAL".parse::<Consistency>().is_err());
    }
}
