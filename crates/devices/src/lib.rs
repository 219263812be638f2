//! Device models for the vtd-nest VMM.
//!
//! This crate knows nothing about KVM. It talks to the VMM through three small seams:
//!
//! ```text
//!   vCPU exit (PIO/MMIO) ──► VMM bus ──► BusDevice::{read,write}(offset, data)
//!                                           │
//!          ┌────────────────────────────────┼──────────────────────────┐
//!          ▼                                ▼                          ▼
//!     PciConfigIo (0xCF8)              PciEcam (MMCONFIG)         PciBarWindow (BARs)
//!          └──────────────► PciBus ◄────────┘                          │
//!                             │ config space                           │ BAR access
//!                             ▼                                        ▼
//!                     PciDevice (root bridge, VirtioPciDevice<M> ...) ◄─┘
//!                             │
//!                             ▼
//!        VirtioDevice<M> (Block<M>) ── I/O thread ── guest memory M (maybe translated)
//!                             │
//!                             ▼
//!                 MsiController::trigger(vector)  (VMM: irqfd + GSI route)
//! ```
//!
//! * [`bus::BusDevice`]: accesses by offset into a device's range.
//! * [`interrupt::MsiController`]: one per device, programs and fires MSI-X vectors.
//! * [`pci::IoEventRegistrar`]: (re)registers queue-notify ioeventfds when a BAR moves.
//!
//! Guest memory is generic over [`vm_memory::GuestMemory`], so the same device works on plain
//! guest RAM and on an IOMMU-translated view (the VMM's `vtd::dma_memory::DmaMemory`, or
//! `vm_memory::IommuMemory`).
#![forbid(unsafe_code)]

pub mod bus;
pub mod interrupt;
pub mod io_gate;
pub mod pci;
pub mod virtio;

pub use bus::BusDevice;
pub use interrupt::{MsiController, MsiMessage};
