//! Invalidations racing translations, on every IOTLB invalidation path (page probe, PASID,
//! domain and global generation bumps): once `invalidate()` has returned, no translation that
//! starts afterwards may use a mapping older than the one the invalidation published — neither
//! an entry cached before it nor one filled by a walk that read the tables before it.

use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vtd::GuestRam;
use vtd::invalidation::Invalidation;
use vtd::request::Access;
use vtd_spec::SourceId;

const IOVA: u64 = 0x10_0000;
const DID: u16 = 2;
const ROUNDS: u64 = 300;

/// The invalidation the writer uses in round `r`: all cover page `IOVA` of (DID, PASID 0).
fn invalidation(r: u64) -> Invalidation {
    match r % 6 {
        0 | 1 => Invalidation::PasidIotlbPage {
            did: DID,
            pasid: 0,
            addr: IOVA,
            am: (r % 2) as u8,
            ih: true,
        },
        2 => Invalidation::PasidIotlbAll { did: DID, pasid: 0 },
        3 => Invalidation::IotlbDomain { did: DID },
        4 => Invalidation::IotlbPage {
            did: DID,
            addr: IOVA,
            am: 0,
            ih: false,
        },
        _ => Invalidation::IotlbGlobal,
    }
}

/// The GPA page the writer maps `IOVA` to in round `r`.
fn gpa(r: u64) -> u64 {
    DATA_BASE + r * 0x1000
}

#[test]
fn no_translation_sees_a_mapping_older_than_the_last_completed_invalidation() {
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    let pt = PageTable::new(&mem, 4, Stage::First);
    // Neighbours keep fills, probes and evictions busy in the same domain.
    for i in 1..64u64 {
        pt.map4k(&mem, IOVA + i * 0x1000, DATA_BASE + 0x100_0000 + i * 0x1000);
    }
    let leaf = pt.map4k(&mem, IOVA, gpa(0));
    let sids = [SID, SID2, SourceId::new(0, 4, 0)];
    for sid in sids {
        t.sm_device(sid, false);
        t.pasid_entry(sid, 0, fs_entry(&pt, DID));
    }
    let unit = Unit::new(&mem, t.state());
    let ram = mem.ram.clone();
    let published = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let progress: Vec<AtomicU64> = sids.iter().map(|_| AtomicU64::new(0)).collect();
    let violation = Mutex::new(None);
    std::thread::scope(|s| {
        for (n, sid) in sids.into_iter().enumerate() {
            let (unit, published, done) = (Arc::clone(&unit), &published, &done);
            let (progress, violation) = (&progress[n], &violation);
            s.spawn(move || {
                let mut i = n as u64;
                while !done.load(Ordering::Acquire) {
                    let floor = published.load(Ordering::Acquire);
                    let tr = unit.req(sid, None, IOVA + 0x18, Access::READ).unwrap();
                    let round = (tr.gpa(IOVA) - DATA_BASE) / 0x1000;
                    if round < floor {
                        violation.lock().unwrap().get_or_insert(format!(
                            "{sid:?} used round {round}'s mapping after round {floor} was invalidated"
                        ));
                    }
                    progress.store(floor, Ordering::Release);
                    i = (i + 7) % 63;
                    unit.req(sid, None, IOVA + (i + 1) * 0x1000, Access::READ)
                        .unwrap();
                }
            });
        }
        for r in 1..=ROUNDS {
            ram.write_at(leaf, &(gpa(r) | FS_P | FS_RW | FS_US).to_le_bytes())
                .unwrap();
            unit.inv(invalidation(r));
            published.store(r, Ordering::Release);
            // Most rounds wait until every reader has translated (and so cached) the new
            // mapping, so the next invalidation has something to remove; the others let walks
            // overlap the next rewrite and invalidation.
            if r % 4 != 0 {
                while progress.iter().any(|p| p.load(Ordering::Acquire) < r) {
                    std::thread::yield_now();
                }
            }
        }
        done.store(true, Ordering::Release);
    });
    if let Some(v) = violation.into_inner().unwrap() {
        panic!("{v}");
    }
    let c = unit.counters.snapshot();
    assert_eq!(c.translations, c.iotlb_hits + c.walks);
}

#[test]
fn a_page_probe_and_a_domain_bump_leave_other_domains_cached() {
    // Two devices in two domains share one page table; flushing one domain's page, its PASID
    // or the whole domain never costs the other domain its cached entries.
    let mem = Mem::new();
    let t = Tables::scalable(&mem);
    let pt = PageTable::new(&mem, 4, Stage::First);
    pt.map4k(&mem, IOVA, gpa(0));
    t.sm_device(SID, false);
    t.pasid_entry(SID, 0, fs_entry(&pt, DID));
    t.sm_device(SID2, false);
    t.pasid_entry(SID2, 0, fs_entry(&pt, DID + 1));
    let unit = Unit::new(&mem, t.state());
    assert_eq!(unit.gpa(SID, IOVA).unwrap(), gpa(0));
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), gpa(0));
    pt.map4k(&mem, IOVA, gpa(1));
    for r in 0..5 {
        unit.inv(invalidation(r));
        assert_eq!(
            unit.gpa(SID, IOVA).unwrap(),
            gpa(1),
            "{:?}",
            invalidation(r)
        );
        assert_eq!(
            unit.gpa(SID2, IOVA).unwrap(),
            gpa(0),
            "other domain kept its entry after {:?}",
            invalidation(r)
        );
        pt.map4k(&mem, IOVA, gpa(0));
        unit.inv(invalidation(r));
        assert_eq!(unit.gpa(SID, IOVA).unwrap(), gpa(0));
        pt.map4k(&mem, IOVA, gpa(1));
    }
    unit.inv(Invalidation::IotlbGlobal);
    assert_eq!(unit.gpa(SID2, IOVA).unwrap(), gpa(1));
}
