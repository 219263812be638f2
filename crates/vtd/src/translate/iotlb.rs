//! The IOTLB: cached leaf translations.
//!
//! Entries are looked up by requester — `(source id, request PASID or none, page number,
//! level)`, like QEMU's hash — so a hit is one set lookup with no context or PASID-cache
//! access. Each entry carries the tags the spec's invalidations select on: the domain id and
//! PASID of the PASID (or context) entry it was built from, and whether it is a first- or
//! second-stage translation; and a generation stamp (`generation.rs`).
//!
//! ## Invalidation without scans
//!
//! An invalidation never walks the table. Wide scopes bump a generation, which kills every
//! entry stamped under the old one at once; narrow page ranges probe the exact slots the pages
//! can occupy, found through the domain's requester record (`requesters.rs`):
//!
//! | invalidation (§6.5.2)        | entries dropped (spec)                   | how |
//! |------------------------------|------------------------------------------|-----|
//! | IOTLB global                 | all                                      | `G += 1` |
//! | IOTLB domain (DID)           | all of DID                               | `D[did] += 1` |
//! | IOTLB page (DID, range)      | second-stage of DID overlapping the range; **all** first-stage of DID | DID with first-stage entries, untracked, or range over the probe budget: `D[did] += 1`; otherwise probe the range's second-stage slots |
//! | PASID-IOTLB all (DID, PASID) | all of (DID, PASID)                      | `P[did, pasid] += 1` |
//! | PASID-IOTLB page (DID, PASID, range) | first-stage of (DID, PASID) overlapping the range; AM ≥ 52 or a range covering the space: all of (DID, PASID) | probe the range's first-stage slots of (DID, PASID); AM ≥ 52 or over the probe budget: `P[did, pasid] += 1`; untracked: `D[did] += 1` (which makes the domain trackable again) |
//! | context-cache device (SID, FM) | (beyond the spec) every entry of the selected requesters | scan (rare: device attach) |
//!
//! A probe visits, for each listed requester of the domain (with the invalidation's PASID, for
//! PASID-based ones) and each level the domain has entries at (4 KiB always; 2 MiB and 1 GiB
//! when the record says so), the slots of every page of that level overlapping the range, and
//! clears those whose DID, PASID and stage match: a page is dropped at every level it was
//! cached. At most [`PROBE_BUDGET`] probes; beyond that a generation bump is cheaper. A domain
//! with no record and not untracked has no entry: its page invalidations cost nothing.
//!
//! Every over-flush here (a generation bump dropping a whole domain or PASID, a shared PASID
//! bucket, a wrap) is one the spec allows; an entry an invalidation covers is never kept.
//!
//! Pass-through translations are not cached: they come from the context and PASID caches,
//! which already hold everything they need. The IH hint does not concern leaf entries: it is
//! honoured by the first-stage paging-structure cache (`leaf_tables.rs`).
//!
//! ## Layout: a set-associative table read without locks
//!
//! The IOTLB is a fixed array of `SETS` sets of `WAYS` slots (no allocation after
//! construction, nothing a guest can grow). Each slot is a small seqlock: a sequence word, two
//! key words, two value words and the stamp, all atomics. A lookup reads the sequence and the
//! key, and only for the matching slot the value words, the stamp and the sequence again; a
//! slot that changed meanwhile (or is being written) is a miss, which is always safe; so is a
//! stamp that no longer matches the generations. The hit path takes no lock and does no atomic
//! read-modify-write: devices translating in parallel never wait for each other. Writers
//! (fills, probes, scans) hold one of `STRIPES` mutexes covering a block of sets. A fill
//! replaces, in order of preference, the slot of the same key, an empty or dead slot, or a
//! slot chosen round-robin; it inserts only if no invalidation started since its
//! [`Ticket`] was taken (checked under the stripe lock, see `generation.rs`).

use super::cache::KeyHasher;
use super::generation::{Clock, Generations, Ticket};
use super::requesters::{R_1G, R_2M, R_FIRST, Requester, Requesters, Tracked};
use crate::invalidation::Invalidation;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard};
use vtd_spec::SourceId;
use vtd_spec::pte::level_size;
use vtd_spec::rights::{FsControls, FsRights};

/// Key value standing for "request without PASID".
pub(crate) const NO_PASID: u32 = u32::MAX;

/// Slots per set.
const WAYS: usize = 4;
/// Writer locks, each covering a contiguous block of sets.
const STRIPES: usize = 64;

/// Most slots one page invalidation probes before a generation bump is preferred.
pub(crate) const PROBE_BUDGET: usize = 64;

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
    fn is_first_stage(&self) -> bool {
        matches!(self.rights, CachedRights::First { .. })
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
    /// The set a key lives in, before masking: a hash of the requester and level, plus the
    /// page number, so that one requester's neighbouring pages sit in neighbouring sets (as in
    /// a hardware TLB indexed by low page-number bits). A request's buffers are mapped at
    /// neighbouring IOVAs, so filling or invalidating them touches one or two pages of the
    /// table instead of one each; consecutive pages never share a set.
    fn set_hash(self) -> u64 {
        let mut h = KeyHasher::default();
        h.write_u64(self.k0);
        h.write_u64(self.k1 & 0b111);
        (h.finish() >> 32).wrapping_add(self.k1 >> 3)
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
// Value word 1: DID in 15:0, PASID in 47:16, the first-stage controls' byte in 55:48.
const C_SHIFT: u32 = 48;

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
            v1 |= u64::from(c.into_bits()) << C_SHIFT;
        }
        CachedRights::Second {
            read,
            write,
            dirty_ok,
        } => v0 |= bit(dirty_ok, V_DIRTY_OK) | bit(read, V_A) | bit(write, V_B),
    }
    (v0, v1)
}

/// A looked-up entry in its raw slot words: the hit path reads the few bits it needs
/// straight from them (a decoded [`IotlbEntry`] is larger and only built for tests and traces).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    key: Key,
    v0: u64,
    v1: u64,
}

impl Hit {
    /// Input address of the page.
    #[inline]
    pub(crate) fn iova_base(&self) -> u64 {
        self.key.iova_base()
    }
    /// Output address of the page.
    #[inline]
    pub(crate) fn gpa_base(&self) -> u64 {
        self.v0 & !0xfff
    }
    /// 1, 2 or 3.
    #[inline]
    pub(crate) fn level(&self) -> u8 {
        self.key.level()
    }
    /// Page size.
    #[inline]
    pub(crate) fn size(&self) -> u64 {
        level_size(u32::from(self.level().max(1)))
    }
    /// Domain id tag.
    #[inline]
    pub(crate) fn did(&self) -> u16 {
        v1_did(self.v1)
    }
    /// The rights, decoded.
    #[inline]
    pub(crate) fn rights(&self) -> CachedRights {
        rights(self.v0, self.v1)
    }
    /// The whole entry, decoded.
    #[cfg(test)]
    pub(crate) fn entry(&self) -> IotlbEntry {
        decode(self.key, self.v0, self.v1)
    }
}

#[inline]
fn rights(v0: u64, v1: u64) -> CachedRights {
    if v0 & V_FIRST != 0 {
        CachedRights::First {
            rights: FsRights {
                rw: v0 & V_A != 0,
                us: v0 & V_B != 0,
                xd: v0 & V_XD != 0,
            },
            controls: FsControls::from_bits((v1 >> C_SHIFT) as u8),
            rid_priv: v0 & V_RID_PRIV != 0,
            dirty_ok: v0 & V_DIRTY_OK != 0,
        }
    } else {
        CachedRights::Second {
            read: v0 & V_A != 0,
            write: v0 & V_B != 0,
            dirty_ok: v0 & V_DIRTY_OK != 0,
        }
    }
}

#[cfg(test)]
fn decode(key: Key, v0: u64, v1: u64) -> IotlbEntry {
    let rights = rights(v0, v1);
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

fn v1_did(v1: u64) -> u16 {
    v1 as u16
}

fn v1_pasid(v1: u64) -> u32 {
    (v1 >> 16) as u32
}

/// One seqlock-protected slot.
#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    k0: AtomicU64,
    k1: AtomicU64,
    v0: AtomicU64,
    v1: AtomicU64,
    stamp: AtomicU64,
}

impl Slot {
    /// The value words and the stamp if the slot consistently holds `key`; `None` if it holds
    /// another key or a writer is (or was, during the read) active: a miss.
    #[inline]
    fn read_if(&self, key: Key) -> Option<(u64, u64, u64)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0
            || self.k0.load(Ordering::Relaxed) != key.k0
            || self.k1.load(Ordering::Relaxed) != key.k1
        {
            return None;
        }
        let v0 = self.v0.load(Ordering::Relaxed);
        let v1 = self.v1.load(Ordering::Relaxed);
        let stamp = self.stamp.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s1).then_some((v0, v1, stamp))
    }

    /// A consistent snapshot `(key, v1, stamp)`, or `None` while a writer is active.
    fn read(&self) -> Option<(Key, u64, u64)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let key = self.key();
        let v1 = self.v1.load(Ordering::Relaxed);
        let stamp = self.stamp.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s1).then_some((key, v1, stamp))
    }

    /// Current key; consistent only for writers holding the stripe lock.
    fn key(&self) -> Key {
        Key {
            k0: self.k0.load(Ordering::Relaxed),
            k1: self.k1.load(Ordering::Relaxed),
        }
    }

    /// Rewrites the slot; only for writers holding the stripe lock.
    fn write(&self, key: Key, v0: u64, v1: u64, stamp: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.k0.store(key.k0, Ordering::Relaxed);
        self.k1.store(key.k1, Ordering::Relaxed);
        self.v0.store(v0, Ordering::Relaxed);
        self.v1.store(v1, Ordering::Relaxed);
        self.stamp.store(stamp, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Empties the slot; only for writers holding the stripe lock.
    fn clear(&self) {
        self.write(Key { k0: 0, k1: 0 }, 0, 0, 0);
    }
}

#[derive(Default)]
struct Set {
    slots: [Slot; WAYS],
    /// Next slot to replace (round-robin), changed under the stripe lock.
    victim: AtomicUsize,
}

/// An address range of an invalidation, in u128 so 2^64 is representable.
#[derive(Clone, Copy)]
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

    /// The page numbers of `level`-sized pages overlapping the range.
    fn vpns(self, level: u32) -> std::ops::RangeInclusive<u128> {
        let shift = 12 + 9 * (level - 1);
        (self.start >> shift)..=((self.end - 1) >> shift)
    }
}

/// The largest AM the PASID-IOTLB descriptor can meaningfully carry: 2^52 pages cover the
/// whole 64-bit space, so Linux's "flush all" (addr 0, AM 52) is a whole-PASID flush.
const PASID_AM_WHOLE: u8 = 52;

/// A generation bump.
#[derive(Clone, Copy, Debug)]
enum Bump {
    Global,
    Domain(u16),
    Pasid(u16, u32),
}

/// The IOTLB.
pub(crate) struct Iotlb {
    sets: Box<[Set]>,
    stripes: Box<[Mutex<()>]>,
    /// Whether any 2 MiB / 1 GiB entry may be cached: lookups skip those levels otherwise.
    superpages: AtomicBool,
    gens: Generations,
    requesters: Requesters,
}

impl Iotlb {
    /// An IOTLB of at least `entries` entries (rounded up to whole, power-of-two sets).
    pub(crate) fn new(entries: usize) -> Self {
        let sets = entries.div_ceil(WAYS).max(STRIPES).next_power_of_two();
        Self {
            sets: (0..sets).map(|_| Set::default()).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            superpages: AtomicBool::new(false),
            gens: Generations::new(),
            requesters: Requesters::new(),
        }
    }

    /// Maximum number of entries.
    pub(crate) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    fn set_index(&self, key: Key) -> usize {
        key.set_hash() as usize & (self.sets.len() - 1)
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

    /// Whether an entry with value word `v1` and `stamp` is still valid.
    #[inline]
    fn live(&self, v1: u64, stamp: u64) -> bool {
        self.gens.stamp(v1_did(v1), v1_pasid(v1)) == stamp
    }

    /// Number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.sets
            .iter()
            .flat_map(|s| s.slots.iter())
            .filter(|slot| {
                slot.read()
                    .is_some_and(|(k, v1, stamp)| k.k1 & VALID != 0 && self.live(v1, stamp))
            })
            .count()
    }

    /// Number of live entries of source `sid`.
    pub(crate) fn count_source(&self, sid: u16) -> usize {
        self.sets
            .iter()
            .flat_map(|s| s.slots.iter())
            .filter(|slot| {
                slot.read().is_some_and(|(k, v1, stamp)| {
                    k.k1 & VALID != 0 && k.sid() == sid && self.live(v1, stamp)
                })
            })
            .count()
    }

    /// Live entries per domain id, by domain id.
    pub(crate) fn per_domain(&self) -> Vec<(u16, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for slot in self.sets.iter().flat_map(|s| s.slots.iter()) {
            if let Some((k, v1, stamp)) = slot.read()
                && k.k1 & VALID != 0
                && self.live(v1, stamp)
            {
                *counts.entry(v1_did(v1)).or_insert(0) += 1;
            }
        }
        counts.into_iter().collect()
    }

    #[inline]
    fn get(&self, key: Key) -> Option<Hit> {
        let set = self.sets.get(self.set_index(key))?;
        set.slots.iter().find_map(|slot| {
            let (v0, v1, stamp) = slot.read_if(key)?;
            self.live(v1, stamp).then_some(Hit { key, v0, v1 })
        })
    }

    /// The cached translation of the page holding `iova` for this requester.
    #[inline]
    pub(crate) fn lookup(&self, sid: SourceId, pasid: u32, iova: u64) -> Option<Hit> {
        if let Some(e) = self.get(Key::new(sid, pasid, iova, 1)) {
            return Some(e);
        }
        if !self.superpages.load(Ordering::Relaxed) {
            return None;
        }
        (2..=3).find_map(|level| self.get(Key::new(sid, pasid, iova, level)))
    }

    /// Caches a translation for this requester (request PASID `pasid`, or [`NO_PASID`]) if no
    /// invalidation started since `ticket` was taken, before the tables were read.
    pub(crate) fn insert(
        &self,
        clock: &Clock,
        ticket: Option<Ticket>,
        sid: SourceId,
        pasid: u32,
        entry: IotlbEntry,
    ) {
        if ticket.is_none() {
            return;
        }
        let level = u32::from(entry.level).clamp(1, 3);
        let flags = match level {
            2 => R_2M,
            3 => R_1G,
            _ => 0,
        } | if entry.is_first_stage() { R_FIRST } else { 0 };
        let requester = Requester {
            sid,
            no_pasid: pasid == NO_PASID,
            pasid: entry.pasid,
        };
        self.requesters.register(entry.did, requester, flags);
        if level > 1 {
            self.superpages.store(true, Ordering::Relaxed);
        }
        let stamp = self.gens.stamp(entry.did, entry.pasid);
        let key = Key::new(sid, pasid, entry.iova_base, level);
        let (v0, v1) = encode(&entry);
        let index = self.set_index(key);
        let Some(set) = self.sets.get(index) else {
            return;
        };
        let _guard = self.lock_stripe(index / self.sets_per_stripe());
        if !clock.still(ticket) {
            return;
        }
        let free = |w: &usize| {
            let slot = &set.slots[*w];
            slot.key().k1 & VALID == 0
                || !self.live(
                    slot.v1.load(Ordering::Relaxed),
                    slot.stamp.load(Ordering::Relaxed),
                )
        };
        let way = (0..WAYS)
            .find(|&w| set.slots[w].key() == key)
            .or_else(|| (0..WAYS).find(free))
            .unwrap_or_else(|| {
                let v = set.victim.load(Ordering::Relaxed) % WAYS;
                set.victim.store((v + 1) % WAYS, Ordering::Relaxed);
                v
            });
        set.slots[way].write(key, v0, v1, stamp);
    }

    /// Drops the entries of requesters matching `sid_matches` (a scan: for context-cache
    /// device invalidations); returns how many.
    pub(crate) fn drop_sources(&self, sid_matches: impl Fn(u16) -> bool) -> usize {
        let mut dropped = 0;
        let per = self.sets_per_stripe();
        for stripe in 0..STRIPES {
            let _guard = self.lock_stripe(stripe);
            let sets = self
                .sets
                .get(stripe * per..(stripe + 1) * per)
                .unwrap_or(&[]);
            for slot in sets.iter().flat_map(|s| s.slots.iter()) {
                let key = slot.key();
                if key.k1 & VALID != 0 && sid_matches(key.sid()) {
                    slot.clear();
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Drops every entry (a global generation bump).
    pub(crate) fn flush(&self, clock: &Clock) {
        self.bump(clock, Bump::Global);
    }

    /// Applies one invalidation; returns the number of entries a probe dropped (generation
    /// bumps drop entries without counting them, and report 0).
    pub(crate) fn invalidate(&self, clock: &Clock, inv: &Invalidation) -> usize {
        match *inv {
            Invalidation::IotlbGlobal => self.bump(clock, Bump::Global),
            Invalidation::IotlbDomain { did } => self.bump(clock, Bump::Domain(did)),
            Invalidation::IotlbPage { did, addr, am, .. } => self.page(clock, did, None, addr, am),
            Invalidation::PasidIotlbAll { did, pasid } => self.bump(clock, Bump::Pasid(did, pasid)),
            Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                ..
            } => {
                if am >= PASID_AM_WHOLE {
                    self.bump(clock, Bump::Pasid(did, pasid))
                } else {
                    self.page(clock, did, Some(pasid), addr, am)
                }
            }
            Invalidation::ContextGlobal
            | Invalidation::ContextDomain { .. }
            | Invalidation::ContextDevice { .. }
            | Invalidation::PasidCacheGlobal
            | Invalidation::PasidCacheDomain { .. }
            | Invalidation::PasidCachePasid { .. } => 0,
        }
    }

    fn bump(&self, clock: &Clock, bump: Bump) -> usize {
        self.bump_locked(clock, self.requesters.lock(), bump)
    }

    fn bump_locked(
        &self,
        clock: &Clock,
        mut locked: super::requesters::Locked<'_>,
        bump: Bump,
    ) -> usize {
        clock.bump_begin();
        let everything = match bump {
            Bump::Global => {
                self.gens.bump_global();
                true
            }
            Bump::Domain(did) => {
                let wrapped = self.gens.bump_domain(did);
                locked.forget(did);
                wrapped
            }
            Bump::Pasid(did, pasid) => self.gens.bump_pasid(did, pasid),
        };
        if everything {
            locked.forget_all();
            self.superpages.store(false, Ordering::Relaxed);
        }
        clock.bump_end();
        0
    }

    /// A page-selective invalidation: `pasid` for PASID-based ones (first-stage entries of
    /// (DID, PASID)), `None` for IOTLB ones (second-stage entries of DID; all first-stage).
    fn page(&self, clock: &Clock, did: u16, pasid: Option<u32>, addr: u64, am: u8) -> usize {
        let bump = match pasid {
            Some(p) => Bump::Pasid(did, p),
            None => Bump::Domain(did),
        };
        let Some(range) = Range::pages(addr, am) else {
            return self.bump(clock, bump);
        };
        let locked = self.requesters.lock();
        let (flags, len, reqs) = match locked.tracked(did) {
            Tracked::Nothing => return 0,
            // A domain bump (not a PASID one) makes the domain trackable again.
            Tracked::Unknown => return self.bump_locked(clock, locked, Bump::Domain(did)),
            Tracked::Listed { flags, len, reqs } => (flags, len, reqs),
        };
        if pasid.is_none() && flags & R_FIRST != 0 {
            // IOTLB page invalidation: every first-stage entry of the domain goes.
            return self.bump_locked(clock, locked, bump);
        }
        drop(locked);
        let mut cands = [None; super::requesters::PER_RECORD];
        let mut n = 0;
        for r in reqs.iter().take(len).flatten() {
            if pasid.is_none_or(|p| p == r.pasid) {
                cands[n] = Some(*r);
                n += 1;
            }
        }
        let levels = [(1, true), (2, flags & R_2M != 0), (3, flags & R_1G != 0)];
        let probes: u128 = levels
            .iter()
            .filter(|l| l.1)
            .map(|&(level, _)| {
                let v = range.vpns(level);
                v.end() - v.start() + 1
            })
            .sum::<u128>()
            * n as u128;
        if probes > PROBE_BUDGET as u128 {
            return self.bump(clock, bump);
        }
        let first = pasid.is_some();
        let matches = |v0: u64, v1: u64| {
            v1_did(v1) == did
                && (v0 & V_FIRST != 0) == first
                && pasid.is_none_or(|p| v1_pasid(v1) == p)
        };
        let mut dropped = 0;
        for r in cands.iter().take(n).flatten() {
            let tag = if r.no_pasid { NO_PASID } else { r.pasid };
            for &(level, _) in levels.iter().filter(|l| l.1) {
                let shift = 12 + 9 * (level - 1);
                for vpn in range.vpns(level) {
                    let key = Key::new(r.sid, tag, (vpn << shift) as u64, level);
                    dropped += self.probe(key, matches);
                }
            }
        }
        dropped
    }

    /// Clears the slots holding `key` whose values match.
    fn probe(&self, key: Key, matches: impl Fn(u64, u64) -> bool) -> usize {
        let index = self.set_index(key);
        let Some(set) = self.sets.get(index) else {
            return 0;
        };
        let _guard = self.lock_stripe(index / self.sets_per_stripe());
        let mut dropped = 0;
        for slot in &set.slots {
            if slot.key() == key
                && matches(
                    slot.v0.load(Ordering::Relaxed),
                    slot.v1.load(Ordering::Relaxed),
                )
            {
                slot.clear();
                dropped += 1;
            }
        }
        dropped
    }

    /// Test hook: the generations.
    #[cfg(test)]
    fn gens(&self) -> &Generations {
        &self.gens
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
                    controls: FsControls::new()
                        .with_sre(true)
                        .with_wpe(true)
                        .with_nxe(true)
                        .with_eafe(true),
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

    fn fill(t: &Iotlb, c: &Clock, sid: u16, pasid: u32, e: IotlbEntry) {
        t.insert(c, c.ticket(), SourceId(sid), pasid, e);
    }

    /// A 4 KiB first-stage entry of (did, pasid) at `iova`.
    fn fs(did: u16, pasid: u32, iova: u64, level: u8) -> IotlbEntry {
        let mut e = entry(true);
        e.did = did;
        e.pasid = pasid;
        e.level = level;
        e.iova_base = iova & !(level_size(u32::from(level)) - 1);
        e.gpa_base = 0x1000_0000;
        e
    }

    fn ss(did: u16, iova: u64, level: u8) -> IotlbEntry {
        let mut e = fs(did, NO_PASID, iova, level);
        e.rights = entry(false).rights;
        e
    }

    fn has(t: &Iotlb, sid: u16, pasid: u32, iova: u64) -> bool {
        t.lookup(SourceId(sid), pasid, iova).is_some()
    }

    #[test]
    fn entries_round_trip_through_a_slot() {
        for first in [true, false] {
            let (t, c) = (Iotlb::new(64), Clock::default());
            let e = entry(first);
            fill(&t, &c, 0x1234, 7, e);
            assert_eq!(
                t.lookup(SourceId(0x1234), 7, e.iova_base + 0x1234_5678)
                    .map(|h| h.entry()),
                Some(e)
            );
            assert_eq!(t.lookup(SourceId(0x1234), 8, e.iova_base), None);
            assert_eq!(t.lookup(SourceId(0x1235), 7, e.iova_base), None);
            assert_eq!(t.len(), 1);
            let mut e2 = e;
            e2.did = 1;
            fill(&t, &c, 0x1234, 7, e2);
            assert_eq!(t.len(), 1, "same key replaces");
            t.flush(&c);
            assert_eq!(t.len(), 0);
            assert_eq!(t.lookup(SourceId(0x1234), 7, e.iova_base), None);
        }
    }

    #[test]
    fn a_requesters_neighbouring_pages_sit_in_neighbouring_sets() {
        let t = Iotlb::new(8192);
        let sets = t.sets.len();
        for (sid, pasid, level) in [(0x18, 0, 1), (0x18, 0, 2), (0x19, NO_PASID, 1)] {
            let size = 1u64 << (12 + 9 * (level - 1));
            let base = 0xffff_f000u64 & !(size - 1);
            let at = |i: u64| t.set_index(Key::new(SourceId(sid), pasid, base - i * size, level));
            for i in 0..64 {
                assert_eq!(
                    (at(i + 1) + 1) % sets,
                    at(i),
                    "page {i} of {sid:#x}/{level}"
                );
            }
        }
        // Other requesters (and levels) start elsewhere, so they do not share the same sets.
        let first = |sid: u16, level: u32| t.set_index(Key::new(SourceId(sid), 0, 0, level));
        assert_ne!(first(0x18, 1), first(0x19, 1));
        assert_ne!(first(0x18, 1), first(0x18, 2));
    }

    #[test]
    fn full_sets_replace_round_robin() {
        let (t, c) = (Iotlb::new(1), Clock::default());
        assert_eq!(t.capacity(), STRIPES * WAYS);
        let mut e = entry(false);
        e.level = 1;
        for i in 0..10_000u64 {
            e.iova_base = i << 12;
            fill(&t, &c, 1, 0, e);
        }
        assert_eq!(t.len(), t.capacity());
        e.iova_base = 9_999 << 12;
        assert_eq!(
            t.lookup(SourceId(1), 0, 9_999 << 12).map(|h| h.entry()),
            Some(e)
        );
    }

    #[test]
    fn dead_slots_are_reused_before_live_ones() {
        let (t, c) = (Iotlb::new(1), Clock::default());
        // Fill every slot with domain 1, kill it, then fill domain 2: nothing of 2 is evicted.
        for i in 0..t.capacity() as u64 * 4 {
            fill(&t, &c, 1, 0, ss(1, i << 12, 1));
        }
        t.invalidate(&c, &Invalidation::IotlbDomain { did: 1 });
        assert_eq!(t.len(), 0);
        // As many survive as in an empty table (set conflicts aside, nothing is evicted).
        let fresh = Iotlb::new(1);
        for i in 0..t.capacity() as u64 {
            fill(&t, &c, 2, 0, ss(2, i << 12, 1));
            fill(&fresh, &c, 2, 0, ss(2, i << 12, 1));
        }
        assert_eq!(t.len(), fresh.len());
    }

    #[test]
    fn a_domain_bump_drops_exactly_that_domain() {
        let (t, c) = (Iotlb::new(1024), Clock::default());
        for i in 0..32u64 {
            fill(&t, &c, 1, NO_PASID, ss(1, i << 12, 1));
            fill(&t, &c, 2, NO_PASID, ss(2, i << 12, 1));
            fill(&t, &c, 3, 5, fs(1, 5, i << 12, 1));
        }
        t.invalidate(&c, &Invalidation::IotlbDomain { did: 1 });
        for i in 0..32u64 {
            assert!(!has(&t, 1, NO_PASID, i << 12), "domain 1, page {i}");
            assert!(!has(&t, 3, 5, i << 12), "domain 1 through another sid");
            assert!(has(&t, 2, NO_PASID, i << 12), "domain 2 survives");
        }
        assert_eq!(t.len(), 32);
        // The domain fills again normally afterwards.
        fill(&t, &c, 1, NO_PASID, ss(1, 0, 1));
        assert!(has(&t, 1, NO_PASID, 0));
    }

    #[test]
    fn a_pasid_bump_drops_that_pasid_only() {
        let (t, c) = (Iotlb::new(1024), Clock::default());
        for p in [0u32, 1, 5, 4095] {
            fill(&t, &c, 1, p, fs(1, p, 0x5000, 1));
        }
        fill(&t, &c, 2, 5, fs(2, 5, 0x5000, 1));
        t.invalidate(&c, &Invalidation::PasidIotlbAll { did: 1, pasid: 5 });
        assert!(!has(&t, 1, 5, 0x5000));
        for p in [0u32, 1, 4095] {
            assert!(has(&t, 1, p, 0x5000), "pasid {p}");
        }
        assert!(has(&t, 2, 5, 0x5000), "same PASID, other domain");
    }

    #[test]
    fn a_page_probe_drops_the_page_at_every_level_and_nothing_else() {
        let (t, c) = (Iotlb::new(1024), Clock::default());
        let iova = 0x4020_3000u64;
        // Requests without PASID (RID_PASID 3) from sid 1, with PASID 3 from sid 2.
        for (sid, tag) in [(1, NO_PASID), (2, 3)] {
            for level in 1..=3 {
                fill(&t, &c, sid, tag, fs(9, 3, iova, level));
            }
            fill(&t, &c, sid, tag, fs(9, 3, iova + 0x1000, 1));
            fill(&t, &c, sid, tag, fs(9, 3, 0x8000_0000, 1));
        }
        fill(&t, &c, 1, 4, fs(9, 4, iova, 1));
        let before = t.len();
        let dropped = t.invalidate(
            &c,
            &Invalidation::PasidIotlbPage {
                did: 9,
                pasid: 3,
                addr: iova,
                am: 0,
                ih: false,
            },
        );
        assert_eq!(dropped, 6, "three levels, two requesters");
        assert_eq!(t.len(), before - 6, "a probe, not a bump");
        for (sid, tag) in [(1, NO_PASID), (2, 3)] {
            for level in 1..=3u8 {
                let key = Key::new(SourceId(sid), tag, iova, u32::from(level));
                assert_eq!(t.get(key), None, "sid {sid} level {level}");
            }
            assert!(has(&t, sid, tag, iova + 0x1000), "next page");
            assert!(has(&t, sid, tag, 0x8000_0000), "far page");
        }
        assert!(has(&t, 1, 4, iova), "other PASID");
    }

    #[test]
    fn an_iotlb_page_probe_keeps_other_second_stage_pages() {
        let (t, c) = (Iotlb::new(1024), Clock::default());
        for i in 0..4u64 {
            fill(&t, &c, 1, NO_PASID, ss(7, i << 12, 1));
        }
        fill(&t, &c, 1, NO_PASID, ss(7, 0x4000_0000, 3));
        let inv = Invalidation::IotlbPage {
            did: 7,
            addr: 0x4000_1000,
            am: 0,
            ih: false,
        };
        assert_eq!(t.invalidate(&c, &inv), 1);
        assert!(!has(&t, 1, NO_PASID, 0x4000_0000), "1 GiB page");
        let inv = Invalidation::IotlbPage {
            did: 7,
            addr: 0x1000,
            am: 1,
            ih: false,
        };
        assert_eq!(t.invalidate(&c, &inv), 2);
        assert!(has(&t, 1, NO_PASID, 0x2000) && has(&t, 1, NO_PASID, 0x3000));
        assert!(!has(&t, 1, NO_PASID, 0) && !has(&t, 1, NO_PASID, 0x1000));
        // With a first-stage entry in the domain, a page invalidation drops the domain.
        fill(&t, &c, 2, 0, fs(7, 0, 0x9000, 1));
        let inv = Invalidation::IotlbPage {
            did: 7,
            addr: 0x9000,
            am: 0,
            ih: false,
        };
        t.invalidate(&c, &inv);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn too_many_requesters_fall_back_to_a_bump_that_still_invalidates() {
        let (t, c) = (Iotlb::new(4096), Clock::default());
        let sids = super::super::requesters::PER_RECORD as u16 + 3;
        for sid in 0..sids {
            fill(&t, &c, sid, NO_PASID, fs(4, 0, 0x7000, 1));
            fill(&t, &c, sid, NO_PASID, fs(4, 0, 0x8000, 1));
        }
        fill(&t, &c, 100, NO_PASID, fs(5, 0, 0x7000, 1));
        let inv = Invalidation::PasidIotlbPage {
            did: 4,
            pasid: 0,
            addr: 0x7000,
            am: 0,
            ih: false,
        };
        t.invalidate(&c, &inv);
        for sid in 0..sids {
            assert!(!has(&t, sid, NO_PASID, 0x7000), "sid {sid}");
        }
        assert!(has(&t, 100, NO_PASID, 0x7000), "other domain");
        // After the bump the domain is tracked again: the next page flush is a probe.
        for sid in 0..2 {
            fill(&t, &c, sid, NO_PASID, fs(4, 0, 0x7000, 1));
            fill(&t, &c, sid, NO_PASID, fs(4, 0, 0x8000, 1));
        }
        assert_eq!(t.invalidate(&c, &inv), 2);
        assert!(has(&t, 0, NO_PASID, 0x8000) && has(&t, 1, NO_PASID, 0x8000));
    }

    #[test]
    fn a_domain_evicted_from_its_record_is_still_invalidated() {
        let (t, c) = (Iotlb::new(4096), Clock::default());
        let other = 4 + super::super::requesters::RECORDS as u16;
        fill(&t, &c, 1, NO_PASID, fs(4, 0, 0x7000, 1));
        // Same record place: domain 4 loses its list.
        fill(&t, &c, 2, NO_PASID, fs(other, 0, 0x7000, 1));
        t.invalidate(
            &c,
            &Invalidation::PasidIotlbPage {
                did: 4,
                pasid: 0,
                addr: 0x7000,
                am: 0,
                ih: false,
            },
        );
        assert!(!has(&t, 1, NO_PASID, 0x7000));
        assert!(has(&t, 2, NO_PASID, 0x7000));
    }

    #[test]
    fn wide_page_ranges_bump_instead_of_probing() {
        let (t, c) = (Iotlb::new(1024), Clock::default());
        fill(&t, &c, 1, 2, fs(3, 2, 0x10_0000, 1));
        fill(&t, &c, 1, 2, fs(3, 2, 0x7fff_0000, 1));
        for am in [9u8, 52, 63] {
            fill(&t, &c, 1, 2, fs(3, 2, 0, 1));
            let inv = Invalidation::PasidIotlbPage {
                did: 3,
                pasid: 2,
                addr: 0,
                am,
                ih: false,
            };
            t.invalidate(&c, &inv);
            assert_eq!(t.len(), 0, "am {am}: the whole PASID goes");
        }
    }

    #[test]
    fn a_wrapped_generation_never_revives_an_entry() {
        let (t, c) = (Iotlb::new(1024), Clock::default());
        t.gens().set_domain(6, u32::MAX - 1);
        fill(&t, &c, 1, NO_PASID, ss(6, 0x1000, 1));
        fill(&t, &c, 2, NO_PASID, ss(8, 0x1000, 1));
        t.invalidate(&c, &Invalidation::IotlbDomain { did: 6 });
        assert!(!has(&t, 1, NO_PASID, 0x1000));
        // Filled at u32::MAX, then the generation wraps to 0.
        fill(&t, &c, 1, NO_PASID, ss(6, 0x1000, 1));
        assert!(has(&t, 1, NO_PASID, 0x1000));
        t.invalidate(&c, &Invalidation::IotlbDomain { did: 6 });
        assert!(!has(&t, 1, NO_PASID, 0x1000));
        assert!(!has(&t, 2, NO_PASID, 0x1000), "a wrap drops everything");
        // The domain generation coming back to u32::MAX does not revive the old entry.
        t.gens().set_domain(6, u32::MAX);
        assert!(!has(&t, 1, NO_PASID, 0x1000));
        assert_eq!(t.len(), 0);
        fill(&t, &c, 1, NO_PASID, ss(6, 0x1000, 1));
        assert!(has(&t, 1, NO_PASID, 0x1000));
        // Same for a (DID, PASID) bucket.
        t.gens().set_pasid(6, 9, u32::MAX);
        fill(&t, &c, 1, 9, fs(6, 9, 0x2000, 1));
        t.invalidate(&c, &Invalidation::PasidIotlbAll { did: 6, pasid: 9 });
        assert!(!has(&t, 1, 9, 0x2000));
        t.gens().set_pasid(6, 9, u32::MAX);
        assert!(!has(&t, 1, 9, 0x2000));
    }

    #[test]
    fn a_fill_that_read_tables_before_an_invalidation_is_not_cached() {
        let invs = [
            Invalidation::IotlbGlobal,
            Invalidation::IotlbDomain { did: 1 },
            Invalidation::PasidIotlbAll { did: 1, pasid: 0 },
            Invalidation::PasidIotlbPage {
                did: 1,
                pasid: 0,
                addr: 0x3000,
                am: 0,
                ih: false,
            },
            // Another domain's invalidation: the fill is skipped anyway (always safe).
            Invalidation::IotlbDomain { did: 2 },
        ];
        for inv in invs {
            let (t, c) = (Iotlb::new(1024), Clock::default());
            fill(&t, &c, 1, NO_PASID, fs(1, 0, 0x3000, 1));
            let ticket = c.ticket();
            c.removal();
            t.invalidate(&c, &inv);
            t.insert(&c, ticket, SourceId(1), NO_PASID, fs(1, 0, 0x4000, 1));
            assert!(!has(&t, 1, NO_PASID, 0x4000), "{inv:?}");
        }
    }
}
