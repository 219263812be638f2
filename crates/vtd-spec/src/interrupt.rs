//! Interrupt remapping formats (chapter 5, §9.10, §11.4.12.1): the interrupt remapping table
//! address register, the 128-bit interrupt remapping table entry (IRTE), and the two formats
//! of an interrupt request's address and data (compatibility, remappable).
//!
//! ```text
//!  MSI address (remappable, §5.1.2.2)          IRTA_REG (§11.4.12.1)
//!  31:20 FEEh · 19:5 handle[14:0] · 4 format=1  63:12 table · 11 EIME · 3:0 S (2^(S+1) entries)
//!  3 SHV · 2 handle[15]                                 │
//!  MSI data: 15:0 subhandle (when SHV), 31:16 reserved  │
//!        └─► interrupt_index = handle (+ subhandle) ──► IRTE at table + 16·index (§9.10)
//!                                                        ├─ P, FPD, DM, RH, TM, DLM, AVAIL, IM
//!                                                        ├─ vector, destination
//!                                                        └─ SID, SQ, SVT (source validation)
//! ```
//!
//! Every bit pattern decodes; the reserved-bit and source checks are explicit methods so the
//! behaviour code reports the spec's fault (0x20-0x27, see [`crate::fault::FaultReason`]).

use crate::SourceId;
use bitfield_struct::bitfield;

/// Size of an IRTE in bytes.
pub const IRTE_SIZE: u64 = 16;

/// The interrupt address range's fixed high bits: address bits 31:20 of every interrupt
/// request are FEEh (§5.1.2).
pub const INTERRUPT_ADDRESS_BASE: u32 = 0xfee;

/// Interrupt remapping table address register (IRTA_REG, §11.4.12.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Irta {
    /// S: the table has 2^(S+1) entries.
    #[bits(4)]
    pub s: u8,
    #[bits(7)]
    __: u8,
    /// EIME: extended interrupt mode enable (x2APIC, 32-bit destinations); only with ECAP.EIM.
    pub eime: bool,
    /// IRTA: table address, 4 KiB aligned (bits 63:12).
    #[bits(52)]
    pub irta: u64,
}

impl Irta {
    /// The bits software can write: S, EIME (when `eim` is offered) and the address.
    pub fn writable_mask(eim: bool) -> u64 {
        Self::new()
            .with_s(0xf)
            .with_eime(eim)
            .with_irta((1 << 52) - 1)
            .into_bits()
    }
    /// Table guest-physical address.
    pub fn table(self) -> u64 {
        self.irta() << 12
    }
    /// Number of entries: 2^(S+1), 2 to 65536.
    pub fn entries(self) -> u32 {
        2 << self.s()
    }
}

/// Source-validation type of an IRTE (SVT, §9.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// 00b: no requester-id verification.
    None,
    /// 01b: the requester id must equal SID, with the function bits SQ says to ignore.
    RequesterId {
        /// SID.
        sid: u16,
        /// SQ: 0 compare all 16 bits, 1 ignore bit 2, 2 ignore bits 2:1, 3 ignore bits 2:0.
        sq: u8,
    },
    /// 10b: the requester's bus must lie in `[first, last]` (SID bits 15:8 and 7:0).
    BusRange {
        /// Start bus (SID bits 15:8).
        first: u8,
        /// End bus (SID bits 7:0).
        last: u8,
    },
    /// 11b: reserved.
    Reserved,
}

impl SourceValidation {
    /// Whether a request from `requester` passes (a reserved SVT passes nothing).
    pub fn allows(self, requester: SourceId) -> bool {
        match self {
            Self::None => true,
            Self::RequesterId { sid, sq } => {
                let ignore: u16 = match sq & 3 {
                    0 => 0,
                    1 => 0b100,
                    2 => 0b110,
                    _ => 0b111,
                };
                requester.0 & !ignore == sid & !ignore
            }
            Self::BusRange { first, last } => (first..=last).contains(&requester.bus()),
            Self::Reserved => false,
        }
    }
}

/// IRTE bits 63:0, remapped format (IM = 0, §9.10).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IrteLo {
    /// P: present.
    pub present: bool,
    /// FPD: fault processing disable (faults through this entry are not recorded).
    pub fpd: bool,
    /// DM: destination mode (0 physical, 1 logical).
    pub dm: bool,
    /// RH: redirection hint.
    pub rh: bool,
    /// TM: trigger mode (0 edge, 1 level).
    pub tm: bool,
    /// DLM: delivery mode (000 fixed, 001 lowest priority, 010 SMI, 100 NMI, 101 INIT,
    /// 111 ExtINT).
    #[bits(3)]
    pub dlm: u8,
    /// AVAIL: available to software, ignored by hardware.
    #[bits(4)]
    pub avail: u8,
    #[bits(3)]
    rsvd_14_12: u8,
    /// IM: IRTE mode, 1 = posted format (only with CAP.PI; reserved otherwise).
    pub im: bool,
    /// V: vector.
    pub vector: u8,
    rsvd_31_24: u8,
    /// DST: destination id. xAPIC mode (EIME = 0): the 8-bit APIC id in bits 15:8, bits 7:0
    /// and 31:16 reserved; x2APIC mode (EIME = 1): all 32 bits.
    pub dst: u32,
}

/// IRTE bits 127:64 (§9.10).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IrteHi {
    /// SID: source id to validate against (or the bus range for SVT = 10b).
    pub sid: u16,
    /// SQ: source-id qualifier.
    #[bits(2)]
    pub sq: u8,
    /// SVT: source validation type.
    #[bits(2)]
    pub svt: u8,
    #[bits(44)]
    rsvd_127_84: u64,
}

/// An interrupt remapping table entry as read from guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    /// Bits 63:0.
    pub lo: IrteLo,
    /// Bits 127:64.
    pub hi: IrteHi,
}

/// DLM encodings §9.10 reserves: 011b and 110b. An entry using one is malformed like one with a
/// reserved bit set, so it is refused with fault 0x24 rather than handed to the LAPICs.
const RESERVED_DELIVERY_MODES: [u8; 2] = [0b011, 0b110];

/// DST bits reserved in xAPIC mode: 7:0 and 31:16 (§9.10).
const XAPIC_DST_RESERVED: u32 = 0xffff_00ff;

impl Irte {
    /// Decodes the two quadwords of an entry.
    pub fn from_words(words: [u64; 2]) -> Self {
        Self {
            lo: IrteLo::from_bits(words[0]),
            hi: IrteHi::from_bits(words[1]),
        }
    }
    /// The two quadwords.
    pub fn into_words(self) -> [u64; 2] {
        [self.lo.into_bits(), self.hi.into_bits()]
    }
    /// Whether a present entry has a reserved field set (fault 0x24) under extended interrupt
    /// mode `eime`: bits 14:12, 31:24 and 127:84; IM (posted format, no CAP.PI); the reserved
    /// encodings of SVT (11b) and DLM (011b, 110b); and in xAPIC mode the DST bits outside 15:8.
    pub fn reserved_set(self, eime: bool) -> bool {
        let (lo, hi) = (self.lo, self.hi);
        lo.rsvd_14_12() != 0
            || RESERVED_DELIVERY_MODES.contains(&lo.dlm())
            || lo.rsvd_31_24() != 0
            || hi.rsvd_127_84() != 0
            || lo.im()
            || hi.svt() == 3
            || (!eime && lo.dst() & XAPIC_DST_RESERVED != 0)
    }
    /// The destination APIC id: 32 bits with `eime`, else the 8 bits of DST 15:8.
    pub fn destination(self, eime: bool) -> u32 {
        if eime {
            self.lo.dst()
        } else {
            (self.lo.dst() >> 8) & 0xff
        }
    }
    /// How requests through this entry are validated (SVT, SQ, SID).
    pub fn source_validation(self) -> SourceValidation {
        let sid = self.hi.sid();
        match self.hi.svt() {
            0 => SourceValidation::None,
            1 => SourceValidation::RequesterId {
                sid,
                sq: self.hi.sq(),
            },
            2 => SourceValidation::BusRange {
                first: (sid >> 8) as u8,
                last: sid as u8,
            },
            _ => SourceValidation::Reserved,
        }
    }
}

/// The low 32 bits of an interrupt request's address (§5.1.2.1 compatibility, §5.1.2.2
/// remappable); bits 63:32 of an interrupt request are zero.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct InterruptAddress {
    /// Bits 1:0: don't care.
    #[bits(2)]
    pub ignored: u8,
    /// Remappable: handle bit 15. Compatibility: DM.
    pub handle_15: bool,
    /// Remappable: SHV, the data carries a subhandle. Compatibility: RH.
    pub shv: bool,
    /// Interrupt format: 1 remappable, 0 compatibility.
    pub remappable: bool,
    /// Remappable: handle bits 14:0. Compatibility: bits 11:5 reserved / extended destination
    /// and 19:12 the destination id.
    #[bits(15)]
    pub handle_14_0: u16,
    /// Must be FEEh ([`INTERRUPT_ADDRESS_BASE`]).
    #[bits(12)]
    pub base: u16,
}

impl InterruptAddress {
    /// The 16-bit interrupt handle of a remappable-format address.
    pub fn handle(self) -> u16 {
        (u16::from(self.handle_15()) << 15) | self.handle_14_0()
    }
    /// The remappable-format address of `handle`, with `shv`.
    pub fn remappable_for(handle: u16, shv: bool) -> Self {
        Self::new()
            .with_base(INTERRUPT_ADDRESS_BASE as u16)
            .with_remappable(true)
            .with_shv(shv)
            .with_handle_15(handle & 0x8000 != 0)
            .with_handle_14_0(handle & 0x7fff)
    }
    /// The interrupt_index of a remappable request with message data `data` (§5.1.3):
    /// handle, plus the subhandle in data bits 15:0 when SHV. Up to 2^17 - 2.
    pub fn interrupt_index(self, data: u32) -> u32 {
        let subhandle = if self.shv() { data & 0xffff } else { 0 };
        u32::from(self.handle()) + subhandle
    }
}

/// Data bits 31:16 are reserved in a remappable-format request (§5.1.2.2; fault 0x20).
pub const REMAPPABLE_DATA_RESERVED: u32 = 0xffff_0000;

/// A compatibility-format interrupt message (§5.1.2.1), the form a remapped interrupt is
/// delivered in. Destinations wider than 8 bits (x2APIC) go in address bits 63:40, where
/// KVM's `KVM_CAP_X2APIC_API` reads destination bits 31:8 (MSI address_hi bits 31:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompatibilityMessage {
    /// Destination APIC id.
    pub destination: u32,
    /// DM: destination mode (1 logical).
    pub dm: bool,
    /// RH: redirection hint.
    pub rh: bool,
    /// Vector.
    pub vector: u8,
    /// Delivery mode.
    pub dlm: u8,
    /// Trigger mode (1 level).
    pub tm: bool,
}

impl CompatibilityMessage {
    /// The message an IRTE describes, with its destination read as `eime` says.
    pub fn of(irte: Irte, eime: bool) -> Self {
        Self {
            destination: irte.destination(eime),
            dm: irte.lo.dm(),
            rh: irte.lo.rh(),
            vector: irte.lo.vector(),
            dlm: irte.lo.dlm(),
            tm: irte.lo.tm(),
        }
    }
    /// FEE0_0000h | destination 7:0 in 19:12 | RH in 3 | DM in 2, and destination 31:8 in
    /// bits 63:40.
    pub fn address(self) -> u64 {
        let low = InterruptAddress::new()
            .with_base(INTERRUPT_ADDRESS_BASE as u16)
            .with_handle_14_0(((self.destination & 0xff) << 7) as u16)
            .with_shv(self.rh)
            .with_handle_15(self.dm);
        u64::from(low.into_bits()) | (u64::from(self.destination >> 8) << 40)
    }
    /// Vector in 7:0, delivery mode in 10:8, trigger mode in 15 and, for level, level-assert
    /// in 14.
    pub fn data(self) -> u32 {
        u32::from(self.vector)
            | (u32::from(self.dlm & 7) << 8)
            | (u32::from(self.tm) << 14)
            | (u32::from(self.tm) << 15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irta_sizes_and_address() {
        let r = Irta::from_bits(0x1234_5000 | (1 << 11) | 0xf);
        assert_eq!(
            (r.table(), r.entries(), r.eime()),
            (0x1234_5000, 65536, true)
        );
        assert_eq!(Irta::new().entries(), 2);
        assert_eq!(Irta::writable_mask(false) & (1 << 11), 0);
        assert_eq!(Irta::writable_mask(true) & 0x7f0, 0, "bits 10:4 reserved");
    }

    /// Linux's `struct irte` and `MSI_ADDR_IR_*`: present, DM at 2, RH at 3, TM at 4, DLM at
    /// 7:5, vector at 23:16, destination at 63:32, SID/SQ/SVT at 79:64/81:80/83:82; handle
    /// bits 14:0 at 19:5, bit 15 at 2, SHV at 3, format at 4.
    #[test]
    fn layouts_match_the_linux_driver() {
        let lo = (1 | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (0x31 << 16)) as u64
            | (0x0300u64 << 32);
        let hi = 0x0010 | (2 << 16) | (1 << 18);
        let e = Irte::from_words([lo, hi]);
        assert!(e.lo.present() && e.lo.dm() && e.lo.rh() && e.lo.tm() && !e.lo.fpd());
        assert_eq!((e.lo.dlm(), e.lo.vector()), (1, 0x31));
        assert_eq!((e.destination(false), e.destination(true)), (3, 0x300));
        assert_eq!(
            e.source_validation(),
            SourceValidation::RequesterId { sid: 0x10, sq: 2 }
        );
        assert!(!e.reserved_set(false) && !e.reserved_set(true));
        assert_eq!(e.into_words(), [lo, hi]);
        let a = InterruptAddress::remappable_for(0x8003, true);
        assert_eq!(
            a.into_bits(),
            0xfee0_0000 | (3 << 5) | (1 << 4) | (1 << 3) | (1 << 2)
        );
        assert_eq!((a.handle(), a.interrupt_index(2)), (0x8003, 0x8005));
        assert_eq!(a.with_shv(false).interrupt_index(2), 0x8003);
    }

    #[test]
    fn compatibility_messages_carry_wide_destinations_high() {
        let lo = IrteLo::new()
            .with_present(true)
            .with_vector(0x41)
            .with_dlm(1)
            .with_tm(true)
            .with_rh(true)
            .with_dm(true)
            .with_dst(0x0001_2345);
        let e = Irte::from_words([lo.into_bits(), 0]);
        let m = CompatibilityMessage::of(e, true);
        assert_eq!(m.address(), 0xfee4_500c | (0x123 << 40));
        assert_eq!(m.data(), 0x41 | (1 << 8) | (1 << 14) | (1 << 15));
        let x = CompatibilityMessage::of(e.with_dst_for_test(0x0700), false);
        assert_eq!((x.address(), x.destination), (0xfee0_700c, 7));
        let edge = CompatibilityMessage { tm: false, ..m };
        assert_eq!(edge.data(), 0x141);
    }

    impl Irte {
        fn with_dst_for_test(self, dst: u32) -> Self {
            Self {
                lo: self.lo.with_dst(dst),
                ..self
            }
        }
    }

    #[test]
    fn reserved_bits_depend_on_the_interrupt_mode() {
        let present = IrteLo::new().with_present(true);
        let e = |lo: IrteLo, hi: u64| Irte::from_words([lo.into_bits(), hi]);
        assert!(e(present.with_dst(0x1_0000), 0).reserved_set(false));
        assert!(!e(present.with_dst(0x1_0000), 0).reserved_set(true));
        assert!(e(present.with_dst(0x01), 0).reserved_set(false));
        assert!(e(present.with_im(true), 0).reserved_set(true), "posted");
        assert!(e(present.with_rsvd_14_12(1), 0).reserved_set(true));
        assert!(e(present.with_rsvd_31_24(1), 0).reserved_set(true));
        assert!(e(present, 1 << 20).reserved_set(true), "bit 84");
        assert!(e(present, 3 << 18).reserved_set(true), "SVT 11b");
        for dlm in 0..8 {
            let reserved = dlm == 0b011 || dlm == 0b110;
            let entry = e(present.with_dlm(dlm), 0);
            assert_eq!(entry.reserved_set(true), reserved, "DLM {dlm:03b}");
        }
        assert!(!e(present.with_avail(0xf), 0).reserved_set(false));
    }

    #[test]
    fn source_validation_types() {
        let sid = SourceId::new(3, 4, 5);
        let rid = |sq| SourceValidation::RequesterId { sid: sid.0, sq };
        let other_fn = SourceId::new(3, 4, 1);
        assert!(rid(0).allows(sid) && !rid(0).allows(other_fn));
        assert!(rid(1).allows(other_fn), "SQ 1 ignores function bit 2");
        assert!(!rid(1).allows(SourceId::new(3, 4, 4)));
        assert!(rid(2).allows(SourceId::new(3, 4, 7)) && rid(3).allows(SourceId::new(3, 4, 0)));
        assert!(!rid(3).allows(SourceId::new(3, 5, 5)));
        let bus = SourceValidation::BusRange { first: 2, last: 4 };
        assert!(bus.allows(sid) && bus.allows(SourceId::new(2, 0, 0)));
        assert!(!bus.allows(SourceId::new(5, 0, 0)) && !bus.allows(SourceId::new(1, 0, 0)));
        assert!(SourceValidation::None.allows(sid));
        assert!(!SourceValidation::Reserved.allows(sid));
    }
}
