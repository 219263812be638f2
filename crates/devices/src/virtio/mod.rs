//! Virtio: the device-model trait, the modern virtio-pci transport and virtio-blk.
//!
//! ```text
//!  guest driver ──BAR0 MMIO──► VirtioPciDevice<M> (transport: features, status, queues, MSI-X)
//!                                   │ DRIVER_OK: activate(queues, memory, interrupt)
//!                                   ▼
//!                           dyn VirtioDevice<M> (e.g. Block<M>) ──► its own I/O thread
//!                                   │ completion
//!                                   ▼
//!                       VirtioInterrupt::signal_queue ──► MSI-X vector ──► MsiController
//! ```
//!
//! Interrupts are MSI-X only: the ISR status register is kept up to date, but INTx is not
//! wired, so a driver that does not enable MSI-X gets no interrupts.

pub mod block;
pub mod pci;

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use thiserror::Error;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::io_gate::IoGate;

/// "No vector" value for the config and queue MSI-X vector registers.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Feature bit: the device complies with virtio 1.0+ (required by the modern transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: the device is behind an IOMMU; the driver must use translated DMA addresses.
pub const VIRTIO_F_ACCESS_PLATFORM: u64 =
    1 << virtio_bindings::virtio_config::VIRTIO_F_ACCESS_PLATFORM;
/// Feature bit: descriptors may point to indirect tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Interrupts a device model can raise through its transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that queue `queue` has new used buffers.
    fn signal_queue(&self, queue: u16);
    /// Signals a configuration change.
    fn signal_config(&self);
    /// Marks the device broken (status DEVICE_NEEDS_RESET) and signals a configuration change.
    fn set_needs_reset(&self);
}

/// A queue handed to a device at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue index within the device.
    pub index: u16,
    /// The configured split virtqueue.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (the ioeventfd, or the transport).
    pub notify: EventFd,
}

/// Everything a device needs to start processing queues.
pub struct Activation<M> {
    /// Guest memory as the device sees it (possibly IOMMU-translated).
    pub memory: M,
    /// The queues the driver enabled.
    pub queues: Vec<ActiveQueue>,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// Whether the function may master the bus (PCI command register bit 2). While false the
    /// device must not touch guest memory; when it becomes true again the transport signals
    /// every queue's notify eventfd so pending work is picked up.
    pub dma_enabled: Arc<AtomicBool>,
    /// The gate the device's I/O thread passes before each batch of work.
    pub io_gate: Arc<IoGate>,
}

/// Errors activating a device.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The device needs at least one enabled queue.
    #[error("No queue is enabled")]
    NoQueues,
    /// A queue's size or ring addresses are invalid or not accessible.
    #[error("Queue {0} is misconfigured")]
    BadQueue(u16),
    /// An event file descriptor could not be created or cloned.
    #[error("Cannot set up an eventfd")]
    EventFd(#[source] io::Error),
    /// Epoll or thread setup failed.
    #[error("Cannot start the I/O thread")]
    Thread(#[source] io::Error),
    /// The backing file could not be duplicated for the I/O thread.
    #[error("Cannot duplicate the backing file")]
    Backend(#[source] io::Error),
}

/// A virtio device model, independent of the transport.
///
/// `M` is the guest memory type the device's DMA goes through.
pub trait VirtioDevice<M>: Send {
    /// Virtio device type (e.g. 2 for block).
    fn device_type(&self) -> u16;
    /// The PCI (class, subclass, prog-if) to present.
    fn pci_class(&self) -> (u8, u8, u8) {
        (0xff, 0, 0)
    }
    /// Maximum size of each queue (the number of queues is the length).
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Device-specific and ring feature bits offered (the transport adds VERSION_1 and
    /// ACCESS_PLATFORM).
    fn features(&self) -> u64;
    /// Size of the device-specific configuration space in bytes.
    fn config_size(&self) -> usize;
    /// Reads device configuration space (out-of-range bytes read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device on DRIVER_OK.
    fn activate(&mut self, activation: Activation<M>) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its pre-activation state (driver wrote status 0).
    fn reset(&mut self);
}

#[cfg(test)]
mod tests;
