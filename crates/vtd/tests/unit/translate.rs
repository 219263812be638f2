//! Queued invalidation reaching the real translator: cached translations stay in force until the
//! guest invalidates them through the queue, and then they are gone; translation follows TE.

use crate::support::*;
use crate::translate_support::{DATA_BASE, Mem, PageTable, SID, Stage, Tables, fs_entry};
use vtd::request::{Access, DmaRequest, Remapper};
use vtd_spec::regs::offset;

const IOVA: u64 = 0x4000_0000;

fn read(iova: u64) -> DmaRequest {
    DmaRequest {
        sid: SID,
        pasid: None,
        iova,
        access: Access::READ,
    }
}

struct Setup {
    rig: Rig,
    pt: PageTable,
    leaf: u64,
}

fn setup(mem: &Mem) -> Setup {
    let mut rig = Rig::with_ram("x-scalable-mode=on,x-flts=on", mem.ram.clone());
    let tables = Tables::scalable(mem);
    tables.sm_device(SID, false);
    let pt = PageTable::new(mem, 4, Stage::First);
    let leaf = pt.map4k(mem, IOVA, DATA_BASE);
    tables.pasid_entry(SID, 0, fs_entry(&pt, 2));
    rig.enable_qi(true, 0);
    rig.enable_translation(tables.rtaddr().into_bits());
    Setup { rig, pt, leaf }
}

fn gpa(rig: &Rig, iova: u64) -> Option<u64> {
    rig.vtd.remap(&read(iova)).ok().map(|t| t.gpa(iova))
}

#[test]
fn page_selective_pasid_iotlb_invalidation_drops_the_stale_translation() {
    let mem = Mem::new();
    let Setup { mut rig, pt, leaf } = setup(&mem);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE));
    // Remap the page without telling the unit: the cached translation stays in force.
    pt.map4k(&mem, IOVA, DATA_BASE + 0x10_0000);
    assert_eq!(mem.r64(leaf) & !0xfff, DATA_BASE + 0x10_0000);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE), "cached until invalidated");
    // An invalidation of another page keeps it; the right page drops it.
    rig.submit(&[piotlb(3, 2, 0, IOVA + 0x10_0000), wait(0, 1)]);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE));
    rig.submit(&[piotlb(3, 2, 0, IOVA | (1 << 6)), wait(0, 2)]);
    assert_eq!(rig.status(0), 2);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE + 0x10_0000));
}

#[test]
fn pasid_selective_and_global_invalidations_drop_everything_of_the_domain() {
    let mem = Mem::new();
    let Setup { mut rig, pt, .. } = setup(&mem);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE));
    pt.map4k(&mem, IOVA, DATA_BASE + 0x2000);
    rig.submit(&[piotlb(2, 3, 0, 0), wait(0, 1)]);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE), "other domain: kept");
    rig.submit(&[piotlb(2, 2, 0, 0), wait(0, 2)]);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE + 0x2000));
    // Unmap: after the whole-PASID page form (AM=52, as nested "flush all"), the page faults.
    pt.map(&mem, IOVA, 0, 1, 0);
    rig.submit(&[piotlb(3, 2, 0, 52), wait(0, 3)]);
    assert!(gpa(&rig, IOVA).is_none());
}

#[test]
fn translation_follows_te_and_faults_are_recorded_only_when_enabled() {
    let mem = Mem::new();
    let Setup { rig, .. } = setup(&mem);
    assert!(gpa(&rig, 0x7000).is_none());
    assert_eq!(rig.vtd.counters().faults_recorded, 1);
    rig.w32(offset::GCMD, 1 << 26); // keep QIE, clear TE
    assert_eq!(gpa(&rig, 0x7000), Some(0x7000), "TE=0: untranslated");
    let c = rig.vtd.counters();
    assert_eq!(c.faults, 1);
}

#[test]
fn register_reset_flushes_the_caches() {
    let mem = Mem::new();
    let Setup { mut rig, pt, .. } = setup(&mem);
    let rtaddr = rig.r64(offset::RTADDR);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE));
    pt.map4k(&mem, IOVA, DATA_BASE + 0x3000);
    rig.vtd.reset();
    rig.enable_qi(true, 0);
    rig.enable_translation(rtaddr);
    assert_eq!(gpa(&rig, IOVA), Some(DATA_BASE + 0x3000));
}
