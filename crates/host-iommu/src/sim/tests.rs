//! Tests of the sim against the kernel's rules and the hardware's caching, and of the RAII
//! handles over it.

use std::sync::Arc;

use super::*;
use crate::handles::{Attachment, DeviceAttachment, Ioas, NestParentHwpt, NestedHwpt};
use crate::{DmaPerm, HostIommu, HostIommuError, VtdS1HwptData, VtdS1Invalidation};

/// Host VA of guest RAM (GPA 0).
pub(super) const RAM_HVA: u64 = 0x7f00_0000_0000;
/// Guest RAM size.
pub(super) const RAM_SIZE: u64 = 8 << 20;
/// Where the guest's page-table pages are allocated from.
pub(super) const TABLES_GPA: u64 = 0x40_0000;

pub(super) const P: u64 = 1;
pub(super) const RW: u64 = 1 << 1;
pub(super) const US: u64 = 1 << 2;

/// A guest with RAM, a first-stage table it edits, and the host IOMMU under it.
pub(super) struct Guest {
    pub(super) mem: Arc<VecHostMemory>,
    pub(super) host: Arc<SimHost>,
    pub(super) dyn_host: Arc<dyn HostIommu>,
    pub(super) next_table: u64,
}

impl Guest {
    pub(super) fn new(config: SimConfig) -> Self {
        let mem = Arc::new(VecHostMemory::new(&[(RAM_HVA, RAM_SIZE as usize)]));
        let host = Arc::new(SimHost::new(config, mem.clone()));
        let dyn_host: Arc<dyn HostIommu> = host.clone();
        Self {
            mem,
            host,
            dyn_host,
            next_table: TABLES_GPA,
        }
    }
    pub(super) fn read(&self, gpa: u64) -> u64 {
        self.mem.read_u64(RAM_HVA + gpa).unwrap()
    }
    pub(super) fn write(&self, gpa: u64, v: u64) {
        self.mem.write_u64(RAM_HVA + gpa, v).unwrap()
    }
    pub(super) fn new_table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += 0x1000;
        t
    }
    /// A fresh root table (PML4 or PML5).
    pub(super) fn root(&mut self) -> u64 {
        self.new_table()
    }
    /// The GPA of the entry for `iova` at `leaf_level`, creating tables on the way.
    pub(super) fn entry_gpa(&mut self, root: u64, levels: u32, iova: u64, leaf_level: u32) -> u64 {
        let mut table = root;
        for level in (leaf_level + 1..=levels).rev() {
            let e = table + vtd_spec::pte::table_index(iova, level) * 8;
            let v = self.read(e);
            if v & P == 0 {
                let t = self.new_table();
                self.write(e, t | P | RW | US);
                table = t;
            } else {
                table = v & 0x000f_ffff_ffff_f000;
            }
        }
        table + vtd_spec::pte::table_index(iova, leaf_level) * 8
    }
    /// Maps a 4 KiB page in a 4-level table.
    pub(super) fn map(&mut self, root: u64, iova: u64, gpa: u64, flags: u64) -> u64 {
        let e = self.entry_gpa(root, 4, iova, 1);
        self.write(e, gpa | flags);
        e
    }
    pub(super) fn ram_ioas(&self, perm: DmaPerm) -> Arc<Ioas> {
        let ioas = Arc::new(Ioas::new(self.dyn_host.clone()).unwrap());
        ioas.map(0, RAM_HVA, RAM_SIZE, perm).unwrap();
        ioas
    }
}

pub(super) fn s1(root: u64) -> VtdS1HwptData {
    VtdS1HwptData {
        pgtbl_addr: root,
        addr_width: 48,
        ..Default::default()
    }
}

pub(super) fn errno<T: std::fmt::Debug>(r: crate::Result<T>) -> i32 {
    r.unwrap_err().errno().expect("an errno")
}

/// Guest RAM, an IOAS over it, a nest parent, a device: the usual start.
pub(super) fn setup(config: SimConfig) -> (Guest, Arc<NestParentHwpt>, DeviceAttachment) {
    let g = Guest::new(config);
    let dev = g.host.add_device("0000:01:00.0");
    let ioas = g.ram_ioas(DmaPerm::READ_WRITE);
    let parent = Arc::new(NestParentHwpt::new(ioas, dev).unwrap());
    let att = DeviceAttachment::new(g.dyn_host.clone(), dev);
    (g, parent, att)
}

// ---------------------------------------------------------------- kernel rules, one by one

#[test]
fn ioas_overlap_is_eexist_and_unmapped_is_enoent() {
    let g = Guest::new(SimConfig::default());
    let ioas = g.ram_ioas(DmaPerm::READ_WRITE);
    assert_eq!(
        errno(ioas.map(0x1000, RAM_HVA, 0x1000, DmaPerm::READ)),
        libc::EEXIST
    );
    assert_eq!(errno(ioas.unmap(RAM_SIZE, 0x1000)), libc::ENOENT);
    assert_eq!(
        errno(ioas.map(RAM_SIZE, RAM_HVA, 0, DmaPerm::READ)),
        libc::EINVAL
    );
    assert_eq!(ioas.unmap(0, RAM_SIZE).unwrap(), RAM_SIZE);
}

#[test]
fn destroying_an_attached_hwpt_is_ebusy() {
    let (g, parent, mut att) = setup(SimConfig::default());
    att.attach_parent(parent.clone()).unwrap();
    assert_eq!(errno(g.host.hwpt_destroy(parent.id())), libc::EBUSY);
    let nested = g
        .host
        .hwpt_alloc_nested(att.device(), parent.id(), &s1(0x1000))
        .unwrap();
    att.block().unwrap();
    assert_eq!(
        errno(g.host.hwpt_destroy(parent.id())),
        libc::EBUSY,
        "a parent with a nested child"
    );
    assert_eq!(
        errno(g.host.ioas_destroy(parent.ioas().id())),
        libc::EBUSY,
        "an IOAS with a HWPT"
    );
    g.host.hwpt_destroy(nested).unwrap();
    assert_eq!(errno(g.host.hwpt_destroy(nested)), libc::ENOENT);
}

#[test]
fn nested_needs_a_nest_parent() {
    let (g, parent, mut att) = setup(SimConfig::default());
    let dev = att.device();
    let ioas = parent.ioas().clone();
    // An automatic (non-parent) HWPT from attaching to the IOAS.
    att.attach_ioas(ioas.clone()).unwrap();
    let auto = att.current().hwpt().unwrap();
    assert_ne!(auto, parent.id());
    assert_eq!(
        errno(g.host.hwpt_alloc_nested(dev, auto, &s1(0x1000))),
        libc::EINVAL
    );
    // A nested HWPT is no parent either.
    let n = g
        .host
        .hwpt_alloc_nested(dev, parent.id(), &s1(0x1000))
        .unwrap();
    assert_eq!(
        errno(g.host.hwpt_alloc_nested(dev, n, &s1(0x1000))),
        libc::EINVAL
    );
    // An IOAS with VTD_S1 data, or nothing at all.
    assert_eq!(
        errno(
            g.host
                .hwpt_alloc_nested(dev, HwptId(ioas.id().0), &s1(0x1000))
        ),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(g.host.hwpt_alloc_nested(dev, HwptId(999), &s1(0x1000))),
        libc::ENOENT
    );
    g.host.hwpt_destroy(n).unwrap();
}

#[test]
fn unknown_s1_flags_or_reserved_are_eopnotsupp() {
    let (g, parent, att) = setup(SimConfig::default());
    let mut d = s1(0x1000);
    d.flags = 1 << 3;
    assert_eq!(
        errno(g.host.hwpt_alloc_nested(att.device(), parent.id(), &d)),
        libc::EOPNOTSUPP
    );
    let mut d = s1(0x1000);
    d.reserved = 1;
    assert_eq!(
        errno(g.host.hwpt_alloc_nested(att.device(), parent.id(), &d)),
        libc::EOPNOTSUPP
    );
    assert_eq!(g.host.live_objects().nested, 0);
}

#[test]
fn addr_width_sre_eafe_are_checked_at_attach_with_einval() {
    let (g, parent, mut att) = setup(SimConfig::default());
    for data in [
        VtdS1HwptData {
            addr_width: 39,
            ..s1(0x1000)
        },
        VtdS1HwptData {
            addr_width: 57,
            ..s1(0x1000)
        },
        VtdS1HwptData {
            flags: VtdS1HwptData::SRE,
            ..s1(0x1000)
        },
        VtdS1HwptData {
            flags: VtdS1HwptData::EAFE,
            ..s1(0x1000)
        },
    ] {
        assert_eq!(
            errno(att.bind_nested(&parent, &data)),
            libc::EINVAL,
            "{data:?}"
        );
        assert!(matches!(att.current(), Attachment::Blocked));
        assert_eq!(
            g.host.live_objects().nested,
            0,
            "the refused HWPT was freed"
        );
    }
    // Supported with FS5LP, SRS, EAFS.
    let (g, parent, mut att) = setup(SimConfig {
        aw_bits: 57,
        srs: true,
        eafs: true,
        ..SimConfig::default()
    });
    let data = VtdS1HwptData {
        flags: VtdS1HwptData::ALL_FLAGS,
        addr_width: 57,
        ..s1(0x1000)
    };
    att.bind_nested(&parent, &data).unwrap();
    assert_eq!(g.host.live_objects().nested, 1);
}

#[test]
fn host_without_nesting_refuses_clearly() {
    let g = Guest::new(SimConfig {
        nesting: false,
        ..SimConfig::default()
    });
    let dev = g.host.add_device("0000:01:00.0");
    let info = g.host.hw_info(dev).unwrap();
    assert_eq!(
        info.require_vtd_nesting().unwrap_err().to_string(),
        "The host IOMMU does not support nested translation (ECAP.NEST is clear)"
    );
    let ioas = g.ram_ioas(DmaPerm::READ_WRITE);
    assert_eq!(errno(NestParentHwpt::new(ioas, dev)), libc::EOPNOTSUPP);
    assert_eq!(g.host.live_objects().nest_parents, 0);
}

#[test]
fn erratum_host_refuses_read_only_in_a_nest_parent() {
    let g = Guest::new(SimConfig {
        errata_772415: true,
        ..SimConfig::default()
    });
    let dev = g.host.add_device("0000:01:00.0");
    assert!(
        g.host
            .hw_info(dev)
            .unwrap()
            .require_vtd_nesting()
            .unwrap()
            .errata_772415()
    );
    // RO before any nest parent is fine, but then no nest parent can be built on it.
    let ro_ioas = Arc::new(Ioas::new(g.dyn_host.clone()).unwrap());
    ro_ioas.map(0, RAM_HVA, 0x1000, DmaPerm::READ).unwrap();
    assert_eq!(errno(NestParentHwpt::new(ro_ioas, dev)), libc::EINVAL);
    // RW mappings and a nest parent; then RO is refused, RW still fine.
    let ioas = g.ram_ioas(DmaPerm::READ_WRITE);
    let _parent = NestParentHwpt::new(ioas.clone(), dev).unwrap();
    assert_eq!(
        errno(ioas.map(RAM_SIZE, RAM_HVA, 0x1000, DmaPerm::READ)),
        libc::EINVAL
    );
    ioas.map(RAM_SIZE, RAM_HVA, 0x1000, DmaPerm::READ_WRITE)
        .unwrap();
    // Without the erratum RO is fine.
    let (_g, parent, _att) = setup(SimConfig::default());
    parent
        .ioas()
        .map(RAM_SIZE, RAM_HVA, 0x1000, DmaPerm::READ)
        .unwrap();
}

#[test]
fn invalidation_rules_and_entry_count() {
    let (g, parent, mut att) = setup(SimConfig::default());
    let n = att.bind_nested(&parent, &s1(0x1000)).unwrap();
    let ok = VtdS1Invalidation::range(0x1000, 1, true);
    let bad_flag = VtdS1Invalidation { flags: 2, ..ok };
    let bad_reserved = VtdS1Invalidation { reserved: 1, ..ok };
    let unaligned = VtdS1Invalidation::range(0x1800, 1, false);
    let all_not_zero = VtdS1Invalidation {
        addr: 0x1000,
        ..VtdS1Invalidation::all()
    };
    assert_eq!(n.invalidate(&[]), Ok(0), "entry_num = 0 probes support");
    assert_eq!(n.invalidate(&[ok, VtdS1Invalidation::all()]), Ok(2));
    for (bad, want) in [
        (bad_flag, libc::EOPNOTSUPP),
        (bad_reserved, libc::EOPNOTSUPP),
        (unaligned, libc::EINVAL),
        (all_not_zero, libc::EINVAL),
    ] {
        match n.invalidate(&[ok, bad, ok]) {
            Err(HostIommuError::Invalidate {
                processed,
                total,
                errno,
            }) => {
                assert_eq!((processed, total, errno), (1, 3, want), "{bad:?}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // A stage-2 HWPT takes no stage-1 invalidation.
    assert_eq!(
        errno(g.host.hwpt_invalidate(parent.id(), &[ok])),
        libc::EINVAL
    );
    let c = g.host.counters();
    assert_eq!(c.invalidation_calls, 7);
    assert_eq!(c.invalidation_entries, 2 + 4);
}

// ---------------------------------------------------------------- RAII handles

/// Four handles dropped in each of the 24 orders: never an error destroying an attached
/// HWPT (which would leak it), never a panic, nothing left.
#[test]
fn handles_drop_in_any_order() {
    let orders = permutations(4);
    assert_eq!(orders.len(), 24);
    for order in orders {
        let mut g = Guest::new(SimConfig::default());
        let root = g.root();
        let dev = g.host.add_device("0000:01:00.0");
        let ioas = g.ram_ioas(DmaPerm::READ_WRITE);
        let parent = Arc::new(NestParentHwpt::new(ioas.clone(), dev).unwrap());
        let nested = Arc::new(NestedHwpt::new(parent.clone(), dev, &s1(root)).unwrap());
        let mut att = DeviceAttachment::new(g.dyn_host.clone(), dev);
        att.attach_nested(nested.clone()).unwrap();
        let mut slots: Vec<Option<Box<dyn std::any::Any>>> = vec![
            Some(Box::new(ioas)),
            Some(Box::new(parent)),
            Some(Box::new(nested)),
            Some(Box::new(att)),
        ];
        for i in order {
            drop(slots[i].take());
        }
        assert_eq!(
            g.host.live_objects(),
            LiveObjects::default(),
            "order {slots:?}"
        );
    }
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

// ---------------------------------------------------------------- bind / replace / unbind

#[test]
fn bind_replace_unbind() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let dev = att.device();
    let (page_a, page_b) = (0x20_0000, 0x30_0000);
    g.write(page_a, 0xaaaa);
    g.write(page_b, 0xbbbb);
    let root1 = g.root();
    g.map(root1, 0x1000, page_a, P | RW | US);
    let root2 = g.root();
    g.map(root2, 0x1000, page_b, P | RW | US);

    // Bind: nested alloc + attach.
    let first = att.bind_nested(&parent, &s1(root1)).unwrap();
    assert_eq!(g.host.attached_hwpt(dev), Some(first.id()));
    let mut buf = [0u8; 8];
    g.host.dma_read(dev, 0x1000, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 0xaaaa);

    // Replace: a new nested HWPT, the old one freed once nobody holds it.
    let first_id = first.id();
    drop(first);
    let second = att.bind_nested(&parent, &s1(root2)).unwrap();
    assert_ne!(second.id(), first_id);
    assert_eq!(errno(g.host.hwpt_destroy(first_id)), libc::ENOENT, "freed");
    g.host.dma_read(dev, 0x1000, &mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 0xbbbb);
    assert_eq!(g.host.live_objects().nested, 1);

    // Unbind: DMA blocked.
    att.block().unwrap();
    assert_eq!(
        g.host.dma_read(dev, 0x1000, &mut buf),
        Err(DmaFault::Blocked)
    );
    drop(second);
    assert_eq!(g.host.live_objects().nested, 0);

    let c = g.host.counters();
    assert_eq!((c.binds, c.attaches, c.replaces, c.detaches), (2, 1, 1, 1));
    assert!(c.dma_faults >= 1);
}

#[test]
fn pass_through_is_stage_2_only() {
    let (g, parent, mut att) = setup(SimConfig::default());
    att.attach_parent(parent.clone()).unwrap();
    g.write(0x12_3000, 0x5555);
    let hva = g
        .host
        .dma_translate(att.device(), 0x12_3000, false)
        .unwrap();
    assert_eq!(hva, RAM_HVA + 0x12_3000);
    assert_eq!(
        g.host.dma_translate(att.device(), RAM_SIZE, false),
        Err(DmaFault::S2NotMapped { gpa: RAM_SIZE })
    );
    // Replace PT → nested → PT again keeps working; no nested HWPT leaks.
    let mut g2 = g;
    let root = g2.root();
    att.bind_nested(&parent, &s1(root)).unwrap();
    att.attach_parent(parent.clone()).unwrap();
    assert_eq!(g2.host.live_objects().nested, 0);
}

// ---------------------------------------------------------------- stale translations

#[test]
fn stage_1_change_is_stale_until_invalidated() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let dev = att.device();
    let root = g.root();
    let pte = g.map(root, 0x5000, 0x20_0000, P | RW | US);
    att.bind_nested(&parent, &s1(root)).unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5008, false),
        Ok(RAM_HVA + 0x20_0008)
    );

    // The guest points the PTE elsewhere but has not invalidated yet: still the old page.
    g.write(pte, 0x30_0000 | P | RW | US);
    assert_eq!(
        g.host.dma_translate(dev, 0x5008, false),
        Ok(RAM_HVA + 0x20_0008)
    );
    // ... and unmapping it is just as invisible.
    g.write(pte, 0);
    assert_eq!(
        g.host.dma_translate(dev, 0x5008, false),
        Ok(RAM_HVA + 0x20_0008)
    );
    g.write(pte, 0x30_0000 | P | RW | US);

    // A range invalidation elsewhere changes nothing; the right one does.
    att.invalidate(&[VtdS1Invalidation::range(0x6000, 1, true)])
        .unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5008, false),
        Ok(RAM_HVA + 0x20_0008)
    );
    att.invalidate(&[VtdS1Invalidation::range(0x5000, 1, true)])
        .unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5008, false),
        Ok(RAM_HVA + 0x30_0008)
    );

    // Unmap + invalidate: never reachable again.
    g.write(pte, 0);
    att.invalidate(&[VtdS1Invalidation::all()]).unwrap();
    for _ in 0..3 {
        assert_eq!(
            g.host.dma_translate(dev, 0x5008, false),
            Err(DmaFault::S1NotPresent {
                iova: 0x5008,
                level: 1
            })
        );
    }
    let c = g.host.counters();
    assert!(c.iotlb_hits >= 3 && c.iotlb_misses >= 2, "{c:?}");
}

#[test]
fn paging_structure_cache_survives_leaf_invalidation() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let dev = att.device();
    let root = g.root();
    g.map(root, 0x5000, 0x20_0000, P | RW | US);
    att.bind_nested(&parent, &s1(root)).unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    // Point the PDE at a new page table that maps the page elsewhere.
    let pde = g.entry_gpa(root, 4, 0x5000, 2);
    let pt = g.new_table();
    g.write(pt + 5 * 8, 0x30_0000 | P | RW | US);
    g.write(pde, pt | P | RW | US);
    // IH=1 (leaf): the cached PDE still leads to the old page table.
    att.invalidate(&[VtdS1Invalidation::range(0x5000, 1, true)])
        .unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    // IH=0: paging-structure caches go too.
    att.invalidate(&[VtdS1Invalidation::range(0x5000, 1, false)])
        .unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5000, false),
        Ok(RAM_HVA + 0x30_0000)
    );
}

#[test]
fn stage_2_unmap_flushes_every_nested_hwpt_on_the_parent() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let dev = att.device();
    let root = g.root();
    g.map(root, 0x5000, 0x20_0000, P | RW | US);
    att.bind_nested(&parent, &s1(root)).unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    assert_eq!(
        g.host.dma_translate(dev, 0x5000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    assert_eq!(g.host.counters().iotlb_hits, 1, "cached");

    // The VMM moves guest RAM page 0x20_0000 to another host page: unmap, map elsewhere.
    let ioas = parent.ioas();
    ioas.unmap(0, u64::MAX).unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x5000, false),
        Err(DmaFault::S2NotMapped { gpa: root }),
        "the PML4 itself is gone from stage 2"
    );
    let other_hva = RAM_HVA + 0x60_0000;
    ioas.map(0, RAM_HVA, 0x20_0000, DmaPerm::READ_WRITE)
        .unwrap();
    ioas.map(0x20_0000, other_hva, 0x1000, DmaPerm::READ_WRITE)
        .unwrap();
    ioas.map(
        0x20_1000,
        RAM_HVA + 0x20_1000,
        RAM_SIZE - 0x20_1000,
        DmaPerm::READ_WRITE,
    )
    .unwrap();
    assert_eq!(g.host.dma_translate(dev, 0x5000, false), Ok(other_hva));
}

#[test]
fn ensure_nested_rebinds_only_on_change() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let (r1, r2) = (g.root(), g.root());
    assert!(att.ensure_nested(&parent, &s1(r1)).unwrap());
    let first = att.current().hwpt();
    assert!(!att.ensure_nested(&parent, &s1(r1)).unwrap());
    assert_eq!(att.current().hwpt(), first, "replay of an unchanged entry");
    assert!(att.ensure_nested(&parent, &s1(r2)).unwrap());
    assert_ne!(att.current().hwpt(), first);
    let c = g.host.counters();
    assert_eq!((c.binds, c.attaches, c.replaces), (2, 1, 1));
    assert_eq!(g.host.live_objects().nested, 1);
}
