//! The shadow of a guest's second-stage tables, driven through the real vtd unit (registers,
//! invalidation queue, wait descriptors) with its tables in fake guest RAM, over a recording
//! host address space that behaves as the kernel's (whole-mapping unmaps, EEXIST on overlap).

// The vtd unit tests' rig (registers, queue, wait status words); not every helper is used here.
#[allow(unused_imports)]
#[path = "../../vtd/tests/unit/support/mod.rs"]
mod unit_support;

use accel::BlockReason;
use accel::{RamRegion, Run, Shadow, ShadowState};
use host_iommu::{DmaMap, DmaPerm, HostIommuError, Op};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use test_fixtures::tables::{PageTable, SS_R, SS_W, Stage, Tables, ss_entry};
use test_fixtures::{DATA_BASE, Mem};
use unit_support::{Rig, STATUS, context_cache, iotlb, pasid_cache, wait};
use vm_memory::GuestMemoryMmap;

/// Where the "VMM" has guest RAM mapped.
const HVA: u64 = 0x7f00_0000_0000;
const RAM: u64 = test_fixtures::RAM_SIZE;
/// The shadowed device.
const SID: SourceId = SourceId::new(0, 3, 0);
/// A GPA beyond guest RAM.
const OUTSIDE_RAM: u64 = 0x40_0000_0000;
const DID: u16 = 5;

/// One host call, with the first wait status word when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Map {
        iova: u64,
        hva: u64,
        len: u64,
        write: bool,
        status: u32,
    },
    Unmap {
        iova: u64,
        len: u64,
        status: u32,
    },
}

/// A host IO address space that records calls and keeps the kernel's rules.
#[derive(Debug)]
struct Recording {
    ram: Arc<GuestMemoryMmap<()>>,
    calls: Mutex<Vec<Call>>,
    mapped: Mutex<BTreeMap<u64, (u64, u64, bool)>>,
    fail_next_map: AtomicBool,
}

impl Recording {
    fn new(ram: Arc<GuestMemoryMmap<()>>) -> Arc<Self> {
        Arc::new(Self {
            ram,
            calls: Mutex::new(Vec::new()),
            mapped: Mutex::new(BTreeMap::new()),
            fail_next_map: AtomicBool::new(false),
        })
    }
    fn status(&self) -> u32 {
        let mut b = [0u8; 4];
        self.ram.read_at(STATUS, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
    /// What the host maps now: (iova, len, hva, write).
    fn mapped(&self) -> Vec<(u64, u64, u64, bool)> {
        self.mapped
            .lock()
            .unwrap()
            .iter()
            .map(|(&i, &(l, h, w))| (i, l, h, w))
            .collect()
    }
}

use vtd::GuestRam;
use vtd_spec::SourceId;

impl DmaMap for Recording {
    fn map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> host_iommu::Result<()> {
        assert!(
            hva >= HVA && hva + len <= HVA + RAM,
            "a mapping outside guest RAM: {hva:#x}+{len:#x}"
        );
        assert!(perm.read);
        if self.fail_next_map.swap(false, Ordering::SeqCst) {
            return Err(HostIommuError::kernel(Op::IoasMap, libc::ENOMEM));
        }
        let mut m = self.mapped.lock().unwrap();
        if m.iter()
            .any(|(&i, &(l, _, _))| i < iova + len && iova < i + l)
        {
            return Err(HostIommuError::kernel(Op::IoasMap, libc::EEXIST));
        }
        m.insert(iova, (len, hva, perm.write));
        self.calls.lock().unwrap().push(Call::Map {
            iova,
            hva,
            len,
            write: perm.write,
            status: self.status(),
        });
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> host_iommu::Result<u64> {
        let mut m = self.mapped.lock().unwrap();
        // Like VFIO type1 v2 and iommufd: only whole mappings are unmapped.
        let inside: Vec<u64> = m
            .iter()
            .filter(|&(&i, &(l, _, _))| i < iova + len && iova < i + l)
            .map(|(&i, _)| i)
            .collect();
        if inside.iter().any(|i| *i < iova || i + m[i].0 > iova + len) {
            return Err(HostIommuError::kernel(Op::IoasUnmap, libc::EINVAL));
        }
        if inside.is_empty() {
            return Err(HostIommuError::kernel(Op::IoasUnmap, libc::ENOENT));
        }
        let done = inside.iter().map(|i| m.remove(i).unwrap().0).sum();
        self.calls.lock().unwrap().push(Call::Unmap {
            iova,
            len,
            status: self.status(),
        });
        Ok(done)
    }
}

struct World {
    mem: &'static Mem,
    rig: Rig,
    shadow: Arc<Shadow>,
    host: Arc<Recording>,
    pt: PageTable,
    next_wait: u32,
}

impl World {
    /// A unit with `options`, the device at `SID` shadowed from the start (translation off).
    fn new(options: &str) -> Self {
        let mem: &'static Mem = Box::leak(Box::new(Mem::new()));
        let mut rig = Rig::with_ram(options, mem.ram.clone());
        // Scalable mode takes 256-bit descriptors only.
        rig.enable_qi(options.contains("x-scalable-mode=on"), 0);
        let shadow = Arc::new(Shadow::new(vec![RamRegion {
            gpa: 0,
            hva: HVA,
            len: RAM,
            writable: true,
        }]));
        rig.vtd.add_observer(shadow.clone());
        let host = Recording::new(mem.ram.clone());
        shadow.add_device(&*rig.vtd, SID, "dev", host.clone());
        let pt = PageTable::new(mem, 4, Stage::Second);
        Self {
            mem,
            rig,
            shadow,
            host,
            pt,
            next_wait: 1,
        }
    }

    /// Submits `descs` followed by a wait that writes the next value at STATUS; checks it
    /// completed.
    fn submit(&mut self, descs: &[[u64; 4]]) {
        let mut all = descs.to_vec();
        all.push(wait(0, self.next_wait));
        self.rig.submit(&all);
        assert_eq!(self.rig.status(0), self.next_wait, "wait completed");
        self.next_wait += 1;
    }

    fn status(&self) -> u32 {
        self.rig.status(0)
    }

    /// Legacy tables: the device's context entry on `self.pt`, translation on.
    fn legacy(&mut self) -> Tables<'static> {
        let t = Tables::legacy(self.mem);
        t.legacy_translated(SID, &self.pt, DID);
        self.rig.enable_translation(t.root);
        t
    }
}

fn page_iotlb(addr: u64, am: u64) -> [u64; 4] {
    iotlb(3, DID, addr | am)
}

fn hva(gpa: u64) -> u64 {
    HVA + gpa
}

#[test]
fn translation_off_maps_all_ram_and_a_domain_replaces_it() {
    let mut w = World::new("caching-mode=on");
    assert_eq!(w.shadow.state(SID), Some(ShadowState::Identity));
    assert_eq!(
        w.host.take(),
        vec![Call::Map {
            iova: 0,
            hva: HVA,
            len: RAM,
            write: true,
            status: 0
        }]
    );
    // Two pages already mapped in the tables when translation is enabled: replayed.
    w.pt.map4k(w.mem, 0x4000, DATA_BASE);
    w.pt.map4k(w.mem, 0x5000, DATA_BASE + 0x1000);
    w.legacy();
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::SecondStage { did: DID })
    );
    assert_eq!(
        w.host.take(),
        vec![
            Call::Unmap {
                iova: 0,
                len: RAM,
                status: 0
            },
            Call::Map {
                iova: 0x4000,
                hva: hva(DATA_BASE),
                len: 0x2000,
                write: true,
                status: 0
            },
        ],
        "all RAM unmapped, the domain replayed as one coalesced run"
    );
    assert_eq!(w.shadow.counters().domain_switches, 1);
}

#[test]
fn page_invalidations_map_coalesced_runs_and_unmap_before_the_wait_completes() {
    let mut w = World::new("caching-mode=on");
    w.legacy();
    w.host.take();
    for i in 0..3 {
        w.pt.map4k(w.mem, 0x10000 + i * 0x1000, DATA_BASE + i * 0x1000);
    }
    // Linux with caching mode: a page-selective IOTLB invalidation after the map (AM=2).
    w.submit(&[page_iotlb(0x10000, 2)]);
    assert_eq!(
        w.host.take(),
        vec![Call::Map {
            iova: 0x10000,
            hva: hva(DATA_BASE),
            len: 0x3000,
            write: true,
            status: 0
        }]
    );
    // Unmap the middle page: the host mapping goes whole, its unchanged parts come back, all
    // before the wait's status word is written.
    let before = w.status();
    let leaf = w.pt.entry_addr(w.mem, 0x11000, 1);
    w.mem.w64(leaf, 0);
    w.submit(&[page_iotlb(0x11000, 0)]);
    let calls = w.host.take();
    assert_eq!(
        calls,
        vec![
            Call::Unmap {
                iova: 0x10000,
                len: 0x3000,
                status: before
            },
            Call::Map {
                iova: 0x10000,
                hva: hva(DATA_BASE),
                len: 0x1000,
                write: true,
                status: before
            },
            Call::Map {
                iova: 0x12000,
                hva: hva(DATA_BASE + 0x2000),
                len: 0x1000,
                write: true,
                status: before
            },
        ]
    );
    assert_eq!(w.shadow.counters().remaps, 2);
    assert_eq!(
        w.host.mapped(),
        vec![
            (0x10000, 0x1000, hva(DATA_BASE), true),
            (0x12000, 0x1000, hva(DATA_BASE + 0x2000), true)
        ]
    );
    // An invalidation of a range whose tables did not change costs no host call.
    w.submit(&[page_iotlb(0x10000, 4)]);
    assert_eq!(w.host.take(), vec![]);
}

#[test]
fn domain_and_global_invalidations_follow_permission_and_target_changes() {
    let mut w = World::new("caching-mode=on");
    w.legacy();
    w.pt.map4k(w.mem, 0x20000, DATA_BASE);
    w.submit(&[page_iotlb(0x20000, 0)]);
    w.host.take();
    // The guest makes the page read-only and points it elsewhere; a domain-selective flush.
    let leaf = w.pt.entry_addr(w.mem, 0x20000, 1);
    w.mem.w64(leaf, (DATA_BASE + 0x5000) | SS_R);
    w.submit(&[iotlb(2, DID, 0)]);
    assert_eq!(
        w.host.mapped(),
        vec![(0x20000, 0x1000, hva(DATA_BASE + 0x5000), false)]
    );
    // A flush of another domain changes nothing.
    w.mem.w64(leaf, (DATA_BASE + 0x6000) | SS_R | SS_W);
    w.submit(&[iotlb(2, DID + 1, 0)]);
    assert_eq!(
        w.host.mapped(),
        vec![(0x20000, 0x1000, hva(DATA_BASE + 0x5000), false)]
    );
    // A global one does.
    w.submit(&[iotlb(1, 0, 0)]);
    assert_eq!(
        w.host.mapped(),
        vec![(0x20000, 0x1000, hva(DATA_BASE + 0x6000), true)]
    );
    // A 2 MiB superpage is mapped as one run.
    w.pt.map(w.mem, 0x40_0000, DATA_BASE + 0x20_0000, 2, SS_R | SS_W);
    w.submit(&[page_iotlb(0x40_0000, 9)]);
    assert!(
        w.host
            .mapped()
            .contains(&(0x40_0000, 0x20_0000, hva(DATA_BASE + 0x20_0000), true))
    );
}

#[test]
fn a_domain_switch_unmaps_everything_and_replays_the_new_tables() {
    let mut w = World::new("caching-mode=on");
    let t = w.legacy();
    w.pt.map4k(w.mem, 0x30000, DATA_BASE);
    w.submit(&[page_iotlb(0x30000, 0)]);
    w.host.take();
    // The guest moves the device to another domain with its own tables.
    let other = PageTable::new(w.mem, 4, Stage::Second);
    other.map4k(w.mem, 0x90000, DATA_BASE + 0x3000);
    t.legacy_translated(SID, &other, DID + 1);
    let before = w.status();
    w.submit(&[context_cache(3, DID, SID.0, 0)]);
    assert_eq!(
        w.host.take(),
        vec![
            Call::Unmap {
                iova: 0x30000,
                len: 0x1000,
                status: before
            },
            Call::Map {
                iova: 0x90000,
                hva: hva(DATA_BASE + 0x3000),
                len: 0x1000,
                write: true,
                status: before
            },
        ]
    );
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::SecondStage { did: DID + 1 })
    );
    // Pass-through: all RAM.
    t.legacy_pt(SID, DID + 2);
    w.submit(&[context_cache(1, 0, 0, 0)]);
    assert_eq!(w.shadow.state(SID), Some(ShadowState::Identity));
    assert_eq!(w.host.mapped(), vec![(0, RAM, HVA, true)]);
    // A context entry cleared: nothing mapped.
    w.mem.w64(t.context_addr(SID), 0);
    w.submit(&[context_cache(1, 0, 0, 0)]);
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::Blocked(BlockReason::NoEntry))
    );
    assert_eq!(w.host.mapped(), vec![]);
}

#[test]
fn a_failed_map_blocks_the_device_until_the_next_replay() {
    let mut w = World::new("caching-mode=on");
    let t = w.legacy();
    w.pt.map4k(w.mem, 0x50000, DATA_BASE);
    w.submit(&[page_iotlb(0x50000, 0)]);
    w.pt.map4k(w.mem, 0x60000, DATA_BASE + 0x1000);
    w.host.fail_next_map.store(true, Ordering::SeqCst);
    w.submit(&[page_iotlb(0x60000, 0)]);
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::Blocked(BlockReason::HostFailure))
    );
    assert_eq!(w.host.mapped(), vec![], "blocked: nothing stays mapped");
    assert_eq!(w.shadow.counters().failures, 1);
    // Further invalidations leave it blocked (and are not failures again).
    w.submit(&[page_iotlb(0x50000, 0)]);
    assert_eq!(w.host.mapped(), vec![]);
    assert_eq!(w.shadow.counters().failures, 1);
    // The guest's next context invalidation replays the domain.
    t.legacy_translated(SID, &w.pt, DID);
    w.submit(&[context_cache(1, 0, 0, 0)]);
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::SecondStage { did: DID })
    );
    assert_eq!(
        w.host.mapped(),
        vec![
            (0x50000, 0x1000, hva(DATA_BASE), true),
            (0x60000, 0x1000, hva(DATA_BASE + 0x1000), true)
        ]
    );
}

#[test]
fn garbage_tables_map_nothing_outside_guest_ram() {
    let mut w = World::new("caching-mode=on");
    w.legacy();
    w.host.take();
    // A leaf beyond RAM, a leaf with a reserved bit (address bit 50 > HAW), one straddling the end of RAM (2 MiB).
    w.pt.map4k(w.mem, 0x1000, OUTSIDE_RAM);
    let bad = w.pt.entry_addr(w.mem, 0x2000, 1);
    w.mem.w64(bad, DATA_BASE | SS_R | SS_W | (1 << 50));
    w.pt.map(w.mem, 0x20_0000, RAM - 0x10_0000, 2, SS_R | SS_W);
    w.pt.map4k(w.mem, 0x3000, DATA_BASE);
    w.submit(&[iotlb(1, 0, 0)]);
    // The Recording host asserts every mapping lies inside guest RAM.
    assert_eq!(
        w.host.mapped(),
        vec![(0x3000, 0x1000, hva(DATA_BASE), true)]
    );
    let c = w.shadow.counters();
    assert!(c.outside_ram >= 1, "{c:?}");
    assert!(c.bad_entries >= 1, "{c:?}");
    // Tables aliasing themselves (every PD entry → the same full page table): the walk stops
    // at its budget and the device is blocked, rather than mapping billions of pages.
    let pd = PageTable::new(w.mem, 2, Stage::Second);
    for i in 0..512 {
        pd.map4k(w.mem, i * 0x1000, DATA_BASE);
    }
    let leaf_table = w.mem.r64(pd.root) & !0xfff;
    for i in 0..512u64 {
        w.mem.w64(pd.root + 8 * i, leaf_table | SS_R | SS_W);
    }
    let pdpt = w.pt.entry_addr(w.mem, 1 << 39, 3);
    let pdpt_table = pdpt & !0xfff;
    for i in 0..512u64 {
        w.mem.w64(pdpt_table + 8 * i, pd.root | SS_R | SS_W);
    }
    w.submit(&[iotlb(1, 0, 0)]);
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::Blocked(BlockReason::HostFailure))
    );
    assert_eq!(w.host.mapped(), vec![]);
}

#[test]
fn scalable_mode_second_stage_pasid_entries_are_shadowed() {
    let mut w = World::new("x-scalable-mode=on,caching-mode=on");
    let t = Tables::scalable(w.mem);
    t.sm_device(SID, false);
    w.pt.map4k(w.mem, 0x7000, DATA_BASE);
    t.pasid_entry(SID, 0, ss_entry(&w.pt, DID));
    w.rig.enable_translation(t.rtaddr().into_bits());
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::SecondStage { did: DID })
    );
    assert_eq!(
        w.host.mapped(),
        vec![(0x7000, 0x1000, hva(DATA_BASE), true)]
    );
    w.pt.map4k(w.mem, 0x8000, DATA_BASE + 0x1000);
    w.submit(&[page_iotlb(0x8000, 0)]);
    assert_eq!(w.host.mapped().len(), 2);
    // The PASID entry is cleared (PASID-cache invalidation): blocked, unmapped.
    let a = t.pasid_entry_addr(SID, 0);
    w.mem.w64(a, 0);
    w.submit(&[pasid_cache(1, DID, 0)]);
    assert_eq!(
        w.shadow.state(SID),
        Some(ShadowState::Blocked(BlockReason::NoEntry))
    );
    assert_eq!(w.host.mapped(), vec![]);
    // Removing the device unmaps nothing more and forgets it.
    assert!(w.shadow.remove_device(SID));
    assert_eq!(w.shadow.state(SID), None);
}

#[test]
fn removing_a_device_unmaps_what_it_had() {
    let w = World::new("caching-mode=on");
    assert_eq!(w.host.mapped(), vec![(0, RAM, HVA, true)]);
    let runs: Vec<Run> = w.shadow.mappings(SID);
    assert_eq!(runs.len(), 1);
    assert!(w.shadow.remove_device(SID));
    assert_eq!(w.host.mapped(), vec![]);
}

#[test]
fn many_separate_pages_cost_one_map_each_and_an_unchanged_flush_costs_nothing() {
    let mut w = World::new("caching-mode=on");
    w.legacy();
    w.host.take();
    // Every other page of 8 MiB of IOVA: 1024 runs that cannot be coalesced.
    for i in 0..1024u64 {
        w.pt.map4k(w.mem, 0x100_0000 + 2 * i * 0x1000, DATA_BASE + i * 0x1000);
    }
    w.submit(&[iotlb(1, 0, 0)]);
    let calls = w.host.take();
    assert_eq!(calls.len(), 1024);
    assert!(
        calls
            .iter()
            .all(|c| matches!(c, Call::Map { len: 0x1000, .. }))
    );
    // The same flush again (and a page flush inside): nothing changed, no host call.
    w.submit(&[iotlb(1, 0, 0), page_iotlb(0x100_0000, 4)]);
    assert_eq!(w.host.take(), vec![]);
    // Filling the holes coalesces each with its neighbours only where host addresses follow.
    for i in 0..1024u64 {
        w.pt.map4k(
            w.mem,
            0x100_1000 + 2 * i * 0x1000,
            DATA_BASE + 0x40_0000 + i * 0x1000,
        );
    }
    w.submit(&[iotlb(2, DID, 0)]);
    assert_eq!(w.host.take().len(), 1024, "one map per hole, no unmap");
    assert_eq!(w.host.mapped().len(), 2048);
}

#[test]
fn neighbouring_host_mappings_that_go_are_unmapped_in_one_call() {
    let mut w = World::new("caching-mode=on");
    w.legacy();
    w.host.take();
    // A scattered buffer as Linux maps a scatterlist: 16 consecutive IOVA pages whose guest
    // pages do not follow each other, so 16 host mappings.
    for i in 0..16u64 {
        w.pt.map4k(w.mem, 0x40_0000 + i * 0x1000, DATA_BASE + 2 * i * 0x1000);
    }
    w.submit(&[page_iotlb(0x40_0000, 4)]);
    assert_eq!(w.host.take().len(), 16, "one map per run");
    // The guest unmaps all of it (one invalidation of the range): one host unmap call.
    for i in 0..16u64 {
        let leaf = w.pt.entry_addr(w.mem, 0x40_0000 + i * 0x1000, 1);
        w.mem.w64(leaf, 0);
    }
    let before = w.status();
    let c0 = w.shadow.counters();
    w.submit(&[page_iotlb(0x40_0000, 4)]);
    assert_eq!(
        w.host.take(),
        vec![Call::Unmap {
            iova: 0x40_0000,
            len: 0x10000,
            status: before
        }]
    );
    assert_eq!(w.host.mapped(), vec![]);
    let c = w.shadow.counters();
    assert_eq!(
        (
            c.unmaps - c0.unmaps,
            c.unmapped_bytes - c0.unmapped_bytes,
            c.remaps - c0.remaps
        ),
        (1, 0x10000, 0)
    );
}

#[test]
fn a_host_mapping_that_stays_splits_the_unmap_batch() {
    let mut w = World::new("caching-mode=on");
    w.legacy();
    w.host.take();
    for i in 0..5u64 {
        w.pt.map4k(w.mem, 0x40_0000 + i * 0x1000, DATA_BASE + 2 * i * 0x1000);
    }
    w.submit(&[page_iotlb(0x40_0000, 3)]);
    assert_eq!(w.host.take().len(), 5);
    // Pages 0, 1, 3 and 4 go, page 2 stays: two host unmap calls around it, page 2 untouched.
    for i in [0u64, 1, 3, 4] {
        let leaf = w.pt.entry_addr(w.mem, 0x40_0000 + i * 0x1000, 1);
        w.mem.w64(leaf, 0);
    }
    let before = w.status();
    w.submit(&[page_iotlb(0x40_0000, 3)]);
    assert_eq!(
        w.host.take(),
        vec![
            Call::Unmap {
                iova: 0x40_0000,
                len: 0x2000,
                status: before
            },
            Call::Unmap {
                iova: 0x40_3000,
                len: 0x2000,
                status: before
            },
        ]
    );
    assert_eq!(
        w.host.mapped(),
        vec![(0x40_2000, 0x1000, hva(DATA_BASE + 0x4000), true)]
    );
}
