//! Interrupt remapping (chapter 5) through the unit's registers and queue: IRTA and the
//! SIRTP / IRE / CFI commands, IRTE decode into the delivered message, every fault reason the
//! model can meet recorded with the interrupt index, FPD, source validation, compatibility
//! format, the table size bound, EIME, and the interrupt-entry cache following the guest's
//! IEC invalidations (and never serving an old entry after the wait completed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use crate::support::*;
use test_fixtures::interrupts::{irte, remappable, with_subhandle, write_irte};
use vtd::InterruptOutcome;
use vtd::request::Remapper;
use vtd_spec::SourceId;
use vtd_spec::fault::FaultReason;
use vtd_spec::interrupt::Irte;
use vtd_spec::regs::{FrcdHi, FrcdLo, Fsts, Gsts, offset};

/// Where the tests put the interrupt remapping table (up to 1 MiB, below `STATUS`).
const TABLE: u64 = 0x320_0000;
const GCMD_IRE: u32 = 1 << 25;
const GCMD_SIRTP: u32 = 1 << 24;
const GCMD_CFI: u32 = 1 << 23;
const DEVICE: SourceId = SourceId::new(0, 3, 0);
const FAULT_DATA: u32 = 0x99;
const IRTA_EIME: u64 = 1 << 11;
/// A compatibility-format MSI: APIC 1, vector 0x31.
const COMPAT: (u64, u32) = (0xfee0_1000, 0x31);

/// A unit with `options`, IRTA = TABLE | `irta_low` latched, remapping enabled, fault events
/// unmasked (data [`FAULT_DATA`]).
fn enabled(options: &str, irta_low: u64) -> Rig {
    let rig = Rig::new(options);
    rig.w32(offset::FEDATA, FAULT_DATA);
    rig.w32(offset::FECTL, 0);
    rig.w64(offset::IRTA, TABLE | irta_low);
    rig.command(GCMD_SIRTP);
    rig.command(GCMD_IRE);
    rig
}

/// xAPIC mode, 256 entries.
fn xapic() -> Rig {
    enabled("intremap=on", 7)
}

/// x2APIC mode (EIME), 256 entries.
fn x2apic() -> Rig {
    enabled("intremap=on,eim=on", IRTA_EIME | 7)
}

fn put(rig: &Rig, index: u64, entry: Irte) {
    write_irte(&rig.ram, TABLE, index, entry);
}

fn remap(rig: &Rig, sid: SourceId, (address, data): (u64, u32)) -> InterruptOutcome {
    rig.vtd.remap_interrupt(sid, address, data)
}

/// The vector of a delivered message, or `None` if blocked.
fn vector(rig: &Rig, index: u16) -> Option<u8> {
    match remap(rig, DEVICE, remappable(index)) {
        InterruptOutcome::Deliver { data, .. } => Some(data as u8),
        InterruptOutcome::Blocked => None,
    }
}

/// The first fault record: (reason, SID, interrupt index), and that it is typed as a write
/// without PASID, as interrupt-remapping records are.
fn recorded(rig: &Rig) -> Option<(u8, SourceId, u16)> {
    let lo = FrcdLo::from_bits(rig.r64(0x220));
    let hi = FrcdHi::from_bits(rig.r64(0x228));
    if !hi.f() {
        return None;
    }
    assert!(!hi.t1() && !hi.pp(), "a write without PASID");
    assert_eq!(lo.into_bits() & 0xffff_ffff_ffff, 0, "FI bits 47:12 clear");
    Some((hi.fr(), SourceId(hi.sid()), lo.interrupt_index()))
}

#[test]
fn registers_and_commands_follow_ecap_ir() {
    let rig = Rig::new("intremap=on");
    assert!(rig.vtd.ecap().ir() && !rig.vtd.ecap().eim());
    rig.w64(offset::IRTA, u64::MAX);
    assert_eq!(
        rig.r64(offset::IRTA),
        !0xfff | 0xf,
        "EIME needs ECAP.EIM; 10:4 reserved"
    );
    rig.rec.take();
    rig.command(GCMD_SIRTP);
    let gsts = Gsts::from_bits(rig.r32(offset::GSTS));
    assert!(gsts.irtps() && !gsts.ires() && !gsts.cfis());
    rig.command(GCMD_IRE);
    rig.command(GCMD_CFI);
    let gsts = Gsts::from_bits(rig.r32(offset::GSTS));
    assert!(gsts.irtps() && gsts.ires() && gsts.cfis());
    assert_eq!(rig.rec.take(), vec![Seen::InterruptEntries(0); 3]);
    // Linux's disable: write GSTS's enables without IRE.
    rig.w32(
        offset::GCMD,
        rig.r32(offset::GSTS) & 0x8680_0000 & !GCMD_IRE,
    );
    assert!(!Gsts::from_bits(rig.r32(offset::GSTS)).ires());
    assert_eq!(rig.rec.take(), vec![Seen::InterruptEntries(0)]);
    rig.vtd.reset();
    assert_eq!(rig.r64(offset::IRTA), 0);
    assert_eq!(rig.r32(offset::GSTS), 0);
    assert!(rig.rec.take().contains(&Seen::InterruptEntries(0)));

    let eim = Rig::new("intremap=on,eim=on");
    assert!(eim.vtd.ecap().eim());
    eim.w64(offset::IRTA, u64::MAX);
    assert_eq!(eim.r64(offset::IRTA), !0xfff | IRTA_EIME | 0xf);

    // Without interrupt remapping: no IRTA, the commands do nothing, IEC is an invalid type.
    let mut off = Rig::new("intremap=off");
    assert!(!off.vtd.ecap().ir());
    off.w64(offset::IRTA, TABLE);
    assert_eq!(off.r64(offset::IRTA), 0);
    off.command(GCMD_SIRTP);
    off.command(GCMD_IRE | GCMD_CFI);
    assert_eq!(off.r32(offset::GSTS), 0);
    assert_eq!(
        remap(&off, DEVICE, remappable(3)),
        InterruptOutcome::Deliver {
            address: remappable(3).0,
            data: 0
        },
        "no remapping: unchanged"
    );
    off.enable_qi(false, 0);
    off.submit(&[iec_global()]);
    assert!(Fsts::from_bits(off.r32(offset::FSTS)).iqe());
    assert_eq!(off.r64(offset::IQERCD) & 0xf, 3, "invalid type");
}

#[test]
fn every_irte_field_reaches_the_message() {
    let rig = xapic();
    let mut e = irte(0x45, 0x12, false);
    e.lo =
        e.lo.with_dlm(1)
            .with_tm(true)
            .with_dm(true)
            .with_rh(true)
            .with_avail(0xf);
    put(&rig, 9, e);
    assert_eq!(
        remap(&rig, DEVICE, remappable(9)),
        InterruptOutcome::Deliver {
            address: 0xfee1_200c,
            data: 0x45 | (1 << 8) | (1 << 14) | (1 << 15)
        }
    );
    put(&rig, 10, irte(0x46, 0xff, false));
    assert_eq!(
        remap(&rig, DEVICE, remappable(10)),
        InterruptOutcome::Deliver {
            address: 0xfeef_f000,
            data: 0x46
        },
        "edge, fixed, physical"
    );
    // SHV: the entry is handle + subhandle.
    assert_eq!(
        remap(&rig, DEVICE, with_subhandle(8, 2)),
        remap(&rig, DEVICE, remappable(10))
    );
    assert_eq!(rig.vtd.counters().interrupts_remapped, 4);
}

#[test]
fn eime_selects_the_destination_width() {
    let rig = x2apic();
    put(&rig, 1, irte(0x50, 0x0001_2345, true));
    assert_eq!(
        remap(&rig, DEVICE, remappable(1)),
        InterruptOutcome::Deliver {
            address: 0xfee4_5000 | (0x123 << 40),
            data: 0x50
        }
    );
    // The same entry bits in xAPIC mode: DST 15:8 only, and the other DST bits are reserved.
    let rig = xapic();
    put(&rig, 1, irte(0x50, 0x23, true));
    assert_eq!(
        remap(&rig, DEVICE, remappable(1)),
        InterruptOutcome::Blocked,
        "DST 7:0 set in xAPIC mode"
    );
    assert_eq!(
        recorded(&rig),
        Some((FaultReason::IrEntryReserved.code(), DEVICE, 1))
    );
    put(&rig, 2, irte(0x50, 0x23, false));
    assert_eq!(
        remap(&rig, DEVICE, remappable(2)),
        InterruptOutcome::Deliver {
            address: 0xfee2_3000,
            data: 0x50
        }
    );
}

#[test]
fn reserved_delivery_modes_are_refused_not_delivered() {
    let rig = xapic();
    let mut e = irte(0x30, 1, false);
    e.lo = e.lo.with_dlm(0b011);
    put(&rig, 3, e);
    assert_eq!(
        remap(&rig, DEVICE, remappable(3)),
        InterruptOutcome::Blocked
    );
    assert_eq!(
        recorded(&rig),
        Some((FaultReason::IrEntryReserved.code(), DEVICE, 3))
    );
    // NMI (100b) is a defined mode: delivered, with the mode in data bits 10:8.
    e.lo = e.lo.with_dlm(0b100);
    put(&rig, 4, e);
    assert_eq!(
        remap(&rig, DEVICE, remappable(4)),
        InterruptOutcome::Deliver {
            address: 0xfee0_1000,
            data: 0x430
        }
    );
}

/// One case per fault reason: the rig, the request, the index the record must carry.
fn fault_case(reason: FaultReason) -> (Rig, (u64, u32), u16) {
    let rig = xapic();
    match reason {
        FaultReason::IrRequestReserved => {
            put(&rig, 4, irte(0x30, 1, false));
            let (address, _) = remappable(4);
            (rig, (address, 1 << 16), 4)
        }
        FaultReason::IrIndexBeyondTable => (rig, remappable(256), 256),
        FaultReason::IrEntryNotPresent => {
            // FPD of a not-present entry is not looked at.
            let mut e = irte(0x30, 1, false);
            e.lo = e.lo.with_present(false).with_fpd(true);
            put(&rig, 5, e);
            (rig, remappable(5), 5)
        }
        FaultReason::IrTableAccess => {
            let rig = enabled("intremap=on", (1 << 40) | 7);
            (rig, remappable(6), 6)
        }
        FaultReason::IrEntryReserved => {
            let mut e = irte(0x30, 1, false);
            e.lo = e.lo.with_im(true);
            put(&rig, 7, e);
            (rig, remappable(7), 7)
        }
        FaultReason::IrCompatibilityBlocked => (rig, COMPAT, 0),
        FaultReason::IrSourceBlocked => {
            let mut e = irte(0x30, 1, false);
            e.hi = e.hi.with_svt(1).with_sid(SourceId::new(0, 4, 0).0);
            put(&rig, 8, e);
            (rig, remappable(8), 8)
        }
        other => panic!("no case for {other}"),
    }
}

#[test]
fn every_interrupt_fault_is_recorded_with_its_index() {
    let mut raised = Vec::new();
    for &reason in FaultReason::ALL {
        // 0x27 is an error reading a posted-interrupt descriptor: CAP.PI is clear, so an IRTE
        // in posted format is a reserved field (0x24) and no descriptor is ever read.
        if !reason.is_interrupt_remapping() || reason == FaultReason::IrPostedDescriptorAccess {
            continue;
        }
        let (rig, request, index) = fault_case(reason);
        assert_eq!(
            remap(&rig, DEVICE, request),
            InterruptOutcome::Blocked,
            "{reason}"
        );
        assert_eq!(
            recorded(&rig),
            Some((reason.code(), DEVICE, index)),
            "{reason}"
        );
        let fsts = Fsts::from_bits(rig.r32(offset::FSTS));
        assert!(fsts.ppf() && fsts.fri() == 0, "{reason}");
        assert_eq!(
            rig.irqs.take(),
            vec![(0, FAULT_DATA)],
            "{reason}: fault event"
        );
        let c = rig.vtd.counters();
        assert_eq!(
            (c.interrupts_blocked, c.interrupt_faults, c.faults_recorded),
            (1, 1, 1)
        );
        raised.push(reason.code());
    }
    assert_eq!(raised, (0x20..=0x26).collect::<Vec<u8>>());
}

#[test]
fn an_address_outside_the_interrupt_range_is_a_reserved_request() {
    let rig = xapic();
    for address in [0xfed0_0010u64, 0x1_fee0_0010] {
        assert_eq!(remap(&rig, DEVICE, (address, 0)), InterruptOutcome::Blocked);
    }
    assert_eq!(
        recorded(&rig),
        Some((FaultReason::IrRequestReserved.code(), DEVICE, 0))
    );
}

#[test]
fn fpd_suppresses_the_record_of_a_present_entry() {
    let rig = xapic();
    let mut reserved = irte(0x30, 1, false);
    reserved.lo = reserved.lo.with_fpd(true).with_im(true);
    put(&rig, 1, reserved);
    let mut foreign = irte(0x30, 1, false);
    foreign.lo = foreign.lo.with_fpd(true);
    foreign.hi = foreign.hi.with_svt(1).with_sid(0x0100);
    put(&rig, 2, foreign);
    assert_eq!(vector(&rig, 1), None);
    assert_eq!(vector(&rig, 2), None);
    assert_eq!(recorded(&rig), None);
    assert_eq!(rig.r32(offset::FSTS), 0);
    assert!(rig.irqs.take().is_empty(), "no fault event");
    let c = rig.vtd.counters();
    assert_eq!((c.interrupt_faults, c.faults_recorded), (2, 0));
}

/// SVT, SQ, the SID field, the requesters that pass and those refused.
type ValidationCase<'a> = (u8, u8, u16, &'a [SourceId], &'a [SourceId]);

#[test]
fn source_validation_follows_svt_and_sq() {
    let rig = xapic();
    let sid = SourceId::new(2, 3, 5);
    // (SVT, SQ, SID field) and who passes.
    let cases: [ValidationCase<'_>; 6] = [
        (0, 0, 0, &[sid, SourceId::new(9, 9, 1)], &[]),
        (
            1,
            0,
            sid.0,
            &[sid],
            &[SourceId::new(2, 3, 4), SourceId::new(2, 3, 1)],
        ),
        (
            1,
            1,
            sid.0,
            &[sid, SourceId::new(2, 3, 1)],
            &[SourceId::new(2, 3, 4)],
        ),
        (
            1,
            2,
            sid.0,
            &[SourceId::new(2, 3, 7), SourceId::new(2, 3, 1)],
            &[SourceId::new(2, 3, 4)],
        ),
        (
            1,
            3,
            sid.0,
            &[SourceId::new(2, 3, 0), SourceId::new(2, 3, 6)],
            &[SourceId::new(2, 4, 5)],
        ),
        (
            2,
            3,
            0x0204,
            &[SourceId::new(2, 0, 0), SourceId::new(4, 31, 7), sid],
            &[SourceId::new(1, 3, 5), SourceId::new(5, 0, 0)],
        ),
    ];
    for (i, (svt, sq, field, pass, fail)) in cases.into_iter().enumerate() {
        let mut e = irte(0x40 + i as u8, 1, false);
        e.hi = e.hi.with_svt(svt).with_sq(sq).with_sid(field);
        put(&rig, i as u64, e);
        for &s in pass {
            assert!(
                matches!(remap(&rig, s, remappable(i as u16)), InterruptOutcome::Deliver { data, .. } if data == 0x40 + i as u32),
                "SVT {svt} SQ {sq}: {s} passes"
            );
        }
        for &s in fail {
            assert_eq!(
                remap(&rig, s, remappable(i as u16)),
                InterruptOutcome::Blocked,
                "SVT {svt} SQ {sq}: {s} is refused"
            );
        }
    }
    // SVT 11b is reserved.
    let mut e = irte(0x30, 1, false);
    e.hi = e.hi.with_svt(3);
    put(&rig, 7, e);
    assert_eq!(vector(&rig, 7), None);
    let c = rig.vtd.counters();
    assert_eq!(c.interrupts_blocked, 8);
}

#[test]
fn compatibility_format_needs_cfi_and_xapic_mode() {
    let rig = xapic();
    assert_eq!(remap(&rig, DEVICE, COMPAT), InterruptOutcome::Blocked);
    rig.command(GCMD_CFI);
    let unchanged = InterruptOutcome::Deliver {
        address: COMPAT.0,
        data: COMPAT.1,
    };
    assert_eq!(remap(&rig, DEVICE, COMPAT), unchanged);
    // With EIME, compatibility format is blocked whatever CFI says.
    let rig = x2apic();
    rig.command(GCMD_CFI);
    assert_eq!(remap(&rig, DEVICE, COMPAT), InterruptOutcome::Blocked);
    assert_eq!(
        recorded(&rig),
        Some((FaultReason::IrCompatibilityBlocked.code(), DEVICE, 0))
    );
    // Remapping disabled: everything passes as it came, remappable format too.
    rig.w32(
        offset::GCMD,
        rig.r32(offset::GSTS) & 0x8680_0000 & !GCMD_IRE,
    );
    assert_eq!(
        remap(&rig, DEVICE, remappable(3)),
        InterruptOutcome::Deliver {
            address: remappable(3).0,
            data: 0
        }
    );
}

#[test]
fn the_table_size_bounds_the_index() {
    let small = enabled("intremap=on", 0);
    put(&small, 1, irte(0x31, 1, false));
    put(&small, 2, irte(0x32, 1, false));
    assert_eq!(vector(&small, 1), Some(0x31));
    assert_eq!(vector(&small, 2), None, "S = 0: 2 entries");
    assert_eq!(
        recorded(&small),
        Some((FaultReason::IrIndexBeyondTable.code(), DEVICE, 2))
    );
    let full = enabled("intremap=on", 0xf);
    put(&full, 0xffff, irte(0x3f, 1, false));
    assert_eq!(vector(&full, 0xffff), Some(0x3f));
    // handle + subhandle beyond 16 bits is beyond any table.
    assert_eq!(
        remap(&full, DEVICE, with_subhandle(0xfff0, 0x20)),
        InterruptOutcome::Blocked
    );
    // A table whose entries lie beyond the address width is beyond the table as well.
    let high = enabled("intremap=on", (1u64 << 48) | 0xf);
    assert_eq!(vector(&high, 0), None);
    assert_eq!(
        recorded(&high),
        Some((FaultReason::IrIndexBeyondTable.code(), DEVICE, 0))
    );
}

#[test]
fn an_interrupt_follows_a_cached_entry_until_the_guest_invalidates_it() {
    let mut rig = xapic();
    rig.enable_qi(false, 0);
    for i in 0..8 {
        put(&rig, i, irte(0x40 + i as u8, 1, false));
        assert_eq!(vector(&rig, i as u16), Some(0x40 + i as u8));
    }
    for i in 0..8 {
        put(&rig, i, irte(0x60 + i as u8, 1, false));
    }
    assert_eq!(vector(&rig, 5), Some(0x45), "the cached entry");
    rig.rec.take();
    // Index-selective with a mask: entries 4-7.
    rig.submit(&[iec_index(5, 2), wait(0, 1)]);
    assert_eq!(rig.status(0), 1);
    assert_eq!(
        rig.rec.take(),
        vec![Seen::InterruptEntries(0)],
        "told before the wait completed"
    );
    let now: Vec<_> = (0..8).map(|i| vector(&rig, i).unwrap()).collect();
    assert_eq!(now, [0x40, 0x41, 0x42, 0x43, 0x64, 0x65, 0x66, 0x67]);
    // One index.
    rig.submit(&[iec_index(2, 0), wait(0, 2)]);
    assert_eq!(vector(&rig, 2), Some(0x62));
    assert_eq!(vector(&rig, 1), Some(0x41));
    // Global.
    rig.submit(&[iec_global(), wait(0, 3)]);
    assert_eq!(vector(&rig, 1), Some(0x61));
    assert_eq!(vector(&rig, 0), Some(0x60));
    let c = rig.vtd.counters();
    assert_eq!((c.iec_selective, c.iec_global, c.qi_iec), (2, 1, 3));
    // SIRTP also starts afresh.
    put(&rig, 0, irte(0x70, 1, false));
    rig.command(GCMD_SIRTP);
    assert_eq!(vector(&rig, 0), Some(0x70));
}

#[test]
fn a_device_write_to_the_interrupt_range_is_remapped() {
    let rig = xapic();
    put(&rig, 3, irte(0x33, 2, false));
    let (address, data) = remappable(3);
    assert!(rig.vtd.interrupt(DEVICE, address, data));
    assert_eq!(rig.irqs.take(), vec![(0xfee0_2000, 0x33)]);
    // Blocked: still an interrupt request, only the fault event goes out.
    assert!(rig.vtd.interrupt(DEVICE, COMPAT.0, COMPAT.1));
    assert_eq!(rig.irqs.take(), vec![(0, FAULT_DATA)]);
    assert!(
        !rig.vtd.interrupt(DEVICE, address + 2, data),
        "not DWORD aligned"
    );
}

/// Two device threads remap while the vCPU rewrites the entry's destination each round,
/// invalidates it (index-selective or global, alternately) with a wait, checks the wait's status
/// and only then announces the round: a request made after the announcement must see that
/// round's entry or a later one.
#[test]
fn no_interrupt_uses_an_entry_after_its_invalidation_wait_completed() {
    const ROUNDS: u32 = 10_000;
    let mut rig = x2apic();
    rig.enable_qi(false, 0);
    put(&rig, 0, irte(0x30, 0, true));
    let completed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let vtd = rig.vtd.clone();
    let (remapped, violation) = std::thread::scope(|s| {
        let devices: Vec<_> = (0..2)
            .map(|_| {
                let (vtd, completed, stop) = (&vtd, &completed, &stop);
                s.spawn(move || {
                    let mut remapped = 0u64;
                    let (address, data) = remappable(0);
                    while !stop.load(SeqCst) {
                        let floor = completed.load(SeqCst);
                        let InterruptOutcome::Deliver { address, .. } =
                            vtd.remap_interrupt(DEVICE, address, data)
                        else {
                            panic!("the entry is always valid");
                        };
                        remapped += 1;
                        let destination = ((address >> 12) & 0xff) | ((address >> 40) << 8);
                        if destination < floor {
                            return (remapped, Some((destination, floor)));
                        }
                    }
                    (remapped, None)
                })
            })
            .collect();
        for round in 1..=ROUNDS {
            write_irte(&rig.ram, TABLE, 0, irte(0x30, round, true));
            let iec = if round % 2 == 0 {
                iec_global()
            } else {
                iec_index(0, 0)
            };
            rig.submit(&[iec, wait(0, round)]);
            assert_eq!(rig.status(0), round, "wait of round {round} completed");
            completed.store(u64::from(round), SeqCst);
        }
        stop.store(true, SeqCst);
        devices.into_iter().fold((0, None), |(sum, seen), d| {
            let (n, v) = d.join().unwrap();
            (sum + n, seen.or(v))
        })
    });
    if let Some((seen, floor)) = violation {
        panic!("an interrupt used round {seen}'s entry after round {floor}'s wait completed");
    }
    assert!(remapped > 0, "the device remapped during the rounds");
}

/// What the VMM does with the hook: re-evaluate a route from inside it. The invalidation is
/// already applied (the new entry is seen) and the wait's status word not yet written.
#[test]
fn routes_re_evaluated_in_the_hook_see_the_new_entry_before_the_wait_completes() {
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use vtd::observer::{InvalidationObserver, UnitView};

    #[derive(Default)]
    struct Routes {
        unit: OnceLock<Weak<vtd::Vtd>>,
        ram: OnceLock<Arc<vm_memory::GuestMemoryMmap<()>>>,
        seen: Mutex<Vec<(InterruptOutcome, u32)>>,
    }
    impl InvalidationObserver for Routes {
        fn invalidated(&self, _: &dyn UnitView, _: &vtd::invalidation::Invalidation) {}
        fn submission_done(&self, _: &dyn UnitView) {}
        fn root_or_translation_changed(&self, _: &dyn UnitView) {}
        fn interrupt_entries_changed(&self) {
            let Some(unit) = self.unit.get().and_then(Weak::upgrade) else {
                return;
            };
            let (address, data) = remappable(0);
            let outcome = unit.remap_interrupt(DEVICE, address, data);
            let mut status = [0u8; 4];
            vm_memory::Bytes::read_slice(
                &**self.ram.get().unwrap(),
                &mut status,
                vm_memory::GuestAddress(STATUS),
            )
            .unwrap();
            let status = u32::from_le_bytes(status);
            self.seen.lock().unwrap().push((outcome, status));
        }
    }

    let mut rig = xapic();
    let routes = Arc::new(Routes::default());
    routes.unit.set(Arc::downgrade(&rig.vtd)).unwrap();
    routes.ram.set(rig.ram.clone()).unwrap();
    rig.vtd.add_observer(routes.clone());
    rig.enable_qi(false, 0);
    put(&rig, 0, irte(0x30, 1, false));
    assert_eq!(vector(&rig, 0), Some(0x30));
    put(&rig, 0, irte(0x31, 1, false));
    rig.submit(&[iec_index(0, 0), wait(0, 7)]);
    assert_eq!(rig.status(0), 7);
    let new = InterruptOutcome::Deliver {
        address: 0xfee0_1000,
        data: 0x31,
    };
    assert_eq!(*routes.seen.lock().unwrap(), vec![(new, 0)]);
}

#[test]
fn the_readable_state_shows_the_latched_table_and_the_cache() {
    let rig = Rig::new("intremap=on,eim=on");
    let before = rig.vtd.snapshot(&[]).interrupt_remapping;
    assert!(!before.enabled && before.table_entries == 2 && before.cached_entries == 0);
    let rig = x2apic();
    for i in 0..3 {
        put(&rig, i, irte(0x40 + i as u8, 1, false));
        assert!(vector(&rig, i as u16).is_some());
    }
    let ir = rig.vtd.snapshot(&[]).interrupt_remapping;
    assert_eq!(
        (
            ir.enabled,
            ir.compatibility_format_allowed,
            ir.extended_interrupt_mode
        ),
        (true, false, true)
    );
    assert_eq!(
        (ir.table, ir.table_entries, ir.cached_entries),
        (TABLE, 256, 3)
    );
    let gsts = rig.vtd.snapshot(&[]).registers.gsts_set;
    assert!(
        gsts.contains(&"IRES") && gsts.contains(&"IRTPS"),
        "{gsts:?}"
    );
}
