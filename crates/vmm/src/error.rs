//! Errors building or running a VM, and the exit status each one means.

use crate::arch::x86_64::{boot, cpuid, msr, regs};
use crate::{acpi, bus, interrupt, memory, vcpu, vm};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named on the command line.
    #[error(transparent)]
    File(#[from] crate::config::FileError),
    /// The vIOMMU configuration.
    #[error(transparent)]
    Iommu(#[from] crate::iommu::Error),
    /// PCI devices.
    #[error(transparent)]
    Pci(#[from] crate::pci::Error),
    /// Assigned host devices.
    #[error(transparent)]
    Vfio(#[from] crate::vfio::Error),
    /// Opening KVM or creating the VM.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// A device range clash.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// Interrupt wiring.
    #[error(transparent)]
    Interrupt(#[from] interrupt::Error),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// CPUID.
    #[error(transparent)]
    Cpuid(#[from] cpuid::Error),
    /// MSRs.
    #[error(transparent)]
    Msr(#[from] msr::Error),
    /// Registers.
    #[error(transparent)]
    Regs(#[from] regs::Error),
    /// vCPU creation.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// A vCPU ioctl during setup.
    #[error("Cannot set the {what} of vCPU {cpu}")]
    VcpuSetup {
        /// What.
        what: &'static str,
        /// vCPU index.
        cpu: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The serial output file.
    #[error("Cannot create the serial output file {}", .path.display())]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("Cannot start thread {name}")]
    Thread {
        /// Thread name.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The guest or KVM failed while running.
    #[error("{0}")]
    Guest(String),
}

impl Error {
    /// The exit status for this error: 2 when the host or the configuration refuses what was
    /// asked (as for bad options), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::Vfio(e) if e.is_refusal() => 2,
            _ => 1,
        }
    }
}
