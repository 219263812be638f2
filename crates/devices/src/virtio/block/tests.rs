//! virtio-blk end to end: rings in guest memory, a temp file as the disk, the worker's queue
//! processing, and translated memory through a fake IOMMU.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::iommu::{Iommu, IotlbIterator, IovaRange};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory, Iotlb, Permissions,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::tempfile::TempFile;

use crate::io_gate::IoGate;

use super::request::Disk;
use super::worker::Worker;
use super::*;
use crate::interrupt::lock;
use crate::virtio::{ActiveQueue, VirtioInterrupt};

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
const DISK_SECTORS: u64 = 64;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

#[derive(Default)]
struct FakeInterrupt {
    queue_signals: Mutex<Vec<u16>>,
    needs_reset: AtomicBool,
}

impl VirtioInterrupt for FakeInterrupt {
    fn signal_queue(&self, queue: u16) {
        lock(&self.queue_signals).push(queue);
    }
    fn signal_config(&self) {}
    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

/// A disk image whose sector `n` is filled with byte `n`.
fn disk_image() -> TempFile {
    let file = TempFile::new().unwrap();
    let mut image = Vec::new();
    for sector in 0..DISK_SECTORS {
        image.extend(std::iter::repeat_n(sector as u8, SECTOR_SIZE as usize));
    }
    file.as_file().write_all(&image).unwrap();
    file
}

/// Writes an indirect descriptor table at `table`.
fn write_table(memory: &GuestMemoryMmap, table: u64, entries: &[Descriptor]) {
    for (index, entry) in entries.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(table + index as u64 * 16))
            .unwrap();
    }
}

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// The driver side: writes descriptors and the avail ring directly into physical memory.
struct Driver<'a> {
    ram: &'a GuestMemoryMmap,
    next_descriptor: u16,
    avail_idx: u16,
}

impl<'a> Driver<'a> {
    fn new(ram: &'a GuestMemoryMmap) -> Self {
        Driver {
            ram,
            next_descriptor: 0,
            avail_idx: 0,
        }
    }

    fn descriptor(&self, index: u16, address: u64, length: u32, flags: u16, next: u16) {
        let descriptor = Descriptor::new(address, length, flags, next);
        self.ram
            .write_obj(descriptor, GuestAddress(DESC_TABLE + u64::from(index) * 16))
            .unwrap();
    }

    /// Publishes a chain of (address, length, writable) buffers; returns its head.
    fn chain(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_descriptor;
        for (position, &(address, length, writable)) in buffers.iter().enumerate() {
            let index = head + position as u16;
            let mut flags = if writable { WRITE } else { 0 };
            if position + 1 < buffers.len() {
                flags |= NEXT;
            }
            self.descriptor(
                index % QUEUE_SIZE,
                address,
                length,
                flags,
                (index + 1) % QUEUE_SIZE,
            );
        }
        self.next_descriptor = (head + buffers.len() as u16) % QUEUE_SIZE;
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.ram
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    fn header(&self, address: u64, request_type: u32, sector: u64) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.ram
            .write_slice(&header, GuestAddress(address))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.ram.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// (head, length) of used element `slot`.
    fn used(&self, slot: u16) -> (u32, u32) {
        let base = USED_RING + 4 + u64::from(slot % QUEUE_SIZE) * 8;
        (
            self.ram.read_obj(GuestAddress(base)).unwrap(),
            self.ram.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }

    fn byte(&self, address: u64) -> u8 {
        self.ram.read_obj(GuestAddress(address)).unwrap()
    }
}

fn queue(event_idx: bool) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue
        .try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
        .unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(USED_RING))
        .unwrap();
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    queue
}

fn worker<M: GuestMemory>(
    memory: M,
    image: &TempFile,
    read_only: bool,
) -> (Worker<M>, Arc<FakeInterrupt>, Arc<BlockCounters>) {
    let interrupt = Arc::new(FakeInterrupt::default());
    let counters = Arc::new(BlockCounters::default());
    let worker = Worker {
        memory,
        queues: vec![ActiveQueue {
            index: 0,
            queue: queue(false),
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        }],
        interrupt: interrupt.clone(),
        disk: Disk {
            file: image.as_file().try_clone().unwrap(),
            sectors: DISK_SECTORS,
            read_only,
            serial: *b"serial-0123456789abc",
        },
        counters: counters.clone(),
        kill: EventFd::new(EFD_NONBLOCK).unwrap(),
        max_segments: 8,
        needs_reset: false,
        dma_enabled: Arc::new(AtomicBool::new(true)),
        io_gate: Arc::new(IoGate::new()),
        stopping: Arc::new(AtomicBool::new(false)),
    };
    (worker, interrupt, counters)
}

const HEADER: u64 = 0x8000;
const DATA: u64 = 0x9000;
const STATUS: u64 = 0xf000;

#[test]
fn read_request() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, interrupt, counters) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    driver.header(HEADER, VIRTIO_BLK_T_IN, 3);
    let head = driver.chain(&[
        (HEADER, 16, false),
        (DATA, 512, true),
        (DATA + 512, 512, true),
        (STATUS, 1, true),
    ]);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 1);
    assert_eq!(driver.used(0), (u32::from(head), 1025));
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.byte(DATA), 3);
    assert_eq!(driver.byte(DATA + 511), 3);
    assert_eq!(driver.byte(DATA + 512), 4);
    assert_eq!(*lock(&interrupt.queue_signals), vec![0]);
    let stats = counters.snapshot();
    assert_eq!(
        (
            stats.requests,
            stats.read_bytes,
            stats.errors,
            stats.interrupts
        ),
        (1, 1024, 0, 1)
    );
}

#[test]
fn write_then_flush() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, counters) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    memory
        .write_slice(&[0xab; 512], GuestAddress(DATA))
        .unwrap();
    driver.header(HEADER, VIRTIO_BLK_T_OUT, 5);
    // Header and data share one descriptor: framing is not assumed.
    memory
        .write_slice(&[0xab; 512], GuestAddress(HEADER + 16))
        .unwrap();
    driver.chain(&[(HEADER, 16 + 512, false), (STATUS, 1, true)]);
    driver.header(HEADER + 0x1000, VIRTIO_BLK_T_FLUSH, 0);
    driver.chain(&[(HEADER + 0x1000, 16, false), (STATUS + 1, 1, true)]);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 2);
    assert_eq!(driver.used(0).1, 1, "writes report only the status byte");
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.byte(STATUS + 1), VIRTIO_BLK_S_OK as u8);
    let mut file = image.as_file();
    let mut sector = [0u8; 512];
    file.seek(SeekFrom::Start(5 * 512)).unwrap();
    file.read_exact(&mut sector).unwrap();
    assert_eq!(sector, [0xab; 512]);
    let stats = counters.snapshot();
    assert_eq!((stats.write_bytes, stats.flushes), (512, 1));
}

#[test]
fn no_dma_while_bus_mastering_is_off() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, _) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    driver.header(HEADER, VIRTIO_BLK_T_IN, 3);
    driver.chain(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    worker.dma_enabled.store(false, Ordering::SeqCst);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 0);
    assert_eq!(driver.byte(DATA), 0);
    worker.dma_enabled.store(true, Ordering::SeqCst);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 1);
    assert_eq!(driver.byte(DATA), 3);
}

#[test]
fn get_id_and_unsupported() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, _) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    driver.header(HEADER, VIRTIO_BLK_T_GET_ID, 0);
    driver.chain(&[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    driver.header(HEADER + 0x100, VIRTIO_BLK_T_DISCARD, 0);
    driver.chain(&[(HEADER + 0x100, 16, false), (STATUS + 1, 1, true)]);
    worker.process_queue(0);
    let mut id = [0u8; 20];
    memory.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-0123456789abc");
    assert_eq!(driver.used(0).1, 21);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.byte(STATUS + 1), VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn out_of_range_and_unaligned_requests_fail() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, counters) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    let cases = [
        (VIRTIO_BLK_T_IN, DISK_SECTORS, 512),
        (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024),
        (VIRTIO_BLK_T_IN, u64::MAX, 512),
        (VIRTIO_BLK_T_IN, 0, 100),
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, 512),
    ];
    for (position, &(request_type, sector, length)) in cases.iter().enumerate() {
        let header = HEADER + position as u64 * 0x100;
        driver.header(header, request_type, sector);
        let writable = request_type == VIRTIO_BLK_T_IN;
        driver.chain(&[
            (header, 16, false),
            (DATA, length, writable),
            (STATUS + position as u64, 1, true),
        ]);
    }
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), cases.len() as u16);
    for position in 0..cases.len() {
        assert_eq!(
            driver.byte(STATUS + position as u64),
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(driver.used(position as u16).1, 1);
    }
    assert_eq!(counters.snapshot().errors, cases.len() as u64);
    assert_eq!(
        image.as_file().metadata().unwrap().len(),
        DISK_SECTORS * 512
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, _) = worker(memory.clone(), &image, true);
    let mut driver = Driver::new(&memory);
    memory
        .write_slice(&[0xcd; 512], GuestAddress(DATA))
        .unwrap();
    driver.header(HEADER, VIRTIO_BLK_T_OUT, 0);
    driver.chain(&[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    worker.process_queue(0);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_IOERR as u8);
    let mut first = [0u8; 1];
    image.as_file().seek(SeekFrom::Start(0)).unwrap();
    image.as_file().read_exact(&mut first).unwrap();
    assert_eq!(first, [0]);
}

#[test]
fn read_only_config_offers_ro() {
    let image = disk_image();
    let mut config = BlockConfig::new(image.as_path());
    config.read_only = true;
    let block = Block::<GuestMemoryMmap>::new(&config).unwrap();
    assert_ne!(VirtioDevice::features(&block) & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(block.sectors(), DISK_SECTORS);
    let mut capacity = [0u8; 8];
    VirtioDevice::read_config(&block, 0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    let mut seg_max = [0u8; 4];
    VirtioDevice::read_config(&block, 12, &mut seg_max);
    assert_eq!(
        u32::from_le_bytes(seg_max),
        u32::from(DEFAULT_QUEUE_SIZE) - 2
    );
    assert!(matches!(
        Block::<GuestMemoryMmap>::new(&BlockConfig::new("/nonexistent/disk.img")),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn indirect_descriptors_are_offered_only_on_request() {
    use crate::virtio::VIRTIO_RING_F_INDIRECT_DESC;
    let image = disk_image();
    let mut config = BlockConfig::new(image.as_path());
    let block = Block::<GuestMemoryMmap>::new(&config).unwrap();
    assert_eq!(
        VirtioDevice::features(&block) & VIRTIO_RING_F_INDIRECT_DESC,
        0
    );
    config.indirect_desc = true;
    let block = Block::<GuestMemoryMmap>::new(&config).unwrap();
    assert_ne!(
        VirtioDevice::features(&block) & VIRTIO_RING_F_INDIRECT_DESC,
        0
    );
    // Without indirect tables every request must fit in the ring: SEG_MAX data descriptors
    // plus header and status (virtio 1.2, 5.2.6.1).
    let mut seg_max = [0u8; 4];
    VirtioDevice::read_config(&block, 12, &mut seg_max);
    assert!(u32::from_le_bytes(seg_max) + 2 <= u32::from(DEFAULT_QUEUE_SIZE));
}

#[test]
fn malformed_chains_are_skipped_and_the_queue_goes_on() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, interrupt, counters) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    // 0: a descriptor that points to itself forever.
    driver.descriptor(0, HEADER, 16, NEXT, 0);
    driver.publish(0);
    // 1: next index beyond the table.
    driver.descriptor(1, HEADER, 16, NEXT, 200);
    driver.publish(1);
    // 2 -> 3: readable after writable.
    driver.descriptor(2, STATUS, 1, WRITE | NEXT, 3);
    driver.descriptor(3, HEADER, 16, 0, 0);
    driver.publish(2);
    // 4: no writable part at all (no status byte).
    driver.header(HEADER, VIRTIO_BLK_T_IN, 0);
    driver.descriptor(4, HEADER, 16, 0, 0);
    driver.publish(4);
    // 5 -> 6: a header shorter than 16 bytes fails with IOERR.
    driver.descriptor(5, HEADER, 8, NEXT, 6);
    driver.descriptor(6, STATUS, 1, WRITE, 0);
    driver.publish(5);
    // Head index beyond the queue size.
    driver.publish(QUEUE_SIZE + 3);
    // 7: buffer outside guest RAM.
    driver.header(HEADER + 0x100, VIRTIO_BLK_T_IN, 0);
    driver.descriptor(7, HEADER + 0x100, 16, NEXT, 8);
    driver.descriptor(8, 0x4000_0000, 512, WRITE | NEXT, 9);
    driver.descriptor(9, STATUS + 1, 1, WRITE, 0);
    driver.publish(7);
    // 14 <-> 15: a readable loop longer than the segment limit (8).
    driver.descriptor(14, HEADER, 16, NEXT, 15);
    driver.descriptor(15, HEADER, 16, NEXT, 14);
    driver.publish(14);
    // 10: a buffer that wraps around the address space.
    driver.descriptor(10, u64::MAX - 8, 16, 0, 0);
    driver.publish(10);
    // A good request after all that.
    driver.header(HEADER + 0x200, VIRTIO_BLK_T_IN, 1);
    driver.descriptor(11, HEADER + 0x200, 16, NEXT, 12);
    driver.descriptor(12, DATA, 512, WRITE | NEXT, 13);
    driver.descriptor(13, STATUS + 2, 1, WRITE, 0);
    driver.publish(11);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 9, "every valid head is returned");
    let lengths: Vec<_> = (0..9).map(|slot| driver.used(slot).1).collect();
    assert_eq!(lengths, [0, 0, 0, 0, 1, 1, 0, 0, 513]);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(driver.byte(STATUS + 1), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(driver.byte(STATUS + 2), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.byte(DATA), 1);
    assert!(!interrupt.needs_reset.load(Ordering::SeqCst));
    assert_eq!(counters.snapshot().errors, 9);
}

#[test]
fn indirect_tables() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, _) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    let table = 0x6000u64;
    let entries = [
        Descriptor::new(HEADER, 16, NEXT, 1),
        Descriptor::new(DATA, 512, WRITE | NEXT, 2),
        Descriptor::new(STATUS, 1, WRITE, 0),
    ];
    write_table(&memory, table, &entries);
    driver.header(HEADER, VIRTIO_BLK_T_IN, 7);
    driver.descriptor(0, table, 48, INDIRECT, 0);
    driver.publish(0);
    // An indirect table containing another indirect descriptor is refused.
    let nested = 0x7000u64;
    memory
        .write_obj(
            Descriptor::new(table, 48, INDIRECT, 0),
            GuestAddress(nested),
        )
        .unwrap();
    driver.descriptor(1, nested, 16, INDIRECT, 0);
    driver.publish(1);
    // A table length that is not a multiple of 16 is refused.
    driver.descriptor(2, table, 40, INDIRECT, 0);
    driver.publish(2);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 3);
    assert_eq!(driver.used(0).1, 513);
    assert_eq!(driver.byte(DATA), 7);
    assert_eq!(driver.used(1).1, 0);
    assert_eq!(driver.used(2).1, 0);
}

#[test]
fn indirect_tables_longer_than_one_read_ahead_and_out_of_order() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, _) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    let table = 0x6000u64;
    // 20 entries (more than one read-ahead), visited 0 (header) → 19 → 1 (two data sectors)
    // → 18 (status): the chain jumps past the first read-ahead and back; the rest is unused.
    let data = |i: u64| DATA + (i - 1) * 512;
    let mut entries = vec![Descriptor::new(0, 0, 0, 0); 20];
    entries[0] = Descriptor::new(HEADER, 16, NEXT, 19);
    entries[19] = Descriptor::new(data(1), 512, WRITE | NEXT, 1);
    entries[1] = Descriptor::new(data(2), 512, WRITE | NEXT, 18);
    entries[18] = Descriptor::new(STATUS, 1, WRITE, 0);
    write_table(&memory, table, &entries);
    driver.header(HEADER, VIRTIO_BLK_T_IN, 3);
    driver.descriptor(0, table, 20 * 16, INDIRECT, 0);
    driver.publish(0);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 1);
    assert_eq!(driver.used(0).1, 2 * 512 + 1);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.byte(data(1)), 3);
    assert_eq!(driver.byte(data(2)), 4);
}

#[test]
fn an_indirect_table_whose_unused_tail_is_unreadable_still_works() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, _, _) = worker(memory.clone(), &image, false);
    let mut driver = Driver::new(&memory);
    // Five entries declared, the last two beyond guest RAM; the chain uses the first three.
    let table = 0x10_0000 - 48;
    let entries = [
        Descriptor::new(HEADER, 16, NEXT, 1),
        Descriptor::new(DATA, 512, WRITE | NEXT, 2),
        Descriptor::new(STATUS, 1, WRITE, 0),
    ];
    write_table(&memory, table, &entries);
    driver.header(HEADER, VIRTIO_BLK_T_IN, 5);
    driver.descriptor(0, table, 5 * 16, INDIRECT, 0);
    driver.publish(0);
    worker.process_queue(0);
    assert_eq!(driver.used(0).1, 513);
    assert_eq!(driver.byte(DATA), 5);
}

#[test]
fn bogus_avail_index_needs_reset() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, interrupt, _) = worker(memory.clone(), &image, false);
    // The driver claims more new entries than the ring holds.
    memory
        .write_obj(QUEUE_SIZE + 1, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    worker.process_queue(0);
    assert!(interrupt.needs_reset.load(Ordering::SeqCst));
    assert_eq!(Driver::new(&memory).used_idx(), 0);
    // The device stays stopped until reset.
    memory
        .write_obj(1u16, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    worker.process_queue(0);
    assert_eq!(Driver::new(&memory).used_idx(), 0);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let memory = ram();
    let image = disk_image();
    let (mut worker, interrupt, _) = worker(memory.clone(), &image, false);
    worker.queues[0].queue.set_event_idx(true);
    let mut driver = Driver::new(&memory);
    // used_event = 5: the driver wants an interrupt only after the 6th completion.
    memory
        .write_obj(
            5u16,
            GuestAddress(AVAIL_RING + 4 + u64::from(QUEUE_SIZE) * 2),
        )
        .unwrap();
    driver.header(HEADER, VIRTIO_BLK_T_FLUSH, 0);
    driver.chain(&[(HEADER, 16, false), (STATUS, 1, true)]);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 1);
    assert!(lock(&interrupt.queue_signals).is_empty());
    // The device asks to be notified at the next avail index.
    let avail_event: u16 = memory
        .read_obj(GuestAddress(USED_RING + 4 + u64::from(QUEUE_SIZE) * 8))
        .unwrap();
    assert_eq!(avail_event, 1);
}

/// An IOMMU whose mappings are set by the test; misses are faults.
#[derive(Debug, Default)]
struct FakeIommu {
    iotlb: RwLock<Iotlb>,
    /// Translations so far: a pass over a 16-entry queue needs far fewer than the limit, so
    /// reaching it means the device loops.
    lookups: std::sync::atomic::AtomicUsize,
}

/// More translations than any bounded pass over a test queue makes.
const LOOKUP_LIMIT: usize = 100_000;

impl FakeIommu {
    fn map(&self, iova: u64, gpa: u64, length: usize, permissions: Permissions) {
        self.iotlb
            .write()
            .unwrap()
            .set_mapping(GuestAddress(iova), GuestAddress(gpa), length, permissions)
            .unwrap();
    }
}

impl Iommu for FakeIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, vm_memory::iommu::Error> {
        let lookups = self.lookups.fetch_add(1, Ordering::Relaxed);
        assert!(
            lookups < LOOKUP_LIMIT,
            "the device keeps translating: it loops"
        );
        if iova.0.checked_add(length as u64).is_none() {
            return Err(vm_memory::iommu::Error::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: String::from("wraps"),
            });
        }
        Iotlb::lookup(self.iotlb.read().unwrap(), iova, length, access).map_err(|_| {
            vm_memory::iommu::Error::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: String::from("not mapped"),
            }
        })
    }
}

type Translated = IommuMemory<GuestMemoryMmap, FakeIommu>;

/// IOVA = GPA + IOVA_OFFSET for everything the test maps.
const IOVA_OFFSET: u64 = 0x100_0000;

/// Rings and descriptors at IOVAs; buffers mapped per test.
fn translated(ram: &GuestMemoryMmap) -> (Translated, Driver<'_>) {
    let iommu = FakeIommu::default();
    for (base, permissions) in [
        (DESC_TABLE, Permissions::Read),
        (AVAIL_RING, Permissions::Read),
        (USED_RING, Permissions::ReadWrite),
        (HEADER, Permissions::Read),
        (STATUS, Permissions::Write),
    ] {
        iommu.map(base + IOVA_OFFSET, base, 0x1000, permissions);
    }
    let memory = IommuMemory::new(ram.clone(), iommu, true, ());
    (memory, Driver::new(ram))
}

fn translated_worker(
    memory: &Translated,
    image: &TempFile,
) -> (Worker<Translated>, Arc<FakeInterrupt>) {
    let (mut worker, interrupt, _) = worker(memory.clone(), image, false);
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue
        .try_set_desc_table_address(GuestAddress(DESC_TABLE + IOVA_OFFSET))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL_RING + IOVA_OFFSET))
        .unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(USED_RING + IOVA_OFFSET))
        .unwrap();
    queue.set_ready(true);
    assert!(queue.is_valid(memory));
    worker.queues[0].queue = queue;
    (worker, interrupt)
}

#[test]
fn translated_request_succeeds_when_mapped() {
    let ram = ram();
    let image = disk_image();
    let (memory, mut driver) = translated(&ram);
    memory
        .iommu()
        .map(DATA + IOVA_OFFSET, DATA, 0x1000, Permissions::Write);
    let (mut worker, _) = translated_worker(&memory, &image);
    driver.header(HEADER, VIRTIO_BLK_T_IN, 9);
    driver.chain(&[
        (HEADER + IOVA_OFFSET, 16, false),
        (DATA + IOVA_OFFSET, 512, true),
        (STATUS + IOVA_OFFSET, 1, true),
    ]);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 1);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.byte(DATA), 9, "data landed at the translated GPA");
}

#[test]
fn translation_faults_fail_the_request_cleanly() {
    let ram = ram();
    let image = disk_image();
    let (memory, mut driver) = translated(&ram);
    // The data buffer of a read is mapped read-only: the device may not write it.
    memory
        .iommu()
        .map(DATA + IOVA_OFFSET, DATA, 0x1000, Permissions::Read);
    let (mut worker, interrupt) = translated_worker(&memory, &image);
    ram.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    driver.header(HEADER, VIRTIO_BLK_T_IN, 9);
    driver.chain(&[
        (HEADER + IOVA_OFFSET, 16, false),
        (DATA + IOVA_OFFSET, 512, true),
        (STATUS + IOVA_OFFSET, 1, true),
    ]);
    // Unmapped data buffer.
    driver.chain(&[
        (HEADER + IOVA_OFFSET, 16, false),
        (0x5_0000 + IOVA_OFFSET, 512, true),
        (STATUS + 1 + IOVA_OFFSET, 1, true),
    ]);
    // An untranslated (GPA) address is not an IOVA.
    driver.chain(&[(HEADER, 16, false), (STATUS + 2 + IOVA_OFFSET, 1, true)]);
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 3);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        driver.byte(DATA),
        0xee,
        "nothing written through a read-only mapping"
    );
    assert_eq!(driver.byte(STATUS + 1), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(driver.byte(STATUS + 2), VIRTIO_BLK_S_IOERR as u8);
    assert!(!interrupt.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn unmapped_used_ring_needs_reset() {
    let ram = ram();
    let image = disk_image();
    let (memory, mut driver) = translated(&ram);
    let (mut worker, interrupt) = translated_worker(&memory, &image);
    driver.header(HEADER, VIRTIO_BLK_T_FLUSH, 0);
    driver.chain(&[
        (HEADER + IOVA_OFFSET, 16, false),
        (STATUS + IOVA_OFFSET, 1, true),
    ]);
    memory
        .iommu()
        .iotlb
        .write()
        .unwrap()
        .invalidate_mapping(GuestAddress(USED_RING + IOVA_OFFSET), 0x1000);
    worker.process_queue(0);
    assert!(interrupt.needs_reset.load(Ordering::SeqCst));
    assert_eq!(driver.used_idx(), 0);
}

/// An avail ring whose index is readable but whose entries are not (the mapping ends after
/// the index): the pass ends instead of re-reading the index forever (event index on). Found
/// by the `virtio_blk` fuzz target.
#[test]
fn unreadable_avail_entries_end_the_pass() {
    let ram = ram();
    let image = disk_image();
    let (memory, mut driver) = translated(&ram);
    {
        let mut iotlb = memory.iommu().iotlb.write().unwrap();
        iotlb.invalidate_mapping(GuestAddress(AVAIL_RING + IOVA_OFFSET), 0x1000);
        iotlb
            .set_mapping(
                GuestAddress(AVAIL_RING + IOVA_OFFSET),
                GuestAddress(AVAIL_RING),
                4,
                Permissions::Read,
            )
            .unwrap();
    }
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue
        .try_set_desc_table_address(GuestAddress(DESC_TABLE + IOVA_OFFSET))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL_RING + IOVA_OFFSET))
        .unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(USED_RING + IOVA_OFFSET))
        .unwrap();
    queue.set_event_idx(true);
    queue.set_ready(true);
    driver.header(HEADER, VIRTIO_BLK_T_FLUSH, 0);
    driver.chain(&[
        (HEADER + IOVA_OFFSET, 16, false),
        (STATUS + IOVA_OFFSET, 1, true),
    ]);
    let (worker, _, counters) = worker(memory.clone(), &image, false);
    let mut disk = worker.disk;
    let serviced = service_queue(&memory, &mut queue, &mut disk, &counters, 8);
    assert!(
        matches!(serviced, Ok(Serviced { completed: 0, .. }) | Err(_)),
        "{serviced:?}"
    );
    assert_eq!(driver.used_idx(), 0);
}

/// Waits (bounded) until the used index reaches `n`; asserts behaviour, not timing.
fn wait_used(driver: &Driver<'_>, n: u16) -> u16 {
    for _ in 0..10_000 {
        if driver.used_idx() >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    driver.used_idx()
}

/// A block device activated on one queue behind `gate`: the device, its kick, its interrupt.
fn activated(
    memory: &GuestMemoryMmap,
    image: &TempFile,
    gate: Arc<IoGate>,
) -> (Block<GuestMemoryMmap>, EventFd, Arc<FakeInterrupt>) {
    let mut block = Block::<GuestMemoryMmap>::new(&BlockConfig::new(image.as_path())).unwrap();
    let interrupt = Arc::new(FakeInterrupt::default());
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    block
        .activate(Activation {
            memory: memory.clone(),
            queues: vec![ActiveQueue {
                index: 0,
                queue: queue(false),
                notify,
            }],
            interrupt: interrupt.clone(),
            acked_features: 0,
            dma_enabled: Arc::new(AtomicBool::new(true)),
            io_gate: gate,
        })
        .unwrap();
    (block, kick, interrupt)
}

#[test]
fn activated_device_runs_its_own_thread() {
    let memory = ram();
    let image = disk_image();
    let mut driver = Driver::new(&memory);
    let (mut block, kick, interrupt) = activated(&memory, &image, Arc::new(IoGate::new()));
    driver.header(HEADER, VIRTIO_BLK_T_GET_ID, 0);
    driver.chain(&[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    kick.write(1).unwrap();
    assert_eq!(wait_used(&driver, 1), 1);
    assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    block.reset();
    let stats = block.counters().snapshot();
    assert_eq!(stats.requests, 1);
    assert!(stats.notifications <= 1);
    assert_eq!(*lock(&interrupt.queue_signals), vec![0]);
}

#[test]
fn a_closed_io_gate_holds_the_queue_until_opened_and_stop_still_works() {
    let memory = ram();
    let image = disk_image();
    let mut driver = Driver::new(&memory);
    let gate = Arc::new(IoGate::new());
    let (mut block, kick, _) = activated(&memory, &image, gate.clone());
    assert!(
        gate.close(std::time::Duration::from_secs(10)),
        "an idle device"
    );
    // A request the guest posted (and kicked) before its vCPUs were parked.
    driver.header(HEADER, VIRTIO_BLK_T_GET_ID, 0);
    driver.chain(&[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    kick.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        driver.used_idx(),
        0,
        "nothing is processed while the gate is closed"
    );
    assert_eq!(block.counters().snapshot().requests, 0);
    gate.open();
    assert_eq!(wait_used(&driver, 1), 1, "processed once the gate opens");

    // Stopping a device whose thread waits at a closed gate does not hang.
    assert!(gate.close(std::time::Duration::from_secs(10)));
    driver.header(HEADER, VIRTIO_BLK_T_GET_ID, 0);
    driver.chain(&[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    kick.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    block.reset();
    assert_eq!(driver.used_idx(), 1, "the held request was never processed");
}

/// A small deterministic generator for hostile-input tests (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Mostly plausible values, sometimes extreme ones.
    fn address(&mut self) -> u64 {
        match self.next() % 8 {
            0 => u64::MAX - (self.next() % 64),
            1 => self.next(),
            _ => self.next() % 0x10_0000,
        }
    }
}

#[test]
fn random_descriptor_tables_never_panic() {
    let image = disk_image();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let memory = ram();
        let (mut worker, _, _) = worker(memory.clone(), &image, round % 3 == 0);
        for index in 0..QUEUE_SIZE {
            let flags = (noise.next() % 8) as u16;
            let length = match noise.next() % 4 {
                0 => u32::MAX,
                1 => (noise.next() % 64) as u32,
                _ => (noise.next() % 4096) as u32,
            };
            let descriptor =
                Descriptor::new(noise.address(), length, flags, (noise.next() % 20) as u16);
            memory
                .write_obj(descriptor, GuestAddress(DESC_TABLE + u64::from(index) * 16))
                .unwrap();
        }
        // Random bytes for headers and indirect tables that descriptors may point at.
        for offset in (0..0x1000).step_by(8) {
            memory
                .write_obj(noise.next(), GuestAddress(HEADER + offset))
                .unwrap();
        }
        let published = (noise.next() % u64::from(QUEUE_SIZE + 4)) as u16;
        for slot in 0..QUEUE_SIZE {
            memory
                .write_obj(
                    (noise.next() % 20) as u16,
                    GuestAddress(AVAIL_RING + 4 + u64::from(slot) * 2),
                )
                .unwrap();
        }
        memory
            .write_obj(published, GuestAddress(AVAIL_RING + 2))
            .unwrap();
        worker.process_queue(0);
        let used: u16 = memory.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        assert!(used <= published);
    }
}

#[test]
fn unmapped_descriptor_table_needs_reset_and_stops_the_device() {
    let ram = ram();
    let image = disk_image();
    let (memory, mut driver) = translated(&ram);
    let (mut worker, interrupt) = translated_worker(&memory, &image);
    let counters = worker.counters.clone();
    driver.header(HEADER, VIRTIO_BLK_T_FLUSH, 0);
    driver.chain(&[
        (HEADER + IOVA_OFFSET, 16, false),
        (STATUS + IOVA_OFFSET, 1, true),
    ]);
    let unmap_table = || {
        memory
            .iommu()
            .iotlb
            .write()
            .unwrap()
            .invalidate_mapping(GuestAddress(DESC_TABLE + IOVA_OFFSET), 0x1000);
    };
    unmap_table();
    worker.process_queue(0);
    assert!(
        interrupt.needs_reset.load(Ordering::SeqCst),
        "a descriptor table the device cannot read is a ring failure"
    );
    assert_eq!(driver.used_idx(), 0, "the request is not returned");
    assert_eq!(counters.snapshot().ring_errors, 1);
    // Mapped again, the request is still not processed: only a reset brings the device back.
    memory.iommu().map(
        DESC_TABLE + IOVA_OFFSET,
        DESC_TABLE,
        0x1000,
        Permissions::Read,
    );
    worker.process_queue(0);
    assert_eq!(driver.used_idx(), 0);
    assert_eq!(driver.byte(STATUS), 0);
    assert_eq!(counters.snapshot().ring_errors, 1);
    assert!(lock(&interrupt.queue_signals).is_empty());
}

/// The guest driver's side of the transport for the needs-reset tests: BAR0 accesses and
/// configuration-space writes on a [`VirtioPciDevice`] over translated memory.
mod needs_reset {
    use super::*;
    use crate::interrupt::FakeMsiController;
    use crate::pci::PciDevice;
    use crate::virtio::pci::{
        ISR_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET, VirtioPciDevice, VirtioPciOptions,
    };
    use crate::virtio::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};

    const QUEUE_VECTOR: u64 = 0;
    const CONFIG_VECTOR: u64 = 1;
    const NEEDS_RESET: u64 = 0x40;

    struct Function {
        device: VirtioPciDevice<Translated>,
        msi: Arc<FakeMsiController>,
        counters: Arc<BlockCounters>,
    }

    impl Function {
        fn new(memory: &Translated, image: &TempFile) -> Self {
            let mut config = BlockConfig::new(image.as_path());
            config.queue_size = QUEUE_SIZE;
            config.event_idx = false;
            let block = Block::<Translated>::new(&config).unwrap();
            let counters = block.counters();
            let msi = Arc::new(FakeMsiController::new());
            let options = VirtioPciOptions {
                behind_iommu: true,
                msix_vectors: None,
            };
            let device =
                VirtioPciDevice::new(Box::new(block), memory.clone(), msi.clone(), options)
                    .unwrap();
            let mut function = Function {
                device,
                msi,
                counters,
            };
            // Bus mastering, and MSI-X with one vector for the queue and one for config changes.
            function.device.write_config(4, &[0x06, 0]);
            for vector in [QUEUE_VECTOR, CONFIG_VECTOR] {
                let entry = MSIX_TABLE_OFFSET + vector * 16;
                function.write(entry, 8, 0xfee0_0000);
                function.write(entry + 8, 4, 0x40 + vector);
                function.write(entry + 12, 4, 0);
            }
            let mut capability = function.config_read(0x34);
            while function.config_read(capability) != 0x11 {
                capability = function.config_read(capability + 1);
            }
            function.device.write_config(capability + 3, &[0x80]);
            function
        }

        fn config_read(&mut self, offset: usize) -> usize {
            let mut byte = [0u8];
            self.device.read_config(offset, &mut byte);
            usize::from(byte[0])
        }

        fn write(&mut self, offset: u64, width: usize, value: u64) {
            self.device
                .write_bar(0, offset, &value.to_le_bytes()[..width]);
        }

        fn read(&mut self, offset: u64, width: usize) -> u64 {
            let mut data = [0u8; 8];
            self.device.read_bar(0, offset, &mut data[..width]);
            u64::from_le_bytes(data)
        }

        fn status(&mut self) -> u64 {
            self.read(0x14, 1)
        }

        /// Virtio initialisation (virtio 1.2, 3.1.1) with the rings at their IOVAs.
        fn initialise(&mut self) {
            let features = VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM;
            self.write(0x14, 1, 1);
            self.write(0x14, 1, 3);
            for select in 0..2u64 {
                self.write(0x08, 4, select);
                self.write(0x0c, 4, (features >> (32 * select)) & 0xffff_ffff);
            }
            self.write(0x14, 1, 0xb);
            self.write(0x10, 2, CONFIG_VECTOR);
            self.write(0x16, 2, 0);
            self.write(0x18, 2, u64::from(QUEUE_SIZE));
            self.write(0x1a, 2, QUEUE_VECTOR);
            self.write(0x20, 8, DESC_TABLE + IOVA_OFFSET);
            self.write(0x28, 8, AVAIL_RING + IOVA_OFFSET);
            self.write(0x30, 8, USED_RING + IOVA_OFFSET);
            self.write(0x1c, 2, 1);
            self.write(0x14, 1, 0xf);
            assert_eq!(self.status(), 0xf, "the device accepted DRIVER_OK");
        }

        fn notify(&mut self) {
            self.write(NOTIFY_OFFSET, 2, 0);
        }

        /// Waits (bounded) until `done` holds; asserts behaviour, not timing.
        fn wait_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) -> bool {
            for _ in 0..10_000 {
                if done(self) {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            done(self)
        }
    }

    /// Queues a read of `sector` into DATA; the status byte is at STATUS.
    fn read_request(driver: &mut Driver<'_>, ram: &GuestMemoryMmap, sector: u64) {
        ram.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        driver.header(HEADER, VIRTIO_BLK_T_IN, sector);
        driver.chain(&[
            (HEADER + IOVA_OFFSET, 16, false),
            (DATA + IOVA_OFFSET, 512, true),
            (STATUS + IOVA_OFFSET, 1, true),
        ]);
    }

    #[test]
    fn ring_fault_sets_needs_reset_and_a_reset_brings_the_device_back() {
        let ram = ram();
        let image = disk_image();
        let (memory, mut driver) = translated(&ram);
        memory
            .iommu()
            .map(DATA + IOVA_OFFSET, DATA, 0x1000, Permissions::Write);
        let mut function = Function::new(&memory, &image);
        function.initialise();

        // A request goes through while the rings are mapped.
        read_request(&mut driver, &ram, 4);
        function.notify();
        assert!(function.wait_until(|_| driver.used_idx() == 1));
        assert_eq!(driver.byte(DATA), 4);
        assert!(function.wait_until(|f| f.msi.trigger_count(QUEUE_VECTOR as u16) == 1));
        assert_eq!(function.read(ISR_OFFSET, 1), 1, "the ISR says queue");

        // The guest unmaps the descriptor table; the next request faults on the ring.
        memory
            .iommu()
            .iotlb
            .write()
            .unwrap()
            .invalidate_mapping(GuestAddress(DESC_TABLE + IOVA_OFFSET), 0x1000);
        read_request(&mut driver, &ram, 5);
        function.notify();
        assert!(function.wait_until(|f| f.status() & NEEDS_RESET != 0));
        assert_eq!(function.status(), 0xf | NEEDS_RESET);
        assert!(function.wait_until(|f| f.msi.trigger_count(CONFIG_VECTOR as u16) == 1));
        assert_eq!(
            function.read(ISR_OFFSET, 1),
            2,
            "the ISR says configuration change"
        );
        assert_eq!(function.counters.snapshot().ring_errors, 1);

        // Mapped again and kicked: a device that needs a reset processes nothing.
        memory.iommu().map(
            DESC_TABLE + IOVA_OFFSET,
            DESC_TABLE,
            0x1000,
            Permissions::Read,
        );
        function.notify();
        // The driver's reset: status 0 stops the I/O thread (joined) and reads back 0.
        function.write(0x14, 1, 0);
        assert_eq!(function.status(), 0);
        assert_eq!(
            driver.used_idx(),
            1,
            "nothing was processed after the failure"
        );
        assert_eq!(driver.byte(STATUS), 0xff);
        assert_eq!(function.msi.trigger_count(QUEUE_VECTOR as u16), 1);

        // Re-initialised with fresh rings, the device works again.
        for ring in [AVAIL_RING, USED_RING] {
            ram.write_slice(&[0; 0x1000], GuestAddress(ring)).unwrap();
        }
        let mut driver = Driver::new(&ram);
        function.initialise();
        read_request(&mut driver, &ram, 6);
        function.notify();
        assert!(function.wait_until(|_| driver.used_idx() == 1));
        assert_eq!(driver.byte(STATUS), VIRTIO_BLK_S_OK as u8);
        assert_eq!(driver.byte(DATA), 6);
        assert_eq!(function.status(), 0xf);
        assert!(function.wait_until(|f| f.msi.trigger_count(QUEUE_VECTOR as u16) == 2));
        assert_eq!(function.msi.trigger_count(CONFIG_VECTOR as u16), 1);
        assert_eq!(function.counters.snapshot().ring_errors, 1);
    }
}
