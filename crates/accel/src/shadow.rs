//! Shadowing: a passthrough device on a host IOMMU that cannot nest, behind a guest using
//! second-stage tables with caching mode (QEMU's path for VFIO devices without x-flts).
//!
//! The guest's tables are walked (by the vtd walker, from guest memory) over each range it
//! invalidates, and the host address space (an iommufd IOAS or a VFIO container, one per
//! device) is made to map exactly what the tables map: IOVA → the host memory of the guest
//! page. Caching mode makes Linux invalidate after every map too, so nothing is missed.
//!
//! ```text
//!  guest invalidation ─► invalidated(): queued per device (ranges, or "re-read the entry")
//!   context / PASID-cache inval, SRTP, TE ─► re-read the device's tables:
//!        changed (domain switch) ─► unmap all, replay the whole new domain
//!   IOTLB (G=1,2,3) / PASID-IOTLB for the device's DID ─► that range
//!  submission_done() (before the wait status is written) ─► per device, per range:
//!        walk leaves ─► wanted runs (IOVA → HVA, R/W; pages outside guest RAM are skipped)
//!        diff with what is mapped ─► unmap whole host mappings that changed, neighbours in
//!        one host call (re-mapping their unchanged remainder) ─► map the new runs,
//!        contiguous ones coalesced
//!  identity (TE off, pass-through) ─► all guest RAM at IOVA = GPA
//!  blocked, first stage ─► nothing mapped (the host faults the device's DMA)
//!  a failed map or unmap, or tables past the walk budget ─► everything unmapped (DMA
//!        blocked), counted, logged once; the next domain switch or replay restores it
//! ```

use crate::binding::BlockReason;
use crate::stage2::RamRegion;
use counter_set::{CounterSource, add, counter_set};
use host_iommu::{DmaMap, DmaPerm, HostIommuError};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{info, warn};
use vtd::DeviceTables;
use vtd::invalidation::Invalidation;
use vtd::observer::{InvalidationObserver, UnitView};
use vtd_spec::SourceId;

/// Paging entries one walk may read beyond four per page of guest RAM (a guest can alias its
/// tables to map far more than its RAM; a whole-RAM map in 4 KiB pages needs about one).
const WALK_SLACK: u64 = 1 << 16;
/// Queued ranges per device per submission before they collapse into one full walk.
const MAX_QUEUED: usize = 64;

counter_set! {
    /// Live counters.
    struct Counters;
    /// A point-in-time copy of the shadow's counters.
    pub struct ShadowCountersSnapshot;
    {
        maps: AtomicU64 = "Host map calls (one per coalesced run).",
        unmaps: AtomicU64 = "Host unmap calls (one per batch of neighbouring host mappings that go).",
        mapped_bytes: AtomicU64 = "Bytes mapped.",
        unmapped_bytes: AtomicU64 = "Bytes unmapped.",
        walks: AtomicU64 = "Range walks of the guest's second-stage tables.",
        walk_entries: AtomicU64 = "Paging entries read by those walks.",
        bad_entries: AtomicU64 = "Entries that would fault (reserved bits, unreadable): nothing mapped below.",
        outside_ram: AtomicU64 = "Leaves pointing outside guest RAM (not mapped).",
        remaps: AtomicU64 = "Unchanged remainders re-mapped after a partial unmap of a host mapping.",
        domain_switches: AtomicU64 = "Devices whose tables changed (context or PASID entry): unmapped, replayed.",
        failures: AtomicU64 = "Failed host map/unmap calls or walks over budget (the device was blocked).",
    }
}

/// A run of IOVA space mapped to host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host virtual address of `iova`.
    pub hva: u64,
    /// Device writes allowed (reads always are).
    pub write: bool,
}

impl Run {
    fn end(&self) -> u64 {
        self.iova + self.len
    }
    fn continues(&self, next: &Run) -> bool {
        self.end() == next.iova && self.hva + self.len == next.hva && self.write == next.write
    }
}

/// What the shadow currently does with a device's DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowState {
    /// All guest RAM at IOVA = GPA.
    Identity,
    /// The guest's second-stage tables of domain `did`, shadowed.
    SecondStage {
        /// Domain id.
        did: u16,
    },
    /// Nothing mapped.
    Blocked(BlockReason),
}

#[derive(Debug)]
struct Device {
    name: String,
    dma: Arc<dyn DmaMap>,
    tables: DeviceTables,
    failed: bool,
    logged: bool,
    /// Not synced yet: the first table read is no domain switch.
    fresh: bool,
    mapped: BTreeMap<u64, Run>,
    reread: bool,
    ranges: Vec<(u64, u64)>,
}

/// The shadowed devices behind one vIOMMU. Register it with `Vtd::add_observer`.
#[derive(Debug)]
pub struct Shadow {
    ram: Vec<RamRegion>,
    budget: u64,
    devices: Mutex<BTreeMap<SourceId, Device>>,
    counters: Counters,
}

impl Shadow {
    /// A shadow for a guest whose RAM is `ram`.
    pub fn new(ram: Vec<RamRegion>) -> Self {
        let pages: u64 = ram.iter().map(|r| r.len / 4096).sum();
        Self {
            budget: pages.saturating_mul(4).saturating_add(WALK_SLACK),
            ram,
            devices: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<SourceId, Device>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the device at `sid` whose host address space is `dma` (empty, the device attached
    /// to it), and maps what the guest's tables map now.
    pub fn add_device(&self, unit: &dyn UnitView, sid: SourceId, name: &str, dma: Arc<dyn DmaMap>) {
        let mut d = Device {
            name: name.to_owned(),
            dma,
            tables: DeviceTables::Blocked,
            failed: false,
            logged: false,
            fresh: true,
            mapped: BTreeMap::new(),
            reread: true,
            ranges: Vec::new(),
        };
        self.sync(unit, sid, &mut d);
        info!(target: "accel", device = name, %sid, "device shadowed behind the vIOMMU");
        self.lock().insert(sid, d);
    }

    /// Removes the device: everything it has mapped is unmapped.
    pub fn remove_device(&self, sid: SourceId) -> bool {
        let Some(mut d) = self.lock().remove(&sid) else {
            return false;
        };
        self.unmap_all(&mut d);
        true
    }

    /// What the host does with the DMA of the device at `sid`.
    pub fn state(&self, sid: SourceId) -> Option<ShadowState> {
        self.lock().get(&sid).map(|d| {
            if d.failed {
                return ShadowState::Blocked(BlockReason::HostFailure);
            }
            match d.tables {
                DeviceTables::Identity(_) => ShadowState::Identity,
                DeviceTables::SecondStage(t) => ShadowState::SecondStage { did: t.did },
                DeviceTables::FirstStage(_) => ShadowState::Blocked(BlockReason::Unsupported),
                DeviceTables::Blocked => ShadowState::Blocked(BlockReason::NoEntry),
            }
        })
    }

    /// The host mappings of the device at `sid`, in IOVA order.
    pub fn mappings(&self, sid: SourceId) -> Vec<Run> {
        self.lock()
            .get(&sid)
            .map(|d| d.mapped.values().copied().collect())
            .unwrap_or_default()
    }

    /// The counters.
    pub fn counters(&self) -> ShadowCountersSnapshot {
        self.counters.snapshot()
    }

    fn queue(&self, filter: impl Fn(&Device) -> bool, range: Option<(u64, u64)>) {
        for d in self.lock().values_mut().filter(|d| filter(d)) {
            const ALL: (u64, u64) = (0, u64::MAX);
            match range {
                None => d.reread = true,
                Some(_) if d.ranges.first() == Some(&ALL) => {}
                Some(r) if r != ALL && d.ranges.len() < MAX_QUEUED => d.ranges.push(r),
                Some(_) => {
                    d.ranges.clear();
                    d.ranges.push(ALL);
                }
            }
        }
    }

    fn sync(&self, unit: &dyn UnitView, sid: SourceId, d: &mut Device) {
        if std::mem::take(&mut d.reread) {
            let now = unit.device_tables(sid);
            let switched = match (d.tables, now) {
                (DeviceTables::Identity(_), DeviceTables::Identity(_)) => false,
                (a, b) => a != b,
            };
            let fresh = std::mem::take(&mut d.fresh);
            if switched || d.failed || fresh {
                if switched && !fresh {
                    add(&self.counters.domain_switches, 1);
                }
                self.unmap_all(d);
                d.failed = false;
                d.tables = now;
                d.ranges.clear();
                d.ranges.push((0, u64::MAX));
                if let DeviceTables::Identity(_) = now {
                    let runs: Vec<Run> = self
                        .ram
                        .iter()
                        .map(|r| Run {
                            iova: r.gpa,
                            len: r.len,
                            hva: r.hva,
                            write: r.writable,
                        })
                        .collect();
                    d.ranges.clear();
                    if let Err(e) = self.map_runs(d, runs) {
                        self.fail(d, &e.to_string());
                    }
                    return;
                }
            }
        }
        let DeviceTables::SecondStage(tables) = d.tables else {
            d.ranges.clear();
            return;
        };
        if d.failed {
            d.ranges.clear();
            return;
        }
        let mut queued = std::mem::take(&mut d.ranges);
        queued.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(queued.len());
        for (start, end) in queued {
            match ranges.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => ranges.push((start, end)),
            }
        }
        for (start, end) in ranges {
            let mut wanted: Vec<Run> = Vec::new();
            let mut outside = 0;
            let walk = unit.walk_second_stage(&tables, start, end, self.budget, &mut |l| {
                let lo = l.iova.max(start);
                let hi = l.iova.saturating_add(l.size).min(end);
                if hi <= lo || !(l.read || l.write) {
                    return;
                }
                match hva(&self.ram, l.gpa + (lo - l.iova), hi - lo) {
                    Some((hva, writable)) => push_run(
                        &mut wanted,
                        Run {
                            iova: lo,
                            len: hi - lo,
                            hva,
                            write: l.write && writable,
                        },
                    ),
                    None => outside += 1,
                }
            });
            add(&self.counters.walks, 1);
            add(&self.counters.walk_entries, walk.entries);
            add(&self.counters.bad_entries, walk.faults);
            add(&self.counters.outside_ram, outside);
            if walk.over_budget {
                self.fail(d, "the guest's second-stage tables exceed the walk budget");
                return;
            }
            if let Err(e) = self.apply(d, start, end, wanted) {
                self.fail(d, &e.to_string());
                return;
            }
        }
    }

    /// Makes `[start, end)` map exactly `wanted` (sorted, inside the range).
    fn apply(
        &self,
        d: &mut Device,
        start: u64,
        end: u64,
        wanted: Vec<Run>,
    ) -> Result<(), HostIommuError> {
        let current: Vec<Run> = d
            .mapped
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end() > start)
            .map(|(_, r)| *r)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let clipped: Vec<Run> = current.iter().filter_map(|r| clip(r, start, end)).collect();
        let (stale, fresh) = diff(&clipped, &wanted);
        if stale.is_empty() && fresh.is_empty() {
            return Ok(());
        }
        // Host mappings are unmapped whole: the parts that stay valid are mapped again. Every
        // list here is sorted and free of overlaps, so one pass over each suffices.
        let mut cuts: Vec<(u64, u64)> = stale
            .iter()
            .chain(&fresh)
            .map(|r| (r.iova, r.end()))
            .collect();
        cuts.sort_unstable();
        let mut remap = Vec::new();
        // Host mappings that go, in batches of neighbours in `current` (no mapping that stays
        // between them): one host call unmaps a whole batch, as type1 v2 and iommufd unmap
        // every mapping inside the range given.
        let mut batches: Vec<Vec<Run>> = Vec::new();
        let mut batching = false;
        let (mut si, mut ci) = (0, 0);
        for r in &current {
            while si < stale.len() && stale[si].end() <= r.iova {
                si += 1;
            }
            if stale.get(si).is_none_or(|s| s.iova >= r.end()) {
                batching = false;
                continue;
            }
            match batches.last_mut() {
                Some(batch) if batching => batch.push(*r),
                _ => batches.push(vec![*r]),
            }
            batching = true;
            while ci < cuts.len() && cuts[ci].1 <= r.iova {
                ci += 1;
            }
            // What is neither stale nor mapped anew by `fresh` is kept.
            let mut pos = r.iova;
            for &(lo, hi) in cuts[ci..].iter().take_while(|c| c.0 < r.end()) {
                if lo > pos {
                    remap.extend(clip(r, pos, lo));
                }
                pos = pos.max(hi);
            }
            if pos < r.end() {
                remap.extend(clip(r, pos, r.end()));
            }
        }
        for batch in batches {
            let (first, last) = (batch[0], batch[batch.len() - 1]);
            d.dma.unmap(first.iova, last.end() - first.iova)?;
            add(&self.counters.unmaps, 1);
            for r in batch {
                d.mapped.remove(&r.iova);
                add(&self.counters.unmapped_bytes, r.len);
            }
        }
        add(&self.counters.remaps, remap.len() as u64);
        remap.extend(fresh);
        remap.sort_by_key(|r| r.iova);
        let mut runs = Vec::new();
        for r in remap {
            push_run(&mut runs, r);
        }
        self.map_runs(d, runs)
    }

    fn map_runs(&self, d: &mut Device, runs: Vec<Run>) -> Result<(), HostIommuError> {
        for r in runs {
            if d.mapped.len() as u64 >= self.budget {
                return Err(HostIommuError::Unsupported(format!(
                    "more than {} host mappings",
                    self.budget
                )));
            }
            let perm = if r.write {
                DmaPerm::READ_WRITE
            } else {
                DmaPerm::READ
            };
            d.dma.map(r.iova, r.hva, r.len, perm)?;
            d.mapped.insert(r.iova, r);
            add(&self.counters.maps, 1);
            add(&self.counters.mapped_bytes, r.len);
        }
        Ok(())
    }

    fn unmap_all(&self, d: &mut Device) {
        for r in std::mem::take(&mut d.mapped).into_values() {
            match d.dma.unmap(r.iova, r.len) {
                Ok(_) => {
                    add(&self.counters.unmaps, 1);
                    add(&self.counters.unmapped_bytes, r.len);
                }
                Err(e) => {
                    warn!(target: "accel", device = %d.name, "cannot unmap {:#x}+{:#x}: {e}", r.iova, r.len)
                }
            }
        }
    }

    /// Blocks the device after a failure: counted, logged once, everything unmapped.
    fn fail(&self, d: &mut Device, why: &str) {
        add(&self.counters.failures, 1);
        if !d.logged {
            warn!(target: "accel", device = %d.name, "shadowed device: {why}; its DMA is blocked until the guest's next domain switch or replay");
            d.logged = true;
        }
        self.unmap_all(d);
        d.ranges.clear();
        d.failed = true;
    }

    fn process(&self, unit: &dyn UnitView) {
        let mut devices = self.lock();
        for (sid, d) in devices.iter_mut() {
            if d.reread || !d.ranges.is_empty() {
                self.sync(unit, *sid, d);
            }
        }
    }
}

/// The shadow's counters, under their field names (the VMM prefixes them `shadow_`).
impl CounterSource for Shadow {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        self.counters.visit(f);
    }
}

/// The host address of guest-physical `[gpa, gpa + len)` and whether it is writable, when
/// all of it is guest RAM.
fn hva(ram: &[RamRegion], gpa: u64, len: u64) -> Option<(u64, bool)> {
    let end = gpa.checked_add(len)?;
    ram.iter()
        .find(|r| gpa >= r.gpa && end <= r.gpa + r.len)
        .map(|r| (r.hva + (gpa - r.gpa), r.writable))
}

fn push_run(runs: &mut Vec<Run>, r: Run) {
    match runs.last_mut() {
        Some(last) if last.continues(&r) => last.len += r.len,
        _ => runs.push(r),
    }
}

fn clip(r: &Run, start: u64, end: u64) -> Option<Run> {
    let lo = r.iova.max(start);
    let hi = r.end().min(end);
    (hi > lo).then(|| Run {
        iova: lo,
        len: hi - lo,
        hva: r.hva + (lo - r.iova),
        write: r.write,
    })
}

/// Where `current` and `wanted` (sorted, non-overlapping) disagree: the current runs to drop
/// and the wanted runs to add. One pass over both lists.
fn diff(current: &[Run], wanted: &[Run]) -> (Vec<Run>, Vec<Run>) {
    let mut points: Vec<u64> = current
        .iter()
        .chain(wanted)
        .flat_map(|r| [r.iova, r.end()])
        .collect();
    points.sort_unstable();
    points.dedup();
    let (mut stale, mut fresh) = (Vec::new(), Vec::new());
    let (mut ci, mut wi) = (0, 0);
    for w in points.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        while ci < current.len() && current[ci].end() <= lo {
            ci += 1;
        }
        while wi < wanted.len() && wanted[wi].end() <= lo {
            wi += 1;
        }
        let c = current.get(ci).and_then(|r| clip(r, lo, hi));
        let n = wanted.get(wi).and_then(|r| clip(r, lo, hi));
        if c != n {
            if let Some(c) = c {
                push_run(&mut stale, c);
            }
            if let Some(n) = n {
                push_run(&mut fresh, n);
            }
        }
    }
    (stale, fresh)
}

fn page_range(addr: u64, am: u8) -> (u64, u64) {
    let len = 4096u64.checked_shl(u32::from(am)).unwrap_or(0);
    if len == 0 {
        return (0, u64::MAX);
    }
    let start = addr & !(len - 1);
    (start, start.saturating_add(len))
}

fn in_domain(d: &Device, did: u16) -> bool {
    matches!(d.tables, DeviceTables::SecondStage(t) if t.did == did)
}

impl InvalidationObserver for Shadow {
    fn invalidated(&self, _unit: &dyn UnitView, inv: &Invalidation) {
        match *inv {
            Invalidation::ContextGlobal
            | Invalidation::ContextDomain { .. }
            | Invalidation::ContextDevice { .. }
            | Invalidation::PasidCacheGlobal
            | Invalidation::PasidCacheDomain { .. }
            | Invalidation::PasidCachePasid { .. } => self.queue(|_| true, None),
            Invalidation::IotlbGlobal => self.queue(|_| true, Some((0, u64::MAX))),
            Invalidation::IotlbDomain { did } | Invalidation::PasidIotlbAll { did, .. } => {
                self.queue(|d| in_domain(d, did), Some((0, u64::MAX)));
            }
            Invalidation::IotlbPage { did, addr, am, .. }
            | Invalidation::PasidIotlbPage { did, addr, am, .. } => {
                self.queue(|d| in_domain(d, did), Some(page_range(addr, am)));
            }
        }
    }

    fn submission_done(&self, unit: &dyn UnitView) {
        self.process(unit);
    }

    fn root_or_translation_changed(&self, unit: &dyn UnitView) {
        self.queue(|_| true, None);
        self.process(unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(iova: u64, len: u64, hva: u64) -> Run {
        Run {
            iova,
            len,
            hva,
            write: true,
        }
    }

    #[test]
    fn diff_finds_only_what_changed() {
        let cur = [run(0x1000, 0x3000, 0x10_1000)];
        // Same mapping expressed as two runs: nothing to do.
        let want = [
            run(0x1000, 0x1000, 0x10_1000),
            run(0x2000, 0x2000, 0x10_2000),
        ];
        let mut coalesced = Vec::new();
        for r in want {
            push_run(&mut coalesced, r);
        }
        assert_eq!(diff(&cur, &coalesced), (vec![], vec![]));
        // The middle page points elsewhere now.
        let want = [
            run(0x1000, 0x1000, 0x10_1000),
            run(0x2000, 0x1000, 0x20_0000),
            run(0x3000, 0x1000, 0x10_3000),
        ];
        let (stale, fresh) = diff(&cur, &want);
        assert_eq!(stale, vec![run(0x2000, 0x1000, 0x10_2000)]);
        assert_eq!(fresh, vec![run(0x2000, 0x1000, 0x20_0000)]);
        assert_eq!(page_range(0x5000, 2), (0x4000, 0x8000));
        assert_eq!(page_range(0, 63), (0, u64::MAX));
    }
}
