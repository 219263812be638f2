//! Root entries (§9.1 legacy, §9.2 scalable mode): one 128-bit entry per bus.

use bitfield_struct::bitfield;

/// Size of a root entry in bytes.
pub const ROOT_ENTRY_SIZE: u64 = 16;

/// One 64-bit half of a root entry: a present bit and a context-table pointer (§9.1, §9.2).
///
/// In legacy mode the low half points at a context table for all 256 devfns and the high half
/// is reserved. In scalable mode the low half points at the *lower* context table (devfn
/// 0x00-0x7f) and the high half at the *upper* one (devfn 0x80-0xff).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RootHalf {
    /// P / LP / UP: present.
    pub present: bool,
    #[bits(11)]
    reserved: u16,
    /// CTP / LCTP / UCTP: context-table pointer (bits 63:12).
    #[bits(52)]
    pub ctp: u64,
}

impl RootHalf {
    /// Context table guest-physical address.
    pub fn context_table(self) -> u64 {
        self.ctp() << 12
    }
    /// Whether reserved bits 11:1 are set (fault 0x3A in scalable mode, 0x08-ish in legacy).
    pub fn reserved_set(self) -> bool {
        self.reserved() != 0
    }
}

/// A root entry as read from guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootEntry {
    /// Bits 63:0.
    pub lo: RootHalf,
    /// Bits 127:64.
    pub hi: RootHalf,
}

impl RootEntry {
    /// Decodes an entry from its two little-endian quadwords.
    pub fn from_qwords(lo: u64, hi: u64) -> Self {
        Self {
            lo: RootHalf::from_bits(lo),
            hi: RootHalf::from_bits(hi),
        }
    }
    /// The half that covers `devfn` in scalable mode.
    pub fn scalable_half(self, devfn: u8) -> RootHalf {
        if devfn < 0x80 { self.lo } else { self.hi }
    }
    /// Legacy mode: bits 127:64 are reserved.
    pub fn legacy_reserved_set(self) -> bool {
        self.lo.reserved_set() || self.hi.into_bits() != 0
    }
}
