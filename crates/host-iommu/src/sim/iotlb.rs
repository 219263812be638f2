//! The translation caches of one nested HWPT, as the host VT-d unit keeps them per domain
//! (tagged by the nested domain's DID): a combined IOTLB (IOVA page → host page, with the
//! stage-1 and stage-2 permissions) and a first-stage paging-structure cache (a non-leaf
//! entry → the next table's GPA). Both are bounded; only invalidation (or eviction)
//! removes an entry, so a change the guest does not invalidate stays invisible — as on
//! hardware (VT-d spec §6.2, §6.5.2.4).

use std::collections::BTreeMap;

use vtd_spec::pte::level_size;
use vtd_spec::rights::FsRights;

use crate::DmaPerm;

/// IOTLB capacity (entries, each one 4 KiB page).
pub const IOTLB_CAPACITY: usize = 512;
/// Paging-structure cache capacity (entries).
pub const PSC_CAPACITY: usize = 128;

/// A cached translation of one 4 KiB IOVA page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IotlbEntry {
    /// Host virtual address of the page.
    pub hva_page: u64,
    /// First-stage rights over every level.
    pub s1: FsRights,
    /// Stage-2 permissions of the final GPA.
    pub s2: DmaPerm,
    /// Whether the leaf's D bit was set (a write hit without it walks again).
    pub dirty: bool,
}

/// A cached non-leaf first-stage entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PscEntry {
    /// GPA of the next-level table.
    pub table_gpa: u64,
    /// First-stage rights of this and every upper level.
    pub rights: FsRights,
}

/// The caches of one nested HWPT.
#[derive(Clone, Debug, Default)]
pub struct NestedCaches {
    iotlb: BTreeMap<u64, IotlbEntry>,
    psc: BTreeMap<(u32, u64), PscEntry>,
}

fn psc_key(level: u32, iova: u64) -> (u32, u64) {
    (level, iova >> (12 + 9 * (level - 1)))
}

impl NestedCaches {
    /// The cached translation of the page holding `iova`.
    pub fn iotlb(&self, iova: u64) -> Option<IotlbEntry> {
        self.iotlb.get(&(iova >> 12)).copied()
    }
    /// Caches the translation of the page holding `iova`.
    pub fn insert_iotlb(&mut self, iova: u64, entry: IotlbEntry) {
        if self.iotlb.len() >= IOTLB_CAPACITY && !self.iotlb.contains_key(&(iova >> 12)) {
            self.iotlb.pop_first();
        }
        self.iotlb.insert(iova >> 12, entry);
    }
    /// Drops the cached translation of the page holding `iova`.
    pub fn remove_iotlb(&mut self, iova: u64) {
        self.iotlb.remove(&(iova >> 12));
    }
    /// The cached non-leaf entry at `level` (2..=5) covering `iova`.
    pub fn psc(&self, level: u32, iova: u64) -> Option<PscEntry> {
        self.psc.get(&psc_key(level, iova)).copied()
    }
    /// Caches the non-leaf entry at `level` covering `iova`.
    pub fn insert_psc(&mut self, level: u32, iova: u64, entry: PscEntry) {
        let key = psc_key(level, iova);
        if self.psc.len() >= PSC_CAPACITY && !self.psc.contains_key(&key) {
            self.psc.pop_first();
        }
        self.psc.insert(key, entry);
    }
    /// Invalidates `[first, last]`: IOTLB entries in it and, unless `leaf_only`,
    /// paging-structure entries that cover any of it.
    pub fn invalidate(&mut self, first: u64, last: u64, leaf_only: bool) {
        let (fp, lp) = (first >> 12, last >> 12);
        let pages: Vec<u64> = self.iotlb.range(fp..=lp).map(|(k, _)| *k).collect();
        for p in pages {
            self.iotlb.remove(&p);
        }
        if !leaf_only {
            self.psc.retain(|&(level, prefix), _| {
                let size = level_size(level);
                let start = prefix.wrapping_mul(size);
                let end = start.wrapping_add(size - 1);
                end < first || start > last
            });
        }
    }
    /// Drops everything.
    pub fn flush(&mut self) {
        self.iotlb.clear();
        self.psc.clear();
    }
    /// Numbers of IOTLB and paging-structure entries.
    pub fn sizes(&self) -> (usize, usize) {
        (self.iotlb.len(), self.psc.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(hva: u64) -> IotlbEntry {
        IotlbEntry {
            hva_page: hva,
            s1: FsRights::ALL,
            s2: DmaPerm::READ_WRITE,
            dirty: false,
        }
    }

    #[test]
    fn bounded_and_range_invalidation() {
        let mut c = NestedCaches::default();
        for i in 0..(IOTLB_CAPACITY as u64 + 10) {
            c.insert_iotlb(i << 12, e(i));
        }
        assert_eq!(c.sizes().0, IOTLB_CAPACITY);
        let pe = PscEntry {
            table_gpa: 0x5000,
            rights: FsRights::ALL,
        };
        c.insert_psc(2, 0x20_0000, pe);
        c.insert_psc(3, 0, pe);
        c.invalidate(0x20_0000, 0x20_0fff, true);
        assert_eq!(c.psc(2, 0x20_0000), Some(pe), "leaf-only keeps the PSC");
        assert!(c.iotlb(0x20_0000).is_none());
        c.invalidate(0x20_0000, 0x20_0fff, false);
        assert_eq!(c.psc(2, 0x20_0000), None);
        assert_eq!(c.psc(3, 0x20_0000), None, "the PDPE covers it too");
        c.flush();
        assert_eq!(c.sizes(), (0, 0));
    }
}
