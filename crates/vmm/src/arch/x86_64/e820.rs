//! The e820 memory map handed to the guest, and the RAM ranges behind it.

use super::layout::{
    ACPI_SIZE, ACPI_START, EBDA_START, ECAM_SIZE, ECAM_START, HIGH_RAM_START, HIMEM_START,
    MMIO_HOLE_START,
};

/// Kind of an e820 entry (the values Linux and the boot protocol use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram,
    /// Reserved (type 2).
    Reserved,
}

impl E820Kind {
    /// The numeric e820 type.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The RAM ranges `(start, size)` backing `mem_size` bytes of guest memory: everything below the
/// MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if mem_size > low {
        ranges.push((HIGH_RAM_START, mem_size - low));
    }
    ranges
}

/// Top of the RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// The e820 map for `mem_size` bytes of RAM, sorted by address, without overlaps.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(mem_size);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_SIZE,
            kind: E820Kind::Reserved,
        },
    ];
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    map.push(E820Entry {
        addr: ECAM_START,
        size: ECAM_SIZE,
        kind: E820Kind::Reserved,
    });
    if mem_size > low_end {
        map.push(E820Entry {
            addr: HIGH_RAM_START,
            size: mem_size - low_end,
            kind: E820Kind::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{DRHD_START, IOAPIC_START, LAPIC_START, PCI_MMIO32_START};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum()
    }

    fn covered(map: &[E820Entry], addr: u64) -> bool {
        map.iter().any(|e| addr >= e.addr && addr < e.addr + e.size)
    }

    #[test]
    fn small_memory_stays_below_the_hole() {
        let map = e820_map(512 * MIB);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(
            map[2],
            E820Entry {
                addr: MIB,
                size: 511 * MIB,
                kind: E820Kind::Ram
            }
        );
        assert!(map.iter().all(|e| e.addr + e.size <= 4 * GIB));
        assert_eq!(ram_ranges(512 * MIB), vec![(0, 512 * MIB)]);
    }

    #[test]
    fn large_memory_splits_around_the_hole() {
        let map = e820_map(4 * GIB);
        let high = map.last().unwrap();
        assert_eq!(
            *high,
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(ram_ranges(4 * GIB), vec![(0, 3 * GIB), (4 * GIB, GIB)]);
        // All RAM except the legacy hole (0x9fc00..1 MiB) is in the map.
        assert_eq!(ram_total(&map), 4 * GIB - (MIB - 0x9fc00));
    }

    #[test]
    fn map_is_sorted_and_disjoint() {
        for mem in [64 * MIB, GIB, 3 * GIB, 3 * GIB + 4096, 8 * GIB] {
            let map = e820_map(mem);
            for pair in map.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
            }
        }
    }

    #[test]
    fn mmio_devices_are_not_ram() {
        let map = e820_map(8 * GIB);
        for addr in [LAPIC_START, IOAPIC_START, DRHD_START, PCI_MMIO32_START] {
            assert!(!covered(&map, addr), "{addr:#x} must be in the MMIO hole");
        }
        let ecam = map.iter().find(|e| e.addr == ECAM_START).unwrap();
        assert_eq!(ecam.kind, E820Kind::Reserved);
    }
}
