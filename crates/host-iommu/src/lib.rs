//! The host IOMMU seam of vtd-nest: what the virtual VT-d needs from the host to give a
//! passthrough device the guest's own first-stage page table, with no shadowing.
//!
//! The guest's first-stage table pointer (a guest-physical address) is handed to the host
//! IOMMU as an iommufd *nested* hardware page table (HWPT): stage 1 is the guest's table
//! (IOVA → GPA), stage 2 is the VMM's *nest parent* HWPT (GPA → host memory) built on an IO
//! address space (IOAS) that maps guest RAM at IOVA = GPA.
//!
//! ```text
//!                      vIOMMU (vtd crate, "accel": the seed's intel_iommu_accel)
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
//!                                        sim::SimIommu ──► vm_memory::IommuMemory
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
//! let host: Arc<dyn HostIommu> = Arc::new(SimHost::new(SimConfig::default(), mem.clone()));
//! let dev = host.as_sim().unwrap().add_device("0000:01:00.0");
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
//! // (`VtdS1Invalidation::from_piotlb` converts the descriptor). Batch entries per call.
//! let done = att.invalidate(&[VtdS1Invalidation::range(0x1000, 1, true)]).unwrap();
//! assert_eq!(done, 1);
//!
//! // Guest clears the PASID entry: unbind leaves the device's DMA blocked.
//! att.block().unwrap();
//! ```
//!
//! What the accel step does on each guest event (QEMU `intel_iommu_accel.c` as merged for
//! 11.0, qemu-intel-iommu.md §1.3), one [`DeviceAttachment`] per passthrough device and one
//! shared [`NestParentHwpt`] (guest RAM mapped at IOVA = GPA):
//!
//! | guest event | call |
//! |---|---|
//! | device realize | `hw_info(dev)?.require_vtd_nesting()?`: type, FS1GP, erratum |
//! | PASID entry valid, PGTT=FST, new or changed | `ensure_nested(&parent, &VtdS1HwptData::from_pasid_entry(&pe)?)` |
//! | PASID entry valid, PGTT=PT | `attach_parent(parent)` |
//! | PASID entry invalid (or bind failed) | `block()`: DMA blocked, never stale |
//! | TE off / legacy mode | `attach_parent(parent)` (DMA keeps working, as QEMU) |
//! | PASID-IOTLB descriptor (G=2/3) for the entry's DID | `invalidate(&[VtdS1Invalidation::from_piotlb(..)?])` |
//! | SRTP, TE, global context-cache invalidation | re-read every PASID entry and `ensure_nested` again |
//!
//! Keep the vIOMMU's own locks out of these calls (they are host ioctls); a per-device lock
//! around its `DeviceAttachment` is enough.
//!
//! Dropping handles in any order is safe: a [`DeviceAttachment`] holds the object it is
//! attached to, a [`NestedHwpt`] holds its [`NestParentHwpt`], which holds its [`Ioas`], so a
//! device is always detached (or moved) before the HWPT it uses is destroyed.

use std::fmt;

pub mod handles;
pub mod iommufd;
pub mod sim;

pub use handles::{Attachment, DeviceAttachment, Ioas, NestParentHwpt, NestedHwpt};
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

/// Which IOMMU the host has behind a device (`iommu_hw_info.out_data_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwInfoType {
    /// `IOMMU_HW_INFO_TYPE_INTEL_VTD` (1).
    IntelVtd,
    /// Any other type (0 = none, 2 = SMMUv3, 3 = Tegra241 CMDQV, 4 = AMD, ...).
    Other(u32),
}

impl HwInfoType {
    /// Decodes a raw `iommu_hw_info_type`.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::IntelVtd,
            other => Self::Other(other),
        }
    }
    /// The raw `iommu_hw_info_type`.
    pub fn raw(self) -> u32 {
        match self {
            Self::IntelVtd => 1,
            Self::Other(v) => v,
        }
    }
}

/// `iommu_hw_info_vtd`: the host VT-d unit's registers and quirk flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdHwInfo {
    /// Raw `flags`; see [`VtdHwInfo::ERRATA_772415_SPR17`].
    pub flags: u32,
    /// The host capability register.
    pub cap: Cap,
    /// The host extended capability register.
    pub ecap: Ecap,
}

impl VtdHwInfo {
    /// `IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17`: read-only mappings are disallowed on a nest
    /// parent (Linux 6.12 always sets it).
    pub const ERRATA_772415_SPR17: u32 = 1 << 0;

    /// Whether the host has erratum 772415 (no read-only mappings in a nest parent).
    pub fn errata_772415(&self) -> bool {
        self.flags & Self::ERRATA_772415_SPR17 != 0
    }
    /// Whether the host can nest (the kernel's `nested_supported()`: ECAP.SMTS && ECAP.NEST).
    pub fn nesting(&self) -> bool {
        self.ecap.smts() && self.ecap.nest()
    }
    /// Whether first-stage 1 GiB pages are supported (CAP.FS1GP).
    pub fn fs1gp(&self) -> bool {
        self.cap.fs1gp()
    }
    /// Whether first-stage 5-level paging is supported (CAP.FS5LP).
    pub fn fs5lp(&self) -> bool {
        self.cap.fs5lp()
    }
}

/// `iommu_hw_info.out_capabilities` (`enum iommufd_hw_capabilities`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwCaps(pub u64);

impl HwCaps {
    /// `IOMMU_HW_CAP_DIRTY_TRACKING`.
    pub const DIRTY_TRACKING: u64 = 1 << 0;
    /// `IOMMU_HW_CAP_PCI_PASID_EXEC`.
    pub const PCI_PASID_EXEC: u64 = 1 << 1;
    /// `IOMMU_HW_CAP_PCI_PASID_PRIV`.
    pub const PCI_PASID_PRIV: u64 = 1 << 2;

    /// Whether the IOMMU can track dirty pages in the stage-2 table.
    pub fn dirty_tracking(self) -> bool {
        self.0 & Self::DIRTY_TRACKING != 0
    }
}

/// What `IOMMU_GET_HW_INFO` reports for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwInfo {
    /// The IOMMU type.
    pub kind: HwInfoType,
    /// The VT-d registers and flags, when `kind` is [`HwInfoType::IntelVtd`].
    pub vtd: Option<VtdHwInfo>,
    /// Number of PASID bits the device supports with this IOMMU (0: no PASID).
    pub max_pasid_log2: u8,
    /// Generic capabilities.
    pub capabilities: HwCaps,
}

impl HwInfo {
    /// Checks that this host can give a device nested first-stage translation, returning the
    /// VT-d info, or the one sentence that says why not.
    pub fn require_vtd_nesting(&self) -> Result<&VtdHwInfo> {
        let vtd = match (self.kind, &self.vtd) {
            (HwInfoType::IntelVtd, Some(vtd)) => vtd,
            (kind, _) => {
                return Err(HostIommuError::Unsupported(format!(
                    "Incompatible host platform IOMMU type {}: nested first-stage translation needs Intel VT-d",
                    kind.raw()
                )));
            }
        };
        if !vtd.nesting() {
            return Err(HostIommuError::Unsupported(
                "The host IOMMU does not support nested translation (ECAP.NEST is clear)".into(),
            ));
        }
        Ok(vtd)
    }
}

/// DMA permissions of an IOAS mapping (`IOMMU_IOAS_MAP_READABLE` / `_WRITEABLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaPerm {
    /// Device reads allowed.
    pub read: bool,
    /// Device writes allowed.
    pub write: bool,
}

impl DmaPerm {
    /// Read-only.
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
    /// Write-only.
    pub const WRITE: Self = Self {
        read: false,
        write: true,
    };
    /// Read and write.
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
    };
}

/// `iommu_hwpt_vtd_s1`: the guest's first-stage table as the host nests it.
///
/// Built from a guest PASID entry with [`VtdS1HwptData::from_pasid_entry`]. `flags` and
/// `reserved` are raw so that what the guest (or a bug) asks for reaches the kernel's checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdS1HwptData {
    /// `IOMMU_VTD_S1_SRE` | `IOMMU_VTD_S1_EAFE` | `IOMMU_VTD_S1_WPE`.
    pub flags: u64,
    /// FSPTPTR: the guest-physical address of the first-stage root table.
    pub pgtbl_addr: u64,
    /// Input address width: 48 (4-level) or 57 (5-level, needs CAP.FS5LP).
    pub addr_width: u32,
    /// `__reserved`, must be 0.
    pub reserved: u32,
}

impl VtdS1HwptData {
    /// `IOMMU_VTD_S1_SRE`: supervisor requests enabled.
    pub const SRE: u64 = 1 << 0;
    /// `IOMMU_VTD_S1_EAFE`: extended accessed flag enabled.
    pub const EAFE: u64 = 1 << 1;
    /// `IOMMU_VTD_S1_WPE`: write protect enabled (supervisor writes honour R/W).
    pub const WPE: u64 = 1 << 2;
    /// Every flag the uAPI defines.
    pub const ALL_FLAGS: u64 = Self::SRE | Self::EAFE | Self::WPE;

    /// The nested-HWPT data for a guest scalable-mode PASID entry with PGTT=first stage (the
    /// seed's `vtd_create_fs_hwpt`): SRE (bit 128), WPE (bit 132), EAFE (bit 135), FSPTPTR
    /// (bits 191:140) and FSPM → 48/57 (VT-d spec §9.6). `None` for a reserved FSPM.
    pub fn from_pasid_entry(entry: &vtd_spec::pasid::PasidEntry) -> Option<Self> {
        let q2 = entry.qw2;
        let mut flags = 0;
        if q2.sre() {
            flags |= Self::SRE;
        }
        if q2.wpe() {
            flags |= Self::WPE;
        }
        if q2.eafe() {
            flags |= Self::EAFE;
        }
        Some(Self {
            flags,
            pgtbl_addr: entry.first_stage_table(),
            addr_width: q2.fspm().address_width()?,
            reserved: 0,
        })
    }
    /// Supervisor requests enabled.
    pub fn sre(&self) -> bool {
        self.flags & Self::SRE != 0
    }
    /// Write protect enabled.
    pub fn wpe(&self) -> bool {
        self.flags & Self::WPE != 0
    }
    /// Extended accessed flag enabled.
    pub fn eafe(&self) -> bool {
        self.flags & Self::EAFE != 0
    }
}

/// One `iommu_hwpt_vtd_s1_invalidate` entry: a PASID-based IOTLB invalidation for a nested HWPT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdS1Invalidation {
    /// First IOVA, 4 KiB aligned (0 with `npages == u64::MAX`).
    pub addr: u64,
    /// Number of 4 KiB pages; `u64::MAX` means everything.
    pub npages: u64,
    /// Raw flags: [`VtdS1Invalidation::LEAF`].
    pub flags: u32,
    /// `__reserved`, must be 0.
    pub reserved: u32,
}

impl VtdS1Invalidation {
    /// `IOMMU_VTD_INV_FLAGS_LEAF`: only leaf entries changed (the guest descriptor's IH), so
    /// paging-structure caches may be kept.
    pub const LEAF: u32 = 1 << 0;

    /// Invalidate everything (PASID-selective within the HWPT): addr 0, npages `u64::MAX`.
    pub const fn all() -> Self {
        Self {
            addr: 0,
            npages: u64::MAX,
            flags: 0,
            reserved: 0,
        }
    }
    /// Invalidate `npages` pages from `addr`; `leaf` is the guest's IH hint.
    pub const fn range(addr: u64, npages: u64, leaf: bool) -> Self {
        Self {
            addr,
            npages,
            flags: if leaf { Self::LEAF } else { 0 },
            reserved: 0,
        }
    }
    /// The entry that forwards a guest PASID-based IOTLB invalidation descriptor (VT-d spec
    /// §6.5.2.4): G=2 (PASID-selective) → everything; G=3 (page-selective within PASID) →
    /// the 2^AM pages at ADDR with IH as the leaf hint. `None` for the reserved G=0/1.
    pub fn from_piotlb(
        desc: &vtd_spec::inv::PasidIotlbDesc,
        addr: &vtd_spec::inv::InvAddress,
    ) -> Option<Self> {
        match desc.g() {
            2 => Some(Self::all()),
            3 => Some(Self::range(addr.base(), addr.pages(), addr.ih())),
            _ => None,
        }
    }
    /// Whether this entry covers the whole address space.
    pub fn is_all(&self) -> bool {
        self.npages == u64::MAX
    }
    /// Whether only leaf entries are invalidated.
    pub fn leaf(&self) -> bool {
        self.flags & Self::LEAF != 0
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

    /// The software host IOMMU behind this object, if it is one (for tests and DMA by
    /// emulated devices).
    fn as_sim(&self) -> Option<&sim::SimHost> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtd_spec::pasid::PasidEntry;

    #[test]
    fn hwpt_data_from_pasid_entry() {
        // PGTT=FST, SRE (bit 128), WPE (bit 132), EAFE (bit 135), FSPM=5-level, FSPTPTR.
        let q0 = 1 | (1 << 6);
        let q2 = 1 | (1 << 2) | (1 << 4) | (1 << 7) | 0x0012_3456_7000;
        let e = PasidEntry::from_qwords([q0, 0, q2, 0, 0, 0, 0, 0]);
        let d = VtdS1HwptData::from_pasid_entry(&e).unwrap();
        assert_eq!(d.flags, VtdS1HwptData::ALL_FLAGS);
        assert_eq!(d.addr_width, 57);
        assert_eq!(d.pgtbl_addr, 0x0012_3456_7000);
        let reserved_fspm = PasidEntry::from_qwords([q0, 0, 3 << 2, 0, 0, 0, 0, 0]);
        assert_eq!(VtdS1HwptData::from_pasid_entry(&reserved_fspm), None);
    }

    #[test]
    fn piotlb_descriptors_become_invalidation_entries() {
        use vtd_spec::inv::{InvAddress, PasidIotlbDesc};
        let psi = PasidIotlbDesc::new().with_g(3);
        let addr = InvAddress::new()
            .with_addr(0x12345)
            .with_am(2)
            .with_ih(true);
        assert_eq!(
            VtdS1Invalidation::from_piotlb(&psi, &addr),
            Some(VtdS1Invalidation::range(0x1234_4000, 4, true))
        );
        let all = PasidIotlbDesc::new().with_g(2);
        assert_eq!(
            VtdS1Invalidation::from_piotlb(&all, &addr),
            Some(VtdS1Invalidation::all())
        );
        assert_eq!(
            VtdS1Invalidation::from_piotlb(&PasidIotlbDesc::new(), &addr),
            None
        );
    }

    #[test]
    fn nesting_requirement_sentences() {
        let mut info = HwInfo {
            kind: HwInfoType::Other(2),
            vtd: None,
            max_pasid_log2: 0,
            capabilities: HwCaps::default(),
        };
        let e = info.require_vtd_nesting().unwrap_err().to_string();
        assert!(
            e.starts_with("Incompatible host platform IOMMU type 2"),
            "{e}"
        );
        info.kind = HwInfoType::IntelVtd;
        info.vtd = Some(VtdHwInfo {
            flags: 0,
            cap: Cap::new(),
            ecap: Ecap::new().with_smts(true),
        });
        assert_eq!(
            info.require_vtd_nesting().unwrap_err().to_string(),
            "The host IOMMU does not support nested translation (ECAP.NEST is clear)"
        );
        info.vtd = Some(VtdHwInfo {
            flags: 1,
            cap: Cap::new(),
            ecap: Ecap::new().with_smts(true).with_nest(true),
        });
        assert!(info.require_vtd_nesting().unwrap().errata_772415());
    }

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
