//! PASID directory entries (§9.5) and 512-bit PASID table entries (§9.6).
//!
//! A scalable-mode context entry points at a PASID directory; directory entry `pasid >> 6`
//! points at a PASID table page of 64 entries of 64 bytes, indexed by `pasid & 0x3f`.

use bitfield_struct::bitfield;

/// Size of a PASID directory entry.
pub const PASID_DIR_ENTRY_SIZE: u64 = 8;
/// Size of a PASID table entry.
pub const PASID_ENTRY_SIZE: u64 = 64;
/// PASID table entries per directory entry (one 4 KiB page).
pub const PASIDS_PER_TABLE: u32 = 64;

/// PASID directory entry (§9.5).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidDirEntry {
    /// P: present.
    pub present: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    #[bits(10)]
    reserved: u16,
    /// SMPTBLPTR: scalable-mode PASID table pointer (bits 63:12).
    #[bits(52)]
    pub table_ptr: u64,
}

impl PasidDirEntry {
    /// PASID table guest-physical address.
    pub fn table(self) -> u64 {
        self.table_ptr() << 12
    }
    /// Whether reserved bits 11:2 are set (fault reason 0x52).
    pub fn reserved_set(self) -> bool {
        self.reserved() != 0
    }
}

/// PASID-granular translation type (§9.6, PGTT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pgtt {
    /// 001b: first-stage translation only.
    FirstStage,
    /// 010b: second-stage translation only.
    SecondStage,
    /// 011b: nested (first stage over second stage).
    Nested,
    /// 100b: pass-through.
    PassThrough,
    /// Any other value (000b, 101b-111b): reserved.
    Reserved(u8),
}

impl Pgtt {
    const fn into_bits(self) -> u8 {
        match self {
            Self::FirstStage => 1,
            Self::SecondStage => 2,
            Self::Nested => 3,
            Self::PassThrough => 4,
            Self::Reserved(v) => v & 7,
        }
    }
    const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            1 => Self::FirstStage,
            2 => Self::SecondStage,
            3 => Self::Nested,
            4 => Self::PassThrough,
            v => Self::Reserved(v),
        }
    }
}

/// First-stage paging mode (§9.6, FSPM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStagePagingMode {
    /// 00b: 4-level paging (48-bit input addresses).
    Level4,
    /// 01b: 5-level paging (57-bit input addresses; needs CAP.FS5LP).
    Level5,
    /// 10b, 11b: reserved.
    Reserved(u8),
}

impl FirstStagePagingMode {
    const fn into_bits(self) -> u8 {
        match self {
            Self::Level4 => 0,
            Self::Level5 => 1,
            Self::Reserved(v) => v & 3,
        }
    }
    const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Level4,
            1 => Self::Level5,
            v => Self::Reserved(v),
        }
    }
    /// Number of paging levels, or `None` for a reserved encoding.
    pub fn levels(self) -> Option<u32> {
        match self {
            Self::Level4 => Some(4),
            Self::Level5 => Some(5),
            Self::Reserved(_) => None,
        }
    }
    /// Input address width, as iommufd's `addr_width` (48 or 57).
    pub fn address_width(self) -> Option<u32> {
        self.levels().map(|l| 12 + 9 * l)
    }
}

/// PASID table entry, bits 63:0 (§9.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryQw0 {
    /// P: present.
    pub present: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// AW: second-stage address width (1: 39-bit, 2: 48-bit, 3: 57-bit).
    #[bits(3)]
    pub aw: u8,
    /// SSEE: second-stage execute enable.
    pub ssee: bool,
    /// PGTT: PASID-granular translation type.
    #[bits(3)]
    pub pgtt: Pgtt,
    /// SSADE: second-stage accessed/dirty enable.
    pub ssade: bool,
    #[bits(2)]
    reserved: u8,
    /// SSPTPTR: second-stage page-table pointer (bits 63:12).
    #[bits(52)]
    pub ssptptr: u64,
}

/// PASID table entry, bits 127:64 (§9.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryQw1 {
    /// DID: domain identifier.
    pub did: u16,
    #[bits(7)]
    reserved: u8,
    /// PWSNP: page-walk snoop.
    pub pwsnp: bool,
    /// PGSNP: page snoop.
    pub pgsnp: bool,
    /// CD: cache disable.
    pub cd: bool,
    /// EMTE: extended memory type enable.
    pub emte: bool,
    /// EMT: extended memory type.
    #[bits(3)]
    pub emt: u8,
    /// PWT: page-level write-through.
    pub pwt: bool,
    /// PCD: page-level cache disable.
    pub pcd: bool,
    /// PAT: page attribute table.
    pub pat: u32,
}

/// PASID table entry, bits 191:128 (§9.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryQw2 {
    /// SRE: supervisor requests enable.
    pub sre: bool,
    /// ERE: execute requests enable.
    pub ere: bool,
    /// FSPM: first-stage paging mode.
    #[bits(2)]
    pub fspm: FirstStagePagingMode,
    /// WPE: write protect enable (supervisor writes honour R/W).
    pub wpe: bool,
    /// NXE: no-execute enable (XD bit is honoured rather than reserved).
    pub nxe: bool,
    /// SMEP: supervisor mode execute prevention.
    pub smep: bool,
    /// EAFE: extended accessed flag enable.
    pub eafe: bool,
    #[bits(4)]
    reserved: u8,
    /// FSPTPTR: first-stage page-table pointer (bits 191:140).
    #[bits(52)]
    pub fsptptr: u64,
}

/// A 512-bit PASID table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidEntry {
    /// Bits 63:0.
    pub qw0: PasidEntryQw0,
    /// Bits 127:64.
    pub qw1: PasidEntryQw1,
    /// Bits 191:128.
    pub qw2: PasidEntryQw2,
    /// Bits 511:192, reserved.
    pub upper: [u64; 5],
}

impl PasidEntry {
    /// Decodes an entry from its eight quadwords.
    pub fn from_qwords(q: [u64; 8]) -> Self {
        Self {
            qw0: PasidEntryQw0::from_bits(q[0]),
            qw1: PasidEntryQw1::from_bits(q[1]),
            qw2: PasidEntryQw2::from_bits(q[2]),
            upper: [q[3], q[4], q[5], q[6], q[7]],
        }
    }
    /// Encodes the entry as eight quadwords.
    pub fn to_qwords(self) -> [u64; 8] {
        let u = self.upper;
        [
            self.qw0.into_bits(),
            self.qw1.into_bits(),
            self.qw2.into_bits(),
            u[0],
            u[1],
            u[2],
            u[3],
            u[4],
        ]
    }
    /// First-stage table guest-physical address.
    pub fn first_stage_table(self) -> u64 {
        self.qw2.fsptptr() << 12
    }
    /// Second-stage table guest-physical address.
    pub fn second_stage_table(self) -> u64 {
        self.qw0.ssptptr() << 12
    }
    /// Whether reserved bits are set (fault reason 0x5A).
    pub fn reserved_set(self) -> bool {
        self.qw0.reserved() != 0
            || self.qw1.reserved() != 0
            || self.qw2.reserved() != 0
            || self.upper != [0; 5]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry Linux 6.12 writes for a first-stage DMA domain (`intel_pasid_setup_first_level`).
    #[test]
    fn decodes_linux_first_stage_entry() {
        let q0 = 1 | (2 << 2) | (1 << 6);
        let q1 = 2 | (1 << 23);
        let q2 = 0x1234_5000;
        let e = PasidEntry::from_qwords([q0, q1, q2, 0, 0, 0, 0, 0]);
        assert!(e.qw0.present());
        assert_eq!(e.qw0.pgtt(), Pgtt::FirstStage);
        assert_eq!(e.qw1.did(), 2);
        assert!(e.qw1.pwsnp());
        assert!(!e.qw2.sre() && !e.qw2.wpe());
        assert_eq!(e.qw2.fspm(), FirstStagePagingMode::Level4);
        assert_eq!(e.qw2.fspm().address_width(), Some(48));
        assert_eq!(e.first_stage_table(), 0x1234_5000);
        assert!(!e.reserved_set());
        assert_eq!(e.to_qwords(), [q0, q1, q2, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn every_pgtt_encoding_decodes() {
        for bits in 0..8u64 {
            let e = PasidEntryQw0::from_bits(1 | (bits << 6));
            assert_eq!(u64::from(e.pgtt().into_bits()), bits);
        }
    }
}
