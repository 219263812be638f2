//! Address-range buses for port I/O and MMIO: each maps non-overlapping ranges to devices and
//! dispatches an access to the device with the offset into its range.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A device on a bus: reads and writes by offset into its range, called from vCPU threads
/// concurrently (the devices crate's seam, shared by every device model).
pub use devices::bus::BusDevice;

/// Errors registering a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A zero-sized range.
    #[error("Cannot register {name} with an empty range at {base:#x}")]
    Empty {
        /// Device name.
        name: String,
        /// Range base.
        base: u64,
    },
    /// The range overlaps another device or wraps around.
    #[error("Cannot register {name} at {base:#x}+{len:#x}: overlaps {other}")]
    Overlap {
        /// Device name.
        name: String,
        /// Range base.
        base: u64,
        /// Range length.
        len: u64,
        /// The device already there.
        other: String,
    },
}

struct Entry {
    len: u64,
    name: String,
    device: Arc<dyn BusDevice>,
}

/// A bus: non-overlapping `[base, base + len)` ranges → devices.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        f.debug_map()
            .entries(
                ranges
                    .iter()
                    .map(|(base, e)| (format!("{base:#x}+{:#x}", e.len), &e.name)),
            )
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::Empty {
                name: name.to_owned(),
                base,
            });
        }
        let overlap = |other: &str| Error::Overlap {
            name: name.to_owned(),
            base,
            len,
            other: other.to_owned(),
        };
        let end = base
            .checked_add(len - 1)
            .ok_or_else(|| overlap("the end of the address space"))?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((b, e)) = ranges.range(..=end).next_back()
            && b + (e.len - 1) >= base
        {
            return Err(overlap(&e.name));
        }
        ranges.insert(
            base,
            Entry {
                len,
                name: name.to_owned(),
                device,
            },
        );
        Ok(())
    }

    /// Removes the device registered at exactly `base`; returns whether there was one.
    pub fn remove(&self, base: u64) -> bool {
        self.ranges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&base)
            .is_some()
    }

    /// The device covering `addr` and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64) -> Option<(Arc<dyn BusDevice>, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, e) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < e.len).then(|| (e.device.clone(), offset))
    }

    /// Dispatches a read; returns `false` (and leaves `data` alone) if nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                device.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns `false` if nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_with_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Recorder::default());
        bus.insert("dev", 0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, &[0x41]));
        assert!(!bus.write(0x400, &[0]));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(dev.0.lock().unwrap().as_slice(), &[(0, vec![0x41])]);
    }

    #[test]
    fn overlaps_are_rejected() {
        let bus = Bus::new();
        let dev: Arc<dyn BusDevice> = Arc::new(Recorder::default());
        bus.insert("a", 0x1000, 0x1000, dev.clone()).unwrap();
        for (base, len) in [
            (0x1000, 1),
            (0xfff, 2),
            (0x1fff, 1),
            (0x800, 0x1000),
            (0x0, 0x10000),
        ] {
            let err = bus.insert("b", base, len, dev.clone()).unwrap_err();
            assert!(
                matches!(err, Error::Overlap { ref other, .. } if other == "a"),
                "{base:#x}"
            );
        }
        bus.insert("below", 0x0, 0x1000, dev.clone()).unwrap();
        bus.insert("above", 0x2000, 0x10, dev.clone()).unwrap();
        assert!(bus.insert("wrap", u64::MAX, 2, dev.clone()).is_err());
        assert!(bus.insert("empty", 0x5000, 0, dev.clone()).is_err());
        assert!(bus.remove(0x1000));
        bus.insert("again", 0x1000, 0x1000, dev).unwrap();
    }
}
