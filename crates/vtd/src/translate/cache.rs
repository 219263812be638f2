//! Bounded, sharded caches: the building block of the context cache and the PASID cache (the
//! IOTLB, on the hottest path, has its own lock-free layout in `iotlb.rs`), and the key hasher
//! both use.
//!
//! A [`ShardedCache`] is a fixed number of `RwLock<HashMap>` shards. A lookup takes one shard's
//! read lock, so devices translating in parallel only contend when they hash to the same shard
//! and one of them is filling. Every shard has a fixed capacity: inserting into a full shard
//! first evicts one entry, so guest activity can never grow a cache without bound. Entries are
//! `Copy` values; nothing borrowed escapes a lock.
//!
//! Each shard also keeps a copy of the entry inserted last, checked before the hash table (a
//! shard usually holds the entry of one device). The copy is only a shortcut: it is set and
//! dropped under the shard's write lock together with the table, and exists only while the
//! table holds the same entry, so a lookup answers exactly what the table would.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A small, fast, non-cryptographic hasher for the caches' integer keys (the keys are built by
/// the model from guest-controlled integers; a collision only costs a longer probe).
#[derive(Clone, Copy, Default)]
pub(crate) struct KeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // Final avalanche so the low bits (hashbrown's bucket index) and the high bits (control
        // bytes and our shard index) both depend on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(SEED);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// A key with its hash computed once: the shard index and the shard's hash table both use it,
/// so a lookup hashes the key a single time.
#[derive(Clone, Copy, Debug)]
struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K: Hash> Hashed<K> {
    fn new(key: K) -> Self {
        let mut h = KeyHasher::default();
        key.hash(&mut h);
        Self {
            hash: h.finish(),
            key,
        }
    }
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hands a [`Hashed`] key's precomputed hash to the hash table unchanged.
#[derive(Clone, Copy, Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Hashed`; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

#[derive(Clone, Copy, Default)]
struct BuildPrehashed;

impl BuildHasher for BuildPrehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher::default()
    }
}

type Map<K, V> = HashMap<Hashed<K>, V, BuildPrehashed>;
type Shard<K, V> = RwLock<ShardMap<K, V>>;

/// One shard's entries.
struct ShardMap<K, V> {
    map: Map<K, V>,
    /// A copy of the entry inserted last, while `map` still holds it (see the module docs).
    last: Option<(Hashed<K>, V)>,
}

impl<K: Hash + Eq + Copy, V: Copy> ShardMap<K, V> {
    #[inline]
    fn get(&self, key: &Hashed<K>) -> Option<V> {
        match &self.last {
            Some((k, v)) if k == key => Some(*v),
            _ => self.map.get(key).copied(),
        }
    }

    /// Drops the copy of the last inserted entry if the table no longer holds it.
    fn check_last(&mut self) {
        if self
            .last
            .as_ref()
            .is_some_and(|(k, _)| !self.map.contains_key(k))
        {
            self.last = None;
        }
    }
}

/// A bounded hash map split into independently locked shards.
pub(crate) struct ShardedCache<K, V> {
    shards: Box<[Shard<K, V>]>,
    shard_mask: usize,
    shard_capacity: usize,
}

impl<K: Hash + Eq + Copy, V: Copy> ShardedCache<K, V> {
    /// A cache of `shards` shards (rounded up to a power of two) holding at most
    /// `shard_capacity` entries each.
    pub(crate) fn new(shards: usize, shard_capacity: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        let shard_capacity = shard_capacity.max(1);
        Self {
            shards: (0..n)
                .map(|_| {
                    RwLock::new(ShardMap {
                        map: HashMap::with_capacity_and_hasher(shard_capacity, BuildPrehashed),
                        last: None,
                    })
                })
                .collect(),
            shard_mask: n - 1,
            shard_capacity,
        }
    }

    /// Largest number of entries the cache can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.shards.len() * self.shard_capacity
    }

    fn shard(&self, key: &Hashed<K>) -> &Shard<K, V> {
        // Bits 40+ pick the shard; the hash table inside uses the low bits (bucket) and the top
        // 7 bits (control byte), so the three do not overlap.
        let idx = (key.hash >> 40) as usize & self.shard_mask;
        // `idx` is masked to the shard count, so this cannot fail; `get` keeps it panic-free.
        self.shards.get(idx).unwrap_or(&self.shards[0])
    }

    fn read(shard: &Shard<K, V>) -> RwLockReadGuard<'_, ShardMap<K, V>> {
        // A poisoned lock only means another thread panicked while holding it; the map itself is
        // always in a consistent state between our operations.
        shard.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(shard: &Shard<K, V>) -> RwLockWriteGuard<'_, ShardMap<K, V>> {
        shard.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the entry for `key`.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let key = Hashed::new(*key);
        Self::read(self.shard(&key)).get(&key)
    }

    /// The entry for `key` as the hash table holds it (not through the copy of the last
    /// inserted entry): the reference the tests compare `get` with.
    #[cfg(test)]
    fn get_from_table(&self, key: &K) -> Option<V> {
        let key = Hashed::new(*key);
        Self::read(self.shard(&key)).map.get(&key).copied()
    }

    /// Inserts or replaces the entry for `key`, evicting another entry of the same shard when
    /// the shard is full.
    #[cfg(test)]
    pub(crate) fn insert(&self, key: K, value: V) {
        self.insert_if(key, value, || true);
    }

    /// Like `insert`, if `still` (called under the shard's write lock, the lock invalidations
    /// take too) returns true: a fill checks that no invalidation started since it read the
    /// tables, so an invalidation either removes the entry or keeps it out.
    pub(crate) fn insert_if(&self, key: K, value: V, still: impl FnOnce() -> bool) {
        let key = Hashed::new(key);
        let mut shard = Self::write(self.shard(&key));
        if !still() {
            return;
        }
        let map = &mut shard.map;
        if map.len() >= self.shard_capacity
            && !map.contains_key(&key)
            && let Some(victim) = map.keys().next().copied()
        {
            map.remove(&victim);
        }
        map.insert(key, value);
        shard.last = Some((key, value));
    }

    /// Keeps only the entries for which `keep` returns true; returns how many were removed.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = Self::write(shard);
            let before = shard.map.len();
            shard.map.retain(|k, v| keep(&k.key, v));
            removed += before - shard.map.len();
            shard.check_last();
        }
        removed
    }

    /// Number of entries for which `matches` returns true.
    pub(crate) fn count(&self, matches: impl Fn(&K) -> bool) -> usize {
        self.shards
            .iter()
            .map(|s| Self::read(s).map.keys().filter(|k| matches(&k.key)).count())
            .sum()
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = Self::write(shard);
            shard.map.clear();
            shard.last = None;
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| Self::read(s).map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_capacity() {
        let c: ShardedCache<u64, u64> = ShardedCache::new(4, 8);
        assert_eq!(c.capacity(), 32);
        for i in 0..10_000 {
            c.insert(i, i);
        }
        assert!(c.len() <= 32);
        // The last key inserted is always present.
        assert_eq!(c.get(&9_999), Some(9_999));
    }

    #[test]
    fn get_answers_what_the_table_holds() {
        // Few shards, small capacity, few keys: evictions, replacements, retains and clears
        // all hit the entry a shard copied last.
        let c: ShardedCache<u32, u32> = ShardedCache::new(2, 3);
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        for step in 0..50_000u32 {
            let r = next();
            let key = (r % 12) as u32;
            match (r >> 8) % 16 {
                0 => c.clear(),
                1..=3 => {
                    let m = ((r >> 16) % 4) as u32;
                    c.retain(|k, _| k % 4 != m);
                }
                4..=9 => c.insert(key, step),
                10 => c.insert_if(key, step, || false),
                _ => {}
            }
            for k in 0..12 {
                assert_eq!(c.get(&k), c.get_from_table(&k), "step {step} key {k}");
            }
        }
    }

    #[test]
    fn retain_remove_clear() {
        let c: ShardedCache<u32, u32> = ShardedCache::new(2, 64);
        for i in 0..50 {
            c.insert(i, i * 2);
        }
        assert_eq!(c.retain(|k, _| k % 2 == 0), 25);
        assert_eq!(c.get(&3), None);
        assert_eq!(c.get(&4), Some(8));
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
