//! The IOTLB: cached leaf translations.
//!
//! Entries are looked up by requester — `(source id, request PASID or none, page number,
//! level)`, like QEMU's hash — so a hit is one set lookup with no context or PASID-cache
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

//! ## Layout: a set-associative table read without locks
//!
//! The IOTLB is a fixed array of `SETS` sets of `WAYS` slots (no allocation after
//! construction, nothing a guest can grow). Each slot is a small seqlock: a sequence word and
//! four data words, all atomics. A lookup reads the sequence, the words, and the sequence again;
//! a slot that changed meanwhile (or is being written) is treated as a miss, which is always
//! safe. So the hit path takes no lock and does no atomic read-modify-write: devices
//! translating in parallel never wait for each other. Writers (fills, invalidations) hold one
//! of `STRIPES` mutexes covering a block of sets, and replace a set's slots round-robin. A
//! dense array of per-slot tags (valid, DID) lets an invalidation scan 32 KiB instead of every
//! slot, and decode only the entries of the domain it targets.

use super::cache::KeyHasher;
use super::walk::first_stage::{FsControls, FsRights};
use crate::invalidation::Invalidation;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard};
use vtd_spec::SourceId;
use vtd_spec::pte::level_size;

/// Key value standing for "request without PASID".
pub(crate) const NO_PASID: u32 = u32::MAX;

/// Slots per set.
const WAYS: usize = 4;
/// Writer locks, each covering a contiguous block of sets.
const STRIPES: usize = 64;

/// Slot tag: bit 0 valid, bits 31:16 the entry's DID.
fn tag(did: u16) -> u32 {
    (u32::from(did) << 16) | 1
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
    /// Output address of the page (4 KiB aligned, below 2^52).
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

/// The two key words of a slot: `sid << 32 | pasid` and `vpn << 3 | level << 1 | valid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    k0: u64,
    k1: u64,
}

const VALID: u64 = 1;

impl Key {
    fn new(sid: SourceId, pasid: u32, iova: u64, level: u32) -> Self {
        let level = level.clamp(1, 3);
        let vpn = iova >> (12 + 9 * (level - 1));
        Self {
            k0: (u64::from(sid.0) << 32) | u64::from(pasid),
            k1: (vpn << 3) | (u64::from(level) << 1) | VALID,
        }
    }
    fn sid(self) -> u16 {
        (self.k0 >> 32) as u16
    }
    fn level(self) -> u8 {
        ((self.k1 >> 1) & 3) as u8
    }
    fn iova_base(self) -> u64 {
        (self.k1 >> 3) << (12 + 9 * (u32::from(self.level().max(1)) - 1))
    }
    fn set_hash(self) -> u64 {
        let mut h = KeyHasher::default();
        h.write_u64(self.k0);
        h.write_u64(self.k1);
        h.finish()
    }
}

// Value word 0: output page (bits 63:12) and flags in bits 11:0.
const V_FPD: u64 = 1 << 0;
const V_FIRST: u64 = 1 << 1;
const V_DIRTY_OK: u64 = 1 << 2;
const V_A: u64 = 1 << 3; // first: R/W over all levels; second: R
const V_B: u64 = 1 << 4; // first: U/S over all levels; second: W
const V_XD: u64 = 1 << 5;
const V_RID_PRIV: u64 = 1 << 6;
// Value word 1: DID in 15:0, PASID in 47:16, first-stage controls in 53:48.
const C_SRE: u64 = 1 << 48;
const C_ERE: u64 = 1 << 49;
const C_WPE: u64 = 1 << 50;
const C_NXE: u64 = 1 << 51;
const C_SMEP: u64 = 1 << 52;
const C_EAFE: u64 = 1 << 53;

fn bit(b: bool, v: u64) -> u64 {
    if b { v } else { 0 }
}

fn encode(e: &IotlbEntry) -> (u64, u64) {
    let mut v0 = (e.gpa_base & !0xfff) | bit(e.fpd, V_FPD);
    let mut v1 = u64::from(e.did) | (u64::from(e.pasid) << 16);
    match e.rights {
        CachedRights::First {
            rights,
            controls: c,
            rid_priv,
            dirty_ok,
        } => {
            v0 |= V_FIRST
                | bit(dirty_ok, V_DIRTY_OK)
                | bit(rights.rw, V_A)
                | bit(rights.us, V_B)
                | bit(rights.xd, V_XD)
                | bit(rid_priv, V_RID_PRIV);
            v1 |= bit(c.sre, C_SRE)
                | bit(c.ere, C_ERE)
                | bit(c.wpe, C_WPE)
                | bit(c.nxe, C_NXE)
                | bit(c.smep, C_SMEP)
                | bit(c.eafe, C_EAFE);
        }
        CachedRights::Second {
            read,
            write,
            dirty_ok,
        } => v0 |= bit(dirty_ok, V_DIRTY_OK) | bit(read, V_A) | bit(write, V_B),
    }
    (v0, v1)
}

fn decode(key: Key, v0: u64, v1: u64) -> IotlbEntry {
    let rights = if v0 & V_FIRST != 0 {
        CachedRights::First {
            rights: FsRights {
                rw: v0 & V_A != 0,
                us: v0 & V_B != 0,
                xd: v0 & V_XD != 0,
            },
            controls: FsControls {
                sre: v1 & C_SRE != 0,
                ere: v1 & C_ERE != 0,
                wpe: v1 & C_WPE != 0,
                nxe: v1 & C_NXE != 0,
                smep: v1 & C_SMEP != 0,
                eafe: v1 & C_EAFE != 0,
            },
            rid_priv: v0 & V_RID_PRIV != 0,
            dirty_ok: v0 & V_DIRTY_OK != 0,
        }
    } else {
        CachedRights::Second {
            read: v0 & V_A != 0,
            write: v0 & V_B != 0,
            dirty_ok: v0 & V_DIRTY_OK != 0,
        }
    };
    IotlbEntry {
        did: v1 as u16,
        pasid: (v1 >> 16) as u32,
        iova_base: key.iova_base(),
        gpa_base: v0 & !0xfff,
        level: key.level(),
        fpd: v0 & V_FPD != 0,
        rights,
    }
}

/// One seqlock-protected slot.
#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    k0: AtomicU64,
    k1: AtomicU64,
    v0: AtomicU64,
    v1: AtomicU64,
}

impl Slot {
    /// A consistent snapshot `(k0, k1, v0, v1)`, or `None` if a writer is active or was
    /// active during the read (the caller treats that as a miss).
    fn read(&self) -> Option<(Key, u64, u64)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let k0 = self.k0.load(Ordering::Relaxed);
        let k1 = self.k1.load(Ordering::Relaxed);
        let v0 = self.v0.load(Ordering::Relaxed);
        let v1 = self.v1.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let s2 = self.seq.load(Ordering::Relaxed);
        (s1 == s2).then_some((Key { k0, k1 }, v0, v1))
    }

    /// Current key; only for writers holding the stripe lock.
    fn key(&self) -> Key {
        Key {
            k0: self.k0.load(Ordering::Relaxed),
            k1: self.k1.load(Ordering::Relaxed),
        }
    }

    /// Rewrites the slot; only for writers holding the stripe lock.
    fn write(&self, key: Key, v0: u64, v1: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.k0.store(key.k0, Ordering::Relaxed);
        self.k1.store(key.k1, Ordering::Relaxed);
        self.v0.store(v0, Ordering::Relaxed);
        self.v1.store(v1, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Empties the slot; only for writers holding the stripe lock.
    fn clear(&self) {
        self.write(Key { k0: 0, k1: 0 }, 0, 0);
    }
}

#[derive(Default)]
struct Set {
    slots: [Slot; WAYS],
    /// Next slot to replace (round-robin), changed under the stripe lock.
    victim: AtomicUsize,
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
    sets: Box<[Set]>,
    /// `tags[set * WAYS + way]`, written with the slot under the stripe lock.
    tags: Box<[AtomicU32]>,
    stripes: Box<[Mutex<()>]>,
    /// Whether any 2 MiB / 1 GiB entry may be cached: lookups skip those levels otherwise.
    superpages: AtomicBool,
}

impl Iotlb {
    /// An IOTLB of at least `entries` entries (rounded up to whole, power-of-two sets).
    pub(crate) fn new(entries: usize) -> Self {
        let sets = entries.div_ceil(WAYS).max(STRIPES).next_power_of_two();
        Self {
            sets: (0..sets).map(|_| Set::default()).collect(),
            tags: (0..sets * WAYS).map(|_| AtomicU32::new(0)).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            superpages: AtomicBool::new(false),
        }
    }

    /// Maximum number of entries.
    pub(crate) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    fn set_index(&self, key: Key) -> usize {
        (key.set_hash() >> 32) as usize & (self.sets.len() - 1)
    }

    /// Sets per stripe (the set count is a power of two of at least `STRIPES`).
    fn sets_per_stripe(&self) -> usize {
        self.sets.len() / STRIPES
    }

    fn lock_stripe(&self, stripe: usize) -> MutexGuard<'_, ()> {
        // Poisoning only means a panic elsewhere; the slots are consistent between writes.
        self.stripes[stripe % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.sets
            .iter()
            .flat_map(|s| s.slots.iter())
            .filter(|slot| slot.read().is_some_and(|(k, _, _)| k.k1 & VALID != 0))
            .count()
    }

    fn get(&self, key: Key) -> Option<IotlbEntry> {
        let set = self.sets.get(self.set_index(key))?;
        set.slots.iter().find_map(|slot| {
            let (k, v0, v1) = slot.read()?;
            (k == key).then(|| decode(k, v0, v1))
        })
    }

    /// The cached translation of the page holding `iova` for this requester.
    pub(crate) fn lookup(&self, sid: SourceId, pasid: u32, iova: u64) -> Option<IotlbEntry> {
        if let Some(e) = self.get(Key::new(sid, pasid, iova, 1)) {
            return Some(e);
        }
        if !self.superpages.load(Ordering::Relaxed) {
            return None;
        }
        (2..=3).find_map(|level| self.get(Key::new(sid, pasid, iova, level)))
    }

    /// Caches a translation for this requester.
    pub(crate) fn insert(&self, sid: SourceId, pasid: u32, entry: IotlbEntry) {
        let level = u32::from(entry.level).clamp(1, 3);
        if level > 1 {
            self.superpages.store(true, Ordering::Relaxed);
        }
        let key = Key::new(sid, pasid, entry.iova_base, level);
        let (v0, v1) = encode(&entry);
        let index = self.set_index(key);
        let Some(set) = self.sets.get(index) else {
            return;
        };
        let _guard = self.lock_stripe(index / self.sets_per_stripe());
        let way = (0..WAYS)
            .find(|&w| set.slots[w].key() == key)
            .or_else(|| (0..WAYS).find(|&w| set.slots[w].key().k1 & VALID == 0))
            .unwrap_or_else(|| {
                let v = set.victim.load(Ordering::Relaxed) % WAYS;
                set.victim.store((v + 1) % WAYS, Ordering::Relaxed);
                v
            });
        set.slots[way].write(key, v0, v1);
        self.tags[index * WAYS + way].store(tag(entry.did), Ordering::Relaxed);
    }

    /// Drops the entries for which `drop` is true; returns how many. `did` pre-selects slots
    /// by domain from the raw value word, so a domain-scoped flush decodes only that domain's
    /// entries.
    fn drop_where(&self, did: Option<u16>, drop: impl Fn(Key, &IotlbEntry) -> bool) -> usize {
        let mut dropped = 0;
        let per = self.sets_per_stripe();
        for stripe in 0..STRIPES {
            let _guard = self.lock_stripe(stripe);
            let first = stripe * per * WAYS;
            let tags = self.tags.get(first..first + per * WAYS).unwrap_or(&[]);
            for (i, t) in tags.iter().enumerate() {
                let t = t.load(Ordering::Relaxed);
                if t & 1 == 0 || did.is_some_and(|d| t != tag(d)) {
                    continue;
                }
                let (set, way) = ((first + i) / WAYS, (first + i) % WAYS);
                let Some(slot) = self.sets.get(set).map(|s| &s.slots[way]) else {
                    continue;
                };
                let key = slot.key();
                let v0 = slot.v0.load(Ordering::Relaxed);
                let v1 = slot.v1.load(Ordering::Relaxed);
                if key.k1 & VALID != 0 && drop(key, &decode(key, v0, v1)) {
                    slot.clear();
                    self.tags[first + i].store(0, Ordering::Relaxed);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) -> usize {
        let n = self.drop_where(None, |_, _| true);
        self.superpages.store(false, Ordering::Relaxed);
        n
    }

    /// Drops the entries of requesters matching `sid_matches`.
    pub(crate) fn drop_sources(&self, sid_matches: impl Fn(u16) -> bool) -> usize {
        self.drop_where(None, |k, _| sid_matches(k.sid()))
    }

    /// Applies one invalidation; returns the number of entries dropped.
    pub(crate) fn invalidate(&self, inv: &Invalidation) -> usize {
        match *inv {
            Invalidation::IotlbGlobal => self.clear(),
            Invalidation::IotlbDomain { did } => self.drop_where(Some(did), |_, _| true),
            Invalidation::IotlbPage { did, addr, am, .. } => match Range::pages(addr, am) {
                None => self.drop_where(Some(did), |_, _| true),
                Some(r) => self.drop_where(Some(did), |_, e| e.is_first_stage() || e.overlaps(&r)),
            },
            Invalidation::PasidIotlbAll { did, pasid } => self.drop_pasid(did, pasid),
            Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                ..
            } => match Range::pages(addr, am) {
                Some(r) if am < PASID_AM_WHOLE => self.drop_where(Some(did), |_, e| {
                    e.pasid == pasid && e.is_first_stage() && e.overlaps(&r)
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
        self.drop_where(Some(did), |_, e| e.pasid == pasid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: bool) -> IotlbEntry {
        IotlbEntry {
            did: 0xbeef,
            pasid: 0xf_ffff,
            iova_base: 0xffff_8000_4000_0000,
            gpa_base: 0x000f_ffff_c000_0000,
            level: 3,
            fpd: true,
            rights: if first {
                CachedRights::First {
                    rights: FsRights {
                        rw: true,
                        us: false,
                        xd: true,
                    },
                    controls: FsControls {
                        sre: true,
                        ere: false,
                        wpe: true,
                        nxe: true,
                        smep: false,
                        eafe: true,
                    },
                    rid_priv: true,
                    dirty_ok: false,
                }
            } else {
                CachedRights::Second {
                    read: false,
                    write: true,
                    dirty_ok: true,
                }
            },
        }
    }

    #[test]
    fn entries_round_trip_through_a_slot() {
        for first in [true, false] {
            let t = Iotlb::new(64);
            let e = entry(first);
            t.insert(SourceId(0x1234), 7, e);
            assert_eq!(
                t.lookup(SourceId(0x1234), 7, e.iova_base + 0x1234_5678),
                Some(e)
            );
            assert_eq!(t.lookup(SourceId(0x1234), 8, e.iova_base), None);
            assert_eq!(t.lookup(SourceId(0x1235), 7, e.iova_base), None);
            assert_eq!(t.len(), 1);
            let mut e2 = e;
            e2.did = 1;
            t.insert(SourceId(0x1234), 7, e2);
            assert_eq!(t.len(), 1, "same key replaces");
            assert_eq!(t.clear(), 1);
            assert_eq!(t.lookup(SourceId(0x1234), 7, e.iova_base), None);
        }
    }

    #[test]
    fn full_sets_replace_round_robin() {
        let t = Iotlb::new(1);
        assert_eq!(t.capacity(), STRIPES * WAYS);
        let mut e = entry(false);
        e.level = 1;
        for i in 0..10_000u64 {
            e.iova_base = i << 12;
            t.insert(SourceId(1), 0, e);
        }
        assert_eq!(t.len(), t.capacity());
        e.iova_base = 9_999 << 12;
        assert_eq!(t.lookup(SourceId(1), 0, 9_999 << 12), Some(e));
    }
}
