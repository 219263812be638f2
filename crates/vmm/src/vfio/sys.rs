//! The `unsafe` of device assignment: a VFIO region mmapped into this process, and that
//! mapping handed to KVM as a memory slot so the guest reaches the device's BAR directly.
//!
//! Both are RAII: a [`BarSlot`] removes its slot before the [`RegionMmap`] it points at is
//! unmapped (it owns the mapping and drops it last).

#![allow(unsafe_code)]

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;

use crate::vm::KvmVm;

/// A shared, read-write mapping of part of a VFIO device region.
#[derive(Debug)]
pub struct RegionMmap {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain device memory owned by this value; no Rust reference is ever
// made to it (only its address is handed to KVM), so moving it between threads is sound.
unsafe impl Send for RegionMmap {}
// SAFETY: as above: shared access only reads the address and length.
unsafe impl Sync for RegionMmap {}

impl RegionMmap {
    /// Maps `len` bytes of `device` at file offset `offset` (the region's offset plus the
    /// mmap-able area's offset; page aligned, as the kernel reports them).
    pub fn new(device: &impl AsRawFd, offset: u64, len: usize) -> std::io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "region offset too large")
        })?;
        // SAFETY: a new shared mapping chosen by the kernel (no MAP_FIXED), so no existing
        // memory of this process is replaced; the result is checked before use and unmapped
        // exactly once in `drop`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }
}

impl Drop for RegionMmap {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is the mapping `new` created and nothing else unmaps it;
        // the KVM slot pointing at it was removed first (see `BarSlot`).
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// A KVM memory slot showing a [`RegionMmap`] to the guest at a guest-physical address (the
/// BAR's address plus the area's offset), moved when the guest moves the BAR.
#[derive(Debug)]
pub struct BarSlot {
    vm: Arc<KvmVm>,
    slot: u32,
    gpa: Option<u64>,
    mmap: RegionMmap,
}

impl BarSlot {
    /// A slot number for `mmap`, not shown to the guest yet.
    pub fn new(vm: Arc<KvmVm>, mmap: RegionMmap) -> Self {
        let slot = vm.allocate_slot();
        Self {
            vm,
            slot,
            gpa: None,
            mmap,
        }
    }

    /// Shows the mapping at `gpa`, or hides it (`None`).
    pub fn place(&mut self, gpa: Option<u64>) -> Result<(), kvm_ioctls::Error> {
        if self.gpa == gpa {
            return Ok(());
        }
        if self.gpa.is_some() {
            self.set(0, 0)?;
            self.gpa = None;
        }
        if let Some(gpa) = gpa {
            self.set(gpa, self.mmap.len as u64)?;
            self.gpa = Some(gpa);
        }
        Ok(())
    }

    fn set(&self, gpa: u64, size: u64) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot: self.slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: self.mmap.addr as u64,
            flags: 0,
        };
        // SAFETY: the slot points at `self.mmap`, a live mapping of exactly `size` bytes (or
        // `size` is 0: the slot is deleted). The mapping is owned by `self` and unmapped only
        // after `drop` has deleted the slot, so KVM never uses unmapped memory. The slot
        // number is this value's alone (`KvmVm::allocate_slot`).
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl Drop for BarSlot {
    fn drop(&mut self) {
        if self.gpa.is_some()
            && let Err(e) = self.set(0, 0)
        {
            tracing::error!(
                "Cannot remove the KVM slot {} of a device BAR: {e}",
                self.slot
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_maps_and_unmaps() {
        let f = std::fs::File::open("/dev/zero").unwrap();
        // /dev/zero opened read-only refuses a shared writable mapping: an error, not a crash.
        assert!(RegionMmap::new(&f, 0, 4096).is_err());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        let m = RegionMmap::new(&f, 0, 8192).unwrap();
        assert_eq!(m.len, 8192);
    }
}
