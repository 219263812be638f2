//! The program's only unsafe code: an anonymous guest-memory mapping, its KVM memory slot, and
//! CPU affinity.

use kvm_ioctls::VmFd;
use std::sync::atomic::AtomicU32;

/// Anonymous, zeroed, read-write memory mapped at guest physical address 0 as KVM slot 0,
/// unmapped on drop (after the VM that uses it, which the caller drops first).
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
    /// Maps `len` bytes (a multiple of 4 KiB) and registers them with `vm`.
    pub fn new(vm: &VmFd, len: usize) -> std::io::Result<Self> {
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
        let ram = GuestRam {
            base: base.cast(),
            len,
        };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: len as u64,
            userspace_addr: base as u64,
            flags: 0,
        };
        // SAFETY: the region is this mapping, which outlives the VM (see the type's docs).
        unsafe { vm.set_user_memory_region(region) }.map_err(std::io::Error::from)?;
        Ok(ram)
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
        // SAFETY: the mapping made in `new`, not used after this.
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
