//! PCI bus 0 and the virtio-blk disks on it.
//!
//! ```text
//! 0xcf8 PIO ──> PciConfigIo ─┐
//! ECAM MMIO ──> PciEcam ─────┼──> PciBus (00:00.0 host bridge, 00:NN.0 disks)
//! BAR window ─> PciBarWindow ┘            │
//!                               VirtioPciDevice<M> ─> Block<M> (own I/O thread)
//!   M = GuestMemoryMmap (iommu=off) | TranslatedMemory (iommu=on: the vtd unit)
//!     | AssignedMemory (assigned=sim: the software host IOMMU)
//!   MSI-X ─> KvmMsiController (irqfd + GSI route); queue notify ─> KvmIoEvents (ioeventfd)
//! ```

use std::sync::{Arc, Mutex};

use devices::pci::{
    IoEventRegistrar, PciBarWindow, PciBus, PciBusError, PciConfigIo, PciEcam, SharedPciDevice,
};
use devices::virtio::block::{Block, BlockConfig, BlockError};
use devices::virtio::pci::{VirtioPciDevice, VirtioPciError, VirtioPciOptions};
use devices::{MsiController, MsiMessage};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    ECAM_SIZE, ECAM_START, PCI_CONFIG_IO_SIZE, PCI_CONFIG_IO_START, PCI_MMIO32_SIZE,
    PCI_MMIO32_START,
};
use crate::config::{AssignedBackend, DiskConfig};
use crate::device_context::DeviceContext;
use crate::interrupt::{KvmIoEvents, KvmMsiController, Msi};
use crate::iommu::{bus0_sid, translated_memory};
use crate::passthrough;

/// Errors adding PCI devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk image cannot be used.
    #[error("Cannot add disk {index}")]
    Block {
        /// Disk index on the command line.
        index: usize,
        /// The device's error.
        #[source]
        source: BlockError,
    },
    /// The virtio-pci transport refused the device.
    #[error("Cannot add disk {index} to PCI")]
    Transport {
        /// Disk index.
        index: usize,
        /// The transport's error.
        #[source]
        source: VirtioPciError,
    },
    /// No slot or BAR space.
    #[error("Cannot place disk {index} on PCI bus 0")]
    Bus {
        /// Disk index.
        index: usize,
        /// The bus's error.
        #[source]
        source: PciBusError,
    },
    /// iommu=on without a vIOMMU.
    #[error("Disk {0} has iommu=on, but no vIOMMU is configured (add --iommu intel,...)")]
    NoIommu(usize),
    /// Passthrough setup.
    #[error(transparent)]
    Passthrough(#[from] passthrough::Error),
    /// An access path clashes with another device's range.
    #[error(transparent)]
    Register(#[from] crate::bus::Error),
}

impl MsiController for KvmMsiController {
    fn configure(&self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()> {
        let msi = Msi {
            address: msg.address,
            data: msg.data,
        };
        KvmMsiController::configure(self, vector, msi, masked)
    }

    fn trigger(&self, vector: u16) {
        KvmMsiController::trigger(self, vector);
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        KvmIoEvents::register(self, addr, fd)
    }

    fn unregister(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        KvmIoEvents::unregister(self, addr, fd)
    }
}

/// Creates bus 0 and registers its three access paths.
pub fn add_bus(devices: &DeviceContext) -> Result<Arc<PciBus>, Error> {
    let bus = Arc::new(PciBus::new(PCI_MMIO32_START, PCI_MMIO32_SIZE));
    let config_io = Arc::new(PciConfigIo::new(bus.clone()));
    devices.buses().pio.insert(
        "pci-config",
        u64::from(PCI_CONFIG_IO_START),
        u64::from(PCI_CONFIG_IO_SIZE),
        config_io,
    )?;
    let ecam = Arc::new(PciEcam::new(bus.clone()));
    devices
        .buses()
        .mmio
        .insert("pci-ecam", ECAM_START, ECAM_SIZE, ecam)?;
    let window = Arc::new(PciBarWindow::new(bus.clone(), PCI_MMIO32_START));
    devices
        .buses()
        .mmio
        .insert("pci-bars", PCI_MMIO32_START, PCI_MMIO32_SIZE, window)?;
    Ok(bus)
}

/// Adds every disk of `disks` as a virtio-blk function on bus 0 (slots 1, 2, ... in order);
/// `test_dma_fault` is `--test-dma-fault`.
pub fn add_disks(
    devices: &DeviceContext,
    bus: &PciBus,
    disks: &[DiskConfig],
    test_dma_fault: Option<u64>,
) -> Result<(), Error> {
    if disks.iter().any(|d| d.assigned.is_some()) {
        // Created before the disks, so the summary lists accel_* before disk0_*.
        devices.passthrough()?;
    }
    let mut fault_probe = test_dma_fault;
    for (index, disk) in disks.iter().enumerate() {
        let slot = (index + 1) as u8;
        let sid = bus0_sid(slot);
        let name = format!("disk{index}");
        match (disk.assigned, disk.iommu, devices.vtd()) {
            (Some(AssignedBackend::Sim), _, _) => {
                let memory = devices.passthrough()?.assign(&name, sid)?;
                add_disk(devices, bus, index, slot, disk, memory, true)?;
            }
            (None, true, Some(unit)) => {
                let memory = translated_memory(devices.memory(), unit, sid, fault_probe.take());
                add_disk(devices, bus, index, slot, disk, memory, true)?;
            }
            (None, true, None) => return Err(Error::NoIommu(index)),
            (None, false, _) => {
                add_disk(
                    devices,
                    bus,
                    index,
                    slot,
                    disk,
                    devices.memory().clone(),
                    false,
                )?;
            }
        }
    }
    if fault_probe.is_some() {
        tracing::warn!("--test-dma-fault has no effect: no disk has iommu=on");
    }
    Ok(())
}

/// Adds disk `index` (`disk`, DMA through `memory`) at `slot` of `bus`, with its counters.
pub(crate) fn add_disk<M: GuestMemory + Clone + Send + Sync + 'static>(
    devices: &DeviceContext,
    bus: &PciBus,
    index: usize,
    slot: u8,
    disk: &DiskConfig,
    memory: M,
    behind_iommu: bool,
) -> Result<(), Error> {
    let mut config = BlockConfig::new(&disk.path);
    config.read_only = disk.readonly;
    config.indirect_desc = disk.indirect_desc;
    config.serial = format!("vtd-nest-disk{index}");
    let block = Block::<M>::new(&config).map_err(|source| Error::Block { index, source })?;
    devices
        .counters()
        .add_component(format!("disk{index}_"), block.counters());
    let msi: Arc<dyn MsiController> = Arc::new(devices.msi_controller(bus0_sid(slot)));
    let options = VirtioPciOptions {
        behind_iommu,
        msix_vectors: None,
    };
    let mut device = VirtioPciDevice::new(Box::new(block), memory, msi, options)
        .map_err(|source| Error::Transport { index, source })?;
    device.set_ioevent_registrar(Arc::new(devices.io_events()));
    device.set_io_gate(devices.io_gate().clone());
    let device: SharedPciDevice = Arc::new(Mutex::new(device));
    bus.add_device_at(slot, device)
        .map_err(|source| Error::Bus { index, source })?;
    tracing::info!(
        "disk{index}: {} at 00:{slot:02x}.0{}",
        disk.path.display(),
        match (disk.assigned, behind_iommu) {
            (Some(_), _) => ", assigned (software host IOMMU)",
            (None, true) => ", behind the vIOMMU",
            (None, false) => "",
        }
    );
    Ok(())
}
