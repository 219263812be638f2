//! Guest RAM: anonymous mappings for the e820 RAM ranges, via vm-memory.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::e820;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mmap failed.
    #[error("Cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
}

/// Allocates `size` bytes of guest RAM laid out around the 32-bit MMIO hole.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = e820::ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Allocate(size >> 20, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_follow_the_layout() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0x1234u32, GuestAddress((64 << 20) - 4))
            .unwrap();
        assert!(mem.write_obj(0u8, GuestAddress(64 << 20)).is_err());
    }
}
