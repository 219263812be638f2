//! `DeviceIommu`'s remembered translations over the real unit: reused until the guest
//! invalidates (or reprograms) anything, never after; faults never remembered; a first write
//! still reaches the unit (D bit). Every case runs twice: through vm-memory's `IommuMemory`
//! (`DeviceIommu` as a vm-memory `Iommu`) and through `vtd::dma_memory::DmaMemory` (what the
//! VMM gives its devices).

use std::sync::Arc;

use crate::support::*;
use crate::translate_support::fs_entry;
use crate::translate_support::{
    DATA_BASE, FS_A, FS_D, FS_P, FS_RW, FS_US, Mem, PageTable, SID, Stage, Tables,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory};
use vtd::dma_memory::DmaMemory;
use vtd::iommu::DeviceIommu;
use vtd::request::Generations;
use vtd_spec::regs::offset;

const IOVA: u64 = 0xffff_f000;
const DID: u16 = 2;
const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_QIE: u32 = 1 << 26;

struct Guest<M> {
    mem: Mem,
    rig: Rig,
    pt: PageTable,
    dma: M,
}

type ViaIommuMemory = IommuMemory<GuestMemoryMmap<()>, DeviceIommu>;
type ViaDmaMemory = DmaMemory<GuestMemoryMmap<()>, DeviceIommu>;

fn via_iommu_memory(ram: GuestMemoryMmap<()>, device: DeviceIommu) -> ViaIommuMemory {
    IommuMemory::new(ram, device, true, ())
}

fn via_dma_memory(ram: GuestMemoryMmap<()>, device: DeviceIommu) -> ViaDmaMemory {
    DmaMemory::new(ram, Arc::new(device))
}

/// Runs `case` once through each memory type.
macro_rules! both {
    ($case:ident: $iommu_memory:ident, $dma_memory:ident) => {
        #[test]
        fn $iommu_memory() {
            $case(guest(via_iommu_memory));
        }
        #[test]
        fn $dma_memory() {
            $case(guest(via_dma_memory));
        }
    };
}

/// Linux's boot and attach (QI, scalable root, first-stage PASID entry, TE), and the device's
/// view of memory through `DeviceIommu`.
fn guest<M>(device_memory: fn(GuestMemoryMmap<()>, DeviceIommu) -> M) -> Guest<M> {
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
    let dma = device_memory((*mem.ram).clone(), DeviceIommu::new(rig.vtd.clone(), SID));
    Guest { mem, rig, pt, dma }
}

impl<M: GuestMemory> Guest<M> {
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
        self.submit(&[piotlb(2, DID, 0, 0)]);
    }
}

both!(
    a_remapped_page_is_stale_until_the_guest_invalidates_it_and_fresh_after:
    stale_until_invalidated_iommu_memory,
    stale_until_invalidated_dma_memory
);
fn a_remapped_page_is_stale_until_the_guest_invalidates_it_and_fresh_after<M: GuestMemory>(
    mut g: Guest<M>,
) {
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
    g.submit(&[piotlb(3, DID, 0, IOVA)]);
    assert_eq!(
        g.read(IOVA).unwrap(),
        0xbbbb,
        "fresh after the invalidation"
    );
}

both!(
    an_unmapped_page_works_until_the_lazy_flush_and_faults_after:
    unmapped_works_until_flush_iommu_memory,
    unmapped_works_until_flush_dma_memory
);
fn an_unmapped_page_works_until_the_lazy_flush_and_faults_after<M: GuestMemory>(mut g: Guest<M>) {
    g.mem.w32(DATA_BASE, 0x1234);
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    assert_eq!(g.read(IOVA).unwrap(), 0x1234);
    g.pt.map(&g.mem, IOVA, 0, 1, 0);
    assert_eq!(g.read(IOVA).unwrap(), 0x1234, "stale before the flush");
    g.flush();
    assert!(g.read(IOVA).is_err(), "faults after the flush");
    assert!(g.read(IOVA).is_err(), "and keeps faulting");
}

both!(
    any_invalidation_or_translation_change_drops_what_the_device_remembers:
    any_change_drops_iommu_memory,
    any_change_drops_dma_memory
);
fn any_invalidation_or_translation_change_drops_what_the_device_remembers<M: GuestMemory>(
    mut g: Guest<M>,
) {
    g.mem.w32(DATA_BASE, 0x55);
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    let before = g.rig.vtd.generation();
    assert_eq!(g.read(IOVA).unwrap(), 0x55);
    assert_eq!(g.rig.vtd.generation(), before, "DMA bumps nothing");
    // An invalidation of another domain still makes the device ask the unit again.
    g.submit(&[piotlb(2, DID + 1, 0, 0)]);
    assert!(g.rig.vtd.generation() > before);
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

both!(
    a_fault_is_not_remembered:
    fault_not_remembered_iommu_memory,
    fault_not_remembered_dma_memory
);
fn a_fault_is_not_remembered<M: GuestMemory>(g: Guest<M>) {
    g.mem.w32(DATA_BASE, 0x99);
    assert!(g.read(IOVA).is_err(), "not mapped yet");
    // Caching mode is off: mapping a page needs no invalidation.
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    assert_eq!(g.read(IOVA).unwrap(), 0x99);
}

both!(
    a_first_write_after_reads_reaches_the_unit_and_sets_dirty:
    first_write_sets_dirty_iommu_memory,
    first_write_sets_dirty_dma_memory
);
fn a_first_write_after_reads_reaches_the_unit_and_sets_dirty<M: GuestMemory>(g: Guest<M>) {
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

/// What one access through a memory gave: the bytes read, or that it was refused.
fn read_via<M: GuestMemory>(memory: &M, iova: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    memory.read_slice(&mut buf, GuestAddress(iova)).ok()?;
    Some(buf)
}

/// Page kinds of the differential test's window.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Unmapped,
    ReadOnly,
    ReadWrite,
}

const WINDOW: u64 = 0x4000_0000;
const WINDOW_PAGES: u64 = 24;

use proptest::prelude::Strategy;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// `DmaMemory` reads what `IommuMemory` reads, refuses what it refuses (unmapped pages,
    /// writes to read-only pages), across page boundaries and with scattered frames; and a
    /// write it accepts lands where `IommuMemory` then reads it.
    #[test]
    fn dma_memory_agrees_with_iommu_memory(
        kinds in proptest::collection::vec(0u8..3, WINDOW_PAGES as usize),
        frames in proptest::strategy::Just((0..WINDOW_PAGES).collect::<Vec<u64>>()).prop_shuffle(),
        accesses in proptest::collection::vec((0..WINDOW_PAGES * 4096, 1usize..3 * 4096, proptest::bool::ANY), 1..24),
    ) {

        let g = guest(via_dma_memory);
        let reference =
            via_iommu_memory((*g.mem.ram).clone(), DeviceIommu::new(g.rig.vtd.clone(), SID));
        for (page, kind) in kinds.iter().enumerate() {
            let kind = [Kind::Unmapped, Kind::ReadOnly, Kind::ReadWrite][usize::from(*kind)];
            let iova = WINDOW + page as u64 * 4096;
            let gpa = DATA_BASE + frames[page] * 4096;
            for word in 0..1024u64 {
                g.mem.w32(gpa + word * 4, (page as u32) << 16 | word as u32);
            }
            match kind {
                Kind::Unmapped => {}
                Kind::ReadOnly => {
                    g.pt.map(&g.mem, iova, gpa, 1, FS_P | FS_US);
                }
                Kind::ReadWrite => {
                    g.pt.map4k(&g.mem, iova, gpa);
                }
            }
        }
        for (offset, len, write) in accesses {
            let iova = WINDOW + offset;
            let expected = read_via(&reference, iova, len);
            proptest::prop_assert_eq!(read_via(&g.dma, iova, len), expected.clone(), "read {:#x}+{}", iova, len);
            if write {
                let pattern: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0x5a).collect();
                let accepted = g.dma.write_slice(&pattern, GuestAddress(iova)).is_ok();
                let reference_accepts = reference.check_range(GuestAddress(iova), len, vm_memory::Permissions::Write);
                proptest::prop_assert_eq!(accepted, reference_accepts, "write {:#x}+{}", iova, len);
                if accepted {
                    proptest::prop_assert_eq!(read_via(&reference, iova, len), Some(pattern));
                }
            }
        }
    }
}

#[test]
fn dma_memory_uses_a_superpage_as_one_piece() {
    let g = guest(via_dma_memory);
    let iova = 0x4020_0000;
    g.pt.map(&g.mem, iova, DATA_BASE, 2, FS_P | FS_RW | FS_US);
    g.mem.w32(DATA_BASE + 0x1ffe, 0x1234_5678);
    let slices: Vec<_> = g
        .dma
        .get_slices(GuestAddress(iova + 0x1ffe), 4, vm_memory::Permissions::Read)
        .unwrap()
        .collect();
    assert_eq!(
        slices.len(),
        1,
        "one piece across the 4 KiB boundary inside 2 MiB"
    );
    assert_eq!(g.read(iova + 0x1ffe).unwrap(), 0x1234_5678);
    let asked = g.translations();
    assert_eq!(g.read(iova + 0x1f_f000).unwrap(), 0, "same 2 MiB page");
    assert_eq!(g.translations(), asked, "remembered as one 2 MiB page");
}

#[test]
fn dma_memory_refuses_hostile_lengths_without_translating() {
    let g = guest(via_dma_memory);
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    let asked = g.translations();
    let read = vm_memory::Permissions::Read;
    assert!(
        g.dma
            .get_slices(GuestAddress(IOVA), (1 << 30) + 1, read)
            .is_err()
    );
    assert!(
        g.dma
            .get_slices(GuestAddress(u64::MAX - 3), 8, read)
            .is_err()
    );
    assert!(!g.dma.check_range(GuestAddress(u64::MAX), 2, read));
    assert_eq!(g.translations(), asked, "nothing translated");
    assert_eq!(
        g.dma
            .get_slices(GuestAddress(IOVA), 0, read)
            .unwrap()
            .count(),
        0
    );
    // A fault ends the iteration: one error, then nothing.
    let mut slices = g
        .dma
        .get_slices(GuestAddress(IOVA + 0x1000), 16, read)
        .unwrap();
    assert!(matches!(slices.next(), Some(Err(_))));
    assert!(slices.next().is_none() && slices.next().is_none());
    // A range starting on a good page and running into an unmapped one: the good part,
    // then the error.
    let mut slices = g
        .dma
        .get_slices(GuestAddress(IOVA + 0xff0), 32, read)
        .unwrap();
    assert_eq!(slices.next().unwrap().unwrap().len(), 16);
    assert!(matches!(slices.next(), Some(Err(_))));
    assert!(slices.next().is_none());
}

both!(
    a_page_invalidation_keeps_other_remembered_pages:
    other_pages_kept_iommu_memory,
    other_pages_kept_dma_memory
);
fn a_page_invalidation_keeps_other_remembered_pages<M: GuestMemory>(mut g: Guest<M>) {
    let (ring, buffer) = (IOVA, IOVA - 0x1000);
    g.mem.w32(DATA_BASE, 0x1111);
    g.mem.w32(DATA_BASE + 0x1000, 0x2222);
    g.pt.map4k(&g.mem, ring, DATA_BASE);
    g.pt.map4k(&g.mem, buffer, DATA_BASE + 0x1000);
    assert_eq!(g.read(ring).unwrap(), 0x1111);
    assert_eq!(g.read(buffer).unwrap(), 0x2222);
    // Strict mode: the buffer is unmapped and its page invalidated, the ring stays mapped.
    g.pt.map(&g.mem, buffer, 0, 1, 0);
    g.submit(&[piotlb(3, DID, 0, buffer)]);
    let asked = g.translations();
    assert_eq!(g.read(ring).unwrap(), 0x1111);
    assert_eq!(g.translations(), asked, "the ring page is still remembered");
    assert!(g.read(buffer).is_err(), "the invalidated page is not");
    // A 4-page range (AM=2) aligned down from an address inside it covers the ring page.
    g.pt.map4k(&g.mem, ring, DATA_BASE + 0x1000);
    assert_eq!(g.read(ring).unwrap(), 0x1111, "stale until invalidated");
    g.submit(&[piotlb(3, DID, 0, (ring & !0x3fff) | 2)]);
    assert_eq!(
        g.read(ring).unwrap(),
        0x2222,
        "fresh after the range invalidation"
    );
}

both!(
    a_device_far_behind_the_log_forgets_everything:
    far_behind_iommu_memory,
    far_behind_dma_memory
);
fn a_device_far_behind_the_log_forgets_everything<M: GuestMemory>(mut g: Guest<M>) {
    g.mem.w32(DATA_BASE, 0x3333);
    g.mem.w32(DATA_BASE + 0x1000, 0x4444);
    g.pt.map4k(&g.mem, IOVA, DATA_BASE);
    assert_eq!(g.read(IOVA).unwrap(), 0x3333);
    // Repointed without an invalidation of this page, then more page invalidations of other
    // pages than the unit's log keeps: the device cannot tell what happened, so it asks again
    // (the unit's IOTLB still holds the old translation: no invalidation covered it).
    g.pt.map4k(&g.mem, IOVA, DATA_BASE + 0x1000);
    for i in 0..vtd::LOG_ENTRIES as u64 + 1 {
        g.submit(&[piotlb(3, DID, 0, 0x1000_0000 + (i << 12))]);
    }
    let asked = g.translations();
    assert_eq!(g.read(IOVA).unwrap(), 0x3333, "the unit's IOTLB answers");
    assert_eq!(g.translations(), asked + 1, "but the device had to ask");
    g.submit(&[piotlb(3, DID, 0, IOVA)]);
    assert_eq!(g.read(IOVA).unwrap(), 0x4444);
}

both!(
    pages_next_to_a_walked_one_are_remembered_with_it:
    nearby_pages_iommu_memory,
    nearby_pages_dma_memory
);
/// The request's other buffers, mapped at neighbouring IOVAs before the device reads any:
/// the walk for the first brings the others (present, accessed, in its line of the leaf
/// table), so the device reads them without asking the unit again; they are stale until
/// invalidated like any remembered page, and one whose D is clear is remembered read-only, so
/// a write still reaches the unit and sets D.
fn pages_next_to_a_walked_one_are_remembered_with_it<M: GuestMemory>(mut g: Guest<M>) {
    let accessed = FS_P | FS_RW | FS_US | FS_A;
    let page = |i: u64| DATA_BASE + i * 0x1000;
    for i in 0..4 {
        g.mem.w32(page(i), 0x100 + i as u32);
    }
    g.pt.map(&g.mem, IOVA, page(0), 1, accessed | FS_D);
    g.pt.map(&g.mem, IOVA - 0x1000, page(1), 1, accessed | FS_D);
    let clean = g.pt.map(&g.mem, IOVA - 0x2000, page(2), 1, accessed);
    g.pt.map(&g.mem, IOVA - 0x3000, page(3), 1, FS_P | FS_RW | FS_US);
    assert_eq!(g.read(IOVA).unwrap(), 0x100);
    let asked = g.translations();
    assert_eq!(g.read(IOVA - 0x1000).unwrap(), 0x101);
    assert_eq!(g.read(IOVA - 0x2000).unwrap(), 0x102);
    assert_eq!(g.translations(), asked, "both came with the first walk");
    assert_eq!(g.read(IOVA - 0x3000).unwrap(), 0x103);
    assert_eq!(g.translations(), asked + 1, "a page without A did not");
    // Stale until invalidated.
    g.pt.map(&g.mem, IOVA - 0x1000, page(3), 1, accessed | FS_D);
    assert_eq!(g.read(IOVA - 0x1000).unwrap(), 0x101, "stale");
    g.submit(&[piotlb(3, DID, 0, IOVA - 0x1000)]);
    assert_eq!(g.read(IOVA - 0x1000).unwrap(), 0x103, "fresh");
    // D clear: remembered read-only, the write goes to the unit, which sets D.
    let asked = g.translations();
    g.dma
        .write_obj(0xd2u32, GuestAddress(IOVA - 0x2000))
        .unwrap();
    assert_eq!(g.translations(), asked + 1, "the write asked the unit");
    assert_eq!(g.mem.r64(clean) & FS_D, FS_D);
    assert_eq!(g.mem.r32(page(2)), 0xd2);
}

/// The guarantee a guest relies on before it frees a page: once the wait descriptor that
/// follows a page invalidation has completed, no device uses the old translation, even
/// while devices translate on other threads during the invalidation. Two device threads
/// share one `DeviceIommu` (one through `translate_piece`, as `DmaMemory` does, one through
/// vm-memory's `Iommu::translate`); the vCPU thread repoints the PTE to a new page each
/// round, submits a page-selective PASID-IOTLB invalidation plus a wait, checks the wait's
/// status and only then announces the round. A device that read the announced round before
/// translating must get that round's page or a later one. With the unit publishing its
/// generation before dropping its caches this failed in most runs.
#[test]
fn no_device_uses_a_page_after_its_invalidation_wait_completed() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use vm_memory::Iommu;

    const ROUNDS: u64 = 3000;
    let mut g = guest(|_, device| Arc::new(device));
    let page = |round: u64| DATA_BASE + round * 0x1000;
    g.pt.map4k(&g.mem, IOVA, page(0));
    let completed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (translations, violation) = std::thread::scope(|s| {
        let devices: Vec<_> = (0..2)
            .map(|n| {
                let (device, completed, stop) = (&g.dma, &completed, &stop);
                s.spawn(move || {
                    let mut translations = 0u64;
                    while !stop.load(SeqCst) {
                        let floor = completed.load(SeqCst);
                        let gpa = if n == 0 {
                            device
                                .translate_piece(IOVA + 8, 8, vm_memory::Permissions::Read)
                                .map(|(gpa, _)| gpa)
                        } else {
                            device
                                .translate(GuestAddress(IOVA + 8), 8, vm_memory::Permissions::Read)
                                .map(|mut it| it.next().unwrap().base.0)
                        }
                        .expect("the page is always mapped");
                        translations += 1;
                        let round = (gpa - 8 - DATA_BASE) / 0x1000;
                        if round < floor {
                            return (translations, Some((n, round, floor)));
                        }
                    }
                    (translations, None)
                })
            })
            .collect();
        for round in 1..=ROUNDS {
            g.pt.map4k(&g.mem, IOVA, page(round));
            // Strict mode's one page per submission, and every other round a batch whose
            // target page comes last (as in a flush of several unmaps).
            let others = if round % 2 == 0 { 0 } else { 7 };
            let mut batch: Vec<_> = (1..=others)
                .map(|i| piotlb(3, DID, 0, IOVA + i * 0x1000))
                .collect();
            batch.push(piotlb(3, DID, 0, IOVA));
            batch.push(wait(0, round as u32));
            g.rig.submit(&batch);
            assert_eq!(
                g.rig.status(0),
                round as u32,
                "wait of round {round} completed"
            );
            completed.store(round, SeqCst);
        }
        stop.store(true, SeqCst);
        devices.into_iter().fold((0, None), |(sum, seen), d| {
            let (n, v) = d.join().unwrap();
            (sum + n, seen.or(v))
        })
    });
    if let Some((device, round, floor)) = violation {
        panic!(
            "device thread {device} used round {round}'s page after round {floor}'s \
             invalidation had completed"
        );
    }
    assert!(translations > 0, "the devices translated during the rounds");
}
