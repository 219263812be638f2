//! The map/unmap seam of devices whose DMA the VMM maps itself (no nesting): guest RAM mapped
//! once (no vIOMMU), or the guest's second-stage tables shadowed.
//!
//! ```text
//!   accel::Shadow / the VMM's whole-RAM map
//!                 │  map(iova, hva, len, perm) / unmap(iova, len)
//!                 ▼
//!          trait DmaMap ─────────────┬──────────────────────────┐
//!        IoasDma (IOMMU_IOAS_MAP     │ container::ContainerDma   │ tests: a recording fake
//!        over any HostIommu)         │ (VFIO_IOMMU_MAP_DMA)      │
//! ```

use std::fmt;
use std::sync::Arc;

use crate::{DmaPerm, HostIommu, IoasId, Result};

/// Maps and unmaps IOVA ranges of one host IO address space (an iommufd IOAS or a VFIO
/// container).
///
/// `hva` ranges must be memory the VMM gives to devices (guest RAM) for as long as they stay
/// mapped: devices may DMA into it at any time.
pub trait DmaMap: Send + Sync + fmt::Debug {
    /// Maps `[iova, iova + len)` to `[hva, hva + len)` (page aligned). An overlap with an
    /// existing mapping fails with `EEXIST`.
    fn map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()>;
    /// Unmaps exactly the mappings inside `[iova, iova + len)`; returns the bytes unmapped.
    fn unmap(&self, iova: u64, len: u64) -> Result<u64>;
}

/// An iommufd IOAS as a [`DmaMap`].
#[derive(Debug, Clone)]
pub struct IoasDma {
    host: Arc<dyn HostIommu>,
    ioas: IoasId,
}

impl IoasDma {
    /// `ioas` on `host` (the caller keeps the IOAS alive as long as this).
    pub fn new(host: Arc<dyn HostIommu>, ioas: IoasId) -> Self {
        Self { host, ioas }
    }

    /// The IOAS.
    pub fn ioas(&self) -> IoasId {
        self.ioas
    }
}

impl DmaMap for IoasDma {
    fn map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        self.host.ioas_map(self.ioas, iova, hva, len, perm)
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        self.host.ioas_unmap(self.ioas, iova, len)
    }
}

impl DmaMap for crate::handles::Ioas {
    fn map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        crate::handles::Ioas::map(self, iova, hva, len, perm)
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        crate::handles::Ioas::unmap(self, iova, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, SimHost, VecHostMemory};

    #[test]
    fn an_ioas_maps_and_unmaps_through_the_host() {
        let mem = Arc::new(VecHostMemory::new(&[(0x10_0000, 0x10_0000)]));
        let host: Arc<dyn HostIommu> = Arc::new(SimHost::new(SimConfig::default(), mem));
        let ioas = host.ioas_alloc().unwrap();
        let dma = IoasDma::new(host.clone(), ioas);
        dma.map(0x4000, 0x10_0000, 0x2000, DmaPerm::READ_WRITE)
            .unwrap();
        let again = dma.map(0x5000, 0x10_1000, 0x1000, DmaPerm::READ);
        assert_eq!(again.unwrap_err().errno(), Some(libc::EEXIST));
        assert_eq!(dma.unmap(0x4000, 0x2000).unwrap(), 0x2000);
        assert_eq!(
            dma.unmap(0x4000, 0x2000).unwrap_err().errno(),
            Some(libc::ENOENT)
        );
        host.ioas_destroy(ioas).unwrap();
    }
}
