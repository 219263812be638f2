//! `VFIO_IOMMU_MAP_DMA` / `VFIO_IOMMU_UNMAP_DMA` on a container fd, with the permissions the
//! caller asks for (vfio-ioctls always maps read-write). The only `unsafe` of this module.

#![allow(unsafe_code)]

use std::mem::size_of;
use std::os::unix::io::AsRawFd;

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE,
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use crate::DmaPerm;

vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 14);

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `VFIO_IOMMU_MAP_DMA`: the kernel pins `[hva, hva + len)` of this process.
pub(super) fn map_dma(
    container: &impl AsRawFd,
    iova: u64,
    hva: u64,
    len: u64,
    perm: DmaPerm,
) -> Result<(), i32> {
    let mut flags = 0;
    if perm.read {
        flags |= VFIO_DMA_MAP_FLAG_READ;
    }
    if perm.write {
        flags |= VFIO_DMA_MAP_FLAG_WRITE;
    }
    let cmd = vfio_iommu_type1_dma_map {
        argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags,
        vaddr: hva,
        iova,
        size: len,
    };
    // SAFETY: `cmd` is a live, correctly sized `vfio_iommu_type1_dma_map` for the duration of
    // the call and the kernel only reads it. The kernel pins the pages at `vaddr` itself; it
    // never dereferences them in this process, so an invalid `vaddr` yields an errno, not
    // memory unsafety. The callers (the `DmaMap` contract) map only guest RAM that outlives
    // the mapping.
    let ret = unsafe { ioctl_with_ref(container, VFIO_IOMMU_MAP_DMA(), &cmd) };
    if ret < 0 { Err(last_errno()) } else { Ok(()) }
}

/// `VFIO_IOMMU_UNMAP_DMA`; returns the bytes unmapped.
pub(super) fn unmap_dma(container: &impl AsRawFd, iova: u64, len: u64) -> Result<u64, i32> {
    let mut cmd = vfio_iommu_type1_dma_unmap {
        argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags: 0,
        iova,
        size: len,
        ..Default::default()
    };
    // SAFETY: `cmd` is a live, correctly sized `vfio_iommu_type1_dma_unmap` (argsz covers the
    // fixed part only, no flags, so the kernel neither reads nor writes the trailing array);
    // the kernel writes back `size` only.
    let ret = unsafe { ioctl_with_mut_ref(container, VFIO_IOMMU_UNMAP_DMA(), &mut cmd) };
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(cmd.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not a VFIO container: both ioctls fail with an errno.
    #[test]
    fn ioctls_on_a_non_container_fail_with_an_errno() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(map_dma(&f, 0, 0x1000, 0x1000, DmaPerm::READ).is_err());
        assert!(unmap_dma(&f, 0, 0x1000).is_err());
    }
}
