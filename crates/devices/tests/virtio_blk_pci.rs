//! The whole stack as the VMM wires it: PciBus + ECAM + BAR window + virtio-pci + virtio-blk,
//! driven the way a guest driver would, with a fake MSI controller and ioeventfd registrar.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use devices::interrupt::FakeMsiController;
use devices::pci::{IoEventRegistrar, PciBarWindow, PciBus, PciConfigIo, PciEcam, SharedPciDevice};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::pci::{VirtioPciDevice, VirtioPciOptions};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

const WINDOW: u64 = 0xc000_0000;
const WINDOW_SIZE: u64 = 0x1000_0000;
const QUEUE: u64 = 0x10_0000;
const REQUEST: u64 = 0x20_0000;

#[derive(Default)]
struct Registrar {
    registered: Mutex<Vec<u64>>,
}

impl IoEventRegistrar for Registrar {
    fn register(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.registered.lock().unwrap().push(addr);
        Ok(())
    }
    fn unregister(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.registered.lock().unwrap().retain(|&a| a != addr);
        Ok(())
    }
}

fn read(device: &dyn BusDevice, offset: u64, width: usize) -> u64 {
    let mut data = vec![0u8; width];
    device.read(offset, &mut data);
    data.iter()
        .rev()
        .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
}

fn write(device: &dyn BusDevice, offset: u64, width: usize, value: u64) {
    let data: Vec<u8> = (0..width).map(|i| (value >> (8 * i)) as u8).collect();
    device.write(offset, &data);
}

#[test]
fn guest_driver_reads_a_sector_through_the_whole_stack() {
    let image = TempFile::new().unwrap();
    image.as_file().write_all(&[0x5a; 4096]).unwrap();
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let msi = Arc::new(FakeMsiController::new());
    let registrar = Arc::new(Registrar::default());

    let block = Block::<GuestMemoryMmap>::new(&BlockConfig::new(image.as_path())).unwrap();
    let counters = block.counters();
    let mut transport = VirtioPciDevice::new(
        Box::new(block),
        memory.clone(),
        msi.clone(),
        VirtioPciOptions::default(),
    )
    .unwrap();
    transport.set_ioevent_registrar(registrar.clone());
    let bus = Arc::new(PciBus::new(WINDOW, WINDOW_SIZE));
    let transport: SharedPciDevice = Arc::new(Mutex::new(transport));
    let slot = bus.add_device(transport).unwrap();
    let ecam = PciEcam::new(bus.clone());
    let config_io = PciConfigIo::new(bus.clone());
    let bars = PciBarWindow::new(bus, WINDOW);
    let function = u64::from(slot) << 15;

    // Enumerate: legacy config access sees the virtio-blk vendor/device pair.
    write(&config_io, 0, 4, 0x8000_0000 | (u64::from(slot) << 11));
    assert_eq!(read(&config_io, 4, 4), 0x1042_1af4);

    // BAR0 as assigned, memory decoding and bus mastering on.
    let bar0 = (read(&ecam, function | 0x10, 4) & !0xf) | (read(&ecam, function | 0x14, 4) << 32);
    assert!((WINDOW..WINDOW + WINDOW_SIZE).contains(&bar0));
    write(&ecam, function | 4, 2, 0x6);
    assert_eq!(
        *registrar.registered.lock().unwrap(),
        vec![bar0 + 0x3000],
        "queue 0's notify address has an ioeventfd"
    );
    let bar = |offset: u64| bar0 - WINDOW + offset;

    // MSI-X: find the capability, program vector 0 and 1, enable.
    let mut capability = read(&ecam, function | 0x34, 1);
    while read(&ecam, function | capability, 1) != 0x11 {
        capability = read(&ecam, function | (capability + 1), 1);
    }
    for vector in 0..2u64 {
        write(&bars, bar(0x4000 + vector * 16), 8, 0xfee0_0000);
        write(&bars, bar(0x4000 + vector * 16 + 8), 4, 0x30 + vector);
        write(&bars, bar(0x4000 + vector * 16 + 12), 4, 0);
    }
    write(&ecam, function | (capability + 2), 2, 0x8000);

    // Virtio initialisation (virtio 1.1, 3.1.1).
    write(&bars, bar(0x14), 1, 1);
    write(&bars, bar(0x14), 1, 3);
    write(&bars, bar(0x08), 4, 1);
    write(&bars, bar(0x0c), 4, 1);
    write(&bars, bar(0x14), 1, 0xb);
    assert_eq!(read(&bars, bar(0x14), 1), 0xb);
    write(&bars, bar(0x10), 2, 1);
    write(&bars, bar(0x16), 2, 0);
    write(&bars, bar(0x18), 2, 8);
    write(&bars, bar(0x1a), 2, 0);
    write(&bars, bar(0x20), 8, QUEUE);
    write(&bars, bar(0x28), 8, QUEUE + 0x1000);
    write(&bars, bar(0x30), 8, QUEUE + 0x2000);
    write(&bars, bar(0x1c), 2, 1);
    write(&bars, bar(0x14), 1, 0xf);
    assert_eq!(read(&bars, bar(0x14), 1), 0xf);

    // One IN request for sector 2: header, 512-byte buffer, status.
    let mut header = [0u8; 16];
    header[8] = 2;
    memory.write_slice(&header, GuestAddress(REQUEST)).unwrap();
    let descriptors: [(u64, u32, u16, u16); 3] = [
        (REQUEST, 16, 1, 1),
        (REQUEST + 0x1000, 512, 3, 2),
        (REQUEST + 0x2000, 1, 2, 0),
    ];
    for (index, (address, length, flags, next)) in descriptors.into_iter().enumerate() {
        let entry = GuestAddress(QUEUE + index as u64 * 16);
        memory.write_obj(address, entry).unwrap();
        memory.write_obj(length, entry.unchecked_add(8)).unwrap();
        memory.write_obj(flags, entry.unchecked_add(12)).unwrap();
        memory.write_obj(next, entry.unchecked_add(14)).unwrap();
    }
    memory
        .write_obj(0u16, GuestAddress(QUEUE + 0x1004))
        .unwrap();
    memory
        .write_obj(1u16, GuestAddress(QUEUE + 0x1002))
        .unwrap();
    memory
        .write_obj(0xffu8, GuestAddress(REQUEST + 0x2000))
        .unwrap();
    // The notify write (what KVM would turn into an ioeventfd signal).
    write(&bars, bar(0x3000), 2, 0);

    let mut used_idx = 0u16;
    for _ in 0..10_000 {
        used_idx = memory.read_obj(GuestAddress(QUEUE + 0x2002)).unwrap();
        if used_idx == 1 && !msi.triggered().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(used_idx, 1);
    let status: u8 = memory.read_obj(GuestAddress(REQUEST + 0x2000)).unwrap();
    assert_eq!(status, 0);
    let data: u8 = memory.read_obj(GuestAddress(REQUEST + 0x1000)).unwrap();
    assert_eq!(data, 0x5a);
    assert_eq!(
        msi.triggered(),
        vec![0],
        "queue 0 completes on MSI-X vector 0"
    );
    assert_eq!(counters.snapshot().read_bytes, 512);

    // Reset stops the device; the transport is ready for a new driver.
    write(&bars, bar(0x14), 1, 0);
    assert_eq!(read(&bars, bar(0x14), 1), 0);
}
