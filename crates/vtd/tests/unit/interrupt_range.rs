//! Requests without PASID to the interrupt address range FEEx_xxxxh are not DMA (§3.15), even
//! where the guest's tables map that range: a DWORD write is an interrupt request delivered
//! through the unit's interrupt sink, a read (or any write presented as DMA) is a recorded
//! fault, and no translation handed out covers the range. Requests with PASID are translated
//! as usual.

use std::sync::Arc;

use crate::support::*;
use crate::translate_support::{
    DATA_BASE, FS_P, FS_RW, FS_US, Mem, PageTable, SID, Stage, Tables, fs_entry,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vtd::dma_memory::DmaMemory;
use vtd::iommu::DeviceIommu;
use vtd::request::{Access, DmaRequest, Remapper};
use vtd_spec::fault::FaultReason;
use vtd_spec::regs::{FrcdHi, Fsts, offset};

const MSI_ADDRESS: u64 = 0xfee0_1000;
/// A 2 MiB first-stage page at the start of the range: it also maps 0xfef0_0000-0xff00_0000,
/// outside the range.
const SUPERPAGE: u64 = 0xfee0_0000;

fn request(iova: u64, access: Access, pasid: Option<u32>) -> DmaRequest {
    DmaRequest {
        sid: SID,
        pasid,
        iova,
        access,
    }
}

/// A first-stage unit whose tables map the whole 2 MiB from 0xfee0_0000 (as a hostile or buggy
/// guest may) for RID_PASID and for PASID 5.
fn scalable(mem: &Mem) -> Rig {
    let rig = Rig::with_ram(
        "x-scalable-mode=on,x-flts=on,x-pasid-mode=on",
        mem.ram.clone(),
    );
    let tables = Tables::scalable(mem);
    tables.sm_device(SID, true);
    let pt = PageTable::new(mem, 4, Stage::First);
    pt.map(mem, SUPERPAGE, DATA_BASE, 2, FS_P | FS_RW | FS_US);
    tables.pasid_entry(SID, 0, fs_entry(&pt, 2));
    tables.pasid_entry(SID, 5, fs_entry(&pt, 2));
    rig.enable_translation(tables.rtaddr().into_bits());
    rig.w32(offset::FECTL, 0);
    rig
}

fn recorded(rig: &Rig) -> Option<FrcdHi> {
    let hi = FrcdHi::from_bits(rig.r64(0x220 + 8));
    hi.f().then_some(hi)
}

#[test]
fn a_read_without_pasid_is_a_recorded_fault() {
    let mem = Mem::new();
    let rig = scalable(&mem);
    let fault = rig
        .vtd
        .remap(&request(SUPERPAGE + 0x10, Access::READ, None))
        .unwrap_err();
    assert_eq!(fault.reason, FaultReason::SmInvalidInterruptAddress);
    assert!(!fault.fpd);
    let hi = recorded(&rig).expect("recorded");
    assert_eq!(hi.fr(), 0x87);
    assert!(hi.t1() && !hi.pp(), "a read without PASID");
    assert_eq!(rig.r64(0x220), SUPERPAGE, "the faulting page");
    assert!(Fsts::from_bits(rig.r32(offset::FSTS)).ppf());
    assert_eq!(rig.irqs.take().len(), 1, "the fault event");
}

#[test]
fn a_read_without_pasid_in_legacy_mode_is_fault_0x0e() {
    let mem = Mem::new();
    let rig = Rig::with_ram("", mem.ram.clone());
    let tables = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, MSI_ADDRESS, DATA_BASE);
    tables.legacy_translated(SID, &pt, 2);
    rig.enable_translation(tables.rtaddr().into_bits());
    let fault = rig
        .vtd
        .remap(&request(MSI_ADDRESS, Access::READ, None))
        .unwrap_err();
    assert_eq!(fault.reason, FaultReason::InterruptAddress);
    assert_eq!(recorded(&rig).expect("recorded").fr(), 0x0e);
}

#[test]
fn a_dword_write_is_delivered_as_an_interrupt() {
    let mem = Mem::new();
    let rig = scalable(&mem);
    let before = mem.r64(DATA_BASE + 0x1000);
    assert!(rig.vtd.interrupt(SID, MSI_ADDRESS, 0x4041));
    let device = DeviceIommu::new(rig.vtd.clone(), SID);
    assert!(device.interrupt(MSI_ADDRESS | 0x8, 0x30));
    assert_eq!(
        rig.irqs.take(),
        vec![(MSI_ADDRESS, 0x4041), (MSI_ADDRESS | 0x8, 0x30)]
    );
    // Not interrupt requests: a misaligned DWORD, an address outside the range.
    assert!(!rig.vtd.interrupt(SID, MSI_ADDRESS + 2, 0x4041));
    assert!(!rig.vtd.interrupt(SID, 0xfef0_0000, 0x4041));
    assert!(rig.irqs.take().is_empty());
    assert_eq!(recorded(&rig), None, "no fault");
    assert_eq!(mem.r64(DATA_BASE + 0x1000), before, "no DMA");
    // Interrupt requests are not DMA: they are delivered whatever TE says.
    rig.w32(offset::GCMD, 0);
    assert_eq!(rig.r32(offset::GSTS) & (1 << 31), 0, "TE off");
    assert!(rig.vtd.interrupt(SID, MSI_ADDRESS, 0x4042));
    assert_eq!(rig.irqs.take(), vec![(MSI_ADDRESS, 0x4042)]);
}

#[test]
fn a_write_presented_as_dma_is_a_fault_and_writes_nothing() {
    let mem = Mem::new();
    let rig = scalable(&mem);
    let fault = rig
        .vtd
        .remap(&request(MSI_ADDRESS, Access::WRITE, None))
        .unwrap_err();
    assert_eq!(fault.reason, FaultReason::SmInvalidInterruptAddress);
    let hi = recorded(&rig).expect("recorded");
    assert!(!hi.t1(), "a write");
    // A device's DMA write there (virtio buffers, rings) through DmaMemory.
    let dma = DmaMemory::new(
        (*mem.ram).clone(),
        Arc::new(DeviceIommu::new(rig.vtd.clone(), SID)),
    );
    assert!(
        dma.write_obj(0x1234_5678u32, GuestAddress(MSI_ADDRESS))
            .is_err()
    );
    assert!(dma.read_obj::<u32>(GuestAddress(MSI_ADDRESS)).is_err());
    let offset = MSI_ADDRESS - SUPERPAGE;
    assert_eq!(mem.r32(DATA_BASE + offset), 0, "guest RAM untouched");
}

#[test]
fn requests_with_pasid_are_translated_normally() {
    let mem = Mem::new();
    let rig = scalable(&mem);
    for access in [Access::READ, Access::WRITE] {
        let t = rig
            .vtd
            .remap(&request(MSI_ADDRESS, access, Some(5)))
            .unwrap();
        assert_eq!(t.gpa(MSI_ADDRESS), DATA_BASE + (MSI_ADDRESS - SUPERPAGE));
        assert_eq!(t.size, 2 << 20, "the whole superpage");
    }
    assert!(!rig.vtd.interrupt(SID, 0x1000, 0), "not the range");
    assert_eq!(recorded(&rig), None);
}

#[test]
fn translations_next_to_the_range_do_not_cover_it() {
    let mem = Mem::new();
    let rig = scalable(&mem);
    // The superpage's upper half is outside the range: translated, but only that half.
    let above = 0xfef0_0000;
    let t = rig.vtd.remap(&request(above, Access::READ, None)).unwrap();
    assert_eq!((t.iova_base, t.size), (above, 1 << 20));
    assert_eq!(t.gpa(above), DATA_BASE + (above - SUPERPAGE));
    // A device that remembered it must not serve the range from it.
    let device = DeviceIommu::new(rig.vtd.clone(), SID);
    let dma = DmaMemory::new((*mem.ram).clone(), Arc::new(device));
    mem.w32(DATA_BASE + (above - SUPERPAGE), 0x1122_3344);
    assert_eq!(
        dma.read_obj::<u32>(GuestAddress(above)).unwrap(),
        0x1122_3344
    );
    assert!(dma.read_obj::<u32>(GuestAddress(above - 0x1000)).is_err());
    assert!(!dma.check_range(GuestAddress(above - 4), 8, vm_memory::Permissions::Read));
    assert_eq!(recorded(&rig).expect("recorded").fr(), 0x87);
}
