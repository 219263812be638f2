//! The shadow's view of a device's tables: what `vtd::device_tables` resolves, and that
//! `SecondStageTables::walk` visits exactly the pages the translator translates, with the same
//! rights, skipping absent subtrees and stopping at its budget.

use crate::support::*;
use vtd::request::Access;
use vtd::{DeviceTables, SecondStageTables, SsRangeLeaf, SsRangeWalk, device_tables};
use vtd_spec::pasid::Pgtt;

const DID: u16 = 9;

/// Every leaf over the first GiB, in order.
fn leaves(mem: &Mem, tables: &SecondStageTables, budget: u64) -> (Vec<SsRangeLeaf>, SsRangeWalk) {
    let mut out = Vec::new();
    let w = tables.walk(&*mem.ram, 0, 1 << 30, budget, &mut |l| out.push(l));
    (out, w)
}

#[test]
fn the_range_walk_agrees_with_the_translator() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, 0x1000, DATA_BASE);
    pt.map(&mem, 0x2000, DATA_BASE + 0x1000, 1, SS_R);
    pt.map(&mem, 0x20_0000, DATA_BASE + 0x20_0000, 2, SS_R | SS_W);
    pt.map4k(&mem, 0x3000_0000, DATA_BASE + 0x5000);
    // A leaf with a reserved address bit: the translator faults, the walk skips it.
    let bad = pt.entry_addr(&mem, 0x4000, 1);
    mem.w64(bad, DATA_BASE | SS_R | SS_W | (1 << 50));
    t.legacy_translated(SID, &pt, DID);
    let state = t.state();
    let DeviceTables::SecondStage(tables) = device_tables(&*mem.ram, &state, SID) else {
        panic!("legacy translated entry");
    };
    assert_eq!((tables.did, tables.root()), (DID, pt.root));
    let (found, walk) = leaves(&mem, &tables, 1 << 20);
    assert_eq!(walk.faults, 1);
    assert!(!walk.over_budget);
    let unit = Unit::new(&mem, state);
    let pages: Vec<(u64, u64, u64, bool)> = found
        .iter()
        .map(|l| (l.iova, l.gpa, l.size, l.write))
        .collect();
    assert_eq!(
        pages,
        vec![
            (0x1000, DATA_BASE, 0x1000, true),
            (0x2000, DATA_BASE + 0x1000, 0x1000, false),
            (0x20_0000, DATA_BASE + 0x20_0000, 0x20_0000, true),
            (0x3000_0000, DATA_BASE + 0x5000, 0x1000, true),
        ]
    );
    for l in &found {
        for iova in [l.iova, l.iova + l.size - 0x1000] {
            assert_eq!(
                unit.gpa(SID, iova).unwrap(),
                l.gpa + (iova - l.iova),
                "{iova:#x}"
            );
            let write = unit.req(SID, None, iova, Access::WRITE).is_ok();
            assert_eq!(write, l.write, "{iova:#x}");
        }
    }
    for iova in [0, 0x4000, 0x5000, 0x40_0000, 0x2000_0000] {
        assert!(unit.gpa(SID, iova).is_err(), "{iova:#x} is not mapped");
    }
    // Five entries: the three tables above the leaf table, IOVA 0's absent leaf, the first
    // leaf; then the walk stops.
    let (few, walk) = leaves(&mem, &tables, 5);
    assert!(walk.over_budget);
    assert_eq!(few.len(), 1);
}

#[test]
fn device_tables_follow_the_entries() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let mut state = t.state();
    state.translation_enabled = false;
    assert_eq!(
        device_tables(&*mem.ram, &state, SID),
        DeviceTables::Identity(None)
    );
    state.translation_enabled = true;
    assert_eq!(
        device_tables(&*mem.ram, &state, SID),
        DeviceTables::Blocked,
        "no context entry"
    );
    t.legacy_pt(SID, DID);
    assert_eq!(
        device_tables(&*mem.ram, &state, SID),
        DeviceTables::Identity(Some(DID))
    );

    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    let state = t.state();
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    assert_eq!(
        device_tables(&*mem.ram, &state, SID),
        DeviceTables::FirstStage(DID)
    );
    t.pasid_entry(SID, 0, pasid_entry(Pgtt::PassThrough, DID));
    assert_eq!(
        device_tables(&*mem.ram, &state, SID),
        DeviceTables::Identity(Some(DID))
    );
    t.pasid_entry(SID, 0, ss_entry(&pt, DID));
    match device_tables(&*mem.ram, &state, SID) {
        DeviceTables::SecondStage(s) => assert_eq!((s.did, s.root()), (DID, pt.root)),
        other => panic!("{other:?}"),
    }
}
