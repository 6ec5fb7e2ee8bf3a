//! Invalidating the Redis entries a write makes stale, after the write committed.

use std::time::Duration;

use atlas_store::TenantId;

/// How long an invalidation may take before it is given up (Redis errors never fail a write).
const INVALIDATE_TIMEOUT: Duration = Duration::from_millis(50);

/// The Redis key of an entity's cached hot attributes (the seed's pattern 1).
pub fn entity_key(tenant: TenantId, entity_id: i64) -> String {
    format!("entity:{tenant}:{entity_id}")
}

/// Deletes cache keys of entities whose hot projection changed.
#[derive(Clone, Default)]
pub struct Invalidator {
    redis: Option<redis::aio::ConnectionManager>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl Invalidator {
    /// Without Redis: nothing to invalidate.
    pub fn none() -> Self {
        Self { redis: None }
    }

    /// Connects to Redis (the connection manager reconnects by itself after failures).
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(INVALIDATE_TIMEOUT));
        let manager = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            redis: Some(manager),
        })
    }

    /// Deletes the entities' keys. Failures are logged: the entries then expire by TTL.
    pub async fn entities_changed(&self, entities: &[(TenantId, i64)]) {
        let Some(manager) = &self.redis else { return };
        if entities.is_empty() {
            return;
        }
        let keys: Vec<String> = entities.iter().map(|(t, e)| entity_key(*t, *e)).collect();
        let mut conn = manager.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&keys);
        match tokio::time::timeout(INVALIDATE_TIMEOUT * 4, cmd.query_async::<i64>(&mut conn)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, keys = keys.len(), "cache invalidation failed")
            }
            Err(_) => tracing::warn!(keys = keys.len(), "cache invalidation timed out"),
        }
    }
}
