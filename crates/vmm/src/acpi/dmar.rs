//! The ACPI DMAR table (VT-d specification, chapter 8 "BIOS Considerations"), as typed structs.
//!
//! ```text
//! DMAR  (48 bytes)  36-byte ACPI header | host address width - 1 | flags | 10 reserved
//!  └─ DRHD (16 bytes + scopes)  type 0 | length | flags | size | segment | register base
//!      └─ device scope (6 + 2n bytes)  type | length | reserved | enumeration id | bus | path
//! ```

use acpi_tables::sdt::Sdt;
use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use vtd_spec::SourceId;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// DMAR flags bit 0: interrupt remapping supported (VT-d 8.1).
pub const DMAR_FLAG_INTR_REMAP: u8 = 1 << 0;
/// DMAR flags bit 1: x2APIC opt-out (VT-d 8.1).
pub const DMAR_FLAG_X2APIC_OPT_OUT: u8 = 1 << 1;
/// DRHD flags bit 0: the unit covers every PCI device of its segment (VT-d 8.3).
pub const DRHD_FLAG_INCLUDE_PCI_ALL: u8 = 1 << 0;
/// Remapping structure type 0: DRHD (VT-d 8.2).
pub const STRUCT_TYPE_DRHD: u16 = 0;
/// Device scope type 1: PCI endpoint (VT-d 8.3.1).
pub const SCOPE_PCI_ENDPOINT: u8 = 1;
/// Device scope type 3: IOAPIC (VT-d 8.3.1).
pub const SCOPE_IOAPIC: u8 = 3;

/// The DMAR-specific fields following the ACPI header (VT-d 8.1, offsets 36..48).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct DmarFields {
    /// Host address width minus one.
    pub width: u8,
    /// [`DMAR_FLAG_INTR_REMAP`] and friends.
    pub flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 10],
}

/// DMA Remapping Hardware unit Definition, without its device scopes (VT-d 8.3).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Drhd {
    /// [`STRUCT_TYPE_DRHD`].
    pub r#type: U16,
    /// Length of this structure including its device scopes.
    pub length: U16,
    /// [`DRHD_FLAG_INCLUDE_PCI_ALL`].
    pub flags: u8,
    /// Register set size: 2^size 4 KiB pages.
    pub size: u8,
    /// PCI segment.
    pub segment: U16,
    /// Register base address.
    pub base: U64,
}

/// Device scope header, followed by `(device, function)` path bytes (VT-d 8.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct DeviceScope {
    /// [`SCOPE_PCI_ENDPOINT`] and friends.
    pub r#type: u8,
    /// 6 + 2 × path entries.
    pub length: u8,
    /// Reserved, zero.
    pub reserved: U16,
    /// IOAPIC/HPET id (zero for PCI).
    pub enumeration_id: u8,
    /// Start bus number.
    pub start_bus: u8,
}

/// One remapping unit with its scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrhdUnit {
    /// Register base address.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// INCLUDE_PCI_ALL.
    pub include_pci_all: bool,
    /// Explicit PCI endpoint scopes on bus 0, as `(device, function)`.
    pub endpoints: Vec<(u8, u8)>,
    /// The IOAPIC whose interrupts the unit remaps: its ID (the MADT's) and source-id.
    pub ioapic: Option<(u8, SourceId)>,
}

/// Builds the DMAR table: width = `aw_bits` − 1, flags INTR_REMAP when `interrupt_remapping`
/// (X2APIC_OPT_OUT never: x2APIC stays the guest's choice), one structure per unit. Linux
/// enables interrupt remapping only when every IOAPIC is in the scope of a unit
/// (`parse_ioapics_under_ir`), so a remapping unit names the IOAPIC.
pub fn dmar(aw_bits: u8, interrupt_remapping: bool, units: &[DrhdUnit]) -> Sdt {
    let mut table = Sdt::new(*b"DMAR", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append(DmarFields {
        width: aw_bits - 1,
        flags: if interrupt_remapping {
            DMAR_FLAG_INTR_REMAP
        } else {
            0
        },
        reserved: [0; 10],
    });
    for unit in units {
        let scopes_len = (unit.endpoints.len() + usize::from(unit.ioapic.is_some())) * 8;
        table.append(Drhd {
            r#type: STRUCT_TYPE_DRHD.into(),
            length: ((size_of::<Drhd>() + scopes_len) as u16).into(),
            flags: if unit.include_pci_all {
                DRHD_FLAG_INCLUDE_PCI_ALL
            } else {
                0
            },
            size: 0,
            segment: unit.segment.into(),
            base: unit.base.into(),
        });
        for &(device, function) in &unit.endpoints {
            table.append(DeviceScope {
                r#type: SCOPE_PCI_ENDPOINT,
                length: 8,
                reserved: 0.into(),
                enumeration_id: 0,
                start_bus: 0,
            });
            table.append([device, function]);
        }
        if let Some((id, sid)) = unit.ioapic {
            table.append(DeviceScope {
                r#type: SCOPE_IOAPIC,
                length: 8,
                reserved: 0.into(),
                enumeration_id: id,
                start_bus: sid.bus(),
            });
            table.append([sid.devfn() >> 3, sid.devfn() & 7]);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::tests::checksum_ok;

    #[test]
    fn layout_matches_the_spec() {
        assert_eq!(36 + size_of::<DmarFields>(), 48);
        assert_eq!(size_of::<Drhd>(), 16);
        assert_eq!(size_of::<DeviceScope>(), 6);
    }

    #[test]
    fn single_include_all_unit() {
        let unit = DrhdUnit {
            base: 0xfed9_0000,
            segment: 0,
            include_pci_all: true,
            endpoints: vec![],
            ioapic: None,
        };
        let t = dmar(48, false, &[unit]);
        let b = t.as_slice();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..4], b"DMAR");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 64);
        assert_eq!(b[8], 1, "revision");
        assert!(checksum_ok(b));
        assert_eq!(b[36], 47, "host address width - 1");
        assert_eq!(b[37], 0, "no INTR_REMAP, no X2APIC_OPT_OUT");
        assert!(b[38..48].iter().all(|&x| x == 0));
        // DRHD at 48.
        assert_eq!(u16::from_le_bytes([b[48], b[49]]), 0, "type DRHD");
        assert_eq!(u16::from_le_bytes([b[50], b[51]]), 16, "length");
        assert_eq!(b[52], DRHD_FLAG_INCLUDE_PCI_ALL);
        assert_eq!(b[53], 0, "size: one 4 KiB page");
        assert_eq!(u16::from_le_bytes([b[54], b[55]]), 0, "segment");
        assert_eq!(
            u64::from_le_bytes(b[56..64].try_into().unwrap()),
            0xfed9_0000
        );
    }

    #[test]
    fn endpoint_scopes() {
        let unit = DrhdUnit {
            base: 0xfed9_0000,
            segment: 0,
            include_pci_all: false,
            endpoints: vec![(3, 0), (4, 1)],
            ioapic: None,
        };
        let t = dmar(39, false, &[unit]);
        let b = t.as_slice();
        assert_eq!(b.len(), 48 + 16 + 2 * 8);
        assert_eq!(b[36], 38);
        assert_eq!(u16::from_le_bytes([b[50], b[51]]), 32);
        assert_eq!(b[52], 0);
        assert_eq!(&b[64..72], &[SCOPE_PCI_ENDPOINT, 8, 0, 0, 0, 0, 3, 0]);
        assert_eq!(&b[72..80], &[SCOPE_PCI_ENDPOINT, 8, 0, 0, 0, 0, 4, 1]);
        assert!(checksum_ok(b));
    }

    #[test]
    fn interrupt_remapping_flag_and_ioapic_scope() {
        let unit = DrhdUnit {
            base: 0xfed9_0000,
            segment: 0,
            include_pci_all: true,
            endpoints: vec![],
            ioapic: Some((0, SourceId::new(0xff, 0, 0))),
        };
        let t = dmar(48, true, &[unit]);
        let b = t.as_slice();
        assert!(checksum_ok(b));
        assert_eq!(b.len(), 48 + 16 + 8);
        assert_eq!(b[37], DMAR_FLAG_INTR_REMAP, "INTR_REMAP, no X2APIC_OPT_OUT");
        assert_eq!(
            u16::from_le_bytes([b[50], b[51]]),
            24,
            "DRHD length with the scope"
        );
        assert_eq!(b[52], DRHD_FLAG_INCLUDE_PCI_ALL);
        // IOAPIC scope: type 3, length 8, reserved, enumeration ID 0, bus 0xff, path 00.0.
        assert_eq!(&b[64..72], &[SCOPE_IOAPIC, 8, 0, 0, 0, 0xff, 0, 0]);
    }
}
