//! The modern (virtio 1.x) PCI transport: one 64-bit memory BAR holds every structure.
//!
//! ```text
//!  BAR0 (64-bit, 32 KiB)
//!  0x0000 common configuration  (features, status, queue setup)   VIRTIO_PCI_CAP_COMMON_CFG
//!  0x1000 ISR status            (read-to-clear)                   VIRTIO_PCI_CAP_ISR_CFG
//!  0x2000 device configuration  (VirtioDevice::read/write_config) VIRTIO_PCI_CAP_DEVICE_CFG
//!  0x3000 notifications         (queue q at 0x3000 + 4 * q)       VIRTIO_PCI_CAP_NOTIFY_CFG
//!  0x4000 MSI-X table, 0x6000 MSI-X PBA
//!
//!  status: 0 ─reset─► ACK ─► DRIVER ─► FEATURES_OK (checked) ─► DRIVER_OK (activate)
//!          device error (bad queue, ring fault) ─► |= NEEDS_RESET, config-change interrupt
//!          any state ─write 0─► device reset, queues reset, features cleared
//! ```
//!
//! Queue registers live in the transport until DRIVER_OK, when [`virtio_queue::Queue`]s are
//! built from them and handed to the device. Notifications reach the device through one
//! [`EventFd`] per queue: the VMM registers it as an ioeventfd on the queue's notify address
//! (re-registered when the guest moves BAR0), and MMIO writes that do exit are forwarded to it.
//! Interrupts are MSI-X only (no INTx).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    Activation, ActiveQueue, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR,
    VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
};
use crate::bus::{le_value, put_le_value, read_from_image};
use crate::interrupt::{MsiController, lock};
use crate::io_gate::IoGate;
use crate::pci::{
    BarKind, BarSpec, ConfigError, IoEventRegistrar, MsixConfig, MsixError, MsixLayout,
    PciConfiguration, PciDevice, PciIds,
};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem device ID presented by our virtio functions.
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x8000;
/// Offset of the common configuration structure in BAR0.
pub const COMMON_CONFIG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (virtio 1.1 layout).
pub const COMMON_CONFIG_SIZE: u64 = 0x38;
/// Offset of the ISR status byte in BAR0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device-specific configuration in BAR0.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Offset of the notification area in BAR0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
const REGION_SIZE: u64 = 0x1000;
const MAX_QUEUES: usize = (REGION_SIZE / NOTIFY_OFF_MULTIPLIER as u64) as usize;
const MAX_VECTORS: u16 = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / 16) as u16;

const VENDOR_CAPABILITY_ID: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// Offsets inside the VIRTIO_PCI_CAP_PCI_CFG capability.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// Errors creating the transport (VMM configuration errors).
#[derive(Debug, Error)]
pub enum VirtioPciError {
    /// The device has no queues or more than the notify area can address.
    #[error("Unsupported number of queues: {0}")]
    QueueCount(usize),
    /// A queue's maximum size is not a power of two between 1 and 32768.
    #[error("Queue maximum size {0} is invalid")]
    QueueSize(u16),
    /// The configuration space could not be built.
    #[error("Cannot build the PCI configuration space")]
    Config(#[source] ConfigError),
    /// The MSI-X state could not be built.
    #[error("Cannot set up MSI-X")]
    Msix(#[source] MsixError),
    /// A notify eventfd could not be created.
    #[error("Cannot create a queue notify eventfd")]
    EventFd(#[source] io::Error),
}

/// How the transport presents the device.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciOptions {
    /// Offer VIRTIO_F_ACCESS_PLATFORM and require the driver to accept it: the device's DMA
    /// goes through an IOMMU (the memory `M` translates).
    pub behind_iommu: bool,
    /// Number of MSI-X vectors; `None` = one per queue plus one for configuration changes.
    pub msix_vectors: Option<u16>,
}

/// Per-queue registers as the driver programs them.
#[derive(Clone, Copy, Debug)]
struct QueueRegisters {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegisters {
    fn new(max_size: u16) -> Self {
        QueueRegisters {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    fn build(&self, event_idx: bool) -> Option<Queue> {
        // Ring areas that wrap around the address space are refused before any translation.
        let size = u64::from(self.size);
        self.desc.checked_add(16 * size)?;
        self.driver.checked_add(6 + 2 * size)?;
        self.device.checked_add(6 + 8 * size)?;
        let mut queue = Queue::new(self.max_size).ok()?;
        queue.try_set_size(self.size).ok()?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .ok()?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Some(queue)
    }
}

/// State shared between the transport (vCPU threads) and the device's I/O thread.
struct SharedState {
    status: AtomicU8,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    msix: Mutex<MsixConfig>,
    bus_master: Arc<AtomicBool>,
}

impl SharedState {
    fn trigger(&self, vector: u16) {
        if vector != VIRTIO_MSI_NO_VECTOR {
            lock(&self.msix).trigger(vector);
        }
    }
}

impl VirtioInterrupt for SharedState {
    fn signal_queue(&self, queue: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(vector) = self.queue_vectors.get(usize::from(queue)) {
            self.trigger(vector.load(Ordering::Acquire));
        }
    }

    fn signal_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        self.trigger(self.config_vector.load(Ordering::Acquire));
    }

    /// DEVICE_NEEDS_RESET (virtio 1.2, 2.1.2): set once, with a configuration-change
    /// notification if the driver had set DRIVER_OK (never before it). The driver's write of 0
    /// to device_status clears it and resets the device.
    fn set_needs_reset(&self) {
        let previous = self.status.fetch_or(STATUS_NEEDS_RESET, Ordering::SeqCst);
        if previous & STATUS_NEEDS_RESET == 0 {
            log_limit::limited!(warn, "Virtio device needs reset");
            if previous & STATUS_DRIVER_OK != 0 {
                self.signal_config();
            }
        }
    }
}

/// A virtio device exposed as a modern virtio-pci function.
pub struct VirtioPciDevice<M> {
    config: PciConfiguration,
    msix_capability: usize,
    pci_cfg_capability: usize,
    device: Box<dyn VirtioDevice<M>>,
    memory: M,
    shared: Arc<SharedState>,
    options: VirtioPciOptions,
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    queues: Vec<QueueRegisters>,
    notify: Vec<EventFd>,
    config_generation: u8,
    activated: bool,
    registrar: Option<Arc<dyn IoEventRegistrar>>,
    bar0: Option<u64>,
    io_gate: Arc<IoGate>,
}

impl<M> std::fmt::Debug for VirtioPciDevice<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VirtioPciDevice")
            .field("device_type", &self.device.device_type())
            .field("status", &self.shared.status.load(Ordering::SeqCst))
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> VirtioPciDevice<M> {
    /// Wraps `device` in a virtio-pci function whose DMA goes through `memory` and whose
    /// MSI-X vectors are delivered by `msi`.
    pub fn new(
        device: Box<dyn VirtioDevice<M>>,
        memory: M,
        msi: Arc<dyn MsiController>,
        options: VirtioPciOptions,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(max_sizes.len()));
        }
        if let Some(&bad) = max_sizes
            .iter()
            .find(|&&size| size == 0 || size > 32768 || !size.is_power_of_two())
        {
            return Err(VirtioPciError::QueueSize(bad));
        }
        let vectors = options
            .msix_vectors
            .unwrap_or(max_sizes.len() as u16 + 1)
            .min(MAX_VECTORS);
        let layout = MsixLayout {
            vectors,
            table_bar: 0,
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bar: 0,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msix = MsixConfig::new(layout, msi).map_err(VirtioPciError::Msix)?;

        let device_type = device.device_type();
        let (class_code, subclass, prog_if) = device.pci_class();
        let mut config = PciConfiguration::new(&PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type),
            revision_id: 1,
            class_code,
            subclass,
            prog_if,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config
            .add_memory_bar(BarSpec {
                index: 0,
                size: BAR0_SIZE,
                kind: BarKind::Memory64,
                prefetchable: false,
            })
            .map_err(VirtioPciError::Config)?;
        let device_config_size = (device.config_size() as u64).min(REGION_SIZE) as u32;
        let regions = [
            (
                CAP_COMMON_CFG,
                COMMON_CONFIG_OFFSET,
                COMMON_CONFIG_SIZE as u32,
            ),
            (CAP_ISR_CFG, ISR_OFFSET, 1),
            (CAP_DEVICE_CFG, DEVICE_CONFIG_OFFSET, device_config_size),
        ];
        for (cfg_type, offset, length) in regions {
            let body = vendor_capability(cfg_type, offset as u32, length, None);
            config
                .add_capability(VENDOR_CAPABILITY_ID, &body, &[])
                .map_err(VirtioPciError::Config)?;
        }
        let notify_length = max_sizes.len() as u32 * NOTIFY_OFF_MULTIPLIER;
        let body = vendor_capability(
            CAP_NOTIFY_CFG,
            NOTIFY_OFFSET as u32,
            notify_length,
            Some(NOTIFY_OFF_MULTIPLIER),
        );
        config
            .add_capability(VENDOR_CAPABILITY_ID, &body, &[])
            .map_err(VirtioPciError::Config)?;
        // VIRTIO_PCI_CAP_PCI_CFG: a window into the BARs through configuration space.
        let mut body = vendor_capability(CAP_PCI_CFG, 0, 0, None);
        body[0] = 20;
        body.extend_from_slice(&[0; 4]);
        let mut writable = vec![0u8; body.len()];
        writable[PCI_CFG_BAR - 2] = 0xff;
        writable[PCI_CFG_OFFSET - 2..].fill(0xff);
        let pci_cfg_capability = config
            .add_capability(VENDOR_CAPABILITY_ID, &body, &writable)
            .map_err(VirtioPciError::Config)?;
        let (body, writable) = layout.capability().map_err(VirtioPciError::Msix)?;
        let msix_capability = config
            .add_capability(crate::pci::msix::MSIX_CAPABILITY_ID, &body, &writable)
            .map_err(VirtioPciError::Config)?;

        let notify = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(VirtioPciError::EventFd)?;
        let mut device_features = device.features() | VIRTIO_F_VERSION_1;
        if options.behind_iommu {
            device_features |= VIRTIO_F_ACCESS_PLATFORM;
        }
        Ok(VirtioPciDevice {
            config,
            msix_capability,
            pci_cfg_capability,
            memory,
            shared: Arc::new(SharedState {
                status: AtomicU8::new(0),
                isr: AtomicU8::new(0),
                config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
                queue_vectors: max_sizes
                    .iter()
                    .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                    .collect(),
                msix: Mutex::new(msix),
                bus_master: Arc::new(AtomicBool::new(false)),
            }),
            options,
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            queues: max_sizes.into_iter().map(QueueRegisters::new).collect(),
            notify,
            config_generation: 0,
            activated: false,
            registrar: None,
            bar0: None,
            io_gate: Arc::new(IoGate::new()),
            device,
        })
    }

    /// Puts the device's I/O thread behind `gate` (the VM's, which pause closes).
    pub fn set_io_gate(&mut self, gate: Arc<IoGate>) {
        self.io_gate = gate;
    }

    /// Sets who (re)registers the queue-notify ioeventfds when BAR0 is mapped or moved.
    pub fn set_ioevent_registrar(&mut self, registrar: Arc<dyn IoEventRegistrar>) {
        self.registrar = Some(registrar);
    }

    /// The notify eventfd of each queue with its offset in BAR0.
    pub fn notify_events(&self) -> impl Iterator<Item = (u64, &EventFd)> {
        self.notify
            .iter()
            .enumerate()
            .map(|(index, fd)| (notify_offset(index), fd))
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.shared.status.load(Ordering::SeqCst)
    }

    /// The features the device offers (including transport features).
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the device has been activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let mut image = [0u8; COMMON_CONFIG_SIZE as usize];
        let feature_word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        image[0x00..0x04].copy_from_slice(&self.device_feature_select.to_le_bytes());
        image[0x04..0x08].copy_from_slice(
            &feature_word(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        image[0x08..0x0c].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        image[0x0c..0x10].copy_from_slice(
            &feature_word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        image[0x10..0x12].copy_from_slice(
            &self
                .shared
                .config_vector
                .load(Ordering::Acquire)
                .to_le_bytes(),
        );
        image[0x12..0x14].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        image[0x14] = self.status();
        image[0x15] = self.config_generation;
        image[0x16..0x18].copy_from_slice(&self.queue_select.to_le_bytes());
        let select = usize::from(self.queue_select);
        if let Some(queue) = self.queues.get(select) {
            let vector = self.shared.queue_vectors[select].load(Ordering::Acquire);
            image[0x18..0x1a].copy_from_slice(&queue.size.to_le_bytes());
            image[0x1a..0x1c].copy_from_slice(&vector.to_le_bytes());
            image[0x1c..0x1e].copy_from_slice(&u16::from(queue.ready).to_le_bytes());
            image[0x1e..0x20].copy_from_slice(&self.queue_select.to_le_bytes());
            image[0x20..0x28].copy_from_slice(&queue.desc.to_le_bytes());
            image[0x28..0x30].copy_from_slice(&queue.driver.to_le_bytes());
            image[0x30..0x38].copy_from_slice(&queue.device.to_le_bytes());
        } else {
            // A non-existent queue reads as size 0 (virtio 1.1, 4.1.4.3).
            image[0x1a..0x1c].copy_from_slice(&VIRTIO_MSI_NO_VECTOR.to_le_bytes());
        }
        read_from_image(&image, offset, data, 0);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        let status = self.status();
        let queues_writable = status & STATUS_DRIVER_OK == 0;
        let select = usize::from(self.queue_select);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            (0x0c, 4) => {
                if status & STATUS_DRIVER != 0 && status & STATUS_FEATURES_OK == 0 {
                    match self.driver_feature_select {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | (value & 0xffff_ffff)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (value << 32)
                        }
                        _ => {}
                    }
                }
            }
            (0x10, 2) => {
                let vector = self.checked_vector(value as u16);
                self.shared.config_vector.store(vector, Ordering::Release);
            }
            (0x14, 1) => self.write_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) if queues_writable => {
                if let Some(queue) = self.queues.get_mut(select) {
                    queue.size = value as u16;
                }
            }
            (0x1a, 2) => {
                let vector = self.checked_vector(value as u16);
                if let Some(slot) = self.shared.queue_vectors.get(select) {
                    slot.store(vector, Ordering::Release);
                }
            }
            (0x1c, 2) if queues_writable => {
                // Writing 0 is not allowed (queue reset needs VIRTIO_F_RING_RESET).
                if let Some(queue) = self.queues.get_mut(select)
                    && value == 1
                {
                    queue.ready = true;
                }
            }
            (0x20..=0x37, 4 | 8) if queues_writable && offset.is_multiple_of(4) => {
                if let Some(queue) = self.queues.get_mut(select) {
                    let field = match offset {
                        0x20..=0x27 => &mut queue.desc,
                        0x28..=0x2f => &mut queue.driver,
                        _ => &mut queue.device,
                    };
                    if data.len() == 8 {
                        if offset.is_multiple_of(8) {
                            *field = value;
                        }
                    } else if offset.is_multiple_of(8) {
                        *field = (*field & !0xffff_ffff) | value;
                    } else {
                        *field = (*field & 0xffff_ffff) | (value << 32);
                    }
                }
            }
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "Ignored virtio common config write"
            ),
        }
    }

    /// A vector the driver may use: in range, or VIRTIO_MSI_NO_VECTOR (what the driver reads
    /// back when the device cannot use the vector it asked for).
    fn checked_vector(&self, vector: u16) -> u16 {
        let vectors = lock(&self.shared.msix).layout().vectors;
        if vector < vectors {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status();
        // The driver never clears bits (only a write of 0 does that).
        let mut new = old | value;
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && let Err(reason) = self.check_features()
        {
            log_limit::limited!(warn, reason, "Refusing FEATURES_OK");
            new &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            new &= !STATUS_DRIVER_OK;
        }
        self.shared.status.store(new, Ordering::SeqCst);
        if new & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn check_features(&self) -> Result<(), &'static str> {
        if self.driver_features & !self.device_features != 0 {
            return Err("driver accepted features the device did not offer");
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            return Err("driver did not accept VIRTIO_F_VERSION_1");
        }
        if self.options.behind_iommu && self.driver_features & VIRTIO_F_ACCESS_PLATFORM == 0 {
            return Err(
                "device is behind an IOMMU but the driver refused VIRTIO_F_ACCESS_PLATFORM",
            );
        }
        Ok(())
    }

    fn activate(&mut self) {
        self.activated = true;
        match self.build_activation() {
            Ok(activation) => {
                if let Err(error) = self.device.activate(activation) {
                    log_limit::limited!(warn, %error, "Virtio device activation failed");
                    self.shared.set_needs_reset();
                }
            }
            Err(error) => {
                log_limit::limited!(warn, %error, "Virtio device activation failed");
                self.shared.set_needs_reset();
            }
        }
    }

    fn build_activation(&self) -> Result<Activation<M>, super::ActivateError> {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, registers) in self.queues.iter().enumerate() {
            if !registers.ready {
                continue;
            }
            let index = index as u16;
            let queue = registers
                .build(event_idx)
                .filter(|queue| queue.is_valid(&self.memory))
                .ok_or(super::ActivateError::BadQueue(index))?;
            let notify = self.notify[usize::from(index)]
                .try_clone()
                .map_err(super::ActivateError::EventFd)?;
            queues.push(ActiveQueue {
                index,
                queue,
                notify,
            });
        }
        if queues.is_empty() {
            return Err(super::ActivateError::NoQueues);
        }
        Ok(Activation {
            memory: self.memory.clone(),
            queues,
            interrupt: self.shared.clone(),
            acked_features: self.driver_features,
            dma_enabled: self.shared.bus_master.clone(),
            io_gate: self.io_gate.clone(),
        })
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        for queue in &mut self.queues {
            *queue = QueueRegisters::new(queue.max_size);
        }
        for vector in &self.shared.queue_vectors {
            vector.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
        self.shared
            .config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        self.shared.isr.store(0, Ordering::SeqCst);
        // Drain notifications that arrived before the reset.
        for fd in &self.notify {
            let _ = fd.read();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.shared.status.store(0, Ordering::SeqCst);
    }

    fn update_ioevents(&self, old: Option<u64>, new: Option<u64>) {
        let Some(registrar) = &self.registrar else {
            return;
        };
        for (offset, fd) in self.notify_events() {
            let at = |base: Option<u64>| base.and_then(|b| b.checked_add(NOTIFY_OFFSET + offset));
            if let Some(address) = at(old)
                && let Err(error) = registrar.unregister(address, fd)
            {
                log_limit::limited!(warn, address, %error, "Cannot unregister queue ioeventfd");
            }
            if let Some(address) = at(new)
                && let Err(error) = registrar.register(address, fd)
            {
                log_limit::limited!(warn, address, %error, "Cannot register queue ioeventfd");
            }
        }
    }
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> VirtioPciDevice<M> {
    /// The BAR access the VIRTIO_PCI_CAP_PCI_CFG fields describe: (bar, offset, length), if
    /// the length is 1, 2 or 4.
    fn pci_cfg_access(&self) -> Option<(usize, u64, usize)> {
        let cap = self.pci_cfg_capability;
        let bar = (self.config.read_u32(cap + PCI_CFG_BAR) & 0xff) as usize;
        let offset = u64::from(self.config.read_u32(cap + PCI_CFG_OFFSET));
        let length = self.config.read_u32(cap + PCI_CFG_LENGTH) as usize;
        matches!(length, 1 | 2 | 4).then_some((bar, offset, length))
    }
}

fn notify_offset(queue: usize) -> u64 {
    queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// Builds a `virtio_pci_cap` body (after cap_vndr and cap_next), with the notify multiplier
/// appended for NOTIFY_CFG (virtio 1.1, 4.1.4).
fn vendor_capability(cfg_type: u8, offset: u32, length: u32, multiplier: Option<u32>) -> Vec<u8> {
    let cap_len = if multiplier.is_some() { 20u8 } else { 16 };
    let mut body = vec![cap_len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&length.to_le_bytes());
    if let Some(multiplier) = multiplier {
        body.extend_from_slice(&multiplier.to_le_bytes());
    }
    body
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> PciDevice for VirtioPciDevice<M> {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_capability + PCI_CFG_DATA;
        if offset < window + 4
            && offset.saturating_add(data.len()) > window
            && let Some((bar, bar_offset, length)) = self.pci_cfg_access()
        {
            let mut value = [0u8; 4];
            self.read_bar(bar, bar_offset, &mut value[..length]);
            self.config.set_bytes(window, &value);
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let bus_master = self.config.bus_master_enabled();
        if self.shared.bus_master.swap(bus_master, Ordering::SeqCst) != bus_master && bus_master {
            // Work the driver queued while DMA was off is picked up now.
            for fd in &self.notify {
                let _ = fd.write(1);
            }
        }
        let window = self.pci_cfg_capability + PCI_CFG_DATA;
        if offset < window + 4
            && offset.saturating_add(data.len()) > window
            && let Some((bar, bar_offset, length)) = self.pci_cfg_access()
        {
            let mut value = [0u8; 4];
            self.config.read(window, &mut value);
            self.write_bar(bar, bar_offset, &value[..length]);
        }
        let control = self.msix_capability + 2;
        let end = offset.saturating_add(data.len());
        if offset < control + 2 && end > control {
            let message_control = (self.config.read_u32(self.msix_capability) >> 16) as u16;
            lock(&self.shared.msix).set_control(message_control);
        }
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if index != 0 {
            return;
        }
        match offset {
            o if o < COMMON_CONFIG_OFFSET + REGION_SIZE => self.read_common(o, data),
            o if o < ISR_OFFSET + REGION_SIZE => {
                if o == ISR_OFFSET {
                    // Reading the ISR acknowledges it.
                    let isr = self.shared.isr.swap(0, Ordering::SeqCst);
                    put_le_value(data, u64::from(isr));
                }
            }
            o if o < DEVICE_CONFIG_OFFSET + REGION_SIZE => {
                self.device.read_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if o < NOTIFY_OFFSET + REGION_SIZE => {}
            o if o < MSIX_PBA_OFFSET => {
                lock(&self.shared.msix).read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o => lock(&self.shared.msix).read_pba(o - MSIX_PBA_OFFSET, data),
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index != 0 {
            return;
        }
        match offset {
            o if o < COMMON_CONFIG_OFFSET + REGION_SIZE => self.write_common(o, data),
            o if o < ISR_OFFSET + REGION_SIZE => {}
            o if o < DEVICE_CONFIG_OFFSET + REGION_SIZE => {
                self.device.write_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if o < NOTIFY_OFFSET + REGION_SIZE => {
                let relative = o - NOTIFY_OFFSET;
                let queue = relative / u64::from(NOTIFY_OFF_MULTIPLIER);
                if relative.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER))
                    && let Some(fd) = self.notify.get(queue as usize)
                    && let Err(error) = fd.write(1)
                {
                    log_limit::limited!(warn, queue, %error, "Cannot signal queue notification");
                }
            }
            o if o < MSIX_PBA_OFFSET => {
                lock(&self.shared.msix).write_table(o - MSIX_TABLE_OFFSET, data)
            }
            // The pending-bit array is read-only.
            _ => {}
        }
    }

    fn bar_moved(&mut self, index: usize, old: Option<u64>, new: Option<u64>) {
        if index == 0 {
            self.bar0 = new;
            self.update_ioevents(old, new);
        }
    }
}

impl<M> Drop for VirtioPciDevice<M> {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}
