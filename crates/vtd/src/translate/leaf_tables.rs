//! The first-stage paging-structure cache: for each 2 MiB region of a (DID, PASID) address
//! space, the leaf table (PTE page) its PML5E/PML4E/PDPE/PDE chain leads to, with the rights
//! that chain grants. A walk that finds its region here reads one entry instead of four or five.
//!
//! ```text
//!  walk(iova) ─► (did, pasid, iova >> 21, FSPTPTR, levels, controls) ─ hit ─► PTE ─► leaf
//!                 │ miss
//!                 └─► PML4E ─► PDPE ─► PDE (not a leaf) ─► PTE ─► leaf
//!                                        └─ fill: PDE's table + rights so far (if no
//!                                           invalidation started since the walk's ticket)
//! ```
//!
//! The spec lets a remapping unit cache non-leaf first-stage entries, tagged with the domain id
//! and PASID (§6.2, paging-structure caches), and tells software when it must invalidate them
//! (§6.5.2.4): a PASID-based-IOTLB invalidation drops them for its range, unless its
//! invalidation hint (IH) says only leaf entries changed. Linux sets IH on an unmap that freed
//! no page-table page — the strict-mode common case — and clears it when it did.
//!
//! | invalidation                      | entries dropped                          |
//! |-----------------------------------|------------------------------------------|
//! | PASID-IOTLB page, IH=1            | none (leaf entries only changed)         |
//! | PASID-IOTLB page, IH=0            | (DID, PASID) regions overlapping the range; AM ≥ 52: all of (DID, PASID) |
//! | PASID-IOTLB all (DID, PASID)      | all of (DID, PASID)                      |
//! | IOTLB domain or page (DID)        | all of DID                               |
//! | IOTLB global, any context-cache invalidation, reset | all                    |
//! | PASID-cache invalidations         | none (the spec asks for a PASID-IOTLB invalidation after them) |
//!
//! Beyond the tags the spec requires, the key holds the table root (FSPTPTR), the paging mode
//! and the PASID entry's controls the walk checked the chain with (NXE for the reserved bits
//! and XD, EAFE for the accessed flags set): an entry is only ever used for the walk that
//! could have produced it, so a PASID entry reprogrammed without an invalidation cannot
//! select another table's chain. Entries are only filled by a walk that checked every entry of
//! the chain and set its accessed flags; a hit sets no flag above the leaf, as hardware with
//! a paging-structure cache does not. The cache is bounded ([`ShardedCache`]): guest activity
//! cannot grow it.

use super::cache::ShardedCache;
use crate::invalidation::Invalidation;
use vtd_spec::rights::{FsControls, FsRights};

/// Bits of input address one leaf table covers (512 × 4 KiB).
const REGION_SHIFT: u32 = 21;

/// Address-mask values from this one up cover the whole input space (as for the IOTLB).
const WHOLE_SPACE_AM: u8 = 52;

/// What a cached chain is looked up by: the domain id and PASID, the 2 MiB region, and the
/// walk it came from (FSPTPTR, levels, controls), packed into three words so that a lookup
/// hashes three integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LeafTableKey {
    /// DID in bits 47:32, PASID in bits 31:0.
    space: u64,
    /// `iova >> 21`.
    region: u64,
    /// FSPTPTR (4 KiB aligned) with the levels in bits 3:0 and the controls' byte in bits 11:4.
    walk: u64,
}

impl LeafTableKey {
    /// The key of `iova`'s region for a walk from `root` with `levels` and `controls`, of
    /// address space (`did`, `pasid`).
    pub(crate) fn new(
        did: u16,
        pasid: u32,
        iova: u64,
        root: u64,
        levels: u32,
        controls: FsControls,
    ) -> Self {
        Self {
            space: Self::space_of(did, pasid),
            region: iova >> REGION_SHIFT,
            walk: (root & !0xfff)
                | (u64::from(controls.into_bits()) << 4)
                | u64::from(levels & 0xf),
        }
    }

    /// The `space` word of (`did`, `pasid`).
    fn space_of(did: u16, pasid: u32) -> u64 {
        (u64::from(did) << 32) | u64::from(pasid)
    }

    fn did(&self) -> u16 {
        (self.space >> 32) as u16
    }

    fn pasid(&self) -> u32 {
        self.space as u32
    }
}

/// A cached chain: the leaf table and the rights of the entries above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeafTable {
    /// Guest-physical address of the PTE page.
    pub(crate) table: u64,
    /// R/W and U/S ANDed, XD ORed over the entries above the leaf table.
    pub(crate) rights: FsRights,
}

/// The cache: a bounded map from [`LeafTableKey`] to [`LeafTable`], in parts chosen by address
/// space and region only, so that a page invalidation visits the parts of its few regions
/// instead of the whole cache.
pub(crate) struct LeafTables {
    parts: Box<[ShardedCache<LeafTableKey, LeafTable>]>,
}

/// Most regions a page invalidation drops part by part; a wider one visits every part.
const PART_BY_PART: u64 = 16;

impl LeafTables {
    /// `parts` parts (rounded up to a power of two) of `part_capacity` entries each.
    pub(crate) fn new(parts: usize, part_capacity: usize) -> Self {
        let n = parts.max(1).next_power_of_two();
        Self {
            parts: (0..n)
                .map(|_| ShardedCache::new(1, part_capacity))
                .collect(),
        }
    }

    /// The part holding the entries of `region` in address space `space` (DID and PASID).
    fn part(&self, space: u64, region: u64) -> &ShardedCache<LeafTableKey, LeafTable> {
        let h = (space.rotate_left(29) ^ region).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let i = (h >> 32) as usize & (self.parts.len() - 1);
        // `i` is masked to the part count, so this cannot fail; `get` keeps it panic-free.
        self.parts.get(i).unwrap_or(&self.parts[0])
    }

    pub(crate) fn get(&self, key: &LeafTableKey) -> Option<LeafTable> {
        self.part(key.space, key.region).get(key)
    }

    /// Caches `table` if `still` holds under the part's lock (see `ShardedCache::insert_if`).
    pub(crate) fn insert_if(
        &self,
        key: LeafTableKey,
        table: LeafTable,
        still: impl FnOnce() -> bool,
    ) {
        self.part(key.space, key.region)
            .insert_if(key, table, still);
    }

    pub(crate) fn clear(&self) {
        self.parts.iter().for_each(|p| p.clear());
    }

    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.parts.iter().map(|p| p.capacity()).sum()
    }

    /// Drops, in every part, the entries for which `stale` holds; returns how many.
    fn retain_all(&self, stale: impl Fn(&LeafTableKey) -> bool) -> usize {
        self.parts.iter().map(|p| p.retain(|k, _| !stale(k))).sum()
    }

    /// Applies one invalidation (the table in the module docs); returns the entries dropped.
    pub(crate) fn invalidate(&self, inv: &Invalidation) -> usize {
        match *inv {
            Invalidation::ContextGlobal
            | Invalidation::ContextDomain { .. }
            | Invalidation::ContextDevice { .. }
            | Invalidation::IotlbGlobal => {
                let n = self.len();
                self.clear();
                n
            }
            Invalidation::IotlbDomain { did } | Invalidation::IotlbPage { did, .. } => {
                self.retain_all(|k| k.did() == did)
            }
            Invalidation::PasidIotlbAll { did, pasid } => {
                self.retain_all(|k| k.did() == did && k.pasid() == pasid)
            }
            Invalidation::PasidIotlbPage { ih: true, .. } => 0,
            Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                ih: false,
            } => {
                let mine = |k: &LeafTableKey| k.did() == did && k.pasid() == pasid;
                match region_span(addr, am) {
                    Some(span) if span.end() - span.start() < PART_BY_PART => {
                        let space = LeafTableKey::space_of(did, pasid);
                        span.map(|r| {
                            self.part(space, r)
                                .retain(|k, _| !(mine(k) && k.region == r))
                        })
                        .sum()
                    }
                    Some(span) => self.retain_all(|k| mine(k) && span.contains(&k.region)),
                    None => self.retain_all(mine),
                }
            }
            Invalidation::PasidCacheGlobal
            | Invalidation::PasidCacheDomain { .. }
            | Invalidation::PasidCachePasid { .. } => 0,
        }
    }
}

/// The 2 MiB regions a 2^am-page invalidation at `addr` overlaps, or `None` for the whole
/// input space (AM ≥ 52).
fn region_span(addr: u64, am: u8) -> Option<std::ops::RangeInclusive<u64>> {
    if am >= WHOLE_SPACE_AM {
        return None;
    }
    let size = 1u64 << (12 + u32::from(am));
    let first = addr & !(size - 1);
    let last = first | (size - 1);
    Some((first >> REGION_SHIFT)..=(last >> REGION_SHIFT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(did: u16, pasid: u32, iova: u64) -> LeafTableKey {
        LeafTableKey::new(did, pasid, iova, 0x1000, 4, FsControls::default())
    }

    #[test]
    fn keys_keep_every_part_apart() {
        let base = key(1, 2, 0x20_0000);
        assert_eq!((base.did(), base.pasid()), (1, 2));
        let c = FsControls::default();
        let mut keys = vec![
            base,
            key(2, 2, 0x20_0000),
            key(1, 3, 0x20_0000),
            key(1, 2, 0x40_0000),
            LeafTableKey::new(1, 2, 0x20_0000, 0x2000, 4, c),
            LeafTableKey::new(1, 2, 0x20_0000, 0x1000, 5, c),
        ];
        for i in 0..6 {
            let c = FsControls::from_bits(1 << i);
            keys.push(LeafTableKey::new(1, 2, 0x20_0000, 0x1000, 4, c));
        }
        assert_eq!(key(1, 2, 0x3f_ffff), base, "same region");
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    fn filled() -> LeafTables {
        let c = LeafTables::new(4, 64);
        let t = LeafTable {
            table: 0x5000,
            rights: FsRights::ALL,
        };
        for (did, pasid) in [(1, 0), (1, 7), (2, 0)] {
            for region in 0..4u64 {
                c.insert_if(key(did, pasid, region << REGION_SHIFT), t, || true);
            }
        }
        c
    }

    fn page(did: u16, pasid: u32, addr: u64, am: u8, ih: bool) -> Invalidation {
        Invalidation::PasidIotlbPage {
            did,
            pasid,
            addr,
            am,
            ih,
        }
    }

    fn has(c: &LeafTables, did: u16, pasid: u32, iova: u64) -> bool {
        c.get(&key(did, pasid, iova)).is_some()
    }

    #[test]
    fn a_leaf_only_page_invalidation_keeps_every_chain() {
        let c = filled();
        assert_eq!(c.invalidate(&page(1, 0, 0, 0, true)), 0);
        assert_eq!(c.len(), 12);
    }

    #[test]
    fn a_page_invalidation_without_hint_drops_the_overlapping_regions_of_its_pasid() {
        let c = filled();
        // One 4 KiB page in region 1.
        assert_eq!(c.invalidate(&page(1, 0, 0x20_3000, 0, false)), 1);
        assert!(!has(&c, 1, 0, 0x20_0000));
        assert!(has(&c, 1, 0, 0) && has(&c, 1, 0, 0x40_0000));
        assert!(has(&c, 1, 7, 0x20_0000) && has(&c, 2, 0, 0x20_0000));
        // 4 MiB (AM 10) aligned down from inside region 3: regions 2 and 3.
        assert_eq!(c.invalidate(&page(1, 0, 0x7f_f000, 10, false)), 2);
        assert!(has(&c, 1, 0, 0) && !has(&c, 1, 0, 0x40_0000) && !has(&c, 1, 0, 0x60_0000));
        // AM 52 and up: the whole space of (DID, PASID).
        assert_eq!(c.invalidate(&page(1, 7, 0, 63, false)), 4);
        assert_eq!(c.len(), 5);
        // A range wider than PART_BY_PART regions (64 MiB, AM 14) visits every part.
        assert_eq!(c.invalidate(&page(2, 0, 0x10_0000, 14, false)), 4);
        assert_eq!(c.len(), 1);
        assert!(has(&c, 1, 0, 0));
    }

    #[test]
    fn pasid_domain_and_global_scopes() {
        let c = filled();
        let all = Invalidation::PasidIotlbAll { did: 1, pasid: 7 };
        assert_eq!(c.invalidate(&all), 4);
        assert!(has(&c, 1, 0, 0) && !has(&c, 1, 7, 0));
        assert_eq!(c.invalidate(&Invalidation::IotlbDomain { did: 1 }), 4);
        assert_eq!(c.len(), 4);
        let iotlb_page = Invalidation::IotlbPage {
            did: 2,
            addr: 0,
            am: 0,
            ih: true,
        };
        assert_eq!(c.invalidate(&iotlb_page), 4);
        let c = filled();
        assert_eq!(c.invalidate(&Invalidation::PasidCacheGlobal), 0);
        assert_eq!(c.invalidate(&Invalidation::IotlbGlobal), 12);
        let c = filled();
        assert_eq!(c.invalidate(&Invalidation::ContextGlobal), 12);
    }

    #[test]
    fn region_spans() {
        assert_eq!(region_span(0x1234_5000, 0), Some(0x91..=0x91));
        assert_eq!(region_span(0x1234_5000, 9), Some(0x91..=0x91));
        assert_eq!(region_span(0x1234_5000, 10), Some(0x90..=0x91));
        assert_eq!(region_span(0, 51), Some(0..=(1 << 42) - 1));
        assert_eq!(region_span(u64::MAX, 51), Some(1 << 42..=(1 << 43) - 1));
        assert_eq!(region_span(0, 52), None);
    }
}
