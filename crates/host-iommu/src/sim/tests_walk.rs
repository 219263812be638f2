//! Tests of the sim's nested walk (A/D, SRE/WPE, superpages, 5-level, stage-2 permissions,
//! hostile tables), sharing, injected failures, and the vm-memory adapter.

use std::sync::Arc;

use super::tests::{Guest, P, RAM_HVA, RAM_SIZE, RW, US, errno, s1, setup};
use super::*;
use crate::handles::{Attachment, DeviceAttachment, NestParentHwpt};
use crate::{DmaPerm, HostIommu, HostIommuError, VtdS1HwptData, VtdS1Invalidation};

const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const EA: u64 = 1 << 10;

// ---------------------------------------------------------------- sharing

#[test]
fn two_devices_share_one_nest_parent() {
    let (mut g, parent, mut a) = setup(SimConfig::default());
    let dev_b = g.host.add_device("0000:02:00.0");
    let mut b = DeviceAttachment::new(g.dyn_host.clone(), dev_b);
    let (ra, rb) = (g.root(), g.root());
    g.map(ra, 0x1000, 0x20_0000, P | RW | US);
    g.map(rb, 0x1000, 0x30_0000, P | RW | US);
    a.bind_nested(&parent, &s1(ra)).unwrap();
    b.bind_nested(&parent, &s1(rb)).unwrap();
    assert_eq!(
        g.host.dma_translate(a.device(), 0x1000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    assert_eq!(
        g.host.dma_translate(b.device(), 0x1000, false),
        Ok(RAM_HVA + 0x30_0000)
    );
    // Each nested HWPT has its own caches; invalidating one leaves the other's.
    let ha = a.nested().unwrap().id();
    let hb = b.nested().unwrap().id();
    a.invalidate(&[VtdS1Invalidation::all()]).unwrap();
    assert_eq!(g.host.cache_sizes(ha).unwrap().0, 0);
    assert_eq!(g.host.cache_sizes(hb).unwrap().0, 1);
    // A stage-2 unmap flushes both.
    parent.ioas().unmap(0x30_0000, 0x1000).unwrap_err();
    parent.ioas().unmap(0, RAM_SIZE).unwrap();
    assert_eq!(g.host.cache_sizes(ha).unwrap(), (0, 0));
    assert_eq!(g.host.cache_sizes(hb).unwrap(), (0, 0));
    // The parent outlives both bindings, whatever is dropped first.
    drop(parent);
    b.block().unwrap();
    assert_eq!(g.host.live_objects().nest_parents, 1, "a still holds it");
    drop(a);
    drop(b);
    assert_eq!(
        g.host.live_objects(),
        LiveObjects {
            ioas: 0,
            ..LiveObjects::default()
        }
    );
}

#[test]
fn attach_to_ioas_uses_an_automatic_hwpt_freed_on_detach() {
    let (g, parent, mut att) = setup(SimConfig::default());
    att.attach_ioas(parent.ioas().clone()).unwrap();
    assert_eq!(g.host.live_objects().auto, 1);
    assert_eq!(
        g.host.dma_translate(att.device(), 0x4000, true),
        Ok(RAM_HVA + 0x4000)
    );
    att.attach_parent(parent.clone()).unwrap();
    assert_eq!(g.host.live_objects().auto, 0, "replaced away: freed");
    att.attach_ioas(parent.ioas().clone()).unwrap();
    att.block().unwrap();
    assert_eq!(g.host.live_objects().auto, 0);
}

// ---------------------------------------------------------------- injected failures

#[test]
fn injected_alloc_failure_keeps_the_old_binding_and_leaks_nothing() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    g.map(root, 0x1000, 0x20_0000, P | RW | US);
    let first = att.bind_nested(&parent, &s1(root)).unwrap().id();
    g.host.fail_next_alloc(libc::ENOMEM);
    assert_eq!(errno(att.bind_nested(&parent, &s1(root))), libc::ENOMEM);
    assert_eq!(att.current().hwpt(), Some(first));
    assert_eq!(g.host.live_objects().nested, 1);
    assert_eq!(
        g.host.dma_translate(att.device(), 0x1000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    // And at nest-parent allocation.
    g.host.fail_next_alloc(libc::ENOSPC);
    assert_eq!(
        errno(NestParentHwpt::new(parent.ioas().clone(), att.device())),
        libc::ENOSPC
    );
    assert_eq!(g.host.live_objects().nest_parents, 1);
}

#[test]
fn injected_attach_failure_frees_the_new_hwpt_and_keeps_the_old_attachment() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    g.map(root, 0x1000, 0x20_0000, P | RW | US);
    // From blocked: still blocked, nothing left.
    g.host.fail_next_attach(libc::EBUSY);
    assert_eq!(errno(att.bind_nested(&parent, &s1(root))), libc::EBUSY);
    assert!(matches!(att.current(), Attachment::Blocked));
    assert_eq!(g.host.live_objects().nested, 0);
    assert_eq!(
        g.host.dma_translate(att.device(), 0x1000, false),
        Err(DmaFault::Blocked)
    );
    // From a binding: the old one stays in force (atomic replace), the new one is freed;
    // the caller may then block, as the vIOMMU does on a failed bind.
    let first = att.bind_nested(&parent, &s1(root)).unwrap().id();
    g.host.fail_next_attach(libc::EINVAL);
    assert_eq!(errno(att.bind_nested(&parent, &s1(root))), libc::EINVAL);
    assert_eq!(g.host.attached_hwpt(att.device()), Some(first));
    assert_eq!(g.host.live_objects().nested, 1);
    att.block().unwrap();
    assert_eq!(g.host.live_objects().nested, 0);
    let c = g.host.counters();
    assert_eq!((c.binds, c.attaches, c.replaces), (3, 1, 0));
}

#[test]
fn injected_invalidate_failure_reports_the_processed_count() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    let pte = g.map(root, 0x1000, 0x20_0000, P | RW | US);
    att.bind_nested(&parent, &s1(root)).unwrap();
    g.host.dma_translate(att.device(), 0x1000, false).unwrap();
    g.write(pte, 0x30_0000 | P | RW | US);
    g.host.fail_next_invalidate(libc::EIO, 1);
    let e = att
        .invalidate(&[
            VtdS1Invalidation::range(0x8000, 1, true),
            VtdS1Invalidation::range(0x1000, 1, true),
        ])
        .unwrap_err();
    assert_eq!(
        e,
        HostIommuError::Invalidate {
            processed: 1,
            total: 2,
            errno: libc::EIO
        }
    );
    // The unprocessed entry did not take effect: still stale.
    assert_eq!(
        g.host.dma_translate(att.device(), 0x1000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    g.host.fail_next_invalidate(libc::EIO, 0);
    assert_eq!(
        att.invalidate(&[]).unwrap_err().errno(),
        Some(libc::EIO),
        "even an empty call"
    );
}

// ---------------------------------------------------------------- the walk

#[test]
fn accessed_and_dirty_are_set_like_hardware() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    let pte = g.map(root, 0x1000, 0x20_0000, P | RW | US);
    let pml4e = root;
    att.bind_nested(&parent, &s1(root)).unwrap();
    g.host.dma_translate(att.device(), 0x1000, false).unwrap();
    assert_eq!(g.read(pte) & (A | D), A, "a read sets A only");
    assert_eq!(g.read(pml4e) & A, A, "on every level");
    g.host.dma_translate(att.device(), 0x1000, true).unwrap();
    assert_eq!(
        g.read(pte) & (A | D),
        A | D,
        "a write hit without D walks again and sets D"
    );
    assert_eq!(g.read(pte) & EA, 0, "EA only with EAFE");
    // A write through a read-only leaf faults and sets no D.
    let ro = g.map(root, 0x2000, 0x20_1000, P | US);
    assert_eq!(
        g.host.dma_translate(att.device(), 0x2000, true),
        Err(DmaFault::S1Permission {
            iova: 0x2000,
            write: true
        })
    );
    assert_eq!(g.read(ro) & D, 0);
    // With EAFE the walk sets EA too.
    let (mut g, parent, mut att) = setup(SimConfig {
        eafs: true,
        ..SimConfig::default()
    });
    let root = g.root();
    let pte = g.map(root, 0x1000, 0x20_0000, P | RW | US);
    let data = VtdS1HwptData {
        flags: VtdS1HwptData::EAFE,
        ..s1(root)
    };
    att.bind_nested(&parent, &data).unwrap();
    g.host.dma_translate(att.device(), 0x1000, false).unwrap();
    assert_eq!(g.read(pte) & (A | EA), A | EA);
}

#[test]
fn user_supervisor_sre_and_wpe() {
    let cfg = SimConfig {
        srs: true,
        ..SimConfig::default()
    };
    let sup_write = DmaAccess {
        read: false,
        write: true,
        supervisor: true,
    };
    let sup_read = DmaAccess {
        read: true,
        write: false,
        supervisor: true,
    };
    let (mut g, parent, mut att) = setup(cfg);
    let dev = att.device();
    let root = g.root();
    g.map(root, 0x1000, 0x20_0000, P | US); // user, read-only
    g.map(root, 0x2000, 0x20_1000, P | RW); // supervisor-only
    // SRE clear: supervisor requests are refused.
    att.bind_nested(&parent, &s1(root)).unwrap();
    assert_eq!(
        g.host.dma_translate_access(dev, 0x2000, sup_read),
        Err(DmaFault::SupervisorDisabled { iova: 0x2000 })
    );
    // User requests need U/S.
    assert!(matches!(
        g.host.dma_translate(dev, 0x2000, false),
        Err(DmaFault::S1Permission { .. })
    ));
    // SRE, no WPE: supervisor may write a read-only page.
    let sre = VtdS1HwptData {
        flags: VtdS1HwptData::SRE,
        ..s1(root)
    };
    att.bind_nested(&parent, &sre).unwrap();
    assert_eq!(
        g.host.dma_translate_access(dev, 0x2000, sup_read),
        Ok(RAM_HVA + 0x20_1000)
    );
    assert_eq!(
        g.host.dma_translate_access(dev, 0x1000, sup_write),
        Ok(RAM_HVA + 0x20_0000)
    );
    // SRE + WPE: it may not.
    let wpe = VtdS1HwptData {
        flags: VtdS1HwptData::SRE | VtdS1HwptData::WPE,
        ..s1(root)
    };
    att.bind_nested(&parent, &wpe).unwrap();
    assert!(matches!(
        g.host.dma_translate_access(dev, 0x1000, sup_write),
        Err(DmaFault::S1Permission { .. })
    ));
}

#[test]
fn one_gigabyte_pages_need_fs1gp() {
    for fs1gp in [true, false] {
        let (mut g, parent, mut att) = setup(SimConfig {
            fs1gp,
            ..SimConfig::default()
        });
        let root = g.root();
        // A 1 GiB leaf at IOVA 1 GiB → GPA 0.
        let pdpe = g.entry_gpa(root, 4, 1 << 30, 3);
        g.write(pdpe, P | RW | US | PS);
        // A 2 MiB leaf at IOVA 2 GiB → GPA 2 MiB.
        let pde = g.entry_gpa(root, 4, 2 << 30, 2);
        g.write(pde, (2 << 20) | P | RW | US | PS);
        att.bind_nested(&parent, &s1(root)).unwrap();
        let dev = att.device();
        assert_eq!(
            g.host.dma_translate(dev, (2 << 30) + 0x1_2345, false),
            Ok(RAM_HVA + (2 << 20) + 0x1_2345)
        );
        let r = g.host.dma_translate(dev, (1 << 30) + 0x12_3456, false);
        if fs1gp {
            assert_eq!(r, Ok(RAM_HVA + 0x12_3456));
        } else {
            assert_eq!(
                r,
                Err(DmaFault::S1Reserved {
                    iova: (1 << 30) + 0x12_3456,
                    level: 3
                })
            );
        }
    }
}

#[test]
fn five_level_tables_and_canonical_addresses() {
    let (mut g, parent, mut att) = setup(SimConfig {
        aw_bits: 57,
        ..SimConfig::default()
    });
    let root = g.root();
    let iova = 0x0001_0000_0000_3000u64; // needs the fifth level
    let e = g.entry_gpa(root, 5, iova, 1);
    g.write(e, 0x20_0000 | P | RW | US);
    let data = VtdS1HwptData {
        addr_width: 57,
        ..s1(root)
    };
    att.bind_nested(&parent, &data).unwrap();
    let dev = att.device();
    assert_eq!(
        g.host.dma_translate(dev, iova + 8, true),
        Ok(RAM_HVA + 0x20_0008)
    );
    assert_eq!(
        g.host.dma_translate(dev, 1 << 57, false),
        Err(DmaFault::NonCanonical {
            iova: 1 << 57,
            width: 57
        })
    );
    // 4-level: bit 48 set without sign extension is not canonical.
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    att.bind_nested(&parent, &s1(root)).unwrap();
    assert_eq!(
        g.host.dma_translate(att.device(), 1 << 48, false),
        Err(DmaFault::NonCanonical {
            iova: 1 << 48,
            width: 48
        })
    );
}

#[test]
fn stage_2_permissions_bind_tables_and_data() {
    let g0 = Guest::new(SimConfig::default());
    let mut g = g0;
    let dev = g.host.add_device("0000:01:00.0");
    // Guest RAM writable except one read-only page (data) and the table pages read-only.
    let ioas = Arc::new(crate::Ioas::new(g.dyn_host.clone()).unwrap());
    ioas.map(0, RAM_HVA, 0x20_0000, DmaPerm::READ_WRITE)
        .unwrap();
    ioas.map(0x20_0000, RAM_HVA + 0x20_0000, 0x1000, DmaPerm::READ)
        .unwrap();
    ioas.map(
        0x20_1000,
        RAM_HVA + 0x20_1000,
        0x1f_f000,
        DmaPerm::READ_WRITE,
    )
    .unwrap();
    ioas.map(
        0x40_0000,
        RAM_HVA + 0x40_0000,
        RAM_SIZE - 0x40_0000,
        DmaPerm::READ,
    )
    .unwrap();
    let parent = Arc::new(NestParentHwpt::new(ioas, dev).unwrap());
    let mut att = DeviceAttachment::new(g.dyn_host.clone(), dev);
    let root = g.root();
    // Pre-set A/D everywhere so the walk needs no table write.
    let pte = g.entry_gpa(root, 4, 0x1000, 1);
    g.write(pte, 0x20_0000 | P | RW | US | A | D);
    for level in 2..=4 {
        let e = g.entry_gpa(root, 4, 0x1000, level);
        g.write(e, g.read(e) | A);
    }
    let pte2 = g.entry_gpa(root, 4, 0x2000, 1);
    g.write(pte2, 0x20_1000 | P | RW | US);
    att.bind_nested(&parent, &s1(root)).unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x1000, false),
        Ok(RAM_HVA + 0x20_0000)
    );
    assert_eq!(
        g.host.dma_translate(dev, 0x1000, true),
        Err(DmaFault::S2Permission {
            gpa: 0x20_0000,
            write: true
        }),
        "stage 1 allows the write, stage 2 does not"
    );
    // The A bit of the second PTE cannot be set in a read-only table page.
    assert_eq!(
        g.host.dma_translate(dev, 0x2000, false),
        Err(DmaFault::S2Permission {
            gpa: pte2,
            write: true
        })
    );
}

#[test]
fn hostile_tables_never_panic_or_loop() {
    // A PML4 whose entries point back at itself: the walk reads one entry per level and ends.
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    for i in 0..512 {
        g.write(root + i * 8, root | P | RW | US);
    }
    att.bind_nested(&parent, &s1(root)).unwrap();
    let dev = att.device();
    // The "leaf" is the PML4 page itself.
    assert_eq!(
        g.host.dma_translate(dev, 0x1234, false),
        Ok(RAM_HVA + root + 0x234)
    );
    // Garbage tables: pseudo-random entries everywhere, pointers anywhere.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for t in 0..16u64 {
        for i in 0..512 {
            let v = next();
            // Half the time a pointer into the table area, so walks go deep.
            let v = if v & 1 == 0 {
                (super::tests::TABLES_GPA + (v >> 1) % 16 * 0x1000) | (v & 0xfff)
            } else {
                v
            };
            g.write(super::tests::TABLES_GPA + t * 0x1000 + i * 8, v);
        }
    }
    for pgtbl in [root, 0, RAM_SIZE - 8, u64::MAX, 0x1_0000_0000_0000] {
        let data = VtdS1HwptData {
            pgtbl_addr: pgtbl,
            ..s1(root)
        };
        att.bind_nested(&parent, &data).unwrap();
        for _ in 0..500 {
            let iova = next();
            let write = iova & 1 == 0;
            let _ = g
                .host
                .dma_translate(dev, iova & 0x0000_7fff_ffff_ffff, write);
            let _ = g.host.dma_translate(dev, iova, write);
        }
        let (iotlb, psc) = g.host.cache_sizes(att.nested().unwrap().id()).unwrap();
        assert!(iotlb <= iotlb::IOTLB_CAPACITY && psc <= iotlb::PSC_CAPACITY);
    }
    let _ = g.mem.read_u64(RAM_HVA);
}

#[test]
fn iotlb_stays_bounded() {
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    // 2 MiB leaf covering GPA 0..2 MiB at IOVA 0: 512 pages, then more via a second one.
    let pde = g.entry_gpa(root, 4, 0, 2);
    g.write(pde, P | RW | US | PS);
    let pde2 = g.entry_gpa(root, 4, 2 << 20, 2);
    g.write(pde2, (2 << 20) | P | RW | US | PS);
    att.bind_nested(&parent, &s1(root)).unwrap();
    for page in 0..1024u64 {
        g.host
            .dma_translate(att.device(), page << 12, false)
            .unwrap();
    }
    let (iotlb, _) = g.host.cache_sizes(att.nested().unwrap().id()).unwrap();
    assert_eq!(iotlb, iotlb::IOTLB_CAPACITY);
}

// ---------------------------------------------------------------- vm-memory adapter

#[test]
fn emulated_device_dmas_through_the_nested_walk() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, IommuMemory};

    let size = 4usize << 20;
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
    let hva = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let ram = vec![GuestRamRegion {
        gpa: 0,
        size: size as u64,
        hva,
    }];
    let host = Arc::new(SimHost::new(
        SimConfig::default(),
        Arc::new(GuestRamMemory::new(mem.clone(), ram.clone())),
    ));
    let dyn_host: Arc<dyn HostIommu> = host.clone();
    let dev = host.add_device("virtio-blk as passthrough");
    let ioas = Arc::new(crate::Ioas::new(dyn_host.clone()).unwrap());
    ioas.map(0, hva, size as u64, DmaPerm::READ_WRITE).unwrap();
    let parent = Arc::new(NestParentHwpt::new(ioas, dev).unwrap());
    let mut att = DeviceAttachment::new(dyn_host, dev);

    // The guest's table: IOVA 0x10_0000.. (two pages) → GPA 0x30_1000, 0x20_0000.
    let (pml4, pdpt, pd, pt) = (0x8_0000u64, 0x8_1000u64, 0x8_2000u64, 0x8_3000u64);
    let w = |gpa: u64, v: u64| mem.write_obj(v, GuestAddress(gpa)).unwrap();
    w(pml4, pdpt | P | RW | US);
    w(pdpt, pd | P | RW | US);
    w(pd, pt | P | RW | US);
    w(pt + 0x100 * 8, 0x30_1000 | P | RW | US);
    w(pt + 0x101 * 8, 0x20_0000 | P | RW | US);
    att.bind_nested(&parent, &s1(pml4)).unwrap();

    let iommu = SimIommu::new(host.clone(), dev, ram);
    let dma = IommuMemory::new(mem.clone(), iommu, true, ());
    // A write across the page boundary lands in two guest pages.
    let data: Vec<u8> = (0..32u8).collect();
    dma.write_slice(&data, GuestAddress(0x10_0ff0)).unwrap();
    let mut lo = [0u8; 16];
    let mut hi = [0u8; 16];
    mem.read_slice(&mut lo, GuestAddress(0x30_1ff0)).unwrap();
    mem.read_slice(&mut hi, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&lo[..], &data[..16]);
    assert_eq!(&hi[..], &data[16..]);
    let mut back = [0u8; 32];
    dma.read_slice(&mut back, GuestAddress(0x10_0ff0)).unwrap();
    assert_eq!(&back[..], &data[..]);
    // The walk set A/D in guest memory, atomically, through vm-memory.
    let leaf: u64 = mem.read_obj(GuestAddress(pt + 0x100 * 8)).unwrap();
    assert_eq!(leaf & (A | D), A | D);
    // Zero-length and overflowing ranges are answered, not panicked on.
    use vm_memory::{Iommu, Permissions};
    let sim_iommu = SimIommu::new(host.clone(), dev, vec![]);
    assert!(
        sim_iommu
            .translate(GuestAddress(0x10_0000), 0, Permissions::Read)
            .is_ok()
    );
    assert!(
        sim_iommu
            .translate(GuestAddress(u64::MAX - 1), 16, Permissions::Read)
            .is_err()
    );
    assert!(
        sim_iommu
            .translate(GuestAddress(0x10_0000), 8, Permissions::Read)
            .is_err(),
        "host address outside the RAM table"
    );
    // Unmapped IOVA: the access fails rather than touching anything.
    assert!(dma.read_slice(&mut back, GuestAddress(0x50_0000)).is_err());
    // Unbound: blocked.
    att.block().unwrap();
    assert!(dma.read_slice(&mut back, GuestAddress(0x10_0ff0)).is_err());
}

// ---------------------------------------------------------------- concurrency, unplug

/// Devices DMA from their own threads while the vIOMMU rebinds and invalidates: every
/// translation lands on one of the pages the guest ever mapped, nothing deadlocks.
#[test]
fn dma_rebind_and_invalidate_concurrently() {
    let (mut g, parent, mut a) = setup(SimConfig::default());
    let dev_b = g.host.add_device("0000:02:00.0");
    let mut b = DeviceAttachment::new(g.dyn_host.clone(), dev_b);
    let (r1, r2) = (g.root(), g.root());
    g.map(r1, 0x1000, 0x20_0000, P | RW | US);
    g.map(r2, 0x1000, 0x30_0000, P | RW | US);
    a.bind_nested(&parent, &s1(r1)).unwrap();
    b.bind_nested(&parent, &s1(r2)).unwrap();
    let host = g.host.clone();
    let (da, db) = (a.device(), b.device());
    std::thread::scope(|s| {
        for dev in [da, db] {
            let host = host.clone();
            s.spawn(move || {
                for _ in 0..2000 {
                    let hva = host.dma_translate(dev, 0x1000, true).unwrap();
                    assert!(hva == RAM_HVA + 0x20_0000 || hva == RAM_HVA + 0x30_0000);
                }
            });
        }
        for i in 0..200 {
            let root = if i % 2 == 0 { r2 } else { r1 };
            a.bind_nested(&parent, &s1(root)).unwrap();
            b.invalidate(&[VtdS1Invalidation::all()]).unwrap();
        }
    });
    assert_eq!(g.host.live_objects().nested, 2);
    assert_eq!(g.host.counters().dma_translations, 4000);
}

#[test]
fn removing_a_device_detaches_it() {
    let (g, parent, mut att) = setup(SimConfig::default());
    att.attach_parent(parent.clone()).unwrap();
    let dev = att.device();
    g.host.remove_device(dev).unwrap();
    assert_eq!(
        g.host.dma_translate(dev, 0x1000, false),
        Err(DmaFault::Blocked)
    );
    assert_eq!(
        g.host.hw_info(dev).unwrap_err(),
        HostIommuError::UnknownDevice(dev)
    );
    assert_eq!(g.host.live_objects().attached_devices, 0);
    // The handle of the vanished device lets go of the parent on drop: nothing leaks.
    drop(att);
    drop(parent);
    assert_eq!(g.host.live_objects(), LiveObjects::default());
}

/// Random valid mappings (4 KiB and 2 MiB, RW and RO) against a reference map: every mapped
/// IOVA lands where the table says with the permissions it says; everything else faults.
#[test]
fn random_tables_match_a_reference() {
    use std::collections::BTreeMap;
    let (mut g, parent, mut att) = setup(SimConfig::default());
    let root = g.root();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Reference: 4 KiB page number → (gpa page, writable).
    let mut reference: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    for _ in 0..200 {
        let huge = next() % 8 == 0;
        let writable = next() % 3 != 0;
        let rw = if writable { RW } else { 0 };
        if huge {
            // A 2 MiB IOVA slot in [1 GiB, 1 GiB + 64 MiB) onto one of the first two 2 MiB GPAs.
            let slot = (1 << 30) + (next() % 32) * (2 << 20);
            let gpa = (next() % 2) * (2 << 20);
            if (0..512).any(|i| reference.contains_key(&((slot >> 12) + i))) {
                continue;
            }
            let pde = g.entry_gpa(root, 4, slot, 2);
            g.write(pde, gpa | P | US | PS | rw);
            for i in 0..512 {
                reference.insert((slot >> 12) + i, ((gpa >> 12) + i, writable));
            }
        } else {
            let iova = (next() % 4096) << 12; // below 16 MiB
            let gpa = (next() % 512) << 12; // first 2 MiB of guest RAM
            if reference.contains_key(&(iova >> 12)) {
                continue;
            }
            let e = g.entry_gpa(root, 4, iova, 1);
            g.write(e, gpa | P | US | rw);
            reference.insert(iova >> 12, (gpa >> 12, writable));
        }
    }
    att.bind_nested(&parent, &s1(root)).unwrap();
    let dev = att.device();
    for _ in 0..3000 {
        let iova = if next() % 2 == 0 {
            next() % (16 << 20)
        } else {
            (1 << 30) + next() % (64 << 20)
        };
        let write = next() % 2 == 0;
        let got = g.host.dma_translate(dev, iova, write);
        match reference.get(&(iova >> 12)) {
            Some(&(page, writable)) if writable || !write => {
                assert_eq!(
                    got,
                    Ok(RAM_HVA + (page << 12) + (iova & 0xfff)),
                    "{iova:#x}"
                );
            }
            Some(_) => assert_eq!(
                got,
                Err(DmaFault::S1Permission { iova, write: true }),
                "{iova:#x}"
            ),
            None => assert!(
                matches!(got, Err(DmaFault::S1NotPresent { .. })),
                "{iova:#x}: {got:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------- several host units

/// One unit with ERRATA_772415 and one without (the cover letter's mixed host): each
/// device reports its own unit, the erratum binds only parents built for the erratum unit,
/// a 57-bit parent does not fit a 48-bit unit, and the walk uses the device's unit.
#[test]
fn several_units_each_with_their_own_rules() {
    let mem = Arc::new(VecHostMemory::new(&[(RAM_HVA, RAM_SIZE as usize)]));
    let errata = SimConfig {
        errata_772415: true,
        fs1gp: false,
        ..SimConfig::default()
    };
    let wide = SimConfig {
        aw_bits: 57,
        ..SimConfig::default()
    };
    let host = Arc::new(SimHost::with_units(vec![errata, wide], mem.clone()));
    let dyn_host: Arc<dyn HostIommu> = host.clone();
    let d0 = host.add_device_on("0000:01:00.0", 0).unwrap();
    let d1 = host.add_device_on("0000:81:00.0", 1).unwrap();
    assert_eq!(host.add_device_on("nowhere", 2), None);
    let i0 = host.hw_info(d0).unwrap();
    let i1 = host.hw_info(d1).unwrap();
    assert!(i0.vtd.unwrap().errata_772415() && !i1.vtd.unwrap().errata_772415());
    assert!(i1.vtd.unwrap().fs5lp() && !i0.vtd.unwrap().fs1gp());

    let map_ram = |ioas: &crate::Ioas| {
        ioas.map(0, RAM_HVA, RAM_SIZE, DmaPerm::READ_WRITE).unwrap();
    };
    let ioas0 = Arc::new(crate::Ioas::new(dyn_host.clone()).unwrap());
    map_ram(&ioas0);
    let p0 = Arc::new(NestParentHwpt::new(ioas0.clone(), d0).unwrap());
    assert_eq!(
        errno(ioas0.map(RAM_SIZE, RAM_HVA, 0x1000, DmaPerm::READ)),
        libc::EINVAL
    );
    let ioas1 = Arc::new(crate::Ioas::new(dyn_host.clone()).unwrap());
    map_ram(&ioas1);
    let p1 = Arc::new(NestParentHwpt::new(ioas1.clone(), d1).unwrap());
    ioas1.map(RAM_SIZE, RAM_HVA, 0x1000, DmaPerm::READ).unwrap();

    // The 57-bit unit's parent does not fit the 48-bit unit's device; the other way is fine.
    let mut a0 = DeviceAttachment::new(dyn_host.clone(), d0);
    let mut a1 = DeviceAttachment::new(dyn_host.clone(), d1);
    assert_eq!(errno(a0.attach_parent(p1.clone())), libc::EINVAL);
    a1.attach_parent(p0.clone()).unwrap();

    // A 1 GiB page: walked fine behind the FS1GP unit, reserved behind the other.
    let root = super::tests::TABLES_GPA;
    let mut g = Guest {
        mem,
        host: host.clone(),
        dyn_host: dyn_host.clone(),
        next_table: root + 0x1000,
    };
    let pdpe = g.entry_gpa(root, 4, 1 << 30, 3);
    g.write(pdpe, P | RW | US | PS);
    a0.bind_nested(&p0, &s1(root)).unwrap();
    a1.bind_nested(&p0, &s1(root)).unwrap();
    assert_eq!(
        host.dma_translate(d1, (1 << 30) + 0x5000, false),
        Ok(RAM_HVA + 0x5000)
    );
    assert!(matches!(
        host.dma_translate(d0, (1 << 30) + 0x5000, false),
        Err(DmaFault::S1Reserved { level: 3, .. })
    ));
}
