//! Queued invalidation through the unit's registers: every descriptor type, wait semantics,
//! completion interrupts, every queue error with its IQEI and IQH, resume, wrap-around, and
//! register-based invalidation.

use crate::support::*;
use vtd::GuestRam;
use vtd::invalidation::Invalidation;
use vtd_spec::SourceId;
use vtd_spec::regs::offset;

const IQE: u32 = 1 << 4;

fn iqei(rig: &Rig) -> u64 {
    rig.r64(offset::IQERCD) & 0xf
}

#[test]
fn every_invalidation_type_reaches_the_observers_in_order() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.rec.take();
    rig.submit(&[
        context_cache(1, 0, 0, 0),
        context_cache(2, 5, 0, 0),
        context_cache(3, 5, 0x0308, 3),
        iotlb(1, 0, 0),
        iotlb(2, 5, 0),
        iotlb(3, 5, 0x1234_5000 | (1 << 6) | 1),
        piotlb(2, 2, 0, 0),
        piotlb(3, 2, 7, 0xabc0_0000 | 4),
        piotlb(3, 2, 0, 52),
        pasid_cache(0, 2, 0),
        pasid_cache(1, 2, 9),
        pasid_cache(3, 0, 0),
        wait(0, 2),
    ]);
    use Invalidation::*;
    let expected = vec![
        ContextGlobal,
        ContextDomain { did: 5 },
        ContextDevice {
            did: 5,
            sid: SourceId(0x0308),
            fm: 3,
        },
        IotlbGlobal,
        IotlbDomain { did: 5 },
        IotlbPage {
            did: 5,
            addr: 0x1234_4000,
            am: 1,
            ih: true,
        },
        PasidIotlbAll { did: 2, pasid: 0 },
        PasidIotlbPage {
            did: 2,
            pasid: 7,
            addr: 0xabc0_0000,
            am: 4,
            ih: false,
        },
        PasidIotlbPage {
            did: 2,
            pasid: 0,
            addr: 0,
            am: 52,
            ih: false,
        },
        PasidCacheDomain { did: 2 },
        PasidCachePasid { did: 2, pasid: 9 },
        PasidCacheGlobal,
    ];
    let seen = rig.rec.take();
    let mut want: Vec<Seen> = expected
        .into_iter()
        .map(|i| Seen::Invalidated(i, 0))
        .collect();
    want.push(Seen::SubmissionDone);
    assert_eq!(
        seen, want,
        "status word still 0 while invalidations are applied"
    );
    assert_eq!(rig.status(0), 2);
    assert_eq!(rig.head(), 13);
    let c = rig.vtd.counters();
    assert_eq!(
        (c.qi_context_cache, c.qi_iotlb, c.qi_pasid_iotlb),
        (3, 3, 3)
    );
    assert_eq!((c.qi_pasid_cache, c.qi_wait, c.qi_submissions), (3, 1, 1));
    assert_eq!(c.qi_errors, 0);
}

#[test]
fn legacy_128_bit_queue_works() {
    let mut rig = Rig::new("");
    rig.enable_qi(false, 0);
    rig.submit(&[context_cache(1, 0, 0, 0), iotlb(2, 3, 0), wait(1, 0x77)]);
    assert_eq!(
        rig.rec.invalidations(),
        vec![
            Invalidation::ContextGlobal,
            Invalidation::IotlbDomain { did: 3 }
        ]
    );
    assert_eq!(rig.status(1), 0x77);
    assert_eq!(rig.head(), 3);
    assert_eq!(rig.r64(offset::IQH), 3 << 4);
    // IQA.DW is reserved without scalable mode: it reads back 0.
    rig.w64(offset::IQA, QUEUE | (1 << 11));
    assert_eq!(rig.r64(offset::IQA), QUEUE);
}

#[test]
fn wait_with_interrupt_follows_iectl_mask() {
    let mut rig = Rig::first_stage();
    rig.w32(offset::IEDATA, 0x41);
    rig.w32(offset::IEADDR, 0xfee0_0000);
    rig.w32(offset::IEUADDR, 0x1);
    rig.enable_qi(true, 0);
    rig.submit(&[wait_interrupt()]);
    assert_eq!(rig.r32(offset::ICS), 1, "IWC");
    assert_eq!(
        rig.r32(offset::IECTL),
        0xc000_0000,
        "masked at reset: IP pending"
    );
    assert!(rig.irqs.take().is_empty());
    rig.w32(offset::IECTL, 0);
    assert_eq!(rig.irqs.take(), vec![(0x1_fee0_0000, 0x41)]);
    assert_eq!(rig.r32(offset::IECTL), 0);
    // IWC still set: the next IF completion is not a new interrupt condition.
    rig.submit(&[wait_interrupt()]);
    assert!(rig.irqs.take().is_empty());
    rig.w32(offset::ICS, 1);
    assert_eq!(rig.r32(offset::ICS), 0);
    rig.submit(&[wait_interrupt()]);
    assert_eq!(rig.irqs.take(), vec![(0x1_fee0_0000, 0x41)]);
    // Masked again: clearing IWC clears IP without a message.
    rig.w32(offset::IECTL, 0x8000_0000);
    rig.w32(offset::ICS, 1);
    rig.submit(&[wait_interrupt()]);
    assert_eq!(rig.r32(offset::IECTL), 0xc000_0000);
    rig.w32(offset::ICS, 1);
    assert_eq!(rig.r32(offset::IECTL), 0x8000_0000);
    rig.w32(offset::IECTL, 0);
    assert!(rig.irqs.take().is_empty());
}

/// Submits `bad` after one good descriptor and checks the error: IQE, IQEI, IQH at `bad`,
/// a fault event, and nothing processed after it.
fn expect_queue_error(options: &str, wide: bool, bad: [u64; 4], want_iqei: u64) {
    let mut rig = Rig::new(options);
    rig.w32(offset::FECTL, 0);
    rig.w32(offset::FEDATA, 0x55);
    rig.w32(offset::FEADDR, 0xfee0_0000);
    rig.enable_qi(wide, 0);
    rig.rec.take();
    rig.submit(&[iotlb(1, 0, 0), bad, wait(0, 1)]);
    assert_ne!(rig.r32(offset::FSTS) & IQE, 0, "IQE for {bad:x?}");
    assert_eq!(iqei(&rig), want_iqei, "IQEI for {bad:x?}");
    assert_eq!(rig.head(), 1, "IQH at the bad descriptor");
    assert_eq!(rig.status(0), 0, "the wait after it did not run");
    assert_eq!(rig.irqs.take(), vec![(0xfee0_0000, 0x55)], "fault event");
    assert_eq!(
        rig.rec.take(),
        vec![
            Seen::Invalidated(Invalidation::IotlbGlobal, 0),
            Seen::SubmissionDone
        ]
    );
    assert_eq!(rig.vtd.counters().qi_errors, 1);
}

#[test]
fn each_malformed_descriptor_stops_the_queue_with_its_iqei() {
    let sm = "x-scalable-mode=on,x-flts=on";
    expect_queue_error(sm, true, [0xf, 0, 0, 0], 3);
    expect_queue_error(sm, true, [1 << 9, 0, 0, 0], 3); // type 0x10
    expect_queue_error(sm, true, [4, 0, 0, 0], 3); // IEC without IR
    expect_queue_error(sm, true, [3, 0, 0, 0], 3); // device-TLB without DT
    expect_queue_error(sm, true, [9, 0, 0, 0], 3); // page group response without PRS
    expect_queue_error(sm, true, [1 | (1 << 4), 0, 1, 0], 4); // qw2 set
    expect_queue_error(sm, true, [1 | (1 << 4), 0, 0, 1], 4); // qw3 set
    expect_queue_error(sm, true, [1 | (1 << 4) | (1 << 63), 0, 0, 0], 4);
    expect_queue_error(sm, true, piotlb(1, 0, 0, 0), 4);
    expect_queue_error(sm, true, piotlb(0, 0, 0, 0), 4);
    expect_queue_error(sm, true, pasid_cache(2, 0, 0), 4);
    expect_queue_error(sm, true, context_cache(0, 0, 0, 0), 4);
    expect_queue_error(sm, true, iotlb(0, 0, 0), 4);
    expect_queue_error(sm, true, [5 | (1 << 7), 0, 0, 0], 4); // PD without PRS
    expect_queue_error(sm, false, piotlb(2, 0, 0, 0), 5); // 256-bit-only type, 128-bit queue
    expect_queue_error(sm, false, pasid_cache(3, 0, 0), 5);
    expect_queue_error("", false, piotlb(2, 0, 0, 0), 3); // no such type in legacy mode
}

#[test]
fn tail_errors_leave_iqh_alone() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.submit(&[wait(0, 1)]);
    // 256-bit descriptors: bit 4 of the tail must be 0.
    rig.w32(offset::IQT, (2 << 5) | 0x10);
    assert_ne!(rig.r32(offset::FSTS) & IQE, 0);
    assert_eq!(iqei(&rig), 6);
    assert_eq!(rig.head(), 1);
    rig.w32(offset::FSTS, IQE);
    // A queue of QS=0 has 128 slots of 32 bytes: a tail at slot 200 is beyond it.
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.w32(offset::IQT, 200 << 5);
    assert_eq!(iqei(&rig), 1);
    assert_eq!(rig.head(), 0);
}

#[test]
fn queue_outside_guest_ram_is_a_fetch_error() {
    let rig = Rig::first_stage();
    rig.w32(offset::IQT, 0);
    rig.w64(offset::IQA, 0x7fff_f000_0000 | (1 << 11));
    rig.command(1 << 26);
    rig.w32(offset::IQT, 1 << 5);
    assert_ne!(rig.r32(offset::FSTS) & IQE, 0);
    assert_eq!(iqei(&rig), 2);
    assert_eq!(rig.r64(offset::IQH), 0);
}

#[test]
fn status_address_outside_ram_stops_the_queue() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.submit(&[[5 | (1 << 5) | (1 << 32), 0xffff_ff00_0000, 0, 0]]);
    assert_eq!(iqei(&rig), 2);
    assert_eq!(rig.head(), 0);
}

#[test]
fn queue_stays_stopped_until_iqe_is_cleared_then_resumes_from_iqh() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.submit(&[[0xf, 0, 0, 0], piotlb(2, 3, 0, 0), wait(0, 9)]);
    assert_eq!(rig.head(), 0);
    rig.rec.take();
    // More work while stopped: nothing happens.
    rig.submit(&[wait(1, 9)]);
    assert_eq!((rig.head(), rig.status(0), rig.status(1)), (0, 0, 0));
    assert!(rig.rec.take().is_empty());
    // Software does what Linux does: overwrite the bad slot with a wait, clear IQE.
    rig.ram
        .write_at(QUEUE, &wait(2, 3)[0].to_le_bytes())
        .unwrap();
    rig.ram
        .write_at(QUEUE + 8, &wait(2, 3)[1].to_le_bytes())
        .unwrap();
    rig.w32(offset::FSTS, IQE);
    assert_eq!(rig.r32(offset::FSTS) & IQE, 0);
    assert_eq!((rig.status(2), rig.status(0), rig.status(1)), (3, 9, 9));
    assert_eq!(rig.head(), 4);
    assert_eq!(
        rig.rec.take(),
        vec![
            Seen::Invalidated(Invalidation::PasidIotlbAll { did: 3, pasid: 0 }, 0),
            Seen::SubmissionDone
        ]
    );
}

#[test]
fn the_ring_wraps_around() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0); // 128 slots
    for round in 0..3u32 {
        let descs: Vec<[u64; 4]> = (0..50u16)
            .map(|i| piotlb(2, i, 0, 0))
            .chain([wait(0, round + 1)])
            .collect();
        rig.submit(&descs);
        assert_eq!(rig.status(0), round + 1);
        assert_eq!(rig.head(), rig.tail);
        assert_eq!(rig.rec.invalidations().len(), 50);
    }
    assert_eq!(rig.head(), (3 * 51) % 128);
    assert_eq!(rig.vtd.counters().qi_submissions, 3);
}

#[test]
fn disabling_qi_resets_the_head() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.submit(&[wait(0, 1)]);
    assert_eq!(rig.head(), 1);
    rig.w32(offset::GCMD, 0);
    assert_eq!(rig.r32(offset::GSTS) & (1 << 26), 0);
    assert_eq!(rig.r64(offset::IQH), 0);
    // A queue stopped by an error can be disabled (Linux does so at boot after kexec); IQE
    // stays for software to clear.
    rig.enable_qi(true, 0);
    rig.submit(&[[0xf, 0, 0, 0]]);
    rig.w32(offset::GCMD, 0);
    assert_eq!(rig.r32(offset::GSTS) & (1 << 26), 0);
    assert_eq!(rig.r64(offset::IQH), 0);
    assert_ne!(rig.r32(offset::FSTS) & IQE, 0);
}

#[test]
fn register_invalidation_works_without_qi_and_is_refused_with_it() {
    let mut rig = Rig::new("");
    rig.rec.take();
    // CCMD: device-selective, SID 00:03.0, FM 0, DID 4.
    let ccmd = (1u64 << 63) | (3 << 61) | (0x18 << 16) | 4;
    rig.w64(offset::CCMD, ccmd);
    let back = rig.r64(offset::CCMD);
    assert_eq!(back >> 63, 0, "ICC cleared when done");
    assert_eq!((back >> 59) & 3, 3, "CAIG device");
    // IOTLB register at 0xF8 (IVA at 0xF0): page-selective DID 4, 2 pages at 0x4000.
    rig.w64(0xf0, 0x4000 | 1);
    rig.w64(0xf8, (1u64 << 63) | (3 << 60) | (4 << 32));
    let back = rig.r64(0xf8);
    assert_eq!((back >> 63, (back >> 57) & 3), (0, 3));
    // Linux writes the IOTLB register as two halves too: the high half carries IVT.
    rig.w32(0xf8, 0);
    rig.w32(0xfc, (1 << 31) | (1 << 28));
    assert_eq!((rig.r64(0xf8) >> 57) & 3, 1, "IAIG global");
    assert_eq!(
        rig.rec.take(),
        vec![
            Seen::Invalidated(
                Invalidation::ContextDevice {
                    did: 4,
                    sid: SourceId(0x18),
                    fm: 0
                },
                0
            ),
            Seen::SubmissionDone,
            Seen::Invalidated(
                Invalidation::IotlbPage {
                    did: 4,
                    addr: 0x4000,
                    am: 1,
                    ih: false
                },
                0
            ),
            Seen::SubmissionDone,
            Seen::Invalidated(Invalidation::IotlbGlobal, 0),
            Seen::SubmissionDone,
        ]
    );
    assert_eq!(rig.vtd.counters().register_invalidations, 3);
    rig.enable_qi(false, 0);
    rig.rec.take();
    rig.w64(offset::CCMD, (1u64 << 63) | (1 << 61));
    assert_eq!(
        rig.r64(offset::CCMD) >> 59,
        0b00100,
        "CIRG kept, ICC clear, CAIG 0"
    );
    rig.w64(0xf8, (1u64 << 63) | (1 << 60));
    assert_eq!((rig.r64(0xf8) >> 57) & 3, 0);
    assert!(rig.rec.take().is_empty());
}

#[test]
fn device_tlb_descriptors_are_counted_no_ops_with_device_iotlb() {
    let mut rig = Rig::new("x-scalable-mode=on,x-flts=on,device-iotlb=on");
    rig.enable_qi(true, 0);
    rig.rec.take();
    rig.submit(&[[3, 0, 0, 0], [8, 0, 0, 0], wait(0, 1)]);
    assert_eq!(rig.status(0), 1);
    assert!(rig.rec.invalidations().is_empty());
    let c = rig.vtd.counters();
    assert_eq!(
        (c.qi_device_tlb, c.qi_pasid_device_tlb, c.qi_errors),
        (1, 1, 0)
    );
}

/// The unit is shared between vCPU and device threads: submissions on one thread while others
/// translate and fault must all complete (no deadlock, no lost wait, every fault counted).
#[test]
fn submissions_and_translations_run_concurrently() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<vtd::Vtd>();
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.enable_translation(0x1000 | (1 << 10)); // an empty root table: every DMA faults
    let devices: Vec<_> = (0..3u8)
        .map(|t| {
            let vtd = rig.vtd.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let req = vtd::request::DmaRequest {
                        sid: SourceId::new(0, t, 0),
                        pasid: None,
                        iova: i << 12,
                        access: vtd::request::Access::READ,
                    };
                    assert!(vtd::request::Remapper::remap(&*vtd, &req).is_err());
                }
            })
        })
        .collect();
    for round in 1..=200u32 {
        rig.submit(&[piotlb(2, 2, 0, 0), wait(0, round)]);
        assert_eq!(rig.status(0), round);
    }
    for t in devices {
        t.join().unwrap();
    }
    let c = rig.vtd.counters();
    assert_eq!((c.qi_submissions, c.faults), (200, 6000));
    assert!(c.faults_recorded >= 1 && c.faults_recorded <= 8);
}

/// Observers are called with no lock of the unit held: one that reads the unit's registers and
/// state from inside every callback must not deadlock.
#[test]
fn observers_may_read_the_unit_from_their_callbacks() {
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use vtd::observer::{InvalidationObserver, UnitView};

    #[derive(Default)]
    struct Reader {
        unit: OnceLock<Weak<vtd::Vtd>>,
        gsts: Mutex<Vec<u32>>,
    }
    impl Reader {
        fn read(&self, view: &dyn UnitView) {
            let _ = view.state();
            let _ = view.read_pasid_entry(SourceId(0), 0);
            let unit = self.unit.get().and_then(Weak::upgrade).unwrap();
            let mut b = [0u8; 4];
            unit.mmio_read(offset::GSTS, &mut b);
            self.gsts.lock().unwrap().push(u32::from_le_bytes(b));
        }
    }
    impl InvalidationObserver for Reader {
        fn invalidated(&self, unit: &dyn UnitView, _inv: &Invalidation) {
            self.read(unit);
        }
        fn submission_done(&self, unit: &dyn UnitView) {
            self.read(unit);
        }
        fn root_or_translation_changed(&self, unit: &dyn UnitView) {
            self.read(unit);
        }
    }

    let mut rig = Rig::first_stage();
    let reader = Arc::new(Reader::default());
    reader.unit.set(Arc::downgrade(&rig.vtd)).unwrap();
    rig.vtd.add_observer(reader.clone());
    rig.enable_qi(true, 0);
    rig.enable_translation(0x1000 | (1 << 10));
    rig.submit(&[piotlb(2, 2, 0, 0), pasid_cache(1, 2, 0), wait(0, 1)]);
    rig.w64(offset::CCMD, 1 << 63 | 1 << 61); // refused under QI: no callback
    assert_eq!(rig.status(0), 1);
    // SRTP, TE, two invalidations, one submission.
    assert_eq!(reader.gsts.lock().unwrap().len(), 5);
}

/// Observers that forward invalidations (the passthrough path) flush them at `submission_done`,
/// so it must come after each batch and *before* the wait that ends the batch is completed: two
/// batches in one IQT write give two calls, each seeing its own wait's status word unwritten.
#[test]
fn submission_done_precedes_each_wait_status_write() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.rec.take();
    rig.submit(&[
        piotlb(2, 2, 0, 0),
        wait(0, 2),
        piotlb(2, 3, 0, 0),
        wait(1, 2),
    ]);
    assert_eq!(rig.status(0), 2);
    assert_eq!(rig.status(1), 2);
    assert_eq!(
        *rig.rec.done_status.lock().unwrap(),
        vec![(0, 0), (2, 0)],
        "each batch is flushed before its wait completes"
    );
    // A wait with no invalidation before it asks observers for nothing.
    rig.rec.done_status.lock().unwrap().clear();
    rig.submit(&[wait(0, 3)]);
    assert!(rig.rec.done_status.lock().unwrap().is_empty());
}
