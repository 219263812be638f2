//! First-stage walk plans: for a requester in scalable mode — (source id, request PASID or
//! none) — what its context entry and PASID entry say about a first-stage walk, resolved once.
//!
//! ```text
//!  IOTLB miss ─► plan (sid, pasid|none) ─ hit ──────────────────────────► checks ─► walk
//!                 │ miss
//!                 └─► context cache ─► PASID cache ─► PGTT=FS: checks ─► walk
//!                                                        └─ fill the plan
//! ```
//!
//! A plan is the context-cache entry and the PASID-cache entry of its requester folded into
//! what a first-stage walk needs (the table root and paging mode, the PASID entry's controls,
//! DID, resolved PASID, FPD, RID_PRIV), so it may live exactly as long as both entries could:
//! any context-cache invalidation and any PASID-cache invalidation drops every plan (they are
//! rare: device attach and detach). IOTLB invalidations do not concern it, as they do not
//! concern the context and PASID caches. Only first-stage PASID entries get plans; a plan is
//! filled only by a translation whose ticket shows no invalidation started since it read the
//! entries, like the caches it stands for.

use super::cache::ShardedCache;
use super::walk::first_stage::FsWalk;

/// What a first-stage requester's context and PASID entries say.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Where and how to walk.
    pub(crate) walk: FsWalk,
    /// Domain id of the PASID entry.
    pub(crate) did: u16,
    /// The PASID the walk is tagged with (the RID_PASID for requests without PASID).
    pub(crate) pasid: u32,
    /// Fault processing disabled by the context, PASID-directory or PASID entry.
    pub(crate) fpd: bool,
    /// RID_PRIV: the privilege of requests without PASID.
    pub(crate) rid_priv: bool,
}

/// The plans, keyed by (source id, request PASID or [`super::NO_PASID`]).
pub(crate) struct Plans {
    map: ShardedCache<(u16, u32), Plan>,
}

impl Plans {
    pub(crate) fn new(shards: usize, shard_capacity: usize) -> Self {
        Self {
            map: ShardedCache::new(shards, shard_capacity),
        }
    }

    pub(crate) fn get(&self, sid: u16, pasid: u32) -> Option<Plan> {
        self.map.get(&(sid, pasid))
    }

    /// Keeps `plan` if `still` holds under the shard lock (see `ShardedCache::insert_if`).
    pub(crate) fn insert_if(&self, sid: u16, pasid: u32, plan: Plan, still: impl FnOnce() -> bool) {
        self.map.insert_if((sid, pasid), plan, still);
    }

    /// Drops every plan; returns how many there were.
    pub(crate) fn clear(&self) -> usize {
        let n = self.map.len();
        self.map.clear();
        n
    }
}
