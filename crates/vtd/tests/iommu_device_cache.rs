//! `DeviceIommu`'s remembered translations over the real unit: reused until the guest
//! invalidates (or reprograms) anything, never after; faults never remembered; a first write
//! still reaches the unit (D bit).

#[path = "translate_support/mod.rs"]
mod translate_support;
mod unit_support;

use std::sync::Arc;

use translate_support::fs_entry;
use translate_support::{DATA_BASE, FS_A, FS_D, FS_P, FS_US, Mem, PageTable, SID, Stage, Tables};
use unit_support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};
use vtd::iommu::DeviceIommu;
use vtd::request::Remapper;
use vtd_spec::regs::offset;

const IOVA: u64 = 0xffff_f000;
const DID: u16 = 2;
const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_QIE: u32 = 1 << 26;

struct Guest {
    mem: Mem,
    rig: Rig,
    pt: PageTable,
    dma: IommuMemory<GuestMemoryMmap<()>, DeviceIommu>,
}

/// Linux's boot and attach (QI, scalable root, first-stage PASID entry, TE), and the device's
/// view of memory through `DeviceIommu`.
fn guest() -> Guest {
    let mem = Mem::new();
    let rig = Rig::with_ram("x-scalable-mode=on,x-flts=on", mem.ram.clone());
    rig.w32(offset::IQT, 0);
    rig.w64(offset::IQA, QUEUE | (1 << 11) | 1);
    rig.w32(offset::GCMD, GCMD_QIE);
    let tables = Tables::scalable(&mem);
    rig.w64(offset::RTADDR, tables.rtaddr().into_bits());
    rig.w32(offset::GCMD, GCMD_QIE | GCMD_SRTP);
    tables.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    tables.pasid_entry(SID, 0, fs_entry(&pt, DID));
    rig.w32(offset::GCMD, GCMD_QIE | GCMD_TE);
    let remapper: Arc<dyn Remapper> = rig.vtd.clone();
    let dma = IommuMemory::new(
        (*mem.ram).clone(),
        DeviceIommu::new(remapper, SID),
        true,
        (),
    );
    Guest { mem, rig, pt, dma }
}

impl Guest {
    fn submit(&mut self, descs: &[[u64; 4]]) {
        let mut all = descs.to_vec();
        all.push(wait(0, 2));
        self.rig.submit(&all);
        assert_eq!(self.rig.status(0), 2, "wait completed");
    }
    fn read(&self, iova: u64) -> Result<u32, vm_memory::GuestMemoryError> {
        self.dma.read_obj::<u32>(GuestAddress(iova))
    }
    fn translations(&self) -> u64 {
        self.rig.vtd.counters().translations
    }
    /// PASID-selective PASID-IOTLB invalidation (lazy mode's flush), one submission.
    fn flush(&mut self) {
        self.submit(&[piotlb(2, u64::from(DID), 0, 0)]);
    }
}

#[test]
fn a_remapped_page_is_stale_until_the_guest_invalidates_it_and_fresh_after() {
    let mut g = guest();
    let (a, b) = (DATA_BASE, DATA_BASE + 0x1000);
    g.mem.w32(a, 0xaaaa);
    g.mem.w32(b, 0xbbbb);
    g.pt.map4k(&g.mem, IOVA, a);
    assert_eq!(g.read(IOVA).unwrap(), 0xaaaa);
    let asked = g.translations();
    // The guest repoints the PTE without invalidating: the remembered translation is used
    // (the unit is not even asked), as a hardware IOTLB would.
    g.pt.map4k(&g.mem, IOVA, b);
    assert_eq!(
        g.read(IOVA).unwrap(),
        0xaaaa,
        "stale before the invalidation"
    );
    assert_eq!(g.translations(), asked, "served from the device's cache");
    // Page-selective invalidation of just this page: fresh after.
    g.submit(&[piotlb(3, u64::from(DID), 0, IOVA)]);
    assert_eq!(
        g.read(IOVA).unwrap(),
        0xbbbb,
        "fresh after the invalidation"
    );
}

#[test]
fn an_unmapped_page_works_until_the_lazy_flush_and_faults_after() {
    let mut g = guest();
    g.mem.w32(DATA_BASE, 0x1234);
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    assert_eq!(g.read(IOVA).unwrap(), 0x1234);
    g.pt.map(&g.mem, IOVA, 0, 1, 0);
    assert_eq!(g.read(IOVA).unwrap(), 0x1234, "stale before the flush");
    g.flush();
    assert!(g.read(IOVA).is_err(), "faults after the flush");
    assert!(g.read(IOVA).is_err(), "and keeps faulting");
}

#[test]
fn any_invalidation_or_translation_change_drops_what_the_device_remembers() {
    let mut g = guest();
    g.mem.w32(DATA_BASE, 0x55);
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    let before = g.rig.vtd.invalidation_generation();
    assert_eq!(g.read(IOVA).unwrap(), 0x55);
    assert_eq!(
        g.rig.vtd.invalidation_generation(),
        before,
        "DMA bumps nothing"
    );
    // An invalidation of another domain still makes the device ask the unit again.
    g.submit(&[piotlb(2, u64::from(DID) + 1, 0, 0)]);
    assert!(g.rig.vtd.invalidation_generation() > before);
    let asked = g.translations();
    assert_eq!(g.read(IOVA).unwrap(), 0x55);
    assert_eq!(g.translations(), asked + 1, "asked the unit again");
    // Translation off: the device's accesses are untranslated at once (IOVA = GPA).
    g.rig.w32(offset::GCMD, GCMD_QIE);
    g.mem.w32(0x1000, 0x77);
    assert_eq!(g.read(0x1000).unwrap(), 0x77);
    g.rig.w32(offset::GCMD, GCMD_QIE | GCMD_TE);
    assert!(g.read(0x1000).is_err(), "translated again after TE");
}

#[test]
fn a_fault_is_not_remembered() {
    let g = guest();
    g.mem.w32(DATA_BASE, 0x99);
    assert!(g.read(IOVA).is_err(), "not mapped yet");
    // Caching mode is off: mapping a page needs no invalidation.
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    assert_eq!(g.read(IOVA).unwrap(), 0x99);
}

#[test]
fn a_first_write_after_reads_reaches_the_unit_and_sets_dirty() {
    let g = guest();
    let pte = g.pt.map(&g.mem, IOVA, DATA_BASE, 1, FS_P | 2 | FS_US);
    g.read(IOVA).unwrap();
    assert_eq!(g.mem.r64(pte) & (FS_A | FS_D), FS_A, "a read sets A only");
    g.dma.write_obj(0xd1u32, GuestAddress(IOVA)).unwrap();
    assert_eq!(g.mem.r64(pte) & FS_D, FS_D, "the first write set D");
    assert_eq!(g.mem.r32(DATA_BASE), 0xd1);
    // A read-only page refuses writes even after reads were remembered.
    let ro = g.pt.map(&g.mem, IOVA - 0x1000, DATA_BASE, 1, FS_P | FS_US);
    g.read(IOVA - 0x1000).unwrap();
    assert!(g.dma.write_obj(1u32, GuestAddress(IOVA - 0x1000)).is_err());
    assert_eq!(g.mem.r64(ro) & FS_D, 0);
}
