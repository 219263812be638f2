//! Assembling and running a VM.
//!
//! [`VmBuilder::new`] opens KVM and creates the VM, its memory and buses. Callers may then add
//! devices (the vIOMMU's register page, PCI) using the builder's accessors, and
//! [`VmBuilder::build`] adds the platform devices, writes ACPI and the boot structures and
//! creates the vCPUs. [`Vm::run`] runs until the guest powers off or resets.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, kvm_mp_state};
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use crate::acpi::{self, AcpiConfig, DmarConfig};
use crate::arch::x86_64::layout::{
    ACPI_PM_SIZE, ACPI_PM_START, COM1_IRQ, COM1_START, DRHD_SIZE, DRHD_START, I8042_START,
};
use crate::arch::x86_64::{boot, cpuid, msr, regs};
use crate::bus::{self, BusDevice};
use crate::config::{SerialConfig, VmConfig};
use crate::counters::Counters;
use crate::interrupt::{self, GsiRouting, IrqLine, MsiSignaller};
use crate::legacy::{I8042, PmDevice, VmEvent, VmEventSender};
use crate::memory;
use crate::serial::SerialDevice;
use crate::vcpu::{self, ExitCounters, IoBuses, Vcpu};
use crate::vm::{self, Irqchip, KvmVm};

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

/// How a VM run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine (this VMM exits instead of rebooting).
    Reboot(&'static str),
    /// A vCPU executed HLT without an in-kernel irqchip (test guests).
    Halted(u32),
    /// The VMM received a stop signal (see [`crate::stop_signals`]).
    Signal(i32),
}

/// What stopped the VM: the first event from the vCPUs or devices, or a stop signal that
/// `signal` reports (polled every [`crate::stop_signals::POLL`]).
#[derive(Debug)]
pub enum Stop {
    /// A vCPU or device event.
    Event(VmEvent),
    /// A stop signal.
    Signal(i32),
}

/// Waits for the first of: an event on `receiver`, a signal `signal` reports.
pub fn wait_for_stop(receiver: &Receiver<VmEvent>, signal: impl Fn() -> Option<i32>) -> Stop {
    loop {
        if let Some(number) = signal() {
            return Stop::Signal(number);
        }
        match receiver.recv_timeout(crate::stop_signals::POLL) {
            Ok(event) => return Stop::Event(event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Stop::Event(VmEvent::Error(
                    "Every vCPU thread ended without a reason".to_owned(),
                ));
            }
        }
    }
}

/// Something to stop when the VM stops (device I/O threads).
pub type ShutdownHook = Box<dyn FnOnce() + Send>;

/// The VM under construction.
pub struct VmBuilder {
    config: VmConfig,
    kvm: Kvm,
    vm: Arc<KvmVm>,
    memory: GuestMemoryMmap,
    buses: Arc<IoBuses>,
    counters: Arc<Counters>,
    routing: Arc<GsiRouting>,
    events: VmEventSender,
    receiver: Receiver<VmEvent>,
    iommu_aw_bits: Option<u8>,
    vtd: Option<Arc<vtd::Vtd>>,
    hooks: Vec<ShutdownHook>,
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VmBuilder {
    /// Opens /dev/kvm and creates the VM with its memory, irqchip and empty buses.
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        config.check_files()?;
        let kvm = vm::open_kvm()?;
        let memory = memory::create_guest_memory(config.memory)?;
        let vm = Arc::new(vm::create_vm(
            &kvm,
            &memory,
            Irqchip::InKernel,
            usize::from(config.cpus),
        )?);
        let (events, receiver) = channel();
        let mut builder = VmBuilder {
            routing: Arc::new(GsiRouting::new(vm.clone())),
            config,
            kvm,
            vm,
            memory,
            buses: Arc::new(IoBuses::default()),
            counters: Arc::new(Counters::new()),
            events,
            receiver,
            iommu_aw_bits: None,
            vtd: None,
            hooks: Vec::new(),
        };
        if let Some(iommu) = &builder.config.iommu {
            let unit = crate::iommu::create_unit(
                &iommu.options,
                &builder.memory,
                builder.msi_signaller(),
            )?;
            let page = Arc::new(crate::iommu::VtdRegisterPage(unit.clone()));
            builder.set_iommu_device(page, unit.config().aw_bits)?;
            builder.counters.add_component("", unit.clone());
            builder.vtd = Some(unit);
        }
        Ok(builder)
    }

    /// The virtual VT-d unit, when `--iommu intel` was given.
    pub fn vtd(&self) -> Option<&Arc<vtd::Vtd>> {
        self.vtd.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest RAM (clone it for device models; clones share the mappings).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM (for irqfds, ioeventfds and MSI injection).
    pub fn kvm_vm(&self) -> &Arc<KvmVm> {
        &self.vm
    }

    /// The GSI routing table, for MSI-X vectors ([`interrupt::MsiVector`]).
    pub fn gsi_routing(&self) -> &Arc<GsiRouting> {
        &self.routing
    }

    /// A fresh per-device MSI-X controller (vectors get GSIs and irqfds on first use).
    pub fn msi_controller(&self) -> interrupt::KvmMsiController {
        interrupt::KvmMsiController::new(self.vm.clone(), self.routing.clone())
    }

    /// The ioeventfd registrar for MMIO doorbells.
    pub fn io_events(&self) -> interrupt::KvmIoEvents {
        interrupt::KvmIoEvents::new(self.vm.clone())
    }

    /// An MSI injector (the vIOMMU's fault event).
    pub fn msi_signaller(&self) -> MsiSignaller {
        MsiSignaller::new(self.vm.clone())
    }

    /// The PIO and MMIO buses.
    pub fn buses(&self) -> &Arc<IoBuses> {
        &self.buses
    }

    /// The counters printed at exit.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Where devices report power-off and reset.
    pub fn event_sender(&self) -> VmEventSender {
        self.events.clone()
    }

    /// Registers a port-I/O device.
    pub fn add_pio_device(
        &self,
        name: &str,
        base: u16,
        len: u16,
        device: Arc<dyn BusDevice>,
    ) -> Result<(), Error> {
        Ok(self
            .buses
            .pio
            .insert(name, u64::from(base), u64::from(len), device)?)
    }

    /// Registers an MMIO device.
    pub fn add_mmio_device(
        &self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<(), Error> {
        Ok(self.buses.mmio.insert(name, base, len, device)?)
    }

    /// Registers a vIOMMU's 4 KiB register page at 0xfed90000 and announces it in a DMAR table
    /// with host address width `aw_bits` (one DRHD, INCLUDE_PCI_ALL).
    pub fn set_iommu_device(
        &mut self,
        device: Arc<dyn BusDevice>,
        aw_bits: u8,
    ) -> Result<(), Error> {
        self.add_mmio_device("dmar0", DRHD_START, DRHD_SIZE, device)?;
        self.iommu_aw_bits = Some(aw_bits);
        Ok(())
    }

    /// Adds something to stop (and join) when the VM stops.
    pub fn add_shutdown_hook(&mut self, hook: ShutdownHook) {
        self.hooks.push(hook);
    }

    fn serial_output(&self) -> Result<Box<dyn Write + Send>, Error> {
        Ok(match &self.config.serial {
            SerialConfig::Stdio => Box::new(std::io::stdout()),
            SerialConfig::File(path) => {
                Box::new(File::create(path).map_err(|source| Error::SerialFile {
                    path: path.clone(),
                    source,
                })?)
            }
        })
    }

    fn add_platform_devices(&self) -> Result<(), Error> {
        let com1_irq = IrqLine::new(&self.vm, COM1_IRQ)?;
        let serial = Arc::new(SerialDevice::new(
            com1_irq.try_clone_eventfd()?,
            self.serial_output()?,
            &self.counters,
        ));
        if self.config.serial == SerialConfig::Stdio {
            serial.spawn_input(std::io::stdin());
        }
        self.add_pio_device("com1", COM1_START, 8, serial)?;
        let pm = Arc::new(PmDevice::new(self.events.clone()));
        self.add_pio_device("acpi-pm", ACPI_PM_START, ACPI_PM_SIZE, pm)?;
        let i8042 = Arc::new(I8042::new(self.events.clone()));
        self.add_pio_device("i8042", I8042_START, 5, i8042)?;
        Ok(())
    }

    /// Adds the platform devices, writes ACPI tables and boot structures, creates the vCPUs.
    pub fn build(self) -> Result<Vm, Error> {
        self.add_platform_devices()?;
        let pci = crate::pci::add_bus(&self)?;
        crate::pci::add_disks(&self, &pci)?;
        let first_slot = u8::try_from(self.config.disks.len() + 1).unwrap_or(u8::MAX);
        crate::vfio::add_devices(&self, &pci, first_slot)?;
        let dmar = self.iommu_aw_bits.map(|aw_bits| DmarConfig {
            aw_bits,
            base: DRHD_START,
        });
        let acpi = AcpiConfig {
            nr_cpus: self.config.cpus,
            dmar,
        };
        let rsdp = acpi::write_tables(&self.memory, &acpi)?;
        let spec = boot::BootSpec {
            kernel: &self.config.kernel,
            initrd: self.config.initrd.as_deref(),
            cmdline: &self.config.cmdline,
            mem_size: self.config.memory,
            rsdp,
        };
        let entry = boot::load(&self.memory, &spec)?;
        tracing::info!("Kernel entry at {:#x} ({:?})", entry.rip, entry.mode);

        vcpu::install_kick_handler()?;
        let template = cpuid::supported(&self.kvm)?;
        let exits = Arc::new(ExitCounters::new(&self.counters));
        let nr_cpus = u32::from(self.config.cpus);
        let mut vcpus = Vec::new();
        for index in 0..nr_cpus {
            let vcpu = Vcpu::new(&self.vm, index, self.buses.clone(), exits.clone())?;
            let fd = vcpu.fd();
            let setup = |what| {
                move |source| Error::VcpuSetup {
                    what,
                    cpu: index,
                    source,
                }
            };
            fd.set_cpuid2(&cpuid::for_vcpu(&template, index, nr_cpus)?)
                .map_err(setup("CPUID"))?;
            msr::setup_msrs(fd, index)?;
            regs::setup_fpu(fd, index)?;
            regs::setup_lints(fd, index)?;
            let mp_state = if index == 0 {
                regs::setup_boot_cpu(fd, index, entry.rip, entry.mode)?;
                KVM_MP_STATE_RUNNABLE
            } else {
                // APs wait for INIT/SIPI from the BSP, handled by the in-kernel LAPIC.
                KVM_MP_STATE_UNINITIALIZED
            };
            fd.set_mp_state(kvm_mp_state { mp_state })
                .map_err(setup("MP state"))?;
            vcpus.push(vcpu);
        }
        Ok(Vm {
            vcpus,
            receiver: self.receiver,
            events: self.events,
            counters: self.counters,
            hooks: Mutex::new(self.hooks),
            _buses: self.buses,
            _routing: self.routing,
            _vm: self.vm,
        })
    }
}

/// A VM ready to run.
pub struct Vm {
    vcpus: Vec<Vcpu>,
    receiver: Receiver<VmEvent>,
    events: VmEventSender,
    counters: Arc<Counters>,
    hooks: Mutex<Vec<ShutdownHook>>,
    _buses: Arc<IoBuses>,
    _routing: Arc<GsiRouting>,
    _vm: Arc<KvmVm>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// The counters printed at exit.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Runs every vCPU on its own thread until the guest powers off or resets (or a vCPU
    /// fails), then stops all vCPU and device threads.
    pub fn run(mut self) -> Result<VmExit, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut spawn_error = None;
        for vcpu in self.vcpus.drain(..) {
            let name = format!("vcpu{}", vcpu.index());
            let (stop, events) = (stop.clone(), self.events.clone());
            match std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || vcpu.run(&stop, &events))
            {
                Ok(t) => threads.push(t),
                Err(source) => {
                    spawn_error = Some(Error::Thread { name, source });
                    break;
                }
            }
        }
        let event = match spawn_error {
            Some(e) => Err(e),
            None => Ok(wait_for_stop(&self.receiver, crate::stop_signals::take)),
        };
        tracing::info!("Stopping the VM: {event:?}");
        stop.store(true, Ordering::Release);
        for t in &threads {
            while !t.is_finished() {
                // A signal interrupts KVM_RUN with EINTR; repeat in case it raced with entry.
                let _ = t.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("A vCPU thread panicked");
            }
        }
        for hook in self
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            hook();
        }
        let _ = std::io::stdout().flush();
        match event? {
            Stop::Signal(number) => Ok(VmExit::Signal(number)),
            Stop::Event(VmEvent::PowerOff) => Ok(VmExit::PowerOff),
            Stop::Event(VmEvent::Reboot { how }) => Ok(VmExit::Reboot(how)),
            Stop::Event(VmEvent::Halted { cpu }) => Ok(VmExit::Halted(cpu)),
            Stop::Event(VmEvent::Error(message)) => Err(Error::Guest(message)),
        }
    }
}
