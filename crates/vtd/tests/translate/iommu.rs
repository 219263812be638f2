//! The vm-memory adapter: `DeviceIommu` under `IommuMemory`, as an emulated device uses it.

use crate::support::*;
use std::sync::Arc;
use vm_memory::iommu::Error as IommuError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, Iommu, IommuMemory, Permissions};
use vtd::invalidation::Invalidation;
use vtd::iommu::{DeviceIommu, MAX_TRANSLATE_LEN};

const IOVA: u64 = 0x10_0000_0000;
const DID: u16 = 4;

fn setup(mem: &Mem) -> (Arc<Unit>, PageTable) {
    let t = Tables::scalable(mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(mem, 4, Stage::First);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    (Unit::new(mem, t.state()), pt)
}

fn memory(unit: &Arc<Unit>) -> IommuMemory<vm_memory::GuestMemoryMmap<()>, DeviceIommu> {
    IommuMemory::new(
        (*unit.ram).clone(),
        DeviceIommu::new(unit.clone(), SID),
        true,
        (),
    )
}

#[test]
fn a_range_over_scattered_pages() {
    let mem = Mem::new();
    let (unit, pt) = setup(&mem);
    let gpas = [DATA_BASE + 0x9000, DATA_BASE + 0x2000, DATA_BASE + 0x31000];
    for (i, g) in gpas.iter().enumerate() {
        pt.map4k(&mem, IOVA + i as u64 * 0x1000, *g);
    }
    let m = memory(&unit);
    let data: Vec<u8> = (0..0x2800u32).map(|i| (i * 7) as u8).collect();
    m.write_slice(&data, GuestAddress(IOVA + 0x400)).unwrap();
    let mut chunk = vec![0u8; 0xc00];
    unit.ram
        .read_slice(&mut chunk, GuestAddress(gpas[0] + 0x400))
        .unwrap();
    assert_eq!(chunk, data[..0xc00]);
    let mut chunk = vec![0u8; 0x1000];
    unit.ram
        .read_slice(&mut chunk, GuestAddress(gpas[1]))
        .unwrap();
    assert_eq!(chunk, data[0xc00..0x1c00]);
    let mut chunk = vec![0u8; 0xc00];
    unit.ram
        .read_slice(&mut chunk, GuestAddress(gpas[2]))
        .unwrap();
    assert_eq!(chunk, data[0x1c00..]);
    let mut back = vec![0u8; data.len()];
    m.read_slice(&mut back, GuestAddress(IOVA + 0x400)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_fault_is_cannot_resolve() {
    let mem = Mem::new();
    let (unit, pt) = setup(&mem);
    pt.map4k(&mem, IOVA, DATA_BASE);
    let m = memory(&unit);
    // The second page is not mapped.
    let err = m
        .write_slice(&[0u8; 0x1800], GuestAddress(IOVA + 0x100))
        .unwrap_err();
    match err {
        GuestMemoryError::IommuError(IommuError::CannotResolve { iova_range, reason }) => {
            assert_eq!(iova_range.base.0, IOVA + 0x1000);
            assert!(reason.contains("0x71"), "{reason}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // Read-only page: reads work, writes fail.
    pt.map(&mem, IOVA + 0x1000, DATA_BASE + 0x1000, 1, FS_P | FS_US);
    let mut b = [0u8; 16];
    m.read_slice(&mut b, GuestAddress(IOVA + 0x1000)).unwrap();
    assert!(m.write_slice(&b, GuestAddress(IOVA + 0x1000)).is_err());
}

#[test]
fn lengths_are_bounded_and_ranges_do_not_wrap() {
    let mem = Mem::new();
    let (unit, _) = setup(&mem);
    let view = DeviceIommu::new(unit.clone(), SID);
    assert!(matches!(
        view.translate(GuestAddress(0), MAX_TRANSLATE_LEN + 1, Permissions::Read),
        Err(IommuError::CannotResolve { .. })
    ));
    assert!(matches!(
        view.translate(GuestAddress(u64::MAX - 10), 100, Permissions::Read),
        Err(IommuError::CannotResolve { .. })
    ));
    // An empty range needs no translation.
    assert_eq!(
        view.translate(GuestAddress(IOVA), 0, Permissions::Read)
            .unwrap()
            .count(),
        0
    );
    assert_eq!(unit.counters.snapshot().translations, 0);
}

#[test]
fn a_superpage_range_is_one_translation() {
    let mem = Mem::new();
    let (unit, pt) = setup(&mem);
    pt.map(&mem, IOVA, 0x20_0000, 2, FS_P | FS_RW | FS_US);
    let view = DeviceIommu::new(unit.clone(), SID);
    let ranges: Vec<_> = view
        .translate(
            GuestAddress(IOVA + 0x1000),
            0x1f_0000,
            Permissions::ReadWrite,
        )
        .unwrap()
        .collect();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].base.0, 0x20_1000);
    assert_eq!(ranges[0].length, 0x1f_0000);
    assert_eq!(unit.counters.snapshot().translations, 1);
}

#[test]
fn the_device_pages_follow_the_unit_invalidations() {
    let mem = Mem::new();
    let (unit, pt) = setup(&mem);
    pt.map4k(&mem, IOVA, DATA_BASE);
    let m = memory(&unit);
    m.write_obj(0xdead_beefu32, GuestAddress(IOVA)).unwrap();
    assert_eq!(mem.r32(DATA_BASE), 0xdead_beef);
    pt.map4k(&mem, IOVA, DATA_BASE + 0x1000);
    // Stale in the vIOMMU's IOTLB until the guest invalidates...
    m.write_obj(1u32, GuestAddress(IOVA)).unwrap();
    assert_eq!(mem.r32(DATA_BASE), 1);
    unit.inv(Invalidation::PasidIotlbAll { did: DID, pasid: 0 });
    // ...and fresh right after: the device's remembered page went with the invalidation.
    m.write_obj(2u32, GuestAddress(IOVA)).unwrap();
    assert_eq!(mem.r32(DATA_BASE + 0x1000), 2);
    assert_eq!(mem.r32(DATA_BASE), 1);
}
