//! An in-process map whose entries are trusted for a fixed time, with bounded memory: the
//! server's caches of API keys and of confirmed entities, on `moka` (per-entry expiry, and
//! eviction of the least useful entries when full — a flood of made-up keys evicts some
//! entries, never the whole map at once, which would send every request to the database).

use std::hash::Hash;
use std::time::Duration;

/// Entries trusted for `ttl`, at most `max` of them.
pub(crate) struct TtlMap<K, V> {
    /// `None` when the TTL is zero: nothing is kept.
    entries: Option<moka::sync::Cache<K, V>>,
}

impl<K, V> std::fmt::Debug for TtlMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlMap")
            .field(
                "entries",
                &self.entries.as_ref().map(moka::sync::Cache::entry_count),
            )
            .finish()
    }
}

impl<K, V> TtlMap<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A map trusting entries for `ttl` (zero: it keeps nothing) and holding at most `max`.
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            entries: (!ttl.is_zero()).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(u64::try_from(max).unwrap_or(u64::MAX))
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }

    /// The value stored for `key` within the TTL.
    pub(crate) fn fresh(&self, key: &K) -> Option<V> {
        self.entries.as_ref()?.get(key)
    }

    /// The keys of `keys` with no value stored within the TTL, in their order.
    pub(crate) fn missing(&self, keys: &[K]) -> Vec<K> {
        match &self.entries {
            Some(entries) => keys
                .iter()
                .filter(|k| !entries.contains_key(*k))
                .cloned()
                .collect(),
            None => keys.to_vec(),
        }
    }

    /// Stores `items` as of now.
    pub(crate) fn insert_all(&self, items: impl IntoIterator<Item = (K, V)>) {
        if let Some(entries) = &self.entries {
            for (k, v) in items {
                entries.insert(k, v);
            }
        }
    }

    /// Drops `key`.
    pub(crate) fn remove(&self, key: &K) {
        if let Some(entries) = &self.entries {
            entries.invalidate(key);
        }
    }

    /// Keeps only the entries for which `keep` is true.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        if let Some(entries) = &self.entries {
            let gone: Vec<K> = entries
                .iter()
                .filter(|(k, v)| !keep(k, v))
                .map(|(k, _)| K::clone(&k))
                .collect();
            for k in gone {
                entries.invalidate(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::TtlMap;

    #[test]
    fn entries_expire_are_bounded_and_can_be_dropped() {
        let map = TtlMap::new(Duration::from_secs(60), 3);
        map.insert_all([(1, "a"), (2, "b")]);
        assert_eq!(map.fresh(&1), Some("a"));
        assert_eq!(map.missing(&[1, 3, 2, 4]), [3, 4]);
        map.remove(&1);
        map.retain(|_, v| *v != "b");
        assert_eq!(map.missing(&[1, 2]), [1, 2]);

        // Past the bound, entries are evicted one by one, not all at once.
        let bounded = TtlMap::new(Duration::from_secs(60), 100);
        bounded.insert_all((0..1000).map(|i| (i, ())));
        if let Some(e) = &bounded.entries {
            e.run_pending_tasks();
            assert!(e.entry_count() <= 100, "{}", e.entry_count());
            assert!(e.entry_count() > 0);
        }

        let expired = TtlMap::new(Duration::from_millis(1), 10);
        expired.insert_all([(1, ())]);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expired.fresh(&1), None);
        let none = TtlMap::new(Duration::ZERO, 10);
        none.insert_all([(1, ())]);
        assert_eq!(none.missing(&[1]), [1]);
    }
}
