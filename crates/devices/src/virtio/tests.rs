//! Transport tests: capabilities, feature negotiation, status, queue setup, reset, MSI-X.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::pci::*;
use super::*;
use crate::bus::{le_value, put_le_value};
use crate::interrupt::{FakeMsiController, lock};
use crate::pci::{IoEventRegistrar, PciDevice};

type Memory = GuestMemoryMmap;

/// (index, size, desc, avail, used, event_idx) of an activated queue.
type QueueSnapshot = (u16, u16, u64, u64, u64, bool);

#[derive(Default)]
struct DeviceLog {
    activations: Vec<(Vec<QueueSnapshot>, u64)>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    dma_enabled: Option<Arc<std::sync::atomic::AtomicBool>>,
}

struct FakeDevice {
    log: Arc<Mutex<DeviceLog>>,
}

impl VirtioDevice<Memory> for FakeDevice {
    fn device_type(&self) -> u16 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![64, 32]
    }
    fn features(&self) -> u64 {
        (1 << 9) | VIRTIO_RING_F_EVENT_IDX
    }
    fn config_size(&self) -> usize {
        8
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::bus::read_from_image(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data, 0);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        lock(&self.log).config_writes.push((offset, data.to_vec()));
    }
    fn activate(&mut self, activation: Activation<Memory>) -> Result<(), ActivateError> {
        let mut log = lock(&self.log);
        log.dma_enabled = Some(activation.dma_enabled.clone());
        let queues = activation
            .queues
            .iter()
            .map(|active| {
                (
                    active.index,
                    active.queue.size(),
                    active.queue.desc_table(),
                    active.queue.avail_ring(),
                    active.queue.used_ring(),
                    active.queue.event_idx_enabled(),
                )
            })
            .collect();
        log.activations.push((queues, activation.acked_features));
        log.interrupt = Some(activation.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        lock(&self.log).resets += 1;
    }
}

#[derive(Default)]
struct FakeRegistrar {
    events: Mutex<Vec<(bool, u64)>>,
}

impl IoEventRegistrar for FakeRegistrar {
    fn register(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        lock(&self.events).push((true, addr));
        Ok(())
    }
    fn unregister(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        lock(&self.events).push((false, addr));
        Ok(())
    }
}

struct Harness {
    device: VirtioPciDevice<Memory>,
    log: Arc<Mutex<DeviceLog>>,
    msi: Arc<FakeMsiController>,
}

fn harness(options: VirtioPciOptions) -> Harness {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let log = Arc::new(Mutex::new(DeviceLog::default()));
    let msi = Arc::new(FakeMsiController::new());
    let device = VirtioPciDevice::new(
        Box::new(FakeDevice { log: log.clone() }),
        memory,
        msi.clone(),
        options,
    )
    .unwrap();
    Harness { device, log, msi }
}

impl Harness {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut data = vec![0u8; width];
        self.device.read_bar(0, offset, &mut data);
        le_value(&data)
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        let mut data = vec![0u8; width];
        put_le_value(&mut data, value);
        self.device.write_bar(0, offset, &data);
    }

    fn config_read(&mut self, offset: usize, width: usize) -> u64 {
        let mut data = vec![0u8; width];
        self.device.read_config(offset, &mut data);
        le_value(&data)
    }

    fn status(&mut self) -> u8 {
        self.read(0x14, 1) as u8
    }

    fn negotiate(&mut self, features: u64) {
        self.write(0x14, 1, 1);
        self.write(0x14, 1, 3);
        self.write(0x08, 4, 0);
        self.write(0x0c, 4, features & 0xffff_ffff);
        self.write(0x08, 4, 1);
        self.write(0x0c, 4, features >> 32);
        self.write(0x14, 1, 0xb);
    }

    fn setup_queue(&mut self, index: u16, size: u16, base: u64) {
        self.write(0x16, 2, u64::from(index));
        self.write(0x18, 2, u64::from(size));
        self.write(0x20, 4, base);
        self.write(0x24, 4, 0);
        self.write(0x28, 8, base + 0x1000);
        self.write(0x30, 8, base + 0x2000);
        self.write(0x1c, 2, 1);
    }
}

/// Walks the capability list: (offset, id).
fn capabilities(harness: &mut Harness) -> Vec<(usize, u8)> {
    let mut found = Vec::new();
    let mut next = harness.config_read(0x34, 1) as usize;
    while next != 0 && found.len() < 48 {
        let id = harness.config_read(next, 1) as u8;
        found.push((next, id));
        next = harness.config_read(next + 1, 1) as usize;
    }
    found
}

#[test]
fn identity_and_capabilities() {
    let mut h = harness(VirtioPciOptions::default());
    assert_eq!(h.config_read(0, 4), 0x1042_1af4);
    assert_eq!(h.config_read(8, 1), 1, "revision 1");
    assert_eq!(h.config_read(0x2c, 4), 0x1100_1af4);
    assert_eq!(
        h.config_read(0x10, 4) & 0xf,
        0b0100,
        "BAR0 is 64-bit memory"
    );
    let caps = capabilities(&mut h);
    let vendor: Vec<_> = caps.iter().filter(|(_, id)| *id == 0x09).collect();
    assert_eq!(vendor.len(), 5);
    let mut types = Vec::new();
    for &&(offset, _) in &vendor {
        let cfg_type = h.config_read(offset + 3, 1) as u8;
        let bar = h.config_read(offset + 4, 1);
        let region = h.config_read(offset + 8, 4);
        let length = h.config_read(offset + 12, 4);
        assert_eq!(bar, 0);
        match cfg_type {
            1 => assert_eq!((region, length), (COMMON_CONFIG_OFFSET, COMMON_CONFIG_SIZE)),
            2 => {
                assert_eq!((region, length), (NOTIFY_OFFSET, 8));
                assert_eq!(h.config_read(offset + 2, 1), 20, "cap_len");
                assert_eq!(h.config_read(offset + 16, 4), 4, "notify multiplier");
            }
            3 => assert_eq!(region, ISR_OFFSET),
            4 => assert_eq!((region, length), (DEVICE_CONFIG_OFFSET, 8)),
            5 => assert_eq!(h.config_read(offset + 2, 1), 20, "cap_len"),
            other => panic!("unexpected cfg_type {other}"),
        }
        types.push(cfg_type);
    }
    types.sort();
    assert_eq!(types, [1, 2, 3, 4, 5]);
    let &(msix, _) = caps.iter().find(|(_, id)| *id == 0x11).unwrap();
    assert_eq!(h.config_read(msix + 2, 2) & 0x7ff, 2, "3 vectors");
    assert_eq!(h.config_read(msix + 4, 4), MSIX_TABLE_OFFSET);
    assert_eq!(h.config_read(msix + 8, 4), MSIX_PBA_OFFSET);
}

#[test]
fn feature_negotiation() {
    let mut h = harness(VirtioPciOptions::default());
    assert_eq!(h.read(0x12, 2), 2, "num_queues");
    h.write(0x00, 4, 0);
    assert_eq!(h.read(0x04, 4), (1 << 9) | (1 << 29));
    h.write(0x00, 4, 1);
    assert_eq!(h.read(0x04, 4), 1, "VERSION_1 only, no ACCESS_PLATFORM");
    h.write(0x00, 4, 7);
    assert_eq!(h.read(0x04, 4), 0);
    // Features cannot be written before DRIVER.
    h.write(0x0c, 4, 0xffff);
    assert_eq!(h.read(0x0c, 4), 0);
    h.negotiate(VIRTIO_F_VERSION_1 | (1 << 9));
    assert_eq!(h.status(), 0xb);
    assert_eq!(h.device.driver_features(), VIRTIO_F_VERSION_1 | (1 << 9));
    // Frozen after FEATURES_OK.
    h.write(0x08, 4, 0);
    h.write(0x0c, 4, 0);
    assert_eq!(h.device.driver_features(), VIRTIO_F_VERSION_1 | (1 << 9));
}

#[test]
fn features_ok_is_refused_for_bad_feature_sets() {
    let mut h = harness(VirtioPciOptions::default());
    h.negotiate(1 << 9);
    assert_eq!(h.status() & 0x8, 0, "VERSION_1 is mandatory");
    h.write(0x14, 1, 0);
    h.negotiate(VIRTIO_F_VERSION_1 | (1 << 5));
    assert_eq!(h.status() & 0x8, 0, "feature 5 was not offered");
    // DRIVER_OK without FEATURES_OK does not activate.
    h.write(0x14, 1, 0x7);
    assert!(!h.device.is_activated());
}

#[test]
fn access_platform_offered_and_required_behind_an_iommu() {
    let mut h = harness(VirtioPciOptions {
        behind_iommu: true,
        msix_vectors: None,
    });
    h.write(0x00, 4, 1);
    assert_eq!(h.read(0x04, 4), 0b11);
    h.negotiate(VIRTIO_F_VERSION_1);
    assert_eq!(h.status() & 0x8, 0);
    h.write(0x14, 1, 0);
    h.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    assert_eq!(h.status(), 0xb);
}

#[test]
fn queue_setup_and_activation() {
    let mut h = harness(VirtioPciOptions::default());
    h.write(0x16, 2, 0);
    assert_eq!(h.read(0x18, 2), 64, "max size until the driver writes it");
    assert_eq!(h.read(0x1e, 2), 0, "notify off");
    h.write(0x16, 2, 1);
    assert_eq!(h.read(0x1e, 2), 1);
    h.write(0x16, 2, 5);
    assert_eq!(h.read(0x18, 2), 0, "absent queue reads size 0");
    h.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    h.setup_queue(0, 16, 0x1_0000);
    assert_eq!(h.read(0x20, 8), 0x1_0000);
    assert_eq!(h.read(0x2c, 4), 0, "high half of the driver area");
    assert_eq!(h.read(0x1c, 2), 1);
    h.write(0x14, 1, 0xf);
    assert!(h.device.is_activated());
    let log = lock(&h.log);
    assert_eq!(log.activations.len(), 1);
    let (queues, acked) = &log.activations[0];
    assert_eq!(*acked, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(
        queues,
        &vec![(0, 16, 0x1_0000, 0x1_1000, 0x1_2000, true)],
        "only enabled queues are handed over"
    );
    drop(log);
    // Queue registers are frozen after DRIVER_OK.
    h.write(0x18, 2, 8);
    assert_eq!(h.read(0x18, 2), 16);
}

#[test]
fn misconfigured_queue_sets_needs_reset() {
    let mut h = harness(VirtioPciOptions::default());
    h.negotiate(VIRTIO_F_VERSION_1);
    // Rings outside guest memory.
    h.setup_queue(0, 16, 0x4000_0000);
    h.write(0x14, 1, 0xf);
    assert_eq!(h.status() & 0x40, 0x40);
    assert!(lock(&h.log).activations.is_empty());
    // A size that is not a power of two is rejected at activation too.
    h.write(0x14, 1, 0);
    assert_eq!(h.status(), 0);
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 12, 0x1_0000);
    h.write(0x14, 1, 0xf);
    assert_eq!(h.status() & 0x40, 0x40);
    // Rings that wrap around the address space.
    h.write(0x14, 1, 0);
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 16, 0);
    h.write(0x20, 8, u64::MAX - 0x7f);
    h.write(0x14, 1, 0xf);
    assert_eq!(h.status() & 0x40, 0x40);
    assert!(lock(&h.log).activations.is_empty());
}

#[test]
fn reset_returns_to_initial_state() {
    let mut h = harness(VirtioPciOptions::default());
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 16, 0x1_0000);
    h.write(0x1a, 2, 1);
    h.write(0x10, 2, 0);
    h.write(0x14, 1, 0xf);
    h.write(0x14, 1, 0);
    assert_eq!(lock(&h.log).resets, 1);
    assert_eq!(h.status(), 0);
    assert_eq!(h.device.driver_features(), 0);
    assert_eq!(h.read(0x10, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    h.write(0x16, 2, 0);
    assert_eq!(h.read(0x18, 2), 64);
    assert_eq!(h.read(0x1c, 2), 0);
    assert_eq!(h.read(0x20, 8), 0);
    assert_eq!(h.read(0x1a, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    // And the device can be brought up again.
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 16, 0x1_0000);
    h.write(0x14, 1, 0xf);
    assert_eq!(lock(&h.log).activations.len(), 2);
}

#[test]
fn msix_vectors_route_interrupts() {
    let mut h = harness(VirtioPciOptions::default());
    let &(msix, _) = capabilities(&mut h)
        .iter()
        .find(|(_, id)| *id == 0x11)
        .unwrap();
    // Out-of-range vectors read back as NO_VECTOR.
    h.write(0x10, 2, 7);
    assert_eq!(h.read(0x10, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    h.write(0x10, 2, 2);
    h.write(0x16, 2, 0);
    h.write(0x1a, 2, 0);
    assert_eq!(h.read(0x1a, 2), 0);
    // Program vectors 0 and 2 and enable MSI-X.
    for vector in [0u64, 2] {
        let entry = MSIX_TABLE_OFFSET + vector * 16;
        h.write(entry, 8, 0xfee0_0000);
        h.write(entry + 8, 4, 0x40 + vector);
        h.write(entry + 12, 4, 0);
    }
    h.device.write_config(msix + 3, &[0x80]);
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 16, 0x1_0000);
    h.write(0x14, 1, 0xf);
    let interrupt = lock(&h.log).interrupt.clone().unwrap();
    interrupt.signal_queue(0);
    interrupt.signal_config();
    assert_eq!(h.msi.triggered(), vec![0, 2]);
    assert_eq!(h.read(ISR_OFFSET, 1), 3, "ISR reports queue and config");
    assert_eq!(h.read(ISR_OFFSET, 1), 0, "and is cleared by the read");
    // A queue without a vector raises nothing.
    interrupt.signal_queue(1);
    assert_eq!(h.msi.triggered().len(), 2);
    // Needs-reset is reported once, through the config vector.
    interrupt.set_needs_reset();
    interrupt.set_needs_reset();
    assert_eq!(h.status() & 0x40, 0x40);
    assert_eq!(h.msi.trigger_count(2), 2);
    // Function mask holds interrupts pending in the PBA.
    h.device.write_config(msix + 3, &[0xc0]);
    interrupt.signal_queue(0);
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 1);
    h.device.write_config(msix + 3, &[0x80]);
    assert_eq!(h.msi.trigger_count(0), 2);
}

#[test]
fn notifications_and_ioeventfd_registration() {
    let mut h = harness(VirtioPciOptions::default());
    let registrar = Arc::new(FakeRegistrar::default());
    h.device.set_ioevent_registrar(registrar.clone());
    h.device.bar_moved(0, None, Some(0xc000_0000));
    h.device.bar_moved(0, Some(0xc000_0000), Some(0xd000_0000));
    h.device.bar_moved(0, Some(0xd000_0000), None);
    assert_eq!(
        *lock(&registrar.events),
        vec![
            (true, 0xc000_3000),
            (true, 0xc000_3004),
            (false, 0xc000_3000),
            (true, 0xd000_3000),
            (false, 0xc000_3004),
            (true, 0xd000_3004),
            (false, 0xd000_3000),
            (false, 0xd000_3004),
        ]
    );
    // A notify write that exits to the VMM still reaches the queue's eventfd.
    h.write(NOTIFY_OFFSET + 4, 2, 1);
    let offsets: Vec<_> = h.device.notify_events().map(|(offset, _)| offset).collect();
    assert_eq!(offsets, [0, 4]);
    let (_, fd) = h.device.notify_events().nth(1).unwrap();
    assert_eq!(fd.read().unwrap(), 1);
}

#[test]
fn device_config_window_and_odd_accesses() {
    let mut h = harness(VirtioPciOptions::default());
    assert_eq!(h.read(DEVICE_CONFIG_OFFSET + 2, 2), 0x0403);
    assert_eq!(h.read(DEVICE_CONFIG_OFFSET + 6, 4), 0x0807);
    h.write(DEVICE_CONFIG_OFFSET + 1, 1, 9);
    assert_eq!(lock(&h.log).config_writes, vec![(1, vec![9])]);
    for offset in (0..BAR0_SIZE + 16).step_by(3) {
        for width in [1usize, 2, 3, 4, 8] {
            h.read(offset, width);
            if !(0x14..0x15).contains(&offset) {
                h.write(offset, width, u64::MAX);
            }
        }
    }
    let mut data = [0u8; 4];
    h.device.read_bar(3, 0, &mut data);
    h.device.write_bar(3, u64::MAX, &data);
    h.device.read_bar(0, u64::MAX, &mut data);
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let mut h = harness(VirtioPciOptions::default());
    let cap = capabilities(&mut h)
        .into_iter()
        .map(|(offset, _)| offset)
        .find(|&offset| h.config_read(offset + 3, 1) == 5)
        .unwrap();
    // Read num_queues (common config 0x12, 2 bytes) through the window.
    h.device.write_config(cap + 4, &[0]);
    h.device.write_config(cap + 8, &0x12u32.to_le_bytes());
    h.device.write_config(cap + 12, &2u32.to_le_bytes());
    assert_eq!(h.config_read(cap + 16, 2), 2);
    // Write queue_select = 1 through the window.
    h.device.write_config(cap + 8, &0x16u32.to_le_bytes());
    h.device.write_config(cap + 16, &1u32.to_le_bytes());
    assert_eq!(h.read(0x16, 2), 1);
    // Bad lengths and BARs do nothing.
    h.device.write_config(cap + 12, &3u32.to_le_bytes());
    h.device.write_config(cap + 16, &0u32.to_le_bytes());
    assert_eq!(h.read(0x16, 2), 1);
    h.device.write_config(cap + 4, &[9]);
    h.device.write_config(cap + 12, &4u32.to_le_bytes());
    h.config_read(cap + 16, 4);
}

#[test]
fn random_register_traffic_never_panics() {
    let mut h = harness(VirtioPciOptions {
        behind_iommu: true,
        msix_vectors: Some(4),
    });
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let width = [1usize, 2, 4, 8][(next() % 4) as usize];
        let value = next();
        match next() % 4 {
            0 => {
                let offset = (next() % 0x100) as usize;
                let mut data = vec![0u8; width];
                put_le_value(&mut data, value);
                h.device.write_config(offset, &data);
            }
            1 => {
                h.config_read((next() % 0x1100) as usize, width);
            }
            2 => {
                let offset = next() % (BAR0_SIZE + 0x10);
                h.write(offset, width, value);
            }
            _ => {
                h.read(next() % (BAR0_SIZE + 0x10), width);
            }
        }
    }
}

#[test]
fn bus_master_enable_gates_dma_and_kicks_queues() {
    use std::sync::atomic::Ordering;
    let mut h = harness(VirtioPciOptions::default());
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 16, 0x1_0000);
    h.write(0x14, 1, 0xf);
    let dma = lock(&h.log).dma_enabled.clone().unwrap();
    assert!(!dma.load(Ordering::SeqCst));
    h.device.write_config(4, &[0x06]);
    assert!(dma.load(Ordering::SeqCst));
    let kicks: Vec<u64> = h
        .device
        .notify_events()
        .map(|(_, fd)| fd.read().unwrap_or(0))
        .collect();
    assert_eq!(kicks, [1, 1]);
    h.device.write_config(4, &[0x02]);
    assert!(!dma.load(Ordering::SeqCst));
}
