//! Invalidation descriptors (§6.5.2): 128 bits, or 256 bits when IQA.DW is set.
//!
//! The type is seven bits split over qw0[3:0] and qw0[11:9]. [`Descriptor::decode`] turns any
//! four quadwords into a typed value; checking reserved fields is [`Descriptor::reserved_set`].

use bitfield_struct::bitfield;

/// Descriptor type codes (§6.5.2).
pub mod kind {
    /// Context-cache invalidate.
    pub const CONTEXT_CACHE: u8 = 1;
    /// IOTLB invalidate.
    pub const IOTLB: u8 = 2;
    /// Device-TLB invalidate.
    pub const DEVICE_TLB: u8 = 3;
    /// Interrupt entry cache invalidate.
    pub const IEC: u8 = 4;
    /// Invalidation wait.
    pub const WAIT: u8 = 5;
    /// PASID-based IOTLB invalidate.
    pub const PASID_IOTLB: u8 = 6;
    /// PASID-cache invalidate.
    pub const PASID_CACHE: u8 = 7;
    /// PASID-based device-TLB invalidate.
    pub const PASID_DEVICE_TLB: u8 = 8;
    /// Page group response.
    pub const PAGE_GROUP_RESPONSE: u8 = 9;
}

/// The seven-bit type of a descriptor.
pub fn descriptor_type(qw0: u64) -> u8 {
    ((qw0 & 0xf) | ((qw0 >> 5) & 0x70)) as u8
}

/// Context-cache invalidate descriptor, qw0 (§6.5.2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ContextCacheDesc {
    #[bits(4)]
    type_lo: u8,
    /// G: granularity (1 global, 2 domain-selective, 3 device-selective).
    #[bits(2)]
    pub g: u8,
    #[bits(3)]
    rsvd_8_6: u8,
    #[bits(3)]
    type_hi: u8,
    #[bits(4)]
    rsvd_15_12: u8,
    /// DID: domain id (domain- and device-selective).
    pub did: u16,
    /// SID: source id (device-selective).
    pub sid: u16,
    /// FM: function mask (device-selective): low bits of the devfn ignored.
    #[bits(2)]
    pub fm: u8,
    #[bits(14)]
    rsvd_63_50: u16,
}

/// IOTLB invalidate descriptor, qw0 (§6.5.2.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IotlbDesc {
    #[bits(4)]
    type_lo: u8,
    /// G: granularity (1 global, 2 domain-selective, 3 page-selective within domain).
    #[bits(2)]
    pub g: u8,
    /// DW: drain writes.
    pub dw: bool,
    /// DR: drain reads.
    pub dr: bool,
    rsvd_8: bool,
    #[bits(3)]
    type_hi: u8,
    #[bits(4)]
    rsvd_15_12: u8,
    /// DID: domain id.
    pub did: u16,
    #[bits(32)]
    rsvd_63_32: u32,
}

/// Address quadword shared by IOTLB and PASID-IOTLB descriptors (qw1, §6.5.2.2, §6.5.2.4).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct InvAddress {
    /// AM: address mask, the invalidation covers 2^AM pages.
    #[bits(6)]
    pub am: u8,
    /// IH: invalidation hint, only leaf entries changed.
    pub ih: bool,
    #[bits(5)]
    rsvd_11_7: u8,
    /// ADDR: page number (bits 63:12).
    #[bits(52)]
    pub addr: u64,
}

impl InvAddress {
    /// Address of the first byte, aligned down to the 2^AM-page range.
    pub fn base(self) -> u64 {
        let pages_mask = 1u64
            .checked_shl(u32::from(self.am()))
            .map_or(u64::MAX, |v| v - 1);
        (self.addr() & !pages_mask) << 12
    }
    /// Number of 4 KiB pages covered (saturating at 2^52).
    pub fn pages(self) -> u64 {
        1u64 << self.am().min(52)
    }
}

/// Device-TLB invalidate descriptor, qw0 (§6.5.2.5).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DeviceTlbDesc {
    #[bits(4)]
    type_lo: u8,
    #[bits(5)]
    rsvd_8_4: u8,
    #[bits(3)]
    type_hi: u8,
    /// PFSID bits 3:0.
    #[bits(4)]
    pub pfsid_lo: u8,
    /// Invalidate queue depth of the device.
    #[bits(5)]
    pub qdep: u8,
    #[bits(11)]
    rsvd_31_21: u16,
    /// SID: requester id of the device.
    pub sid: u16,
    #[bits(4)]
    rsvd_51_48: u8,
    /// PFSID bits 15:4.
    #[bits(12)]
    pub pfsid_hi: u16,
}

/// Device-TLB invalidate descriptor, qw1 (§6.5.2.5).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DeviceTlbAddress {
    /// S: size; the range is encoded by trailing one bits of ADDR.
    pub s: bool,
    #[bits(11)]
    rsvd_11_1: u16,
    /// ADDR (bits 63:12).
    #[bits(52)]
    pub addr: u64,
}

/// Interrupt entry cache invalidate descriptor, qw0 (§6.5.2.7).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IecDesc {
    #[bits(4)]
    type_lo: u8,
    /// G: 0 global, 1 index-selective.
    pub g: bool,
    #[bits(4)]
    rsvd_8_5: u8,
    #[bits(3)]
    type_hi: u8,
    #[bits(15)]
    rsvd_26_12: u16,
    /// IM: index mask.
    #[bits(5)]
    pub im: u8,
    /// IIDX: interrupt index.
    pub iidx: u16,
    #[bits(16)]
    rsvd_63_48: u16,
}

/// Invalidation wait descriptor, qw0 (§6.5.2.8).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct WaitDesc {
    #[bits(4)]
    type_lo: u8,
    /// IF: raise the invalidation completion interrupt.
    pub interrupt: bool,
    /// SW: write the status data to the status address.
    pub sw: bool,
    /// FN: fence — later descriptors wait for earlier ones.
    pub fence: bool,
    /// PD: page-request drain.
    pub pd: bool,
    rsvd_8: bool,
    #[bits(3)]
    type_hi: u8,
    #[bits(20)]
    rsvd_31_12: u32,
    /// Status data written with SW.
    pub status_data: u32,
}

/// Invalidation wait descriptor, qw1: the status address (§6.5.2.8).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct WaitAddress {
    #[bits(2)]
    rsvd_1_0: u8,
    /// Status address bits 63:2.
    #[bits(62)]
    pub addr: u64,
}

impl WaitAddress {
    /// The dword-aligned status address.
    pub fn address(self) -> u64 {
        self.addr() << 2
    }
}

/// PASID-based IOTLB invalidate descriptor, qw0 (§6.5.2.4).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidIotlbDesc {
    #[bits(4)]
    type_lo: u8,
    /// G: granularity (2 PASID-selective, 3 page-selective within PASID; 0/1 reserved).
    #[bits(2)]
    pub g: u8,
    #[bits(3)]
    rsvd_8_6: u8,
    #[bits(3)]
    type_hi: u8,
    #[bits(4)]
    rsvd_15_12: u8,
    /// DID: domain id.
    pub did: u16,
    /// PASID.
    #[bits(20)]
    pub pasid: u32,
    #[bits(12)]
    rsvd_63_52: u16,
}

/// PASID-cache invalidate descriptor, qw0 (§6.5.2.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidCacheDesc {
    #[bits(4)]
    type_lo: u8,
    /// G: granularity (0 domain-selective, 1 PASID-selective, 3 global; 2 reserved).
    #[bits(2)]
    pub g: u8,
    #[bits(3)]
    rsvd_8_6: u8,
    #[bits(3)]
    type_hi: u8,
    #[bits(4)]
    rsvd_15_12: u8,
    /// DID: domain id.
    pub did: u16,
    /// PASID.
    #[bits(20)]
    pub pasid: u32,
    #[bits(12)]
    rsvd_63_52: u16,
}

/// PASID-based device-TLB invalidate descriptor, qw0 (§6.5.2.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidDeviceTlbDesc {
    #[bits(4)]
    type_lo: u8,
    /// Invalidate queue depth.
    #[bits(5)]
    pub qdep: u8,
    #[bits(3)]
    type_hi: u8,
    /// PFSID bits 3:0.
    #[bits(4)]
    pub pfsid_lo: u8,
    /// SID: requester id.
    pub sid: u16,
    /// PASID.
    #[bits(20)]
    pub pasid: u32,
    /// PFSID bits 15:4.
    #[bits(12)]
    pub pfsid_hi: u16,
}

/// PASID-based device-TLB invalidate descriptor, qw1 (§6.5.2.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidDeviceTlbAddress {
    /// G: global (all PASIDs).
    pub global: bool,
    #[bits(10)]
    rsvd_10_1: u16,
    /// S: size; the range is encoded by trailing one bits of ADDR.
    pub s: bool,
    /// ADDR (bits 63:12).
    #[bits(52)]
    pub addr: u64,
}

/// Page group response descriptor, qw0 (§6.5.2.10).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PageGroupResponseDesc {
    #[bits(4)]
    type_lo: u8,
    /// PP: PASID present.
    pub pp: bool,
    #[bits(4)]
    rsvd_8_5: u8,
    #[bits(3)]
    type_hi: u8,
    /// Response code.
    #[bits(4)]
    pub rc: u8,
    /// RID: requester id.
    pub rid: u16,
    /// PASID.
    #[bits(20)]
    pub pasid: u32,
    #[bits(12)]
    rsvd_63_52: u16,
}

/// A decoded invalidation descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Context-cache invalidate.
    ContextCache(ContextCacheDesc),
    /// IOTLB invalidate.
    Iotlb(IotlbDesc, InvAddress),
    /// Device-TLB invalidate.
    DeviceTlb(DeviceTlbDesc, DeviceTlbAddress),
    /// Interrupt entry cache invalidate.
    Iec(IecDesc),
    /// Invalidation wait.
    Wait(WaitDesc, WaitAddress),
    /// PASID-based IOTLB invalidate.
    PasidIotlb(PasidIotlbDesc, InvAddress),
    /// PASID-cache invalidate.
    PasidCache(PasidCacheDesc),
    /// PASID-based device-TLB invalidate.
    PasidDeviceTlb(PasidDeviceTlbDesc, PasidDeviceTlbAddress),
    /// Page group response (qw1 kept raw).
    PageGroupResponse(PageGroupResponseDesc, u64),
    /// A type the architecture does not define.
    Unknown(u8),
}

impl Descriptor {
    /// Decodes a descriptor; `q[2]` and `q[3]` are zero for 128-bit descriptors.
    pub fn decode(q: [u64; 4]) -> Self {
        let (q0, q1) = (q[0], q[1]);
        match descriptor_type(q0) {
            kind::CONTEXT_CACHE => Self::ContextCache(ContextCacheDesc::from_bits(q0)),
            kind::IOTLB => Self::Iotlb(IotlbDesc::from_bits(q0), InvAddress::from_bits(q1)),
            kind::DEVICE_TLB => Self::DeviceTlb(
                DeviceTlbDesc::from_bits(q0),
                DeviceTlbAddress::from_bits(q1),
            ),
            kind::IEC => Self::Iec(IecDesc::from_bits(q0)),
            kind::WAIT => Self::Wait(WaitDesc::from_bits(q0), WaitAddress::from_bits(q1)),
            kind::PASID_IOTLB => {
                Self::PasidIotlb(PasidIotlbDesc::from_bits(q0), InvAddress::from_bits(q1))
            }
            kind::PASID_CACHE => Self::PasidCache(PasidCacheDesc::from_bits(q0)),
            kind::PASID_DEVICE_TLB => Self::PasidDeviceTlb(
                PasidDeviceTlbDesc::from_bits(q0),
                PasidDeviceTlbAddress::from_bits(q1),
            ),
            kind::PAGE_GROUP_RESPONSE => {
                Self::PageGroupResponse(PageGroupResponseDesc::from_bits(q0), q1)
            }
            other => Self::Unknown(other),
        }
    }

    /// Whether a reserved field of the descriptor (in its first two quadwords) is set.
    /// Quadwords 2 and 3 of a 256-bit descriptor are reserved for every type defined here and
    /// are checked by the caller.
    pub fn reserved_set(&self) -> bool {
        match *self {
            Self::ContextCache(d) => {
                d.rsvd_8_6() != 0 || d.rsvd_15_12() != 0 || d.rsvd_63_50() != 0
            }
            Self::Iotlb(d, a) => {
                d.rsvd_8() || d.rsvd_15_12() != 0 || d.rsvd_63_32() != 0 || a.rsvd_11_7() != 0
            }
            Self::DeviceTlb(d, a) => {
                d.rsvd_8_4() != 0
                    || d.rsvd_31_21() != 0
                    || d.rsvd_51_48() != 0
                    || a.rsvd_11_1() != 0
            }
            Self::Iec(d) => d.rsvd_8_5() != 0 || d.rsvd_26_12() != 0 || d.rsvd_63_48() != 0,
            Self::Wait(d, a) => d.rsvd_8() || d.rsvd_31_12() != 0 || a.rsvd_1_0() != 0,
            Self::PasidIotlb(d, a) => {
                d.rsvd_8_6() != 0
                    || d.rsvd_15_12() != 0
                    || d.rsvd_63_52() != 0
                    || a.rsvd_11_7() != 0
            }
            Self::PasidCache(d) => d.rsvd_8_6() != 0 || d.rsvd_15_12() != 0 || d.rsvd_63_52() != 0,
            Self::PasidDeviceTlb(_, a) => a.rsvd_10_1() != 0,
            Self::PageGroupResponse(d, _) => d.rsvd_8_5() != 0 || d.rsvd_63_52() != 0,
            Self::Unknown(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_linux_descriptors() {
        // PASID-IOTLB, page-selective within PASID: G=3, DID 2, PASID 0, AM 0, IH 1.
        let q0 = 6 | (3 << 4) | (2 << 16);
        let q1 = 0xffff_f000 | (1 << 6);
        match Descriptor::decode([q0, q1, 0, 0]) {
            Descriptor::PasidIotlb(d, a) => {
                assert_eq!((d.g(), d.did(), d.pasid()), (3, 2, 0));
                assert!(a.ih());
                assert_eq!(a.base(), 0xffff_f000);
                assert_eq!(a.pages(), 1);
            }
            other => panic!("decoded {other:?}"),
        }
        // Wait with SW, status data QI_DONE (2).
        let w = Descriptor::decode([5 | (1 << 5) | (2 << 32), 0x1000, 0, 0]);
        match w {
            Descriptor::Wait(d, a) => {
                assert!(d.sw() && !d.interrupt());
                assert_eq!(d.status_data(), 2);
                assert_eq!(a.address(), 0x1000);
            }
            other => panic!("decoded {other:?}"),
        }
        assert!(!w.reserved_set());
    }

    #[test]
    fn high_type_bits_and_reserved_fields() {
        assert_eq!(descriptor_type(1 << 9), 0x10);
        assert_eq!(
            Descriptor::decode([1 << 9, 0, 0, 0]),
            Descriptor::Unknown(0x10)
        );
        assert!(Descriptor::decode([1 | (1 << 60), 0, 0, 0]).reserved_set());
        assert!(Descriptor::decode([2, 1 << 8, 0, 0]).reserved_set());
    }

    #[test]
    fn address_mask_aligns_and_saturates() {
        let a = InvAddress::new().with_addr(0x12345).with_am(4);
        assert_eq!(a.base(), 0x12340 << 12);
        assert_eq!(a.pages(), 16);
        let all = InvAddress::new().with_am(63);
        assert_eq!(all.pages(), 1 << 52);
        assert_eq!(all.base(), 0);
    }
}
