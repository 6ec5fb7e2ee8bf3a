//! The background worker of `atlas serve`: while this server is the leader (a session
//! advisory lock on a dedicated connection), it writes a replication heartbeat every
//! `heartbeat` interval and runs a maintenance round and the alert checks every `interval`.
//! Every server runs the worker; exactly one leads. When the leader dies its connection
//! closes, the lock is released, and another server takes over at its next tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use atlas_cache::Cache;
use atlas_store::Store;

use crate::{Maintainer, Monitor, Settings};

/// The advisory-lock key of the leader (an arbitrary constant: "atlas" in ASCII).
pub const LEADER_LOCK: i64 = 0x0061_746c_6173;

/// Leadership by a session advisory lock on a dedicated connection.
#[derive(Debug)]
pub struct Leader {
    url: String,
    client: Option<tokio_postgres::Client>,
}

impl Leader {
    /// Leadership over the database at `url` (the app role's URL).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: None,
        }
    }

    /// Whether this process leads now: keeps a held lock while its connection answers, else
    /// tries to take it.
    pub async fn ensure(&mut self) -> bool {
        if let Some(c) = &self.client {
            let alive =
                tokio::time::timeout(Duration::from_secs(2), c.query_one("SELECT 1", &[])).await;
            if matches!(alive, Ok(Ok(_))) {
                return true;
            }
            tracing::warn!("lost the leader connection; leadership released");
            self.client = None;
        }
        let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(2), atlas_store::connect(&self.url)).await
        else {
            return false;
        };
        match client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await
        {
            Ok(row) if row.get::<_, bool>(0) => {
                tracing::info!("this server is now the maintainer and heartbeat leader");
                self.client = Some(client);
                true
            }
            _ => false,
        }
    }

    /// Gives leadership up (closes the connection).
    pub fn release(&mut self) {
        self.client = None;
    }
}

/// A running worker; dropping it does not stop it, [`WorkerHandle::stop`] does.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    leader: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Whether this worker leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Stops the worker and releases leadership.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Kills the worker at once (as a crash would: its connection closes).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The worker's parts.
#[derive(Debug)]
pub struct Worker {
    /// Pools for maintenance and checks.
    pub store: Store,
    /// The cache (for the hit-rate alert).
    pub cache: Cache,
    /// Intervals, retention and alert thresholds (`[maintenance]`).
    pub settings: Settings,
    /// The app role's primary URL (for the leader connection).
    pub database_url: String,
    /// Written into each heartbeat's `source` (which server wrote it).
    pub source: String,
}

impl Worker {
    /// Starts the loop.
    pub fn spawn(self) -> WorkerHandle {
        let (stop, mut stopped) = watch::channel(false);
        let leader_flag = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&leader_flag);
        let task = tokio::spawn(async move {
            let maintainer = Maintainer::new(self.store.clone(), self.settings.clone());
            let monitor = Monitor::new(
                self.store.clone(),
                self.cache.clone(),
                self.settings.thresholds.clone(),
                self.settings.premake,
            );
            let mut leader = Leader::new(&self.database_url);
            let mut last_round: Option<Instant> = None;
            let mut tick = tokio::time::interval(self.settings.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let leads = leader.ensure().await;
                flag.store(leads, Ordering::Relaxed);
                metrics::gauge!("atlas_maintainer_leader").set(if leads { 1.0 } else { 0.0 });
                if !leads {
                    continue;
                }
                heartbeat(&self.store, &self.source).await;
                if last_round.is_none_or(|t| t.elapsed() >= self.settings.interval) {
                    last_round = Some(Instant::now());
                    let report = maintainer.run_once(Utc::now()).await;
                    if !report.created.is_empty() || !report.dropped.is_empty() {
                        tracing::info!(created = ?report.created, dropped = ?report.dropped, "maintenance round");
                    }
                    if let Err(e) = monitor.check(Utc::now()).await {
                        tracing::warn!(error = %e, "alert checks failed");
                    }
                }
            }
            leader.release();
            flag.store(false, Ordering::Relaxed);
        });
        WorkerHandle {
            stop,
            task,
            leader: leader_flag,
        }
    }
}

/// Writes one heartbeat on the primary (read on replicas to measure lag).
async fn heartbeat(store: &Store, source: &str) {
    let write = async {
        let c = store.primary().get().await?;
        c.execute(
            "INSERT INTO public.replication_heartbeat (source) VALUES ($1)",
            &[&source],
        )
        .await?;
        Ok::<_, crate::MaintainError>(())
    };
    match write.await {
        Ok(()) => metrics::counter!("atlas_heartbeats_total").increment(1),
        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
    }
}
