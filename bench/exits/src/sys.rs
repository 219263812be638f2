//! The program's only unsafe code: an anonymous guest-memory mapping, its KVM memory slot, and
//! CPU affinity.

use kvm_ioctls::{Kvm, VmFd};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

/// A VM whose guest RAM is `ram` at guest physical address 0 (KVM slot 0). The VM is closed
/// before the RAM can be unmapped: `fd` is dropped first (field order), and every other holder
/// of `ram` (the vCPU loop, a worker thread) is gone before the caller drops the VM.
pub struct Vm {
    pub fd: VmFd,
    pub ram: Arc<GuestRam>,
}

impl Vm {
    /// Creates a VM and registers `ram` as its memory.
    pub fn new(kvm: &Kvm, ram: GuestRam) -> Result<Self, String> {
        let fd = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: ram.len as u64,
            userspace_addr: ram.base as u64,
            flags: 0,
        };
        // SAFETY: the region is `ram`'s mapping, which this value keeps alive until after `fd`
        // is closed (see the type's docs).
        unsafe { fd.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        Ok(Vm {
            fd,
            ram: Arc::new(ram),
        })
    }
}

/// Anonymous, zeroed, read-write memory for a guest, unmapped on drop.
pub struct GuestRam {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; every access goes through `write` (exclusive borrow) or
// `word` (atomics).
unsafe impl Send for GuestRam {}
// SAFETY: as above; shared access is only through atomics.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `len` bytes (a multiple of 4 KiB).
    pub fn new(len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(GuestRam {
            base: base.cast(),
            len,
        })
    }

    /// Copies `bytes` to guest physical address `at`.
    pub fn write(&mut self, at: usize, bytes: &[u8]) {
        assert!(at
            .checked_add(bytes.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range was checked to lie inside the mapping, which `&mut self` holds.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(at), bytes.len()) };
    }

    /// The 4-byte word at guest physical address `at`, shared with the guest.
    pub fn word(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at.checked_add(4).is_some_and(|end| end <= self.len));
        // SAFETY: aligned, inside the mapping, which lives as long as `self`; the guest and
        // the threads here only access it atomically (the guest with aligned 4-byte moves).
        unsafe { &*self.base.add(at).cast::<AtomicU32>() }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this (a VM using it is closed
        // first, see `Vm`).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Keeps the calling thread on `cpu`; false if the kernel refused.
pub fn pin_to(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above) and `set` is a valid set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is initialised and its size is passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}
