//! Translation hot paths: an IOTLB hit, a full 4-level first-stage walk on a miss and one that
//! starts from the cached leaf table, one translate through the vm-memory adapter and one
//! through `DmaMemory`, and the IOTLB invalidations Linux sends (a PASID-selective flush over
//! a full IOTLB; a page flush right after the miss that cached the page).

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

#[path = "../tests/translate/support/mod.rs"]
#[allow(unused_imports)]
mod translate_support;

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use translate_support::*;
use vm_memory::{GuestAddress, GuestMemory, Iommu, Permissions};
use vtd::Translator;
use vtd::dma_memory::DmaMemory;
use vtd::invalidation::Invalidation;
use vtd::iommu::DeviceIommu;
use vtd::request::{Access, DmaRequest};

const IOVA: u64 = 0x1_0000_0000;
/// More distinct pages than the IOTLB holds, so cycling through them misses.
const MISS_PAGES: u64 = 65_536;
/// The walk benchmarks' pages: twice the IOTLB, each alone in its 64-byte line of the leaf
/// table (a walk finds no neighbour to cache along).
const WALK_PAGES: u64 = 16_384;
/// Cached-leaf-table walks: 256 regions of 2 MiB (the leaf-table cache holds 512), 64 pages
/// each, one per line.
const CACHED_IOVA: u64 = 0x10_0000_0000;
/// Full walks: one page in each of `WALK_PAGES` 2 MiB regions (far more than the leaf-table
/// cache holds); their PDEs share 64 leaf tables, each page alone in its line.
const FULL_IOVA: u64 = 0x20_0000_0000;
const REGION: u64 = 2 << 20;
const SHARED_LEAF_TABLES: u64 = 64;
const LEAF: u64 = FS_P | FS_RW | FS_US | FS_A | FS_D;

/// The page `i` of the cached-leaf-table set: region `i / 64`, line `i % 64`.
fn cached_page(i: u64) -> u64 {
    CACHED_IOVA + (i / 64) * REGION + (i % 64) * 8 * 0x1000
}

/// The page of region `r` of the full-walk set.
fn full_page(r: u64) -> u64 {
    FULL_IOVA + r * REGION + ((r / SHARED_LEAF_TABLES) % 64) * 8 * 0x1000
}

/// Maps both walk sets into `pt`.
fn map_walk_sets(mem: &Mem, pt: &PageTable) {
    for i in 0..WALK_PAGES {
        pt.map(
            mem,
            cached_page(i),
            DATA_BASE + (i % 1024) * 0x1000,
            1,
            LEAF,
        );
    }
    let shared: Vec<u64> = (0..SHARED_LEAF_TABLES).map(|_| mem.page()).collect();
    for r in 0..WALK_PAGES {
        let iova = full_page(r);
        let table = shared[(r % SHARED_LEAF_TABLES) as usize];
        mem.w64(
            pt.entry_addr(mem, iova, 2),
            table | FS_P | FS_RW | FS_US | FS_A,
        );
        let index = (iova >> 12) & 0x1ff;
        mem.w64(table + index * 8, (DATA_BASE + (r % 1024) * 0x1000) | LEAF);
    }
}

fn bench(c: &mut Criterion) {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    for i in 0..MISS_PAGES {
        pt.map4k(&mem, IOVA + i * 0x1000, DATA_BASE + (i % 1024) * 0x1000);
    }
    map_walk_sets(&mem, &pt);
    t.pasid_entry(SID, 0, fs_entry(&pt, 2));
    let state = t.state();
    let translator = Translator::new(cap(), ecap(), Default::default());
    let ram = &*mem.ram;
    let req = |iova| DmaRequest {
        sid: SID,
        pasid: None,
        iova,
        access: Access::READ,
    };
    translator.translate(ram, &state, &req(IOVA)).unwrap();
    c.bench_function("iotlb_hit", |b| {
        b.iter(|| {
            translator
                .translate(ram, &state, black_box(&req(IOVA)))
                .unwrap()
        })
    });
    // Warm the A bits once so the steady-state misses are read-only, as for a re-walk.
    for i in 0..WALK_PAGES {
        for iova in [cached_page(i), full_page(i)] {
            translator.translate(ram, &state, &req(iova)).unwrap();
        }
    }
    // A stride co-prime with the page count visits every page before repeating.
    let mut i = 0u64;
    c.bench_function("fs_4level_walk_miss", |b| {
        b.iter(|| {
            i = (i + 4099) % WALK_PAGES;
            translator
                .translate(ram, &state, black_box(&req(full_page(i))))
                .unwrap()
        })
    });
    // The full walks filled the leaf-table cache with their regions: start this one from the
    // cached set's own leaf tables only.
    translator.invalidate(&Invalidation::PasidIotlbAll { did: 2, pasid: 0 });
    for i in 0..WALK_PAGES {
        translator
            .translate(ram, &state, &req(cached_page(i)))
            .unwrap();
    }
    let mut i = 0u64;
    c.bench_function("fs_walk_miss_cached_leaf_table", |b| {
        b.iter(|| {
            i = (i + 4099) % WALK_PAGES;
            translator
                .translate(ram, &state, black_box(&req(cached_page(i))))
                .unwrap()
        })
    });
    // The vm-memory adapter: one 4 KiB read through `DeviceIommu` (the device's remembered
    // page as a one-mapping `vm_memory::Iotlb`).
    let unit = Unit::new(&mem, state);
    let view = DeviceIommu::new(unit.clone(), SID);
    c.bench_function("device_iommu_translate_4k", |b| {
        b.iter(|| {
            view.translate(black_box(GuestAddress(IOVA)), 4096, Permissions::Read)
                .unwrap()
                .count()
        })
    });
    // What the VMM's devices use: the same 4 KiB through `DmaMemory` (the device's remembered
    // page, then the guest-RAM slice), no vm-memory `Iotlb`.
    let dma = DmaMemory::new(
        (*mem.ram).clone(),
        Arc::new(DeviceIommu::new(unit.clone(), SID)),
    );
    c.bench_function("dma_memory_slices_4k", |b| {
        b.iter(|| {
            dma.get_slices(black_box(GuestAddress(IOVA)), 4096, Permissions::Read)
                .unwrap()
                .count()
        })
    });
    // Linux's lazy-mode flush (PASID-IOTLB, PASID-selective) over a full IOTLB of another
    // domain: a generation bump, whatever the IOTLB holds.
    for i in 0..MISS_PAGES {
        translator
            .translate(ram, &state, &req(IOVA + i * 0x1000))
            .unwrap();
    }
    c.bench_function("piotlb_pasid_flush_full_iotlb", |b| {
        b.iter(|| {
            translator.invalidate(black_box(&Invalidation::PasidIotlbAll { did: 9, pasid: 0 }))
        })
    });
    // Linux's strict-mode unmap of a page the device just used: the miss that cached it (from
    // the cached leaf table), then the page-selective PASID-IOTLB invalidation (IH=1: only the
    // leaf changed) that probes its slots and drops it.
    translator.invalidate(&Invalidation::PasidIotlbAll { did: 2, pasid: 0 });
    for i in 0..WALK_PAGES {
        translator
            .translate(ram, &state, &req(cached_page(i)))
            .unwrap();
    }
    let mut j = 0u64;
    c.bench_function("fs_walk_miss_then_piotlb_page_flush_of_it", |b| {
        b.iter(|| {
            j = (j + 4099) % WALK_PAGES;
            let iova = cached_page(j);
            translator
                .translate(ram, &state, black_box(&req(iova)))
                .unwrap();
            translator.invalidate(black_box(&Invalidation::PasidIotlbPage {
                did: 2,
                pasid: 0,
                addr: iova,
                am: 0,
                ih: true,
            }))
        })
    });
    let s = translator.cache_stats();
    eprintln!(
        "IOTLB {} / {} entries, leaf tables {} / {} after the miss benchmarks",
        s.iotlb_entries, s.iotlb_capacity, s.leaf_table_entries, s.leaf_table_capacity
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
