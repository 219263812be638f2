//! The legacy VFIO container (type1 v2) as a [`DmaMap`]: what a device uses on a host kernel
//! without iommufd. It cannot nest; it maps guest RAM once or shadows the guest's tables.

mod sys;

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use vfio_ioctls::VfioContainer;

use crate::dma::DmaMap;
use crate::{DmaPerm, HostIommuError, Op, Result};

/// A VFIO container's IO address space.
#[derive(Clone)]
pub struct ContainerDma {
    container: Arc<VfioContainer>,
}

impl std::fmt::Debug for ContainerDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerDma")
            .field("fd", &self.container.as_raw_fd())
            .finish()
    }
}

impl ContainerDma {
    /// Maps through `container` (a group must already be in it: the IOMMU type is set then).
    pub fn new(container: Arc<VfioContainer>) -> Self {
        Self { container }
    }
}

impl DmaMap for ContainerDma {
    fn map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        sys::map_dma(&*self.container, iova, hva, len, perm)
            .map_err(|e| HostIommuError::kernel(Op::IoasMap, e))
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        let done = sys::unmap_dma(&*self.container, iova, len)
            .map_err(|e| HostIommuError::kernel(Op::IoasUnmap, e))?;
        if done == 0 {
            return Err(HostIommuError::kernel(Op::IoasUnmap, libc::ENOENT));
        }
        Ok(done)
    }
}
