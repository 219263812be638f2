//! What a shadow of a device's DMA tables needs from the translator (a passthrough device on a
//! host IOMMU that cannot nest): how the device's requests without PASID are translated, and
//! the second-stage leaves over a range, read straight from guest memory (no cache is used
//! or filled: the shadow runs after the guest's invalidation, on the tables as they are now).
//!
//! ```text
//!  device_tables(sid) ─► TE off ──────────────────────────────► Identity
//!                        legacy context: TT=PT ───────────────► Identity
//!                                        TT=00/01 ────────────► SecondStage(tables, DID)
//!                        scalable RID_PASID entry: PGTT=PT ───► Identity
//!                                                  PGTT=SS ───► SecondStage(tables, DID)
//!                                                  PGTT=FS ───► FirstStage (cannot shadow)
//!                        anything absent or invalid ──────────► Blocked
//!  SecondStageTables::walk(range) ─► walk::second_stage::walk_range (the walker's checks)
//! ```

use super::UnitState;
use super::tables::{self, Context};
use super::walk::second_stage::{self, SsFaults, SsWalk};
use crate::memory::GuestRam;
use vtd_spec::SourceId;
use vtd_spec::context::TranslationType;
use vtd_spec::pasid::Pgtt;
use vtd_spec::regs::TranslationTableMode;

pub use super::walk::second_stage::{SsRangeLeaf, SsRangeWalk};

/// A device's second-stage tables as its context or PASID entry points at them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondStageTables {
    /// The domain id of the entry.
    pub did: u16,
    walk: SsWalkKey,
}

/// The walk parameters, comparable (a change means a domain switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SsWalkKey {
    root: u64,
    levels: u32,
    haw: u32,
    sllps: u8,
    snoop: bool,
    execute: bool,
    legacy: bool,
}

impl SecondStageTables {
    /// The top-level table.
    pub fn root(&self) -> u64 {
        self.walk.root
    }

    /// Visits the present leaves overlapping `[start, end)`, reading at most `budget` entries.
    pub fn walk(
        &self,
        ram: &dyn GuestRam,
        start: u64,
        end: u64,
        budget: u64,
        visit: &mut dyn FnMut(SsRangeLeaf),
    ) -> SsRangeWalk {
        let k = self.walk;
        let w = SsWalk {
            root: k.root,
            levels: k.levels,
            haw: k.haw,
            sllps: k.sllps,
            snoop: k.snoop,
            execute: k.execute,
            ad: false,
            faults: if k.legacy {
                SsFaults::LEGACY
            } else {
                SsFaults::SCALABLE
            },
        };
        second_stage::walk_range(ram, &w, start, end, budget, visit)
    }
}

/// How a device's requests without PASID are translated now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTables {
    /// Untranslated: translation off, or a pass-through entry (its DID, if any).
    Identity(Option<u16>),
    /// Second-stage tables.
    SecondStage(SecondStageTables),
    /// First-stage tables (domain id): a shadow cannot follow them.
    FirstStage(u16),
    /// No valid entry: the device's DMA faults.
    Blocked,
}

/// Resolves `sid`'s translation from guest memory under `state`.
pub fn device_tables(ram: &dyn GuestRam, state: &UnitState, sid: SourceId) -> DeviceTables {
    if !state.translation_enabled {
        return DeviceTables::Identity(None);
    }
    let haw = tables::host_address_width(state.cap);
    let key = |root, levels, execute, legacy| SsWalkKey {
        root,
        levels,
        haw,
        sllps: state.cap.sllps(),
        snoop: state.ecap.sc(),
        execute,
        legacy,
    };
    match tables::read_context(ram, state.root, state.cap, state.ecap, sid) {
        Ok(Context::Legacy(ce)) => match ce.lo.tt() {
            TranslationType::PassThrough => DeviceTables::Identity(Some(ce.hi.did())),
            TranslationType::Untranslated | TranslationType::DeviceTlb => {
                match tables::supported_ss_levels(state.cap, ce.hi.aw()) {
                    Some(levels) => DeviceTables::SecondStage(SecondStageTables {
                        did: ce.hi.did(),
                        walk: key(ce.second_stage_table(), levels, true, true),
                    }),
                    None => DeviceTables::Blocked,
                }
            }
            _ => DeviceTables::Blocked,
        },
        Ok(Context::Scalable(ce)) => {
            if state.root.ttm() != TranslationTableMode::Scalable {
                return DeviceTables::Blocked;
            }
            let Ok((pe, _)) = tables::read_pasid_entry_raw(ram, haw, &ce, ce.hi.rid_pasid()) else {
                return DeviceTables::Blocked;
            };
            if tables::check_pasid_entry(&pe, state.cap, state.ecap, false).is_err() {
                return DeviceTables::Blocked;
            }
            let did = pe.qw1.did();
            match pe.qw0.pgtt() {
                Pgtt::PassThrough => DeviceTables::Identity(Some(did)),
                Pgtt::FirstStage => DeviceTables::FirstStage(did),
                Pgtt::SecondStage => {
                    let root = pe.second_stage_table();
                    match tables::supported_ss_levels(state.cap, pe.qw0.aw()) {
                        Some(levels) if !vtd_spec::beyond_haw(root, haw) => {
                            DeviceTables::SecondStage(SecondStageTables {
                                did,
                                walk: key(root, levels, pe.qw0.ssee(), false),
                            })
                        }
                        _ => DeviceTables::Blocked,
                    }
                }
                Pgtt::Nested | Pgtt::Reserved(_) => DeviceTables::Blocked,
            }
        }
        Err(_) => DeviceTables::Blocked,
    }
}
