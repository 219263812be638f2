//! Counters of what the vIOMMU did, readable at any time without locks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($field:ident: $doc:literal,)*) => {
        /// Live counters, updated with relaxed atomics on the hot paths.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $doc] pub $field: AtomicU64,)*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct CountersSnapshot {
            $(#[doc = $doc] pub $field: u64,)*
        }

        impl Counters {
            /// Copies every counter.
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl CountersSnapshot {
            /// `(name, value)` pairs in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

counters! {
    translations: "Translation requests served (hits, walks and pass-through).",
    iotlb_hits: "Translations answered from the IOTLB.",
    iotlb_misses: "Translations that missed the IOTLB.",
    walks: "Page-table walks performed.",
    context_cache_hits: "Context-cache hits.",
    context_cache_misses: "Context-cache misses.",
    pasid_cache_hits: "PASID-cache hits.",
    pasid_cache_misses: "PASID-cache misses.",
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

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl CountersSnapshot {
    /// IOTLB hit rate in percent, if any lookup happened.
    pub fn iotlb_hit_rate(&self) -> Option<f64> {
        let total = self.iotlb_hits + self.iotlb_misses;
        (total > 0).then(|| 100.0 * self.iotlb_hits as f64 / total as f64)
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
