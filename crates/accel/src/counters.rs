//! Counters of the passthrough path.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! accel_counters {
    ($($field:ident: $doc:literal,)*) => {
        /// Live counters.
        #[derive(Debug, Default)]
        pub(crate) struct AccelCounters {
            $(pub(crate) $field: AtomicU64,)*
        }

        /// A point-in-time copy of the passthrough counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct AccelCountersSnapshot {
            $(#[doc = $doc] pub $field: u64,)*
        }

        impl AccelCounters {
            pub(crate) fn snapshot(&self) -> AccelCountersSnapshot {
                AccelCountersSnapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl AccelCountersSnapshot {
            /// `(name, value)` pairs in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

accel_counters! {
    nested_binds: "Nested HWPTs bound from a guest first-stage PASID entry (new or replaced).",
    stage2_attaches: "Attachments to the stage-2 nest parent (pass-through PGTT, TE off).",
    blocks: "Devices whose DMA was blocked (PASID entry gone, unsupported PGTT, failures).",
    syncs: "PASID-entry re-reads (PASID-cache invalidations and replays).",
    replays: "Replays of every binding (SRTP, TE, context-cache invalidation).",
    forwarded_invalidations: "IOMMU_HWPT_INVALIDATE calls made.",
    forwarded_entries: "Invalidation entries forwarded to the host.",
    host_failures: "Host operations that failed (the device was blocked).",
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
