//! The DSDT: the PCI host bridge with its resources, INTx routing (`_PRT`) and hot-plug slots
//! (see [`super::pci_hotplug`]), the Generic Event Device, COM1, the ECAM motherboard resource, and
//! the `_S5_` sleep type Linux needs before it powers off through the FADT sleep registers.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Interrupt, Memory32Fixed, Name,
    Package, PackageBuilder, Path, ResourceTemplate, Scope, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::x86_64::layout::{
    COM1_IRQ, COM1_START, ECAM_SIZE, ECAM_START, PCI_CONFIG_IO_SIZE, PCI_CONFIG_IO_START,
    PCI_MMIO32_SIZE, PCI_MMIO32_START, pci_intx_gsi,
};

/// The `_S5_` SLP_TYP value; the guest writes `(5 << 2) | SLP_EN` to the sleep control
/// register to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Already-encoded AML, so nested objects need not outlive their parents' builders.
pub(super) struct Encoded(pub(super) Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

pub(super) fn device(name: &str, children: Vec<&dyn Aml>) -> Encoded {
    let mut bytes = Vec::new();
    Device::new(name.into(), children).to_aml_bytes(&mut bytes);
    Encoded(bytes)
}

/// Devices on bus 0.
const BUS0_DEVICES: u8 = 32;

/// The PCI routing table (ACPI 6.5 6.2.13): for every device of bus 0 and each of INTA..INTD,
/// `Package { 0xDDDDFFFF (device, any function), pin (0 = INTA), 0 (no link device), GSI }`
/// with the GSI of [`pci_intx_gsi`]. A GSI named directly is level-triggered and active-low
/// to the guest (ACPI 6.5 6.2.13); the IOAPIC models take a line's level as asserted or not.
fn prt() -> PackageBuilder {
    let mut table = PackageBuilder::new();
    for device in 0..BUS0_DEVICES {
        for pin in 1..=4u8 {
            let gsi = pci_intx_gsi(device, pin).unwrap_or_default();
            let address = (u32::from(device) << 16) | 0xffff;
            let index = pin - 1;
            let entry = Package::new(vec![&address, &index, &0u8, &gsi]);
            table.add_element(&entry);
        }
    }
    table
}

/// The AML body of the DSDT.
pub fn dsdt_aml() -> Vec<u8> {
    let mmio_end = (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32;
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = IO::new(
        PCI_CONFIG_IO_START,
        PCI_CONFIG_IO_START,
        1,
        PCI_CONFIG_IO_SIZE as u8,
    );
    let io_low = AddressSpace::new_io(0u16, PCI_CONFIG_IO_START - 1, None);
    let io_high = AddressSpace::new_io(PCI_CONFIG_IO_START + PCI_CONFIG_IO_SIZE, 0xffffu16, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        mmio_end,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![&bus, &cfg_io, &io_low, &io_high, &mmio32]);
    let prt = prt();
    let pci = device(
        "PCI0",
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &ZERO),
            &Name::new("_SEG".into(), &ZERO),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_BBN".into(), &ZERO),
            &Name::new("_CRS".into(), &pci_crs),
            &Name::new("_PRT".into(), &prt),
            &Encoded(super::pci_hotplug::pci0_children()),
        ],
    );
    let ged = super::pci_hotplug::ged();

    let ecam = Memory32Fixed::new(false, ECAM_START as u32, ECAM_SIZE as u32);
    let mres_crs = ResourceTemplate::new(vec![&ecam]);
    let mres = device(
        "MRES",
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_CRS".into(), &mres_crs),
        ],
    );

    let com_io = IO::new(COM1_START, COM1_START, 1, 8);
    let com_irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let com_crs = ResourceTemplate::new(vec![&com_io, &com_irq]);
    let com1 = device(
        "COM1",
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_CRS".into(), &com_crs),
        ],
    );

    let sb = Scope::new(Path::new("\\_SB_"), vec![&pci, &mres, &com1, &ged]);
    let s5 = Name::new(
        "_S5_".into(),
        &Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]),
    );

    let mut aml = Vec::new();
    sb.to_aml_bytes(&mut aml);
    s5.to_aml_bytes(&mut aml);
    aml
}

/// The DSDT table.
pub fn dsdt() -> Sdt {
    let mut table = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&dsdt_aml());
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::tests::checksum_ok;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn names_and_resources_are_present() {
        let t = dsdt();
        let b = t.as_slice();
        assert!(checksum_ok(b));
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize,
            b.len()
        );
        for name in [&b"PCI0"[..], b"_CRS", b"COM1", b"MRES", b"_S5_", b"_SB_"] {
            assert!(contains(b, name), "{}", String::from_utf8_lossy(name));
        }
        // PNP0A08 as a compressed EISA id: 0x41d00a08 byte-swapped.
        assert!(contains(b, &[0x41, 0xd0, 0x0a, 0x08]));
        // The IO descriptor for 0xcf8 (decode16, min, max, align 1, length 8).
        assert!(contains(
            b,
            &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
        ));
        // COM1's IO descriptor.
        assert!(contains(
            b,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]
        ));
        // The BAR window: DWord min and max.
        let min = (PCI_MMIO32_START as u32).to_le_bytes();
        let max = ((PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32).to_le_bytes();
        assert!(contains(b, &[min, max].concat()));
    }

    #[test]
    fn the_prt_wires_each_slot_s_intx_to_the_swizzled_ioapic_pin() {
        assert_eq!(pci_intx_gsi(0, 0), None, "pin 0: no INTx");
        assert_eq!(pci_intx_gsi(0, 5), None);
        assert_eq!(pci_intx_gsi(0, 1), Some(16));
        assert_eq!(pci_intx_gsi(3, 1), Some(19));
        assert_eq!(pci_intx_gsi(3, 4), Some(22));
        assert_eq!(pci_intx_gsi(7, 2), Some(16));
        assert_eq!(pci_intx_gsi(31, 4), Some(18));
        let b = dsdt_aml();
        // Name(_PRT, Package(128) { ... }): NameOp, the name, PackageOp, a 2-byte PkgLength.
        let at = b.windows(4).position(|w| w == b"_PRT").unwrap();
        assert_eq!(b[at + 4], 0x12, "PackageOp");
        assert_eq!(b[at + 5] >> 6, 1, "a two-byte PkgLength");
        assert_eq!(b[at + 7], 128, "32 devices times four pins");
        // Device 3, INTB (1) -> GSI 20: Package(4) { DWord 0x0003ffff, One, Zero, Byte 20 }.
        let entry = [
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x01, 0x00, 0x0a, 20,
        ];
        assert!(contains(&b, &entry));
        // Device 0, INTA -> GSI 16: Package(4) { Word 0xffff, Zero, Zero, Byte 16 }.
        assert!(contains(
            &b,
            &[0x12, 0x09, 0x04, 0x0b, 0xff, 0xff, 0x00, 0x00, 0x0a, 16]
        ));
    }
}
