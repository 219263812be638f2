//! `Vtd::forget_source` for a device that left the bus: every cached entry of its source-id
//! goes (counted by `Vtd::cached_entries_of`), another device's stay, and the device's tables,
//! still in guest RAM, are walked again if it ever translates.

use crate::support::*;
use crate::translate_support::{DATA_BASE, Mem, PageTable, SID, SID2, Stage, Tables, fs_entry};
use vtd::request::{Access, DmaRequest, Remapper};
use vtd_spec::SourceId;

const MAPPED: u64 = 0x1000;

fn read(sid: SourceId) -> DmaRequest {
    DmaRequest {
        sid,
        pasid: None,
        iova: MAPPED,
        access: Access::READ,
    }
}

#[test]
fn a_forgotten_source_has_no_cached_entry_left_and_others_keep_theirs() {
    let mem = Mem::new();
    let mut rig = Rig::with_ram("x-scalable-mode=on,x-flts=on", mem.ram.clone());
    let tables = Tables::scalable(&mem);
    let pt = PageTable::new(&mem, 4, Stage::First);
    pt.map4k(&mem, MAPPED, DATA_BASE);
    for sid in [SID, SID2] {
        tables.sm_device(sid, false);
        tables.pasid_entry(sid, 0, fs_entry(&pt, 7));
    }
    rig.enable_qi(true, 0);
    rig.enable_translation(tables.rtaddr().into_bits());
    assert_eq!(
        rig.vtd.cached_entries_of(SID),
        0,
        "nothing cached before a DMA"
    );
    for sid in [SID, SID2] {
        assert!(rig.vtd.remap(&read(sid)).is_ok());
    }
    let (before, other) = (
        rig.vtd.cached_entries_of(SID),
        rig.vtd.cached_entries_of(SID2),
    );
    // A context entry, a PASID entry and an IOTLB entry each.
    assert_eq!((before, other), (3, 3));

    rig.vtd.forget_source(SID);
    assert_eq!(rig.vtd.cached_entries_of(SID), 0);
    assert_eq!(
        rig.vtd.cached_entries_of(SID2),
        other,
        "the other device keeps its entries"
    );
    assert!(
        rig.vtd.remap(&read(SID)).is_ok(),
        "walked again from guest RAM"
    );
    assert_eq!(rig.vtd.cached_entries_of(SID), before);
}
