//! Context entries: 128-bit legacy (§9.3) and 256-bit scalable-mode (§9.4) formats.

use bitfield_struct::bitfield;

/// Size of a legacy context entry.
pub const LEGACY_CONTEXT_ENTRY_SIZE: u64 = 16;
/// Size of a scalable-mode context entry.
pub const SCALABLE_CONTEXT_ENTRY_SIZE: u64 = 32;

/// Legacy translation type (§9.3, TT field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// 00b: untranslated requests are translated through the second-stage table; ATS refused.
    Untranslated,
    /// 01b: as 00b, and translation requests (ATS) are allowed (needs ECAP.DT).
    DeviceTlb,
    /// 10b: pass-through (needs ECAP.PT).
    PassThrough,
    /// 11b: reserved.
    Reserved,
}

impl TranslationType {
    const fn into_bits(self) -> u8 {
        match self {
            Self::Untranslated => 0,
            Self::DeviceTlb => 1,
            Self::PassThrough => 2,
            Self::Reserved => 3,
        }
    }
    const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Untranslated,
            1 => Self::DeviceTlb,
            2 => Self::PassThrough,
            _ => Self::Reserved,
        }
    }
}

/// Legacy context entry, bits 63:0 (§9.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct LegacyContextLo {
    /// P: present.
    pub present: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// TT: translation type.
    #[bits(2)]
    pub tt: TranslationType,
    #[bits(8)]
    reserved: u8,
    /// SSPTPTR: second-stage page-table pointer (bits 63:12).
    #[bits(52)]
    pub ssptptr: u64,
}

/// Legacy context entry, bits 127:64 (§9.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct LegacyContextHi {
    /// AW: adjusted guest address width (1: 39-bit, 2: 48-bit, 3: 57-bit).
    #[bits(3)]
    pub aw: u8,
    /// Bits 70:67, ignored.
    #[bits(4)]
    pub ignored: u8,
    reserved7: bool,
    /// DID: domain identifier.
    pub did: u16,
    #[bits(40)]
    reserved: u64,
}

/// A legacy context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyContextEntry {
    /// Bits 63:0.
    pub lo: LegacyContextLo,
    /// Bits 127:64.
    pub hi: LegacyContextHi,
}

impl LegacyContextEntry {
    /// Decodes an entry from its two quadwords.
    pub fn from_qwords(lo: u64, hi: u64) -> Self {
        Self {
            lo: LegacyContextLo::from_bits(lo),
            hi: LegacyContextHi::from_bits(hi),
        }
    }
    /// Second-stage table guest-physical address.
    pub fn second_stage_table(self) -> u64 {
        self.lo.ssptptr() << 12
    }
    /// Whether any reserved bit is set (fault reason 0x0A, "reserved field set").
    pub fn reserved_set(self) -> bool {
        self.lo.reserved() != 0 || self.hi.reserved7() || self.hi.reserved() != 0
    }
}

/// Scalable-mode context entry, bits 63:0 (§9.4).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ScalableContextLo {
    /// P: present.
    pub present: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// DTE: device-TLB enable.
    pub dte: bool,
    /// PASIDE: PASID enable (requests with PASID allowed).
    pub paside: bool,
    /// PRE: page request enable.
    pub pre: bool,
    #[bits(4)]
    reserved: u8,
    /// PDTS: PASID directory size, 2^(PDTS + 7) entries.
    #[bits(3)]
    pub pdts: u8,
    /// PASIDDIRPTR: PASID directory pointer (bits 63:12).
    #[bits(52)]
    pub pasid_dir_ptr: u64,
}

/// Scalable-mode context entry, bits 127:64 (§9.4).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ScalableContextHi {
    /// RID_PASID: PASID used for requests without PASID.
    #[bits(20)]
    pub rid_pasid: u32,
    /// RID_PRIV: requests without PASID are treated as supervisor requests.
    pub rid_priv: bool,
    #[bits(43)]
    reserved: u64,
}

/// A scalable-mode context entry (256 bits; bits 255:128 are reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalableContextEntry {
    /// Bits 63:0.
    pub lo: ScalableContextLo,
    /// Bits 127:64.
    pub hi: ScalableContextHi,
    /// Bits 255:128, all reserved.
    pub upper: [u64; 2],
}

impl ScalableContextEntry {
    /// Decodes an entry from its four quadwords.
    pub fn from_qwords(q: [u64; 4]) -> Self {
        Self {
            lo: ScalableContextLo::from_bits(q[0]),
            hi: ScalableContextHi::from_bits(q[1]),
            upper: [q[2], q[3]],
        }
    }
    /// PASID directory guest-physical address.
    pub fn pasid_dir(self) -> u64 {
        self.lo.pasid_dir_ptr() << 12
    }
    /// Number of entries in the PASID directory.
    pub fn pasid_dir_entries(self) -> u32 {
        1 << (u32::from(self.lo.pdts()) + 7)
    }
    /// Whether any reserved bit is set (fault reason 0x42).
    pub fn reserved_set(self) -> bool {
        self.lo.reserved() != 0 || self.hi.reserved() != 0 || self.upper != [0, 0]
    }
}
