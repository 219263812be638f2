//! Which requesters filled IOTLB entries for a domain: what a page-selective invalidation
//! needs to find a page's slots without scanning.
//!
//! The IOTLB is keyed by requester — `(source id, request PASID or none, page, level)` — but an
//! invalidation names a domain (and PASID). So each domain id that has entries gets a
//! [`Record`] listing up to [`PER_RECORD`] requesters that filled entries for it, with the
//! PASID of those entries and flags: whether any is first-stage, and whether any is a 2 MiB or
//! 1 GiB page (levels worth probing). A page invalidation then probes exactly
//! `requesters × levels × pages` slots.
//!
//! The invariant every probe relies on: **every live IOTLB entry of a DID is listed in that
//! DID's record, or the DID is marked untracked.** A DID with neither has no live entry.
//!
//! - Records are a fixed direct-mapped array ([`RECORDS`], indexed by DID): a fill for a DID
//!   whose place is held by another DID takes the place and marks the other DID untracked;
//!   a ninth requester marks its DID untracked. Untracked DIDs get a generation bump instead of
//!   a probe, which kills all their entries and makes them trackable again. Memory is fixed:
//!   `RECORDS` records and a 65,536-bit map.
//! - Registration happens before the fill inserts its entry. All writes, and the reads of
//!   invalidations, hold the mutex; a fill first checks lock-free whether it is already listed
//!   (the common case), so a hit-rich workload never takes the mutex. An invalidation that
//!   read the record before a fill registered has moved the clock before that, and the fill,
//!   registering under the same mutex afterwards, then sees the clock moved and does not
//!   insert (`generation.rs`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use vtd_spec::SourceId;

/// Records (domains tracked at once).
pub(crate) const RECORDS: usize = 64;
/// Requesters per record.
pub(crate) const PER_RECORD: usize = 8;

/// Record state: DID in 15:0, flags above, 0 when free.
const R_VALID: u32 = 1 << 31;
/// Some entry of the DID is first-stage.
pub(crate) const R_FIRST: u32 = 1 << 16;
/// Some entry is a 2 MiB page.
pub(crate) const R_2M: u32 = 1 << 17;
/// Some entry is a 1 GiB page.
pub(crate) const R_1G: u32 = 1 << 18;
const R_FLAGS: u32 = R_FIRST | R_2M | R_1G;

/// One requester of a domain's entries: the IOTLB key parts and the entries' PASID tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Requester {
    /// Source id.
    pub(crate) sid: SourceId,
    /// The request carried no PASID (the key's PASID part is `NO_PASID`).
    pub(crate) no_pasid: bool,
    /// The entries' PASID tag (the request's PASID, or the RID_PASID).
    pub(crate) pasid: u32,
}

impl Requester {
    fn encode(self) -> u64 {
        (1 << 63)
            | (u64::from(self.sid.0) << 40)
            | (u64::from(self.no_pasid) << 39)
            | u64::from(self.pasid)
    }
    fn decode(v: u64) -> Self {
        Self {
            sid: SourceId((v >> 40) as u16),
            no_pasid: v & (1 << 39) != 0,
            pasid: v as u32,
        }
    }
}

/// One domain's requesters; written under the mutex, read lock-free by fills.
#[derive(Default)]
struct Record {
    state: AtomicU32,
    reqs: [AtomicU64; PER_RECORD],
}

impl Record {
    fn holds(&self, did: u16) -> Option<u32> {
        let s = self.state.load(Ordering::Acquire);
        (s & R_VALID != 0 && s as u16 == did).then_some(s & R_FLAGS)
    }
    fn reset(&self, state: u32) {
        for r in &self.reqs {
            r.store(0, Ordering::Relaxed);
        }
        self.state.store(state, Ordering::Release);
    }
}

/// What an invalidation may do about a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracked {
    /// The DID has no live entry.
    Nothing,
    /// The DID may have entries of requesters nobody listed: bump its generation.
    Unknown,
    /// Every live entry of the DID was filled by one of these requesters.
    Listed {
        /// `R_*` flags.
        flags: u32,
        /// Number of requesters in `reqs`.
        len: usize,
        /// The requesters.
        reqs: [Option<Requester>; PER_RECORD],
    },
}

/// The records of all domains (see the module docs).
pub(crate) struct Requesters {
    records: Box<[Record]>,
    /// The untracked bitmap (one bit per DID); also the lock of every record write.
    untracked: Mutex<Box<[u64]>>,
}

/// The locked records: what invalidations read and update.
pub(crate) struct Locked<'a> {
    records: &'a [Record],
    untracked: MutexGuard<'a, Box<[u64]>>,
}

fn record_of(records: &[Record], did: u16) -> Option<&Record> {
    records.get(usize::from(did) % RECORDS)
}

impl Requesters {
    pub(crate) fn new() -> Self {
        Self {
            records: (0..RECORDS).map(|_| Record::default()).collect(),
            untracked: Mutex::new(vec![0u64; (1 << 16) / 64].into_boxed_slice()),
        }
    }

    /// Locks the records (invalidations and registration).
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            records: &self.records,
            untracked: self.untracked.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Notes that `req` is about to fill an entry of `did` with these `R_*` flags.
    #[inline]
    pub(crate) fn register(&self, did: u16, req: Requester, flags: u32) {
        let enc = req.encode();
        if let Some(r) = record_of(&self.records, did)
            && let Some(have) = r.holds(did)
            && have & flags == flags
            && r.reqs.iter().any(|x| x.load(Ordering::Acquire) == enc)
        {
            return;
        }
        self.lock().register(did, enc, flags);
    }
}

impl Locked<'_> {
    fn is_untracked(&self, did: u16) -> bool {
        self.untracked[usize::from(did) / 64] & (1 << (did % 64)) != 0
    }

    fn set_untracked(&mut self, did: u16, on: bool) {
        let w = &mut self.untracked[usize::from(did) / 64];
        if on {
            *w |= 1 << (did % 64);
        } else {
            *w &= !(1 << (did % 64));
        }
    }

    fn register(&mut self, did: u16, enc: u64, flags: u32) {
        if self.is_untracked(did) {
            return;
        }
        let Some(r) = record_of(self.records, did) else {
            return;
        };
        let state = r.state.load(Ordering::Relaxed);
        if r.holds(did).is_none() {
            // The place is free or held by another DID, which loses its list. This DID has no
            // record and is not untracked: it has no live entry, so an empty list is complete.
            if state & R_VALID != 0 {
                self.set_untracked(state as u16, true);
            }
            r.reset(R_VALID | u32::from(did));
        }
        if !r.reqs.iter().any(|x| x.load(Ordering::Relaxed) == enc) {
            let Some(free) = r.reqs.iter().find(|x| x.load(Ordering::Relaxed) == 0) else {
                // A requester too many: the DID becomes untracked.
                self.set_untracked(did, true);
                r.reset(0);
                return;
            };
            free.store(enc, Ordering::Release);
        }
        r.state.fetch_or(flags, Ordering::Release);
    }

    /// What is known of `did`'s entries.
    pub(crate) fn tracked(&self, did: u16) -> Tracked {
        if self.is_untracked(did) {
            return Tracked::Unknown;
        }
        let Some(r) = record_of(self.records, did) else {
            return Tracked::Unknown;
        };
        let Some(flags) = r.holds(did) else {
            return Tracked::Nothing;
        };
        let mut reqs = [None; PER_RECORD];
        let mut len = 0;
        for x in &r.reqs {
            let v = x.load(Ordering::Relaxed);
            if v != 0 {
                reqs[len] = Some(Requester::decode(v));
                len += 1;
            }
        }
        Tracked::Listed { flags, len, reqs }
    }

    /// `did`'s generation was bumped: it has no live entry left.
    pub(crate) fn forget(&mut self, did: u16) {
        self.set_untracked(did, false);
        if let Some(r) = record_of(self.records, did)
            && r.holds(did).is_some()
        {
            r.reset(0);
        }
    }

    /// The global generation moved: no domain has a live entry left.
    pub(crate) fn forget_all(&mut self) {
        self.untracked.fill(0);
        for r in self.records {
            r.reset(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(sid: u16, pasid: u32) -> Requester {
        Requester {
            sid: SourceId(sid),
            no_pasid: pasid == 0,
            pasid,
        }
    }

    fn listed(t: Tracked) -> (u32, Vec<Requester>) {
        match t {
            Tracked::Listed { flags, len, reqs } => {
                (flags, reqs[..len].iter().map(|r| r.unwrap()).collect())
            }
            other => panic!("not listed: {other:?}"),
        }
    }

    #[test]
    fn requesters_and_flags_accumulate_once() {
        let r = Requesters::new();
        assert_eq!(r.lock().tracked(5), Tracked::Nothing);
        r.register(5, req(1, 0), R_FIRST);
        r.register(5, req(1, 0), R_FIRST);
        r.register(5, req(2, 7), R_2M);
        let (flags, reqs) = listed(r.lock().tracked(5));
        assert_eq!(flags, R_FIRST | R_2M);
        assert_eq!(reqs, vec![req(1, 0), req(2, 7)]);
        assert_eq!(r.lock().tracked(6), Tracked::Nothing);
    }

    #[test]
    fn a_ninth_requester_makes_the_domain_untracked_until_forgotten() {
        let r = Requesters::new();
        for sid in 0..PER_RECORD as u16 {
            r.register(3, req(sid, 0), 0);
        }
        assert_eq!(listed(r.lock().tracked(3)).1.len(), PER_RECORD);
        r.register(3, req(99, 0), 0);
        assert_eq!(r.lock().tracked(3), Tracked::Unknown);
        // Registration of an untracked domain records nothing.
        r.register(3, req(1, 0), 0);
        assert_eq!(r.lock().tracked(3), Tracked::Unknown);
        r.lock().forget(3);
        assert_eq!(r.lock().tracked(3), Tracked::Nothing);
        r.register(3, req(1, 0), 0);
        assert_eq!(listed(r.lock().tracked(3)).1, vec![req(1, 0)]);
    }

    #[test]
    fn a_domain_losing_its_place_becomes_untracked() {
        let r = Requesters::new();
        let (a, b) = (4u16, 4 + RECORDS as u16);
        r.register(a, req(1, 0), 0);
        r.register(b, req(2, 0), 0);
        assert_eq!(r.lock().tracked(a), Tracked::Unknown);
        assert_eq!(listed(r.lock().tracked(b)).1, vec![req(2, 0)]);
        // `a` stays untracked (does not steal the place back) until its generation moves.
        r.register(a, req(1, 0), 0);
        assert_eq!(r.lock().tracked(a), Tracked::Unknown);
        assert_eq!(listed(r.lock().tracked(b)).1, vec![req(2, 0)]);
        r.lock().forget_all();
        assert_eq!(r.lock().tracked(a), Tracked::Nothing);
        assert_eq!(r.lock().tracked(b), Tracked::Nothing);
    }
}
