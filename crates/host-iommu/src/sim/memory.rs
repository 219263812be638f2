//! Host memory as the sim sees it: the VMM reads and writes host virtual addresses for it
//! (the sim never dereferences a pointer), plus a `Vec`-backed stand-in for tests.

use std::sync::Mutex;

/// A host virtual address the VMM could not access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Host address {hva:#x} (+{len}) is not accessible")]
pub struct HostMemoryError {
    /// First address of the access.
    pub hva: u64,
    /// Length of the access.
    pub len: usize,
}

/// Access to host virtual memory, implemented by the VMM over its guest-RAM mappings.
pub trait HostMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `hva`.
    fn read(&self, hva: u64, buf: &mut [u8]) -> Result<(), HostMemoryError>;
    /// Writes `data` at `hva`.
    fn write(&self, hva: u64, data: &[u8]) -> Result<(), HostMemoryError>;
    /// Atomically replaces the little-endian u64 at `hva` (8-byte aligned) with `new` if it
    /// equals `old`. Returns `Ok(old)` on success, `Err(current)` otherwise (as
    /// `AtomicU64::compare_exchange`).
    fn compare_exchange_u64(
        &self,
        hva: u64,
        old: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, HostMemoryError>;

    /// Reads a little-endian u64.
    fn read_u64(&self, hva: u64) -> Result<u64, HostMemoryError> {
        let mut b = [0u8; 8];
        self.read(hva, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Writes a little-endian u64.
    fn write_u64(&self, hva: u64, value: u64) -> Result<(), HostMemoryError> {
        self.write(hva, &value.to_le_bytes())
    }
}

/// Host memory made of `Vec<u8>` regions at chosen (fake) host virtual addresses.
#[derive(Debug, Default)]
pub struct VecHostMemory {
    regions: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl VecHostMemory {
    /// Zeroed regions of `(hva, size)`.
    pub fn new(regions: &[(u64, usize)]) -> Self {
        Self {
            regions: Mutex::new(
                regions
                    .iter()
                    .map(|&(hva, size)| (hva, vec![0; size]))
                    .collect(),
            ),
        }
    }

    fn with<R>(
        &self,
        hva: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, HostMemoryError> {
        let err = HostMemoryError { hva, len };
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        for (base, bytes) in regions.iter_mut() {
            let Some(off) = hva.checked_sub(*base) else {
                continue;
            };
            let Ok(off) = usize::try_from(off) else {
                continue;
            };
            if off < bytes.len() {
                let end = off.checked_add(len).ok_or(err)?;
                let slice = bytes.get_mut(off..end).ok_or(err)?;
                return Ok(f(slice));
            }
        }
        Err(err)
    }
}

impl HostMemory for VecHostMemory {
    fn read(&self, hva: u64, buf: &mut [u8]) -> Result<(), HostMemoryError> {
        self.with(hva, buf.len(), |s| buf.copy_from_slice(s))
    }
    fn write(&self, hva: u64, data: &[u8]) -> Result<(), HostMemoryError> {
        self.with(hva, data.len(), |s| s.copy_from_slice(data))
    }
    fn compare_exchange_u64(
        &self,
        hva: u64,
        old: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, HostMemoryError> {
        self.with(hva, 8, |s| {
            let mut cur = [0u8; 8];
            cur.copy_from_slice(s);
            let cur = u64::from_le_bytes(cur);
            if cur == old {
                s.copy_from_slice(&new.to_le_bytes());
                Ok(old)
            } else {
                Err(cur)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_memory_bounds_and_cmpxchg() {
        let m = VecHostMemory::new(&[(0x1000, 0x1000)]);
        m.write_u64(0x1ff8, 7).unwrap();
        assert_eq!(m.read_u64(0x1ff8), Ok(7));
        assert!(m.read_u64(0x1ffc).is_err(), "crosses the end");
        assert!(m.read_u64(0x0).is_err());
        assert_eq!(m.compare_exchange_u64(0x1ff8, 7, 9), Ok(Ok(7)));
        assert_eq!(m.compare_exchange_u64(0x1ff8, 7, 1), Ok(Err(9)));
    }
}
