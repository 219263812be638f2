//! virtio-blk requests from a hostile guest, with every device access translated by the vIOMMU:
//! a legacy-mode unit brought up through its registers, second-stage tables in guest RAM that
//! map 64 IOVA pages (read-only, write-only, read-write, unmapped, or beyond guest RAM), and a
//! queue whose descriptor table, rings and buffers the input writes. The device serves the
//! queue through `DmaMemory<GuestMemoryMmap, DeviceIommu>`, as the VMM's does.
//!
//! Checked after every service pass, besides "no panic": the device wrote guest RAM only in
//! pages some mapping makes writable (no write through a read-only or missing translation, none
//! outside the mapped pages), the disk image kept its size, and after a pass that returned requests
//! in the used ring the used index in guest memory is the device's own.
//!
//! ```text
//!  bytes ─► mappings (fixed per input) ─► tables at 0x1000.. ─► RTADDR, SRTP, TE
//!        └► ops: descriptor / avail publish / raw RAM write / service_queue ─► checks
//! ```
#![no_main]

use std::fs::File;
use std::sync::{Arc, OnceLock};

use devices::virtio::block::request::Disk;
use devices::virtio::block::{BlockCounters, service_queue};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd::dma_memory::DmaMemory;
use vtd::iommu::DeviceIommu;
use vtd::{FaultInterrupt, Vtd};
use vtd_spec::SourceId;

const RAM: u64 = 1 << 18;
const ROOT: u64 = 0x1000;
const CONTEXT: u64 = 0x2000;
/// Second-stage tables, 3 levels: 0x3000 (level 3), 0x4000 (level 2), 0x5000 (level 1).
const SL3: u64 = 0x3000;
/// Data pages the mappings point into.
const DATA: u64 = 0x8000;
const DATA_PAGES: u64 = (RAM - DATA) >> 12;
const PAGES: u64 = 64;
const QUEUE_SIZE: u16 = 16;
const SECTORS: u64 = 128;
const SID: SourceId = SourceId::new(0, 3, 0);

struct Sink;

impl FaultInterrupt for Sink {
    fn deliver(&self, _address: u64, _data: u32) {}
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    /// An IOVA in the mapped window (sometimes anywhere).
    fn iova(&mut self) -> u64 {
        let pick = self.u16();
        if pick == 0xffff {
            u64::from(self.u32()) << 12
        } else {
            (u64::from(pick) << 4) % (PAGES << 12)
        }
    }
}

/// The disk image, one per process (its contents are whatever earlier inputs wrote).
fn image() -> Option<File> {
    static IMAGE: OnceLock<Option<File>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let path = std::env::temp_dir().join(format!("vtd-fuzz-blk-{}", std::process::id()));
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .ok()?;
            let _ = std::fs::remove_file(&path);
            file.set_len(SECTORS * 512).ok()?;
            Some(file)
        })
        .as_ref()?
        .try_clone()
        .ok()
}

/// One IOVA page's mapping: the GPA page it points at and its R/W bits (0 = not present).
#[derive(Clone, Copy)]
struct Mapping {
    gpa: u64,
    rw: u64,
}

fn put(ram: &GuestMemoryMmap, at: u64, value: u64) {
    let _ = ram.write_obj(value, GuestAddress(at));
}

/// Legacy root/context entries for `SID` and a 3-level second-stage table for the pages.
fn tables(ram: &GuestMemoryMmap, pages: &[Mapping]) {
    put(ram, ROOT + u64::from(SID.bus()) * 16, CONTEXT | 1);
    let context = CONTEXT + u64::from(SID.devfn()) * 16;
    put(ram, context, SL3 | 1); // TT=0 (translated), present
    put(ram, context + 8, 1 | (1 << 8)); // AW=1 (39 bits, 3 levels), DID 1
    put(ram, SL3, (SL3 + 0x1000) | 3);
    put(ram, SL3 + 0x1000, (SL3 + 0x2000) | 3);
    for (index, page) in pages.iter().enumerate() {
        put(ram, SL3 + 0x2000 + 8 * index as u64, page.gpa | page.rw);
    }
}

fn write32(unit: &Vtd, at: u64, value: u32) {
    unit.mmio_write(at, &value.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Ok(ram) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]) else {
        return;
    };
    let Some(file) = image() else { return };
    let mut pages = [Mapping { gpa: 0, rw: 0 }; PAGES as usize];
    for page in &mut pages {
        let choice = input.byte();
        let gpa = match choice >> 6 {
            // Beyond guest RAM (still within the 39-bit width): must fail cleanly.
            3 if choice & 0x20 != 0 => RAM + (u64::from(choice & 0x1f) << 12),
            _ => DATA + ((u64::from(choice) % DATA_PAGES) << 12),
        };
        page.gpa = gpa;
        page.rw = [3, 3, 3, 1, 2, 0][usize::from(input.byte() % 6)];
    }
    tables(&ram, &pages);
    let ram_arc = Arc::new(ram.clone());
    let unit = Arc::new(Vtd::new(
        vtd::Config::parse("aw-bits=39").unwrap_or_default(),
        ram_arc,
        Arc::new(Sink),
    ));
    unit.mmio_write(0x20, &ROOT.to_le_bytes()); // RTADDR, legacy
    write32(&unit, 0x18, 1 << 30); // SRTP
    write32(&unit, 0x18, 1 << 31); // TE
    let iommu = DeviceIommu::new(unit.clone(), SID);
    let memory = DmaMemory::new(ram.clone(), Arc::new(iommu));
    // Where the device may write: data pages some mapping makes writable.
    let writable: Vec<bool> = (0..RAM >> 12)
        .map(|page| pages.iter().any(|m| m.rw & 2 != 0 && m.gpa >> 12 == page))
        .collect();

    let mut queue = match Queue::new(QUEUE_SIZE) {
        Ok(queue) => queue,
        Err(_) => return,
    };
    let (desc, avail, used) = (input.iova() & !0xf, input.iova() & !1, input.iova() & !3);
    if queue
        .try_set_desc_table_address(GuestAddress(desc))
        .is_err()
        || queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .is_err()
        || queue.try_set_used_ring_address(GuestAddress(used)).is_err()
    {
        return;
    }
    let size = [16u16, 8, 4, 2, 1][usize::from(input.byte() % 5)];
    queue.set_size(size);
    queue.set_event_idx(input.byte() & 1 != 0);
    queue.set_ready(true);
    let mut disk = Disk {
        file,
        sectors: SECTORS,
        read_only: input.byte() & 7 == 0,
        serial: *b"vtd-nest-fuzz-disk\0\0",
    };
    let counters = BlockCounters::default();
    let mut avail_idx = 0u16;
    // Guest writes go to the GPA a page maps to (the driver's view of its own buffers).
    let gpa_of = |iova: u64| {
        let page = pages.get((iova >> 12) as usize)?;
        Some(page.gpa + (iova & 0xfff)).filter(|&gpa| gpa < RAM)
    };

    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        match input.byte() % 6 {
            0 | 1 => {
                // A descriptor: address in the window, length, flags, next.
                let index = u64::from(input.byte() % 32);
                let addr = input.iova();
                let len = match input.byte() {
                    0xff => input.u32(),
                    n => u32::from(n) * 16 + 1,
                };
                let flags = u16::from(input.byte() & 7);
                let next = u16::from(input.byte() % 20);
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&addr.to_le_bytes());
                bytes[8..12].copy_from_slice(&len.to_le_bytes());
                bytes[12..14].copy_from_slice(&flags.to_le_bytes());
                bytes[14..].copy_from_slice(&next.to_le_bytes());
                if let Some(gpa) = gpa_of(desc + index * 16) {
                    let _ = ram.write_slice(&bytes, GuestAddress(gpa));
                }
            }
            2 => {
                // Publish a head (mostly in range) and the new avail index.
                let head = u16::from(input.byte() % 20);
                let slot = u64::from(avail_idx % size);
                if let Some(gpa) = gpa_of(avail + 4 + 2 * slot) {
                    let _ = ram.write_obj(head, GuestAddress(gpa));
                }
                avail_idx = avail_idx.wrapping_add(if input.byte() == 0xff { 200 } else { 1 });
                if let Some(gpa) = gpa_of(avail + 2) {
                    let _ = ram.write_obj(avail_idx, GuestAddress(gpa));
                }
            }
            3 => {
                // A request header: type, sector.
                let at = input.iova();
                let kind = [0u32, 1, 4, 8, 11, 99][usize::from(input.byte() % 6)];
                let sector = match input.byte() {
                    0xff => u64::from(input.u32()) << 16,
                    n => u64::from(n),
                };
                if let Some(gpa) = gpa_of(at) {
                    let _ = ram.write_obj(kind, GuestAddress(gpa));
                    let _ = ram.write_obj(sector, GuestAddress(gpa + 8));
                }
            }
            4 => {
                // Raw bytes anywhere in the data pages.
                let at = DATA + (u64::from(input.u32()) % (RAM - DATA));
                let len = usize::from(input.byte() % 32);
                let bytes: Vec<u8> = (0..len).map(|_| input.byte()).collect();
                let _ = ram.write_slice(&bytes, GuestAddress(at));
            }
            _ => {
                let mut before = vec![0u8; RAM as usize];
                let _ = ram.read_slice(&mut before, GuestAddress(0));
                let next_used = queue.next_used();
                let result = service_queue(&memory, &mut queue, &mut disk, &counters, 8);
                let mut after = vec![0u8; RAM as usize];
                let _ = ram.read_slice(&mut after, GuestAddress(0));
                // Page by page (a slice comparison, not a traced loop over every byte); the
                // table pages are no mapping's target, so a write there is caught too.
                let changed = before.chunks(4096).zip(after.chunks(4096)).enumerate();
                for (index, _) in changed.filter(|(_, (old, new))| old != new) {
                    assert!(
                        writable[index],
                        "device wrote GPA page {:#x}, which no mapping makes writable",
                        index << 12
                    );
                }
                assert_eq!(
                    disk.file
                        .metadata()
                        .map(|m| m.len())
                        .unwrap_or(SECTORS * 512),
                    SECTORS * 512,
                    "the disk image changed size"
                );
                let used_after =
                    gpa_of(used + 2).and_then(|gpa| ram.read_obj::<u16>(GuestAddress(gpa)).ok());
                if let (Ok(_), Some(index)) = (result, used_after)
                    && queue.next_used() != next_used
                {
                    // The last write of a pass is a used-ring update; only a ring whose page
                    // no other IOVA page aliases is checked (an alias could be written later).
                    let page = pages[(used >> 12) as usize % PAGES as usize].gpa;
                    let private = pages.iter().filter(|m| m.gpa == page).count() == 1;
                    if private && (used & 0xfff) + 6 + 8 * u64::from(size) <= 0x1000 {
                        assert_eq!(
                            index,
                            queue.next_used(),
                            "the used index in memory is not the device's"
                        );
                    }
                }
            }
        }
    }
});
