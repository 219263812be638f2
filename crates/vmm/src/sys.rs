//! The only `unsafe` in this crate: handing guest RAM mappings to KVM.
#![allow(unsafe_code)]

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Registers every region of `mem` as a KVM memory slot (slot = region index).
///
/// # Safety
///
/// KVM reads and writes the mappings of `mem` for as long as `vm` exists, behind Rust's back.
/// The caller must keep those mappings alive (a clone of `mem` shares them) and not unmap or
/// remap them until `vm`'s file descriptor is closed, and `vm` must have no memory slots yet
/// (slot numbers start at 0).
pub unsafe fn map_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), kvm_ioctls::Error> {
    for (slot, region) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `userspace_addr..+memory_size` is a live anonymous mapping owned by `mem`
        // (vm-memory's MmapRegion, exactly `len()` bytes), the slots do not overlap because
        // GuestMemoryMmap's regions do not and `vm` had no slots before, and this function's
        // caller keeps the mappings alive until the VM fd is closed, so KVM never touches
        // unmapped or reused memory.
        unsafe { vm.set_user_memory_region(region) }?;
    }
    Ok(())
}
