//! Accessed/dirty updates of the first-stage walk (and of the second stage with SSADE), with
//! regression tests for QEMU's bugs: D set on read-only leaves, and flags written separately.

use crate::support::*;
use std::sync::Mutex;
use vtd::Translator;
use vtd::request::{Access, DmaRequest};
use vtd::{GuestRam, MemoryError};
use vtd_spec::fault::FaultReason;

const IOVA: u64 = 0x7654_3000;
const GPA: u64 = DATA_BASE + 0x5000;
const DID: u16 = 3;

/// Addresses of the 4 entries (PML4E..PTE) used for IOVA.
fn path(mem: &Mem, pt: &PageTable) -> Vec<u64> {
    (1..=4).rev().map(|l| pt.entry_addr(mem, IOVA, l)).collect()
}

fn fs_setup(mem: &Mem) -> (Tables<'_>, PageTable) {
    let t = Tables::scalable(mem);
    t.sm_device(SID, true);
    let pt = PageTable::new(mem, 4, Stage::First);
    pt.map4k(mem, IOVA, GPA);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    (t, pt)
}

fn req(access: Access) -> DmaRequest {
    DmaRequest {
        sid: SID,
        pasid: None,
        iova: IOVA,
        access,
    }
}

#[test]
fn read_sets_a_on_every_level_and_no_d() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    let tr = Translator::new(cap(), ecap(), Default::default());
    let out = tr
        .translate(&*mem.ram, &t.state(), &req(Access::READ))
        .unwrap();
    for a in path(&mem, &pt) {
        assert_ne!(mem.r64(a) & FS_A, 0, "A at {a:#x}");
        assert_eq!(mem.r64(a) & FS_D, 0, "D at {a:#x}");
        assert_eq!(mem.r64(a) & FS_EA, 0, "EA without EAFE");
    }
    // A translation for a read that has not set D does not hand out write permission.
    assert!(!out.perms.write);
}

#[test]
fn write_sets_d_on_the_leaf_only() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    let tr = Translator::new(cap(), ecap(), Default::default());
    let out = tr
        .translate(&*mem.ram, &t.state(), &req(Access::WRITE))
        .unwrap();
    assert!(out.perms.write);
    let p = path(&mem, &pt);
    for &a in &p[..3] {
        assert_eq!(mem.r64(a) & (FS_A | FS_D), FS_A, "non-leaf {a:#x}");
    }
    assert_eq!(mem.r64(p[3]) & (FS_A | FS_D), FS_A | FS_D);
}

#[test]
fn a_read_cached_entry_is_walked_again_for_the_first_write() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    let unit = Unit::new(&mem, t.state());
    unit.req(SID, None, IOVA, Access::READ).unwrap();
    let leaf = path(&mem, &pt)[3];
    assert_eq!(mem.r64(leaf) & FS_D, 0);
    unit.req(SID, None, IOVA, Access::WRITE).unwrap();
    assert_ne!(
        mem.r64(leaf) & FS_D,
        0,
        "the write set D although the IOTLB had the page"
    );
    assert_eq!(unit.counters.snapshot().walks, 2);
    // Now D is set and cached: further writes are hits.
    unit.req(SID, None, IOVA, Access::WRITE).unwrap();
    unit.req(SID, None, IOVA, Access::READ).unwrap();
    let c = unit.counters.snapshot();
    assert_eq!((c.walks, c.iotlb_hits), (2, 2));
}

/// QEMU bug "Only set dirty bit when PTE exposes write permission": a supervisor write through
/// a read-only leaf with WPE=0 is allowed, but must not set D.
#[test]
fn d_is_never_set_on_a_read_only_leaf() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    pt.map(&mem, IOVA, GPA, 1, FS_P | FS_US);
    let mut pe = fs_entry(&pt, DID);
    pe.qw2 = pe.qw2.with_sre(true);
    t.pasid_entry(SID, 9, pe);
    let tr = Translator::new(cap(), ecap(), Default::default());
    let mut r = req(Access::WRITE);
    r.pasid = Some(9);
    r.access.privileged = true;
    let out = tr.translate(&*mem.ram, &t.state(), &r).unwrap();
    assert!(out.perms.write, "WPE=0: supervisor writes ignore R/W");
    let leaf = path(&mem, &pt)[3];
    assert_eq!(mem.r64(leaf) & (FS_A | FS_D), FS_A);
    // The faulting user write sets no flag on the leaf either.
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    pt.map(&mem, IOVA, GPA, 1, FS_P | FS_US);
    let err = tr
        .translate(&*mem.ram, &t.state(), &req(Access::WRITE))
        .unwrap_err();
    assert_eq!(err.reason, FaultReason::SmWriteDenied);
    assert_eq!(mem.r64(path(&mem, &pt)[3]) & (FS_A | FS_D), 0);
}

/// Guest memory that records every compare-exchange.
struct Recording<'a> {
    mem: &'a vm_memory::GuestMemoryMmap<()>,
    log: Mutex<Vec<(u64, u64, u64)>>,
}

impl GuestRam for Recording<'_> {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem.read_at(gpa, buf)
    }
    fn write_at(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.mem.write_at(gpa, buf)
    }
    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        self.log.lock().unwrap().push((gpa, current, new));
        self.mem.compare_exchange_u64(gpa, current, new)
    }
}

/// QEMU bug "Always write all the flags passed to vtd_set_flag_in_pte": A and D (and EA) go
/// into the leaf in one atomic update; entries whose flags are already set are not written.
#[test]
fn a_d_and_ea_in_one_atomic_update() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    let mut pe = fs_entry(&pt, DID);
    pe.qw2 = pe.qw2.with_eafe(true);
    t.pasid_entry(SID, 0, pe);
    let rec = Recording {
        mem: &mem.ram,
        log: Mutex::new(Vec::new()),
    };
    let tr = Translator::new(cap(), ecap(), Default::default());
    tr.translate(&rec, &t.state(), &req(Access::WRITE)).unwrap();
    let log = rec.log.lock().unwrap().clone();
    let p = path(&mem, &pt);
    assert_eq!(log.len(), 4, "{log:x?}");
    for (i, &(gpa, old, new)) in log.iter().enumerate() {
        assert_eq!(gpa, p[i]);
        let want = if i == 3 {
            FS_A | FS_D | FS_EA
        } else {
            FS_A | FS_EA
        };
        assert_eq!(new, old | want);
    }
    // Everything is set now: a second walk (after a flush) writes nothing.
    tr.flush_all();
    rec.log.lock().unwrap().clear();
    tr.translate(&rec, &t.state(), &req(Access::WRITE)).unwrap();
    assert!(rec.log.lock().unwrap().is_empty());
}

/// Guest memory whose first compare-exchange loses a race against the guest clearing the leaf's
/// R/W bit: the walk must restart and see the new value.
struct RaceOnce<'a> {
    mem: &'a vm_memory::GuestMemoryMmap<()>,
    leaf: u64,
    done: Mutex<bool>,
}

impl GuestRam for RaceOnce<'_> {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem.read_at(gpa, buf)
    }
    fn write_at(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.mem.write_at(gpa, buf)
    }
    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        let mut done = self.done.lock().unwrap();
        if gpa == self.leaf && !*done {
            *done = true;
            let v = self.mem.read_u64(gpa)? & !FS_RW;
            self.mem.write_at(gpa, &v.to_le_bytes())?;
        }
        self.mem.compare_exchange_u64(gpa, current, new)
    }
}

#[test]
fn a_racing_guest_change_restarts_the_walk() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    let leaf = path(&mem, &pt)[3];
    let ram = RaceOnce {
        mem: &mem.ram,
        leaf,
        done: Mutex::new(false),
    };
    let tr = Translator::new(cap(), ecap(), Default::default());
    let err = tr
        .translate(&ram, &t.state(), &req(Access::WRITE))
        .unwrap_err();
    assert_eq!(err.reason, FaultReason::SmWriteDenied, "the new R/W=0 wins");
    assert_eq!(mem.r64(leaf) & FS_D, 0);
}

#[test]
fn second_stage_a_d_with_ssade() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    let mut pe = ss_entry(&pt, DID);
    pe.qw0 = pe.qw0.with_ssade(true);
    t.pasid_entry(SID, 0, pe);
    let unit = Unit::new(&mem, t.state());
    unit.req(SID, None, IOVA, Access::READ).unwrap();
    let p = path(&mem, &pt);
    for &a in &p {
        assert_eq!(mem.r64(a) & (SS_A | SS_D), SS_A);
    }
    unit.req(SID, None, IOVA, Access::WRITE).unwrap();
    assert_eq!(mem.r64(p[3]) & (SS_A | SS_D), SS_A | SS_D);
    assert_eq!(mem.r64(p[2]) & SS_D, 0);
    // Without SSADE nothing is written.
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    t.sm_device(SID, false);
    let pt = PageTable::new(&mem, 4, Stage::Second);
    pt.map4k(&mem, IOVA, GPA);
    t.pasid_entry(SID, 0, ss_entry(&pt, DID));
    let unit = Unit::new(&mem, t.state());
    unit.req(SID, None, IOVA, Access::WRITE).unwrap();
    assert_eq!(mem.r64(path(&mem, &pt)[3]) & (SS_A | SS_D), 0);
}

#[test]
fn user_supervisor_execute_and_wpe_rules() {
    let mem = Mem::new();
    let (t, pt) = fs_setup(&mem);
    // Supervisor-only page (U/S=0), NXE, XD clear.
    pt.map(&mem, IOVA, GPA, 1, FS_P | FS_RW);
    let mut pe = fs_entry(&pt, DID);
    pe.qw2 = pe
        .qw2
        .with_sre(true)
        .with_ere(true)
        .with_nxe(true)
        .with_smep(true);
    t.pasid_entry(SID, 4, pe);
    let unit = Unit::new(&mem, t.state());
    let sup = Access {
        privileged: true,
        ..Access::READ_WRITE
    };
    let sup_exec = Access {
        execute: true,
        privileged: true,
        ..Access::READ
    };
    assert!(unit.req(SID, Some(4), IOVA, sup).is_ok());
    assert!(
        unit.req(SID, Some(4), IOVA, sup_exec).is_ok(),
        "SMEP only blocks user pages"
    );
    assert_eq!(
        unit.req(SID, Some(4), IOVA, Access::READ)
            .unwrap_err()
            .reason,
        FaultReason::SmUserDenied
    );
    // User page: supervisor execute blocked by SMEP; user execute fine.
    pt.map4k(&mem, IOVA + 0x1000, GPA);
    let user_exec = Access {
        execute: true,
        ..Access::READ
    };
    assert_eq!(
        unit.req(SID, Some(4), IOVA + 0x1000, sup_exec)
            .unwrap_err()
            .reason,
        FaultReason::SmExecuteDenied
    );
    assert!(unit.req(SID, Some(4), IOVA + 0x1000, user_exec).is_ok());
}
