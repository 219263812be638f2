//! The second-stage walk (§3.7, §9.8): 3, 4 or 5 levels, superpages per CAP.SLLPS, R/W
//! permissions ANDed over the levels, and A/D updates when the PASID entry enables them
//! (SSADE). The same walk serves legacy mode and scalable mode; only the fault reasons differ
//! ([`SsFaults::LEGACY`], [`SsFaults::SCALABLE`]).
//!
//! ```text
//!  SSPTPTR ─► SL-PML5E? ─► SL-PML4E ─► SL-PDPE ─┬─► 1 GiB (PS=1, SLLPS bit 1)
//!                                              └─► SL-PDE ─┬─► 2 MiB (PS=1, SLLPS bit 0)
//!                                                          └─► SL-PTE ─► 4 KiB
//! ```

use super::{Stop, set_flags, with_retries};
use crate::memory::GuestRam;
use crate::request::Access;
use vtd_spec::fault::FaultReason;
use vtd_spec::pte::{SecondStagePte, table_index};

/// The fault reasons a second-stage walk reports, per mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SsFaults {
    /// Input address beyond the adjusted guest address width.
    pub(crate) beyond: FaultReason,
    /// A paging entry could not be read.
    pub(crate) access: FaultReason,
    /// R and W both clear, for a read.
    pub(crate) not_present_read: FaultReason,
    /// R and W both clear, for a write.
    pub(crate) not_present_write: FaultReason,
    /// A reserved bit is set.
    pub(crate) reserved: FaultReason,
    /// Read without R.
    pub(crate) read: FaultReason,
    /// Write without W.
    pub(crate) write: FaultReason,
    /// Output address in the interrupt range (§3.15).
    pub(crate) interrupt: FaultReason,
}

impl SsFaults {
    /// Legacy mode (§7.1.3): a non-present entry is a read or write fault.
    pub(crate) const LEGACY: SsFaults = SsFaults {
        beyond: FaultReason::AddressBeyondAgaw,
        access: FaultReason::PagingEntryAccess,
        not_present_read: FaultReason::ReadDenied,
        not_present_write: FaultReason::WriteDenied,
        reserved: FaultReason::PagingEntryReserved,
        read: FaultReason::ReadDenied,
        write: FaultReason::WriteDenied,
        interrupt: FaultReason::InterruptAddress,
    };
    /// Scalable mode (§7.1.3, SM reasons).
    pub(crate) const SCALABLE: SsFaults = SsFaults {
        beyond: FaultReason::SmSecondStageBeyondMax,
        access: FaultReason::SmSecondStageAccess,
        not_present_read: FaultReason::SmSecondStageNotPresent,
        not_present_write: FaultReason::SmSecondStageNotPresent,
        reserved: FaultReason::SmSecondStageReserved,
        read: FaultReason::SmReadDenied,
        write: FaultReason::SmWriteDenied,
        interrupt: FaultReason::SmInvalidInterruptAddress,
    };
}

/// Where and how to walk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SsWalk {
    /// SSPTPTR: the top-level table.
    pub(crate) root: u64,
    /// 3, 4 or 5.
    pub(crate) levels: u32,
    /// Host address width.
    pub(crate) haw: u32,
    /// CAP.SLLPS.
    pub(crate) sllps: u8,
    /// ECAP.SC: SNP allowed in leaves.
    pub(crate) snoop: bool,
    /// X allowed (SSEE; legacy entries have no SSEE and do not reserve X).
    pub(crate) execute: bool,
    /// Set A/D (SSADE).
    pub(crate) ad: bool,
    /// Fault reasons.
    pub(crate) faults: SsFaults,
}

/// The leaf a walk ended at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SsLeaf {
    /// Guest-physical base of the page.
    pub(crate) page: u64,
    /// 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB).
    pub(crate) level: u32,
    /// R over all levels.
    pub(crate) read: bool,
    /// W over all levels.
    pub(crate) write: bool,
    /// A write needs no D update.
    pub(crate) dirty_ok: bool,
}

/// Walks the second-stage tables for `iova` and checks `access`.
pub(crate) fn walk(
    ram: &dyn GuestRam,
    w: &SsWalk,
    iova: u64,
    access: Access,
) -> Result<SsLeaf, FaultReason> {
    let width = (12 + 9 * w.levels).min(w.haw);
    if width < 64 && iova >> width != 0 {
        return Err(w.faults.beyond);
    }
    with_retries(w.faults.access, || walk_once(ram, w, iova, access))
}

fn walk_once(ram: &dyn GuestRam, w: &SsWalk, iova: u64, access: Access) -> Result<SsLeaf, Stop> {
    let f = w.faults;
    let accessed = SecondStagePte::new().with_accessed(true).into_bits();
    let dirty = SecondStagePte::new().with_dirty(true).into_bits();
    let mut table = w.root;
    let (mut read, mut write) = (true, true);
    for level in (1..=w.levels).rev() {
        let addr = table + table_index(iova, level) * 8;
        let raw = ram.read_u64(addr).map_err(|_| f.access)?;
        let pte = SecondStagePte::from_bits(raw);
        tracing::trace!(target: "vtd", level, addr, pte = raw, "vtd_ss_page_walk_level");
        if !pte.present() {
            let r = if access.write {
                f.not_present_write
            } else {
                f.not_present_read
            };
            return Err(r.into());
        }
        if raw & pte.reserved_mask(level, w.haw, w.sllps, w.snoop, w.execute) != 0 {
            return Err(f.reserved.into());
        }
        read &= pte.read();
        write &= pte.write();
        if access.read && !read {
            return Err(f.read.into());
        }
        if access.write && !write {
            return Err(f.write.into());
        }
        let leaf = pte.is_leaf(level);
        let mut now = raw;
        if w.ad {
            let bits = if leaf && access.write {
                accessed | dirty
            } else {
                accessed
            };
            now = set_flags(ram, addr, raw, bits, f.access)?;
        }
        if leaf {
            let now = SecondStagePte::from_bits(now);
            return Ok(SsLeaf {
                page: pte.output_address(level),
                level,
                read,
                write,
                dirty_ok: !w.ad || now.dirty() || !now.write(),
            });
        }
        table = pte.next_table();
    }
    Err(f.not_present_read.into())
}

/// A leaf met by [`walk_range`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsRangeLeaf {
    /// Input (IOVA) base of the page.
    pub iova: u64,
    /// Guest-physical base of the page.
    pub gpa: u64,
    /// Page size in bytes (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// R over all levels.
    pub read: bool,
    /// W over all levels.
    pub write: bool,
}

/// What a range walk found besides its leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SsRangeWalk {
    /// Paging entries read.
    pub entries: u64,
    /// Entries that would fault a translation (reserved bits, unreadable): nothing is mapped
    /// below them.
    pub faults: u64,
    /// The walk stopped because it read `budget` entries.
    pub over_budget: bool,
}

/// Visits every present leaf of the second-stage tables that maps a page overlapping
/// `[start, end)`, in IOVA order, with the same entry checks as [`walk`] (present, reserved
/// bits, R/W over the levels; no A/D updates). Non-present entries skip their whole range, so
/// the cost is the number of entries read, at most `budget` (a guest can make tables alias
/// each other and map far more than its RAM).
pub(crate) fn walk_range(
    ram: &dyn GuestRam,
    w: &SsWalk,
    start: u64,
    end: u64,
    budget: u64,
    visit: &mut dyn FnMut(SsRangeLeaf),
) -> SsRangeWalk {
    let width = (12 + 9 * w.levels).min(w.haw);
    let end = if width < 64 { end.min(1 << width) } else { end };
    let mut out = SsRangeWalk::default();
    if start < end {
        range_level(
            ram,
            w,
            w.root,
            w.levels,
            (start, end),
            (true, true),
            budget,
            &mut out,
            visit,
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn range_level(
    ram: &dyn GuestRam,
    w: &SsWalk,
    table: u64,
    level: u32,
    (start, end): (u64, u64),
    (read, write): (bool, bool),
    budget: u64,
    out: &mut SsRangeWalk,
    visit: &mut dyn FnMut(SsRangeLeaf),
) {
    let size = vtd_spec::pte::level_size(level);
    let mut iova = start & !(size - 1);
    while iova < end {
        if out.entries >= budget {
            out.over_budget = true;
            return;
        }
        out.entries += 1;
        let addr = table + table_index(iova, level) * 8;
        let next = iova.checked_add(size);
        let Ok(raw) = ram.read_u64(addr) else {
            out.faults += 1;
            match next {
                Some(n) => iova = n,
                None => return,
            }
            continue;
        };
        let pte = SecondStagePte::from_bits(raw);
        if pte.present() {
            if raw & pte.reserved_mask(level, w.haw, w.sllps, w.snoop, w.execute) != 0 {
                out.faults += 1;
            } else {
                let (r, wr) = (read && pte.read(), write && pte.write());
                if pte.is_leaf(level) {
                    visit(SsRangeLeaf {
                        iova,
                        gpa: pte.output_address(level),
                        size,
                        read: r,
                        write: wr,
                    });
                } else if r || wr {
                    let lo = start.max(iova);
                    let hi = next.map_or(end, |n| end.min(n));
                    range_level(
                        ram,
                        w,
                        pte.next_table(),
                        level - 1,
                        (lo, hi),
                        (r, wr),
                        budget,
                        out,
                        visit,
                    );
                    if out.over_budget {
                        return;
                    }
                }
            }
        }
        match next {
            Some(n) => iova = n,
            None => return,
        }
    }
}
