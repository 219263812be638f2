//! Generations and the invalidation clock: how a cache entry learns, without a scan, that an
//! invalidation covered it, and how a fill racing an invalidation is kept out of the caches.
//!
//! ## Generations
//!
//! [`Generations`] holds a global generation `G` (u64), one generation per domain id `D[did]`
//! (65,536 × u32 = 256 KiB) and one per (DID, PASID) bucket `P[bucket(did, pasid)]`
//! (4,096 × u32). An IOTLB entry is stamped at fill time with `stamp = G + D[did] + P[bucket]`
//! of its own DID and PASID, and is valid only while that sum is unchanged:
//!
//! | invalidation                         | bump        | entries it kills              |
//! |--------------------------------------|-------------|-------------------------------|
//! | global                               | `G += 1`    | all                           |
//! | domain (DID)                         | `D[did] += 1` | all of the DID              |
//! | PASID-selective (DID, PASID)         | `P[b] += 1` | all of (DID, PASID), and of other (DID', PASID') sharing the bucket (over-flush, which the spec allows) |
//!
//! Every component only grows, and every bump grows the sum of every entry it covers, so an
//! equal sum means "no covering invalidation since the fill". The bucket of `(did, pasid)` is
//! `(mix(did) + pasid) mod 4096`: for one domain, any 4,096 consecutive PASIDs have distinct
//! buckets, so PASIDs of one domain never over-flush each other in practice.
//!
//! **Wrap.** `D` and `P` are u32. A bump that would wrap one of them from `u32::MAX` to 0 first
//! adds 2^32 to `G` (invalidating every entry of every domain), then stores 0: the sum of the
//! wrapped component's entries still grows by exactly one, every other sum by 2^32, so no old
//! stamp can ever match again. `G` is a u64 that grows by at most 2^32 per 2^32 bumps: it cannot
//! wrap within any machine's lifetime (2^63 invalidations at one per nanosecond take 292 years).
//!
//! ## The clock: fills racing invalidations
//!
//! A translation reads the tables and then fills a cache. If an invalidation runs in between,
//! the fill may hold what the invalidation was meant to remove. [`Clock`] counts
//! invalidations: a removal (probe, scan, retain) adds 2 before it removes anything, a
//! generation bump adds 1 before and 1 after (bumps are serialised by a lock, so the clock is
//! odd exactly while a bump is in progress). A fill takes a [`Ticket`] (the clock, even) before
//! reading any table and inserts only if, under the cache's lock, the clock still shows the
//! ticket:
//!
//! - a removal that takes the same lock before the fill sees the fill's entry is not there,
//!   and the fill, locking after it, sees the clock moved and does not insert; locking after
//!   the fill, the removal finds and removes the entry;
//! - a bump whose new generation the fill read has moved the clock before storing it (Release
//!   / Acquire), so the fill sees the clock moved; a bump the fill did not see leaves the fill
//!   with an old stamp, dead as soon as the bump lands. A fill never stamps half of a bump in
//!   progress: it took no ticket (odd clock) or the clock moved.
//!
//! So an entry in a cache always carries a stamp that was the true sum at its insertion, with
//! no invalidation in flight. A lookup reads `D` and `P` before `G` (a wrap stores `G` first),
//! so even a lookup racing a wrap computes either a true sum or a sum larger than any stamp.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Number of domain ids (DID is 16 bits).
const DIDS: usize = 1 << 16;
/// Number of (DID, PASID) buckets.
pub(crate) const PASID_BUCKETS: usize = 4096;

/// The fill's view of the clock, taken before any table is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// Counts invalidations (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Clock {
    now: AtomicU64,
}

impl Clock {
    /// A ticket for a fill starting now, or `None` while a generation bump is in progress
    /// (the translation is then served but not cached).
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        let now = self.now.load(Ordering::Acquire);
        (now & 1 == 0).then_some(Ticket(now))
    }

    /// Whether no invalidation started since `ticket` was taken. Call under the lock the
    /// invalidations of the cache being filled also take.
    pub(crate) fn still(&self, ticket: Option<Ticket>) -> bool {
        ticket.is_some_and(|t| self.now.load(Ordering::Acquire) == t.0)
    }

    /// Marks the start of an invalidation that removes entries (before it removes any).
    pub(crate) fn removal(&self) {
        self.now.fetch_add(2, Ordering::AcqRel);
    }

    /// Marks the start of a generation bump; the caller holds the bump lock.
    pub(crate) fn bump_begin(&self) {
        self.now.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks the end of a generation bump.
    pub(crate) fn bump_end(&self) {
        self.now.fetch_add(1, Ordering::AcqRel);
    }
}

/// The bucket of (DID, PASID): distinct for up to 4,096 consecutive PASIDs of one domain.
pub(crate) fn pasid_bucket(did: u16, pasid: u32) -> usize {
    let mix = u32::from(did).wrapping_mul(0x9e37_79b9) >> 12;
    (mix.wrapping_add(pasid) as usize) & (PASID_BUCKETS - 1)
}

/// The generation counters (see the module docs).
pub(crate) struct Generations {
    global: AtomicU64,
    domains: Box<[AtomicU32; DIDS]>,
    pasids: Box<[AtomicU32; PASID_BUCKETS]>,
}

fn zeroed<const N: usize>() -> Box<[AtomicU32; N]> {
    let v: Box<[AtomicU32]> = (0..N).map(|_| AtomicU32::new(0)).collect();
    // The length is N by construction.
    v.try_into().unwrap_or_else(|_| unreachable!())
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            global: AtomicU64::new(0),
            domains: zeroed(),
            pasids: zeroed(),
        }
    }

    /// The current stamp of entries of (did, pasid). `D` and `P` are read before `G`.
    #[inline]
    pub(crate) fn stamp(&self, did: u16, pasid: u32) -> u64 {
        let d = self.domains[usize::from(did)].load(Ordering::Acquire);
        let p = self.pasids[pasid_bucket(did, pasid)].load(Ordering::Acquire);
        let g = self.global.load(Ordering::Acquire);
        g.wrapping_add(u64::from(d)).wrapping_add(u64::from(p))
    }

    /// Invalidates every entry. Caller holds the bump lock.
    pub(crate) fn bump_global(&self) {
        let g = self.global.load(Ordering::Relaxed);
        self.global.store(g.wrapping_add(1), Ordering::Release);
    }

    /// Invalidates every entry of `did`; returns whether every entry was invalidated (wrap).
    /// Caller holds the bump lock.
    pub(crate) fn bump_domain(&self, did: u16) -> bool {
        self.bump_small(&self.domains[usize::from(did)])
    }

    /// Invalidates every entry of (did, pasid) and of the (DID, PASID) pairs sharing its
    /// bucket; returns whether every entry was invalidated (wrap). Caller holds the bump lock.
    pub(crate) fn bump_pasid(&self, did: u16, pasid: u32) -> bool {
        self.bump_small(&self.pasids[pasid_bucket(did, pasid)])
    }

    fn bump_small(&self, cell: &AtomicU32) -> bool {
        let v = cell.load(Ordering::Relaxed);
        if v == u32::MAX {
            // G first: a reader seeing the new 0 then sees the new G (it reads G last).
            let g = self.global.load(Ordering::Relaxed);
            self.global
                .store(g.wrapping_add(1 << 32), Ordering::Release);
            cell.store(0, Ordering::Release);
            true
        } else {
            cell.store(v + 1, Ordering::Release);
            false
        }
    }

    /// Test hook: puts a domain generation just below the wrap.
    #[cfg(test)]
    pub(crate) fn set_domain(&self, did: u16, v: u32) {
        self.domains[usize::from(did)].store(v, Ordering::Release);
    }

    /// Test hook: puts a (DID, PASID) bucket generation just below the wrap.
    #[cfg(test)]
    pub(crate) fn set_pasid(&self, did: u16, pasid: u32, v: u32) {
        self.pasids[pasid_bucket(did, pasid)].store(v, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_of_one_domain_are_distinct_for_consecutive_pasids() {
        for did in [0u16, 1, 2, 0xffff] {
            let mut seen = std::collections::HashSet::new();
            for pasid in 0..PASID_BUCKETS as u32 {
                assert!(
                    seen.insert(pasid_bucket(did, pasid)),
                    "did {did} pasid {pasid}"
                );
            }
        }
    }

    #[test]
    fn every_bump_changes_the_stamps_it_covers_and_only_those() {
        let g = Generations::new();
        let (a, b) = (g.stamp(1, 0), g.stamp(2, 0));
        g.bump_domain(1);
        assert_ne!(g.stamp(1, 0), a);
        assert_eq!(g.stamp(2, 0), b);
        let (a, b, c) = (g.stamp(1, 0), g.stamp(1, 5), g.stamp(2, 0));
        g.bump_pasid(1, 5);
        assert_eq!((g.stamp(1, 0), g.stamp(2, 0)), (a, c));
        assert_ne!(g.stamp(1, 5), b);
        let s = [g.stamp(1, 0), g.stamp(2, 0), g.stamp(1, 5)];
        g.bump_global();
        for (i, did, pasid) in [(0, 1, 0), (1, 2, 0), (2, 1, 5)] {
            assert_ne!(g.stamp(did, pasid), s[i]);
        }
    }

    #[test]
    fn a_wrap_never_brings_an_old_stamp_back() {
        for pasid_side in [false, true] {
            let g = Generations::new();
            let bump = |g: &Generations| {
                if pasid_side {
                    g.bump_pasid(7, 3)
                } else {
                    g.bump_domain(7)
                }
            };
            // Stamps of the old cycle at 0, 1, 2 and at the top.
            let early: Vec<u64> = (0..3)
                .map(|_| {
                    let s = g.stamp(7, 3);
                    bump(&g);
                    s
                })
                .collect();
            if pasid_side {
                g.set_pasid(7, 3, u32::MAX - 1);
            } else {
                g.set_domain(7, u32::MAX - 1);
            }
            let other = g.stamp(8, 0);
            let top = g.stamp(7, 3);
            assert!(!bump(&g));
            let max = g.stamp(7, 3);
            assert!(bump(&g), "MAX -> 0 wraps");
            assert_ne!(g.stamp(8, 0), other, "a wrap invalidates everything");
            // The next cycle's stamps match nothing of the previous one.
            for _ in 0..4 {
                let s = g.stamp(7, 3);
                assert!(s > max && !early.contains(&s) && s != top);
                bump(&g);
            }
        }
    }

    #[test]
    fn the_clock_is_odd_during_a_bump_and_moves_on_every_invalidation() {
        let c = Clock::default();
        let t = c.ticket();
        assert!(c.still(t));
        c.removal();
        assert!(!c.still(t));
        let t = c.ticket();
        c.bump_begin();
        assert_eq!(c.ticket(), None);
        assert!(!c.still(None));
        c.bump_end();
        assert!(!c.still(t));
        assert!(c.ticket().is_some());
    }
}
