//! The context cache (keyed by source id) and the PASID cache (keyed by source id and PASID,
//! tagged with the PASID entry's domain id). Both hold only entries that passed every check:
//! not-present and faulting entries are never cached (§6.2.2, CAP.CM is not reported).

use super::cache::ShardedCache;
use super::tables::Context;
use crate::invalidation::Invalidation;
use vtd_spec::SourceId;
use vtd_spec::pasid::PasidEntry;

/// Cached context entries.
pub(crate) struct ContextCache {
    map: ShardedCache<u16, Context>,
}

impl ContextCache {
    pub(crate) fn new(shards: usize, shard_capacity: usize) -> Self {
        Self {
            map: ShardedCache::new(shards, shard_capacity),
        }
    }
    #[inline]
    pub(crate) fn get(&self, sid: SourceId) -> Option<Context> {
        self.map.get(&sid.0)
    }
    /// Caches `ctx` if `still` holds under the shard lock (see `ShardedCache::insert_if`).
    pub(crate) fn insert_if(&self, sid: SourceId, ctx: Context, still: impl FnOnce() -> bool) {
        self.map.insert_if(sid.0, ctx, still);
    }
    pub(crate) fn clear(&self) {
        self.map.clear();
    }
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }
    /// Drops entries of the sources matching `matches`.
    pub(crate) fn drop_sources(&self, matches: impl Fn(u16) -> bool) -> usize {
        self.map.retain(|k, _| !matches(*k))
    }
    /// Number of entries of source `sid`.
    pub(crate) fn count_source(&self, sid: u16) -> usize {
        self.map.count(|k| *k == sid)
    }
}

/// A cached PASID entry with the FPD of the directory entry that led to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CachedPasid {
    /// The entry (present and valid).
    pub(crate) entry: PasidEntry,
    /// FPD of the PASID-directory entry.
    pub(crate) dir_fpd: bool,
}

/// Cached PASID entries.
pub(crate) struct PasidCache {
    map: ShardedCache<(u16, u32), CachedPasid>,
}

impl PasidCache {
    pub(crate) fn new(shards: usize, shard_capacity: usize) -> Self {
        Self {
            map: ShardedCache::new(shards, shard_capacity),
        }
    }
    #[inline]
    pub(crate) fn get(&self, sid: SourceId, pasid: u32) -> Option<CachedPasid> {
        self.map.get(&(sid.0, pasid))
    }
    /// Caches `e` if `still` holds under the shard lock (see `ShardedCache::insert_if`).
    pub(crate) fn insert_if(
        &self,
        sid: SourceId,
        pasid: u32,
        e: CachedPasid,
        still: impl FnOnce() -> bool,
    ) {
        self.map.insert_if((sid.0, pasid), e, still);
    }
    pub(crate) fn clear(&self) {
        self.map.clear();
    }
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }
    pub(crate) fn drop_sources(&self, matches: impl Fn(u16) -> bool) -> usize {
        self.map.retain(|k, _| !matches(k.0))
    }
    /// Number of entries of source `sid`.
    pub(crate) fn count_source(&self, sid: u16) -> usize {
        self.map.count(|k| k.0 == sid)
    }
    /// Applies a PASID-cache invalidation (§6.5.2.3); other kinds are ignored.
    pub(crate) fn invalidate(&self, inv: &Invalidation) -> usize {
        match *inv {
            Invalidation::PasidCacheGlobal => {
                let n = self.len();
                self.clear();
                n
            }
            Invalidation::PasidCacheDomain { did } => {
                self.map.retain(|_, e| e.entry.qw1.did() != did)
            }
            Invalidation::PasidCachePasid { did, pasid } => self
                .map
                .retain(|k, e| !(e.entry.qw1.did() == did && k.1 == pasid)),
            _ => 0,
        }
    }
}
