//! The real backend: `/dev/iommu` through iommufd-ioctls' raw calls and VFIO device cdevs
//! through vfio-ioctls (`vfio_cdev`).
//!
//! It builds everywhere. Where the host lacks what nesting needs it fails at start with one
//! sentence: no `/dev/iommu` (`CONFIG_IOMMUFD`), no device cdev (`CONFIG_VFIO_DEVICE_CDEV`),
//! not VT-d, or no nesting (ECAP.NEST). All `unsafe` is in the private `sys` module.
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_iommu::HostIommu;
//! use host_iommu::iommufd::IommufdHost;
//!
//! let host = Arc::new(IommufdHost::open()?);
//! let (dev, _vfio) = host.open_device("/sys/bus/pci/devices/0000:01:00.0".as_ref())?;
//! let vtd = host.check_nesting(dev)?;            // "... (ECAP.NEST is clear)" otherwise
//! let host: Arc<dyn HostIommu> = host;
//! # Ok::<(), host_iommu::iommufd::IommufdHostError>(())
//! ```

mod sys;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iommufd_ioctls::IommuFd;
use vfio_ioctls::{VfioDevice, VfioDeviceFd, VfioError, VfioIommufd};

use crate::{
    DeviceId, DmaPerm, HostIommu, HostIommuError, HwCaps, HwInfo, HwInfoType, HwptId, IoasId, Op,
    PtId, Result, VtdHwInfo, VtdS1HwptData, VtdS1Invalidation,
};
use vtd_spec::regs::{Cap, Ecap};

/// Path of the iommufd character device.
pub const IOMMU_DEV: &str = "/dev/iommu";

/// Why the real backend cannot start or take a device.
#[derive(Debug, thiserror::Error)]
pub enum IommufdHostError {
    /// No `/dev/iommu`.
    #[error("/dev/iommu is missing: the host kernel needs CONFIG_IOMMUFD")]
    Missing,
    /// `/dev/iommu` exists but cannot be opened.
    #[error("Cannot open /dev/iommu")]
    Open(#[source] std::io::Error),
    /// The VFIO iommufd wrapper could not be set up.
    #[error("Cannot set up VFIO on /dev/iommu")]
    Vfio(#[source] VfioError),
    /// The device has no VFIO cdev.
    #[error(
        "{} has no VFIO device cdev: bind it to vfio-pci on a host kernel with CONFIG_VFIO_DEVICE_CDEV",
        .0.display()
    )]
    NoCdev(PathBuf),
    /// Opening or binding the device cdev failed.
    #[error("Cannot bind {} to /dev/iommu", .path.display())]
    Bind {
        /// The device's sysfs path.
        path: PathBuf,
        /// What vfio-ioctls reported.
        #[source]
        source: VfioError,
    },
    /// A host operation refused (with its errno), or the host cannot nest.
    #[error(transparent)]
    Host(#[from] HostIommuError),
}

/// The host IOMMU through `/dev/iommu` and VFIO device cdevs.
pub struct IommufdHost {
    iommufd: Arc<IommuFd>,
    vfio: Arc<VfioIommufd>,
    devices: Mutex<BTreeMap<u32, Arc<VfioDevice>>>,
}

impl std::fmt::Debug for IommufdHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommufdHost").finish_non_exhaustive()
    }
}

impl IommufdHost {
    /// Opens `/dev/iommu`.
    pub fn open() -> std::result::Result<Self, IommufdHostError> {
        Self::open_path(Path::new(IOMMU_DEV), None)
    }

    /// Opens `/dev/iommu` for a VM: every device file bound later is also added to the VM's
    /// KVM VFIO pseudo-device `kvm_vfio` (`KVM_DEV_VFIO_FILE_ADD`).
    pub fn open_for_vm(kvm_vfio: Arc<VfioDeviceFd>) -> std::result::Result<Self, IommufdHostError> {
        Self::open_path(Path::new(IOMMU_DEV), Some(kvm_vfio))
    }

    fn open_path(
        path: &Path,
        kvm_vfio: Option<Arc<VfioDeviceFd>>,
    ) -> std::result::Result<Self, IommufdHostError> {
        if !path.exists() {
            return Err(IommufdHostError::Missing);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(IommufdHostError::Open)?;
        let iommufd = Arc::new(IommuFd::new_from_fd(file));
        // The IOAS vfio-ioctls allocates here is the one devices without nesting use (guest
        // RAM mapped once, or the shadow of the guest's tables): see `dma_ioas`.
        let vfio =
            VfioIommufd::new(iommufd.clone(), None, kvm_vfio).map_err(IommufdHostError::Vfio)?;
        Ok(Self {
            iommufd,
            vfio: Arc::new(vfio),
            devices: Mutex::new(BTreeMap::new()),
        })
    }

    /// The IOAS of devices the VMM maps itself (no nesting): vfio-ioctls' own IOAS, destroyed
    /// with this host.
    pub fn dma_ioas(&self) -> IoasId {
        IoasId(self.vfio.ioas().id())
    }

    /// Whether the kernel gives `dev` a nest parent: allocates one on the DMA IOAS and frees
    /// it. The kernel's refusal (EOPNOTSUPP where the IOMMU lacks ECAP.NEST) is returned.
    pub fn probe_nest_parent(&self, dev: DeviceId) -> Result<()> {
        let hwpt = self.hwpt_alloc_nest_parent(dev, self.dma_ioas())?;
        self.hwpt_destroy(hwpt)
    }

    /// The VFIO wrapper devices are bound through (for `VfioDevice::new(.., attach_ioas:
    /// false)` by the VMM, then [`register_device`](Self::register_device)).
    pub fn vfio(&self) -> &Arc<VfioIommufd> {
        &self.vfio
    }

    /// Opens the VFIO cdev of the PCI device at `sysfs` (e.g.
    /// `/sys/bus/pci/devices/0000:01:00.0`), binds it to `/dev/iommu` without attaching it
    /// (its DMA stays blocked), and registers it.
    pub fn open_device(
        &self,
        sysfs: &Path,
    ) -> std::result::Result<(DeviceId, Arc<VfioDevice>), IommufdHostError> {
        if !sysfs.join("vfio-dev").is_dir() {
            return Err(IommufdHostError::NoCdev(sysfs.to_owned()));
        }
        let dev = VfioDevice::new(sysfs, self.vfio.clone(), false).map_err(|source| {
            IommufdHostError::Bind {
                path: sysfs.to_owned(),
                source,
            }
        })?;
        let dev = Arc::new(dev);
        let id = self
            .register_device(dev.clone())
            .ok_or_else(|| IommufdHostError::NoCdev(sysfs.to_owned()))?;
        Ok((id, dev))
    }

    /// Registers a device the VMM bound through [`vfio`](Self::vfio); `None` if it is not
    /// bound to an iommufd.
    pub fn register_device(&self, dev: Arc<VfioDevice>) -> Option<DeviceId> {
        let id = dev.iommufd_dev_id()?;
        self.lock().insert(id, dev);
        Some(DeviceId(id))
    }

    /// Forgets a device (before the VMM drops its `VfioDevice`, which detaches and closes it).
    pub fn remove_device(&self, dev: DeviceId) -> Option<Arc<VfioDevice>> {
        self.lock().remove(&dev.0)
    }

    /// Checks that `dev`'s host IOMMU is VT-d with nesting; the VT-d info, or the one
    /// sentence that says why not.
    pub fn check_nesting(&self, dev: DeviceId) -> std::result::Result<VtdHwInfo, IommufdHostError> {
        let info = self.hw_info(dev)?;
        Ok(*info.require_vtd_nesting().map_err(HostIommuError::from)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Arc<VfioDevice>>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn device(&self, dev: DeviceId) -> Result<Arc<VfioDevice>> {
        self.lock()
            .get(&dev.0)
            .cloned()
            .ok_or(HostIommuError::UnknownDevice(dev))
    }
}

fn vfio_errno(e: &VfioError) -> i32 {
    match e {
        VfioError::VfioDeviceAttachIommufdPt(s) | VfioError::VfioDeviceDetachIommufdPt(s) => {
            s.errno()
        }
        _ => libc::EIO,
    }
}

impl HostIommu for IommufdHost {
    fn hw_info(&self, dev: DeviceId) -> Result<HwInfo> {
        self.device(dev)?;
        let raw = sys::hw_info(&self.iommufd, dev.0)
            .map_err(|e| HostIommuError::kernel(Op::GetHwInfo, e))?;
        Ok(HwInfo {
            kind: HwInfoType::from_raw(raw.kind),
            vtd: raw.vtd.map(|v| VtdHwInfo {
                flags: v.flags,
                cap: Cap::from_bits(v.cap_reg),
                ecap: Ecap::from_bits(v.ecap_reg),
            }),
            max_pasid_log2: raw.max_pasid_log2,
            capabilities: HwCaps(raw.capabilities),
        })
    }

    fn ioas_alloc(&self) -> Result<IoasId> {
        sys::ioas_alloc(&self.iommufd)
            .map(IoasId)
            .map_err(|e| HostIommuError::kernel(Op::IoasAlloc, e))
    }

    fn ioas_map(&self, ioas: IoasId, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        sys::ioas_map(&self.iommufd, ioas.0, iova, hva, len, perm)
            .map_err(|e| HostIommuError::kernel(Op::IoasMap, e))
    }

    fn ioas_unmap(&self, ioas: IoasId, iova: u64, len: u64) -> Result<u64> {
        sys::ioas_unmap(&self.iommufd, ioas.0, iova, len)
            .map_err(|e| HostIommuError::kernel(Op::IoasUnmap, e))
    }

    fn hwpt_alloc_nest_parent(&self, dev: DeviceId, ioas: IoasId) -> Result<HwptId> {
        sys::hwpt_alloc_nest_parent(&self.iommufd, dev.0, ioas.0)
            .map(HwptId)
            .map_err(|e| HostIommuError::kernel(Op::AllocNestParent, e))
    }

    fn hwpt_alloc_nested(
        &self,
        dev: DeviceId,
        parent: HwptId,
        data: &VtdS1HwptData,
    ) -> Result<HwptId> {
        sys::hwpt_alloc_nested(&self.iommufd, dev.0, parent.0, data)
            .map(HwptId)
            .map_err(|e| HostIommuError::kernel(Op::AllocNested, e))
    }

    fn attach(&self, dev: DeviceId, pt: PtId) -> Result<HwptId> {
        let device = self.device(dev)?;
        match pt {
            PtId::Hwpt(h) => device
                .attach_hwpt(h.0)
                .map(|()| h)
                .map_err(|e| HostIommuError::kernel(Op::Attach, vfio_errno(&e))),
            PtId::Ioas(i) => sys::attach_pt(device.as_ref(), i.0)
                .map(HwptId)
                .map_err(|e| HostIommuError::kernel(Op::Attach, e)),
        }
    }

    fn detach(&self, dev: DeviceId) -> Result<()> {
        self.device(dev)?
            .detach_hwpt()
            .map_err(|e| HostIommuError::kernel(Op::Detach, vfio_errno(&e)))
    }

    fn hwpt_invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32> {
        let total = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let (processed, result) = sys::hwpt_invalidate(&self.iommufd, hwpt.0, entries);
        match result {
            Ok(()) if processed == total => Ok(processed),
            Ok(()) => {
                tracing::error!(
                    "IOMMU_HWPT_INVALIDATE succeeded but processed {processed} of {total} entries: kernel bug?"
                );
                Err(HostIommuError::Invalidate {
                    processed,
                    total,
                    errno: libc::EIO,
                })
            }
            Err(errno) => Err(HostIommuError::Invalidate {
                processed,
                total,
                errno,
            }),
        }
    }

    fn hwpt_destroy(&self, hwpt: HwptId) -> Result<()> {
        sys::destroy(&self.iommufd, hwpt.0).map_err(|e| HostIommuError::kernel(Op::Destroy, e))
    }

    fn ioas_destroy(&self, ioas: IoasId) -> Result<()> {
        sys::destroy(&self.iommufd, ioas.0).map_err(|e| HostIommuError::kernel(Op::Destroy, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These machines have no /dev/iommu: opening refuses with the one sentence.
    #[test]
    fn missing_dev_iommu_is_one_clear_sentence() {
        if Path::new(IOMMU_DEV).exists() {
            eprintln!("{IOMMU_DEV} exists here; checking the refusal on a missing path instead");
        } else {
            let e = IommufdHost::open().unwrap_err();
            assert_eq!(
                e.to_string(),
                "/dev/iommu is missing: the host kernel needs CONFIG_IOMMUFD"
            );
        }
        let e = IommufdHost::open_path(Path::new("/nonexistent/iommu"), None).unwrap_err();
        assert!(matches!(e, IommufdHostError::Missing), "{e}");
    }

    #[test]
    fn a_device_without_cdev_is_one_clear_sentence() {
        let e = IommufdHostError::NoCdev("/sys/bus/pci/devices/0000:01:00.0".into());
        assert_eq!(
            e.to_string(),
            "/sys/bus/pci/devices/0000:01:00.0 has no VFIO device cdev: bind it to vfio-pci on a host kernel with CONFIG_VFIO_DEVICE_CDEV"
        );
        let e = IommufdHostError::from(HostIommuError::Unsupported(
            "The host IOMMU does not support nested translation (ECAP.NEST is clear)".into(),
        ));
        assert_eq!(
            e.to_string(),
            "The host IOMMU does not support nested translation (ECAP.NEST is clear)"
        );
    }

    /// Opening a file that is not iommufd as the iommufd: the first ioctl fails with the
    /// kernel's errno rather than anything worse.
    #[test]
    fn ioctls_on_a_non_iommufd_fd_fail_with_an_errno() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = IommuFd::new_from_fd(file);
        let e = sys::ioas_alloc(&fd).unwrap_err();
        assert!(
            e == libc::ENOTTY || e == libc::EINVAL || e == libc::EBADF,
            "errno {e}"
        );
        let (processed, r) = sys::hwpt_invalidate(&fd, 1, &[VtdS1Invalidation::all()]);
        assert_eq!(processed, 0);
        assert!(r.is_err());
        assert!(sys::hw_info(&fd, 1).is_err());
        assert!(sys::destroy(&fd, 1).is_err());
    }
}
