//! Guest RAM at GPA 0 with a bump allocator for zeroed table pages.

use std::cell::Cell;
use std::ops::Range;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM size of [`Mem::new`]: 64 MiB at GPA 0.
pub const RAM_SIZE: u64 = 64 << 20;
/// [`Mem::new`] allocates table pages from here up...
pub const TABLES_BASE: u64 = 0x10_0000;
/// ...to here, where data pages start.
pub const DATA_BASE: u64 = 0x200_0000;

/// Guest RAM with a bump allocator for zeroed 4 KiB table pages.
pub struct Mem {
    /// The RAM (shared with the unit under test).
    pub ram: Arc<GuestMemoryMmap<()>>,
    next: Cell<u64>,
    end: u64,
}

impl Default for Mem {
    fn default() -> Self {
        Self::new()
    }
}

impl Mem {
    /// [`RAM_SIZE`] of RAM, table pages in `[TABLES_BASE, DATA_BASE)`.
    pub fn new() -> Self {
        Self::with_layout(RAM_SIZE, TABLES_BASE..DATA_BASE)
    }

    /// `size` bytes of RAM, table pages allocated in `tables`.
    pub fn with_layout(size: u64, tables: Range<u64>) -> Self {
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        Self::over(Arc::new(ram), tables)
    }

    /// Existing `ram`, table pages allocated in `tables`.
    pub fn over(ram: Arc<GuestMemoryMmap<()>>, tables: Range<u64>) -> Self {
        assert!(
            ram.address_in_range(GuestAddress(tables.end - 1)),
            "table pages outside RAM"
        );
        Self {
            ram,
            next: Cell::new(tables.start),
            end: tables.end,
        }
    }

    /// A fresh zeroed 4 KiB page.
    pub fn page(&self) -> u64 {
        let p = self.next.get();
        assert!(p + 4096 <= self.end, "test table area exhausted");
        self.next.set(p + 4096);
        self.ram.write_slice(&[0u8; 4096], GuestAddress(p)).unwrap();
        p
    }

    /// End of the table pages allocated so far.
    pub fn allocated_end(&self) -> u64 {
        self.next.get()
    }

    /// Writes a little-endian u64 at `gpa`.
    pub fn w64(&self, gpa: u64, v: u64) {
        self.ram.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    /// Reads a little-endian u64 at `gpa`.
    pub fn r64(&self, gpa: u64) -> u64 {
        self.ram.read_obj(GuestAddress(gpa)).unwrap()
    }

    /// Writes a little-endian u32 at `gpa`.
    pub fn w32(&self, gpa: u64, v: u32) {
        self.ram.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    /// Reads a little-endian u32 at `gpa`.
    pub fn r32(&self, gpa: u64) -> u32 {
        self.ram.read_obj(GuestAddress(gpa)).unwrap()
    }
}
