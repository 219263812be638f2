//! A per-device view of a [`Remapper`] that has [`Generations`]: the device's few remembered pages in front of the
//! unit, served piece by piece to [`crate::dma_memory::DmaMemory`] (what the VMM uses) or as
//! vm-memory's [`vm_memory::Iommu`], so `vm_memory::IommuMemory` works unchanged too.
//!
//! ```text
//!  DmaMemory ─► DeviceIommu::translate_piece(iova, len, access)
//!  IommuMemory ─► DeviceIommu::translate(iova, len, access)
//!     remembered pages at the remapper's generation? (behind it: catch up — drop the pages
//!       Generations::stale_between names, or all) ─► page holding iova ─► hit
//!     else Remapper::remap_nearby(sid, iova) ─► Translation | Fault
//!       ─► remember the page, and up to NEARBY_PAGES pages the remap found next to it
//!          (tagged with the generation read before the remap)
//! ```
//!
//! **The remembered pages are exact.** They hold only translations the remapper returned, the
//! cache tagged with the remapper's [`Generations::generation`] read *before* it was asked. The
//! unit applies an invalidation, flush or root/TE change first and then bumps its generation,
//! logging what the bump makes stale, all before the guest can see the invalidation complete
//! (see [`crate::generation_log`] for why that order, and only it, is safe). A lookup at a newer
//! generation first drops every page that the bumps in between cover — the IOVA range of a
//! page-selective PASID-IOTLB invalidation, or everything for any other kind or when the log
//! no longer reaches back — so a translation is reused until the guest invalidates it (or
//! reprograms the unit), never after, while the queue's ring pages survive the strict-mode
//! flushes of other pages. A fill that raced a bump is remembered at its own (older)
//! generation and caught up like the rest; faults are never remembered. A write permission is
//! remembered only from a write access (the walk that served it set the D bit), or for a page
//! found nearby whose D bit was already set, so a later first write still goes to the unit.
//! Pages found nearby are the unit's (`Remapper::remap_nearby`: the other present, accessed
//! leaves of a walked leaf-table line, i.e. a request's other buffers), the [`NEARBY_PAGES`]
//! nearest kept, remembered before the page asked for. The cache holds [`CACHED_PAGES`] pages,
//! least recently used replaced first.
//!
//! A range is translated page by page, but a superpage or pass-through translation covers many
//! pages in one step; the number of steps is bounded by [`MAX_TRANSLATE_LEN`].

use crate::request::{Access, DmaRequest, Generations, Remapper, Translation};
use crate::sync::{RwLock, RwLockReadGuard};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use vm_memory::iommu::{Error, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};
use vtd_spec::SourceId;

/// The longest range one `translate` call accepts (1 GiB), so a guest-supplied descriptor
/// length cannot make a call walk an unbounded number of pages (at most 262,144 4 KiB pages).
pub const MAX_TRANSLATE_LEN: usize = 1 << 30;

/// Pages one device remembers (least recently used is replaced): a virtio queue's three ring
/// pages plus the few buffers of the request in progress.
pub const CACHED_PAGES: usize = 8;

/// A device's view of the vIOMMU: its requester id plus the unit it sits behind.
pub struct DeviceIommu {
    remapper: Arc<dyn Unit>,
    sid: SourceId,
    cache: RwLock<CachedIotlb>,
}

/// What a device's cache sits in front of: a [`Remapper`] with [`Generations`] (one trait
/// object for both).
trait Unit: Remapper + Generations {}

impl<T: Remapper + Generations> Unit for T {}

/// A device's remembered pages and the generation they are valid for (opaque; seen through
/// [`IotlbGuard`]). Each page has its own one-mapping `Iotlb`, so a lookup is a search of one
/// entry and a refill reuses the slot.
#[derive(Debug, Default)]
pub struct CachedIotlb {
    generation: u64,
    slots: [Slot; CACHED_PAGES],
    clock: AtomicU64,
}

impl Slot {
    /// The slot's page as a vm-memory `Iotlb` (empty if the slot is).
    fn iotlb(&self) -> &Iotlb {
        self.iotlb.get_or_init(|| {
            let mut iotlb = Iotlb::new();
            if let Some(perms) = self.perms {
                let len = (self.end - self.start) as usize;
                // Cannot fail for a page the slot holds; an empty map would only miss.
                let _ =
                    iotlb.set_mapping(GuestAddress(self.start), GuestAddress(self.gpa), len, perms);
            }
            iotlb
        })
    }

    fn forget(&mut self) {
        self.iotlb = OnceLock::new();
        self.perms = None;
        self.start = 0;
        self.end = 0;
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// The page as a one-mapping vm-memory `Iotlb`, built on first use by the `Iommu` path
    /// (the `DmaMemory` path never needs it).
    iotlb: OnceLock<Iotlb>,
    /// `[start, end)` of the page, or empty.
    start: u64,
    end: u64,
    /// Guest-physical address of `start`.
    gpa: u64,
    perms: Option<Permissions>,
    last_used: AtomicU64,
}

/// What `DeviceIommu`'s [`vm_memory::Iommu::translate`] hands vm-memory: one remembered page,
/// or a one-call `Iotlb` (a range over several pages, a page
/// just translated).
#[derive(Debug)]
pub enum IotlbGuard<'a> {
    /// The device's cache, read-locked while the iterator lives, and the slot that covers the
    /// range.
    Cached(RwLockReadGuard<'a, CachedIotlb>, usize),
    /// Mappings of this call only.
    Fresh(Iotlb),
}

impl Deref for IotlbGuard<'_> {
    type Target = Iotlb;
    fn deref(&self) -> &Iotlb {
        match self {
            IotlbGuard::Cached(guard, slot) => guard.slots[*slot % CACHED_PAGES].iotlb(),
            IotlbGuard::Fresh(iotlb) => iotlb,
        }
    }
}

impl DeviceIommu {
    /// The view of device `sid` behind `remapper`.
    pub fn new<R: Remapper + Generations + 'static>(remapper: Arc<R>, sid: SourceId) -> Self {
        Self {
            remapper: remapper as Arc<dyn Unit>,
            sid,
            cache: RwLock::new(CachedIotlb::default()),
        }
    }

    /// The remembered page covering `[start, end)` for `access`, if it is valid for
    /// `generation`.
    fn cached(
        &self,
        generation: u64,
        start: u64,
        end: u64,
        access: Permissions,
    ) -> Option<IotlbGuard<'_>> {
        let guard = self.current(generation)?;
        let slot = guard.slots.iter().position(|s| {
            s.start <= start && end <= s.end && s.perms.is_some_and(|p| allows(p, access))
        })?;
        let now = guard.clock.fetch_add(1, Ordering::Relaxed);
        guard.slots[slot].last_used.store(now, Ordering::Relaxed);
        Some(IotlbGuard::Cached(guard, slot))
    }

    /// The remembered pages, brought up to `generation` first if they are behind it; `None`
    /// if they are already ahead (the caller read an older generation: it must ask the
    /// remapper).
    #[inline]
    fn current(&self, generation: u64) -> Option<RwLockReadGuard<'_, CachedIotlb>> {
        let guard = self.cache.read().unwrap_or_else(|e| e.into_inner());
        if guard.generation == generation {
            return Some(guard);
        }
        let behind = guard.generation < generation;
        drop(guard);
        if !behind {
            return None;
        }
        self.catch_up_and_read(generation)
    }

    /// [`Self::current`] when the pages are behind `generation` (out of line: once per
    /// generation change, not per lookup).
    #[inline(never)]
    fn catch_up_and_read(&self, generation: u64) -> Option<RwLockReadGuard<'_, CachedIotlb>> {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation > generation {
            return None;
        }
        self.catch_up(&mut cache, generation);
        drop(cache);
        let guard = self.cache.read().unwrap_or_else(|e| e.into_inner());
        (guard.generation == generation).then_some(guard)
    }

    /// Moves the remembered pages from their generation to `generation` (not older): drops
    /// the pages the remapper says became stale in between, or all of them when it cannot
    /// tell.
    #[inline]
    fn catch_up(&self, cache: &mut CachedIotlb, generation: u64) {
        if cache.generation < generation {
            self.drop_stale(cache, generation);
        }
    }

    /// [`Self::catch_up`] when the pages are behind `generation` (out of line: once per
    /// generation change, not per lookup).
    #[inline(never)]
    fn drop_stale(&self, cache: &mut CachedIotlb, generation: u64) {
        let slots = &mut cache.slots;
        let known = self
            .remapper
            .stale_between(cache.generation, generation, &mut |stale| {
                for slot in slots.iter_mut() {
                    if slot.perms.is_some() && stale.covers(slot.start, slot.end) {
                        slot.forget();
                    }
                }
            });
        if !known {
            for slot in slots.iter_mut() {
                slot.forget();
            }
        }
        cache.generation = generation;
    }

    /// The remembered page holding `iova` for `access`, if valid for `generation`: the
    /// guest-physical address of `iova` and the bytes up to `end` or the page's end.
    fn cached_piece(
        &self,
        generation: u64,
        iova: u64,
        end: u64,
        access: Permissions,
    ) -> Option<(u64, usize)> {
        let guard = self.current(generation)?;
        let slot = guard.slots.iter().find(|s| {
            s.start <= iova && iova < s.end && s.perms.is_some_and(|p| allows(p, access))
        })?;
        let now = guard.clock.fetch_add(1, Ordering::Relaxed);
        slot.last_used.store(now, Ordering::Relaxed);
        let gpa = slot.gpa.wrapping_add(iova - slot.start);
        Some((gpa, (slot.end.min(end) - iova) as usize))
    }

    /// Remembers the pages of `mappings` (obtained after reading `generation`) unless the
    /// cache already follows a later generation.
    fn remember(&self, generation: u64, nearby: &Nearby, mappings: &[Mapping]) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation > generation {
            return;
        }
        self.catch_up(&mut cache, generation);
        // The pages asked for last: they are the most recently used.
        for m in nearby.pages.iter().flatten().chain(mappings) {
            let Some((start, gpa, len)) = m.page else {
                continue;
            };
            let now = cache.clock.fetch_add(1, Ordering::Relaxed);
            let victim = victim(&cache.slots, start);
            let slot = &mut cache.slots[victim];
            slot.iotlb = OnceLock::new();
            slot.start = start;
            slot.end = start + len as u64;
            slot.gpa = gpa;
            slot.perms = Some(m.perms);
            *slot.last_used.get_mut() = now;
        }
    }

    /// The requester id this view translates for.
    pub fn sid(&self) -> SourceId {
        self.sid
    }

    /// A single-DWORD write of `data` at `address` in the interrupt address range from this
    /// device: an interrupt request, not DMA ([`Remapper::interrupt`]). Returns whether it was
    /// delivered. (Writes through [`crate::dma_memory::DmaMemory`] are DMA: vm-memory writes
    /// into the translated slices, so a write there cannot become an interrupt and faults.)
    pub fn interrupt(&self, address: u64, data: u32) -> bool {
        self.remapper.interrupt(self.sid, address, data)
    }
}

/// The slot to (re)fill with the page at `start`: the slot already holding that page (e.g.
/// now with write permission), else the least recently used one, empty slots first (the
/// first of equals). One pass over the slots.
fn victim(slots: &[Slot; CACHED_PAGES], start: u64) -> usize {
    // Slot 0 ranks below this, so it is the victim unless a later slot ranks lower.
    let mut victim = 0;
    let mut victim_rank = u128::MAX;
    for (i, s) in slots.iter().enumerate() {
        let filled = s.perms.is_some();
        if filled && s.start == start {
            return i;
        }
        let rank = rank(filled, s.last_used.load(Ordering::Relaxed));
        if rank < victim_rank {
            victim = i;
            victim_rank = rank;
        }
    }
    victim
}

/// `(filled, last_used)` as one number ordered like the pair (one comparison per slot).
fn rank(filled: bool, last_used: u64) -> u128 {
    (u128::from(filled) << 64) | u128::from(last_used)
}

/// One translated piece of a requested range.
#[derive(Clone, Copy)]
struct Mapping {
    iova: u64,
    gpa: u64,
    len: usize,
    perms: Permissions,
    /// The page to remember: `(iova, gpa, len)` of the translated page (at most 1 GiB; the
    /// 4 KiB page around the piece for pass-through), if it does not end the address space.
    page: Option<(u64, u64, usize)>,
}

/// Pieces a request usually has (one page, or two when it straddles a boundary).
const USUAL_MAPPINGS: usize = 2;

/// Pages found next to a translated one ([`Remapper::remap_nearby`]) remembered along with it,
/// the nearest first: a request's other buffers. Fewer than half the cache, so a queue's ring
/// pages stay.
pub const NEARBY_PAGES: usize = 3;

/// The [`NEARBY_PAGES`] translations nearest `iova` among those a remap offered.
struct Nearby {
    iova: u64,
    pages: [Option<Mapping>; NEARBY_PAGES],
}

impl Nearby {
    fn new(iova: u64) -> Self {
        Self {
            iova,
            pages: [None; NEARBY_PAGES],
        }
    }

    /// Keeps `t` if there is room or it is nearer than the farthest kept.
    fn offer(&mut self, t: Translation) {
        let Some(page) = page_of(&t, t.iova_base) else {
            return;
        };
        let m = Mapping {
            iova: t.iova_base,
            gpa: t.gpa_base,
            len: page.2,
            perms: permissions_of(t.perms.read, t.perms.write),
            page: Some(page),
        };
        let distance = |m: &Option<Mapping>| m.map_or(u64::MAX, |m| m.iova.abs_diff(self.iova));
        let farthest = (0..NEARBY_PAGES)
            .max_by_key(|&i| distance(&self.pages[i]))
            .unwrap_or(0);
        if distance(&Some(m)) < distance(&self.pages[farthest]) {
            self.pages[farthest] = Some(m);
        }
    }
}

/// The page of `t` to remember for an access at `iova`.
fn page_of(t: &Translation, iova: u64) -> Option<(u64, u64, usize)> {
    const GIB: u64 = 1 << 30;
    let (base, size) = if t.size <= GIB && t.size >= 4096 {
        (t.iova_base, t.size)
    } else {
        (iova & !0xfff, 4096)
    };
    base.checked_add(size)?;
    Some((
        base,
        t.gpa_base.wrapping_add(base - t.iova_base),
        size as usize,
    ))
}

impl std::fmt::Debug for DeviceIommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIommu")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

/// `p.allow(access)`, inlined: both are bit sets (R = 1, W = 2).
#[inline]
fn allows(p: Permissions, access: Permissions) -> bool {
    (p as u8) & (access as u8) == access as u8
}

fn access_of(p: Permissions) -> Access {
    Access {
        read: matches!(p, Permissions::Read | Permissions::ReadWrite),
        write: matches!(p, Permissions::Write | Permissions::ReadWrite),
        execute: false,
        privileged: false,
    }
}

fn permissions_of(read: bool, write: bool) -> Permissions {
    match (read, write) {
        (false, false) => Permissions::No,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (true, true) => Permissions::ReadWrite,
    }
}

pub(crate) fn cannot_resolve(base: u64, length: usize, reason: String) -> Error {
    Error::CannotResolve {
        iova_range: IovaRange {
            base: GuestAddress(base),
            length,
        },
        reason,
    }
}

impl vm_memory::Iommu for DeviceIommu {
    type IotlbGuard<'a> = IotlbGuard<'a>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, Error> {
        let start = iova.0;
        if length > MAX_TRANSLATE_LEN {
            return Err(cannot_resolve(
                start,
                length,
                format!("longer than {MAX_TRANSLATE_LEN:#x} bytes"),
            ));
        }
        let end = start
            .checked_add(length as u64)
            .ok_or_else(|| cannot_resolve(start, length, "range wraps around".into()))?;
        // Read before any remap: whatever the remapper answers below is valid for it at best.
        let generation = self.remapper.generation();
        if let Some(guard) = self.cached(generation, start, end, access)
            && let Ok(hit) = Iotlb::lookup(guard, iova, length, access)
        {
            return Ok(hit);
        }
        let mut nearby = Nearby::new(start);
        let mappings = self.walk(start, end, access, &mut nearby)?;
        self.remember(generation, &nearby, &mappings);
        // Usually one page, now remembered: hand that out instead of building an `Iotlb`.
        if let Some(guard) = self.cached(generation, start, end, access)
            && let Ok(hit) = Iotlb::lookup(guard, iova, length, access)
        {
            return Ok(hit);
        }
        let mut tlb = Iotlb::new();
        for m in &mappings {
            tlb.set_mapping(GuestAddress(m.iova), GuestAddress(m.gpa), m.len, m.perms)?;
        }
        Iotlb::lookup(IotlbGuard::Fresh(tlb), iova, length, access).map_err(|fails| {
            let first = fails
                .access_fails
                .first()
                .or(fails.misses.first())
                .map(|r| r.base.0)
                .unwrap_or(start);
            cannot_resolve(first, length, "access not permitted".into())
        })
    }
}

impl DeviceIommu {
    /// Asks the remapper for every page of `[start, end)`; the pieces, or the first fault.
    /// `nearby` gets what the remapper found next to the first page.
    fn walk(
        &self,
        start: u64,
        end: u64,
        access: Permissions,
        nearby: &mut Nearby,
    ) -> Result<Vec<Mapping>, Error> {
        let length = (end - start) as usize;
        let mut mappings = Vec::with_capacity(USUAL_MAPPINGS);
        let mut cur = start;
        // Each step covers at least the rest of a 4 KiB page, so this bounds the loop even if
        // a remapper misbehaves.
        let max_steps = length / 4096 + 2;
        for _ in 0..max_steps {
            if cur >= end {
                break;
            }
            let m = if cur == start {
                self.remap_one(cur, end, access, &mut |t| nearby.offer(t))?
            } else {
                self.remap_one(cur, end, access, &mut |_| {})?
            };
            cur += m.len as u64;
            mappings.push(m);
        }
        if cur < end {
            return Err(cannot_resolve(
                cur,
                (end - cur) as usize,
                "too many steps".into(),
            ));
        }
        Ok(mappings)
    }

    /// Asks the remapper for `cur` (`cur < end`): the piece of `[cur, end)` its answer
    /// covers (at least one byte), or the fault; `nearby` gets what the remapper found next to
    /// it.
    fn remap_one(
        &self,
        cur: u64,
        end: u64,
        access: Permissions,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Mapping, Error> {
        let req_access = access_of(access);
        let req = DmaRequest {
            sid: self.sid,
            pasid: None,
            iova: cur,
            access: req_access,
        };
        let t = self
            .remapper
            .remap_nearby(&req, nearby)
            .map_err(|f| cannot_resolve(cur, (end - cur) as usize, f.reason.to_string()))?;
        let page_end = t.iova_base.saturating_add(t.size);
        if cur < t.iova_base || cur >= page_end {
            return Err(cannot_resolve(
                cur,
                (end - cur) as usize,
                "translation does not cover the address".into(),
            ));
        }
        let chunk_end = page_end.min(end);
        Ok(Mapping {
            iova: cur,
            gpa: t.gpa_base.wrapping_add(cur - t.iova_base),
            len: (chunk_end - cur) as usize,
            // Write only as far as this access wrote (the unit set D for it).
            perms: permissions_of(t.perms.read, t.perms.write && req_access.write),
            page: page_of(&t, cur),
        })
    }

    /// Translates the start of `[iova, iova + len)` for `access`, for [`crate::dma_memory`]:
    /// the guest-physical address of `iova` and how many bytes from there (at least 1, at
    /// most `len`) are contiguous with that permission. Served from the device's remembered
    /// pages while the remapper's generation is unchanged, else by one remap (remembered).
    pub fn translate_piece(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(u64, usize), Error> {
        let end = iova
            .checked_add(len as u64)
            .filter(|&end| end > iova)
            .ok_or_else(|| cannot_resolve(iova, len, "empty or wrapping range".into()))?;
        // Read before any remap: whatever the remapper answers below is valid for it at best.
        let generation = self.remapper.generation();
        if let Some(hit) = self.cached_piece(generation, iova, end, access) {
            return Ok(hit);
        }
        // One remap covers the rest of the translated page (a superpage in one step), and may
        // bring the pages next to it: remembered too, before it (it is the most recent).
        let mut nearby = Nearby::new(iova);
        let m = self.remap_one(iova, end, access, &mut |t| nearby.offer(t))?;
        self.remember(generation, &nearby, std::slice::from_ref(&m));
        Ok((m.gpa, m.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replacement rule spelled out in two passes: the slot holding the page, else the
    /// first slot of least `(filled, last_used)`.
    fn reference_victim(slots: &[Slot; CACHED_PAGES], start: u64) -> usize {
        slots
            .iter()
            .position(|s| s.start == start && s.perms.is_some())
            .or_else(|| {
                (0..CACHED_PAGES).min_by_key(|&i| {
                    let s = &slots[i];
                    (s.perms.is_some(), s.last_used.load(Ordering::Relaxed))
                })
            })
            .unwrap_or(0)
    }

    #[test]
    fn allows_is_vm_memorys_allow() {
        use Permissions::*;
        for p in [No, Read, Write, ReadWrite] {
            for access in [No, Read, Write, ReadWrite] {
                assert_eq!(allows(p, access), p.allow(access), "{p:?} {access:?}");
            }
        }
    }

    #[test]
    fn victim_matches_the_two_pass_rule() {
        // A small deterministic generator: slot contents drawn from few values so that
        // ties, empty slots and repeated pages all occur.
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut slots: [Slot; CACHED_PAGES] = Default::default();
            for s in slots.iter_mut() {
                let r = next();
                s.start = (r % 4) << 12;
                s.end = s.start + 4096;
                s.perms = match (r >> 8) % 3 {
                    0 => None,
                    1 => Some(Permissions::Read),
                    _ => Some(Permissions::ReadWrite),
                };
                *s.last_used.get_mut() = match (r >> 16) % 4 {
                    3 => u64::MAX,
                    v => v,
                };
            }
            let start = (next() % 5) << 12;
            assert_eq!(victim(&slots, start), reference_victim(&slots, start));
        }
    }
}
