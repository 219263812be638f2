//! The whole unit (`vtd::Vtd`) through its registers and queue, with the real translator, one
//! test binary with a module per concern.
//!
//! ```text
//!  support: guest RAM, register accessors, queue driver, recording interrupt sink and observer
//!  translate_support: the table builders (shared with the translate tests)
//!    ─► each module programs the unit as a guest driver would, then checks registers, faults,
//!       invalidations and DMA through DeviceIommu
//! ```

#[path = "../translate/support/mod.rs"]
mod translate_support;

mod support;

mod faults;
mod forget_source;
mod interrupt_range;
mod interrupt_remapping;
mod iommu_device_cache;
mod linux;
mod qi;
mod registers;
mod state;
mod translate;
