//! The passthrough path end to end: a guest programs the vIOMMU, the binding layer keeps the
//! (software) host IOMMU in sync, and the device's DMA goes through the host's nested walk.

mod support;

use accel::BindingState;
use host_iommu::sim::{SimConfig, SimHost};
use host_iommu::{DeviceId, HostIommu};
use std::sync::Arc;
use support::*;
use vtd_spec::SourceId;

const IOVA: u64 = 0xffff_f000;

/// DMA-reads one byte at `iova`; `None` if the host IOMMU faults.
fn dma(sim: &SimHost, dev: DeviceId, iova: u64) -> Option<u8> {
    let mut b = [0u8; 1];
    sim.dma_read(dev, iova, &mut b).ok().map(|()| b[0])
}

fn is_nested(state: Option<BindingState>) -> bool {
    matches!(state, Some(BindingState::Nested { .. }))
}

/// A booted guest with translation on and one assigned device bound to a first-stage table
/// that maps IOVA → a page filled with 0xaa. Returns (guest, sim, dev, table, pte, page).
fn bound() -> (Guest, Arc<SimHost>, DeviceId, u64, u64, u64) {
    let mut g = Guest::new(OPTIONS);
    g.boot();
    let sim = g.sim(SimConfig::default());
    let dev = g.assign(&sim, SID).unwrap();
    let table = g.new_table();
    let page = g.page();
    g.fill(page, 0xaa);
    let pte = g.map(table, IOVA, page, true);
    g.set_first_stage(SID, DID, table);
    g.submit(&[pasid_cache_pasid(DID, 0), piotlb_pasid(DID, 0)]);
    g.translation(true);
    assert!(is_nested(g.accel.state(SID)), "{:?}", g.accel.state(SID));
    // The readable view names the same state and the host objects behind it.
    let views = g.accel.bindings();
    assert_eq!(views.len(), 1);
    let (sid, view) = &views[0];
    assert_eq!(*sid, SID);
    assert_eq!(Some(view.target), g.accel.state(SID));
    let nested = view.nested_hwpt.expect("a nested HWPT");
    assert_ne!(nested, view.parent_hwpt);
    assert_eq!(dma(&sim, dev, IOVA), Some(0xaa));
    (g, sim, dev, table, pte, page)
}

/// Linux 6.1 and 5.10 (booted with `intel_iommu=on,sm_on` and caching mode) program each
/// device before translation is on, in this order: the PASID entry (6.1 with NXE), a
/// PASID-selective PASID-cache and a PASID-IOTLB invalidation, then the context entry, a
/// device-selective context-cache and a domain IOTLB invalidation, each its own submission;
/// TE comes after every device. Every first-stage entry they write has XD set. The device's DMA
/// must go through the guest's table once TE is set (it did not: the host refused XD).
#[test]
fn linux_6_1_order_and_entries_bind_and_translate() {
    for (kernel, nxe) in [("6.1", true), ("5.10", false)] {
        let mut g = Guest::new(OPTIONS);
        g.boot();
        let sim = g.sim(SimConfig::default());
        let dev = g.assign(&sim, SID).unwrap();
        let table = g.new_table();
        let page = g.page();
        g.fill(page, 0x61);
        g.map_with(table, IOVA, page, true, XD);
        // The PASID entry first; the context entry is not present yet.
        g.set_first_stage_with(SID, DID, table, nxe);
        let ce = g.context_entry_addr(SID);
        let ce_lo = g.r64(ce);
        g.w64(ce, 0);
        g.submit(&[pasid_cache_pasid(DID, 0)]);
        g.submit(&[piotlb_pasid(DID, 0)]);
        g.w64(ce, ce_lo);
        g.submit(&[context_cache(3, 0, SID.0, 0)]);
        g.submit(&[iotlb(2, DID, 0)]);
        assert_eq!(
            g.accel.state(SID),
            Some(BindingState::Stage2 { did: None }),
            "{kernel}: stage 2 only while translation is off"
        );
        g.translation(true);
        assert!(
            is_nested(g.accel.state(SID)),
            "{kernel}: {:?}",
            g.accel.state(SID)
        );
        let mut b = [0u8; 1];
        let read = sim.dma_read(dev, IOVA, &mut b);
        assert!(
            read.is_ok(),
            "{kernel}: DMA through the bound table: {read:?}"
        );
        assert_eq!(b[0], 0x61, "{kernel}");
        sim.dma_write(dev, IOVA, &[0x62]).unwrap();
        assert_eq!(dma(&sim, dev, IOVA), Some(0x62), "{kernel}");
    }
}

#[test]
fn translation_off_means_stage2_only() {
    let mut g = Guest::new(OPTIONS);
    g.boot();
    let sim = g.sim(SimConfig::default());
    let dev = g.assign(&sim, SID).unwrap();
    assert_eq!(g.accel.state(SID), Some(BindingState::Stage2 { did: None }));
    assert_eq!(
        g.accel.bindings()[0].1.nested_hwpt,
        None,
        "on the nest parent only"
    );
    let page = g.page();
    g.fill(page, 0x11);
    assert_eq!(
        dma(&sim, dev, page),
        Some(0x11),
        "GPA = IOVA through the nest parent"
    );
}

#[test]
fn bind_replace_unbind() {
    let (mut g, sim, dev, _, _, _) = bound();
    let binds = g.accel.counters().nested_binds;

    // The guest moves the device to another first-stage table: a new nested HWPT replaces
    // the old one atomically and the old one is freed.
    let table2 = g.new_table();
    let page2 = g.page();
    g.fill(page2, 0xbb);
    g.map(table2, IOVA, page2, true);
    g.set_first_stage(SID, DID, table2);
    g.submit(&[pasid_cache_pasid(DID, 0), piotlb_pasid(DID, 0)]);
    assert_eq!(dma(&sim, dev, IOVA), Some(0xbb));
    assert_eq!(g.accel.counters().nested_binds, binds + 1);
    assert_eq!(
        sim.live_objects().nested,
        1,
        "the replaced nested HWPT was freed"
    );

    // Teardown of the PASID entry: DMA is blocked while translation is on.
    g.clear_entry(SID);
    g.submit(&[pasid_cache_pasid(DID, 0), piotlb_pasid(DID, 0)]);
    assert!(matches!(g.accel.state(SID), Some(BindingState::Blocked(_))));
    assert_eq!(dma(&sim, dev, IOVA), None);
    assert_eq!(sim.live_objects().nested, 0);
}

#[test]
fn stale_until_invalidated_and_never_after() {
    let (mut g, sim, dev, _, pte, _) = bound();
    let page2 = g.page();
    g.fill(page2, 0xcc);
    // The guest remaps the IOVA but has not invalidated yet: the host IOTLB may still give
    // the old page, exactly as hardware would.
    g.w64(pte, page2 | 0b1100111);
    assert_eq!(
        dma(&sim, dev, IOVA),
        Some(0xaa),
        "stale before the invalidation"
    );
    g.submit(&[piotlb_page(DID, 0, IOVA, 0, true)]);
    assert_eq!(dma(&sim, dev, IOVA), Some(0xcc), "fresh after it");
    // Unmap + invalidate: never reachable again.
    g.w64(pte, 0);
    g.submit(&[piotlb_page(DID, 0, IOVA, 0, true)]);
    assert_eq!(dma(&sim, dev, IOVA), None);
}

#[test]
fn invalidations_are_batched_per_submission() {
    let (mut g, sim, _dev, _, _, _) = bound();
    let before = g.accel.counters();
    let calls = sim.counters().invalidation_calls;
    let descs: Vec<_> = (0..16)
        .map(|i| piotlb_page(DID, 0, IOVA - i * 4096, 0, true))
        .collect();
    g.submit(&descs);
    let after = g.accel.counters();
    assert_eq!(
        after.forwarded_invalidations - before.forwarded_invalidations,
        1
    );
    assert_eq!(after.forwarded_entries - before.forwarded_entries, 16);
    assert_eq!(
        sim.counters().invalidation_calls - calls,
        1,
        "one ioctl for 16 descriptors"
    );
    // Another domain's invalidation is not forwarded.
    g.submit(&[piotlb_pasid(DID + 1, 0)]);
    assert_eq!(
        g.accel.counters().forwarded_invalidations,
        after.forwarded_invalidations
    );
    // AM = 52 is the whole PASID; legacy IOTLB descriptors are forwarded as "everything".
    g.submit(&[piotlb_page(DID, 0, 0, 52, false), iotlb_global()]);
    assert_eq!(
        g.accel.counters().forwarded_entries,
        after.forwarded_entries + 1
    );
}

#[test]
fn pass_through_pgtt_uses_stage2() {
    let (mut g, sim, dev, _, _, _) = bound();
    g.set_pass_through(SID, DID);
    g.submit(&[pasid_cache_pasid(DID, 0), piotlb_pasid(DID, 0)]);
    assert_eq!(
        g.accel.state(SID),
        Some(BindingState::Stage2 { did: Some(DID) })
    );
    let page = g.page();
    g.fill(page, 0x5a);
    assert_eq!(dma(&sim, dev, page), Some(0x5a));
}

/// The upstream bug "Fix DMA failure when guest switches IOMMU domain": DMA → identity → DMA
/// through `/sys/kernel/iommu_groups/N/type`, with I/O correct after each step.
#[test]
fn runtime_domain_switch_dma_identity_dma() {
    let (mut g, sim, dev, table, _, _) = bound();
    g.clear_entry(SID);
    g.submit(&[pasid_cache_pasid(DID, 0), piotlb_pasid(DID, 0)]);
    g.set_pass_through(SID, DID + 1);
    g.submit(&[pasid_cache_pasid(DID + 1, 0), piotlb_pasid(DID + 1, 0)]);
    let page = g.page();
    g.fill(page, 0x77);
    assert_eq!(dma(&sim, dev, page), Some(0x77), "identity domain");
    g.clear_entry(SID);
    g.submit(&[pasid_cache_pasid(DID + 1, 0), piotlb_pasid(DID + 1, 0)]);
    g.set_first_stage(SID, DID + 2, table);
    g.submit(&[pasid_cache_pasid(DID + 2, 0), piotlb_pasid(DID + 2, 0)]);
    assert_eq!(dma(&sim, dev, IOVA), Some(0xaa), "back to a DMA domain");
}

#[test]
fn te_off_and_on_replays() {
    let (mut g, sim, dev, _, _, page) = bound();
    g.translation(false);
    assert_eq!(g.accel.state(SID), Some(BindingState::Stage2 { did: None }));
    assert_eq!(dma(&sim, dev, page), Some(0xaa));
    g.translation(true);
    assert!(is_nested(g.accel.state(SID)));
    assert_eq!(dma(&sim, dev, IOVA), Some(0xaa));
}

#[test]
fn srtp_rewrite_and_legacy_switch() {
    let (mut g, sim, dev, _, _, _) = bound();
    // A new root table whose PASID entry points at another first-stage table.
    let old_root = g.root;
    let new_root = g.page();
    g.set_root(new_root, true);
    g.submit(&[context_cache_global(), pasid_cache_global(), iotlb_global()]);
    assert!(
        matches!(g.accel.state(SID), Some(BindingState::Blocked(_))),
        "no entry yet"
    );
    let table = g.new_table();
    let page = g.page();
    g.fill(page, 0x42);
    g.map(table, IOVA, page, false);
    g.set_first_stage(SID, DID, table);
    g.submit(&[pasid_cache_pasid(DID, 0)]);
    assert_eq!(dma(&sim, dev, IOVA), Some(0x42));
    let mut b = [0u8; 1];
    assert!(
        sim.dma_write(dev, IOVA, &b).is_err(),
        "read-only leaf stays read-only"
    );
    // Legacy mode with translation on is not shadowed: DMA is blocked, not misdirected.
    g.set_root(old_root, false);
    assert!(matches!(
        g.accel.state(SID),
        Some(BindingState::Blocked(accel::BlockReason::LegacyMode))
    ));
    assert!(sim.dma_read(dev, IOVA, &mut b).is_err());
    g.set_root(old_root, true);
    assert!(is_nested(g.accel.state(SID)));
}

#[test]
fn devices_share_a_nest_parent_per_host_iommu() {
    let mut g = Guest::new(OPTIONS);
    g.boot();
    let sim = g.sim(SimConfig::default());
    let other_host = g.sim(SimConfig::default());
    g.assign(&sim, SID).unwrap();
    g.assign(&sim, SourceId::new(0, 5, 0)).unwrap();
    assert_eq!(g.accel.nest_parents(), 1);
    assert_eq!(sim.live_objects().nest_parents, 1);
    g.assign(&other_host, SourceId::new(0, 6, 0)).unwrap();
    assert_eq!(
        g.accel.nest_parents(),
        2,
        "a second host IOMMU gets its own parent"
    );
    let err = g.assign(&sim, SID).unwrap_err();
    let dup = std::error::Error::source(&err).unwrap().to_string();
    assert!(dup.contains("already exist"), "{dup}");
}

#[test]
fn hotplug_and_unplug() {
    let (mut g, sim, _dev, table, _, _) = bound();
    // Hot-plug while translation is on and the guest already set the entry up.
    let sid2 = SourceId::new(0, 7, 0);
    g.set_first_stage(sid2, DID, table);
    let dev2 = g.assign(&sim, sid2).unwrap();
    assert!(is_nested(g.accel.state(sid2)));
    assert_eq!(dma(&sim, dev2, IOVA), Some(0xaa));
    assert!(g.accel.remove_device(sid2));
    assert_eq!(g.accel.state(sid2), None);
    assert_eq!(
        sim.live_objects().nested,
        1,
        "only the first device's nested HWPT is left"
    );
    assert!(g.accel.remove_device(SID));
    let live = sim.live_objects();
    assert_eq!(
        (
            live.nested,
            live.nest_parents,
            live.ioas,
            live.attached_devices
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn erratum_host_leaves_read_only_ram_out() {
    let mut g = Guest::new(OPTIONS);
    let sim = g.sim(SimConfig {
        errata_772415: true,
        ..SimConfig::default()
    });
    // A guest whose first MiB is read-only (a ROM), the rest RAM.
    let config = vtd::config::Config::parse(OPTIONS).unwrap();
    let accel = Arc::new(accel::Accel::new(
        config,
        vec![
            accel::RamRegion {
                gpa: 0,
                hva: HVA,
                len: 1 << 20,
                writable: false,
            },
            accel::RamRegion {
                gpa: 1 << 20,
                hva: HVA + (1 << 20),
                len: RAM - (1 << 20),
                writable: true,
            },
        ],
    ));
    g.vtd.add_observer(accel.clone());
    g.boot();
    let dev = sim.add_device("ro-test");
    let host: Arc<dyn HostIommu> = sim.clone();
    accel
        .add_device(
            &*g.vtd,
            accel::HostDevice {
                sid: SID,
                name: "ro-test".into(),
                host,
                dev,
                behind_bridge: false,
            },
        )
        .unwrap();
    let page = g.page();
    g.fill(page, 0x33);
    assert_eq!(dma(&sim, dev, page), Some(0x33), "RAM is mapped");
    assert_eq!(
        dma(&sim, dev, 0x1000),
        None,
        "the read-only region is left out"
    );
}

#[test]
fn host_without_nesting_is_refused_clearly() {
    let mut g = Guest::new(OPTIONS);
    g.boot();
    let sim = g.sim(SimConfig {
        nesting: false,
        ..SimConfig::default()
    });
    let err = g.assign(&sim, SID).unwrap_err();
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "The host IOMMU does not support nested translation (ECAP.NEST is clear)"
    );
    let g2 = Guest::new("x-scalable-mode=on,x-flts=on");
    let sim2 = g2.sim(SimConfig::default());
    let err = g2.assign(&sim2, SID).unwrap_err();
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("caching-mode=on"),
        "{err}"
    );
}

#[test]
fn failed_bind_blocks_then_recovers() {
    let mut g = Guest::new(OPTIONS);
    g.boot();
    let sim = g.sim(SimConfig::default());
    let dev = g.assign(&sim, SID).unwrap();
    g.translation(true);
    let table = g.new_table();
    let page = g.page();
    g.fill(page, 0x99);
    g.map(table, IOVA, page, true);
    g.set_first_stage(SID, DID, table);
    sim.fail_next_alloc(libc_enomem());
    g.submit(&[pasid_cache_pasid(DID, 0)]);
    assert_eq!(
        g.accel.state(SID),
        Some(BindingState::Blocked(accel::BlockReason::HostFailure))
    );
    assert_eq!(
        dma(&sim, dev, IOVA),
        None,
        "blocked, not left on stale tables"
    );
    assert_eq!(g.accel.counters().host_failures, 1);
    g.submit(&[pasid_cache_pasid(DID, 0)]);
    assert!(
        is_nested(g.accel.state(SID)),
        "the next sync restores the device"
    );
    assert_eq!(dma(&sim, dev, IOVA), Some(0x99));
}

#[test]
fn failed_attach_keeps_nothing_alive() {
    let (mut g, sim, dev, _, _, _) = bound();
    let table2 = g.new_table();
    g.set_first_stage(SID, DID, table2);
    sim.fail_next_attach(libc_enomem());
    g.submit(&[pasid_cache_pasid(DID, 0)]);
    assert_eq!(
        g.accel.state(SID),
        Some(BindingState::Blocked(accel::BlockReason::HostFailure))
    );
    assert_eq!(dma(&sim, dev, IOVA), None);
    assert_eq!(
        sim.live_objects().nested,
        0,
        "the new HWPT was freed, the old one too"
    );
}

#[test]
fn failed_invalidation_blocks_until_resync() {
    let (mut g, sim, dev, _, pte, _) = bound();
    let page2 = g.page();
    g.fill(page2, 0xdd);
    g.w64(pte, page2 | 0b1100111);
    sim.fail_next_invalidate(libc_enomem(), 0);
    g.submit(&[piotlb_page(DID, 0, IOVA, 0, true)]);
    assert_eq!(
        dma(&sim, dev, IOVA),
        None,
        "never the stale page after a lost invalidation"
    );
    g.submit(&[pasid_cache_pasid(DID, 0)]);
    assert_eq!(dma(&sim, dev, IOVA), Some(0xdd));
}

fn libc_enomem() -> i32 {
    12
}

/// One iommufd, two VT-d units. Compatible units share one nest parent (a paging domain may
/// span units); when the first parent does not fit the second unit (`paging_domain_compatible`:
/// a 57-bit stage 2 on a 48-bit unit) the kernel refuses the attach with EINVAL and the second
/// device gets a parent of its own. Both devices are bound and DMA through the guest's table.
#[test]
fn devices_on_two_units_of_one_host() {
    for (first_aw, parents) in [(48, 1), (57, 2)] {
        let mut g = Guest::new(OPTIONS);
        g.boot();
        let mem = host_iommu::sim::GuestRamMemory::new(
            (*g.ram).clone(),
            vec![host_iommu::sim::GuestRamRegion {
                gpa: 0,
                size: RAM,
                hva: HVA,
            }],
        );
        let units = vec![
            SimConfig {
                aw_bits: first_aw,
                ..SimConfig::default()
            },
            SimConfig::default(),
        ];
        let sim = Arc::new(SimHost::with_units(units, Arc::new(mem)));
        let host: Arc<dyn HostIommu> = sim.clone();
        let sids = [SID, SourceId::new(0, 5, 0)];
        let mut devs = Vec::new();
        for (unit, sid) in sids.into_iter().enumerate() {
            let dev = sim.add_device_on(&sid.to_string(), unit).unwrap();
            let d = accel::HostDevice {
                sid,
                name: sid.to_string(),
                host: host.clone(),
                dev,
                behind_bridge: false,
            };
            g.accel.add_device(&*g.vtd, d).unwrap();
            devs.push(dev);
        }
        assert_eq!(g.accel.nest_parents(), parents, "first unit {first_aw}-bit");
        assert_eq!(
            sim.live_objects().ioas,
            1,
            "the parents share one IOAS of guest RAM"
        );
        let table = g.new_table();
        let page = g.page();
        g.fill(page, 0x6b);
        g.map(table, IOVA, page, true);
        for sid in sids {
            g.set_first_stage(sid, DID, table);
        }
        g.translation(true);
        for dev in devs {
            assert_eq!(dma(&sim, dev, IOVA), Some(0x6b));
        }
    }
}
