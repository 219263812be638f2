//! Guest CPUID: KVM's supported set, with per-vCPU APIC IDs, the hypervisor bit, and the KVM
//! paravirtual signature leaves (Linux keeps x2APIC without interrupt remapping only when it
//! sees `KVMKVMKVM`; `KVM_FEATURE_MSI_EXT_DEST_ID` lifts the 255-CPU limit).

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;

/// Errors building CPUID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("Cannot read the CPUID leaves KVM supports")]
    Supported(#[source] kvm_ioctls::Error),
    /// The CPUID array is full.
    #[error("Cannot add CPUID leaf {0:#x}: too many leaves")]
    Full(u32),
}

/// `CPUID.0x40000000`: the KVM signature leaf.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// `CPUID.0x40000001`: the KVM paravirtual feature leaf.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// `KVM_FEATURE_MSI_EXT_DEST_ID`: MSI address bits 11:5 carry APIC ID bits 14:8.
pub const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 15;
const HYPERVISOR_BIT: u32 = 31;
const HTT_BIT: u32 = 28;

/// KVM's supported CPUID leaves (the template every vCPU starts from).
pub fn supported(kvm: &Kvm) -> Result<CpuId, Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Supported)
}

fn signature_words() -> [u32; 3] {
    let sig = *b"KVMKVMKVM\0\0\0";
    let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    [word(0), word(4), word(8)]
}

fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// The CPUID for vCPU `cpu` (APIC ID = `cpu`) of `nr_cpus`, built from `template`.
pub fn for_vcpu(template: &CpuId, cpu: u32, nr_cpus: u32) -> Result<CpuId, Error> {
    let mut cpuid = template.clone();
    let [sig_b, sig_c, sig_d] = signature_words();
    let mut have_signature = false;
    let mut have_features = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                // 8-bit initial APIC ID and logical processor count: beyond 255 the x2APIC ID
                // in leaves 0xb/0x1f is the real one.
                e.ebx = (e.ebx & 0x0000_ffff) | ((cpu & 0xff) << 24) | (nr_cpus.min(255) << 16);
                e.ecx |= 1 << HYPERVISOR_BIT;
                if nr_cpus > 1 {
                    e.edx |= 1 << HTT_BIT;
                }
            }
            0xb | 0x1f => {
                // One thread per core, all vCPUs cores of one package.
                let (eax, ebx, level_type) = match e.index {
                    0 => (0, 1, 1),
                    1 => (bits_for(nr_cpus), nr_cpus, 2),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = cpu;
            }
            0x8000_001e => e.eax = cpu,
            KVM_CPUID_SIGNATURE => {
                have_signature = true;
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
                (e.ebx, e.ecx, e.edx) = (sig_b, sig_c, sig_d);
            }
            KVM_CPUID_FEATURES => {
                have_features = true;
                e.eax |= 1 << KVM_FEATURE_MSI_EXT_DEST_ID;
            }
            _ => {}
        }
    }
    if !have_signature {
        let leaf = kvm_cpuid_entry2 {
            function: KVM_CPUID_SIGNATURE,
            eax: KVM_CPUID_FEATURES,
            ebx: sig_b,
            ecx: sig_c,
            edx: sig_d,
            ..Default::default()
        };
        cpuid
            .push(leaf)
            .map_err(|_| Error::Full(KVM_CPUID_SIGNATURE))?;
    }
    if !have_features {
        let leaf = kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            eax: 1 << KVM_FEATURE_MSI_EXT_DEST_ID,
            ..Default::default()
        };
        cpuid
            .push(leaf)
            .map_err(|_| Error::Full(KVM_CPUID_FEATURES))?;
    }
    Ok(cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn template() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0x1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn apic_ids_and_topology() {
        let c = for_vcpu(&template(), 3, 4).unwrap();
        assert_eq!(leaf(&c, 1, 0).ebx >> 24, 3);
        assert_eq!((leaf(&c, 1, 0).ebx >> 16) & 0xff, 4);
        assert_ne!(leaf(&c, 1, 0).ecx & (1 << HYPERVISOR_BIT), 0);
        assert_eq!(leaf(&c, 0xb, 0).edx, 3);
        let core = leaf(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 4, 0x201));
    }

    #[test]
    fn kvm_signature_is_added_with_msi_ext_dest_id() {
        let c = for_vcpu(&template(), 0, 1).unwrap();
        let sig = leaf(&c, KVM_CPUID_SIGNATURE, 0);
        let mut bytes = Vec::new();
        for w in [sig.ebx, sig.ecx, sig.edx] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
        assert!(sig.eax >= KVM_CPUID_FEATURES);
        let features = leaf(&c, KVM_CPUID_FEATURES, 0);
        assert_ne!(features.eax & (1 << KVM_FEATURE_MSI_EXT_DEST_ID), 0);
    }

    #[test]
    fn topology_shift() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(bits_for), [0, 1, 2, 2, 3, 3, 4]);
    }
}
