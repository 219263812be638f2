//! Boot-time model-specific registers.

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

/// Errors setting MSRs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The MSR array could not be built.
    #[error("Cannot build the MSR list")]
    Build,
    /// KVM_SET_MSRS failed.
    #[error("Cannot set the boot MSRs of vCPU {cpu}")]
    Set {
        /// vCPU index.
        cpu: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of them.
    #[error("KVM accepted only {set} of {wanted} boot MSRs on vCPU {cpu}")]
    Partial {
        /// vCPU index.
        cpu: u32,
        /// How many KVM set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
    },
}

/// `IA32_MISC_ENABLE.FAST_STRING`.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled, default type write-back.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with: SYSCALL/SYSENTER state cleared, fast strings, and
/// MTRRs enabled with write-back as the default type (Linux maps RAM uncached otherwise).
/// The TSC is left to KVM, which synchronises it across vCPUs created together.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),       // IA32_SYSENTER_CS
        (0x175, 0),       // IA32_SYSENTER_ESP
        (0x176, 0),       // IA32_SYSENTER_EIP
        (0xc000_0081, 0), // STAR
        (0xc000_0082, 0), // LSTAR
        (0xc000_0083, 0), // CSTAR
        (0xc000_0084, 0), // SYSCALL_MASK
        (0xc000_0102, 0), // KERNEL_GS_BASE
        (0x10, 0),        // IA32_TSC
        (0x1a0, MISC_ENABLE_FAST_STRING),
        (0x2ff, MTRR_DEF_TYPE_WB_ENABLED),
    ]
}

/// `IA32_APIC_BASE`.
pub const MSR_IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;

/// `IA32_APIC_BASE` of vCPU `cpu` in x2APIC mode: the default base, enabled, EXTD, BSP on
/// vCPU 0.
pub fn x2apic_base(cpu: u32) -> u64 {
    let bsp = if cpu == 0 { APIC_BASE_BSP } else { 0 };
    crate::arch::x86_64::layout::LAPIC_START | APIC_BASE_ENABLE | APIC_BASE_EXTD | bsp
}

/// Starts vCPU `cpu` with its local APIC in x2APIC mode, as firmware does on machines with APIC
/// IDs above 254: Linux accepts the MADT's x2APIC structures only when it finds the boot CPU
/// already in x2APIC mode (the xAPIC driver it starts with cannot address those IDs). Needs
/// the x2APIC CPUID bit set first.
pub fn enable_x2apic(vcpu: &VcpuFd, cpu: u32) -> Result<(), Error> {
    set_all(vcpu, cpu, &[(MSR_IA32_APIC_BASE, x2apic_base(cpu))])
}

/// Sets [`boot_msrs`] on a vCPU.
pub fn setup_msrs(vcpu: &VcpuFd, cpu: u32) -> Result<(), Error> {
    set_all(vcpu, cpu, &boot_msrs())
}

/// Sets every `(index, value)` on vCPU `cpu`; KVM must accept all of them.
fn set_all(vcpu: &VcpuFd, cpu: u32, values: &[(u32, u64)]) -> Result<(), Error> {
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Build)?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|source| Error::Set { cpu, source })?;
    if set != entries.len() {
        return Err(Error::Partial {
            cpu,
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x2apic_mode_apic_base() {
        assert_eq!(x2apic_base(0), 0xfee0_0d00, "enabled, EXTD, BSP");
        assert_eq!(x2apic_base(300), 0xfee0_0c00, "enabled, EXTD");
    }
}
