//! The guest-physical memory map: fixed addresses of boot structures, ACPI tables and the 32-bit
//! MMIO hole.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_fc00   RAM (boot structures: GDT, page tables, zero page, cmdline)
//! 0x000e_0000 .. 0x0010_0000   ACPI tables (RSDP first), reset-vector stub at 0xffff0; reserved
//! 0x0010_0000 .. LOW_RAM_END   RAM (kernel at 1 MiB, initrd at the top)
//! 0xc000_0000 .. 0xe000_0000   32-bit PCI BAR window
//! 0xe000_0000 .. 0xe010_0000   PCI ECAM, bus 0 (reserved in e820)
//! 0xfec0_0000                  IOAPIC
//! 0xfed9_0000                  VT-d DRHD register page (4 KiB)
//! 0xfee0_0000                  local APIC
//! 0x1_0000_0000 ..             RAM above 4 GiB, when memory exceeds the hole
//! ```

/// GDT for the 64-bit entry.
pub const GDT_START: u64 = 0x500;
/// IDT (empty) for the 64-bit entry.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity map.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages) mapping the low 4 GiB.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Maximum command line size, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// End of the conventional memory below the EBDA.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables, RSDP first (the BIOS area Linux also scans).
pub const ACPI_START: u64 = 0xe_0000;
/// Size of the ACPI area.
pub const ACPI_SIZE: u64 = 0x2_0000;
/// The real-mode reset vector (f000:fff0), where Linux's BIOS reboot method jumps; a stub
/// there resets the VM through the ACPI reset register.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Where high memory (the kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM below it ends here at most.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// 32-bit PCI BAR window base.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// 32-bit PCI BAR window size.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI ECAM base (segment 0, bus 0).
pub const ECAM_START: u64 = 0xe000_0000;
/// ECAM size for bus 0 only (32 devices x 8 functions x 4 KiB).
pub const ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC register window.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// VT-d DRHD register page (QEMU's address).
pub const DRHD_START: u64 = 0xfed9_0000;
/// VT-d DRHD register page size.
pub const DRHD_SIZE: u64 = 0x1000;
/// Local APIC register window.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// First address above the 32-bit MMIO hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// PIO: PCI configuration mechanism #1 (0xcf8 address, 0xcfc data).
pub const PCI_CONFIG_IO_START: u16 = 0xcf8;
/// PIO: size of the PCI configuration ports.
pub const PCI_CONFIG_IO_SIZE: u16 = 8;
/// PIO: COM1.
pub const COM1_START: u16 = 0x3f8;
/// ISA IRQ (and IOAPIC pin) of COM1.
pub const COM1_IRQ: u32 = 4;
/// PIO: the i8254 PIT's counters 0-2 and mode/command register (split irqchip; KVM's
/// in-kernel PIT otherwise).
pub const PIT_START: u16 = 0x40;
/// PIO: port B of the PC's system control (PIT counter 2's gate and output, speaker).
pub const PIT_PORT_B: u16 = 0x61;
/// GSI (IOAPIC pin) of the PIT's IRQ0, as the MADT's interrupt source override says.
pub const PIT_GSI: u32 = 2;
/// PIO: the i8042 controller's command/status port (its data port, 0x60, is not emulated:
/// the status never reports data, and port B at 0x61 sits between the two).
pub const I8042_COMMAND: u16 = 0x64;
/// PIO: the ACPI power-management block (sleep control, sleep status, reset).
pub const ACPI_PM_START: u16 = 0x600;
/// PIO: size of the ACPI power-management block.
pub const ACPI_PM_SIZE: u16 = 4;
/// Offset of the FADT sleep control register in the PM block.
pub const ACPI_SLEEP_CONTROL: u16 = 0;
/// Offset of the FADT sleep status register in the PM block.
pub const ACPI_SLEEP_STATUS: u16 = 1;
/// Offset of the FADT reset register in the PM block.
pub const ACPI_RESET_REG: u16 = 2;
/// Value the guest writes to the reset register to reboot.
pub const ACPI_RESET_VALUE: u8 = 1;
/// PIO: the PCI hot-plug register block (see `hotplug`), right after the PM block.
pub const PCI_HOTPLUG_START: u16 = 0x610;
/// ISA IRQ (and IOAPIC pin) of the Generic Event Device that signals PCI hot-plug events.
pub const GED_IRQ: u32 = 5;

/// Number of IOAPIC pins (GSIs 0..24); MSI routes start above them.
pub const IOAPIC_PINS: u32 = 24;
/// The first of the IOAPIC pins PCI INTx lines are wired to (the DSDT's `_PRT`): pin `p`
/// (0 = INTA) of device `d` on bus 0 is GSI `PCI_INTX_GSI_BASE + (d + p) % PCI_INTX_GSIS`,
/// the conventional swizzle over GSIs 16..24, above every ISA IRQ so no MADT override applies.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// How many IOAPIC pins PCI INTx lines share.
pub const PCI_INTX_GSIS: u32 = IOAPIC_PINS - PCI_INTX_GSI_BASE;

/// The GSI (IOAPIC pin) interrupt pin `pin` (1 = INTA .. 4 = INTD) of device `device` on bus 0
/// is wired to; `None` for pin 0 (no INTx) or a value beyond INTD.
pub fn pci_intx_gsi(device: u8, pin: u8) -> Option<u32> {
    (1..=4)
        .contains(&pin)
        .then(|| PCI_INTX_GSI_BASE + (u32::from(device) + u32::from(pin) - 1) % PCI_INTX_GSIS)
}

/// The IOAPIC's ID (MADT, IOAPIC ID register reset value, DMAR IOAPIC scope enumeration ID).
pub const IOAPIC_ID: u8 = 0;
/// The IOAPIC's requester ID for interrupt remapping: ff:00.0, QEMU's choice. The PCI
/// segment has bus 0 only (ECAM and 0xcf8 reach no other bus), so no PCI function can ever
/// carry this source-id; the DMAR table's IOAPIC scope names it.
pub const IOAPIC_SOURCE_ID: vtd_spec::SourceId = vtd_spec::SourceId::new(0xff, 0, 0);
