//! The MADT: one local APIC per vCPU, the IOAPIC, ISA interrupt source overrides and the
//! LINT1 NMI (ACPI 6.5, 5.2.12).

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::x86_64::layout::{IOAPIC_START, LAPIC_START};

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

/// Builds the MADT for `nr_cpus` vCPUs with APIC IDs 0..nr_cpus and one IOAPIC (ID 0, the
/// in-kernel IOAPIC's reset value, as QEMU reports it; GSI base 0). IRQ0 (the PIT) is routed to GSI 2, as on every PC.
pub fn madt(nr_cpus: u8) -> Sdt {
    let mut table = Sdt::new(*b"APIC", 44, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.write_u32(36, LAPIC_START as u32);
    table.write_u32(40, PCAT_COMPAT);
    for cpu in 0..nr_cpus {
        table.append_slice(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled).as_bytes());
    }
    table.append_slice(IoApic::new(0, IOAPIC_START as u32, 0).as_bytes());
    table.append(InterruptSourceOverride {
        r#type: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2.into(),
        flags: 0.into(),
    });
    table.append(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff,
        flags: 0.into(),
        lint: 1,
    });
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
}
