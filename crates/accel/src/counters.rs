//! Counters of the passthrough path.

use std::sync::atomic::AtomicU64;

pub(crate) use counter_set::{add, bump};

counter_set::counter_set! {
    /// Live counters.
    pub(crate) struct AccelCounters;
    /// A point-in-time copy of the passthrough counters.
    pub struct AccelCountersSnapshot;
    {
        nested_binds: AtomicU64 = "Nested HWPTs bound from a guest first-stage PASID entry (new or replaced).",
        stage2_attaches: AtomicU64 = "Attachments to the stage-2 nest parent (pass-through PGTT, TE off).",
        blocks: AtomicU64 = "Devices whose DMA was blocked (PASID entry gone, unsupported PGTT, failures).",
        syncs: AtomicU64 = "PASID-entry re-reads (PASID-cache invalidations and replays).",
        replays: AtomicU64 = "Replays of every binding (SRTP, TE, context-cache invalidation).",
        forwarded_invalidations: AtomicU64 = "IOMMU_HWPT_INVALIDATE calls made.",
        forwarded_entries: AtomicU64 = "Invalidation entries forwarded to the host.",
        host_failures: AtomicU64 = "Host operations that failed (the device was blocked).",
    }
}
