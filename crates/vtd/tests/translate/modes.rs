//! Address widths, superpages and concurrency: 3/4/5-level second stage per SAGAW, 4/5-level
//! first stage per CAP.FS5LP, 2 MiB and 1 GiB pages in both stages, and many threads
//! translating while invalidations run.

use crate::support::*;
use std::sync::Arc;
use vtd::invalidation::Invalidation;
use vtd::request::Access;
use vtd_spec::fault::FaultReason;

const DID: u16 = 6;

#[test]
fn second_stage_widths_follow_sagaw() {
    for levels in [3u32, 4, 5] {
        let mem = Mem::new();
        let t = Tables::legacy(&mem);
        let pt = PageTable::new(&mem, levels, Stage::Second);
        let iova = (1u64 << (12 + 9 * levels - 1)) - 0x1000 * 7;
        pt.map4k(&mem, iova, DATA_BASE);
        t.legacy_translated(SID, &pt, DID);
        let mut state = t.state();
        state.cap = state.cap.with_sagaw(0b1110).with_mgaw(56);
        let unit = Unit::new(&mem, state);
        assert_eq!(unit.gpa(SID, iova).unwrap(), DATA_BASE, "{levels} levels");
        // Without the SAGAW bit the context entry is invalid.
        state.cap = state.cap.with_sagaw(0b1110 & !(1 << (levels - 2)));
        let unit = Unit::new(&mem, state);
        assert_eq!(
            unit.gpa(SID, iova).unwrap_err().reason,
            FaultReason::ContextInvalid
        );
    }
}

#[test]
fn five_level_first_stage_with_fs5lp() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 5, Stage::First);
    let iova = 0x00ab_cdef_1234_5000u64 & ((1 << 56) - 1);
    pt.map4k(&mem, iova, DATA_BASE);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    let mut state = t.state();
    state.cap = state.cap.with_fs5lp(true).with_mgaw(56);
    let unit = Unit::new(&mem, state);
    assert_eq!(unit.gpa(SID, iova).unwrap(), DATA_BASE);
    // 57-bit canonical: bit 56 set needs all upper bits set.
    assert_eq!(
        unit.gpa(SID, 1 << 56).unwrap_err().reason,
        FaultReason::SmNonCanonical
    );
    // With a 48-bit HAW, a 5-level table cannot reach past 2^47.
    state.cap = state.cap.with_mgaw(47);
    let unit = Unit::new(&mem, state);
    assert_eq!(
        unit.gpa(SID, iova).unwrap_err().reason,
        FaultReason::SmBeyondHardwareMax
    );
}

#[test]
fn superpages_in_both_stages() {
    for stage in [Stage::First, Stage::Second] {
        let mem = Mem::new();
        let t = Tables::scalable(&mem);
        t.sm_device(SID, false);
        let pt = PageTable::new(&mem, 4, stage);
        pt.map(&mem, 0x4000_0000, 0x1_0000_0000, 3, stage.leaf_rw());
        pt.map(&mem, 0x8020_0000, 0x60_0000, 2, stage.leaf_rw());
        let pe = match stage {
            Stage::First => fs_entry(&pt, DID),
            Stage::Second => ss_entry(&pt, DID),
        };
        t.pasid_entry(SID, 0, pe);
        let unit = Unit::new(&mem, t.state());
        let tr = unit.req(SID, None, 0x4123_4567, Access::WRITE).unwrap();
        assert_eq!(
            (tr.iova_base, tr.gpa_base, tr.size),
            (0x4000_0000, 0x1_0000_0000, 1 << 30)
        );
        assert_eq!(tr.gpa(0x4123_4567), 0x1_0123_4567);
        let tr = unit.req(SID, None, 0x803f_ffff, Access::READ).unwrap();
        assert_eq!(
            (tr.iova_base, tr.gpa_base, tr.size),
            (0x8020_0000, 0x60_0000, 2 << 20)
        );
        // Both are served from the IOTLB afterwards, anywhere in the page.
        unit.req(SID, None, 0x4000_0000, Access::READ).unwrap();
        unit.req(SID, None, 0x8020_0000, Access::READ).unwrap();
        let c = unit.counters.snapshot();
        assert_eq!((c.walks, c.iotlb_hits), (2, 2), "{stage:?}");
        // A page invalidation of one 4 KiB page inside the 1 GiB page drops it.
        pt.map(&mem, 0x4000_0000, 0x2_0000_0000, 3, stage.leaf_rw());
        unit.inv(Invalidation::IotlbPage {
            did: DID,
            addr: 0x4567_8000,
            am: 0,
            ih: false,
        });
        assert_eq!(unit.gpa(SID, 0x4000_0000).unwrap(), 0x2_0000_0000);
    }
}

#[test]
fn concurrent_translations_and_invalidations() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    t.sm_device(SID2, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    for i in 0..64u64 {
        pt.map4k(&mem, 0x10_0000 + i * 0x1000, DATA_BASE + i * 0x1000);
    }
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    t.pasid_entry(SID2, 0, fs_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    std::thread::scope(|s| {
        for sid in [SID, SID2, SID, SID2] {
            let unit = Arc::clone(&unit);
            s.spawn(move || {
                for round in 0..2_000u64 {
                    let i = (round * 7) % 64;
                    let iova = 0x10_0000 + i * 0x1000 + 0x18;
                    let access = if round % 3 == 0 {
                        Access::WRITE
                    } else {
                        Access::READ
                    };
                    let tr = unit.req(sid, None, iova, access).unwrap();
                    assert_eq!(tr.gpa(iova), DATA_BASE + i * 0x1000 + 0x18);
                }
            });
        }
        let unit = Arc::clone(&unit);
        s.spawn(move || {
            for round in 0..500u64 {
                let inv = match round % 4 {
                    0 => Invalidation::IotlbGlobal,
                    1 => Invalidation::PasidIotlbAll { did: DID, pasid: 0 },
                    2 => Invalidation::PasidCacheGlobal,
                    _ => Invalidation::ContextDevice {
                        did: 0,
                        sid: SID,
                        fm: 0,
                    },
                };
                unit.inv(inv);
            }
        });
    });
    let c = unit.counters.snapshot();
    assert_eq!(c.translations, 8_000);
    assert_eq!(c.iotlb_hits + c.walks, 8_000);
}

#[test]
fn legacy_device_tlb_translation_type_with_ecap_dt() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, 0x5000, DATA_BASE);
    t.legacy_context(
        SID,
        vtd_spec::context::LegacyContextEntry {
            lo: vtd_spec::context::LegacyContextLo::new()
                .with_present(true)
                .with_tt(vtd_spec::context::TranslationType::DeviceTlb)
                .with_ssptptr(pt.root >> 12),
            hi: vtd_spec::context::LegacyContextHi::new()
                .with_aw(2)
                .with_did(DID),
        },
    );
    let mut state = t.state();
    state.ecap = state.ecap.with_dt(true);
    let unit = Unit::new(&mem, state);
    assert_eq!(unit.gpa(SID, 0x5123).unwrap(), DATA_BASE + 0x123);
}

#[test]
fn read_pasid_entry_bypasses_the_pasid_cache() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, true);
    let pt = PageTable::new(&mem, 4, Stage::First);
    let pe = fs_entry(&pt, DID);
    t.pasid_entry(SID, 3, pe);
    let unit = Unit::new(&mem, t.state());
    let state = unit.state();
    let read = |pasid| {
        unit.translator
            .read_pasid_entry(&*mem.ram, &state, SID, pasid)
    };
    assert_eq!(read(3).unwrap(), pe);
    // Not-present entries are returned as found: the caller decides.
    assert!(!read(4).unwrap().qw0.present());
    // A missing directory entry or context entry is a fault.
    assert_eq!(
        read(64).unwrap_err().reason,
        FaultReason::SmPasidDirNotPresent
    );
    assert_eq!(
        unit.translator
            .read_pasid_entry(&*mem.ram, &state, SID2, 0)
            .unwrap_err()
            .reason,
        FaultReason::SmRootNotPresent
    );
    // Nothing was cached, and later changes are seen at once.
    assert_eq!(unit.translator.cache_stats().pasid_entries, 0);
    let mut pe2 = pe;
    pe2.qw1 = pe2.qw1.with_did(DID + 1);
    t.pasid_entry(SID, 3, pe2);
    assert_eq!(read(3).unwrap().qw1.did(), DID + 1);
    // Legacy mode has no PASID tables.
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let unit = Unit::new(&mem, t.state());
    assert_eq!(
        unit.translator
            .read_pasid_entry(&*mem.ram, &unit.state(), SID, 0)
            .unwrap_err()
            .reason,
        FaultReason::SmTtmLegacyWithPasid
    );
}

#[test]
fn requests_with_pasid_use_their_own_entry() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, true);
    let pt0 = PageTable::new(&mem, 4, Stage::First);
    pt0.map4k(&mem, 0x7000, DATA_BASE);
    let pt9 = PageTable::new(&mem, 4, Stage::First);
    pt9.map4k(&mem, 0x7000, DATA_BASE + 0x9000);
    t.pasid_entry(SID, 0, fs_entry(&pt0, DID));
    t.pasid_entry(SID, 9, fs_entry(&pt9, DID));
    t.pasid_entry(
        SID,
        70,
        pasid_entry(vtd_spec::pasid::Pgtt::PassThrough, DID),
    );
    let unit = Unit::new(&mem, t.state());
    assert_eq!(unit.gpa(SID, 0x7000).unwrap(), DATA_BASE);
    assert_eq!(unit.gpa_pasid(SID, 9, 0x7000).unwrap(), DATA_BASE + 0x9000);
    assert_eq!(unit.gpa_pasid(SID, 0, 0x7000).unwrap(), DATA_BASE);
    assert_eq!(unit.gpa_pasid(SID, 70, 0x7000).unwrap(), 0x7000);
}
