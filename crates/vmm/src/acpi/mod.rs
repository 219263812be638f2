//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT, MCFG, DMAR}, written into the BIOS area at
//! 0xe0000 (RSDP first, where Linux also finds it by scanning) and announced through
//! `boot_params.acpi_rsdp_addr` / `hvm_start_info.rsdp_paddr`.
//!
//! The FADT is hardware-reduced. Power-off uses its sleep control register (I/O port 0x600,
//! `_S5_` = 5 in the DSDT), reboot its reset register (port 0x602, value 1).

pub mod dmar;
pub mod dsdt;
pub mod madt;
pub mod pci_hotplug;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::arch::x86_64::layout::{
    ACPI_PM_START, ACPI_RESET_REG, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL, ACPI_SLEEP_STATUS,
    ACPI_START, ECAM_START, IOAPIC_ID, IOAPIC_SOURCE_ID, RESET_VECTOR,
};

/// OEM id in every table.
pub const OEM_ID: [u8; 6] = *b"VTDNST";
/// OEM table id in every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"VTDNEST ";
/// OEM revision in every table.
pub const OEM_REVISION: u32 = 1;

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tables outgrew the BIOS area.
    #[error("ACPI tables need {0} bytes, more than the BIOS area below the reset vector")]
    TooLarge(u64),
    /// A guest memory write failed.
    #[error("Cannot write the ACPI tables to guest memory")]
    Memory(#[source] GuestMemoryError),
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC IDs 0..n).
    pub nr_cpus: u16,
    /// The vIOMMU's DMAR description, when one is configured.
    pub dmar: Option<DmarConfig>,
}

/// The vIOMMU as the DMAR table describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarConfig {
    /// Guest address width in bits (DMAR width = this − 1).
    pub aw_bits: u8,
    /// Register page base.
    pub base: u64,
    /// Interrupt remapping on: INTR_REMAP and the IOAPIC's scope.
    pub interrupt_remapping: bool,
}

/// The FADT: hardware-reduced, 64-bit DSDT pointer, sleep control/status and reset registers
/// in the I/O power-management block, no VGA, no CMOS RTC, no i8042.
pub fn fadt(dsdt: u64) -> Vec<u8> {
    let io8 = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    const VGA_NOT_PRESENT: u16 = 1 << 2;
    const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    builder.iapc_boot_arch = (VGA_NOT_PRESENT | CMOS_RTC_NOT_PRESENT).into();
    builder.sleep_control_reg = io8(ACPI_PM_START + ACPI_SLEEP_CONTROL);
    builder.sleep_status_reg = io8(ACPI_PM_START + ACPI_SLEEP_STATUS);
    builder.reset_reg = io8(ACPI_PM_START + ACPI_RESET_REG);
    builder.reset_value = ACPI_RESET_VALUE;
    let mut bytes = Vec::new();
    builder.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// The MCFG: ECAM for segment 0, bus 0.
pub fn mcfg() -> Vec<u8> {
    let mut table = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.add_ecam(ECAM_START, 0, 0, 0);
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// All tables laid out from `base`: `(address, bytes)` pairs, RSDP first, and the RSDP address.
pub fn build(config: &AcpiConfig, base: u64) -> (Vec<(u64, Vec<u8>)>, u64) {
    let align = |addr: u64| (addr + 15) & !15;
    let rsdp_addr = base;
    let mut next = align(base + Rsdp::len() as u64);
    let mut out = Vec::new();
    let mut place = |bytes: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let addr = next;
        next = align(addr + bytes.len() as u64);
        out.push((addr, bytes));
        addr
    };

    let dsdt_addr = place(dsdt::dsdt().as_slice().to_vec(), &mut out);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(place(fadt(dsdt_addr), &mut out));
    xsdt.add_entry(place(
        madt::madt(config.nr_cpus).as_slice().to_vec(),
        &mut out,
    ));
    xsdt.add_entry(place(mcfg(), &mut out));
    if let Some(d) = &config.dmar {
        let unit = dmar::DrhdUnit {
            base: d.base,
            segment: 0,
            include_pci_all: true,
            endpoints: vec![],
            ioapic: d
                .interrupt_remapping
                .then_some((IOAPIC_ID, IOAPIC_SOURCE_ID)),
        };
        xsdt.add_entry(place(
            dmar::dmar(d.aw_bits, d.interrupt_remapping, &[unit])
                .as_slice()
                .to_vec(),
            &mut out,
        ));
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(xsdt_bytes, &mut out);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    out.insert(0, (rsdp_addr, rsdp));
    (out, rsdp_addr)
}

/// Writes the tables into the BIOS area; returns the RSDP address.
pub fn write_tables(mem: &GuestMemoryMmap, config: &AcpiConfig) -> Result<u64, Error> {
    let (tables, rsdp) = build(config, ACPI_START);
    let end = tables
        .iter()
        .map(|(a, b)| a + b.len() as u64)
        .max()
        .unwrap_or(ACPI_START);
    if end > RESET_VECTOR {
        return Err(Error::TooLarge(end - ACPI_START));
    }
    for (addr, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(Error::Memory)?;
    }
    Ok(rsdp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every ACPI table's bytes sum to zero.
    pub(crate) fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn fadt_layout() {
        let b = fadt(0xe1000);
        assert_eq!(&b[0..4], b"FACP");
        assert_eq!(b.len(), 276);
        assert_eq!(u32_at(&b, 4), 276);
        assert!(checksum_ok(&b));
        assert_eq!(u32_at(&b, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(u64_at(&b, 140), 0xe1000, "X_DSDT");
        let flags = u32_at(&b, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(
            u16::from_le_bytes([b[109], b[110]]),
            (1 << 2) | (1 << 5),
            "IAPC_BOOT_ARCH"
        );
        // RESET_REG GAS at 116: system I/O, 8 bits, byte access, port 0x602; value at 128.
        assert_eq!(&b[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&b, 120), 0x602);
        assert_eq!(b[128], 1);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(&b[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&b, 248), 0x600);
        assert_eq!(u64_at(&b, 260), 0x601);
    }

    #[test]
    fn mcfg_layout() {
        let b = mcfg();
        assert!(checksum_ok(&b));
        assert_eq!(b.len(), 44 + 16);
        assert_eq!(u64_at(&b, 44), ECAM_START);
        assert_eq!(&b[52..56], &[0, 0, 0, 0], "segment 0, buses 0..0");
    }

    fn tables(config: &AcpiConfig) -> Vec<(u64, Vec<u8>)> {
        build(config, ACPI_START).0
    }

    #[test]
    fn rsdp_xsdt_chain() {
        let config = AcpiConfig {
            nr_cpus: 2,
            dmar: Some(DmarConfig {
                aw_bits: 48,
                base: 0xfed9_0000,
                interrupt_remapping: false,
            }),
        };
        let (all, rsdp_addr) = build(&config, ACPI_START);
        assert_eq!(rsdp_addr, ACPI_START);
        let find = |addr: u64| &all.iter().find(|(a, _)| *a == addr).unwrap().1;
        let rsdp = find(rsdp_addr);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp.len(), 36);
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        let xsdt = find(u64_at(rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(xsdt));
        let sigs: Vec<&[u8]> = (36..xsdt.len())
            .step_by(8)
            .map(|at| &find(u64_at(xsdt, at))[0..4])
            .collect();
        assert_eq!(sigs, vec![&b"FACP"[..], b"APIC", b"MCFG", b"DMAR"]);
        let fadt = find(u64_at(xsdt, 36));
        assert_eq!(&find(u64_at(fadt, 140))[0..4], b"DSDT");
        for (addr, bytes) in &all {
            assert_eq!(addr % 16, 0);
            if bytes.len() > 36 && &bytes[0..4] != b"RSD " {
                assert!(
                    checksum_ok(bytes),
                    "{}",
                    String::from_utf8_lossy(&bytes[0..4])
                );
            }
        }
        let end = all.iter().map(|(a, b)| a + b.len() as u64).max().unwrap();
        assert!(end <= RESET_VECTOR);
    }

    #[test]
    fn no_dmar_without_iommu() {
        let all = tables(&AcpiConfig {
            nr_cpus: 1,
            dmar: None,
        });
        assert!(all.iter().all(|(_, b)| &b[0..4] != b"DMAR"));
    }
}
