//! Assembling a VM.
//!
//! [`VmBuilder::new`] opens KVM and creates the VM, its memory, buses and vIOMMU, gathered in a
//! [`DeviceContext`] that device wiring takes. [`VmBuilder::build`] adds the platform devices,
//! PCI bus 0 with its disks and assigned devices, writes ACPI and the boot structures, creates
//! the vCPUs and hands everything to a [`Vm`] (see [`crate::running`]).
//!
//! ```text
//!  VmBuilder::new ─> DeviceContext ─┬─> pci::add_bus, pci::add_disks(&DeviceContext, ...)
//!                                   └─> vfio::add_devices(&DeviceContext, ...)
//!  VmBuilder::build ─> ACPI, boot, vCPUs ─> running::Vm::new(vCPUs, events, DeviceContext)
//! ```

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};

use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, kvm_mp_state};
use kvm_ioctls::Kvm;

use crate::acpi::{self, AcpiConfig, DmarConfig};
use crate::arch::x86_64::layout::{
    ACPI_PM_SIZE, ACPI_PM_START, COM1_IRQ, COM1_START, DRHD_SIZE, DRHD_START, GED_IRQ,
    I8042_COMMAND, IOAPIC_START, PCI_HOTPLUG_START, PIT_GSI, PIT_PORT_B, PIT_START,
};
use crate::arch::x86_64::{boot, cpuid, msr, regs};
use crate::bus::BusDevice;
use crate::config::{IrqchipMode, SerialConfig, VmConfig};
use crate::device_context::DeviceContext;
use crate::error::Error;
use crate::hotplug::{HotplugRegisters, REGISTER_BLOCK_SIZE};
use crate::interrupt::IrqLine;
use crate::ioapic::{IOAPIC_SIZE, Ioapic, KvmIoapicOutput};
use crate::legacy::{I8042, PmDevice, VmEvent, VmEventSender};
use crate::memory;
use crate::pci_hotplug::PciHotplug;
use crate::pit::{MonotonicClock, PIT_PORTS, Pit, PortB};
use crate::running::{ShutdownHook, Vm};
use crate::serial::SerialDevice;
use crate::vcpu::{self, ExitCounters, Vcpu};
use crate::vm::{self, Irqchip};

/// The VM under construction.
pub struct VmBuilder {
    config: VmConfig,
    kvm: Kvm,
    devices: DeviceContext,
    events: VmEventSender,
    receiver: Receiver<VmEvent>,
    iommu_aw_bits: Option<u8>,
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
        let irqchip = match config.irqchip {
            IrqchipMode::Kernel => Irqchip::InKernel,
            IrqchipMode::Split => Irqchip::Split,
        };
        let vm = Arc::new(vm::create_vm(
            &kvm,
            &memory,
            irqchip,
            usize::from(config.cpus),
        )?);
        let (events, receiver) = channel();
        let mut builder = VmBuilder {
            devices: DeviceContext::new(vm, memory),
            config,
            kvm,
            events,
            receiver,
            iommu_aw_bits: None,
            hooks: Vec::new(),
        };
        if let Some(iommu) = &builder.config.iommu {
            let vm = builder.devices.kvm_vm();
            let unit = crate::iommu::create_unit(
                &iommu.options,
                builder.devices.memory(),
                builder.devices.msi_signaller(),
                vm.irqchip() == Irqchip::Split,
                vm.x2apic_api(),
            )?;
            let page = Arc::new(crate::iommu::VtdRegisterPage(unit.clone()));
            builder.set_iommu_device(page, unit.config().aw_bits)?;
            builder.devices.counters().add_component("", unit.clone());
            crate::iommu::remap_interrupts(&unit, builder.devices.gsi_routing())?;
            builder.devices.set_vtd(unit);
        }
        Ok(builder)
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// What device wiring needs of the VM.
    pub fn devices(&self) -> &DeviceContext {
        &self.devices
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
            .devices
            .buses()
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
        Ok(self.devices.buses().mmio.insert(name, base, len, device)?)
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

    /// COM1, the ACPI PM block, the i8042, and with the split irqchip the IOAPIC (returned,
    /// for the vCPUs' EOI exits).
    fn add_platform_devices(&self) -> Result<Option<Arc<Ioapic>>, Error> {
        let ioapic = match self.devices.kvm_vm().irqchip() {
            Irqchip::Split => {
                let output = KvmIoapicOutput::new(
                    self.devices.kvm_vm(),
                    self.devices.gsi_routing().clone(),
                )?;
                let ioapic = Arc::new(Ioapic::new(Box::new(output)));
                self.add_mmio_device("ioapic", IOAPIC_START, IOAPIC_SIZE, ioapic.clone())?;
                Some(ioapic)
            }
            Irqchip::InKernel | Irqchip::None => None,
        };
        // COM1's edge-triggered line: an irqfd on GSI 4, which is IOAPIC pin 4 in KVM's
        // IOAPIC, or the MSI route of the VMM's IOAPIC pin 4 (no exit per interrupt either way).
        let com1_irq = IrqLine::new(self.devices.kvm_vm(), COM1_IRQ)?;
        let serial = Arc::new(SerialDevice::new(
            com1_irq.try_clone_eventfd()?,
            self.serial_output()?,
            self.devices.counters(),
        ));
        if self.config.serial == SerialConfig::Stdio {
            serial.spawn_input(std::io::stdin());
        }
        self.add_pio_device("com1", COM1_START, 8, serial)?;
        let pm = Arc::new(PmDevice::new(self.events.clone()));
        self.add_pio_device("acpi-pm", ACPI_PM_START, ACPI_PM_SIZE, pm)?;
        let i8042 = Arc::new(I8042::new(self.events.clone()));
        self.add_pio_device("i8042", I8042_COMMAND, 1, i8042)?;
        Ok(ioapic)
    }

    /// The split irqchip's PIT (KVM's in-kernel one needs KVM's PIC): ports 0x40-0x43 and
    /// 0x61, and a thread raising IRQ0 on GSI 2, stopped with the VM.
    fn add_pit(&mut self) -> Result<(), Error> {
        let pit = Arc::new(Pit::new(
            Box::<MonotonicClock>::default(),
            self.devices.counters(),
        ));
        self.add_pio_device("pit", PIT_START, PIT_PORTS, pit.clone())?;
        self.add_pio_device("pit-port-b", PIT_PORT_B, 1, Arc::new(PortB(pit.clone())))?;
        let irq0 = IrqLine::new(self.devices.kvm_vm(), PIT_GSI)?;
        let mut thread = pit
            .spawn_irq0(Box::new(irq0))
            .map_err(|source| Error::Thread {
                name: "pit-irq0".into(),
                source,
            })?;
        self.add_shutdown_hook(Box::new(move || thread.stop()));
        Ok(())
    }

    /// Adds the platform devices, writes ACPI tables and boot structures, creates the vCPUs.
    pub fn build(mut self) -> Result<Vm, Error> {
        let ioapic = self.add_platform_devices()?;
        if let Some(ioapic) = &ioapic {
            self.devices.set_ioapic(ioapic.clone());
            self.add_pit()?;
        }
        let ged = IrqLine::new(self.devices.kvm_vm(), GED_IRQ)?;
        let hotplug_registers = Arc::new(HotplugRegisters::new(Box::new(ged)));
        self.add_pio_device(
            "pci-hotplug",
            PCI_HOTPLUG_START,
            REGISTER_BLOCK_SIZE,
            hotplug_registers.clone(),
        )?;
        let pci = crate::pci::add_bus(&self.devices)?;
        crate::pci::add_disks(
            &self.devices,
            &pci,
            &self.config.disks,
            self.config.test_dma_fault,
        )?;
        let first_slot = u8::try_from(self.config.disks.len() + 1).unwrap_or(u8::MAX);
        crate::vfio::add_devices(&self.devices, &self.config.devices, &pci, first_slot)?;
        let interrupt_remapping = self
            .devices
            .vtd()
            .is_some_and(|unit| unit.config().interrupt_remapping());
        let dmar = self.iommu_aw_bits.map(|aw_bits| DmarConfig {
            aw_bits,
            base: DRHD_START,
            interrupt_remapping,
        });
        let acpi = AcpiConfig {
            nr_cpus: self.config.cpus,
            dmar,
        };
        let rsdp = acpi::write_tables(self.devices.memory(), &acpi)?;
        let spec = boot::BootSpec {
            kernel: &self.config.kernel,
            initrd: self.config.initrd.as_deref(),
            cmdline: &self.config.cmdline,
            mem_size: self.config.memory,
            rsdp,
        };
        let entry = boot::load(self.devices.memory(), &spec)?;
        tracing::info!("Kernel entry at {:#x} ({:?})", entry.rip, entry.mode);

        vcpu::install_kick_handler()?;
        let template = cpuid::supported(&self.kvm)?;
        let exits = Arc::new(ExitCounters::new(self.devices.counters()));
        let nr_cpus = u32::from(self.config.cpus);
        let mut vcpus = Vec::new();
        for index in 0..nr_cpus {
            let mut vcpu = Vcpu::new(
                self.devices.kvm_vm(),
                index,
                self.devices.buses().clone(),
                exits.clone(),
            )?;
            if let Some(ioapic) = &ioapic {
                vcpu.set_ioapic(ioapic.clone());
            }
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
            if self.config.cpus > vm::MAX_XAPIC_CPUS {
                msr::enable_x2apic(fd, index)?;
            }
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
        let disks = &self.config.disks;
        let boot_devices = (0..disks.len())
            .map(|i| (format!("disk{i}"), (i + 1) as u8))
            .chain(
                self.config
                    .devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.id.clone(), first_slot.saturating_add(i as u8))),
            );
        let devices = Arc::new(self.devices);
        let hotplug = Arc::new(PciHotplug::new(
            devices.clone(),
            pci,
            hotplug_registers,
            boot_devices,
            disks.len(),
        ));
        Ok(Vm::new(
            vcpus,
            self.receiver,
            self.events,
            self.hooks,
            devices,
            hotplug,
        ))
    }
}
