//! One passthrough device's binding: what the host IOMMU currently does with its DMA, and the
//! transition to what the guest's tables ask for.

use crate::counters::{AccelCounters, add, bump};
use host_iommu::{
    DeviceAttachment, HostIommuError, NestParentHwpt, VtdS1HwptData, VtdS1Invalidation,
};
use std::sync::Arc;
use tracing::{info, warn};
use vtd_spec::SourceId;

/// More queued invalidations than this for one device in one submission collapse into a single
/// "invalidate everything" (bounded memory whatever the guest submits).
const MAX_QUEUED: usize = 64;

/// What the guest's programming asks the host to do with a device's DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Stage 1 = the guest's first-stage table, nested over the stage-2 parent.
    Nested {
        /// The table as handed to the host.
        data: VtdS1HwptData,
        /// The domain id in the guest's PASID entry.
        did: u16,
    },
    /// Stage 2 only (GPA = IOVA): translation off, or a pass-through PASID entry.
    Stage2 {
        /// The domain id of a pass-through PASID entry; `None` when translation is off.
        did: Option<u16>,
    },
    /// No DMA.
    Blocked(BlockReason),
}

impl Target {
    /// The guest domain the target comes from, if any.
    pub fn did(&self) -> Option<u16> {
        match *self {
            Self::Nested { did, .. } => Some(did),
            Self::Stage2 { did } => did,
            Self::Blocked(_) => None,
        }
    }
}

/// Why a device's DMA is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// The PASID entry (or an entry on the way to it) is not present.
    NoEntry,
    /// The PASID entry asks for a translation type the host cannot nest (second stage, nested,
    /// reserved) or has a reserved paging mode.
    Unsupported,
    /// Legacy-mode translation is on: its second-stage tables are not shadowed.
    LegacyMode,
    /// A host operation failed; the next successful sync restores the device.
    HostFailure,
}

/// What the host does for one device and with which host objects (see [`crate::Accel::bindings`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingView {
    /// The device's name.
    pub name: String,
    /// What the host does with its DMA.
    pub target: Target,
    /// The stage-2 nest parent HWPT.
    pub parent_hwpt: host_iommu::HwptId,
    /// The nested HWPT the device is attached to, when it is.
    pub nested_hwpt: Option<host_iommu::HwptId>,
}

/// One device's binding.
#[derive(Debug)]
pub(crate) struct Binding {
    pub(crate) sid: SourceId,
    pub(crate) name: String,
    attachment: DeviceAttachment,
    parent: Arc<NestParentHwpt>,
    current: Target,
    queued: Vec<VtdS1Invalidation>,
    logged_failure: bool,
}

impl Binding {
    /// A device already attached to `parent` (stage 2 only).
    pub(crate) fn new(
        sid: SourceId,
        name: String,
        attachment: DeviceAttachment,
        parent: Arc<NestParentHwpt>,
    ) -> Self {
        Self {
            sid,
            name,
            attachment,
            parent,
            current: Target::Stage2 { did: None },
            queued: Vec::new(),
            logged_failure: false,
        }
    }

    /// What the host does now.
    pub(crate) fn current(&self) -> Target {
        self.current
    }

    /// Moves the host to `target`. A failure blocks the device and is counted and logged once.
    pub(crate) fn apply(&mut self, target: Target, counters: &AccelCounters) {
        if target == self.current {
            return;
        }
        self.queued.clear();
        let result = match target {
            Target::Nested { data, .. } => {
                let r = self.attachment.bind_nested(&self.parent, &data).map(drop);
                if r.is_ok() {
                    bump(&counters.nested_binds);
                }
                r
            }
            Target::Stage2 { .. } => {
                if matches!(self.current, Target::Stage2 { .. }) {
                    Ok(())
                } else {
                    let r = self.attachment.attach_parent(self.parent.clone());
                    if r.is_ok() {
                        bump(&counters.stage2_attaches);
                    }
                    r
                }
            }
            Target::Blocked(_) => {
                if matches!(self.current, Target::Blocked(_)) {
                    Ok(())
                } else {
                    let r = self.attachment.block();
                    if r.is_ok() {
                        bump(&counters.blocks);
                    }
                    r
                }
            }
        };
        match result {
            Ok(()) => {
                if self.logged_failure {
                    info!(target: "accel", device = %self.name, sid = %self.sid, "passthrough device restored");
                    self.logged_failure = false;
                }
                self.current = target;
            }
            Err(e) => self.fail(&e, counters),
        }
    }

    /// Queues a forwarded invalidation for the nested HWPT, if the device has one.
    pub(crate) fn queue(&mut self, inv: VtdS1Invalidation) {
        if !matches!(self.current, Target::Nested { .. }) {
            return;
        }
        if self.queued.first().is_some_and(VtdS1Invalidation::is_all) {
            return;
        }
        if inv.is_all() || self.queued.len() >= MAX_QUEUED {
            self.queued.clear();
            self.queued.push(VtdS1Invalidation::all());
        } else {
            self.queued.push(inv);
        }
    }

    /// Sends the queued invalidations in one host call.
    pub(crate) fn flush(&mut self, counters: &AccelCounters) {
        if self.queued.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.queued);
        bump(&counters.forwarded_invalidations);
        match self.attachment.invalidate(&entries) {
            Ok(done) => add(&counters.forwarded_entries, u64::from(done)),
            Err(e) => {
                if let HostIommuError::Invalidate { processed, .. } = e {
                    add(&counters.forwarded_entries, u64::from(processed));
                }
                self.fail(&e, counters);
            }
        }
    }

    /// Blocks the device after a host failure: it must never keep translating with tables the
    /// guest has since changed.
    fn fail(&mut self, err: &HostIommuError, counters: &AccelCounters) {
        bump(&counters.host_failures);
        self.queued.clear();
        if !self.logged_failure {
            warn!(
                target: "accel",
                device = %self.name,
                sid = %self.sid,
                "passthrough device: {err}; its DMA is blocked until the guest's next successful sync"
            );
            self.logged_failure = true;
        }
        if let Err(e) = self.attachment.block() {
            warn!(target: "accel", device = %self.name, "could not block the device either: {e}");
        }
        bump(&counters.blocks);
        self.current = Target::Blocked(BlockReason::HostFailure);
    }
}

impl Binding {
    /// The nest parent the device uses.
    pub(crate) fn parent_id(&self) -> host_iommu::HwptId {
        self.parent.id()
    }

    /// The host objects the device uses now, for people.
    pub(crate) fn view(&self) -> BindingView {
        BindingView {
            name: self.name.clone(),
            target: self.current,
            parent_hwpt: self.parent.id(),
            nested_hwpt: self.attachment.nested().map(|n| n.id()),
        }
    }
}
