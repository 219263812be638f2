//! What wiring a device needs of the VM, and nothing more: the KVM VM (irqfds, ioeventfds,
//! MSI injection), the GSI routing table, guest RAM, the PIO and MMIO buses, the exit
//! summary's counters and the vIOMMU the devices may sit behind.
//!
//! ```text
//!  VmBuilder::new ── creates ──> DeviceContext ──> pci::add_bus / pci::add_disks
//!                                     │            (iommu, passthrough, vfio wiring)
//!  VmBuilder::build ── moves it into ─┴──> running::Vm (keeps the devices' VM state alive)
//! ```

use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::GuestMemoryMmap;
use vtd_spec::SourceId;

use crate::counters::Counters;
use crate::interrupt::{GsiRouting, KvmIoEvents, KvmMsiController, MsiSignaller};
use crate::ioapic::Ioapic;
use crate::iommu_state::HostBindings;
use crate::passthrough::{self, Passthrough};
use crate::vcpu::IoBuses;
use crate::vm::KvmVm;
use devices::io_gate::IoGate;

/// The VM as device wiring sees it.
pub struct DeviceContext {
    vm: Arc<KvmVm>,
    routing: Arc<GsiRouting>,
    memory: GuestMemoryMmap,
    buses: Arc<IoBuses>,
    counters: Arc<Counters>,
    vtd: Option<Arc<vtd::Vtd>>,
    ioapic: Option<Arc<Ioapic>>,
    host_bindings: Mutex<Vec<HostBindings>>,
    passthrough: OnceLock<Arc<Passthrough>>,
    vfio_hosts: crate::vfio::VfioHosts,
    io_gate: Arc<IoGate>,
}

impl std::fmt::Debug for DeviceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceContext")
            .field("vtd", &self.vtd.is_some())
            .finish_non_exhaustive()
    }
}

impl DeviceContext {
    /// The context of the VM `vm` with guest RAM `memory`: empty buses and counters, a fresh
    /// GSI routing table, no vIOMMU yet.
    pub fn new(vm: Arc<KvmVm>, memory: GuestMemoryMmap) -> Self {
        DeviceContext {
            routing: Arc::new(GsiRouting::new(vm.clone())),
            vm,
            memory,
            buses: Arc::new(IoBuses::default()),
            counters: Arc::new(Counters::new()),
            vtd: None,
            ioapic: None,
            host_bindings: Mutex::new(Vec::new()),
            passthrough: OnceLock::new(),
            vfio_hosts: crate::vfio::VfioHosts::default(),
            io_gate: Arc::new(IoGate::new()),
        }
    }

    /// The gate every emulated device's I/O thread passes; a pause closes it once the vCPUs
    /// are parked.
    pub fn io_gate(&self) -> &Arc<IoGate> {
        &self.io_gate
    }

    /// Records where passthrough devices' host state lives, for the vIOMMU state report.
    pub fn add_host_bindings(&self, bindings: HostBindings) {
        self.host_bindings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bindings);
    }

    /// The software host IOMMU of `assigned=sim` devices, created (and its accel bindings
    /// recorded for the state report) on first use.
    pub fn passthrough(&self) -> Result<&Arc<Passthrough>, passthrough::Error> {
        if let Some(p) = self.passthrough.get() {
            return Ok(p);
        }
        let unit = self.vtd().ok_or(passthrough::Error::NoIommu)?;
        let mut created = false;
        let p = self.passthrough.get_or_init(|| {
            created = true;
            Arc::new(Passthrough::new(&self.memory, unit, &self.counters))
        });
        if created {
            self.add_host_bindings(HostBindings::Nested(p.accel().clone()));
        }
        Ok(p)
    }

    /// The software host IOMMU, if an `assigned=sim` device made one.
    pub fn existing_passthrough(&self) -> Option<&Arc<Passthrough>> {
        self.passthrough.get()
    }

    /// The VM's VFIO state, shared by the assigned host functions (at start and hot-added).
    pub fn vfio_hosts(&self) -> &crate::vfio::VfioHosts {
        &self.vfio_hosts
    }

    /// The passthrough registries recorded so far.
    pub fn host_bindings(&self) -> Vec<HostBindings> {
        self.host_bindings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts the devices that ask for it behind the virtual VT-d unit `unit`.
    pub fn set_vtd(&mut self, unit: Arc<vtd::Vtd>) {
        self.vtd = Some(unit);
    }

    /// Records the VMM's IOAPIC (split irqchip), for devices with level-triggered lines.
    pub fn set_ioapic(&mut self, ioapic: Arc<Ioapic>) {
        self.ioapic = Some(ioapic);
    }

    /// The VMM's IOAPIC, with the split irqchip.
    pub fn ioapic(&self) -> Option<&Arc<Ioapic>> {
        self.ioapic.as_ref()
    }

    /// The virtual VT-d unit, when `--iommu intel` was given.
    pub fn vtd(&self) -> Option<&Arc<vtd::Vtd>> {
        self.vtd.as_ref()
    }

    /// Guest RAM (clone it for device models; clones share the mappings).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM (for irqfds, ioeventfds and MSI injection).
    pub fn kvm_vm(&self) -> &Arc<KvmVm> {
        &self.vm
    }

    /// The GSI routing table, for MSI-X vectors ([`crate::interrupt::MsiVector`]).
    pub fn gsi_routing(&self) -> &Arc<GsiRouting> {
        &self.routing
    }

    /// A fresh MSI-X controller for the device with requester ID `sid` (vectors get GSIs and
    /// irqfds on first use; their messages are remapped as coming from `sid`).
    pub fn msi_controller(&self, sid: SourceId) -> KvmMsiController {
        KvmMsiController::new(self.vm.clone(), self.routing.clone(), sid)
    }

    /// The ioeventfd registrar for MMIO doorbells.
    pub fn io_events(&self) -> KvmIoEvents {
        KvmIoEvents::new(self.vm.clone())
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
}
