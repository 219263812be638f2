//! The stage-2 side: one IOAS mapping guest RAM at IOVA = GPA, and a nest parent HWPT on it,
//! per host IOMMU.

use host_iommu::{DeviceId, DmaPerm, HostIommu, Ioas, NestParentHwpt};
use std::sync::Arc;
use tracing::info;

/// A guest RAM region as the host IOMMU must map it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical address (the IOVA in the stage-2 IOAS).
    pub gpa: u64,
    /// Host virtual address of the mapping.
    pub hva: u64,
    /// Length in bytes, page aligned.
    pub len: u64,
    /// Whether devices may write it; read-only regions are left out of a nest parent on hosts
    /// with erratum 772415.
    pub writable: bool,
}

/// The stage-2 objects on one host: an IOAS mapping guest RAM at IOVA = GPA, and the nest
/// parents built on it (one per group of compatible host IOMMU units; devices share them).
#[derive(Debug)]
pub(crate) struct Stage2 {
    pub(crate) host: Arc<dyn HostIommu>,
    ioas: Arc<Ioas>,
    pub(crate) parents: Vec<Arc<NestParentHwpt>>,
}

impl Stage2 {
    /// Maps guest RAM into a new IOAS on `host`.
    pub(crate) fn new(
        host: Arc<dyn HostIommu>,
        ram: &[RamRegion],
        errata_772415: bool,
    ) -> host_iommu::Result<Self> {
        let ioas = Arc::new(Ioas::new(host.clone())?);
        for r in ram {
            if !r.writable && errata_772415 {
                info!(
                    target: "accel",
                    gpa = r.gpa,
                    len = r.len,
                    "read-only region left out of the nest parent (ERRATA_772415_SPR17)"
                );
                continue;
            }
            let perm = if r.writable {
                DmaPerm::READ_WRITE
            } else {
                DmaPerm::READ
            };
            ioas.map(r.gpa, r.hva, r.len, perm)?;
        }
        Ok(Self {
            host,
            ioas,
            parents: Vec::new(),
        })
    }

    /// A new nest parent on the IOAS, compatible with `dev`.
    pub(crate) fn add_parent(&mut self, dev: DeviceId) -> host_iommu::Result<Arc<NestParentHwpt>> {
        let parent = Arc::new(NestParentHwpt::new(self.ioas.clone(), dev)?);
        self.parents.push(parent.clone());
        Ok(parent)
    }
}
