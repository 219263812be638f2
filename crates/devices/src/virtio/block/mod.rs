//! virtio-blk over a raw image file or host block device.
//!
//! ```text
//!  Block::new(BlockConfig) ── open file, size ─► config space (capacity, size_max, seg_max)
//!  activate(queues, memory, interrupt) ──► spawn "virtio-blk" thread (worker::Worker)
//!  reset() / drop ──► kill eventfd, join the thread
//! ```
//!
//! Requests: IN, OUT, FLUSH (fsync), GET_ID; anything else completes with UNSUPP. A read-only
//! disk offers VIRTIO_BLK_F_RO and fails writes with IOERR. Every guest-memory access goes
//! through `M`, so with an `IommuMemory` each one is translated with the right permission, and
//! a failed translation fails that request; for the rings it sets DEVICE_NEEDS_RESET until
//! the driver resets the device (the I/O thread, `worker.rs`, says how).

pub mod request;
mod worker;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    ActivateError, Activation, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice,
};
use crate::bus::read_from_image;
use crate::io_gate::IoGate;
use request::{Completion, Disk, SECTOR_SIZE};
use worker::Worker;
pub use worker::{Serviced, service_queue};

/// Virtio device type of block devices.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest single data segment the driver should use (VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 1 << 20;
/// Size of the virtio_blk_config structure we expose (through `blk_size` and topology).
const CONFIG_SPACE_SIZE: usize = 0x3c;

/// Errors creating a block device.
#[derive(Debug, Error)]
pub enum BlockError {
    /// The disk image could not be opened.
    #[error("Cannot open disk image {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The disk size could not be determined.
    #[error("Cannot determine the size of disk image {path}")]
    Size {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The queue size is not a power of two of at least 4 (requests need 3 descriptors).
    #[error("Queue size {0} is not a power of two between 4 and 32768")]
    QueueSize(u16),
}

/// How to create a [`Block`] device.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// Raw image file or host block device.
    pub path: PathBuf,
    /// Present the disk read-only (VIRTIO_BLK_F_RO) and open the file read-only.
    pub read_only: bool,
    /// GET_ID answer; truncated to 20 bytes.
    pub serial: String,
    /// Queue size (power of two).
    pub queue_size: u16,
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Offer VIRTIO_RING_F_INDIRECT_DESC. Off by default: every request then fits in the ring
    /// (`seg_max` is the queue size minus 2), and a driver behind an IOMMU maps one buffer
    /// fewer per request (no descriptor table), which in strict DMA mode is one IOTLB
    /// invalidation, i.e. one VM exit, fewer per request.
    pub indirect_desc: bool,
}

impl BlockConfig {
    /// A writable disk at `path` with default settings.
    pub fn new(path: impl AsRef<Path>) -> Self {
        BlockConfig {
            path: path.as_ref().to_path_buf(),
            read_only: false,
            serial: String::from("vtd-nest-disk"),
            queue_size: DEFAULT_QUEUE_SIZE,
            event_idx: true,
            indirect_desc: false,
        }
    }
}

/// Per-device statistics, updated by the I/O thread.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Requests completed (successfully or not), malformed chains excluded.
    pub requests: AtomicU64,
    /// Bytes read from the disk into guest memory.
    pub read_bytes: AtomicU64,
    /// Bytes written from guest memory to the disk.
    pub write_bytes: AtomicU64,
    /// FLUSH requests completed.
    pub flushes: AtomicU64,
    /// Requests that failed, were unsupported or were malformed.
    pub errors: AtomicU64,
    /// Queue notifications received from the driver.
    pub notifications: AtomicU64,
    /// Interrupts raised towards the driver.
    pub interrupts: AtomicU64,
    /// Ring accesses that failed (descriptor table, avail or used ring not translatable, or a
    /// bogus avail index): each set DEVICE_NEEDS_RESET.
    pub ring_errors: AtomicU64,
    /// Wall-clock nanoseconds the I/O thread spent serving queues (from wakeup to sleep):
    /// what the device model and its back end cost per request, translation included.
    pub busy_ns: AtomicU64,
}

/// A copy of [`BlockCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// See [`BlockCounters::requests`].
    pub requests: u64,
    /// See [`BlockCounters::read_bytes`].
    pub read_bytes: u64,
    /// See [`BlockCounters::write_bytes`].
    pub write_bytes: u64,
    /// See [`BlockCounters::flushes`].
    pub flushes: u64,
    /// See [`BlockCounters::errors`].
    pub errors: u64,
    /// See [`BlockCounters::notifications`].
    pub notifications: u64,
    /// See [`BlockCounters::interrupts`].
    pub interrupts: u64,
    /// See [`BlockCounters::ring_errors`].
    pub ring_errors: u64,
    /// See [`BlockCounters::busy_ns`].
    pub busy_ns: u64,
}

/// The device's counters as the VMM reports them: every one but `flushes`, and the I/O
/// thread's busy time as `busy_us` (microseconds).
impl counter_set::CounterSource for BlockCounters {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        let s = self.snapshot();
        f("requests", s.requests);
        f("read_bytes", s.read_bytes);
        f("write_bytes", s.write_bytes);
        f("errors", s.errors);
        f("notifications", s.notifications);
        f("interrupts", s.interrupts);
        f("ring_errors", s.ring_errors);
        f("busy_us", s.busy_ns / 1000);
    }
}

impl BlockCounters {
    /// Reads all counters.
    pub fn snapshot(&self) -> BlockStats {
        BlockStats {
            requests: self.requests.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            notifications: self.notifications.load(Ordering::Relaxed),
            interrupts: self.interrupts.load(Ordering::Relaxed),
            ring_errors: self.ring_errors.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
        }
    }

    fn record(&self, completion: &Completion) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if completion.status != Some(VIRTIO_BLK_S_OK as u8) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match completion.request_type {
            Some(VIRTIO_BLK_T_IN) => {
                self.read_bytes
                    .fetch_add(completion.data_bytes, Ordering::Relaxed);
            }
            Some(VIRTIO_BLK_T_OUT) => {
                self.write_bytes
                    .fetch_add(completion.data_bytes, Ordering::Relaxed);
            }
            Some(VIRTIO_BLK_T_FLUSH) => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

struct RunningWorker {
    kill: EventFd,
    stopping: Arc<AtomicBool>,
    io_gate: Arc<IoGate>,
    thread: JoinHandle<()>,
}

/// A virtio-blk device model.
pub struct Block<M> {
    file: File,
    sectors: u64,
    read_only: bool,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    queue_size: u16,
    features: u64,
    counters: Arc<BlockCounters>,
    worker: Option<RunningWorker>,
    _memory: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for Block<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Block")
            .field("sectors", &self.sectors)
            .field("read_only", &self.read_only)
            .field("running", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl<M> Block<M> {
    /// Opens the disk described by `config`.
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        if config.queue_size < 4
            || config.queue_size > 32768
            || !config.queue_size.is_power_of_two()
        {
            return Err(BlockError::QueueSize(config.queue_size));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?;
        // Works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: config.path.clone(),
                source,
            })?;
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let bytes = config.serial.as_bytes();
        let length = bytes.len().min(serial.len());
        serial[..length].copy_from_slice(&bytes[..length]);
        let mut features =
            (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_SIZE_MAX);
        if config.indirect_desc {
            features |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        if config.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if config.event_idx {
            features |= VIRTIO_RING_F_EVENT_IDX;
        }
        Ok(Block {
            file,
            sectors: size / SECTOR_SIZE,
            read_only: config.read_only,
            serial,
            queue_size: config.queue_size,
            features,
            counters: Arc::new(BlockCounters::default()),
            worker: None,
            _memory: PhantomData,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The device's counters (shared with the I/O thread; read them at any time).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    /// Most segments a request may have: SEG_MAX data segments plus header and status.
    fn max_segments(&self) -> usize {
        usize::from(self.seg_max()) + 2
    }

    fn seg_max(&self) -> u16 {
        self.queue_size - 2
    }

    fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut space = [0u8; CONFIG_SPACE_SIZE];
        space[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        space[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        space[12..16].copy_from_slice(&u32::from(self.seg_max()).to_le_bytes());
        space
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            // A thread held at a closed gate (the VM is paused) sees its flag; one in its
            // event loop sees the kill.
            worker.stopping.store(true, Ordering::SeqCst);
            worker.io_gate.wake();
            if let Err(error) = worker.kill.write(1) {
                tracing::error!(%error, "Cannot stop the virtio-blk I/O thread");
            }
            if worker.thread.join().is_err() {
                tracing::error!("virtio-blk I/O thread panicked");
            }
        }
    }
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> VirtioDevice<M> for Block<M> {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, "other".
        (0x01, 0x80, 0x00)
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.queue_size]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_size(&self) -> usize {
        CONFIG_SPACE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_from_image(&self.config_space(), offset, data, 0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "Ignored virtio-blk config write");
    }

    fn activate(&mut self, activation: Activation<M>) -> Result<(), ActivateError> {
        self.stop_worker();
        if activation.queues.is_empty() {
            return Err(ActivateError::NoQueues);
        }
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::EventFd)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let io_gate = activation.io_gate.clone();
        let worker = Worker {
            memory: activation.memory,
            needs_reset: false,
            queues: activation.queues,
            interrupt: activation.interrupt,
            disk: Disk {
                file: self.file.try_clone().map_err(ActivateError::Backend)?,
                sectors: self.sectors,
                read_only: self.read_only,
                serial: self.serial,
            },
            counters: self.counters.clone(),
            kill: kill.try_clone().map_err(ActivateError::EventFd)?,
            max_segments: self.max_segments(),
            dma_enabled: activation.dma_enabled,
            io_gate: activation.io_gate,
            stopping: stopping.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(String::from("virtio-blk"))
            .spawn(move || worker.run())
            .map_err(ActivateError::Thread)?;
        self.worker = Some(RunningWorker {
            kill,
            stopping,
            io_gate,
            thread,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl<M> Drop for Block<M> {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests;
