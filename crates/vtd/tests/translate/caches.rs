//! The invalidation paths QEMU's qtest leaves untested: PASID-based IOTLB (PASID-selective and
//! page-selective-within-PASID, including AM=52), PASID cache (domain, PASID, global) and context
//! cache (global, domain, device with function mask). Each test shows the stale answer before
//! the invalidation and the fresh one after.

use crate::support::*;
use vtd::invalidation::Invalidation;
use vtd::request::Access;
use vtd_spec::SourceId;
use vtd_spec::pasid::Pgtt;

const IOVA: u64 = 0x8000_0000;
const GPA: u64 = DATA_BASE;
const NEW: u64 = DATA_BASE + 0x40_0000;
const DID: u16 = 2;
const PASID: u32 = 5;

/// Scalable FS tables for RID_PASID (0) and PASID 5 (separate tables, same DID), pages A and B
/// mapped in both; IOTLB filled, then all PTEs rewritten without invalidation.
fn piotlb_setup(mem: &Mem) -> std::sync::Arc<Unit> {
    let t = Tables::scalable(mem);
    t.sm_device(SID, true);
    for pasid in [0, PASID] {
        let pt = PageTable::new(mem, 4, Stage::First);
        pt.map4k(mem, IOVA, GPA);
        pt.map4k(mem, IOVA + 0x1000, GPA + 0x1000);
        t.pasid_entry(SID, pasid, fs_entry(&pt, DID));
        // Keep the table reachable for the rewrite below.
        mem.w64(DATA_BASE - 8 - u64::from(pasid) * 8, pt.root);
    }
    let unit = Unit::new(mem, t.state());
    for off in [0, 0x1000] {
        assert_eq!(unit.gpa(SID, IOVA + off).unwrap(), GPA + off);
        assert_eq!(unit.gpa_pasid(SID, PASID, IOVA + off).unwrap(), GPA + off);
    }
    for pasid in [0, PASID] {
        let pt = PageTable {
            root: mem.r64(DATA_BASE - 8 - u64::from(pasid) * 8),
            levels: 4,
            stage: Stage::First,
        };
        pt.map4k(mem, IOVA, NEW);
        pt.map4k(mem, IOVA + 0x1000, NEW + 0x1000);
    }
    for off in [0, 0x1000] {
        assert_eq!(unit.gpa(SID, IOVA + off).unwrap(), GPA + off, "stale");
        assert_eq!(
            unit.gpa_pasid(SID, PASID, IOVA + off).unwrap(),
            GPA + off,
            "stale"
        );
    }
    unit
}

#[test]
fn piotlb_pasid_selective() {
    let mem = Mem::new();
    let unit = piotlb_setup(&mem);
    unit.inv(Invalidation::PasidIotlbAll {
        did: DID + 1,
        pasid: PASID,
    });
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), GPA, "other DID");
    unit.inv(Invalidation::PasidIotlbAll {
        did: DID,
        pasid: PASID,
    });
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), NEW);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        NEW + 0x1000
    );
    // RID_PASID (PASID 0) is another PASID: untouched.
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    // And requests without PASID are tagged with RID_PASID.
    unit.inv(Invalidation::PasidIotlbAll { did: DID, pasid: 0 });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW);
}

#[test]
fn piotlb_page_selective_within_pasid() {
    let mem = Mem::new();
    let unit = piotlb_setup(&mem);
    unit.inv(Invalidation::PasidIotlbPage {
        did: DID,
        pasid: PASID,
        addr: IOVA,
        am: 0,
        ih: false,
    });
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), NEW);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        GPA + 0x1000,
        "outside the range"
    );
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA, "other PASID");
    // AM=1 aligned down covers both pages.
    unit.inv(Invalidation::PasidIotlbPage {
        did: DID,
        pasid: PASID,
        addr: IOVA + 0x1000,
        am: 1,
        ih: true,
    });
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        NEW + 0x1000
    );
}

#[test]
fn piotlb_am_52_is_the_whole_pasid() {
    let mem = Mem::new();
    let unit = piotlb_setup(&mem);
    // Linux's nested "flush all": address 0, AM 52.
    unit.inv(Invalidation::PasidIotlbPage {
        did: DID,
        pasid: PASID,
        addr: 0,
        am: 52,
        ih: false,
    });
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), NEW);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        NEW + 0x1000
    );
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA, "other PASID");
    // Anything larger (up to the descriptor's 6-bit AM) too, without overflow.
    unit.inv(Invalidation::PasidIotlbPage {
        did: DID,
        pasid: 0,
        addr: !0xfff,
        am: 63,
        ih: false,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW);
}

#[test]
fn piotlb_page_does_not_touch_second_stage_entries() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    t.sm_device(SID, false);
    t.pasid_entry(SID, 0, ss_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    pt.map4k(&mem, IOVA, NEW);
    unit.inv(Invalidation::PasidIotlbPage {
        did: DID,
        pasid: 0,
        addr: IOVA,
        am: 0,
        ih: false,
    });
    assert_eq!(
        unit.gpa(SID, IOVA).unwrap(),
        GPA,
        "PASID-based page flush is first-stage only"
    );
    unit.inv(Invalidation::IotlbPage {
        did: DID,
        addr: IOVA,
        am: 0,
        ih: false,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW);
}

/// RID_PASID starts as pass-through in DID 2, then the guest rewrites it to first stage (as in
/// a DMA ↔ identity domain switch) without invalidating.
fn pasid_cache_setup(mem: &Mem) -> std::sync::Arc<Unit> {
    let t = Tables::scalable(mem);
    t.sm_device(SID, true);
    t.pasid_entry(SID, 0, pasid_entry(Pgtt::PassThrough, DID));
    t.pasid_entry(SID, PASID, pasid_entry(Pgtt::PassThrough, DID + 1));
    let unit = Unit::new(mem, t.state());
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), IOVA);
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), IOVA);
    let pt = PageTable::new(mem, 4, Stage::First);
    pt.map4k(mem, IOVA, GPA);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID + 5));
    t.pasid_entry(SID, PASID, fs_entry(&pt, DID + 5));
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), IOVA, "stale PASID cache");
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA).unwrap(),
        IOVA,
        "stale PASID cache"
    );
    unit
}

#[test]
fn pasid_cache_pasid_selective() {
    let mem = Mem::new();
    let unit = pasid_cache_setup(&mem);
    // The entry is tagged with the DID it was cached with (the old one).
    unit.inv(Invalidation::PasidCachePasid {
        did: DID + 5,
        pasid: 0,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), IOVA, "wrong DID");
    unit.inv(Invalidation::PasidCachePasid {
        did: DID,
        pasid: PASID,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), IOVA, "wrong PASID");
    unit.inv(Invalidation::PasidCachePasid { did: DID, pasid: 0 });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA).unwrap(),
        IOVA,
        "other PASID"
    );
}

#[test]
fn pasid_cache_domain_selective() {
    let mem = Mem::new();
    let unit = pasid_cache_setup(&mem);
    unit.inv(Invalidation::PasidCacheDomain { did: DID + 1 });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), IOVA, "other domain");
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), GPA);
    unit.inv(Invalidation::PasidCacheDomain { did: DID });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
}

#[test]
fn pasid_cache_global() {
    let mem = Mem::new();
    let unit = pasid_cache_setup(&mem);
    unit.inv(Invalidation::PasidCacheGlobal);
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), GPA);
}

#[test]
fn pasid_cache_invalidation_leaves_the_iotlb_to_the_iotlb_flush() {
    // A first-stage translation is cached in the IOTLB; a PASID-cache flush alone keeps it
    // (the spec has the guest follow with a PASID-based IOTLB flush).
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    pt.map4k(&mem, IOVA, GPA);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    t.pasid_entry(SID, 0, pasid_entry(Pgtt::PassThrough, DID));
    unit.inv(Invalidation::PasidCachePasid { did: DID, pasid: 0 });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    unit.inv(Invalidation::PasidIotlbAll { did: DID, pasid: 0 });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), IOVA);
}

const SID_F4: SourceId = SourceId::new(0, 3, 4);

/// Legacy: SID and SID_F4 start pass-through; the guest rewrites both context entries to
/// translate without invalidating.
fn context_setup(mem: &Mem) -> std::sync::Arc<Unit> {
    let t = Tables::legacy(mem);
    t.legacy_pt(SID, DID);
    t.legacy_pt(SID_F4, DID);
    t.legacy_pt(SID2, DID + 1);
    let unit = Unit::new(mem, t.state());
    for s in [SID, SID_F4, SID2] {
        assert_eq!(unit.gpa(s, IOVA).unwrap(), IOVA);
    }
    let pt = PageTable::new(mem, 4, Stage::Second);
    pt.map4k(mem, IOVA, GPA);
    t.legacy_translated(SID, &pt, DID);
    t.legacy_translated(SID_F4, &pt, DID);
    t.legacy_translated(SID2, &pt, DID + 1);
    for s in [SID, SID_F4, SID2] {
        assert_eq!(unit.gpa(s, IOVA).unwrap(), IOVA, "stale context cache");
    }
    unit
}

#[test]
fn context_cache_global() {
    let mem = Mem::new();
    let unit = context_setup(&mem);
    unit.inv(Invalidation::ContextGlobal);
    for s in [SID, SID_F4, SID2] {
        assert_eq!(unit.gpa(s, IOVA).unwrap(), GPA);
    }
}

#[test]
fn context_cache_domain() {
    let mem = Mem::new();
    let unit = context_setup(&mem);
    // Domain-selective is at least the domain (this model flushes everything: scalable-mode
    // entries have no DID to select on).
    unit.inv(Invalidation::ContextDomain { did: DID });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    assert_eq!(unit.gpa(SID_F4, IOVA).unwrap(), GPA);
}

#[test]
fn context_cache_device_with_function_mask() {
    let mem = Mem::new();
    let unit = context_setup(&mem);
    unit.inv(Invalidation::ContextDevice {
        did: DID,
        sid: SID,
        fm: 0,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    assert_eq!(
        unit.gpa(SID_F4, IOVA).unwrap(),
        IOVA,
        "function 4 not selected"
    );
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), IOVA, "other bus");
    // FM=1 ignores function bit 2: 00:03.0 selects 00:03.4.
    unit.inv(Invalidation::ContextDevice {
        did: DID,
        sid: SID,
        fm: 1,
    });
    assert_eq!(unit.gpa(SID_F4, IOVA).unwrap(), GPA);
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), IOVA);
    unit.inv(Invalidation::ContextDevice {
        did: DID + 1,
        sid: SourceId::new(1, 0, 0),
        fm: 3,
    });
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), GPA);
}

#[test]
fn device_context_invalidation_also_drops_that_devices_derived_entries() {
    // Deliberate over-flush: the IOTLB is looked up per requester, so entries built from a
    // device's old context entry go with it.
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    t.legacy_translated(SID, &pt, DID);
    t.legacy_translated(SID2, &pt, DID);
    let unit = Unit::new(&mem, t.state());
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), GPA);
    pt.map4k(&mem, IOVA, NEW);
    unit.inv(Invalidation::ContextDevice {
        did: DID,
        sid: SID,
        fm: 0,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW);
    assert_eq!(
        unit.gpa(SID2, IOVA).unwrap(),
        GPA,
        "other device keeps its IOTLB entry"
    );
}

#[test]
fn cached_entries_are_served_without_reading_tables() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    pt.map4k(&mem, IOVA, GPA);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    unit.gpa(SID, IOVA).unwrap();
    let c = unit.counters.snapshot();
    assert_eq!((c.walks, c.iotlb_hits), (1, 0));
    assert_eq!((c.context_cache_misses, c.pasid_cache_misses), (1, 1));
    // Wipe the root table: hits still come from the IOTLB.
    mem.w64(t.root, 0);
    for _ in 0..3 {
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA);
    }
    let c = unit.counters.snapshot();
    assert_eq!((c.walks, c.iotlb_hits, c.translations), (1, 3, 4));
    // A miss on another page goes through the context and PASID caches.
    pt.map4k(&mem, IOVA + 0x1000, GPA + 0x1000);
    assert_eq!(unit.gpa(SID, IOVA + 0x1000).unwrap(), GPA + 0x1000);
    let c = unit.counters.snapshot();
    assert_eq!(
        (c.context_cache_hits, c.pasid_cache_hits, c.walks),
        (1, 1, 2)
    );
}

#[test]
fn faults_are_never_cached() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let unit = Unit::new(&mem, t.state());
    // PASID entry not present: no PASID-cache entry is made.
    assert!(unit.gpa(SID, IOVA).is_err());
    let pt = PageTable::new(&mem, 4, Stage::First);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    // Page not present: no IOTLB entry is made.
    assert!(unit.gpa(SID, IOVA).is_err());
    pt.map4k(&mem, IOVA, GPA);
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), GPA, "no invalidation needed");
    // Root entry not present for another bus: then made present.
    assert!(unit.gpa(SID2, IOVA).is_err());
    t.sm_device(SID2, false);
    t.pasid_entry(SID2, 0, fs_entry(&pt, DID));
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), GPA);
    // Permission faults are not cached either: a read-only page made writable works at once.
    pt.map(&mem, IOVA + 0x1000, GPA, 1, FS_P | FS_US);
    assert!(unit.req(SID, None, IOVA + 0x1000, Access::WRITE).is_err());
    pt.map4k(&mem, IOVA + 0x1000, GPA);
    assert!(unit.req(SID, None, IOVA + 0x1000, Access::WRITE).is_ok());
}

#[test]
fn caches_stay_bounded_under_a_flood_of_pages_and_devices() {
    let mem = Mem::new();
    let t = Tables::legacy(&mem);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    for i in 0..128u64 {
        pt.map4k(&mem, 0x4000_0000 + i * 0x1000, GPA + i * 0x1000);
    }
    let sids: Vec<SourceId> = (0..128u16).map(|i| SourceId(0x100 + i)).collect();
    for &s in &sids {
        t.legacy_translated(s, &pt, DID);
    }
    let unit = Unit::new(&mem, t.state());
    // 16,384 distinct (device, page) translations: more than the IOTLB holds.
    for &s in &sids {
        for i in 0..128u64 {
            let iova = 0x4000_0000 + i * 0x1000;
            assert_eq!(unit.gpa(s, iova).unwrap(), GPA + i * 0x1000);
        }
    }
    let st = unit.translator.cache_stats();
    assert!(st.iotlb_entries <= st.iotlb_capacity, "{st:?}");
    assert!(st.iotlb_capacity < 128 * 128, "{st:?}");
    assert!(st.context_entries <= st.context_capacity);
    // Evicted entries are simply walked again.
    for &s in &sids {
        assert_eq!(unit.gpa(s, 0x4000_0000).unwrap(), GPA);
    }
    unit.translator.flush_all();
    assert_eq!(unit.translator.cache_stats().iotlb_entries, 0);
}

/// The first-stage paging-structure cache, both directions: after a PDE is pointed at another
/// leaf table without an invalidation, pages of its 2 MiB region not yet in the IOTLB are still
/// found through the cached (old) table; a page invalidation with IH=1 (only leaves changed)
/// keeps it, one with IH=0 in another region keeps it, one with IH=0 in this region drops it;
/// a PASID-selective invalidation drops it too.
#[test]
fn first_stage_leaf_tables_are_used_until_invalidated_with_ih_clear() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, true);
    let pt = PageTable::new(&mem, 4, Stage::First);
    for page in 0..8u64 {
        pt.map4k(&mem, IOVA + page * 0x1000, GPA + page * 0x1000);
    }
    pt.map4k(&mem, IOVA + 0x20_0000, GPA + 0x20_0000);
    t.pasid_entry(SID, PASID, fs_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    let walks = |u: &Unit| {
        let c = u.counters.snapshot();
        (c.leaf_table_hits, c.leaf_table_misses)
    };
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), GPA);
    assert_eq!(walks(&unit), (0, 1), "first walk reads the whole chain");
    // Re-point the PDE at a new leaf table mapping the region's pages elsewhere.
    let table = mem.page();
    for page in 0..8u64 {
        mem.w64(
            table + page * 8,
            (NEW + page * 0x1000) | FS_P | FS_RW | FS_US,
        );
    }
    let old_table = pt.entry_addr(&mem, IOVA, 1) & !0xfff;
    let pde = pt.entry_addr(&mem, IOVA, 2);
    mem.w64(pde, table | FS_P | FS_RW | FS_US | FS_A);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        GPA + 0x1000,
        "stale: the cached leaf table"
    );
    assert_eq!(walks(&unit), (1, 1));
    let page = |addr: u64, am: u8, ih: bool| Invalidation::PasidIotlbPage {
        did: DID,
        pasid: PASID,
        addr,
        am,
        ih,
    };
    unit.inv(page(IOVA + 0x2000, 0, true));
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x2000).unwrap(),
        GPA + 0x2000,
        "IH=1: the leaf table is kept"
    );
    unit.inv(page(IOVA + 0x20_0000, 0, false));
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x3000).unwrap(),
        GPA + 0x3000,
        "IH=0 elsewhere: kept"
    );
    unit.inv(page(IOVA + 0x4000, 0, false));
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x4000).unwrap(),
        NEW + 0x4000,
        "IH=0 in the region: the chain is read again"
    );
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        GPA + 0x1000,
        "the IOTLB entry of a page outside the invalidated range stays"
    );
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x5000).unwrap(),
        NEW + 0x5000,
        "and the new chain is cached"
    );
    // Back to the old leaf table: the new one stays cached until a PASID-selective flush.
    mem.w64(pde, old_table | FS_P | FS_RW | FS_US | FS_A);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x6000).unwrap(),
        NEW + 0x6000
    );
    unit.inv(Invalidation::PasidIotlbAll {
        did: DID,
        pasid: PASID,
    });
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x7000).unwrap(),
        GPA + 0x7000
    );
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        GPA + 0x1000
    );
}

/// Scalable mode: PASID entries rewritten to another first-stage table without a PASID-cache
/// invalidation stay in use (IOTLB flushed or not) until a context-cache invalidation selects
/// the device: device-selective for its own, global for the rest.
#[test]
fn scalable_context_invalidations_drop_the_resolved_pasid_entries() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    let old = PageTable::new(&mem, 4, Stage::First);
    old.map4k(&mem, IOVA, GPA);
    let new = PageTable::new(&mem, 4, Stage::First);
    new.map4k(&mem, IOVA, NEW);
    for s in [SID, SID2] {
        t.sm_device(s, true);
        t.pasid_entry(s, 0, fs_entry(&old, DID));
    }
    let unit = Unit::new(&mem, t.state());
    for s in [SID, SID2] {
        assert_eq!(unit.gpa(s, IOVA).unwrap(), GPA);
        t.pasid_entry(s, 0, fs_entry(&new, DID));
    }
    unit.inv(Invalidation::PasidIotlbAll { did: DID, pasid: 0 });
    for s in [SID, SID2] {
        assert_eq!(unit.gpa(s, IOVA).unwrap(), GPA, "stale PASID entry");
    }
    unit.inv(Invalidation::ContextDevice {
        did: DID,
        sid: SID,
        fm: 0,
    });
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), NEW);
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), GPA, "other device");
    unit.inv(Invalidation::ContextGlobal);
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), NEW);
}

/// A walk also caches the other present, already-accessed 4 KiB leaves of its 64-byte line of
/// the leaf table (the request's other buffers, mapped just before): they are served without a
/// walk, stale until invalidated like any IOTLB entry, and fresh after. Entries without A, or
/// outside the line, are neither cached nor written; a cached one with D clear still sends a
/// write through the walk, which sets D.
#[test]
fn a_walk_caches_the_accessed_leaves_of_its_line_until_invalidated() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, true);
    let pt = PageTable::new(&mem, 4, Stage::First);
    let accessed = FS_P | FS_RW | FS_US | FS_A;
    pt.map(&mem, IOVA, GPA, 1, accessed | FS_D);
    let neighbour = pt.map(&mem, IOVA + 0x1000, GPA + 0x1000, 1, accessed | FS_D);
    let clean = pt.map(&mem, IOVA + 0x2000, GPA + 0x2000, 1, accessed);
    let unaccessed = pt.map(&mem, IOVA + 0x3000, GPA + 0x3000, 1, FS_P | FS_RW | FS_US);
    let next_line = pt.map(&mem, IOVA + 0x8000, GPA + 0x8000, 1, accessed | FS_D);
    // Address bit 50 is beyond the host address width (48): reserved, so the page faults.
    pt.map(&mem, IOVA + 0x4000, (1 << 50) | GPA, 1, accessed | FS_D);
    t.pasid_entry(SID, PASID, fs_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    let walks = |u: &Unit| u.counters.snapshot().walks;
    assert_eq!(unit.gpa_pasid(SID, PASID, IOVA).unwrap(), GPA);
    assert_eq!(walks(&unit), 1);
    assert_eq!(
        unit.counters.snapshot().iotlb_prefetches,
        2,
        "IOVA+1 and +2 pages"
    );
    assert_eq!(
        mem.r64(unaccessed) & FS_A,
        0,
        "nothing written for a page not asked for"
    );
    // Rewrite every neighbour without invalidating.
    mem.w64(neighbour, (NEW + 0x1000) | accessed | FS_D);
    mem.w64(unaccessed, (NEW + 0x3000) | FS_P | FS_RW | FS_US);
    mem.w64(next_line, (NEW + 0x8000) | accessed | FS_D);
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        GPA + 0x1000,
        "stale: cached by the walk of its line"
    );
    assert_eq!(walks(&unit), 1, "served without a walk");
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x3000).unwrap(),
        NEW + 0x3000,
        "an entry without A was not cached"
    );
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x8000).unwrap(),
        NEW + 0x8000,
        "another line was not cached"
    );
    assert!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x4000).is_err(),
        "an entry with a reserved bit was not cached: it faults"
    );
    // A write through the cached entry whose D is clear walks and sets D.
    let write = unit
        .req(SID, Some(PASID), IOVA + 0x2000, Access::WRITE)
        .unwrap();
    assert!(write.perms.write);
    assert_ne!(mem.r64(clean) & FS_D, 0, "D set by the write's walk");
    unit.inv(Invalidation::PasidIotlbPage {
        did: DID,
        pasid: PASID,
        addr: IOVA + 0x1000,
        am: 0,
        ih: true,
    });
    assert_eq!(
        unit.gpa_pasid(SID, PASID, IOVA + 0x1000).unwrap(),
        NEW + 0x1000,
        "fresh after the invalidation"
    );
}
