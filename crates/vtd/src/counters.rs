//! Counters of what the vIOMMU did, readable at any time without locks, declared with
//! `counter_set!` and reported through `counter_set::CounterSource` (as [`crate::Vtd`] does).
//!
//! Most counters are plain relaxed atomics: they count rare events (faults, queue
//! descriptors). The four counters bumped on every DMA translation — `translations`,
//! `iotlb_hits`, `iotlb_misses`, `walks` — are [`HotCounter`]s instead: one cache line per
//! thread, so device threads translating in parallel never share a line and a bump is a plain
//! load and store (no locked read-modify-write).
//!
//! ```text
//!  thread A ─ slot 0 ─► [line 0: count]   snapshot() = Σ lines + shared
//!  thread B ─ slot 1 ─► [line 1: count]
//!  thread beyond SLOTS, or exiting ─────► [shared: fetch_add]
//! ```
//!
//! A thread claims a slot (an index below [`SLOTS`]) on its first bump and gives it back when
//! it exits; at most one live thread owns a slot, and the hand-over goes through a mutex, so
//! the new owner's load sees the old owner's last store and no count is lost. Threads beyond
//! `SLOTS` live at once, and bumps from thread-exit destructors, use the shared line with a
//! `fetch_add`. A snapshot sums the lines with relaxed loads: exact once the counting threads
//! are joined, a momentary lower bound while they run (as with one atomic).

use std::cell::Cell;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use counter_set::{Count, counter_set};

/// Threads that can own a line of every [`HotCounter`] at once.
pub const SLOTS: usize = 16;

/// Slots handed back by exited threads, and the next never-used slot.
static FREE_SLOTS: Mutex<(Vec<usize>, usize)> = Mutex::new((Vec::new(), 0));

/// A thread's claim on one slot; returned on thread exit.
struct SlotClaim(Cell<Option<usize>>);

impl SlotClaim {
    fn claim() -> Self {
        let mut free = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let slot = free.0.pop().or_else(|| {
            (free.1 < SLOTS).then(|| {
                free.1 += 1;
                free.1 - 1
            })
        });
        Self(Cell::new(slot))
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let mut free = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            free.0.push(slot);
        }
    }
}

thread_local! {
    static SLOT: SlotClaim = SlotClaim::claim();
}

/// This thread's slot, if it owns one.
fn thread_slot() -> Option<usize> {
    SLOT.try_with(|s| s.0.get()).ok().flatten()
}

/// One counter on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// A counter bumped from many threads at a high rate: one cache line per owning thread plus a
/// shared line (see the module docs).
#[derive(Default)]
pub struct HotCounter {
    lines: [Line; SLOTS],
    shared: Line,
}

impl HotCounter {
    /// Adds one.
    #[inline]
    pub fn bump(&self) {
        match thread_slot().and_then(|s| self.lines.get(s)) {
            // Only this thread writes this line while it owns the slot: load + store is exact.
            Some(Line(c)) => c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed),
            None => {
                self.shared.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The sum over all lines.
    pub fn get(&self) -> u64 {
        self.lines
            .iter()
            .chain(std::iter::once(&self.shared))
            .fold(0u64, |sum, l| sum.wrapping_add(l.0.load(Ordering::Relaxed)))
    }
}

impl fmt::Debug for HotCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Count for HotCounter {
    fn get(&self) -> u64 {
        HotCounter::get(self)
    }
}

counter_set! {
    /// Live counters: [`HotCounter`]s on the translation path, relaxed atomics elsewhere.
    pub struct Counters;
    /// A point-in-time copy of [`Counters`].
    pub struct CountersSnapshot;
    {
        translations: HotCounter = "Translation requests served (hits, walks and pass-through).",
        iotlb_hits: HotCounter = "Translations answered from the IOTLB.",
        iotlb_misses: HotCounter = "Translations that missed the IOTLB.",
        walks: HotCounter = "Page-table walks performed.",
        context_cache_hits: AtomicU64 = "Context-cache hits.",
        context_cache_misses: AtomicU64 = "Context-cache misses.",
        pasid_cache_hits: AtomicU64 = "PASID-cache hits.",
        pasid_cache_misses: AtomicU64 = "PASID-cache misses.",
        leaf_table_hits: AtomicU64 = "First-stage walks that started from a cached leaf table.",
        leaf_table_misses: AtomicU64 = "First-stage walks that read the whole chain of tables.",
        iotlb_prefetches: AtomicU64 = "IOTLB entries filled for the other present leaves in a walked leaf's 64-byte line.",
        faults: AtomicU64 = "Translation faults (qualified or not).",
        faults_recorded: AtomicU64 = "Faults written to a fault-recording register.",
        fault_events: AtomicU64 = "Fault-event interrupts sent.",
        qi_submissions: AtomicU64 = "IQT writes that processed at least one descriptor.",
        qi_context_cache: AtomicU64 = "Context-cache invalidation descriptors.",
        qi_iotlb: AtomicU64 = "IOTLB invalidation descriptors.",
        qi_device_tlb: AtomicU64 = "Device-TLB invalidation descriptors.",
        qi_iec: AtomicU64 = "Interrupt-entry-cache invalidation descriptors.",
        qi_wait: AtomicU64 = "Invalidation wait descriptors.",
        qi_pasid_iotlb: AtomicU64 = "PASID-based IOTLB invalidation descriptors.",
        qi_pasid_cache: AtomicU64 = "PASID-cache invalidation descriptors.",
        qi_pasid_device_tlb: AtomicU64 = "PASID-based device-TLB invalidation descriptors.",
        qi_page_group_response: AtomicU64 = "Page group response descriptors.",
        qi_errors: AtomicU64 = "Invalidation queue errors (IQE).",
        register_invalidations: AtomicU64 = "Register-based (CCMD / IOTLB) invalidations.",
        interrupts_remapped: AtomicU64 = "Interrupt requests translated through an IRTE.",
        interrupts_blocked: AtomicU64 = "Interrupt requests blocked by interrupt remapping.",
        interrupt_faults: AtomicU64 = "Interrupt-remapping faults (recorded or not: FPD).",
        iec_global: AtomicU64 = "Global interrupt-entry-cache invalidations.",
        iec_selective: AtomicU64 = "Index-selective interrupt-entry-cache invalidations.",
    }
}

impl Counters {
    /// Adds one to a counter.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter_set::bump(counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_set::CounterSource;
    use std::sync::Arc;

    #[test]
    fn snapshot_keeps_names_and_order() {
        let c = Counters::default();
        c.translations.bump();
        c.translations.bump();
        Counters::bump(&c.faults);
        let s = c.snapshot();
        assert_eq!((s.translations, s.faults, s.walks), (2, 1, 0));
        let names: Vec<_> = s.pairs().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            &names[..5],
            &[
                "translations",
                "iotlb_hits",
                "iotlb_misses",
                "walks",
                "context_cache_hits"
            ]
        );
    }

    #[test]
    fn hot_counters_lose_nothing_across_more_threads_than_slots() {
        let c = Arc::new(Counters::default());
        // Three waves of threads, more than SLOTS each: slots are claimed, shared, returned and
        // claimed again by the next wave.
        for _ in 0..3 {
            std::thread::scope(|s| {
                for _ in 0..SLOTS + 4 {
                    let c = &c;
                    s.spawn(move || {
                        for _ in 0..1_000 {
                            c.translations.bump();
                            c.iotlb_hits.bump();
                        }
                    });
                }
            });
        }
        let s = c.snapshot();
        let n = 3 * (SLOTS as u64 + 4) * 1_000;
        assert_eq!((s.translations, s.iotlb_hits), (n, n));
    }
}
