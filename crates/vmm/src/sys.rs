//! The only `unsafe` in this crate: handing guest RAM mappings to KVM.
#![allow(unsafe_code)]

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Registers every region of `mem` as a KVM memory slot (slot = region index).
///
/// The caller must keep `mem` mapped for as long as `vm` exists: [`crate::vm::create_vm`] stores
/// both in a [`crate::vm::KvmVm`], whose memory field is dropped after its file descriptor.
pub fn map_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), kvm_ioctls::Error> {
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
        // GuestMemoryMmap's regions do not, and KvmVm keeps a clone of `mem` (sharing the same
        // mappings) until after the VM fd is closed, so KVM never touches unmapped or reused
        // memory.
        unsafe { vm.set_user_memory_region(region) }?;
    }
    Ok(())
}
