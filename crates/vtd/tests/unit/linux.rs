//! The register protocol of Linux 6.12's intel-iommu driver, access by access and with its
//! access widths (its register accessors, its boot sequence and its fault handler), against the
//! unit with the real translator.

use crate::support::*;
use crate::translate_support::{DATA_BASE, Mem, PageTable, SID, Stage, Tables, fs_entry};
use vtd::GuestRam;
use vtd::invalidation::Invalidation;
use vtd::request::{Access, DmaRequest, Remapper};
use vtd_spec::regs::offset;

const QI_DONE: u32 = 2;
const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_QIE: u32 = 1 << 26;

/// Linux's `qi_submit_sync`: the descriptors, an appended wait (SW, QI_DONE) and one IQT writel;
/// then it polls the status word and FSTS.
fn qi_submit_sync(rig: &mut Rig, descs: &[[u64; 4]]) -> u32 {
    let mut all = descs.to_vec();
    all.push(wait(0, QI_DONE));
    rig.ram.write_at(STATUS, &1u32.to_le_bytes()).unwrap(); // QI_IN_USE
    rig.submit(&all);
    assert_eq!(rig.r32(offset::FSTS) & 0x70, 0, "no IQE/ICE/ITE");
    rig.status(0)
}

#[test]
fn boot_attach_map_unmap_as_linux_does_it() {
    let mem = Mem::new();
    let mut rig = Rig::with_ram("x-scalable-mode=on,x-flts=on", mem.ram.clone());
    // alloc_iommu / map_iommu: readq CAP, ECAP; readl VER, GSTS.
    let (cap, ecap) = (rig.r64(offset::CAP), rig.r64(offset::ECAP));
    assert_eq!(cap, rig.vtd.cap().into_bits());
    assert!(
        ecap & (1 << 43) != 0 && ecap & (1 << 47) != 0 && ecap & 2 != 0,
        "SMTS FSTS QI"
    );
    assert_eq!(rig.r32(offset::VER), 0x40);
    assert_eq!(rig.r32(offset::GSTS), 0);
    // intel_iommu_init_qi: dmar_fault(-1) reads FSTS, dmar_disable_qi (QIES already clear).
    assert_eq!(rig.r32(offset::FSTS), 0);
    // dmar_enable_qi: IQT <- 0 (writel), IQA <- base | DW | QS=1 (writeq), GCMD |= QIE.
    rig.w32(offset::IQT, 0);
    rig.w64(offset::IQA, QUEUE | (1 << 11) | 1);
    rig.w32(offset::GCMD, GCMD_QIE);
    assert_eq!(rig.r32(offset::GSTS), GCMD_QIE);
    // Root table, RTADDR with TTM=01b (writeq), GCMD = gcmd | SRTP, poll RTPS.
    let tables = Tables::scalable(&mem);
    rig.w64(offset::RTADDR, tables.rtaddr().into_bits());
    rig.w32(offset::GCMD, GCMD_QIE | GCMD_SRTP);
    assert_eq!(rig.r32(offset::GSTS), GCMD_QIE | (1 << 30));
    // No ESRTPS: three global flushes, each its own submission.
    rig.rec.take();
    assert_eq!(
        qi_submit_sync(&mut rig, &[context_cache(1, 0, 0, 0)]),
        QI_DONE
    );
    assert_eq!(qi_submit_sync(&mut rig, &[pasid_cache(3, 0, 0)]), QI_DONE);
    assert_eq!(qi_submit_sync(&mut rig, &[iotlb(1, 0, 0)]), QI_DONE);
    assert_eq!(
        rig.rec.invalidations(),
        vec![
            Invalidation::ContextGlobal,
            Invalidation::PasidCacheGlobal,
            Invalidation::IotlbGlobal
        ]
    );
    // dmar_set_interrupt: FEDATA, FEADDR, FEUADDR, then FECTL = 0 and a read-back.
    rig.w32(offset::FEDATA, 0x22);
    rig.w32(offset::FEADDR, 0xfee0_0000);
    rig.w32(offset::FEUADDR, 0);
    rig.w32(offset::FECTL, 0);
    assert_eq!(rig.r32(offset::FECTL), 0);
    // probe + attach: context entry, PASID entry (first stage, DID 2); CM=0 so no flush.
    tables.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    tables.pasid_entry(SID, 0, fs_entry(&pt, 2));
    // GCMD |= TE, poll TES.
    rig.w32(offset::GCMD, GCMD_QIE | GCMD_TE);
    assert_eq!(rig.r32(offset::GSTS), GCMD_QIE | GCMD_TE | (1 << 30));
    // dma_map: PTE stores only, no MMIO. The device reads through the unit.
    let iova = 0xffff_f000;
    pt.map4k(&mem, iova, DATA_BASE);
    let dma = |rig: &Rig| {
        rig.vtd.remap(&DmaRequest {
            sid: SID,
            pasid: None,
            iova: iova + 0x10,
            access: Access::READ,
        })
    };
    assert_eq!(dma(&rig).unwrap().gpa(iova + 0x10), DATA_BASE + 0x10);
    // Strict dma_unmap: clear the PTE, PASID-IOTLB G=3 with IH, one submission.
    pt.map(&mem, iova, 0, 1, 0);
    assert_eq!(
        qi_submit_sync(&mut rig, &[piotlb(3, 2, 0, iova | (1 << 6))]),
        QI_DONE
    );
    let fault = dma(&rig).unwrap_err();
    // dmar_fault: readl FSTS, walk records from FRI, clear F with writel, W1C FSTS.
    assert_eq!(rig.irqs.take(), vec![(0xfee0_0000, 0x22)]);
    let fsts = rig.r32(offset::FSTS);
    assert_eq!(fsts & 2, 2, "PPF");
    let fri = u64::from((fsts >> 8) & 0xff);
    let rec = 0x220 + 16 * fri;
    let dword3 = rig.r32(rec + 12);
    assert_eq!(dword3 >> 31, 1);
    assert_eq!(dword3 & 0xff, u32::from(fault.reason.code()));
    assert_eq!((dword3 >> 30) & 1, 1, "T: read");
    assert_eq!(rig.r32(rec + 8) & 0xffff, u32::from(SID.0));
    assert_eq!(rig.r64(rec) & !0xfff, iova);
    rig.w32(rec + 12, 0x8000_0000);
    rig.w32(offset::FSTS, 0x83);
    assert_eq!(rig.r32(offset::FSTS) & 0xff, 0);
}

#[test]
fn invalidation_queue_error_recovery_as_qi_check_fault_does_it() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 1);
    // A bad descriptor (reserved bit) in a batch: the unit stops at it with IQE.
    rig.ram.write_at(STATUS, &1u32.to_le_bytes()).unwrap();
    rig.submit(&[
        iotlb(1, 0, 0),
        [2 | (1 << 4) | (1 << 63), 0, 0, 0],
        wait(0, QI_DONE),
    ]);
    assert_eq!(rig.r32(offset::FSTS) & 0x10, 0x10);
    assert_eq!(rig.status(0), 1, "the batch's wait did not run");
    // qi_check_fault: readl IQH; the head is the bad slot; copy the wait over it; W1C IQE.
    let head = rig.r32(offset::IQH) >> 5;
    assert_eq!(head, 1);
    let wait_slot = QUEUE + 2 * 32;
    let mut w = [0u8; 32];
    rig.ram.read_at(wait_slot, &mut w).unwrap();
    rig.ram.write_at(QUEUE + u64::from(head) * 32, &w).unwrap();
    rig.w32(offset::FSTS, 0x10);
    assert_eq!(rig.r32(offset::FSTS), 0);
    assert_eq!(rig.status(0), QI_DONE, "the queue resumed from IQH");
    assert_eq!(rig.head(), rig.tail);
}

/// Linux's interrupt remapping bring-up in x2APIC mode (`intel_setup_irq_remapping`,
/// `iommu_set_irq_remapping`, `iommu_enable_irq_remapping`) and one MSI set up as
/// `intel_irq_remapping_alloc` / `modify_irte` / `fill_msi_msg` do it.
#[test]
fn interrupt_remapping_bring_up_and_an_msi_as_linux_does_it() {
    use test_fixtures::interrupts::{irte, write_irte};
    use vtd::InterruptOutcome;
    use vtd_spec::interrupt::InterruptAddress;

    const TABLE: u64 = 0x320_0000;
    const GCMD_IRE: u32 = 1 << 25;
    const GCMD_SIRTP: u32 = 1 << 24;
    let mut rig = Rig::new("x-scalable-mode=on,x-flts=on,intremap=on,eim=on");
    // intel_prepare_irq_remapping: ECAP.IR and, for x2APIC, ECAP.EIM.
    let ecap = rig.r64(offset::ECAP);
    assert!(ecap & (1 << 3) != 0 && ecap & (1 << 4) != 0, "IR EIM");
    // dmar_enable_qi, then iommu_set_irq_remapping: IRTA <- table | IR_X2APIC_MODE | 0xf
    // (65536 entries), GCMD = gcmd | SIRTP, poll IRTPS; then qi_global_iec.
    rig.w32(offset::IQT, 0);
    rig.w64(offset::IQA, QUEUE | (1 << 11));
    rig.w32(offset::GCMD, GCMD_QIE);
    rig.w64(offset::IRTA, TABLE | (1 << 11) | 0xf);
    rig.w32(offset::GCMD, GCMD_QIE | GCMD_SIRTP);
    assert_eq!(rig.r32(offset::GSTS), GCMD_QIE | (1 << 24), "IRTPS");
    assert_eq!(qi_submit_sync(&mut rig, &[iec_global()]), QI_DONE);
    // iommu_enable_irq_remapping: gcmd |= IRE, poll IRES; CFIS is clear, so no CFI write.
    rig.w32(offset::GCMD, GCMD_QIE | GCMD_IRE);
    assert_eq!(rig.r32(offset::GSTS), GCMD_QIE | (1 << 25) | (1 << 24));
    // An MSI of SID for APIC 0x105, vector 0x22: prepare_irte (physical, fixed, edge, RH),
    // set_msi_sid (SVT 01b, SQ 0, the requester id), modify_irte + qi_flush_iec(index, 0).
    let index = 0x20;
    let mut entry = irte(0x22, 0x105, true);
    entry.lo = entry.lo.with_rh(true);
    entry.hi = entry.hi.with_svt(1).with_sid(SID.0);
    write_irte(&rig.ram, TABLE, index, entry);
    assert_eq!(
        qi_submit_sync(&mut rig, &[iec_index(index as u16, 0)]),
        QI_DONE
    );
    // fill_msi_msg: address_lo = FEE | EXT_INT | SHV | index, data = subhandle 0.
    let address = InterruptAddress::remappable_for(index as u16, true).into_bits();
    assert_eq!(
        rig.vtd.remap_interrupt(SID, address.into(), 0),
        InterruptOutcome::Deliver {
            address: 0xfee0_5008 | (1 << 40),
            data: 0x22
        }
    );
    assert_eq!(
        rig.vtd
            .remap_interrupt(vtd_spec::SourceId(SID.0 + 1), address.into(), 0),
        InterruptOutcome::Blocked,
        "another requester"
    );
    // The driver's fault handler sees "[INTR-REMAP] Request device [..] fault index 0x20".
    let hi = vtd_spec::regs::FrcdHi::from_bits(rig.r64(0x228));
    let lo = vtd_spec::regs::FrcdLo::from_bits(rig.r64(0x220));
    assert_eq!(
        (hi.fr(), lo.interrupt_index(), hi.sid()),
        (0x26, 0x20, SID.0 + 1)
    );
}
