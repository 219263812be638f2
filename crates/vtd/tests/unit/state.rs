//! `Vtd::snapshot`: the registers decoded, a device's root, context and PASID entries with
//! their meaning, a device the guest never set up, and the IOTLB occupancy per domain.

use crate::support::*;
use crate::translate_support::{DATA_BASE, Mem, PageTable, SID, SID2, Stage, Tables, fs_entry};
use vtd::request::{Access, DmaRequest, Remapper};
use vtd::state::{ContextView, Entry};
use vtd_spec::regs::offset;

const MAPPED: u64 = 0x1000;

fn read(iova: u64) -> DmaRequest {
    DmaRequest {
        sid: SID,
        pasid: None,
        iova,
        access: Access::READ,
    }
}

#[test]
fn a_first_stage_device_its_fault_and_its_cached_translation() {
    let mem = Mem::new();
    let mut rig = Rig::with_ram("x-scalable-mode=on,x-flts=on", mem.ram.clone());
    let tables = Tables::scalable(&mem);
    tables.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    pt.map4k(&mem, MAPPED, DATA_BASE);
    tables.pasid_entry(SID, 0, fs_entry(&pt, 7));
    rig.enable_qi(true, 0);
    rig.enable_translation(tables.rtaddr().into_bits());
    assert!(rig.vtd.remap(&read(MAPPED)).is_ok());
    assert!(
        rig.vtd.remap(&read(0x40_0000)).is_err(),
        "unmapped: a fault"
    );
    rig.submit(&[wait(0, 1)]);

    let snap = rig.vtd.snapshot(&[SID, SID2]);
    let regs = &snap.registers;
    assert_eq!(regs.gsts_set, ["TES", "RTPS", "QIES"]);
    assert_eq!(regs.gsts, rig.r32(offset::GSTS));
    assert_eq!(regs.table_mode, "scalable");
    assert_eq!(regs.root_table, tables.rtaddr().root_table());
    assert_eq!(regs.iq_descriptor_bits, 256);
    assert_eq!(regs.iq_entries, 128);
    assert_eq!((regs.iq_head, regs.iq_tail), (1, 1));
    assert_eq!(regs.fsts_set, ["PPF"]);
    assert_eq!(regs.fault_records.len(), 1);
    let fault = &regs.fault_records[0];
    assert_eq!(
        (fault.sid, fault.page, fault.write),
        (SID, 0x40_0000, false)
    );
    assert!(fault.reason_text.is_some(), "reason {:#x}", fault.reason);
    assert!(snap.translation_enabled);
    assert_eq!(snap.latched_table_mode, "scalable");

    let dev = &snap.devices[0];
    let Entry::Read(root) = &dev.root else {
        panic!("{:?}", dev.root)
    };
    assert!(root.present);
    let Entry::Read(ContextView::Scalable {
        present,
        rid_pasid,
        reserved_set,
        ..
    }) = &dev.context
    else {
        panic!("{:?}", dev.context)
    };
    assert!(*present && !*reserved_set);
    assert_eq!(*rid_pasid, 0);
    let Entry::Read(pasid) = &dev.rid_pasid_entry else {
        panic!("{:?}", dev.rid_pasid_entry)
    };
    assert!(pasid.present);
    assert_eq!(pasid.translation_type, "first-stage");
    assert_eq!(pasid.domain_id, 7);
    assert_eq!(pasid.first_stage_table, pt.root);
    assert_eq!(pasid.first_stage_levels, Some(4));

    // A device the guest never set up: its root entry is not present, nothing further read.
    let other = &snap.devices[1];
    assert!(matches!(&other.root, Entry::Read(r) if !r.present));
    assert_eq!(other.context, Entry::NotReached);

    assert_eq!(snap.caches.iotlb_per_domain, [(7, 1)]);
    assert_eq!(snap.caches.stats.iotlb_entries, 1);
}

#[test]
fn translation_off_reads_no_entry() {
    let rig = Rig::first_stage();
    let snap = rig.vtd.snapshot(&[SID]);
    assert!(snap.registers.gsts_set.is_empty());
    assert_eq!(snap.registers.table_mode, "legacy");
    assert!(!snap.translation_enabled);
    assert_eq!(snap.registers.fault_records, []);
    // Legacy mode at reset: RTADDR 0 is read as a root table like any other address.
    assert!(matches!(snap.devices[0].root, Entry::Read(_)));
    assert_eq!(snap.caches.iotlb_per_domain, []);
}
