//! The unit's invalidation generation, and what each bump made stale: how a cache outside the
//! unit (a device's remembered pages, `iommu::DeviceIommu`) follows the guest's invalidations
//! precisely instead of dropping everything at every one.
//!
//! ```text
//!  vCPU: invalidation / flush                 device cache at generation f
//!     └─► GenerationLog::apply_then_publish      └─► reads the generation g, then (if g > f)
//!           1. apply: the unit's caches drop          Generations::stale_between(f, g): every
//!              what the invalidation covers           scope of generations f+1..=g, or
//!           2. under the log's lock: push             "unknown" (the log no longer reaches
//!              (g + 1, scope)..., then publish        back to f) ─► drop overlapping pages,
//!              generation g + 1                       or all; a miss asks the unit and is
//!     └─► the wait descriptor's status write          remembered under the generation read
//!                                                     before it asked
//! ```
//!
//! **The order is the protocol.** A device that reads generation `g + 1` asks the unit only
//! after the unit's caches dropped what bump `g + 1` covers, so it can only remember a fresh
//! translation under `g + 1`. A device that read `g` may have been answered from the old
//! caches, but it remembers that answer under `g`, and its next lookup (which reads `g + 1`,
//! published before the invalidation's wait completes) drops it. Publishing first would let a
//! device read `g + 1`, be answered from the not yet invalidated caches and remember the stale
//! translation under `g + 1`, where nothing would ever drop it: DMA into memory the guest has
//! freed. State changes that are not cache drops (root pointer, TE, reset) are published with
//! [`GenerationLog::publish`] after the new state is stored, for the same reason. The loom
//! model in this module's tests checks the order against every interleaving, and checks that
//! the opposite order fails.
//!
//! A scope is [`Stale::Iova`] only for a page-selective PASID-based IOTLB invalidation (the
//! one Linux sends per unmap in strict mode), whose range is exact whatever domain or PASID it
//! names, so dropping every remembered page in that IOVA range is a superset of what the spec
//! requires. Everything else — global, domain and PASID-selective flushes, context and PASID
//! cache invalidations (they may change which tables translate), a legacy IOTLB page
//! invalidation (for first-stage entries it drops the whole domain, §6.5.2.2), root pointer,
//! TE or reset — is [`Stale::Everything`].
//!
//! The log keeps the last [`LOG_ENTRIES`] scopes; a bump with more than
//! [`MAX_SCOPES_PER_BUMP`] scopes records one `Everything` instead. Entries are pushed before
//! the generation they belong to is published, so a reader that sees generation `g` finds
//! every scope up to `g` in the log (or learns the log no longer covers its range).

use crate::sync::{AtomicU64, Mutex};
use std::sync::atomic::Ordering;

use crate::invalidation::Invalidation;

/// Scopes the log remembers.
pub const LOG_ENTRIES: usize = 64;
/// More scopes than this in one bump are recorded as one [`Stale::Everything`].
pub const MAX_SCOPES_PER_BUMP: usize = 8;

/// What one generation bump may have made stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Any translation.
    Everything,
    /// Translations of input addresses in `[start, end)` (any domain, any PASID).
    Iova {
        /// First byte.
        start: u64,
        /// One past the last byte (saturated at `u64::MAX`).
        end: u64,
    },
}

impl Stale {
    /// What `inv` makes stale for a cache that does not know domains or PASIDs.
    pub fn of(inv: &Invalidation) -> Stale {
        match *inv {
            // 2^am pages from `addr` aligned down; AM 52 and above is the whole space.
            Invalidation::PasidIotlbPage { addr, am, .. } if am < 52 => {
                let length = 1u64 << (12 + u32::from(am));
                let start = addr & !(length - 1);
                Stale::Iova {
                    start,
                    end: start.saturating_add(length),
                }
            }
            _ => Stale::Everything,
        }
    }

    /// Whether a page `[start, end)` may be stale.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        match *self {
            Stale::Everything => true,
            Stale::Iova { start: s, end: e } => start < e && s < end,
        }
    }
}

/// The generation counter and the scopes of its last bumps.
#[derive(Debug, Default)]
pub struct GenerationLog {
    generation: AtomicU64,
    entries: Mutex<Ring>,
}

/// The last [`LOG_ENTRIES`] (generation, scope) pairs, oldest first, in a fixed array: a push
/// over a full ring replaces the oldest.
#[derive(Debug)]
struct Ring {
    slots: [(u64, Stale); LOG_ENTRIES],
    /// Where the next push goes.
    next: usize,
    len: usize,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            slots: [(0, Stale::Everything); LOG_ENTRIES],
            next: 0,
            len: 0,
        }
    }
}

impl Ring {
    fn push(&mut self, entry: (u64, Stale)) {
        self.slots[self.next] = entry;
        self.next = (self.next + 1) % LOG_ENTRIES;
        self.len = (self.len + 1).min(LOG_ENTRIES);
    }

    /// The `i`-th newest entry (0: the newest), `i < len`.
    fn newest(&self, i: usize) -> (u64, Stale) {
        self.slots[(self.next + LOG_ENTRIES - 1 - i) % LOG_ENTRIES]
    }
}

impl GenerationLog {
    /// The current generation.
    pub fn current(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Applies an invalidation or flush with `apply` (the unit's caches drop what it covers),
    /// then records `scopes` (none means [`Stale::Everything`]) under the next generation and
    /// publishes it: the one order under which no device remembers a stale translation under
    /// a generation that does not know it is stale (see the module docs).
    pub fn apply_then_publish<R>(
        &self,
        scopes: impl Iterator<Item = Stale> + Clone,
        apply: impl FnOnce() -> R,
    ) -> R {
        let result = apply();
        self.publish(scopes);
        result
    }

    /// Records `scopes` (none means [`Stale::Everything`]) under the next generation and
    /// publishes it. The change it announces must already be in force.
    pub fn publish(&self, scopes: impl Iterator<Item = Stale> + Clone) {
        let count = scopes.clone().take(MAX_SCOPES_PER_BUMP + 1).count();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.generation.load(Ordering::SeqCst) + 1;
        if count == 0 || count > MAX_SCOPES_PER_BUMP {
            entries.push((next, Stale::Everything));
        } else {
            scopes.for_each(|s| entries.push((next, s)));
        }
        self.generation.store(next, Ordering::SeqCst);
    }

    /// Calls `stale` with every scope of generations `from + 1 ..= to`; `false` when the log
    /// no longer covers that range (the caller must treat everything as stale).
    pub fn stale_between(&self, from: u64, to: u64, stale: &mut dyn FnMut(Stale)) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Every scope of generation from + 1 is still there only if an older entry is too.
        if entries.len == 0 || entries.newest(entries.len - 1).0 > from {
            return from >= to;
        }
        // Only the newest entries are newer than `from`: count them from the newest, so a
        // reader one bump behind looks at that bump's scopes, not the whole log; then hand them
        // out oldest first.
        let newer = (0..entries.len)
            .take_while(|&i| entries.newest(i).0 > from)
            .count();
        for i in (0..newer).rev() {
            let (generation, scope) = entries.newest(i);
            if generation <= to {
                stale(scope);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(log: &GenerationLog, from: u64, to: u64) -> Option<Vec<Stale>> {
        let mut out = Vec::new();
        log.stale_between(from, to, &mut |s| out.push(s))
            .then_some(out)
    }

    fn page(addr: u64, am: u8) -> Invalidation {
        Invalidation::PasidIotlbPage {
            did: 1,
            pasid: 0,
            addr,
            am,
            ih: true,
        }
    }

    fn range(start: u64, end: u64) -> Stale {
        Stale::Iova { start, end }
    }

    #[test]
    fn page_selective_pasid_iotlb_is_a_range_everything_else_is_everything() {
        assert_eq!(Stale::of(&page(0x5000, 0)), range(0x5000, 0x6000));
        assert_eq!(
            Stale::of(&page(0x7000, 2)),
            range(0x4000, 0x8000),
            "aligned down to the 2^am-page range"
        );
        assert_eq!(Stale::of(&page(!0xfff, 51)), range(1 << 63, u64::MAX));
        assert_eq!(Stale::of(&page(0x1000, 52)), Stale::Everything);
        assert_eq!(Stale::of(&page(0x1000, 63)), Stale::Everything);
        assert_eq!(
            Stale::of(&Invalidation::PasidIotlbAll { did: 1, pasid: 0 }),
            Stale::Everything
        );
        assert_eq!(
            Stale::of(&Invalidation::IotlbPage {
                did: 1,
                addr: 0x5000,
                am: 0,
                ih: false
            }),
            Stale::Everything,
            "a legacy page invalidation drops every first-stage entry of the domain"
        );
        assert!(range(0x5000, 0x6000).covers(0x5fff, 0x6000));
        assert!(!range(0x5000, 0x6000).covers(0x6000, 0x7000));
        assert!(!range(0x5000, 0x6000).covers(0x4000, 0x5000));
    }

    #[test]
    fn a_reader_gets_every_scope_of_its_range_and_only_those() {
        let log = GenerationLog::default();
        assert_eq!(collect(&log, 0, 0), Some(vec![]), "nothing happened");
        log.publish([range(0, 0x1000)].into_iter());
        log.publish([range(0x1000, 0x2000), range(0x3000, 0x4000)].into_iter());
        log.publish(std::iter::empty());
        assert_eq!(log.current(), 3);
        assert_eq!(
            collect(&log, 0, 2),
            None,
            "generation 1 is the oldest entry: some of its scopes may be gone"
        );
        assert_eq!(
            collect(&log, 1, 2),
            Some(vec![range(0x1000, 0x2000), range(0x3000, 0x4000)])
        );
        log.publish([range(0x8000, 0x9000)].into_iter());
        assert_eq!(
            collect(&log, 1, 4),
            Some(vec![
                range(0x1000, 0x2000),
                range(0x3000, 0x4000),
                Stale::Everything,
                range(0x8000, 0x9000)
            ])
        );
        assert_eq!(collect(&log, 3, 4), Some(vec![range(0x8000, 0x9000)]));
        assert_eq!(collect(&log, 4, 4), Some(vec![]));
    }

    #[test]
    fn the_ring_answers_like_a_plain_list_of_the_last_entries() {
        let log = GenerationLog::default();
        let mut history: Vec<(u64, Stale)> = Vec::new();
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut rand = |n: u64| next() % n;
        for _ in 0..500 {
            let n = rand(11);
            let scopes: Vec<Stale> = (0..n).map(|i| range(i << 12, (i + 1) << 12)).collect();
            log.publish(scopes.clone().into_iter());
            let g = log.current();
            if n == 0 || n as usize > MAX_SCOPES_PER_BUMP {
                history.push((g, Stale::Everything));
            } else {
                history.extend(scopes.into_iter().map(|s| (g, s)));
            }
            let kept = &history[history.len().saturating_sub(LOG_ENTRIES)..];
            for _ in 0..4 {
                let from = rand(g + 1);
                let to = from + rand(g - from + 1);
                let expected = if kept.first().is_some_and(|&(oldest, _)| oldest <= from) {
                    Some(
                        kept.iter()
                            .filter(|&&(generation, _)| from < generation && generation <= to)
                            .map(|&(_, s)| s)
                            .collect(),
                    )
                } else {
                    (from >= to).then(Vec::new)
                };
                assert_eq!(collect(&log, from, to), expected, "from {from} to {to}");
            }
        }
    }

    #[test]
    fn a_reader_too_far_behind_learns_it_and_big_bumps_become_everything() {
        let log = GenerationLog::default();
        for i in 0..(LOG_ENTRIES as u64 + 10) {
            log.publish([range(i << 12, (i + 1) << 12)].into_iter());
        }
        assert_eq!(collect(&log, 0, log.current()), None);
        assert_eq!(collect(&log, 5, log.current()), None);
        let recent = log.current() - 3;
        assert_eq!(
            collect(&log, recent, log.current()).map(|v| v.len()),
            Some(3)
        );
        let many = (0..MAX_SCOPES_PER_BUMP as u64 + 1).map(|i| range(i << 12, (i + 1) << 12));
        let before = log.current();
        log.publish(many);
        assert_eq!(
            collect(&log, before, log.current()),
            Some(vec![Stale::Everything])
        );
    }
}
