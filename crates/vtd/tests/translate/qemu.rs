//! QEMU's iommu-intel-test scenarios and its IOTLB-invalidation matrix, against the translator.
//!
//! Each scenario builds the tables a guest would, then DMAs through `IommuMemory` over a
//! `DeviceIommu` (the path an emulated virtio device takes) and checks that the data lands at
//! the expected guest-physical address.

use crate::support::*;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, IommuMemory};
use vtd::invalidation::Invalidation;
use vtd::iommu::DeviceIommu;
use vtd_spec::pasid::Pgtt;

const IOVA: u64 = 0x1234_5000;
const GPA: u64 = DATA_BASE + 0x7000;
const DID: u16 = 2;

/// DMA-writes a pattern to `iova` as device `SID` and returns where it landed by reading GPA.
fn dma_lands_at(unit: &Arc<Unit>, iova: u64, gpa: u64) {
    let view = DeviceIommu::new(unit.clone(), SID);
    let mem = IommuMemory::new((*unit.ram).clone(), view, true, ());
    let pattern: Vec<u8> = (0..64u8).map(|i| i ^ 0x5a).collect();
    mem.write_slice(&pattern, GuestAddress(iova + 0x10))
        .unwrap();
    let mut back = vec![0u8; 64];
    unit.ram
        .read_slice(&mut back, GuestAddress(gpa + 0x10))
        .unwrap();
    assert_eq!(back, pattern, "DMA to {iova:#x} did not land at {gpa:#x}");
    let mut again = vec![0u8; 64];
    mem.read_slice(&mut again, GuestAddress(iova + 0x10))
        .unwrap();
    assert_eq!(again, pattern);
}

#[test]
fn legacy_pt() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    t.legacy_pt(SID, DID);
    let unit = Unit::new(&mem, t.state());
    dma_lands_at(&unit, GPA, GPA);
}

#[test]
fn legacy_trans() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    t.legacy_translated(SID, &pt, DID);
    let unit = Unit::new(&mem, t.state());
    dma_lands_at(&unit, IOVA, GPA);
}

#[test]
fn legacy_trans_3_level() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 3, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    t.legacy_translated(SID, &pt, DID);
    let unit = Unit::new(&mem, t.state());
    dma_lands_at(&unit, IOVA, GPA);
}

#[test]
fn scalable_pt() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    t.pasid_entry(SID, 0, pasid_entry(Pgtt::PassThrough, DID));
    let unit = Unit::new(&mem, t.state());
    dma_lands_at(&unit, GPA, GPA);
}

#[test]
fn scalable_slt() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    t.sm_device(SID, false);
    t.pasid_entry(SID, 0, ss_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    dma_lands_at(&unit, IOVA, GPA);
}

#[test]
fn scalable_flt() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    let pt = PageTable::new(&mem, 4, Stage::First);
    pt.map4k(&mem, IOVA, GPA);
    t.sm_device(SID, false);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    dma_lands_at(&unit, IOVA, GPA);
}

/// The three translated modes of the invalidation matrix.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Legacy,
    ScalableSlt,
    ScalableFlt,
}

const MODES: [Mode; 3] = [Mode::Legacy, Mode::ScalableSlt, Mode::ScalableFlt];

/// Builds `mode` with IOVA pages A and B mapped to GPA_A and GPA_B.
fn setup(mem: &Mem, mode: Mode) -> (Arc<Unit>, PageTable) {
    let stage = match mode {
        Mode::ScalableFlt => Stage::First,
        _ => Stage::Second,
    };
    let pt = PageTable::new(mem, 4, stage);
    pt.map4k(mem, IOVA, GPA);
    pt.map4k(mem, IOVA + 0x1000, GPA + 0x1000);
    let t = match mode {
        Mode::Legacy => {
            let t = Tables::legacy(mem);
            t.legacy_translated(SID, &pt, DID);
            t
        }
        Mode::ScalableSlt => {
            let t = Tables::scalable(mem);
            t.sm_device(SID, false);
            t.pasid_entry(SID, 0, ss_entry(&pt, DID));
            t
        }
        Mode::ScalableFlt => {
            let t = Tables::scalable(mem);
            t.sm_device(SID, false);
            t.pasid_entry(SID, 0, fs_entry(&pt, DID));
            t
        }
    };
    (Unit::new(mem, t.state()), pt)
}

const NEW: u64 = DATA_BASE + 0x10_0000;

/// Fills the IOTLB for both pages, then rewrites both PTEs without invalidating.
fn fill_and_rewrite(mem: &Mem, unit: &Unit, pt: &PageTable) {
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    assert_eq!(unit.gpa(SID, IOVA + 0x1000).unwrap(), GPA + 0x1000);
    pt.map4k(mem, IOVA, NEW);
    pt.map4k(mem, IOVA + 0x1000, NEW + 0x1000);
    // Stale: the IOTLB keeps answering with the old translation (QEMU's
    // ITD_DMA_ERR_MISMATCH expectation).
    assert_eq!(
        unit.gpa(SID, IOVA).unwrap(),
        GPA,
        "stale before invalidation"
    );
    assert_eq!(unit.gpa(SID, IOVA + 0x1000).unwrap(), GPA + 0x1000);
}

#[test]
fn iotlb_global_invalidation() {
    for mode in MODES {
        let mem = Mem::new();
        let (unit, pt) = setup(&mem, mode);
        fill_and_rewrite(&mem, &unit, &pt);
        unit.inv(Invalidation::IotlbGlobal);
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW, "{mode:?}");
        assert_eq!(
            unit.gpa(SID, IOVA + 0x1000).unwrap(),
            NEW + 0x1000,
            "{mode:?}"
        );
    }
}

#[test]
fn iotlb_domain_invalidation() {
    for mode in MODES {
        let mem = Mem::new();
        let (unit, pt) = setup(&mem, mode);
        fill_and_rewrite(&mem, &unit, &pt);
        unit.inv(Invalidation::IotlbDomain { did: DID + 1 });
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA, "{mode:?}: other domain");
        unit.inv(Invalidation::IotlbDomain { did: DID });
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW, "{mode:?}");
        assert_eq!(
            unit.gpa(SID, IOVA + 0x1000).unwrap(),
            NEW + 0x1000,
            "{mode:?}"
        );
    }
}

#[test]
fn iotlb_page_invalidation() {
    for mode in MODES {
        let mem = Mem::new();
        let (unit, pt) = setup(&mem, mode);
        fill_and_rewrite(&mem, &unit, &pt);
        unit.inv(Invalidation::IotlbPage {
            did: DID,
            addr: IOVA,
            am: 0,
            ih: false,
        });
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW, "{mode:?}");
        let other = unit.gpa(SID, IOVA + 0x1000).unwrap();
        match mode {
            // A page invalidation keeps the other second-stage entries...
            Mode::Legacy | Mode::ScalableSlt => assert_eq!(other, GPA + 0x1000, "{mode:?}"),
            // ...but drops every first-stage entry of the domain (§6.5.2.2).
            Mode::ScalableFlt => assert_eq!(other, NEW + 0x1000, "{mode:?}"),
        }
    }
}

#[test]
fn iotlb_page_invalidation_of_another_domain_keeps_everything() {
    for mode in MODES {
        let mem = Mem::new();
        let (unit, pt) = setup(&mem, mode);
        fill_and_rewrite(&mem, &unit, &pt);
        unit.inv(Invalidation::IotlbPage {
            did: DID + 1,
            addr: IOVA,
            am: 0,
            ih: false,
        });
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA, "{mode:?}");
    }
}

#[test]
fn iotlb_page_invalidation_with_address_mask() {
    let mem = Mem::new();
    let (unit, pt) = setup(&mem, Mode::Legacy);
    pt.map4k(&mem, IOVA + 0x2000, GPA + 0x2000);
    assert_eq!(unit.gpa(SID, IOVA + 0x2000).unwrap(), GPA + 0x2000);
    fill_and_rewrite(&mem, &unit, &pt);
    pt.map4k(&mem, IOVA + 0x2000, NEW + 0x2000);
    // AM=1 at IOVA covers IOVA and IOVA+0x1000 (IOVA is 8 KiB aligned... aligned down).
    unit.inv(Invalidation::IotlbPage {
        did: DID,
        addr: IOVA + 0x1000,
        am: 1,
        ih: true,
    });
    let base = (IOVA + 0x1000) & !0x1fff;
    for off in [0u64, 0x1000, 0x2000] {
        let iova = IOVA + off;
        let expect = if iova & !0x1fff == base {
            NEW + off
        } else {
            GPA + off
        };
        assert_eq!(unit.gpa(SID, iova).unwrap(), expect, "offset {off:#x}");
    }
}
