//! The values that cross the seam: hardware info, mapping permissions, the VT-d stage-1
//! HWPT data and invalidation entries (typed mirrors of the iommufd uAPI structs).

use crate::{Cap, Ecap, HostIommuError};

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
    pub fn require_vtd_nesting(&self) -> std::result::Result<&VtdHwInfo, NestingRefusal> {
        let vtd = match (self.kind, &self.vtd) {
            (HwInfoType::IntelVtd, Some(vtd)) => vtd,
            (kind, _) => return Err(NestingRefusal::NotVtd(kind.raw())),
        };
        if !vtd.nesting() {
            return Err(NestingRefusal::NoNesting);
        }
        Ok(vtd)
    }
}

/// Why a host IOMMU cannot give a device nested first-stage translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NestingRefusal {
    /// The host IOMMU is not VT-d (QEMU's sentence).
    #[error("Incompatible host platform IOMMU type {0}")]
    NotVtd(u32),
    /// The host VT-d unit cannot nest (ECAP.SMTS or ECAP.NEST clear).
    #[error("The host IOMMU does not support nested translation (ECAP.NEST is clear)")]
    NoNesting,
}

impl From<NestingRefusal> for HostIommuError {
    fn from(e: NestingRefusal) -> Self {
        Self::Unsupported(e.to_string())
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

    /// The nested-HWPT data for a guest scalable-mode PASID entry with PGTT=first stage (as
    /// QEMU's `vtd_create_fs_hwpt`): SRE (bit 128), WPE (bit 132), EAFE (bit 135), FSPTPTR
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
    /// The first-stage controls these flags stand for (the uAPI carries no ERE, NXE or SMEP:
    /// they stay clear).
    pub fn controls(&self) -> vtd_spec::rights::FsControls {
        vtd_spec::rights::FsControls::new()
            .with_sre(self.sre())
            .with_wpe(self.wpe())
            .with_eafe(self.eafe())
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
    /// The entry that forwards a guest page-selective-within-PASID IOTLB invalidation (VT-d
    /// spec §6.5.2.4, G=3): the 2^`am` pages at `addr` with `ih` as the leaf hint, everything
    /// for AM ≥ 52 (the whole input space). A PASID-selective one (G=2) is [`Self::all`].
    pub const fn pasid_pages(addr: u64, am: u8, ih: bool) -> Self {
        if am >= 52 {
            Self::all()
        } else {
            Self::range(addr, 1 << am, ih)
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
    fn page_selective_invalidations_become_ranges() {
        assert_eq!(
            VtdS1Invalidation::pasid_pages(0x1234_4000, 2, true),
            VtdS1Invalidation::range(0x1234_4000, 4, true)
        );
        assert_eq!(
            VtdS1Invalidation::pasid_pages(0x1000, 0, false),
            VtdS1Invalidation::range(0x1000, 1, false)
        );
        assert_eq!(
            VtdS1Invalidation::pasid_pages(0, 52, true),
            VtdS1Invalidation::all()
        );
        assert!(VtdS1Invalidation::pasid_pages(0, 63, false).is_all());
        assert!(!VtdS1Invalidation::pasid_pages(0, 51, false).is_all());
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
}
