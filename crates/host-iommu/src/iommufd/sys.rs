//! The raw layer of the real backend: every iommufd / VFIO uAPI struct this crate fills, and
//! the only `unsafe` in the crate.
//!
//! The typed APIs of iommufd-ioctls 0.4 are SMMUv3-only, so VT-d structures go through its
//! raw calls (`alloc_iommu_hwpt`, `invalidate_hwpt`, `get_hw_info`, ...). Those calls are safe
//! Rust functions but hand the kernel user pointers (`data_uptr`); the pointers built here
//! always point at live, correctly sized values that outlive the call. The one VFIO ioctl
//! vfio-ioctls lacks in the shape we need (attach to an IOAS and read back the automatic
//! HWPT id) is issued here directly.

#![allow(unsafe_code)]

use std::mem::size_of;
use std::os::unix::io::AsRawFd;

use iommufd_bindings::iommufd::{
    iommu_hw_info, iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD, iommu_hw_info_vtd,
    iommu_hwpt_alloc, iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
    iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1, iommu_hwpt_invalidate,
    iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, iommu_hwpt_vtd_s1,
    iommu_hwpt_vtd_s1_invalidate, iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_unmap,
    iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
};
use iommufd_ioctls::{IommuFd, IommufdError};
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE, vfio_device_attach_iommufd_pt};
use vmm_sys_util::errno::Error as SysError;

use crate::{DmaPerm, VtdS1HwptData, VtdS1Invalidation};

vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_BIND_IOMMUFD, VFIO_TYPE as u32, VFIO_BASE + 18);
vmm_sys_util::ioctl_io_nr!(
    VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_TYPE as u32,
    VFIO_BASE + 19
);
vmm_sys_util::ioctl_io_nr!(
    VFIO_DEVICE_DETACH_IOMMUFD_PT,
    VFIO_TYPE as u32,
    VFIO_BASE + 20
);

/// The errno inside an iommufd-ioctls error (`EIO` when it carries none).
pub(crate) fn errno(e: &IommufdError) -> i32 {
    match e {
        IommufdError::OpenIommufd(io) => io.raw_os_error().unwrap_or(libc::EIO),
        IommufdError::IommuDestroy(s)
        | IommufdError::IommuIoasAlloc(s)
        | IommufdError::IommuIoasMap(s)
        | IommufdError::IommuIoasMapFile(s)
        | IommufdError::IommuIoasUnmap(s)
        | IommufdError::IommuHwptAlloc(s)
        | IommufdError::IommuViommuAlloc(s)
        | IommufdError::IommuVdeviceAlloc(s)
        | IommufdError::IommuGetHwInfo(s)
        | IommufdError::IommuHwptInvalidate(s)
        | IommufdError::IommuVeventqAlloc(s)
        | IommufdError::VeventqNonBlocking(s)
        | IommufdError::IommuHwQueueAlloc(s) => s.errno(),
        IommufdError::AttachHwpt(io) => io.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

/// `IOMMU_IOAS_ALLOC`.
pub(crate) fn ioas_alloc(fd: &IommuFd) -> Result<u32, i32> {
    let mut cmd = iommu_ioas_alloc {
        size: size_of::<iommu_ioas_alloc>() as u32,
        flags: 0,
        out_ioas_id: 0,
    };
    fd.alloc_iommu_ioas(&mut cmd).map_err(|e| errno(&e))?;
    Ok(cmd.out_ioas_id)
}

/// `IOMMU_IOAS_MAP` with `FIXED_IOVA`: the kernel pins `[hva, hva + len)` of this process.
pub(crate) fn ioas_map(
    fd: &IommuFd,
    ioas: u32,
    iova: u64,
    hva: u64,
    len: u64,
    perm: DmaPerm,
) -> Result<(), i32> {
    let mut flags = iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA;
    if perm.read {
        flags |= iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
    }
    if perm.write {
        flags |= iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
    }
    let cmd = iommu_ioas_map {
        size: size_of::<iommu_ioas_map>() as u32,
        flags,
        ioas_id: ioas,
        __reserved: 0,
        user_va: hva,
        length: len,
        iova,
    };
    fd.map_iommu_ioas(&cmd).map_err(|e| errno(&e))
}

/// `IOMMU_IOAS_UNMAP`; returns the bytes unmapped.
pub(crate) fn ioas_unmap(fd: &IommuFd, ioas: u32, iova: u64, len: u64) -> Result<u64, i32> {
    let mut cmd = iommu_ioas_unmap {
        size: size_of::<iommu_ioas_unmap>() as u32,
        ioas_id: ioas,
        iova,
        length: len,
    };
    fd.unmap_iommu_ioas(&mut cmd).map_err(|e| errno(&e))?;
    Ok(cmd.length)
}

/// `IOMMU_HWPT_ALLOC(flags = NEST_PARENT, pt_id = ioas, data_type = NONE)`.
pub(crate) fn hwpt_alloc_nest_parent(fd: &IommuFd, dev: u32, ioas: u32) -> Result<u32, i32> {
    let mut cmd = iommu_hwpt_alloc {
        size: size_of::<iommu_hwpt_alloc>() as u32,
        flags: iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT,
        dev_id: dev,
        pt_id: ioas,
        data_type: iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
        ..Default::default()
    };
    fd.alloc_iommu_hwpt(&mut cmd).map_err(|e| errno(&e))?;
    Ok(cmd.out_hwpt_id)
}

/// `IOMMU_HWPT_ALLOC(pt_id = parent, data_type = VTD_S1, data = iommu_hwpt_vtd_s1)`.
pub(crate) fn hwpt_alloc_nested(
    fd: &IommuFd,
    dev: u32,
    parent: u32,
    data: &VtdS1HwptData,
) -> Result<u32, i32> {
    let s1 = iommu_hwpt_vtd_s1 {
        flags: data.flags,
        pgtbl_addr: data.pgtbl_addr,
        addr_width: data.addr_width,
        __reserved: data.reserved,
    };
    let mut cmd = iommu_hwpt_alloc {
        size: size_of::<iommu_hwpt_alloc>() as u32,
        flags: 0,
        dev_id: dev,
        pt_id: parent,
        data_type: iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1,
        data_len: size_of::<iommu_hwpt_vtd_s1>() as u32,
        // `s1` lives on this frame for the whole call; the kernel only reads it.
        data_uptr: &s1 as *const iommu_hwpt_vtd_s1 as u64,
        ..Default::default()
    };
    fd.alloc_iommu_hwpt(&mut cmd).map_err(|e| errno(&e))?;
    Ok(cmd.out_hwpt_id)
}

/// What `IOMMU_GET_HW_INFO` returned.
pub(crate) struct RawHwInfo {
    pub(crate) kind: u32,
    pub(crate) vtd: Option<iommu_hw_info_vtd>,
    pub(crate) max_pasid_log2: u8,
    pub(crate) capabilities: u64,
}

/// `IOMMU_GET_HW_INFO` with room for `iommu_hw_info_vtd`.
pub(crate) fn hw_info(fd: &IommuFd, dev: u32) -> Result<RawHwInfo, i32> {
    let mut vtd = iommu_hw_info_vtd::default();
    let mut cmd = iommu_hw_info {
        size: size_of::<iommu_hw_info>() as u32,
        dev_id: dev,
        data_len: size_of::<iommu_hw_info_vtd>() as u32,
        // `vtd` lives on this frame for the whole call; the kernel writes at most data_len
        // bytes into it.
        data_uptr: &mut vtd as *mut iommu_hw_info_vtd as u64,
        ..Default::default()
    };
    fd.get_hw_info(&mut cmd).map_err(|e| errno(&e))?;
    // SAFETY: both union members are a `__u32` at offset 0; `cmd` was zero-initialised and
    // then filled by the kernel, so reading either name reads an initialised u32.
    let kind = unsafe { cmd.__bindgen_anon_1.out_data_type };
    Ok(RawHwInfo {
        kind,
        vtd: (kind == iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD).then_some(vtd),
        max_pasid_log2: cmd.out_max_pasid_log2,
        capabilities: cmd.out_capabilities,
    })
}

/// `IOMMU_HWPT_INVALIDATE` with VT-d stage-1 entries: `(processed, result)`.
pub(crate) fn hwpt_invalidate(
    fd: &IommuFd,
    hwpt: u32,
    entries: &[VtdS1Invalidation],
) -> (u32, Result<(), i32>) {
    let mut raw: Vec<iommu_hwpt_vtd_s1_invalidate> = entries
        .iter()
        .map(|e| iommu_hwpt_vtd_s1_invalidate {
            addr: e.addr,
            npages: e.npages,
            flags: e.flags,
            __reserved: e.reserved,
        })
        .collect();
    let Ok(num) = u32::try_from(raw.len()) else {
        return (0, Err(libc::EINVAL));
    };
    let mut cmd = iommu_hwpt_invalidate {
        size: size_of::<iommu_hwpt_invalidate>() as u32,
        hwpt_id: hwpt,
        // `raw` outlives the call and holds `entry_num` entries of `entry_len` bytes.
        data_uptr: raw.as_mut_ptr() as u64,
        data_type: iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        entry_len: size_of::<iommu_hwpt_vtd_s1_invalidate>() as u32,
        entry_num: num,
        __reserved: 0,
    };
    let result = fd.invalidate_hwpt(&mut cmd).map_err(|e| errno(&e));
    // iommufd writes back how many entries it handled, on success and on failure; an ioctl
    // refused before reaching it (wrong fd, bad size) leaves our `num` there, and a failure
    // never handled every entry.
    let processed = match result {
        Ok(()) => cmd.entry_num.min(num),
        Err(_) if cmd.entry_num < num => cmd.entry_num,
        Err(_) => 0,
    };
    (processed, result)
}

/// `IOMMU_DESTROY`.
pub(crate) fn destroy(fd: &IommuFd, id: u32) -> Result<(), i32> {
    fd.destroy_iommu_object(id).map_err(|e| errno(&e))
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on a device cdev; returns `pt_id` as the kernel wrote it
/// back (for an IOAS, the automatic HWPT it attached).
pub(crate) fn attach_pt<F: AsRawFd>(device: &F, pt_id: u32) -> Result<u32, i32> {
    let mut cmd = vfio_device_attach_iommufd_pt {
        argsz: size_of::<vfio_device_attach_iommufd_pt>() as u32,
        flags: 0,
        pt_id,
        pasid: 0,
    };
    // SAFETY: `device` is an open VFIO device cdev (the borrow keeps it open for the call);
    // `cmd` is a fully initialised vfio_device_attach_iommufd_pt whose argsz matches its
    // size, exclusively borrowed for the call; the kernel reads it and writes back pt_id
    // only; the return value is checked.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ref(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT(), &mut cmd)
    };
    if ret < 0 {
        return Err(SysError::last().errno());
    }
    Ok(cmd.pt_id)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use iommufd_bindings::iommufd::*;
    use vfio_bindings::bindings::vfio::*;

    /// Ioctl numbers as Linux's `include/uapi/linux/iommufd.h` and `vfio.h` define them
    /// (`_IO(';', nr)`).
    #[test]
    fn ioctl_numbers_are_pinned() {
        use iommufd_ioctls as io;
        assert_eq!(io::IOMMU_DESTROY(), 0x3b80);
        assert_eq!(io::IOMMU_IOAS_ALLOC(), 0x3b81);
        assert_eq!(io::IOMMU_IOAS_MAP(), 0x3b85);
        assert_eq!(io::IOMMU_IOAS_UNMAP(), 0x3b86);
        assert_eq!(io::IOMMU_HWPT_ALLOC(), 0x3b89);
        assert_eq!(io::IOMMUFD_GET_HW_INFO(), 0x3b8a);
        assert_eq!(io::IOMMUFD_HWPT_INVALIDATE(), 0x3b8d);
        assert_eq!(super::VFIO_DEVICE_BIND_IOMMUFD(), 0x3b76);
        assert_eq!(super::VFIO_DEVICE_ATTACH_IOMMUFD_PT(), 0x3b77);
        assert_eq!(super::VFIO_DEVICE_DETACH_IOMMUFD_PT(), 0x3b78);
        assert_eq!(IOMMUFD_TYPE, b';');
        assert_eq!(VFIO_TYPE, b';');
    }

    /// Enum values of the uAPI, §6.
    #[test]
    fn uapi_constants_are_pinned() {
        assert_eq!(iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT, 1);
        assert_eq!(iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1, 1);
        assert_eq!(iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_SRE, 1);
        assert_eq!(iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_EAFE, 2);
        assert_eq!(iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_WPE, 4);
        assert_eq!(
            iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
            0
        );
        assert_eq!(
            iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF,
            1
        );
        assert_eq!(
            iommu_hw_info_vtd_flags_IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
            1
        );
        assert_eq!(iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD, 1);
        assert_eq!(iommufd_hw_capabilities_IOMMU_HW_CAP_DIRTY_TRACKING, 1);
        assert_eq!(iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA, 1);
        assert_eq!(iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE, 2);
        assert_eq!(iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE, 4);
        // Our typed constants agree.
        assert_eq!(crate::VtdS1HwptData::SRE, 1);
        assert_eq!(crate::VtdS1HwptData::EAFE, 2);
        assert_eq!(crate::VtdS1HwptData::WPE, 4);
        assert_eq!(crate::VtdS1Invalidation::LEAF, 1);
        assert_eq!(crate::VtdHwInfo::ERRATA_772415_SPR17, 1);
        assert_eq!(crate::HwCaps::DIRTY_TRACKING, 1);
    }

    /// Struct layouts: sizes and field offsets as laid out in §6 (x86-64).
    #[test]
    fn struct_layouts_are_pinned() {
        assert_eq!(size_of::<iommu_destroy>(), 8);
        assert_eq!(size_of::<iommu_ioas_alloc>(), 12);
        assert_eq!(size_of::<iommu_ioas_map>(), 40);
        assert_eq!(offset_of!(iommu_ioas_map, user_va), 16);
        assert_eq!(offset_of!(iommu_ioas_map, length), 24);
        assert_eq!(offset_of!(iommu_ioas_map, iova), 32);
        assert_eq!(size_of::<iommu_ioas_unmap>(), 24);
        assert_eq!(offset_of!(iommu_ioas_unmap, iova), 8);

        assert_eq!(size_of::<iommu_hwpt_alloc>(), 48);
        assert_eq!(offset_of!(iommu_hwpt_alloc, flags), 4);
        assert_eq!(offset_of!(iommu_hwpt_alloc, dev_id), 8);
        assert_eq!(offset_of!(iommu_hwpt_alloc, pt_id), 12);
        assert_eq!(offset_of!(iommu_hwpt_alloc, out_hwpt_id), 16);
        assert_eq!(offset_of!(iommu_hwpt_alloc, data_type), 24);
        assert_eq!(offset_of!(iommu_hwpt_alloc, data_len), 28);
        assert_eq!(offset_of!(iommu_hwpt_alloc, data_uptr), 32);
        assert_eq!(offset_of!(iommu_hwpt_alloc, fault_id), 40);

        assert_eq!(size_of::<iommu_hwpt_vtd_s1>(), 24);
        assert_eq!(offset_of!(iommu_hwpt_vtd_s1, pgtbl_addr), 8);
        assert_eq!(offset_of!(iommu_hwpt_vtd_s1, addr_width), 16);
        assert_eq!(offset_of!(iommu_hwpt_vtd_s1, __reserved), 20);

        assert_eq!(size_of::<iommu_hw_info_vtd>(), 24);
        assert_eq!(offset_of!(iommu_hw_info_vtd, cap_reg), 8);
        assert_eq!(offset_of!(iommu_hw_info_vtd, ecap_reg), 16);
        assert_eq!(size_of::<iommu_hw_info>(), 40);
        assert_eq!(offset_of!(iommu_hw_info, data_uptr), 16);
        assert_eq!(offset_of!(iommu_hw_info, __bindgen_anon_1), 24);
        assert_eq!(offset_of!(iommu_hw_info, out_max_pasid_log2), 28);
        assert_eq!(offset_of!(iommu_hw_info, out_capabilities), 32);

        assert_eq!(size_of::<iommu_hwpt_vtd_s1_invalidate>(), 24);
        assert_eq!(offset_of!(iommu_hwpt_vtd_s1_invalidate, npages), 8);
        assert_eq!(offset_of!(iommu_hwpt_vtd_s1_invalidate, flags), 16);
        assert_eq!(size_of::<iommu_hwpt_invalidate>(), 32);
        assert_eq!(offset_of!(iommu_hwpt_invalidate, data_uptr), 8);
        assert_eq!(offset_of!(iommu_hwpt_invalidate, data_type), 16);
        assert_eq!(offset_of!(iommu_hwpt_invalidate, entry_len), 20);
        assert_eq!(offset_of!(iommu_hwpt_invalidate, entry_num), 24);

        assert_eq!(size_of::<vfio_device_bind_iommufd>(), 24);
        assert_eq!(offset_of!(vfio_device_bind_iommufd, iommufd), 8);
        assert_eq!(offset_of!(vfio_device_bind_iommufd, out_devid), 12);
        assert_eq!(size_of::<vfio_device_attach_iommufd_pt>(), 16);
        assert_eq!(offset_of!(vfio_device_attach_iommufd_pt, pt_id), 8);
        assert_eq!(offset_of!(vfio_device_attach_iommufd_pt, pasid), 12);
        assert_eq!(size_of::<vfio_device_detach_iommufd_pt>(), 12);
    }
}
