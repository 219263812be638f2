//! RAII handles over [`HostIommu`] objects.
//!
//! Ownership encodes the kernel's destruction order:
//!
//! ```text
//!   DeviceAttachment ──holds──► NestedHwpt ──holds──► NestParentHwpt ──holds──► Ioas
//!          └──────────────holds (PT / IOAS attach)──────────┴──────────────────────┘
//! ```
//!
//! A HWPT or IOAS is destroyed when its last holder goes away, and a [`DeviceAttachment`] lets
//! go of what it is attached to only after the device has been detached from it or moved to
//! something else. So whatever order handles are dropped in, the kernel never sees
//! `IOMMU_DESTROY` of an attached HWPT (`EBUSY`). Drop never panics: failures are logged.

use std::sync::Arc;

use crate::{
    DeviceId, DmaPerm, HostIommu, HostIommuError, HwptId, IoasId, PtId, Result, VtdS1HwptData,
    VtdS1Invalidation,
};

/// An IO address space; destroyed on drop.
#[derive(Debug)]
pub struct Ioas {
    iommu: Arc<dyn HostIommu>,
    id: IoasId,
}

impl Ioas {
    /// Allocates an IOAS.
    pub fn new(iommu: Arc<dyn HostIommu>) -> Result<Self> {
        let id = iommu.ioas_alloc()?;
        Ok(Self { iommu, id })
    }
    /// The IOAS id.
    pub fn id(&self) -> IoasId {
        self.id
    }
    /// The host IOMMU this IOAS belongs to.
    pub fn iommu(&self) -> &Arc<dyn HostIommu> {
        &self.iommu
    }
    /// Maps `[iova, iova + len)` to host virtual addresses from `hva` (see
    /// [`HostIommu::ioas_map`]).
    pub fn map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        self.iommu.ioas_map(self.id, iova, hva, len, perm)
    }
    /// Unmaps the mappings inside `[iova, iova + len)`; returns the bytes unmapped.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        self.iommu.ioas_unmap(self.id, iova, len)
    }
}

impl Drop for Ioas {
    fn drop(&mut self) {
        if let Err(e) = self.iommu.ioas_destroy(self.id) {
            tracing::error!("Failed to destroy {}: {e}", self.id);
        }
    }
}

/// A nest-parent (stage-2) HWPT on an IOAS; destroyed on drop.
#[derive(Debug)]
pub struct NestParentHwpt {
    ioas: Arc<Ioas>,
    id: HwptId,
}

impl NestParentHwpt {
    /// Allocates a nest parent on `ioas`, compatible with `dev`'s IOMMU.
    pub fn new(ioas: Arc<Ioas>, dev: DeviceId) -> Result<Self> {
        let id = ioas.iommu.hwpt_alloc_nest_parent(dev, ioas.id)?;
        Ok(Self { ioas, id })
    }
    /// The HWPT id.
    pub fn id(&self) -> HwptId {
        self.id
    }
    /// The IOAS it translates through.
    pub fn ioas(&self) -> &Arc<Ioas> {
        &self.ioas
    }
    /// The host IOMMU.
    pub fn iommu(&self) -> &Arc<dyn HostIommu> {
        &self.ioas.iommu
    }
}

impl Drop for NestParentHwpt {
    fn drop(&mut self) {
        if let Err(e) = self.ioas.iommu.hwpt_destroy(self.id) {
            tracing::error!("Failed to destroy nest parent {}: {e}", self.id);
        }
    }
}

/// A nested HWPT: the guest's first-stage table over a nest parent; destroyed on drop.
#[derive(Debug)]
pub struct NestedHwpt {
    parent: Arc<NestParentHwpt>,
    id: HwptId,
    data: VtdS1HwptData,
}

impl NestedHwpt {
    /// Allocates a nested HWPT for `dev` on `parent`.
    pub fn new(parent: Arc<NestParentHwpt>, dev: DeviceId, data: &VtdS1HwptData) -> Result<Self> {
        let id = parent.iommu().hwpt_alloc_nested(dev, parent.id, data)?;
        Ok(Self {
            parent,
            id,
            data: *data,
        })
    }
    /// The HWPT id.
    pub fn id(&self) -> HwptId {
        self.id
    }
    /// The data it was allocated with (what the guest PASID entry said).
    pub fn data(&self) -> &VtdS1HwptData {
        &self.data
    }
    /// Its nest parent.
    pub fn parent(&self) -> &Arc<NestParentHwpt> {
        &self.parent
    }
    /// Invalidates the host's caches of the guest table (see [`HostIommu::hwpt_invalidate`]).
    pub fn invalidate(&self, entries: &[VtdS1Invalidation]) -> Result<u32> {
        self.parent.iommu().hwpt_invalidate(self.id, entries)
    }
}

impl Drop for NestedHwpt {
    fn drop(&mut self) {
        if let Err(e) = self.parent.iommu().hwpt_destroy(self.id) {
            tracing::error!("Failed to destroy nested {}: {e}", self.id);
        }
    }
}

/// What a device is attached to.
#[derive(Clone, Debug, Default)]
pub enum Attachment {
    /// Nothing: DMA is blocked.
    #[default]
    Blocked,
    /// An IOAS, through the kernel's automatic (non-parent) HWPT `hwpt`.
    Ioas {
        /// The IOAS.
        ioas: Arc<Ioas>,
        /// The automatic HWPT the kernel attached.
        hwpt: HwptId,
    },
    /// A nest parent directly: stage 2 only (guest PGTT = pass-through).
    Parent(Arc<NestParentHwpt>),
    /// A nested HWPT: the guest's stage 1 over stage 2 (guest PGTT = first stage).
    Nested(Arc<NestedHwpt>),
}

impl Attachment {
    /// The HWPT the device translates through, if any.
    pub fn hwpt(&self) -> Option<HwptId> {
        match self {
            Self::Blocked => None,
            Self::Ioas { hwpt, .. } => Some(*hwpt),
            Self::Parent(p) => Some(p.id()),
            Self::Nested(n) => Some(n.id()),
        }
    }
}

/// A device bound to the host IOMMU and what it is attached to; detached on drop.
///
/// Starts [`Attachment::Blocked`] (a device bound without attaching to an IOAS).
#[derive(Debug)]
pub struct DeviceAttachment {
    iommu: Arc<dyn HostIommu>,
    dev: DeviceId,
    current: Attachment,
}

impl DeviceAttachment {
    /// Takes charge of `dev`, which must currently be detached.
    pub fn new(iommu: Arc<dyn HostIommu>, dev: DeviceId) -> Self {
        Self {
            iommu,
            dev,
            current: Attachment::Blocked,
        }
    }
    /// The device id.
    pub fn device(&self) -> DeviceId {
        self.dev
    }
    /// The host IOMMU.
    pub fn iommu(&self) -> &Arc<dyn HostIommu> {
        &self.iommu
    }
    /// What the device is attached to.
    pub fn current(&self) -> &Attachment {
        &self.current
    }
    /// The nested HWPT the device is attached to, if it is.
    pub fn nested(&self) -> Option<&Arc<NestedHwpt>> {
        match &self.current {
            Attachment::Nested(n) => Some(n),
            _ => None,
        }
    }

    /// Attaches (or atomically replaces) to an IOAS via an automatic HWPT.
    pub fn attach_ioas(&mut self, ioas: Arc<Ioas>) -> Result<()> {
        let hwpt = self.iommu.attach(self.dev, PtId::Ioas(ioas.id()))?;
        self.set(Attachment::Ioas { ioas, hwpt });
        Ok(())
    }
    /// Attaches (or atomically replaces) to a nest parent: stage-2-only DMA.
    pub fn attach_parent(&mut self, parent: Arc<NestParentHwpt>) -> Result<()> {
        self.iommu.attach(self.dev, PtId::Hwpt(parent.id()))?;
        self.set(Attachment::Parent(parent));
        Ok(())
    }
    /// Attaches (or atomically replaces) to a nested HWPT. On failure the old attachment
    /// stays and `nested` is released (destroyed if this was its last holder).
    pub fn attach_nested(&mut self, nested: Arc<NestedHwpt>) -> Result<()> {
        self.iommu.attach(self.dev, PtId::Hwpt(nested.id()))?;
        self.set(Attachment::Nested(nested));
        Ok(())
    }
    /// Bind (and re-bind): allocates a nested HWPT for the guest table `data` on `parent` and
    /// atomically replaces the device's attachment with it; the previous nested HWPT, if no
    /// one else holds it, is destroyed after the replace. If allocation or attach fails,
    /// the new HWPT is freed and the old attachment stays: the caller decides whether to
    /// [`block`](Self::block) the device.
    pub fn bind_nested(
        &mut self,
        parent: &Arc<NestParentHwpt>,
        data: &VtdS1HwptData,
    ) -> Result<Arc<NestedHwpt>> {
        let nested = Arc::new(NestedHwpt::new(parent.clone(), self.dev, data)?);
        self.attach_nested(nested.clone())?;
        Ok(nested)
    }
    /// Bind only if needed (PASID-cache sync and replay): a no-op returning `false` when the
    /// device is already attached to a nested HWPT on `parent` with exactly `data`,
    /// otherwise [`bind_nested`](Self::bind_nested) and `true`.
    pub fn ensure_nested(
        &mut self,
        parent: &Arc<NestParentHwpt>,
        data: &VtdS1HwptData,
    ) -> Result<bool> {
        if let Attachment::Nested(n) = &self.current
            && n.data() == data
            && Arc::ptr_eq(n.parent(), parent)
        {
            return Ok(false);
        }
        self.bind_nested(parent, data)?;
        Ok(true)
    }
    /// Unbind: detaches the device, which blocks its DMA. Already blocked is a no-op.
    pub fn block(&mut self) -> Result<()> {
        if matches!(self.current, Attachment::Blocked) {
            return Ok(());
        }
        self.iommu.detach(self.dev)?;
        self.set(Attachment::Blocked);
        Ok(())
    }
    /// Forwards a guest PASID-based IOTLB invalidation to the nested HWPT the device is
    /// attached to. Not attached to a nested HWPT: nothing is cached, returns `Ok(0)`.
    pub fn invalidate(&self, entries: &[VtdS1Invalidation]) -> Result<u32> {
        match &self.current {
            Attachment::Nested(n) => n.invalidate(entries),
            _ => Ok(0),
        }
    }

    /// Records the new attachment; the old one is released only now, after the kernel moved
    /// the device off it.
    fn set(&mut self, new: Attachment) {
        let old = std::mem::replace(&mut self.current, new);
        drop(old);
    }
}

impl Drop for DeviceAttachment {
    fn drop(&mut self) {
        if matches!(self.current, Attachment::Blocked) {
            return;
        }
        match self.iommu.detach(self.dev) {
            // Unbound already: closing the device detached it.
            Ok(()) | Err(HostIommuError::UnknownDevice(_)) => self.current = Attachment::Blocked,
            Err(e) => {
                tracing::error!("Failed to detach {} on release: {e}", self.dev);
                // The objects it still uses cannot be destroyed (EBUSY); keep them alive
                // rather than attempt it.
                std::mem::forget(std::mem::take(&mut self.current));
            }
        }
    }
}
