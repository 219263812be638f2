//! A model of an Intel VT-d remapping unit as a guest sees it: scalable mode with first-stage
//! (and optionally second-stage) translation, legacy mode, queued and register-based
//! invalidation, fault recording and event interrupts. No KVM, no unsafe code.
//!
//! [`Vtd`] is the unit. It is configured with QEMU's `intel-iommu` option names
//! ([`Config::parse`]), serves the 4 KiB register page ([`Vtd::mmio_read`],
//! [`Vtd::mmio_write`]), translates DMA ([`request::Remapper`]), remaps interrupts
//! ([`Vtd::remap_interrupt`]) and tells passthrough bindings and the VMM's interrupt routing
//! what the guest invalidated ([`InvalidationObserver`]).
//!
//! ```text
//!  1. Guest programs the unit (vCPU thread, MMIO exit)
//!     mmio_write ─► regs (attributes, W1C) ─► GCMD: SRTP/TE/QIE ─► GSTS (synchronously)
//!                                          │  SIRTP/IRE/CFI ─► interrupt_remap (IRTA, IEC)
//!                                          │                 └─► UnitState (root, TE) ─┐
//!                                          ├─► IQT: qi::interpret_decoded ─► dispatch ──┤
//!                                          │    wait: status write, ICS/IECTL event     │
//!                                          ├─► CCMD / IOTLB register ─────► dispatch ───┤
//!                                          └─► FSTS/FRCD/FECTL: W1C, PPF, IP ─► MSI     │
//!                        dispatch = translator caches, then every observer ◄────────────┘
//!
//!  2. Emulated-device DMA (device thread)
//!     dma_memory::DmaMemory (or vm-memory's IommuMemory) ─► iommu::DeviceIommu
//!       (remembered pages, valid while the unit's generation is unchanged)
//!       ─► Vtd::remap ─► Translator (IOTLB hit, or root ─► context ─► PASID
//!            ─► first/second-stage walk) with UnitState (RwLock read)
//!          └─► on a fault: fault::record (FRCD, FSTS.PPF/PFO, FRI)
//!                ─► fault event MSI via FaultInterrupt
//!
//!  3. Passthrough devices (no DMA through the unit)
//!     InvalidationObserver::invalidated / submission_done / root_or_translation_changed
//!       ─► binding logic reads PASID entries through UnitView ─► host IOMMU (nested HWPT)
//!
//!  4. Interrupts (VMM building KVM MSI routes; device DWORD writes to FEEx_xxxx)
//!     Vtd::remap_interrupt(sid, address, data) / Remapper::interrupt
//!       ─► interrupt_remap: IRES clear ─► unchanged
//!          else format, index, interrupt-entry cache or IRTE read from RAM, P, reserved,
//!          source validation ─► InterruptOutcome::Deliver (compatibility format)
//!          └─► on a fault: fault::record (FI = index) unless FPD ─► Blocked
//!     QI IEC descriptor / SIRTP / IRE / CFI ─► cache dropped ─► observers'
//!       interrupt_entries_changed (before the next wait completes) ─► VMM re-evaluates routes
//! ```
//!
//! Locks: a register mutex for MMIO and fault recording; the translation hot path reads
//! [`UnitState`] from an `RwLock` and never takes the register mutex. Observers and
//! the interrupt sink are always called with no lock held.

#![forbid(unsafe_code)]

// Modules other crates name by path (accel, devices, vmm).
pub mod config;
pub mod dma_memory;
pub mod invalidation;
pub mod iommu;
pub mod observer;
pub mod request;

// The fuzzing driver: for the cargo-fuzz target (`fuzz/` enables the feature) and its replay
// test.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

mod counters;
mod fault;
mod generation_log;
mod interrupt_range;
mod interrupt_remap;
mod memory;
mod qi;
mod regs;
mod sync;
mod translate;
mod unit;

#[cfg(all(test, loom))]
mod loom_model;
#[cfg(test)]
mod test_rng;

pub use config::{Config, ConfigError};
pub use counters::{Counters, CountersSnapshot};
pub use fault::FaultInterrupt;
pub use generation_log::LOG_ENTRIES;
pub use interrupt_remap::InterruptOutcome;
pub use memory::{GuestRam, MemoryError};
pub use observer::{InvalidationObserver, UnitView};
pub use translate::shadow_view::{
    DeviceTables, SecondStageTables, SsRangeLeaf, SsRangeWalk, device_tables,
};
pub use translate::{CacheStats, Translator, UnitState};
pub use unit::Vtd;
