//! Translation hot paths: an IOTLB hit, a 4-level first-stage walk on a miss, one translate
//! through the vm-memory adapter, and the IOTLB invalidations Linux sends (a PASID-selective
//! flush over a full IOTLB; a page flush right after the miss that cached the page).

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

#[path = "../tests/translate_support/mod.rs"]
#[allow(unused_imports)]
mod translate_support;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use std::sync::Arc;
use translate_support::*;
use vm_memory::{GuestAddress, GuestMemory, Iommu, Permissions};
use vtd::dma_memory::DmaMemory;
use vtd::invalidation::Invalidation;
use vtd::iommu::DeviceIommu;
use vtd::request::{Access, DmaRequest};
use vtd::translate::Translator;

const IOVA: u64 = 0x1_0000_0000;
/// More distinct pages than the IOTLB holds, so cycling through them misses.
const MISS_PAGES: u64 = 65_536;

fn bench(c: &mut Criterion) {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    for i in 0..MISS_PAGES {
        pt.map4k(&mem, IOVA + i * 0x1000, DATA_BASE + (i % 1024) * 0x1000);
    }
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

    // Warm the A bits once so the steady-state miss is read-only, as for a re-walk.
    for i in 0..MISS_PAGES {
        translator
            .translate(ram, &state, &req(IOVA + i * 0x1000))
            .unwrap();
    }
    let mut i = 0u64;
    c.bench_function("fs_4level_walk_miss", |b| {
        b.iter(|| {
            // A stride co-prime with the page count visits every page before repeating.
            i = (i + 4099) % MISS_PAGES;
            translator
                .translate(ram, &state, black_box(&req(IOVA + i * 0x1000)))
                .unwrap()
        })
    });
    // The vm-memory adapter: one 4 KiB read through `DeviceIommu` (an IOTLB hit plus building
    // the per-call `vm_memory::Iotlb`).
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
    // Linux's strict-mode unmap of a page the device just used: the miss that cached it, then
    // the page-selective PASID-IOTLB invalidation that probes its slots and drops it.
    let mut j = 0u64;
    c.bench_function("fs_walk_miss_then_piotlb_page_flush_of_it", |b| {
        b.iter(|| {
            j = (j + 4099) % MISS_PAGES;
            let iova = IOVA + j * 0x1000;
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
        "IOTLB {} / {} entries after the miss benchmark",
        s.iotlb_entries, s.iotlb_capacity
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
