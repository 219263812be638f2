//! Opening /dev/kvm and creating the VM: capability checks, the TSS and identity-map pages,
//! the irqchip, the x2APIC API and the guest memory slots.
//!
//! ```text
//! Irqchip::InKernel  KVM_CREATE_IRQCHIP (PIC + IOAPIC + LAPICs) + KVM_CREATE_PIT2
//! Irqchip::Split     KVM_ENABLE_CAP(SPLIT_IRQCHIP, 24 IOAPIC routes): LAPICs in KVM, the IOAPIC
//!                    and the PIT in the VMM (crate::ioapic, crate::pit: KVM refuses its PIT
//!                    without its PIC with ENOENT since Linux 6.9), no PIC (the FADT is
//!                    hardware-reduced)
//! Irqchip::None      nothing: HLT and all I/O exit to the VMM (tiny test guests)
//! either irqchip     KVM_ENABLE_CAP(X2APIC_API, 32-bit IDs | no broadcast quirk) when KVM has
//!                    it: MSI routes carry destination bits 31:8 in address_hi
//! ```

use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_PIT_SPEAKER_DUMMY,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS, kvm_enable_cap,
    kvm_pit_config,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::layout::IOAPIC_PINS;
use crate::sys;

/// Where KVM puts the three-page real-mode TSS (top of the 32-bit hole, unused by devices).
pub const TSS_ADDRESS: usize = 0xfffb_d000;
/// Where KVM puts the one-page EPT identity map, just below the TSS.
pub const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Errors opening KVM and creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is absent.
    #[error("/dev/kvm does not exist: load the kvm module or run on a host with virtualization")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// /dev/kvm is not accessible.
    #[error("Cannot open /dev/kvm: permission denied (add the user to the kvm group)")]
    KvmAccess(#[source] kvm_ioctls::Error),
    /// Any other open failure.
    #[error("Cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// The device does not answer KVM ioctls.
    #[error("/dev/kvm is not a KVM device")]
    NotKvm,
    /// Wrong API version.
    #[error("/dev/kvm speaks API version {0}, but version 12 is required")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("/dev/kvm lacks the {0} capability this VMM needs")]
    MissingCap(&'static str),
    /// A VM-level ioctl failed.
    #[error("Cannot {what}")]
    Vm {
        /// What was attempted.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM supports fewer vCPUs than asked for.
    #[error("/dev/kvm supports at most {max} vCPUs, {wanted} were asked for")]
    TooManyCpus {
        /// KVM's limit.
        max: usize,
        /// Requested.
        wanted: usize,
    },
}

/// Opens /dev/kvm and checks it can run this VMM's guests.
pub fn open_kvm() -> Result<Kvm, Error> {
    open_kvm_at(c"/dev/kvm")
}

/// Opens the KVM device at `path` and checks it can run this VMM's guests.
pub fn open_kvm_at(path: &std::ffi::CStr) -> Result<Kvm, Error> {
    let kvm = Kvm::new_with_path(path).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => Error::NoKvm(e),
        libc::EACCES | libc::EPERM => Error::KvmAccess(e),
        _ => Error::KvmOpen(e),
    })?;
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(Error::NotKvm);
    }
    if version != 12 {
        return Err(Error::ApiVersion(version));
    }
    let required = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ];
    for (cap, name) in required {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// How much of the platform KVM emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irqchip {
    /// In-kernel PIC, IOAPIC, LAPICs and PIT.
    InKernel,
    /// LAPICs in KVM, the IOAPIC and the PIT in the VMM ([`crate::ioapic`], [`crate::pit`]);
    /// no PIC. What interrupt remapping needs: the IOAPIC's messages pass through the vIOMMU.
    Split,
    /// None: HLT and all I/O exit to the VMM (tiny test guests).
    None,
}

/// A KVM VM together with the guest memory its slots point at. The memory is declared after
/// the file descriptor, so it is unmapped only after the VM is gone; share the VM as
/// `Arc<KvmVm>` and it dereferences to [`VmFd`].
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
    memory: GuestMemoryMmap,
    next_slot: std::sync::atomic::AtomicU32,
    irqchip: Irqchip,
    x2apic_api: bool,
}

impl std::ops::Deref for KvmVm {
    type Target = VmFd;

    fn deref(&self) -> &VmFd {
        &self.fd
    }
}

impl KvmVm {
    /// The guest memory registered with this VM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The irqchip the VM was created with.
    pub fn irqchip(&self) -> Irqchip {
        self.irqchip
    }

    /// Whether KVM_CAP_X2APIC_API is on: MSI routes and KVM_SIGNAL_MSI take destination ID
    /// bits 31:8 from address bits 63:40.
    pub fn x2apic_api(&self) -> bool {
        self.x2apic_api
    }

    /// A memory slot number no other user of this VM has (guest RAM has the first ones).
    pub fn allocate_slot(&self) -> u32 {
        self.next_slot
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Creates the VM: TSS and identity-map pages, irqchip and PIT, and memory slots.
pub fn create_vm(
    kvm: &Kvm,
    mem: &GuestMemoryMmap,
    irqchip: Irqchip,
    nr_cpus: usize,
) -> Result<KvmVm, Error> {
    let max = kvm.get_max_vcpus();
    if nr_cpus > max {
        return Err(Error::TooManyCpus {
            max,
            wanted: nr_cpus,
        });
    }
    let vm_err = |what| move |source| Error::Vm { what, source };
    let vm = kvm.create_vm().map_err(vm_err("create a KVM VM"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(vm_err("set the TSS address"))?;
    vm.set_identity_map_address(IDENTITY_MAP_ADDRESS)
        .map_err(vm_err("set the identity map address"))?;
    match irqchip {
        Irqchip::InKernel => {
            vm.create_irq_chip()
                .map_err(vm_err("create the in-kernel irqchip"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit)
                .map_err(vm_err("create the in-kernel PIT"))?;
        }
        Irqchip::Split => {
            if !vm.check_extension(Cap::SplitIrqchip) {
                return Err(Error::MissingCap("KVM_CAP_SPLIT_IRQCHIP"));
            }
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = u64::from(IOAPIC_PINS);
            vm.enable_cap(&cap)
                .map_err(vm_err("enable the split irqchip"))?;
        }
        Irqchip::None => {}
    }
    let x2apic_api = irqchip != Irqchip::None && enable_x2apic_api(&vm)?;
    if nr_cpus > usize::from(MAX_XAPIC_CPUS) && !x2apic_api {
        return Err(Error::MissingCap("KVM_CAP_X2APIC_API"));
    }
    let vm = KvmVm {
        fd: vm,
        memory: mem.clone(),
        next_slot: std::sync::atomic::AtomicU32::new(
            u32::try_from(mem.num_regions()).unwrap_or(u32::MAX),
        ),
        irqchip,
        x2apic_api,
    };
    #[allow(unsafe_code)]
    // SAFETY: `vm.fd` was just created and has no memory slots, and `vm.memory` is a clone of
    // `mem` sharing its mappings, owned by the returned KvmVm whose `memory` field is declared
    // after `fd` and so dropped (unmapped) only after the VM fd is closed; nothing remaps it.
    let mapped = unsafe { sys::map_guest_memory(&vm.fd, &vm.memory) };
    mapped.map_err(vm_err("register guest memory with KVM"))?;
    Ok(vm)
}

/// Most vCPUs with 8-bit APIC IDs (255 is the xAPIC broadcast ID).
pub const MAX_XAPIC_CPUS: u16 = 254;

/// The x2APIC API flags this VMM asks for.
const X2APIC_API_FLAGS: u32 = KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK;

/// Turns on KVM_CAP_X2APIC_API (32-bit APIC IDs in MSI routes, no 0xff broadcast quirk in
/// x2APIC mode) when KVM offers both flags; returns whether it is on.
fn enable_x2apic_api(vm: &VmFd) -> Result<bool, Error> {
    let offered = u32::try_from(vm.check_extension_int(Cap::X2ApicApi)).unwrap_or(0);
    if offered & X2APIC_API_FLAGS != X2APIC_API_FLAGS {
        return Ok(false);
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        ..Default::default()
    };
    cap.args[0] = u64::from(X2APIC_API_FLAGS);
    vm.enable_cap(&cap).map_err(|source| Error::Vm {
        what: "enable the x2APIC API",
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_is_one_clear_sentence() {
        let err = open_kvm_at(c"/nonexistent/kvm").unwrap_err();
        assert!(matches!(err, Error::NoKvm(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "/dev/kvm does not exist: load the kvm module or run on a host with virtualization"
        );
    }

    #[test]
    fn unusable_kvm_is_reported() {
        // A character device that is not KVM: the API-version ioctl fails.
        match open_kvm_at(c"/dev/null") {
            Err(Error::NotKvm) => {}
            other => panic!("{other:?}"),
        }
    }
}
