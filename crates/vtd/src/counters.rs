//! Counters of what the vIOMMU did, readable at any time without locks.
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

macro_rules! counters {
    (hot { $($hot:ident: $hdoc:literal,)* } cold { $($field:ident: $doc:literal,)* }) => {
        /// Live counters: [`HotCounter`]s on the translation path, relaxed atomics elsewhere.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $hdoc] pub $hot: HotCounter,)*
            $(#[doc = $doc] pub $field: AtomicU64,)*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct CountersSnapshot {
            $(#[doc = $hdoc] pub $hot: u64,)*
            $(#[doc = $doc] pub $field: u64,)*
        }

        impl Counters {
            /// Copies every counter.
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot {
                    $($hot: self.$hot.get(),)*
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }
        }

        impl CountersSnapshot {
            /// `(name, value)` pairs in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($hot), self.$hot),)* $((stringify!($field), self.$field),)*]
            }
        }
    };
}

counters! {
    hot {
        translations: "Translation requests served (hits, walks and pass-through).",
        iotlb_hits: "Translations answered from the IOTLB.",
        iotlb_misses: "Translations that missed the IOTLB.",
        walks: "Page-table walks performed.",
    }
    cold {
        context_cache_hits: "Context-cache hits.",
        context_cache_misses: "Context-cache misses.",
        pasid_cache_hits: "PASID-cache hits.",
        pasid_cache_misses: "PASID-cache misses.",
        leaf_table_hits: "First-stage walks that started from a cached leaf table.",
        leaf_table_misses: "First-stage walks that read the whole chain of tables.",
        iotlb_prefetches: "IOTLB entries filled for the other present leaves in a walked leaf's 64-byte line.",
        faults: "Translation faults (qualified or not).",
        faults_recorded: "Faults written to a fault-recording register.",
        fault_events: "Fault-event interrupts sent.",
        qi_submissions: "IQT writes that processed at least one descriptor.",
        qi_context_cache: "Context-cache invalidation descriptors.",
        qi_iotlb: "IOTLB invalidation descriptors.",
        qi_device_tlb: "Device-TLB invalidation descriptors.",
        qi_iec: "Interrupt-entry-cache invalidation descriptors.",
        qi_wait: "Invalidation wait descriptors.",
        qi_pasid_iotlb: "PASID-based IOTLB invalidation descriptors.",
        qi_pasid_cache: "PASID-cache invalidation descriptors.",
        qi_pasid_device_tlb: "PASID-based device-TLB invalidation descriptors.",
        qi_page_group_response: "Page group response descriptors.",
        qi_errors: "Invalidation queue errors (IQE).",
        register_invalidations: "Register-based (CCMD / IOTLB) invalidations.",
    }
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One `counter <name> <value>` line per counter, the format the end-to-end runner parses.
impl fmt::Display for CountersSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.pairs() {
            writeln!(f, "counter {name} {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(s.to_string().contains("counter translations 2\n"));
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
