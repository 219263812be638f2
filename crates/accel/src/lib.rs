//! Passthrough devices behind the vIOMMU: what QEMU's `intel_iommu_accel.c` does.
//!
//! A passthrough (VFIO) device's DMA never enters the vIOMMU. Instead, the guest's first-stage
//! page-table pointer is handed to the host IOMMU, which walks the guest's table itself as
//! stage 1 of a *nested* translation over the VMM's stage-2 nest parent (GPA → host memory).
//! This crate keeps the host's view equal to what the guest programmed, at exactly the moments
//! the VT-d specification lets the guest rely on it.
//!
//! ```text
//!  guest writes IQT ──► vtd::Vtd processes descriptors ──► InvalidationObserver (this crate)
//!                                                              │
//!     PASID-cache inval ─► re-read PASID entry ─► Target ──────┤
//!     context-cache inval, SRTP, TE ─► replay every device ────┤
//!                                                              ▼
//!                         Binding per device  (binding.rs)
//!        Target::Nested(data) ─► NestedHwpt(data) on the nest parent, atomic replace, old freed
//!        Target::Stage2       ─► attach the nest parent (GPA = IOVA)
//!        Target::Blocked      ─► detach (DMA blocked)
//!                                                              │
//!     PASID-IOTLB / IOTLB inval ─► queued per device ─► one IOMMU_HWPT_INVALIDATE per nested
//!                                   HWPT per submission, before the guest's wait completes
//!                                                              ▼
//!                      host_iommu::HostIommu  (real /dev/iommu, or the software model)
//! ```
//!
//! Differences from QEMU's design, on purpose:
//! - host calls are never made under the vIOMMU's translation lock (observers run unlocked);
//! - invalidations are batched: one ioctl per nested HWPT per submission, not per descriptor;
//! - legacy IOTLB descriptors (global / domain / page) that cover a bound domain are forwarded
//!   too, as "invalidate everything" (the spec says they drop first-stage entries of the domain);
//! - a failed bind or invalidation blocks the device's DMA instead of leaving it on stale
//!   tables; the failure is counted and logged once, and the next successful sync restores it;
//! - a guest in legacy mode with translation on gets its nested devices blocked with a clear
//!   log line: second-stage tables are the shadow's job ([`Shadow`], `shadow.rs`), which the
//!   VMM picks at start for a vIOMMU without `x-flts`, and which works on hosts that cannot
//!   nest (map/unmap into an IOAS or VFIO container on each invalidation).

#![forbid(unsafe_code)]

mod binding;
mod checks;
mod counters;
mod passthrough;
mod shadow;
mod stage2;

/// What the host currently does with a passthrough device's DMA.
pub use binding::Target as BindingState;
pub use binding::{BindingView, BlockReason};
pub use checks::{CompatError, check_host_device};
pub use counters::AccelCountersSnapshot;
pub use passthrough::{Accel, AccelError, HostDevice};
pub use shadow::{Run, Shadow, ShadowCountersSnapshot, ShadowState};
pub use stage2::RamRegion;
