//! An in-process map whose entries are trusted for a fixed time, with bounded memory: the
//! server's caches of API keys and of confirmed entities.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries trusted for `ttl`; beyond `max` entries the map starts over (bounded memory under a
/// flood of made-up keys). A poisoned lock makes it forget, never fail.
#[derive(Debug)]
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    /// A map trusting entries for `ttl` (zero: it keeps nothing) and holding at most `max`.
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value stored for `key` within the TTL.
    pub(crate) fn fresh(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (value, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// The keys of `keys` with no value stored within the TTL, in their order.
    pub(crate) fn missing(&self, keys: &[K]) -> Vec<K> {
        match self.entries.lock() {
            Ok(entries) => keys
                .iter()
                .filter(|k| {
                    entries
                        .get(k)
                        .is_none_or(|(_, at)| at.elapsed() >= self.ttl)
                })
                .cloned()
                .collect(),
            Err(_) => keys.to_vec(),
        }
    }

    /// Stores `items` as of now.
    pub(crate) fn insert_all(&self, items: impl IntoIterator<Item = (K, V)>) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            let now = Instant::now();
            for (k, v) in items {
                if entries.len() >= self.max {
                    entries.clear();
                }
                entries.insert(k, (v, now));
            }
        }
    }

    /// Drops `key`.
    pub(crate) fn remove(&self, key: &K) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    /// Keeps only the entries for which `keep` is true.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, (v, _)| keep(k, v));
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
        // A fourth entry beyond the bound of three starts the map over.
        map.insert_all([(5, "e"), (6, "f"), (7, "g"), (8, "h")]);
        assert_eq!(map.missing(&[5, 6, 7, 8]), [5, 6, 7]);

        let expired = TtlMap::new(Duration::from_millis(1), 10);
        expired.insert_all([(1, ())]);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expired.fresh(&1), None);
        let none = TtlMap::new(Duration::ZERO, 10);
        none.insert_all([(1, ())]);
        assert_eq!(none.missing(&[1]), [1]);
    }
}
