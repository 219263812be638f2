//! The first-stage walk (§3.6): IA-32e paging structures, 4 or 5 levels, with the permission
//! rules of §3.6.2 and the accessed/dirty updates of §3.6.3.
//!
//! ```text
//!  FSPTPTR ─► PML5E? ─► PML4E ─► PDPE ─┬─► 1 GiB page   (PS=1, needs CAP.FS1GP)
//!                                      └─► PDE ─┬─► 2 MiB page (PS=1)
//!                                               └─► PTE ─► 4 KiB page
//!  every entry used: A (and EA with EAFE);   the leaf on a write through R/W=1: D
//! ```
//!
//! A walk may start from a cached leaf table (`leaf_tables.rs`): it then reads only the PTE,
//! with the rights the cached chain grants. A walk that passes through a PDE pointing to a
//! table reports that table and the rights above it, for the caller to cache.

use super::{Stop, set_flags, with_retries};
use crate::memory::GuestRam;
use crate::request::Access;
use crate::translate::leaf_tables::LeafTable;
use vtd_spec::fault::FaultReason;
use vtd_spec::pte::{FirstStagePte, FirstStageReserved, table_index};
use vtd_spec::rights::{FsControls, FsRights};

/// Where and how to walk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FsWalk {
    /// FSPTPTR: the top-level table.
    pub(crate) root: u64,
    /// 4 or 5.
    pub(crate) levels: u32,
    /// Host address width (for the input-address check).
    pub(crate) haw: u32,
    /// PASID-entry controls.
    pub(crate) controls: FsControls,
    /// The reserved-bit masks of this walk's entries (host address width, CAP.FS1GP).
    reserved: FirstStageReserved,
}

impl FsWalk {
    /// A walk from `root` with `levels`, for a unit of host address width `haw` and
    /// CAP.FS1GP `fs1gp`, under the PASID entry's `controls`.
    pub(crate) fn new(root: u64, levels: u32, haw: u32, fs1gp: bool, controls: FsControls) -> Self {
        Self {
            root,
            levels,
            haw,
            controls,
            reserved: FirstStageReserved::new(haw, fs1gp),
        }
    }
}

/// The leaf a walk ended at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FsLeaf {
    /// Guest-physical base of the page.
    pub(crate) page: u64,
    /// 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB).
    pub(crate) level: u32,
    /// Accumulated rights.
    pub(crate) rights: FsRights,
    /// A write needs no D update: D is set, or the leaf is not writable.
    pub(crate) dirty_ok: bool,
}

/// Checks the input address: canonical for the paging mode (0x80), and within the host address
/// width when the paging mode is wider (0x83).
pub(crate) fn check_address(iova: u64, levels: u32, haw: u32) -> Result<(), FaultReason> {
    let width = 12 + 9 * levels.clamp(4, 5);
    let shift = 64 - width;
    let canonical = (((iova << shift) as i64) >> shift) as u64;
    if canonical != iova {
        return Err(FaultReason::SmNonCanonical);
    }
    // The magnitude of a canonical address: the address itself in the lower half, its
    // complement in the upper half.
    let magnitude = if (iova as i64) < 0 { !iova } else { iova };
    if haw < width && (magnitude >> haw.saturating_sub(1)) != 0 {
        return Err(FaultReason::SmBeyondHardwareMax);
    }
    Ok(())
}

/// Walks the first-stage tables for `iova`, checking every entry and the access, and sets A/D.
/// The caller has already run `FsControls::check_request` and [`check_address`]. With `cached`, the walk
/// starts at that leaf table (the chain above it was checked when it was cached). Returns the
/// leaf, and the leaf table this walk reached through a PDE (never when it started from
/// `cached`, or ended at a superpage).
pub(crate) fn walk(
    ram: &dyn GuestRam,
    w: &FsWalk,
    iova: u64,
    access: Access,
    privileged: bool,
    cached: Option<LeafTable>,
) -> Result<(FsLeaf, Option<LeafTable>), FaultReason> {
    with_retries(FaultReason::SmFirstStageBitUpdateFailed, || {
        walk_once(ram, w, iova, access, privileged, cached)
    })
}

/// An A/D update could not be made (SFS.10): the entry is no longer in RAM, or the guest kept
/// changing it under us.
const UPDATE_FAILED: FaultReason = FaultReason::SmFirstStageBitUpdateFailed;

/// The A flag of a first-stage entry.
const ACCESSED: u64 = FirstStagePte::new().with_accessed(true).into_bits();
/// The EA flag of a first-stage entry (set along with A under EAFE).
const EXTENDED_ACCESSED: u64 = FirstStagePte::new().with_ea(true).into_bits();
/// The D flag of a first-stage entry.
const DIRTY: u64 = FirstStagePte::new().with_dirty(true).into_bits();

/// 4 KiB leaves sharing one 64-byte line of a leaf table: what [`line_neighbours`] looks at.
pub(crate) const LINE_ENTRIES: u64 = 8;

/// The other present 4 KiB leaves in the 64-byte line of `chain`'s leaf table that holds
/// `iova`'s entry, as (input page, leaf), for the caller to cache along with `iova`'s (the
/// line costs one read; the entries next to a fresh mapping are usually the request's other
/// buffers). Only entries a walk would accept and that need no update are returned: present,
/// no reserved bit set, the accessed flag (and EA under EAFE) already set, so nothing is
/// written for a page no request asked for. Each entry is read again atomically before use:
/// the line copy may catch one the guest is writing.
pub(crate) fn line_neighbours(
    ram: &dyn GuestRam,
    w: &FsWalk,
    chain: LeafTable,
    iova: u64,
) -> [Option<(u64, FsLeaf)>; LINE_ENTRIES as usize] {
    let mut out = [None; LINE_ENTRIES as usize];
    let index = table_index(iova, 1);
    let first = index & !(LINE_ENTRIES - 1);
    let mut line = [0u8; 8 * LINE_ENTRIES as usize];
    if ram.read_at(chain.table + first * 8, &mut line).is_err() {
        return out;
    }
    let accessed = if w.controls.eafe() {
        ACCESSED | EXTENDED_ACCESSED
    } else {
        ACCESSED
    };
    let page_of = |i: u64| (iova & !0xfff & !((LINE_ENTRIES << 12) - 1)) | (i << 12);
    for (i, bytes) in (0..LINE_ENTRIES).zip(line.chunks_exact(8)) {
        let seen = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
        if first + i == index || !FirstStagePte::from_bits(seen).present() {
            continue;
        }
        let Ok(raw) = ram.read_u64(chain.table + (first + i) * 8) else {
            continue;
        };
        let pte = FirstStagePte::from_bits(raw);
        if !pte.present() || raw & w.reserved.mask(pte, 1) != 0 || raw & accessed != accessed {
            continue;
        }
        let rights = chain.rights.through(pte, w.controls);
        let leaf = FsLeaf {
            page: pte.output_address(1),
            level: 1,
            rights,
            dirty_ok: pte.dirty() || !pte.rw(),
        };
        out[i as usize] = Some((page_of(i), leaf));
    }
    out
}

/// One attempt of [`walk`].
fn walk_once(
    ram: &dyn GuestRam,
    w: &FsWalk,
    iova: u64,
    access: Access,
    privileged: bool,
    cached: Option<LeafTable>,
) -> Result<(FsLeaf, Option<LeafTable>), Stop> {
    let c = w.controls;
    let accessed = if c.eafe() {
        ACCESSED | EXTENDED_ACCESSED
    } else {
        ACCESSED
    };
    let dirty = DIRTY;
    let top = w.levels;
    let (start, mut table, mut rights) = match cached {
        Some(c) => (1, c.table, c.rights),
        None => (top, w.root, FsRights::ALL),
    };
    let mut reached = None;
    for level in (1..=start).rev() {
        let access_fault = if level == top {
            FaultReason::SmFirstStageRootAccess
        } else {
            FaultReason::SmFirstStageAccess
        };
        let addr = table + table_index(iova, level) * 8;
        let raw = ram.read_u64(addr).map_err(|_| access_fault)?;
        let pte = FirstStagePte::from_bits(raw);
        tracing::trace!(target: "vtd", level, addr, pte = raw, "vtd_fs_page_walk_level");
        if !pte.present() {
            return Err(FaultReason::SmFirstStageNotPresent.into());
        }
        if raw & w.reserved.mask(pte, level) != 0 {
            return Err(FaultReason::SmFirstStageReserved.into());
        }
        rights = rights.through(pte, c);
        if pte.is_leaf(level) {
            rights.check(c, access.first_stage(privileged))?;
            // D only for a write through a writable leaf, in the same update as A.
            let bits = if access.write && pte.rw() {
                accessed | dirty
            } else {
                accessed
            };
            let now = FirstStagePte::from_bits(set_flags(ram, addr, raw, bits, UPDATE_FAILED)?);
            let leaf = FsLeaf {
                page: pte.output_address(level),
                level,
                rights,
                dirty_ok: now.dirty() || !now.rw(),
            };
            return Ok((leaf, reached));
        }
        set_flags(ram, addr, raw, accessed, UPDATE_FAILED)?;
        table = pte.next_table();
        if level == 2 {
            reached = Some(LeafTable { table, rights });
        }
    }
    // Level 1 is always a leaf, so the loop returns; this keeps the function total.
    Err(FaultReason::SmFirstStageNotPresent.into())
}
