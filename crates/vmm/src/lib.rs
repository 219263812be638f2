//! A small KVM virtual machine monitor that boots unmodified Linux guests on x86_64, built to
//! host the `vtd` virtual Intel VT-d IOMMU.
//!
//! ```text
//!  vtd-nest run ... ──> config::parse_args ──> VmConfig
//!                                                │
//!  VmBuilder::new ── config::check_files, vm::open_kvm, memory::create_guest_memory,
//!        │           vm::create_vm (TSS, irqchip kernel|split, PIT, x2APIC API, slots),
//!        │           all gathered in a device_context::DeviceContext for device wiring;
//!        │           --iommu: iommu::create_unit (vtd::Vtd) → MMIO bus @ 0xfed90000,
//!        │                    fault events → KVM_SIGNAL_MSI, counters → exit summary
//!        ▼
//!  VmBuilder::build ── platform devices: COM1 (irqfd → IOAPIC pin 4), ACPI PM block, i8042,
//!        │             split irqchip: ioapic::Ioapic (RTEs → MSI routes via interrupt::GsiRouting)
//!        │               and pit::Pit (ports 0x40-0x43, 0x61; IRQ0 → GSI 2 from its own thread)
//!        │             PCI bus 0 + virtio-blk disks (pci, on the DeviceContext), DMA memory:
//!        │               plain RAM | iommu::TranslatedMemory | passthrough::AssignedMemory
//!        │             vfio: --device host functions (whole RAM | shadow | nested DMA)
//!        │             hotplug: register block (PIO 0x610) + GED line (IRQ 5); pci_hotplug
//!        │             acpi::write_tables (RSDP, XSDT, FADT, DSDT, MADT, MCFG, DMAR)
//!        │             arch::x86_64::boot::load (bzImage / PVH / ELF, initrd, cmdline, e820)
//!        │             vCPUs: CPUID, MSRs, FPU, LINTs, BSP registers, AP mp_state
//!        ▼
//!  running::Vm::run ── one thread per vCPU: KVM_RUN ─ PIO/MMIO exits ─> bus::Bus ─> BusDevice
//!        │                                          ├ IOAPIC EOI exits ─> ioapic::Ioapic
//!        │                                          └ power-off / reset ─> VmEvent ─┐
//!        └── waits for the first VmEvent (or a stop signal, see                     │
//!            stop_signals), kicks and joins vCPUs, runs shutdown hooks,             │
//!            returns VmExit  <──────────────────────────────────────────────────────┘
//! ```
//!
//! All `unsafe` code lives in [`sys`] and `vfio::sys` (BAR mmaps as KVM memory slots), plus
//! the one call of `sys`'s `unsafe fn` in [`vm::create_vm`], which states why it meets the
//! contract.

pub mod acpi;
pub mod api;
pub mod arch;
pub mod builder;
pub mod bus;
pub mod config;
pub mod control;
pub mod counters;
pub mod device_context;
pub mod error;
pub mod hotplug;
pub mod interrupt;
pub mod ioapic;
pub mod iommu;
pub mod iommu_state;
pub mod legacy;
pub mod memory;
pub mod passthrough;
pub mod pci;
pub mod pci_hotplug;
pub mod pit;
pub mod running;
pub mod serial;
pub mod state_signal;
pub mod stop_signals;
pub mod sys;
pub mod vcpu;
pub mod vfio;
pub mod vm;

pub use builder::VmBuilder;
pub use config::{Command, VmConfig, parse_args};
pub use running::{Vm, VmExit};
