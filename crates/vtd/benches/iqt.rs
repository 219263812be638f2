//! The guest's invalidation-queue tail write as Linux makes it in strict DMA mode, one per
//! unmapped page: a page-selective PASID-IOTLB invalidation (DID 2, PASID 0, one 4 KiB page, IH)
//! and a wait with a status write, in a 256-bit queue of a scalable-mode, first-stage unit
//! whose IOTLB holds the page (a DMA translated it just before).
//!
//! Not a criterion bench: a fixed loop meant to run under valgrind, where instruction and
//! allocation counts are deterministic (`benches/iqt-callgrind` runs it and divides).
//!
//! - `IQT_SUBMISSIONS` (default 10000): how many IQT writes.
//! - `IQT_OBSERVERS` (default 0): how many no-op invalidation observers to register (a
//!   passthrough device registers one).
//! - `IQT_G` (default 3): 2 sends a PASID-selective invalidation instead (Linux's lazy-mode
//!   flush queue), 3 the page-selective one.
//! - `IQT_IH` (default 1): the invalidation hint. Linux sets it on an unmap that freed no page
//!   table; 0 also makes the unit drop the cached leaf table of the page's region.
#![allow(missing_docs)]

#[path = "../tests/translate/support/mod.rs"]
#[allow(unused_imports)]
mod translate_support;

use std::hint::black_box;
use std::sync::Arc;
use translate_support::{DATA_BASE, Mem, PageTable, SID, Stage, Tables, fs_entry};
use vtd::GuestRam;
use vtd::invalidation::Invalidation;
use vtd::observer::{InvalidationObserver, UnitView};
use vtd::request::{Access, DmaRequest, Remapper};
use vtd::{Config, FaultInterrupt, Vtd};
use vtd_spec::regs::offset;

/// The queue (one 4 KiB page of 128 256-bit slots) and the status word, above the tables.
const QUEUE: u64 = 0x300_0000;
const STATUS: u64 = 0x380_0000;
const IOVA: u64 = 0x4000_0000;
/// Distinct pages the loop cycles through.
const PAGES: u64 = 64;

struct NoIrq;

impl FaultInterrupt for NoIrq {
    fn deliver(&self, _address: u64, _data: u32) {}
}

struct NoOp;

impl InvalidationObserver for NoOp {
    fn invalidated(&self, _unit: &dyn UnitView, inv: &Invalidation) {
        black_box(inv);
    }
    fn submission_done(&self, _unit: &dyn UnitView) {}
    fn root_or_translation_changed(&self, _unit: &dyn UnitView) {}
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let submissions = env("IQT_SUBMISSIONS", 10_000);
    let observers = env("IQT_OBSERVERS", 0);
    let ih = env("IQT_IH", 1) & 1;
    let pasid_selective = env("IQT_G", 3) == 2;
    let mem = Mem::new();
    let tables = Tables::scalable(&mem);
    tables.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    for i in 0..PAGES {
        pt.map4k(&mem, IOVA + i * 0x1000, DATA_BASE + i * 0x1000);
    }
    tables.pasid_entry(SID, 0, fs_entry(&pt, 2));

    let ram = mem.ram.clone();
    let config = Config::parse("x-scalable-mode=on,x-flts=on").unwrap();
    let vtd = Vtd::new(config, ram.clone(), Arc::new(NoIrq));
    for _ in 0..observers {
        vtd.add_observer(Arc::new(NoOp));
    }
    let mmio_write: fn(&Vtd, u64, &[u8]) = black_box(Vtd::mmio_write);
    let w32 = |at: u64, v: u32| vtd.mmio_write(at, &v.to_le_bytes());
    // As Linux does: IQT = 0, IQA (256-bit, QS=1: 256 slots), QIE, then root pointer and TE.
    w32(offset::IQT, 0);
    vtd.mmio_write(offset::IQA, &(QUEUE | (1 << 11) | 1).to_le_bytes());
    w32(offset::GCMD, 1 << 26);
    vtd.mmio_write(offset::RTADDR, &tables.rtaddr().into_bits().to_le_bytes());
    w32(offset::GCMD, (1 << 26) | (1 << 30));
    w32(offset::GCMD, (1 << 26) | (1 << 31));

    let entries = 256u64;
    let mut tail = 0u64;
    let put = |slot: u64, q0: u64, q1: u64| {
        let at = QUEUE + slot * 32;
        ram.write_at(at, &q0.to_le_bytes()).unwrap();
        ram.write_at(at + 8, &q1.to_le_bytes()).unwrap();
    };
    for i in 0..submissions {
        let iova = IOVA + (i % PAGES) * 0x1000;
        let t = vtd
            .remap(&DmaRequest {
                sid: SID,
                pasid: None,
                iova,
                access: Access::READ,
            })
            .unwrap();
        black_box(t);
        // G=3, DID 2, PASID 0, one 4 KiB page (AM 0), IH as Linux's strict-mode unmap sets it
        // when it freed no page table (`IQT_IH`, default 1; 0 also drops cached leaf tables).
        if pasid_selective {
            put(tail, 6 | (2 << 4) | (2 << 16), 0);
        } else {
            put(tail, 6 | (3 << 4) | (2 << 16), iova | (ih << 6));
        }
        tail = (tail + 1) % entries;
        // Wait with SW, status data = the submission's low bits.
        put(tail, 5 | (1 << 5) | ((i & 0xffff_ffff) << 32), STATUS);
        tail = (tail + 1) % entries;
        // Called through a pointer, as the VMM's MMIO bus calls the unit (never inlined here).
        mmio_write(&vtd, offset::IQT, &((tail << 5) as u32).to_le_bytes());
    }
    let c = vtd.counters();
    assert_eq!(c.qi_errors, 0);
    assert_eq!(c.faults, 0);
    assert_eq!(c.qi_pasid_iotlb, submissions);
    assert_eq!(c.qi_wait, submissions);
    if submissions > 0 {
        assert_eq!(mem.r32(STATUS), ((submissions - 1) & 0xffff_ffff) as u32);
    }
    println!(
        "submissions {submissions} observers {observers} iotlb_misses {} qi_submissions {}",
        c.iotlb_misses, c.qi_submissions
    );
}
