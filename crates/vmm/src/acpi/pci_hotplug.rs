//! The DSDT's part of PCI hot-plug (see [`crate::hotplug`]): the register block as an
//! operation region in `\_SB.PCI0`, the `PCNT` method that turns its bitmaps into Notify
//! events, one ejectable slot device per hot-pluggable device number, and the Generic Event
//! Device whose interrupt runs `PCNT`.
//!
//! ```text
//!  \_SB.GED0 (ACPI0013, Interrupt GED_IRQ) ─ _EVT ─> \_SB.PCI0.PCNT
//!  \_SB.PCI0: OperationRegion PHPR (SystemIO, PCI_HOTPLUG_START, 12)
//!             Field { PCIU: UP, PCID: DOWN, B0EJ: EJECT }  (DWord access)
//!             PCNT: Local0 = PCIU, Local1 = PCID (under BLCK)
//!                   for each slot nn: If (Local0 & bit) Notify(SLnn, 1)   device check
//!                                     If (Local1 & bit) Notify(SLnn, 3)   eject request
//!             SLnn: _ADR = nn << 16, _SUN = nn, _EJ0: B0EJ = 1 << nn
//! ```

use acpi_tables::Aml;
use acpi_tables::aml::{
    Acquire, And, Device, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Interrupt, Local, Method, MethodCall, Mutex, Name, Notify, OpRegion, OpRegionSpace, Path,
    Release, ResourceTemplate, Store, ZERO,
};

use super::dsdt::Encoded;
use crate::arch::x86_64::layout::{GED_IRQ, PCI_HOTPLUG_START};
use crate::hotplug::{HOTPLUG_SLOTS, REGISTER_BLOCK_SIZE};

/// Notify value: re-enumerate the device (ACPI 6.5, 5.6.6 "Device Object Notifications").
const DEVICE_CHECK: u8 = 1;
/// Notify value: the OS should eject the device.
const EJECT_REQUEST: u8 = 3;

fn encode(aml: &dyn Aml) -> Encoded {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    Encoded(bytes)
}

/// The name of slot `slot`'s device object.
pub fn slot_name(slot: u8) -> String {
    format!("SL{slot:02X}")
}

fn slot_device(slot: u8) -> Encoded {
    let (bit, adr, sun) = (1u32 << slot, u32::from(slot) << 16, u32::from(slot));
    let acquire = Acquire::new("BLCK".into(), 0xffff);
    let target = Path::new("B0EJ");
    let store = Store::new(&target, &bit);
    let release = Release::new("BLCK".into());
    let eject = Method::new("_EJ0".into(), 1, false, vec![&acquire, &store, &release]);
    let adr = Name::new("_ADR".into(), &adr);
    let sun = Name::new("_SUN".into(), &sun);
    encode(&Device::new(
        slot_name(slot).as_str().into(),
        vec![&adr, &sun, &eject],
    ))
}

fn notify_method() -> Encoded {
    let (up, down) = (Local(0), Local(1));
    let mut body: Vec<Encoded> = vec![
        encode(&Acquire::new("BLCK".into(), 0xffff)),
        encode(&Store::new(&up, &Path::new("PCIU"))),
        encode(&Store::new(&down, &Path::new("PCID"))),
        encode(&Release::new("BLCK".into())),
    ];
    for slot in HOTPLUG_SLOTS {
        let bit = 1u32 << slot;
        let name = Path::new(&slot_name(slot));
        for (bits, value) in [(&up, DEVICE_CHECK), (&down, EJECT_REQUEST)] {
            body.push(encode(&If::new(
                &And::new(&ZERO, bits, &bit),
                vec![&Notify::new(&name, &value)],
            )));
        }
    }
    let children: Vec<&dyn Aml> = body.iter().map(|e| e as &dyn Aml).collect();
    encode(&Method::new("PCNT".into(), 0, false, children))
}

/// What `\_SB.PCI0` holds for hot-plug: the register region and field, the lock, `PCNT`, and
/// the slot devices.
pub fn pci0_children() -> Vec<u8> {
    let (base, size) = (PCI_HOTPLUG_START, REGISTER_BLOCK_SIZE);
    let region = OpRegion::new("PHPR".into(), OpRegionSpace::SystemIO, &base, &size);
    let field = acpi_tables::aml::Field::new(
        "PHPR".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
            FieldEntry::Named(*b"B0EJ", 32),
        ],
    );
    let mut aml = Vec::new();
    region.to_aml_bytes(&mut aml);
    field.to_aml_bytes(&mut aml);
    Mutex::new("BLCK".into(), 0).to_aml_bytes(&mut aml);
    notify_method().to_aml_bytes(&mut aml);
    for slot in HOTPLUG_SLOTS {
        slot_device(slot).to_aml_bytes(&mut aml);
    }
    aml
}

/// The Generic Event Device: an edge-triggered, active-high legacy line whose `_EVT` runs
/// `\_SB.PCI0.PCNT`.
pub(super) fn ged() -> Encoded {
    let irq = Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = ResourceTemplate::new(vec![&irq]);
    let call = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    // Arg0 (the GSI) is not looked at: the line carries only PCI hot-plug events.
    let evt = Method::new("_EVT".into(), 1, true, vec![&call]);
    encode(&Device::new(
        "GED0".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_CRS".into(), &crs),
            &evt,
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn the_region_and_field_describe_the_register_block() {
        let aml = pci0_children();
        // OperationRegion (ExtOp 0x80) PHPR, SystemIO (1), WordConst 0x0610, ByteConst 12.
        let port = PCI_HOTPLUG_START.to_le_bytes();
        assert_eq!(
            find(
                &aml,
                &[
                    0x5b, 0x80, b'P', b'H', b'P', b'R', 0x01, 0x0b, port[0], port[1], 0x0a, 12
                ]
            ),
            Some(0)
        );
        // Field flags: DWordAcc (3), NoLock, WriteAsZeroes (2 << 5); three 32-bit fields in
        // register order.
        let field = find(&aml, b"PHPR\x43").expect("the field on PHPR");
        let names = [&b"PCIU\x20"[..], b"PCID\x20", b"B0EJ\x20"];
        let at: Vec<usize> = names.iter().map(|n| find(&aml, n).unwrap()).collect();
        assert!(field < at[0] && at[0] + 5 == at[1] && at[1] + 5 == at[2]);
    }

    #[test]
    fn every_slot_has_adr_sun_and_ej0_writing_its_bit() {
        let aml = pci0_children();
        for slot in HOTPLUG_SLOTS {
            let name = slot_name(slot);
            let start = find(&aml, format!("{name}\x08_ADR").as_bytes())
                .unwrap_or_else(|| panic!("{name} with _ADR first"));
            let rest = &aml[start..];
            // _ADR = slot << 16 (a DWord), _SUN = slot (a Byte, or One for slot 1).
            let adr = (u32::from(slot) << 16).to_le_bytes();
            assert_eq!(
                &rest[9..14],
                &[0x0c, adr[0], adr[1], adr[2], adr[3]],
                "{name}"
            );
            assert_eq!(&rest[14..19], b"\x08_SUN", "{name}");
            let sun: &[u8] = if slot == 1 { &[0x01] } else { &[0x0a, slot] };
            assert_eq!(&rest[19..19 + sun.len()], sun, "{name}");
            // _EJ0 stores 1 << slot (a DWord constant, or Word/Byte when small) to B0EJ.
            let ej0 = find(rest, b"_EJ0").expect("_EJ0");
            let store = find(&rest[ej0..], b"\x70").expect("Store") + ej0;
            let bit = 1u32 << slot;
            let constant = {
                let mut v = Vec::new();
                bit.to_aml_bytes(&mut v);
                v
            };
            assert_eq!(&rest[store + 1..store + 1 + constant.len()], &constant[..]);
            assert_eq!(
                &rest[store + 1 + constant.len()..store + 5 + constant.len()],
                b"B0EJ",
                "{name}"
            );
        }
        assert!(
            find(&aml, b"SL00").is_none(),
            "the host bridge is not ejectable"
        );
        assert!(find(&aml, b"SL20").is_none());
    }

    #[test]
    fn pcnt_notifies_device_check_and_eject_request_per_slot() {
        let aml = pci0_children();
        let pcnt = find(&aml, b"PCNT").expect("PCNT");
        for slot in [1u8, 2, 17, 31] {
            let name = slot_name(slot);
            // Notify (0x86) SLnn, value: 1 is One (0x01), 3 is ByteConst (0x0a 0x03).
            let check = [&[0x86][..], name.as_bytes(), &[0x01]].concat();
            let eject = [&[0x86][..], name.as_bytes(), &[0x0a, 0x03]].concat();
            assert!(find(&aml[pcnt..], &check).is_some(), "{name} device check");
            assert!(find(&aml[pcnt..], &eject).is_some(), "{name} eject request");
        }
    }

    #[test]
    fn the_ged_is_acpi0013_on_its_line_and_calls_pcnt() {
        let Encoded(aml) = ged();
        assert!(find(&aml, b"\x08_HID\x0dACPI0013\x00").is_some());
        // Extended interrupt descriptor: consumer, edge, active high, exclusive, one GSI.
        let irq = [&[0x89, 6, 0, 0b0011, 1][..], &GED_IRQ.to_le_bytes()].concat();
        assert!(find(&aml, &irq).is_some());
        let evt = find(&aml, b"_EVT").expect("_EVT");
        // A root path of three segments: '\\', MultiNamePrefix (0x2f), count 3.
        assert!(find(&aml[evt..], b"\\\x2f\x03_SB_PCI0PCNT").is_some());
    }
}
