//! The MADT: one local APIC per vCPU (a Processor Local x2APIC structure for APIC IDs 255 and
//! up, which only x2APIC reaches), the IOAPIC, ISA interrupt source overrides and the LINT1 NMI
//! (ACPI 6.5, 5.2.12).

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::x86_64::layout::{IOAPIC_ID, IOAPIC_START, LAPIC_START, PIT_GSI};

/// MADT flags bit 0: the platform also has dual 8259 PICs.
pub const PCAT_COMPAT: u32 = 1;

/// Interrupt Source Override (type 2, ACPI 5.2.12.5).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct InterruptSourceOverride {
    /// 2.
    pub r#type: u8,
    /// 10.
    pub length: u8,
    /// 0: ISA.
    pub bus: u8,
    /// ISA IRQ.
    pub source: u8,
    /// The GSI it is wired to.
    pub gsi: U32,
    /// MPS INTI flags (polarity, trigger mode).
    pub flags: U16,
}

/// Local APIC NMI (type 4, ACPI 5.2.12.7).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct LocalApicNmi {
    /// 4.
    pub r#type: u8,
    /// 6.
    pub length: u8,
    /// 0xff: all processors.
    pub processor_uid: u8,
    /// MPS INTI flags.
    pub flags: U16,
    /// LINT pin.
    pub lint: u8,
}

/// Processor Local x2APIC (type 9, ACPI 5.2.12.12).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ProcessorLocalX2Apic {
    /// 9.
    pub r#type: u8,
    /// 16.
    pub length: u8,
    /// Reserved, zero.
    pub reserved: U16,
    /// The x2APIC ID.
    pub x2apic_id: U32,
    /// Bit 0: enabled.
    pub flags: U32,
    /// ACPI processor UID.
    pub processor_uid: U32,
}

/// Local x2APIC NMI (type 0xa, ACPI 5.2.12.13).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct LocalX2ApicNmi {
    /// 0xa.
    pub r#type: u8,
    /// 12.
    pub length: u8,
    /// MPS INTI flags.
    pub flags: U16,
    /// 0xffff_ffff: all processors.
    pub processor_uid: U32,
    /// LINT pin.
    pub lint: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
}

/// The first APIC ID that needs a Processor Local x2APIC structure (255 is the xAPIC
/// broadcast ID, so the 8-bit structure stops at 254).
pub const FIRST_X2APIC_ID: u16 = 255;

/// Builds the MADT for `nr_cpus` vCPUs with APIC IDs 0..nr_cpus (processor UID = APIC ID) and
/// one IOAPIC (ID [`IOAPIC_ID`], the in-kernel IOAPIC's reset value, as QEMU reports it; GSI
/// base 0). IRQ0 (the PIT) is routed to GSI 2, as on every PC. With x2APIC entries the LINT1 NMI
/// is also given for them.
pub fn madt(nr_cpus: u16) -> Sdt {
    let mut table = Sdt::new(*b"APIC", 44, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.write_u32(36, LAPIC_START as u32);
    table.write_u32(40, PCAT_COMPAT);
    for cpu in 0..nr_cpus {
        match u8::try_from(cpu) {
            Ok(id) if cpu < FIRST_X2APIC_ID => table
                .append_slice(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).as_bytes()),
            _ => table.append(ProcessorLocalX2Apic {
                r#type: 9,
                length: 16,
                reserved: 0.into(),
                x2apic_id: u32::from(cpu).into(),
                flags: 1.into(),
                processor_uid: u32::from(cpu).into(),
            }),
        }
    }
    table.append_slice(IoApic::new(IOAPIC_ID, IOAPIC_START as u32, 0).as_bytes());
    table.append(InterruptSourceOverride {
        r#type: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: PIT_GSI.into(),
        flags: 0.into(),
    });
    table.append(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff,
        flags: 0.into(),
        lint: 1,
    });
    if nr_cpus > FIRST_X2APIC_ID {
        table.append(LocalX2ApicNmi {
            r#type: 0xa,
            length: 12,
            flags: 0.into(),
            processor_uid: u32::MAX.into(),
            lint: 1,
            reserved: [0; 3],
        });
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::tests::checksum_ok;

    #[test]
    fn structures_in_order() {
        let t = madt(2);
        let b = t.as_slice();
        assert!(checksum_ok(b));
        assert_eq!(&b[0..4], b"APIC");
        assert_eq!(b.len(), 44 + 2 * 8 + 12 + 10 + 6);
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(
            u32::from_le_bytes(b[40..44].try_into().unwrap()),
            PCAT_COMPAT
        );
        // Local APICs: type 0, length 8, uid, apic id, flags enabled.
        assert_eq!(&b[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[52..60], &[0, 8, 1, 1, 1, 0, 0, 0]);
        // IOAPIC: type 1, length 12, id 0, reserved, address, GSI base 0.
        assert_eq!(&b[60..64], &[1, 12, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(b[64..68].try_into().unwrap()),
            0xfec0_0000
        );
        assert_eq!(u32::from_le_bytes(b[68..72].try_into().unwrap()), 0);
        // ISO: IRQ0 -> GSI2.
        assert_eq!(&b[72..76], &[2, 10, 0, 0]);
        assert_eq!(u32::from_le_bytes(b[76..80].try_into().unwrap()), 2);
        // LAPIC NMI on LINT1.
        assert_eq!(&b[82..88], &[4, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn x2apic_entries_from_apic_id_255() {
        assert_eq!(size_of::<ProcessorLocalX2Apic>(), 16);
        assert_eq!(size_of::<LocalX2ApicNmi>(), 12);
        let t = madt(257);
        let b = t.as_slice();
        assert!(checksum_ok(b));
        let x2 = 44 + 255 * 8;
        assert_eq!(b.len(), x2 + 2 * 16 + 12 + 10 + 6 + 12);
        // The last 8-bit structure: APIC ID 254.
        assert_eq!(&b[x2 - 8..x2], &[0, 8, 254, 254, 1, 0, 0, 0]);
        // x2APIC: type 9, length 16, reserved, x2APIC ID, flags enabled, UID.
        assert_eq!(
            &b[x2..x2 + 16],
            &[9, 16, 0, 0, 255, 0, 0, 0, 1, 0, 0, 0, 255, 0, 0, 0]
        );
        assert_eq!(
            &b[x2 + 16..x2 + 32],
            &[9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
        );
        // IOAPIC, ISO and LAPIC NMI as before, then the x2APIC NMI for every UID on LINT1.
        let tail = x2 + 32;
        assert_eq!(&b[tail..tail + 4], &[1, 12, 0, 0]);
        assert_eq!(&b[tail + 22..tail + 28], &[4, 6, 0xff, 0, 0, 1]);
        assert_eq!(
            &b[tail + 28..tail + 40],
            &[0xa, 12, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]
        );
    }

    #[test]
    fn no_x2apic_structures_up_to_254_cpus() {
        let b = madt(254);
        let b = b.as_slice();
        assert_eq!(b.len(), 44 + 254 * 8 + 12 + 10 + 6);
        assert!(b[44..44 + 254 * 8].chunks(8).all(|s| s[0] == 0));
    }
}
