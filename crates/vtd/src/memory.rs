//! Guest physical memory as the remapping hardware sees it.
//!
//! Every structure the vIOMMU reads — root, context and PASID tables, page tables, the
//! invalidation queue — and everything it writes — wait-descriptor status words, A/D bits — goes
//! through [`GuestRam`]. An address outside guest RAM is an error value, never a panic; callers
//! turn it into the spec's "error accessing ..." fault or queue error.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, VolatileMemory, VolatileMemoryError,
};

/// Guest RAM access failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The range is not backed by guest RAM.
    #[error("Guest physical range {gpa:#x}+{len:#x} is outside guest RAM")]
    OutOfRange {
        /// First byte of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
    },
    /// An atomic access was not naturally aligned.
    #[error("Guest physical address {0:#x} is not aligned for an atomic access")]
    Unaligned(u64),
}

/// Guest physical memory, shared by vCPU and device threads.
pub trait GuestRam: Send + Sync {
    /// Reads `buf.len()` bytes at `gpa`.
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes `buf` at `gpa`.
    fn write_at(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError>;
    /// Atomically replaces the naturally aligned u64 at `gpa` with `new` if it equals `current`.
    /// Returns `Ok(Ok(previous))` on success and `Ok(Err(actual))` when the value differed.
    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError>;

    /// Reads a little-endian u64.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read_at(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Writes a little-endian u32.
    fn write_u32(&self, gpa: u64, value: u32) -> Result<(), MemoryError> {
        self.write_at(gpa, &value.to_le_bytes())
    }
    /// Reads `out.len()` little-endian u64s from `gpa` on (a queued descriptor).
    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), MemoryError> {
        read_u64s_one_by_one(self, gpa, out)
    }
}

/// [`GuestRam::read_u64s`] as `out.len()` separate [`GuestRam::read_u64`]s.
fn read_u64s_one_by_one<R: GuestRam + ?Sized>(
    ram: &R,
    gpa: u64,
    out: &mut [u64],
) -> Result<(), MemoryError> {
    for (i, q) in out.iter_mut().enumerate() {
        *q = ram.read_u64(gpa.wrapping_add(8 * i as u64))?;
    }
    Ok(())
}

/// Reads `N` little-endian u64s through a trait object.
pub fn read_qwords<const N: usize>(ram: &dyn GuestRam, gpa: u64) -> Result<[u64; N], MemoryError> {
    let mut out = [0u64; N];
    for (i, q) in out.iter_mut().enumerate() {
        *q = ram.read_u64(gpa.wrapping_add(8 * i as u64))?;
    }
    Ok(out)
}

fn out_of_range(gpa: u64, len: usize) -> MemoryError {
    MemoryError::OutOfRange {
        gpa,
        len: len as u64,
    }
}

/// Any vm-memory backend (e.g. `GuestMemoryMmap`) is guest RAM.
impl<M: GuestMemoryBackend + Send + Sync> GuestRam for M {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if gpa.checked_add(buf.len() as u64).is_none() {
            return Err(out_of_range(gpa, buf.len()));
        }
        // Within one region (every table entry and status word is): one slice, one copy.
        if let Ok(slice) = self.get_slice(GuestAddress(gpa), buf.len()) {
            slice.copy_to(buf);
            return Ok(());
        }
        self.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| out_of_range(gpa, buf.len()))
    }

    fn write_at(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        if gpa.checked_add(buf.len() as u64).is_none() {
            return Err(out_of_range(gpa, buf.len()));
        }
        if let Ok(slice) = self.get_slice(GuestAddress(gpa), buf.len()) {
            slice.copy_from(buf);
            return Ok(());
        }
        self.write_slice(buf, GuestAddress(gpa))
            .map_err(|_| out_of_range(gpa, buf.len()))
    }

    /// One aligned 64-bit atomic load when `gpa` is 8-byte aligned (every table entry is): a
    /// page-table entry the guest updates concurrently is never seen torn, and the load skips
    /// vm-memory's byte-copy path, which dominates a page walk otherwise.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        if !gpa.is_multiple_of(8) {
            let mut b = [0u8; 8];
            self.read_at(gpa, &mut b)?;
            return Ok(u64::from_le_bytes(b));
        }
        let slice = self
            .get_slice(GuestAddress(gpa), 8)
            .map_err(|_: GuestMemoryError| out_of_range(gpa, 8))?;
        let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| out_of_range(gpa, 8))?;
        Ok(u64::from_le(atomic.load(Ordering::Acquire)))
    }

    /// Aligned and in one region (every descriptor is): one slice, one atomic load per word,
    /// no byte copy; otherwise word by word.
    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), MemoryError> {
        let len = 8 * out.len();
        let slice = match self.get_slice(GuestAddress(gpa), len) {
            Ok(slice) if gpa.is_multiple_of(8) => slice,
            _ => return read_u64s_one_by_one(self, gpa, out),
        };
        for (i, q) in out.iter_mut().enumerate() {
            let atomic: &AtomicU64 = slice
                .get_atomic_ref(8 * i)
                .map_err(|_| out_of_range(gpa, len))?;
            *q = u64::from_le(atomic.load(Ordering::Acquire));
        }
        Ok(())
    }

    /// One aligned 32-bit atomic store when `gpa` is 4-byte aligned (a wait descriptor's
    /// status address is): the guest polling the word sees it whole.
    fn write_u32(&self, gpa: u64, value: u32) -> Result<(), MemoryError> {
        if !gpa.is_multiple_of(4) {
            return self.write_at(gpa, &value.to_le_bytes());
        }
        let slice = self
            .get_slice(GuestAddress(gpa), 4)
            .map_err(|_: GuestMemoryError| out_of_range(gpa, 4))?;
        let atomic: &AtomicU32 = slice.get_atomic_ref(0).map_err(|_| out_of_range(gpa, 4))?;
        atomic.store(value.to_le(), Ordering::Release);
        Ok(())
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        if !gpa.is_multiple_of(8) {
            return Err(MemoryError::Unaligned(gpa));
        }
        let slice = self
            .get_slice(GuestAddress(gpa), 8)
            .map_err(|_: GuestMemoryError| out_of_range(gpa, 8))?;
        let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|e| match e {
            VolatileMemoryError::Misaligned { .. } => MemoryError::Unaligned(gpa),
            _ => out_of_range(gpa, 8),
        })?;
        Ok(atomic.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn ram() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn reads_writes_and_refuses_outside_ram() {
        let m = ram();
        m.write_at(0x100, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read_at(0x100, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(
            m.read_at(0xfffe, &mut b),
            Err(MemoryError::OutOfRange {
                gpa: 0xfffe,
                len: 4
            })
        );
        assert!(m.read_at(u64::MAX - 1, &mut b).is_err());
        assert!(m.write_at(0x10000, &b).is_err());
    }

    #[test]
    fn accesses_spanning_two_regions_use_the_general_path() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        m.write_at(0xffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read_at(0xffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(m.read_at(0x1ffe, &mut b).is_err(), "past the last region");
    }

    #[test]
    fn compare_exchange_is_atomic_and_checked() {
        let m = ram();
        m.write_at(0x200, &7u64.to_le_bytes()).unwrap();
        assert_eq!(m.compare_exchange_u64(0x200, 7, 9).unwrap(), Ok(7));
        assert_eq!(m.compare_exchange_u64(0x200, 7, 10).unwrap(), Err(9));
        assert_eq!(m.read_u64(0x200).unwrap(), 9);
        assert_eq!(
            m.compare_exchange_u64(0x204, 0, 1),
            Err(MemoryError::Unaligned(0x204))
        );
        assert!(m.compare_exchange_u64(0x20000, 0, 1).is_err());
        assert_eq!(read_qwords::<2>(&m, 0x200).unwrap(), [9, 0]);
        m.write_at(0x301, &0x1122_3344_5566_7788u64.to_le_bytes())
            .unwrap();
        assert_eq!(
            m.read_u64(0x301).unwrap(),
            0x1122_3344_5566_7788,
            "unaligned read"
        );
        assert_eq!(m.read_u64(0xfff8).unwrap(), 0, "last qword of RAM");
        assert!(m.read_u64(0x10000).is_err());
        assert!(m.read_u64(0xfffc).is_err(), "straddles the end of RAM");
    }

    #[test]
    fn word_reads_and_status_writes_match_the_byte_paths() {
        let m = ram();
        let bytes: Vec<u8> = (0..64).collect();
        m.write_at(0x400, &bytes).unwrap();
        for at in [0x400u64, 0x403, 0x408] {
            let mut words = [0u64; 4];
            m.read_u64s(at, &mut words).unwrap();
            for (i, w) in words.iter().enumerate() {
                let mut b = [0u8; 8];
                m.read_at(at + 8 * i as u64, &mut b).unwrap();
                assert_eq!(*w, u64::from_le_bytes(b), "word {i} at {at:#x}");
            }
        }
        let mut words = [0u64; 4];
        assert!(
            m.read_u64s(0xfff0, &mut words).is_err(),
            "past the end of RAM"
        );
        assert!(
            m.read_u64s(0xfff3, &mut words).is_err(),
            "unaligned, past the end"
        );
        m.read_u64s(0xffe0, &mut words).unwrap();
        for at in [0x500u64, 0x502] {
            m.write_u32(at, 0xdead_beef).unwrap();
            let mut b = [0u8; 4];
            m.read_at(at, &mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), 0xdead_beef, "at {at:#x}");
        }
        assert!(m.write_u32(0xfffe, 1).is_err(), "straddles the end of RAM");
        assert!(m.write_u32(0x10000, 1).is_err());
    }
}
