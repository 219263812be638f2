//! Real device assignment: `--device path=/sys/bus/pci/devices/DDDD:BB:DD.F,...`.
//!
//! ```text
//!  --device ─► host::check_device (bound to vfio-pci, group viable)          refusals: exit 2
//!      │
//!      ├─ backend: iommufd (/dev/iommu + VFIO cdev) │ container (/dev/vfio/vfio + group)
//!      │    every device file / group is added to the VM's KVM VFIO pseudo-device
//!      ▼
//!  DMA path, chosen once per device (counter <id>_dma_path_<path> 1):
//!      no vIOMMU, or iommu=off ─► whole_ram: guest RAM mapped once at IOVA = GPA
//!      vIOMMU, x-flts=off ─────► shadow: accel::Shadow walks the guest's second-stage tables
//!                                on each invalidation and maps IOVA → guest RAM (own IOAS or
//!                                container per device)
//!      vIOMMU, x-flts=on ──────► nested: accel::Accel binds the guest's first-stage table over
//!                                a nest parent (iommufd on a host with ECAP.NEST; refused
//!                                elsewhere)
//!      ▼
//!  device::VfioPciDevice on PCI bus 0 (config space, BAR slots, MSI-X → irqfd)
//! ```
//!
//! Teardown is RAII: dropping the PCI function disables MSI-X, resets the device, detaches it
//! and releases its IOAS or container; the KVM VFIO pseudo-device goes with the VM.

mod device;
pub mod host;
mod intx;
mod msi;
mod sys;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::pci::{PciBus, SharedPciDevice};
use host_iommu::container::ContainerDma;
use host_iommu::iommufd::{IommufdHost, IommufdHostError};
use host_iommu::{DmaMap, DmaPerm, HostIommu, IoasDma, PtId};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{DeviceConfig, VfioBackend};
use crate::device_context::DeviceContext;
use crate::interrupt::{KvmMsiController, VectorSignaller};
use crate::iommu::bus0_sid;
pub use device::{HostFunction, Release, VectorEventFds, VfioPciDevice};
pub use intx::IntxRoute;

/// Errors assigning a device. [`Error::is_refusal`] ones are the host or configuration saying
/// no (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is not a PCI device.
    #[error("{} is not a PCI device (use --device path=/sys/bus/pci/devices/DDDD:BB:DD.F)", .0.display())]
    NoDevice(PathBuf),
    /// Not bound to vfio-pci.
    #[error(
        "Device {address} {}, not vfio-pci: write vfio-pci to its driver_override, unbind it and write its address to /sys/bus/pci/drivers_probe",
        match .driver { Some(d) => format!("is bound to {d}"), None => "has no driver".to_owned() }
    )]
    NotVfioPci {
        /// PCI address.
        address: String,
        /// Its driver.
        driver: Option<String>,
    },
    /// No IOMMU group.
    #[error(
        "Device {0} has no IOMMU group: the host IOMMU is off (boot the host with intel_iommu=on)"
    )]
    NoGroup(String),
    /// Another member of the group is bound to a host driver.
    #[error(
        "The IOMMU group {group} of device {address} is not viable: {member} in the same group is bound to {driver}; bind every device of the group to vfio-pci or unbind it"
    )]
    GroupNotViable {
        /// PCI address.
        address: String,
        /// Group number.
        group: String,
        /// The offending member.
        member: String,
        /// Its driver.
        driver: String,
    },
    /// `backend=iommufd` on a host without `/dev/iommu`.
    #[error(
        "Device {0} asks for backend=iommufd, but /dev/iommu is missing: the host kernel needs CONFIG_IOMMUFD (or use backend=container)"
    )]
    NoIommufd(String),
    /// The host IOMMU cannot nest the guest's first-stage tables.
    #[error(
        "Cannot assign {device} behind a vIOMMU with x-flts=on: the host IOMMU does not support nested translation ({why}); use x-flts=off,caching-mode=on to shadow the guest's second-stage tables instead"
    )]
    NoNesting {
        /// The device.
        device: String,
        /// What the host said.
        why: String,
    },
    /// The device has something this VMM does not offer.
    #[error("Cannot assign {device}: {why}")]
    Unsupported {
        /// The device.
        device: String,
        /// What.
        why: String,
    },
    /// Opening or binding through VFIO failed.
    #[error("Cannot open {device} through VFIO: {source}")]
    Vfio {
        /// The device.
        device: String,
        /// vfio-ioctls' error.
        #[source]
        source: VfioError,
    },
    /// The iommufd backend refused.
    #[error("Cannot assign {device}: {source}")]
    Iommufd {
        /// The device.
        device: String,
        /// The backend's error.
        #[source]
        source: IommufdHostError,
    },
    /// A host IOMMU operation failed.
    #[error("Cannot assign {device}: {source}")]
    Host {
        /// The device.
        device: String,
        /// The host's refusal.
        #[source]
        source: host_iommu::HostIommuError,
    },
    /// Nested assignment refused by the accel layer.
    #[error(transparent)]
    Accel(#[from] accel::AccelError),
    /// A BAR could not be mmapped.
    #[error("Cannot mmap BAR {bar} of {device}: {source}")]
    Mmap {
        /// The device.
        device: String,
        /// BAR index.
        bar: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The KVM VFIO pseudo-device.
    #[error("Cannot create the KVM VFIO device: {0}")]
    KvmVfio(#[source] kvm_ioctls::Error),
    /// No room on the bus.
    #[error("Cannot place {device} on PCI bus 0: {source}")]
    Bus {
        /// The device.
        device: String,
        /// The bus's error.
        #[source]
        source: devices::pci::PciBusError,
    },
}

impl Error {
    /// Whether this is the host or the configuration refusing the assignment (exit status 2),
    /// rather than a failure while setting it up.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NoDevice(_)
                | Self::NotVfioPci { .. }
                | Self::NoGroup(_)
                | Self::GroupNotViable { .. }
                | Self::NoIommufd(_)
                | Self::NoNesting { .. }
                | Self::Unsupported { .. }
                | Self::Accel(accel::AccelError::Incompatible { .. })
        ) || matches!(
            self,
            Self::Vfio {
                source: VfioError::GroupViable,
                ..
            }
        )
    }
}

/// How a device's DMA is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaPath {
    /// All guest RAM at IOVA = GPA.
    WholeRam,
    /// The guest's second-stage tables, shadowed.
    Shadow,
    /// The guest's first-stage tables, nested.
    Nested,
}

impl DmaPath {
    /// The counter suffix.
    pub fn name(self) -> &'static str {
        match self {
            Self::WholeRam => "whole_ram",
            Self::Shadow => "shadow",
            Self::Nested => "nested",
        }
    }

    /// The path for `device` on a VM whose vIOMMU has `vtd` (if any).
    pub fn choose(device: &DeviceConfig, vtd: Option<&vtd::Config>) -> Self {
        match vtd {
            Some(c) if device.iommu && c.first_stage => Self::Nested,
            Some(_) if device.iommu => Self::Shadow,
            _ => Self::WholeRam,
        }
    }
}

/// Guest RAM as the host IOMMU maps it.
fn ram_regions(ctx: &DeviceContext) -> Vec<accel::RamRegion> {
    ctx.memory()
        .iter()
        .map(|r| accel::RamRegion {
            gpa: r.start_addr().0,
            hva: r.as_ptr() as u64,
            len: r.len(),
            writable: true,
        })
        .collect()
}

/// Guest RAM mapped once into an address space; unmapped on drop.
#[derive(Debug)]
struct WholeRam {
    dma: Arc<dyn DmaMap>,
    ram: Vec<accel::RamRegion>,
}

impl WholeRam {
    fn map(dma: Arc<dyn DmaMap>, ram: Vec<accel::RamRegion>) -> host_iommu::Result<Self> {
        let mut done = WholeRam {
            dma,
            ram: Vec::new(),
        };
        for r in ram {
            done.dma.map(r.gpa, r.hva, r.len, DmaPerm::READ_WRITE)?;
            done.ram.push(r);
        }
        Ok(done)
    }
}

impl Drop for WholeRam {
    fn drop(&mut self) {
        for r in &self.ram {
            if let Err(e) = self.dma.unmap(r.gpa, r.len) {
                tracing::warn!(
                    "Cannot unmap guest RAM at {:#x} from the host IOMMU: {e}",
                    r.gpa
                );
            }
        }
    }
}

/// The VM's VFIO state shared by its assigned devices (the KVM VFIO device, the iommufd or
/// container, guest RAM mapped once, the shadow and accel registries), kept for the VM's life
/// so devices hot-added later share it.
#[derive(Default)]
pub struct VfioHosts(Mutex<Context>);

impl std::fmt::Debug for VfioHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioHosts").finish_non_exhaustive()
    }
}

/// The VM's VFIO state shared by its assigned devices.
#[derive(Default)]
struct Context {
    kvm_vfio: Option<Arc<VfioDeviceFd>>,
    iommufd: Option<Arc<IommufdHost>>,
    iommufd_ram: Option<Arc<WholeRam>>,
    container: Option<(Arc<VfioContainer>, Arc<WholeRam>)>,
    shadow: Option<Arc<accel::Shadow>>,
    accel: Option<Arc<accel::Accel>>,
}

impl Context {
    fn kvm_vfio(&mut self, ctx: &DeviceContext) -> Result<Arc<VfioDeviceFd>, Error> {
        if let Some(fd) = &self.kvm_vfio {
            return Ok(fd.clone());
        }
        let mut create = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let fd = ctx
            .kvm_vm()
            .create_device(&mut create)
            .map_err(Error::KvmVfio)?;
        let fd = Arc::new(VfioDeviceFd::new_from_kvm(fd));
        self.kvm_vfio = Some(fd.clone());
        Ok(fd)
    }

    fn iommufd(&mut self, ctx: &DeviceContext, name: &str) -> Result<Arc<IommufdHost>, Error> {
        if let Some(h) = &self.iommufd {
            return Ok(h.clone());
        }
        let kvm_vfio = self.kvm_vfio(ctx)?;
        let host = Arc::new(
            IommufdHost::open_for_vm(kvm_vfio).map_err(|source| match source {
                IommufdHostError::Missing => Error::NoIommufd(name.to_owned()),
                source => Error::Iommufd {
                    device: name.to_owned(),
                    source,
                },
            })?,
        );
        self.iommufd = Some(host.clone());
        Ok(host)
    }

    fn shadow(&mut self, ctx: &DeviceContext) -> Arc<accel::Shadow> {
        if let Some(s) = &self.shadow {
            return s.clone();
        }
        let shadow = Arc::new(accel::Shadow::new(ram_regions(ctx)));
        if let Some(unit) = ctx.vtd() {
            unit.add_observer(shadow.clone());
        }
        ctx.counters().add_component("shadow_", shadow.clone());
        ctx.add_host_bindings(crate::iommu_state::HostBindings::Shadow(shadow.clone()));
        self.shadow = Some(shadow.clone());
        shadow
    }

    fn accel(&mut self, ctx: &DeviceContext, unit: &Arc<vtd::Vtd>) -> Arc<accel::Accel> {
        if let Some(a) = &self.accel {
            return a.clone();
        }
        let accel = Arc::new(accel::Accel::new(*unit.config(), ram_regions(ctx)));
        unit.add_observer(accel.clone());
        ctx.counters().add_component("accel_", accel.clone());
        ctx.add_host_bindings(crate::iommu_state::HostBindings::Nested(accel.clone()));
        self.accel = Some(accel.clone());
        accel
    }
}

/// What `auto` means for the device at `sysfs`: iommufd when the host has `/dev/iommu` and the
/// device a VFIO cdev, else the container.
fn resolve(backend: VfioBackend, sysfs: &std::path::Path) -> VfioBackend {
    match backend {
        VfioBackend::Auto
            if std::path::Path::new(host_iommu::iommufd::IOMMU_DEV).exists()
                && sysfs.join("vfio-dev").is_dir() =>
        {
            VfioBackend::Iommufd
        }
        VfioBackend::Auto => VfioBackend::Container,
        b => b,
    }
}

/// Assigns every `--device`, on bus 0 from device number `first_slot` on.
pub fn add_devices(
    ctx: &DeviceContext,
    devices: &[DeviceConfig],
    bus: &PciBus,
    first_slot: u8,
) -> Result<(), Error> {
    for (index, config) in devices.iter().enumerate() {
        add_device_at(ctx, bus, config, first_slot.saturating_add(index as u8))?;
    }
    Ok(())
}

/// Adds the host function of `config` at `slot` of `bus` (at start, or hot-added), sharing the
/// VM's VFIO state; everything it holds is released when the function is dropped.
pub fn add_device_at(
    ctx: &DeviceContext,
    bus: &PciBus,
    config: &DeviceConfig,
    slot: u8,
) -> Result<(), Error> {
    let vtd_config = ctx.vtd().map(|u| *u.config());
    let mut context = ctx.vfio_hosts().0.lock().unwrap_or_else(|e| e.into_inner());
    add_device(ctx, bus, &mut context, config, slot, vtd_config.as_ref())
}

fn add_device(
    ctx: &DeviceContext,
    bus: &PciBus,
    context: &mut Context,
    config: &DeviceConfig,
    slot: u8,
    vtd_config: Option<&vtd::Config>,
) -> Result<(), Error> {
    let name = config.id.as_str();
    let address = host::check_device(&config.path)?;
    let path = DmaPath::choose(config, vtd_config);
    let backend = resolve(config.backend, &config.path);
    let sid = bus0_sid(slot);
    let vfio_err = |source| Error::Vfio {
        device: name.to_owned(),
        source,
    };
    let host_err = |source| Error::Host {
        device: name.to_owned(),
        source,
    };
    // What the device needs kept alive, and released (after it is reset) when it goes.
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut release: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    let device: Arc<VfioDevice> = match backend {
        VfioBackend::Iommufd | VfioBackend::Auto => {
            let host = context.iommufd(ctx, name)?;
            let (dev, device) =
                host.open_device(&config.path)
                    .map_err(|source| Error::Iommufd {
                        device: name.to_owned(),
                        source,
                    })?;
            let unregister = {
                let host = host.clone();
                move || {
                    if let Err(e) = host.detach(dev) {
                        tracing::debug!("detach of {dev} at teardown: {e}");
                    }
                    host.remove_device(dev);
                }
            };
            // On any failure below, the device is detached and forgotten.
            let guard = Guard(Some(Box::new(unregister)));
            device.reset();
            match path {
                DmaPath::WholeRam => {
                    let ram = match &context.iommufd_ram {
                        Some(r) => r.clone(),
                        None => {
                            let dma: Arc<dyn DmaMap> =
                                Arc::new(IoasDma::new(host.clone(), host.dma_ioas()));
                            let r =
                                Arc::new(WholeRam::map(dma, ram_regions(ctx)).map_err(host_err)?);
                            context.iommufd_ram = Some(r.clone());
                            r
                        }
                    };
                    host.attach(dev, PtId::Ioas(host.dma_ioas()))
                        .map_err(host_err)?;
                    keep.push(Box::new(ram));
                }
                DmaPath::Shadow => {
                    let iommu: Arc<dyn HostIommu> = host.clone();
                    let ioas = Arc::new(host_iommu::Ioas::new(iommu).map_err(host_err)?);
                    host.attach(dev, PtId::Ioas(ioas.id())).map_err(host_err)?;
                    let dma: Arc<dyn DmaMap> = ioas;
                    shadow_device(ctx, context, sid, name, dma, &mut release)?;
                }
                DmaPath::Nested => {
                    if let Err(e) = host.probe_nest_parent(dev) {
                        return Err(Error::NoNesting {
                            device: name.to_owned(),
                            why: e.to_string(),
                        });
                    }
                    let unit = ctx.vtd().cloned().ok_or_else(|| Error::Unsupported {
                        device: name.to_owned(),
                        why: "iommu=on needs --iommu intel".into(),
                    })?;
                    let accel = context.accel(ctx, &unit);
                    let iommu: Arc<dyn HostIommu> = host.clone();
                    accel.add_device(
                        &*unit,
                        accel::HostDevice {
                            sid,
                            name: name.to_owned(),
                            host: iommu,
                            dev,
                            behind_bridge: false,
                        },
                    )?;
                    release.push(Box::new(move || {
                        accel.remove_device(sid);
                    }));
                }
            }
            let unregister = guard.disarm();
            release.insert(0, unregister);
            device
        }
        VfioBackend::Container => {
            if path == DmaPath::Nested {
                return Err(Error::NoNesting {
                    device: name.to_owned(),
                    why: "the VFIO container backend cannot nest".into(),
                });
            }
            let kvm_vfio = context.kvm_vfio(ctx)?;
            // Shadowed devices each need an address space of their own; whole-RAM devices
            // share one container, with guest RAM mapped once.
            let shared = match path {
                DmaPath::WholeRam => context.container.clone(),
                _ => None,
            };
            let container = match &shared {
                Some((c, _)) => c.clone(),
                None => Arc::new(VfioContainer::new(Some(kvm_vfio)).map_err(vfio_err)?),
            };
            let ops: Arc<dyn VfioOps> = container.clone();
            let device = Arc::new(VfioDevice::new(&config.path, ops, false).map_err(vfio_err)?);
            device.reset();
            // The IOMMU type is set once a group is in the container: map only now.
            let dma: Arc<dyn DmaMap> = Arc::new(ContainerDma::new(container.clone()));
            match (path, shared) {
                (DmaPath::WholeRam, Some((_, ram))) => keep.push(Box::new(ram)),
                (DmaPath::WholeRam, None) => {
                    let ram = Arc::new(WholeRam::map(dma, ram_regions(ctx)).map_err(host_err)?);
                    context.container = Some((container.clone(), ram.clone()));
                    keep.push(Box::new(ram));
                }
                (DmaPath::Shadow, _) => {
                    shadow_device(ctx, context, sid, name, dma, &mut release)?;
                }
                (DmaPath::Nested, _) => unreachable!("refused above"),
            }
            keep.push(Box::new(container));
            device
        }
    };
    tracing::info!(
        "{name}: {address} at 00:{slot:02x}.0 through {}, DMA path {}",
        match backend {
            VfioBackend::Container => "the VFIO container",
            _ => "iommufd",
        },
        path.name()
    );
    for p in [DmaPath::WholeRam, DmaPath::Shadow, DmaPath::Nested] {
        ctx.counters()
            .register(&format!("{name}_dma_path_{}", p.name()))
            .add(u64::from(p == path));
    }
    let vectors = || {
        Arc::new(KvmMsiController::with_signaller(
            ctx.kvm_vm().clone(),
            ctx.gsi_routing().clone(),
            sid,
            VectorSignaller::Kernel,
        ))
    };
    let (controller, msi_controller) = (vectors(), vectors());
    let keep = Mutex::new(keep);
    let reset = device.clone();
    let label = name.to_owned();
    let release = Release::new(Box::new(move || {
        reset.reset();
        tracing::info!(device = %label, "assigned device reset");
        drop(reset);
        for f in release {
            f();
        }
        drop(keep);
    }));
    let host: Arc<dyn HostFunction> = device;
    let intx = match (ctx.kvm_vm().irqchip(), ctx.ioapic()) {
        (crate::vm::Irqchip::InKernel, _) => IntxRoute::Kernel {
            vm: ctx.kvm_vm().clone(),
            slot,
        },
        (crate::vm::Irqchip::Split, Some(ioapic)) => IntxRoute::Split {
            ioapic: ioapic.clone(),
            slot,
            unmasks: ctx.counters().register(&format!("{name}_intx_unmasks")),
        },
        _ => IntxRoute::None,
    };
    let function = VfioPciDevice::new(
        name,
        host,
        Some(ctx.kvm_vm()),
        controller,
        msi_controller,
        intx,
        release,
    )?;
    let function: SharedPciDevice = Arc::new(Mutex::new(function));
    bus.add_device_at(slot, function)
        .map_err(|source| Error::Bus {
            device: name.to_owned(),
            source,
        })
}

fn shadow_device(
    ctx: &DeviceContext,
    context: &mut Context,
    sid: vtd_spec::SourceId,
    name: &str,
    dma: Arc<dyn DmaMap>,
    release: &mut Vec<Box<dyn FnOnce() + Send>>,
) -> Result<(), Error> {
    let unit = ctx.vtd().cloned().ok_or_else(|| Error::Unsupported {
        device: name.to_owned(),
        why: "iommu=on needs --iommu intel".into(),
    })?;
    let shadow = context.shadow(ctx);
    shadow.add_device(&*unit, sid, name, dma);
    release.push(Box::new(move || {
        shadow.remove_device(sid);
    }));
    Ok(())
}

/// Runs its action on drop unless disarmed (cleanup on an early return).
struct Guard(Option<Box<dyn FnOnce() + Send>>);

impl Guard {
    fn disarm(mut self) -> Box<dyn FnOnce() + Send> {
        self.0.take().unwrap_or_else(|| Box::new(|| {}))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
