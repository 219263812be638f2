//! The host IOMMU seam of vtd-nest: what the virtual VT-d needs from the host to give a
//! passthrough device the guest's own first-stage page table, with no shadowing.
//!
//! The guest's first-stage table pointer (a guest-physical address) is handed to the host
//! IOMMU as an iommufd *nested* hardware page table (HWPT): stage 1 is the guest's table
//! (IOVA → GPA), stage 2 is the VMM's *nest parent* HWPT (GPA → host memory) built on an IO
//! address space (IOAS) that maps guest RAM at IOVA = GPA.
//!
//! ```text
//!                      vIOMMU (vtd crate, "accel": QEMU's intel_iommu_accel)
//!        PASID entry appears/changes ──► bind / replace     PASID-IOTLB descriptor ──► invalidate
//!        PASID entry goes away ───────► unbind (block)       SRTP / TE / CC inval ────► replay
//!                                   │
//!                                   ▼   RAII handles (handles.rs)
//!          Ioas ◄── NestParentHwpt ◄── NestedHwpt ◄── DeviceAttachment (one per device)
//!                                   │
//!                                   ▼   trait HostIommu (this file)
//!                  ┌────────────────┴────────────────┐
//!         iommufd::IommufdHost                  sim::SimHost
//!   /dev/iommu + VFIO cdev ioctls       software kernel + VT-d hardware model:
//!   (iommufd-ioctls, vfio-ioctls;       nested walk, own IOTLB/PSC, the kernel's
//!    unsafe only in iommufd/sys.rs)     rules and errnos, counters, fault injection
//!                                                   │
//!                                        sim::SimIommu ──► the VMM's DmaMemory
//!                                        (an emulated device DMAs "as passthrough")
//! ```
//!
//! # Intended flow (the vIOMMU's accel step)
//!
//! ```
//! use std::sync::Arc;
//! use host_iommu::{
//!     DeviceAttachment, DmaPerm, HostIommu, Ioas, NestParentHwpt, VtdS1HwptData,
//!     VtdS1Invalidation,
//! };
//! use host_iommu::sim::{SimConfig, SimHost, VecHostMemory};
//!
//! // At VM start: the VMM maps guest RAM (GPA 0..2 MiB at host VA 0x7f00_0000_0000).
//! let mem = Arc::new(VecHostMemory::new(&[(0x7f00_0000_0000, 2 << 20)]));
//! let sim = Arc::new(SimHost::new(SimConfig::default(), mem.clone()));
//! let dev = sim.add_device("0000:01:00.0");
//! let host: Arc<dyn HostIommu> = sim;
//! let ioas = Arc::new(Ioas::new(host.clone()).unwrap());
//! ioas.map(0, 0x7f00_0000_0000, 2 << 20, DmaPerm::READ_WRITE).unwrap();
//! let parent = Arc::new(NestParentHwpt::new(ioas.clone(), dev).unwrap());
//! let mut att = DeviceAttachment::new(host.clone(), dev);   // DMA blocked
//!
//! // Guest PASID entry with PGTT=PT: stage 2 only.
//! att.attach_parent(parent.clone()).unwrap();
//!
//! // Guest PASID entry with PGTT=FST (FSPTPTR = 0x10_0000, 4-level): bind. A later change of
//! // the entry is the same call: a new nested HWPT, an atomic replace, the old one freed.
//! let data = VtdS1HwptData { pgtbl_addr: 0x10_0000, addr_width: 48, ..Default::default() };
//! att.bind_nested(&parent, &data).unwrap();
//! assert!(!att.ensure_nested(&parent, &data).unwrap(), "unchanged: nothing to do");
//!
//! // Guest PASID-based IOTLB invalidation (page-selective, IH=1) → forwarded as is
//! // (`VtdS1Invalidation::pasid_pages` converts the guest's ADDR, AM and IH). Batch entries per call.
//! let done = att.invalidate(&[VtdS1Invalidation::range(0x1000, 1, true)]).unwrap();
//! assert_eq!(done, 1);
//!
//! // Guest clears the PASID entry: unbind leaves the device's DMA blocked.
//! att.block().unwrap();
//! ```
//!
//! What the accel step does on each guest event (QEMU's `intel_iommu_accel.c` as merged for
//! 11.0), one [`DeviceAttachment`] per passthrough device and one
//! shared [`NestParentHwpt`] (guest RAM mapped at IOVA = GPA):
//!
//! | guest event | call |
//! |---|---|
//! | device realize | `hw_info(dev)?.require_vtd_nesting()?`: type, FS1GP, erratum |
//! | PASID entry valid, PGTT=FST, new or changed | `ensure_nested(&parent, &VtdS1HwptData::from_pasid_entry(&pe)?)` |
//! | PASID entry valid, PGTT=PT | `attach_parent(parent)` |
//! | PASID entry invalid (or bind failed) | `block()`: DMA blocked, never stale |
//! | TE off / legacy mode | `attach_parent(parent)` (DMA keeps working, as QEMU) |
//! | PASID-IOTLB descriptor for the entry's DID | `invalidate(&[VtdS1Invalidation::all()])` (G=2) or `invalidate(&[VtdS1Invalidation::pasid_pages(addr, am, ih)])` (G=3) |
//! | SRTP, TE, global context-cache invalidation | re-read every PASID entry and `ensure_nested` again |
//!
//! Keep the vIOMMU's own locks out of these calls (they are host ioctls); a per-device lock
//! around its `DeviceAttachment` is enough.
//!
//! Dropping handles in any order is safe: a [`DeviceAttachment`] holds the object it is
//! attached to, a [`NestedHwpt`] holds its [`NestParentHwpt`], which holds its [`Ioas`], so a
//! device is always detached (or moved) before the HWPT it uses is destroyed.

use std::fmt;

pub mod container;
pub mod dma;
pub mod handles;
pub mod iommufd;
pub mod sim;
mod types;

pub use dma::{DmaMap, IoasDma};
pub use handles::{Attachment, DeviceAttachment, Ioas, NestParentHwpt, NestedHwpt};
pub use types::{
    DmaPerm, HwCaps, HwInfo, HwInfoType, NestingRefusal, VtdHwInfo, VtdS1HwptData,
    VtdS1Invalidation,
};
pub use vtd_spec::regs::{Cap, Ecap};

/// An iommufd device id: a device bound to the host IOMMU (the `dev_id` of
/// `VFIO_DEVICE_BIND_IOMMUFD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

/// An iommufd IO address space id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoasId(pub u32);

/// An iommufd hardware page table id (a nest parent, a nested HWPT or an automatic domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HwptId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}", self.0)
    }
}
impl fmt::Display for IoasId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IOAS {}", self.0)
    }
}
impl fmt::Display for HwptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HWPT {}", self.0)
    }
}

/// What a device can be attached to (`pt_id` of `VFIO_DEVICE_ATTACH_IOMMUFD_PT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtId {
    /// An IOAS: the kernel creates or reuses an automatic (non-parent) HWPT on it.
    Ioas(IoasId),
    /// A HWPT: a nest parent (stage 2 only) or a nested HWPT (stage 1 over stage 2).
    Hwpt(HwptId),
}

impl PtId {
    /// The raw object id.
    pub fn raw(self) -> u32 {
        match self {
            Self::Ioas(IoasId(id)) | Self::Hwpt(HwptId(id)) => id,
        }
    }
}

/// The host operation that failed, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `IOMMU_GET_HW_INFO`.
    GetHwInfo,
    /// `IOMMU_IOAS_ALLOC`.
    IoasAlloc,
    /// `IOMMU_IOAS_MAP`.
    IoasMap,
    /// `IOMMU_IOAS_UNMAP`.
    IoasUnmap,
    /// `IOMMU_HWPT_ALLOC` with `IOMMU_HWPT_ALLOC_NEST_PARENT`.
    AllocNestParent,
    /// `IOMMU_HWPT_ALLOC` with `IOMMU_HWPT_DATA_VTD_S1`.
    AllocNested,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
    Attach,
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    Detach,
    /// `IOMMU_HWPT_INVALIDATE`.
    Invalidate,
    /// `IOMMU_DESTROY`.
    Destroy,
    /// Binding a device to the host IOMMU (`VFIO_DEVICE_BIND_IOMMUFD`).
    BindDevice,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::GetHwInfo => "IOMMU_GET_HW_INFO",
            Self::IoasAlloc => "IOMMU_IOAS_ALLOC",
            Self::IoasMap => "IOMMU_IOAS_MAP",
            Self::IoasUnmap => "IOMMU_IOAS_UNMAP",
            Self::AllocNestParent => "IOMMU_HWPT_ALLOC (nest parent)",
            Self::AllocNested => "IOMMU_HWPT_ALLOC (nested, VTD_S1)",
            Self::Attach => "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
            Self::Detach => "VFIO_DEVICE_DETACH_IOMMUFD_PT",
            Self::Invalidate => "IOMMU_HWPT_INVALIDATE",
            Self::Destroy => "IOMMU_DESTROY",
            Self::BindDevice => "VFIO_DEVICE_BIND_IOMMUFD",
        })
    }
}

/// Errors of the host IOMMU seam.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostIommuError {
    /// The kernel (or the sim, as the kernel would) refused an operation.
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation.
        op: Op,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// `IOMMU_HWPT_INVALIDATE` stopped early: the first `processed` entries were handled.
    #[error(
        "IOMMU_HWPT_INVALIDATE failed: total {total} entries, processed {processed} entries: {}",
        std::io::Error::from_raw_os_error(*errno)
    )]
    Invalidate {
        /// Entries handled before the failing one.
        processed: u32,
        /// Entries submitted.
        total: u32,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The host cannot do what the configuration needs; one clear sentence.
    #[error("{0}")]
    Unsupported(String),
    /// The device id is not bound to this host IOMMU.
    #[error("Unknown {0}")]
    UnknownDevice(DeviceId),
}

impl HostIommuError {
    /// A kernel refusal of `op` with `errno`.
    pub fn kernel(op: Op, errno: i32) -> Self {
        Self::Kernel { op, errno }
    }
    /// The errno the kernel gave, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } | Self::Invalidate { errno, .. } => Some(*errno),
            Self::Unsupported(_) | Self::UnknownDevice(_) => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, HostIommuError>;

/// The host IOMMU as the vIOMMU needs it: iommufd objects for one VM.
///
/// Every method is one kernel operation with the kernel's semantics (and errno on failure).
/// Implementations take `&self` and are shared as `Arc<dyn HostIommu>`; prefer the RAII
/// handles in [`handles`] over calling `*_destroy` by hand.
pub trait HostIommu: Send + Sync + fmt::Debug {
    /// `IOMMU_GET_HW_INFO` for a bound device.
    fn hw_info(&self, dev: DeviceId) -> Result<HwInfo>;

    /// `IOMMU_IOAS_ALLOC`: a new, empty IO address space.
    fn ioas_alloc(&self) -> Result<IoasId>;

    /// `IOMMU_IOAS_MAP` with `FIXED_IOVA`: maps `[iova, iova + len)` to host virtual
    /// addresses `[hva, hva + len)` (page aligned). Overlap with an existing mapping fails
    /// with `EEXIST`.
    ///
    /// For the real backend the range must be memory the VMM gives to devices (guest RAM)
    /// for as long as it stays mapped: devices may DMA into it at any time.
    fn ioas_map(&self, ioas: IoasId, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()>;

    /// `IOMMU_IOAS_UNMAP`: unmaps whole mappings inside `[iova, iova + len)`; returns the
    /// number of bytes unmapped. Nothing mapped there → `ENOENT`. `iova = 0, len = u64::MAX`
    /// unmaps everything.
    fn ioas_unmap(&self, ioas: IoasId, iova: u64, len: u64) -> Result<u64>;

    /// `IOMMU_HWPT_ALLOC(flags = NEST_PARENT, pt_id = ioas)`: a stage-2 HWPT that nested
    /// HWPTs can sit on, compatible with `dev`'s IOMMU.
    fn hwpt_alloc_nest_parent(&self, dev: DeviceId, ioas: IoasId) -> Result<HwptId>;

    /// `IOMMU_HWPT_ALLOC(pt_id = parent, data_type = IOMMU_HWPT_DATA_VTD_S1)`: a nested HWPT
    /// whose stage 1 is the guest table described by `data`.
    fn hwpt_alloc_nested(
        &self,
        dev: DeviceId,
        parent: HwptId,
        data: &VtdS1HwptData,
    ) -> Result<HwptId>;

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches `dev` to an IOAS or HWPT. Attaching an
    /// attached device is an atomic replace (on failure the old attachment stays). Returns
    /// the HWPT actually attached (for an IOAS, the automatic HWPT the kernel chose).
    fn attach(&self, dev: DeviceId, pt: PtId) -> Result<HwptId>;

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: the device's DMA is blocked afterwards.
    fn detach(&self, dev: DeviceId) -> Result<()>;

    /// `IOMMU_HWPT_INVALIDATE` with `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1` entries on a nested
    /// HWPT. Returns how many entries were processed (all of them on success); a failure
    /// carries the processed count in [`HostIommuError::Invalidate`].
    fn hwpt_invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32>;

    /// `IOMMU_DESTROY` of a HWPT. An attached HWPT, or a parent with nested children,
    /// fails with `EBUSY`.
    fn hwpt_destroy(&self, hwpt: HwptId) -> Result<()>;

    /// `IOMMU_DESTROY` of an IOAS. An IOAS with HWPTs or attached devices fails with `EBUSY`.
    fn ioas_destroy(&self, ioas: IoasId) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_errno() {
        let e = HostIommuError::kernel(Op::Destroy, libc::EBUSY);
        assert_eq!(e.errno(), Some(libc::EBUSY));
        assert!(e.to_string().starts_with("IOMMU_DESTROY failed: "));
        let e = HostIommuError::Invalidate {
            processed: 1,
            total: 3,
            errno: libc::EINVAL,
        };
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(
            e.to_string()
                .contains("total 3 entries, processed 1 entries")
        );
    }
}
