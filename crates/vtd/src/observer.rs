//! The seam for passthrough devices: whoever keeps a host IOMMU in sync with what the guest
//! programmed registers an [`InvalidationObserver`] with the unit and is told, in order, about
//! every invalidation the guest requested, the end of each queue submission, every change of
//! the root table pointer or of translation enable, and every change of interrupt remapping
//! (interrupt-entry-cache invalidations, SIRTP, IRE, CFI).
//!
//! Observers are called on the vCPU thread that made the MMIO access, **with no lock of the unit
//! held**, after the unit's own caches have applied the same invalidation. They may read the
//! unit's state and PASID entries through the [`UnitView`] they are given; they must not write
//! the unit's registers from inside a callback.

use crate::invalidation::Invalidation;
use crate::request::Fault;
use crate::translate::UnitState;
use crate::translate::shadow_view::{DeviceTables, SecondStageTables, SsRangeLeaf, SsRangeWalk};
use vtd_spec::SourceId;
use vtd_spec::pasid::PasidEntry;

/// Read access to the unit for observers.
pub trait UnitView {
    /// The state translation currently uses (root pointer latched at SRTP, TE, CAP, ECAP).
    fn state(&self) -> UnitState;
    /// Reads the PASID table entry `(sid, pasid)` through the guest's current tables, with the
    /// unit's PASID cache.
    fn read_pasid_entry(&self, sid: SourceId, pasid: u32) -> Result<PasidEntry, Fault>;
    /// How `sid`'s requests without PASID are translated now, read from guest memory.
    fn device_tables(&self, sid: SourceId) -> DeviceTables;
    /// Visits the present second-stage leaves of `tables` overlapping `[start, end)`, reading
    /// at most `budget` paging entries from guest memory.
    fn walk_second_stage(
        &self,
        tables: &SecondStageTables,
        start: u64,
        end: u64,
        budget: u64,
        visit: &mut dyn FnMut(SsRangeLeaf),
    ) -> SsRangeWalk;
}

/// Told about the guest's invalidations and translation changes (see the module docs).
pub trait InvalidationObserver: Send + Sync {
    /// One invalidation, from a queue descriptor or from the CCMD / IOTLB registers.
    fn invalidated(&self, unit: &dyn UnitView, inv: &Invalidation);
    /// The end of one batch: every invalidation before the next wait descriptor (or up to the
    /// tail, or of one register command) has been reported. Called *before* that wait's status
    /// word is written, so invalidations forwarded here (e.g. to the host IOMMU) are complete
    /// when the guest sees the wait complete. Not called for a batch with no invalidation.
    fn submission_done(&self, unit: &dyn UnitView);
    /// SRTP latched a root table pointer, or TE changed: bindings must be replayed.
    fn root_or_translation_changed(&self, unit: &dyn UnitView);
    /// Interrupt remapping may now treat some request differently: an interrupt-entry-cache
    /// invalidation (global or index-selective) was applied — called before the next wait
    /// descriptor completes — or SIRTP, IRE or CFI was written, or the unit was reset. Whoever
    /// keeps interrupt routes derived from [`crate::Vtd::remap_interrupt`] re-evaluates them.
    fn interrupt_entries_changed(&self) {}
}
