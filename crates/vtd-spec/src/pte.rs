//! Page-table entries: first stage (IA-32e format, §9.7) and second stage (§9.8), with the
//! reserved-bit masks the walkers check (faults 0x72 / 0x7A).
//!
//! XD (bit 63) of a first-stage entry is never reserved. VT-d 3.x made it reserved unless the
//! PASID entry's NXE was set, but the specification has since removed Execute-Requested
//! requests and deprecated both NXE and XD (Linux dropped them in 6.11, commit e995fcde6070),
//! and shipping guests set XD in every entry: Linux 5.10 without NXE, 6.1 with it. Hardware
//! runs those guests, and so does QEMU (it ignores bits 63:52), so a walk accepts XD whatever
//! NXE says and honours it as execute-disable only with NXE.

use bitfield_struct::bitfield;

/// Entries per paging-structure page.
pub const ENTRIES_PER_TABLE: u64 = 512;

/// Index of `iova` in the table at `level` (1 = the 4 KiB page table, 4 = PML4, 5 = PML5).
pub fn table_index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & 0x1ff
}

/// Size of the region mapped by one entry at `level` (4 KiB, 2 MiB, 1 GiB, ...).
pub fn level_size(level: u32) -> u64 {
    1u64 << (12 + 9 * (level - 1))
}

/// Mask of the physical-address bits at and above `haw` up to bit 51.
fn above_haw(haw: u32) -> u64 {
    let haw = haw.clamp(12, 52);
    ((1u64 << 52) - 1) & !((1u64 << haw) - 1)
}

/// First-stage paging entry, any level (§9.7, IA-32e format).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FirstStagePte {
    /// P: present.
    pub present: bool,
    /// R/W: writes allowed.
    pub rw: bool,
    /// U/S: user-mode (non-supervisor) accesses allowed.
    pub us: bool,
    /// PWT: page-level write-through.
    pub pwt: bool,
    /// PCD: page-level cache disable.
    pub pcd: bool,
    /// A: accessed.
    pub accessed: bool,
    /// D: dirty (leaf entries only; ignored in non-leaf entries).
    pub dirty: bool,
    /// PS: page size (a leaf at the PDPE or PDE level); PAT in a 4 KiB PTE.
    pub ps: bool,
    /// G: global (leaf only).
    pub global: bool,
    /// Bit 9, ignored.
    pub ignored9: bool,
    /// EA: extended accessed (with PASID-entry EAFE), otherwise ignored.
    pub ea: bool,
    /// Bit 11, ignored.
    pub ignored11: bool,
    /// Address bits 51:12 (PAT at bit 12 and reserved low bits for large pages).
    #[bits(40)]
    pub addr: u64,
    /// Bits 62:52, ignored.
    #[bits(11)]
    pub ignored_high: u16,
    /// XD: execute disable when the PASID entry's NXE is set, otherwise ignored (module docs).
    pub xd: bool,
}

impl FirstStagePte {
    /// Address of the page or superpage a *leaf* entry at `level` maps (aligned to the level
    /// size). For a non-leaf entry use `next_table`.
    pub fn output_address(self, level: u32) -> u64 {
        (self.addr() << 12) & !(level_size(level) - 1)
    }

    /// Address of the next-level table referenced by a non-leaf entry: bits 51:12 as is
    /// (§9.7: a table is 4 KiB aligned at every level, unlike a superpage).
    pub fn next_table(self) -> u64 {
        self.addr() << 12
    }

    /// Reserved bits of a first-stage entry at `level` (§9.7): physical-address bits at and above
    /// the host address width `haw`; PS in PML5E/PML4E; PS in a PDPE without 1 GiB support; the
    /// low address bits of a 2 MiB or 1 GiB page other than PAT. Never XD (module docs).
    pub fn reserved_mask(self, level: u32, haw: u32, fs1gp: bool) -> u64 {
        FirstStageReserved::new(haw, fs1gp).mask(self, level)
    }

    /// Whether this entry maps a page (a leaf) at `level`.
    pub fn is_leaf(self, level: u32) -> bool {
        level == 1 || ((level == 2 || level == 3) && self.ps())
    }
}

/// The first-stage reserved-bit masks of one walk (§9.7), computed once from what is
/// constant during it (host address width, CAP.FS1GP), so each entry only picks its level's
/// mask; [`FirstStagePte::reserved_mask`] is the same rule for a single entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstStageReserved {
    /// Every level: address bits at and above the HAW.
    base: u64,
    /// PML5E / PML4E: `base` and PS.
    top: u64,
    /// PDPE with PS set: a 1 GiB page's low address bits (with FS1GP), else PS itself.
    pdpe_page: u64,
    /// PDE with PS set: a 2 MiB page's low address bits other than PAT.
    pde_page: u64,
}

impl FirstStageReserved {
    /// The masks for host address width `haw` and CAP.FS1GP.
    pub fn new(haw: u32, fs1gp: bool) -> Self {
        let base = above_haw(haw);
        let pdpe_page = if fs1gp {
            base | (((1u64 << 30) - 1) & !((1u64 << 13) - 1))
        } else {
            base | (1 << 7)
        };
        Self {
            base,
            top: base | (1 << 7),
            pdpe_page,
            pde_page: base | (((1u64 << 21) - 1) & !((1u64 << 13) - 1)),
        }
    }

    /// Reserved bits of `pte` at `level`.
    #[inline]
    pub fn mask(&self, pte: FirstStagePte, level: u32) -> u64 {
        match level {
            4 | 5 => self.top,
            3 if pte.ps() => self.pdpe_page,
            2 if pte.ps() => self.pde_page,
            _ => self.base,
        }
    }
}

/// Second-stage paging entry, any level (§9.8).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SecondStagePte {
    /// R: read.
    pub read: bool,
    /// W: write.
    pub write: bool,
    /// X: execute (with SSEE).
    pub execute: bool,
    /// EMT: extended memory type (leaf only).
    #[bits(3)]
    pub emt: u8,
    /// IPAT: ignore PAT (leaf only).
    pub ipat: bool,
    /// PS: page size (leaf at SL-PDPE / SL-PDE).
    pub ps: bool,
    /// A: accessed (with SSADE).
    pub accessed: bool,
    /// D: dirty (with SSADE, leaf only).
    pub dirty: bool,
    /// Bit 10, ignored.
    pub ignored10: bool,
    /// SNP: snoop (leaf only; needs ECAP.SC).
    pub snp: bool,
    /// Address bits 51:12.
    #[bits(40)]
    pub addr: u64,
    /// Bits 61:52, ignored.
    #[bits(10)]
    pub ignored_high: u16,
    /// TM: transient mapping (device-TLB only).
    pub tm: bool,
    /// Bit 63, ignored.
    pub ignored63: bool,
}

impl SecondStagePte {
    /// Whether the entry is present (any of R, W set; §9.8: "present if R or W").
    pub fn present(self) -> bool {
        self.read() || self.write()
    }
    /// Address of the page or superpage a *leaf* entry at `level` maps (aligned to the level
    /// size). For a non-leaf entry use `next_table`.
    pub fn output_address(self, level: u32) -> u64 {
        (self.addr() << 12) & !(level_size(level) - 1)
    }
    /// Address of the next-level table referenced by a non-leaf entry: bits 51:12 as is
    /// (§9.8: a table is 4 KiB aligned at every level, unlike a superpage).
    pub fn next_table(self) -> u64 {
        self.addr() << 12
    }
    /// Whether this entry maps a page (a leaf) at `level`.
    pub fn is_leaf(self, level: u32) -> bool {
        level == 1 || ((level == 2 || level == 3) && self.ps())
    }
    /// Reserved bits of a second-stage entry (§9.8): address bits at and above `haw`; PS at
    /// levels 4 and 5, and at levels 2/3 when the superpage size is not in CAP.SLLPS; the
    /// low address bits of a superpage; memory-type and snoop bits in non-leaf entries; SNP
    /// without snoop control; X without SSEE.
    pub fn reserved_mask(self, level: u32, haw: u32, sllps: u8, snoop: bool, ssee: bool) -> u64 {
        let mut mask = above_haw(haw);
        if !ssee {
            mask |= 1 << 2;
        }
        let leaf = self.is_leaf(level);
        if !leaf {
            mask |= 0b111_1000 | (1 << 11);
        } else if !snoop {
            mask |= 1 << 11;
        }
        match level {
            4 | 5 => mask |= 1 << 7,
            3 if self.ps() => {
                if sllps & 2 == 0 {
                    mask |= 1 << 7;
                }
                mask |= ((1u64 << 30) - 1) & !((1u64 << 12) - 1);
            }
            2 if self.ps() => {
                if sllps & 1 == 0 {
                    mask |= 1 << 7;
                }
                mask |= ((1u64 << 21) - 1) & !((1u64 << 12) - 1);
            }
            _ => {}
        }
        mask
    }
}

/// Levels of a second-stage table for an adjusted guest address width encoding (AW field):
/// 1 → 3 levels (39 bits), 2 → 4 levels (48 bits), 3 → 5 levels (57 bits).
pub fn second_stage_levels(aw: u8) -> Option<u32> {
    match aw {
        1 => Some(3),
        2 => Some(4),
        3 => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_and_sizes() {
        let iova = 0x0000_7fff_ffe0_1000u64;
        assert_eq!(table_index(iova, 4), 0xff);
        assert_eq!(table_index(iova, 1), 0x001);
        assert_eq!(level_size(2), 2 << 20);
        assert_eq!(level_size(3), 1 << 30);
    }

    #[test]
    fn next_table_is_not_masked_to_the_level_size() {
        let pml4e = FirstStagePte::from_bits(0x0040_3000 | 0x27);
        assert_eq!(pml4e.next_table(), 0x0040_3000);
        assert_eq!(pml4e.output_address(4), 0, "output_address is for leaves");
        let sl = SecondStagePte::from_bits(0x0040_3000 | 0x3);
        assert_eq!(sl.next_table(), 0x0040_3000);
    }

    #[test]
    fn first_stage_reserved_bits() {
        let pml4e = FirstStagePte::from_bits(0x1000 | 0x87);
        assert_ne!(
            pml4e.into_bits() & pml4e.reserved_mask(4, 48, true),
            0,
            "PS in a PML4E"
        );
        let pdpe_1g = FirstStagePte::from_bits((1 << 30) | 0x87);
        assert_eq!(pdpe_1g.into_bits() & pdpe_1g.reserved_mask(3, 48, true), 0);
        assert_ne!(
            pdpe_1g.into_bits() & pdpe_1g.reserved_mask(3, 48, false),
            0,
            "1G without FS1GP"
        );
        let pde_2m_pat = FirstStagePte::from_bits((2 << 20) | (1 << 12) | 0x87);
        assert_eq!(
            pde_2m_pat.into_bits() & pde_2m_pat.reserved_mask(2, 48, true),
            0,
            "PAT is allowed"
        );
        let pde_2m_bad = FirstStagePte::from_bits((2 << 20) | (1 << 13) | 0x87);
        assert_ne!(
            pde_2m_bad.into_bits() & pde_2m_bad.reserved_mask(2, 48, true),
            0
        );
        let high = FirstStagePte::from_bits((1 << 48) | 0x3);
        assert_ne!(
            high.into_bits() & high.reserved_mask(1, 48, true),
            0,
            "beyond HAW"
        );
    }

    /// What Linux writes into first-stage entries (linux-guest-driver.md), with the bits each
    /// version ORs into every entry: 5.10 sets XD without NXE, 6.1 XD with NXE, 6.12 no XD.
    #[test]
    fn linux_first_stage_entries_have_no_reserved_bit() {
        const XD: u64 = 1 << 63;
        // Non-leaf: table | P | R/W | U/S | A; leaf: page | P | R/W | U/S | A | D; bit 11 is
        // Linux's DMA_PTE_SNP, ignored in a first-stage entry.
        let nonleaf = 0x1c1b_c000 | 0x27;
        let leaf = 0x0123_4000 | 0x67 | (1 << 11);
        let leaf_2m = 0x0060_0000 | 0xe7;
        for extra in [0, XD] {
            for (raw, level) in [
                (nonleaf, 4),
                (nonleaf, 3),
                (nonleaf, 2),
                (leaf, 1),
                (leaf_2m, 2),
            ] {
                let pte = FirstStagePte::from_bits(raw | extra);
                assert_eq!(
                    pte.into_bits() & pte.reserved_mask(level, 48, true),
                    0,
                    "{:#x} at level {level}",
                    pte.into_bits()
                );
            }
        }
        // The same entries with a bit that is reserved still fault.
        let pml4e_ps = FirstStagePte::from_bits(nonleaf | XD | 0x80);
        assert_ne!(
            pml4e_ps.into_bits() & pml4e_ps.reserved_mask(4, 48, true),
            0
        );
    }

    /// The per-entry rule as §9.7 words it, against the per-walk masks.
    fn reference_first_stage_mask(pte: FirstStagePte, level: u32, haw: u32, fs1gp: bool) -> u64 {
        let mut mask = above_haw(haw);
        match level {
            4 | 5 => mask |= 1 << 7,
            3 if pte.ps() => {
                if fs1gp {
                    mask |= ((1u64 << 30) - 1) & !((1u64 << 13) - 1);
                } else {
                    mask |= 1 << 7;
                }
            }
            2 if pte.ps() => mask |= ((1u64 << 21) - 1) & !((1u64 << 13) - 1),
            _ => {}
        }
        mask
    }

    #[test]
    fn per_walk_first_stage_masks_match_the_per_entry_rule() {
        for haw in [0, 12, 39, 46, 48, 52, 57, 64] {
            for fs1gp in [false, true] {
                let masks = FirstStageReserved::new(haw, fs1gp);
                for level in 0..=6 {
                    for raw in [0x3, 0x83, u64::MAX, 1 << 63 | 0x1083] {
                        let pte = FirstStagePte::from_bits(raw);
                        let want = reference_first_stage_mask(pte, level, haw, fs1gp);
                        assert_eq!(
                            masks.mask(pte, level),
                            want,
                            "{haw} {fs1gp} {level} {raw:#x}"
                        );
                        assert_eq!(pte.reserved_mask(level, haw, fs1gp), want);
                    }
                }
            }
        }
    }

    #[test]
    fn second_stage_reserved_bits() {
        let nonleaf = SecondStagePte::from_bits(0x2000 | 0x3);
        assert_eq!(
            nonleaf.into_bits() & nonleaf.reserved_mask(4, 48, 1, false, false),
            0
        );
        let nonleaf_emt = SecondStagePte::from_bits(0x2000 | 0x3 | (1 << 3));
        assert_ne!(
            nonleaf_emt.into_bits() & nonleaf_emt.reserved_mask(3, 48, 1, false, false),
            0
        );
        let big = SecondStagePte::from_bits((1 << 30) | 0x83);
        assert_ne!(
            big.into_bits() & big.reserved_mask(3, 48, 1, false, false),
            0,
            "1G without SLLPS bit 1"
        );
        assert_eq!(
            big.into_bits() & big.reserved_mask(3, 48, 3, false, false),
            0
        );
        let snp = SecondStagePte::from_bits(0x1000 | 0x3 | (1 << 11));
        assert_ne!(
            snp.into_bits() & snp.reserved_mask(1, 48, 1, false, false),
            0
        );
        assert_eq!(
            snp.into_bits() & snp.reserved_mask(1, 48, 1, true, false),
            0
        );
    }
}
