//! The IOTLB: cached leaf translations.
//!
//! Entries are looked up by requester — `(source id, request PASID or none, page number,
//! level)`, like QEMU's hash — so a hit is one hash lookup with no context or PASID-cache
//! access. Each entry carries the tags the spec's invalidations select on: the domain id and
//! PASID of the PASID (or context) entry it was built from, and whether it is a first- or
//! second-stage translation. Invalidations scan the (bounded) table.
//!
//! | invalidation (§6.5.2)        | entries dropped                                           |
//! |------------------------------|-----------------------------------------------------------|
//! | IOTLB global                 | all                                                       |
//! | IOTLB domain (DID)           | all of DID                                                |
//! | IOTLB page (DID, range)      | second-stage of DID overlapping the range; **all** first-stage of DID |
//! | PASID-IOTLB all (DID, PASID) | all of (DID, PASID)                                       |
//! | PASID-IOTLB page (DID, PASID, range) | first-stage of (DID, PASID) overlapping the range; AM ≥ 52 or a range covering the space: all of (DID, PASID) |
//!
//! Pass-through translations are not cached: they come from the context and PASID caches,
//! which already hold everything they need. No paging-structure cache is kept, so the IH hint
//! needs no handling.

use super::cache::ShardedCache;
use super::walk::first_stage::{FsControls, FsRights};
use crate::invalidation::Invalidation;
use std::sync::atomic::{AtomicBool, Ordering};
use vtd_spec::SourceId;
use vtd_spec::pte::level_size;

/// Key value standing for "request without PASID".
pub(crate) const NO_PASID: u32 = u32::MAX;

/// IOTLB lookup key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IotlbKey {
    sid: u16,
    pasid: u32,
    vpn: u64,
    level: u8,
}

/// Two words instead of four: the key is hashed on every lookup.
impl std::hash::Hash for IotlbKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64((u64::from(self.sid) << 32) | u64::from(self.pasid));
        state.write_u64((self.vpn << 2) ^ u64::from(self.level));
    }
}

impl IotlbKey {
    fn new(sid: SourceId, pasid: u32, iova: u64, level: u32) -> Self {
        Self {
            sid: sid.0,
            pasid,
            vpn: iova >> (12 + 9 * (level - 1)),
            level: level as u8,
        }
    }
}

/// What a cached translation allows, per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CachedRights {
    /// First-stage leaf: accumulated rights, the PASID entry's controls and the requester's
    /// privilege for requests without PASID (RID_PRIV).
    First {
        /// Accumulated rights.
        rights: FsRights,
        /// PASID-entry controls.
        controls: FsControls,
        /// RID_PRIV of the context entry.
        rid_priv: bool,
        /// A write needs no D update.
        dirty_ok: bool,
    },
    /// Second-stage leaf.
    Second {
        /// R over all levels.
        read: bool,
        /// W over all levels.
        write: bool,
        /// A write needs no D update.
        dirty_ok: bool,
    },
}

/// A cached leaf translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IotlbEntry {
    /// Domain id tag.
    pub(crate) did: u16,
    /// PASID tag (the RID_PASID for requests without PASID; [`NO_PASID`] in legacy mode).
    pub(crate) pasid: u32,
    /// Input address of the page.
    pub(crate) iova_base: u64,
    /// Output address of the page.
    pub(crate) gpa_base: u64,
    /// 1, 2 or 3.
    pub(crate) level: u8,
    /// FPD of the entries on the path.
    pub(crate) fpd: bool,
    /// Rights.
    pub(crate) rights: CachedRights,
}

impl IotlbEntry {
    /// Page size.
    pub(crate) fn size(&self) -> u64 {
        level_size(u32::from(self.level))
    }
    fn is_first_stage(&self) -> bool {
        matches!(self.rights, CachedRights::First { .. })
    }
    fn overlaps(&self, range: &Range) -> bool {
        let start = u128::from(self.iova_base);
        let end = start + u128::from(self.size());
        start < range.end && range.start < end
    }
}

/// An address range of an invalidation, in u128 so 2^64 is representable.
struct Range {
    start: u128,
    end: u128,
}

impl Range {
    /// The 2^am pages at `addr` (aligned down), or `None` when the range covers the whole
    /// 64-bit space.
    fn pages(addr: u64, am: u8) -> Option<Range> {
        let shift = 12 + u32::from(am);
        if shift >= 64 {
            return None;
        }
        let size = 1u128 << shift;
        let start = u128::from(addr) & !(size - 1);
        Some(Range {
            start,
            end: start + size,
        })
    }
}

/// The largest AM the PASID-IOTLB descriptor can meaningfully carry: 2^52 pages cover the
/// whole 64-bit space, so Linux's "flush all" (addr 0, AM 52) is a whole-PASID flush.
const PASID_AM_WHOLE: u8 = 52;

/// The IOTLB.
pub(crate) struct Iotlb {
    map: ShardedCache<IotlbKey, IotlbEntry>,
    /// Whether any 2 MiB / 1 GiB entry may be cached: lookups skip those levels otherwise.
    superpages: AtomicBool,
}

impl Iotlb {
    /// An IOTLB of `shards` shards of `shard_capacity` entries.
    pub(crate) fn new(shards: usize, shard_capacity: usize) -> Self {
        Self {
            map: ShardedCache::new(shards, shard_capacity),
            superpages: AtomicBool::new(false),
        }
    }

    /// Maximum number of entries.
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The cached translation of the page holding `iova` for this requester.
    pub(crate) fn lookup(&self, sid: SourceId, pasid: u32, iova: u64) -> Option<IotlbEntry> {
        if let Some(e) = self.map.get(&IotlbKey::new(sid, pasid, iova, 1)) {
            return Some(e);
        }
        if !self.superpages.load(Ordering::Relaxed) {
            return None;
        }
        (2..=3).find_map(|level| self.map.get(&IotlbKey::new(sid, pasid, iova, level)))
    }

    /// Caches a translation for this requester.
    pub(crate) fn insert(&self, sid: SourceId, pasid: u32, entry: IotlbEntry) {
        let level = u32::from(entry.level).clamp(1, 3);
        if level > 1 {
            self.superpages.store(true, Ordering::Relaxed);
        }
        self.map
            .insert(IotlbKey::new(sid, pasid, entry.iova_base, level), entry);
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        self.map.clear();
        self.superpages.store(false, Ordering::Relaxed);
    }

    /// Drops the entries of requesters matching `sid_matches`.
    pub(crate) fn drop_sources(&self, sid_matches: impl Fn(u16) -> bool) -> usize {
        self.map.retain(|k, _| !sid_matches(k.sid))
    }

    /// Applies one invalidation; returns the number of entries dropped.
    pub(crate) fn invalidate(&self, inv: &Invalidation) -> usize {
        match *inv {
            Invalidation::IotlbGlobal => {
                let n = self.len();
                self.clear();
                n
            }
            Invalidation::IotlbDomain { did } => self.map.retain(|_, e| e.did != did),
            Invalidation::IotlbPage { did, addr, am, .. } => match Range::pages(addr, am) {
                None => self.map.retain(|_, e| e.did != did),
                Some(r) => self
                    .map
                    .retain(|_, e| e.did != did || !(e.is_first_stage() || e.overlaps(&r))),
            },
            Invalidation::PasidIotlbAll { did, pasid } => self.drop_pasid(did, pasid),
            Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                ..
            } => match Range::pages(addr, am) {
                Some(r) if am < PASID_AM_WHOLE => self.map.retain(|_, e| {
                    !(e.did == did && e.pasid == pasid && e.is_first_stage() && e.overlaps(&r))
                }),
                _ => self.drop_pasid(did, pasid),
            },
            Invalidation::ContextGlobal
            | Invalidation::ContextDomain { .. }
            | Invalidation::ContextDevice { .. }
            | Invalidation::PasidCacheGlobal
            | Invalidation::PasidCacheDomain { .. }
            | Invalidation::PasidCachePasid { .. } => 0,
        }
    }

    fn drop_pasid(&self, did: u16, pasid: u32) -> usize {
        self.map.retain(|_, e| !(e.did == did && e.pasid == pasid))
    }
}
