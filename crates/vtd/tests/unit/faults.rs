//! Fault reporting through the unit with the real translator: recording, the fault event and its
//! mask protocol, overflow, FRI wrap, PPF recomputation, FPD suppression, PASID fields.

use crate::support::*;
use crate::translate_support::{DATA_BASE, Mem, PageTable, SID, Stage, Tables, fs_entry};
use vtd::request::{Access, DmaRequest, Remapper};
use vtd_spec::context::{ScalableContextEntry, ScalableContextHi, ScalableContextLo};
use vtd_spec::fault::FaultReason;
use vtd_spec::regs::{FrcdHi, Fsts, offset};

const FEADDR: u32 = 0xfee0_1000;
const FEUADDR: u32 = 0x3;
const FEDATA: u32 = 0x4029;
const MSI: (u64, u32) = (0x3_fee0_1000, 0x4029);
/// Mapped IOVA (one page).
const MAPPED: u64 = 0x1000;

/// A first-stage unit with device `SID` attached (PASID 0, DID 2) and one page mapped.
fn rig(mem: &Mem) -> Rig {
    let rig = Rig::with_ram("x-scalable-mode=on,x-flts=on", mem.ram.clone());
    let tables = Tables::scalable(mem);
    tables.sm_device(SID, false);
    let pt = PageTable::new(mem, 4, Stage::First);
    pt.map4k(mem, MAPPED, DATA_BASE);
    tables.pasid_entry(SID, 0, fs_entry(&pt, 2));
    rig.enable_translation(tables.rtaddr().into_bits());
    rig.w32(offset::FEDATA, FEDATA);
    rig.w32(offset::FEADDR, FEADDR);
    rig.w32(offset::FEUADDR, FEUADDR);
    rig
}

fn read(iova: u64) -> DmaRequest {
    DmaRequest {
        sid: SID,
        pasid: None,
        iova,
        access: Access::READ,
    }
}

fn record(rig: &Rig, i: usize) -> (u64, FrcdHi) {
    let at = 0x220 + 16 * i as u64;
    (rig.r64(at), FrcdHi::from_bits(rig.r64(at + 8)))
}

fn fsts(rig: &Rig) -> Fsts {
    Fsts::from_bits(rig.r32(offset::FSTS))
}

/// Linux's `dmar_fault()`: walk from FRI, clear each F with a dword write, then W1C FSTS.
fn service(rig: &Rig) -> usize {
    let mut i = fsts(rig).fri() as usize;
    let mut n = 0;
    while rig.r32(0x220 + 16 * i as u64 + 12) >> 31 == 1 {
        rig.w32(0x220 + 16 * i as u64 + 12, 0x8000_0000);
        i = (i + 1) % 8;
        n += 1;
    }
    rig.w32(offset::FSTS, 0x7d);
    n
}

#[test]
fn a_fault_is_recorded_with_its_fields_and_signalled() {
    let mem = Mem::new();
    let rig = rig(&mem);
    rig.w32(offset::FECTL, 0);
    assert_eq!(
        rig.vtd.remap(&read(MAPPED + 8)).unwrap().gpa(MAPPED + 8),
        DATA_BASE + 8
    );
    let fault = rig.vtd.remap(&read(0x7_5678)).unwrap_err();
    assert_eq!(fault.reason, FaultReason::SmFirstStageNotPresent);
    let (lo, hi) = record(&rig, 0);
    assert_eq!(lo, 0x7_5000, "FI is the page address");
    assert_eq!(hi.sid(), SID.0);
    assert!(hi.f() && hi.t1() && !hi.pp(), "read, no PASID");
    assert_eq!(hi.fr(), 0x71);
    assert!(fsts(&rig).ppf());
    assert_eq!(fsts(&rig).fri(), 0);
    assert_eq!(rig.irqs.take(), vec![MSI]);
    let c = rig.vtd.counters();
    assert_eq!((c.faults, c.faults_recorded, c.fault_events), (1, 1, 1));
}

#[test]
fn writes_and_pasid_requests_fill_t_pp_and_pv() {
    let mem = Mem::new();
    let rig = rig(&mem);
    let req = DmaRequest {
        pasid: Some(0x1234),
        access: Access::WRITE,
        ..read(0x9000)
    };
    let fault = rig.vtd.remap(&req).unwrap_err();
    let (_, hi) = record(&rig, 0);
    assert!(!hi.t1(), "T1=0: write");
    assert!(hi.pp());
    assert_eq!(hi.pv(), 0x1234);
    assert_eq!(hi.fr(), fault.reason.code());
}

#[test]
fn masked_events_are_held_pending_until_unmasked() {
    let mem = Mem::new();
    let rig = rig(&mem);
    rig.vtd.remap(&read(0x9000)).unwrap_err();
    assert!(rig.irqs.take().is_empty(), "FECTL.IM is set at reset");
    assert_eq!(rig.r32(offset::FECTL), 0xc000_0000);
    rig.w32(offset::FECTL, 0);
    assert_eq!(rig.irqs.take(), vec![MSI]);
    assert_eq!(rig.r32(offset::FECTL), 0);
    // Serviced while masked: IP clears and unmasking sends nothing.
    service(&rig);
    rig.w32(offset::FECTL, 0x8000_0000);
    rig.vtd.remap(&read(0xa000)).unwrap_err();
    assert_eq!(rig.r32(offset::FECTL), 0xc000_0000);
    service(&rig);
    assert_eq!(rig.r32(offset::FECTL), 0x8000_0000);
    rig.w32(offset::FECTL, 0);
    assert!(rig.irqs.take().is_empty());
}

#[test]
fn overflow_sets_pfo_and_a_storm_stays_bounded() {
    let mem = Mem::new();
    let rig = rig(&mem);
    rig.w32(offset::FECTL, 0);
    for page in 0..10_000u64 {
        rig.vtd.remap(&read(0x10_0000 + page * 4096)).unwrap_err();
    }
    let f = fsts(&rig);
    assert!(f.ppf() && f.pfo());
    assert_eq!(rig.irqs.take(), vec![MSI], "one event for the whole storm");
    let c = rig.vtd.counters();
    assert_eq!((c.faults, c.faults_recorded), (10_000, 8));
    assert_eq!(record(&rig, 7).0, 0x10_7000);
    // Identical faults collapse into the pending record.
    assert_eq!(service(&rig), 8);
    assert_eq!(rig.r32(offset::FSTS) & 0xff, 0);
    for _ in 0..100 {
        rig.vtd.remap(&read(0x5000)).unwrap_err();
    }
    assert_eq!(rig.vtd.counters().faults_recorded, 9);
}

#[test]
fn fri_names_the_first_pending_record_and_wraps() {
    let mem = Mem::new();
    let rig = rig(&mem);
    for page in 0..5u64 {
        rig.vtd.remap(&read(0x10_0000 + page * 4096)).unwrap_err();
    }
    assert_eq!(service(&rig), 5);
    assert!(!fsts(&rig).ppf(), "PPF recomputed when every F is clear");
    for page in 0..5u64 {
        rig.vtd.remap(&read(0x20_0000 + page * 4096)).unwrap_err();
    }
    assert_eq!(fsts(&rig).fri(), 5);
    assert_eq!(record(&rig, 0).0, 0x20_3000, "wrapped to record 0");
    assert_eq!(record(&rig, 1).0, 0x20_4000);
    // Clearing some records keeps PPF; clearing the rest clears it.
    for i in [5, 6, 7] {
        rig.w32(0x220 + 16 * i + 12, 0x8000_0000);
    }
    assert!(fsts(&rig).ppf());
    rig.w64(0x220 + 8, 1 << 63);
    rig.w64(0x220 + 16 + 8, 1 << 63);
    assert!(!fsts(&rig).ppf());
}

#[test]
fn fault_processing_disable_suppresses_recording() {
    let mem = Mem::new();
    let rig = rig(&mem);
    let tables = Tables {
        mem: &mem,
        root: vtd::UnitView::state(&*rig.vtd).root.root_table(),
        scalable: true,
    };
    // A second device whose context entry has FPD set and a PASID directory with nothing in it.
    let other = vtd_spec::SourceId::new(0, 4, 0);
    let dir = mem.page();
    tables.sm_context(
        other,
        ScalableContextEntry {
            lo: ScalableContextLo::new()
                .with_present(true)
                .with_fpd(true)
                .with_pdts(2)
                .with_pasid_dir_ptr(dir >> 12),
            hi: ScalableContextHi::new(),
            upper: [0, 0],
        },
    );
    rig.w32(offset::FECTL, 0);
    let fault = rig
        .vtd
        .remap(&DmaRequest {
            sid: other,
            ..read(0x1000)
        })
        .unwrap_err();
    assert!(fault.fpd);
    assert_eq!(rig.r32(offset::FSTS), 0, "nothing recorded");
    assert!(rig.irqs.take().is_empty());
    let c = rig.vtd.counters();
    assert_eq!((c.faults, c.faults_recorded), (1, 0));
}

/// FPD is evaluated whatever P says (§9.3-§9.6 FPD): an entry cleared to just FPD — a legacy or
/// scalable context entry, a PASID-directory entry, a PASID entry (Linux's
/// `pasid_clear_entry_with_fpd()`) — still fails the request but records nothing, while the same
/// entry without FPD records the not-present fault.
#[test]
fn fpd_is_evaluated_whatever_present_says() {
    type Clear = fn(&Tables<'_>);
    let cases: [(&str, FaultReason, Clear); 4] = [
        ("legacy context", FaultReason::ContextNotPresent, |t| {
            let a = t.context_addr(SID);
            t.mem.w64(a, 0);
            t.mem.w64(a + 8, 0);
        }),
        ("scalable context", FaultReason::SmContextNotPresent, |t| {
            let a = t.context_addr(SID);
            for i in 0..4 {
                t.mem.w64(a + 8 * i, 0);
            }
        }),
        ("PASID directory", FaultReason::SmPasidDirNotPresent, |t| {
            t.mem.w64(t.pasid_dir(SID), 0);
        }),
        ("PASID entry", FaultReason::SmPasidEntryNotPresent, |t| {
            let a = t.pasid_entry_addr(SID, 0);
            for i in 0..8 {
                t.mem.w64(a + 8 * i, 0);
            }
        }),
    ];
    for (what, reason, clear) in cases {
        for fpd in [false, true] {
            let mem = Mem::new();
            let legacy = reason == FaultReason::ContextNotPresent;
            let (rig, tables) = if legacy {
                let rig = Rig::with_ram("", mem.ram.clone());
                let tables = Tables::legacy(&mem);
                let pt = PageTable::new(&mem, 4, Stage::Second);
                pt.map4k(&mem, MAPPED, DATA_BASE);
                tables.legacy_translated(SID, &pt, 2);
                rig.enable_translation(tables.rtaddr().into_bits());
                (rig, tables)
            } else {
                let rig = rig(&mem);
                let tables = Tables {
                    mem: &mem,
                    root: vtd::UnitView::state(&*rig.vtd).root.root_table(),
                    scalable: true,
                };
                (rig, tables)
            };
            clear(&tables);
            // FPD is bit 1 of the entry's first quadword in all four formats.
            let at = match reason {
                FaultReason::SmPasidDirNotPresent => tables.pasid_dir(SID),
                FaultReason::SmPasidEntryNotPresent => tables.pasid_entry_addr(SID, 0),
                _ => tables.context_addr(SID),
            };
            if fpd {
                mem.w64(at, 2);
            }
            rig.w32(offset::FECTL, 0);
            let fault = rig.vtd.remap(&read(MAPPED)).unwrap_err();
            assert_eq!(fault.reason, reason, "{what}");
            assert_eq!(fault.fpd, fpd, "{what}");
            let recorded = rig.vtd.counters().faults_recorded;
            if fpd {
                assert_eq!(rig.r32(offset::FSTS), 0, "{what}: nothing recorded");
                assert!(rig.irqs.take().is_empty(), "{what}: no fault event");
                assert_eq!(recorded, 0, "{what}");
            } else {
                assert!(fsts(&rig).ppf(), "{what}: recorded");
                assert_eq!(record(&rig, 0).1.fr(), reason.code(), "{what}");
                assert_eq!(recorded, 1, "{what}");
            }
        }
    }
}

/// The interrupt sink is called with no lock held: a sink that reads the fault registers (as a
/// handler would) from inside `deliver` must not deadlock.
#[test]
fn the_interrupt_sink_may_read_the_unit() {
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[derive(Default)]
    struct Handler {
        unit: OnceLock<Weak<vtd::Vtd>>,
        fsts: Mutex<Vec<u32>>,
    }
    impl vtd::FaultInterrupt for Handler {
        fn deliver(&self, _address: u64, _data: u32) {
            let unit = self.unit.get().and_then(Weak::upgrade).unwrap();
            let mut b = [0u8; 4];
            unit.mmio_read(offset::FSTS, &mut b);
            self.fsts.lock().unwrap().push(u32::from_le_bytes(b));
            unit.mmio_write(offset::FSTS, &0x7du32.to_le_bytes());
        }
    }

    let ram = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let handler = Arc::new(Handler::default());
    let config = vtd::Config::first_stage();
    let unit = Arc::new(vtd::Vtd::new(config, ram, handler.clone()));
    handler.unit.set(Arc::downgrade(&unit)).unwrap();
    unit.mmio_write(offset::RTADDR, &(0x1000u64 | 1 << 10).to_le_bytes());
    unit.mmio_write(offset::GCMD, &(1u32 << 30).to_le_bytes());
    unit.mmio_write(offset::GCMD, &(1u32 << 31).to_le_bytes());
    unit.mmio_write(offset::FECTL, &0u32.to_le_bytes());
    unit.remap(&read(0x1000)).unwrap_err();
    assert_eq!(
        handler.fsts.lock().unwrap().clone(),
        vec![0x2],
        "PPF, FRI 0"
    );
}
