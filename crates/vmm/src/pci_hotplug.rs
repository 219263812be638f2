//! Adding and removing bus-0 devices of a running VM (the API's `vm.add-disk` and
//! `vm.remove-device`), over the register handshake of [`crate::hotplug`].
//!
//! ```text
//!  add_vfio(DeviceConfig) ─ lowest free slot ─ vfio::add_device_at (the VM's VfioHosts)
//!  add_disk(DiskConfig) ─ lowest free slot ─ DMA memory (RAM | TranslatedMemory |
//!        AssignedMemory: Passthrough::assign, accel binding on the software host IOMMU)
//!        ─ pci::add_disk (BARs, MSI-X, ioeventfds, counters "diskN_") ─ announce_add(slot)
//!  remove(id) ─ request_eject(slot) ─ wait_eject(timeout) ──timeout──> Err(NotReleased):
//!        │                                                            the device stays
//!        └─ ejected: PciBus::remove_device (BARs un-decoded: ioeventfds go) ─ drop the device
//!           (I/O thread joined, MSI-X vectors: irqfds and GSI routes go)
//!           ─ Passthrough::unassign (accel binding, nested HWPT, last nest parent, host device)
//!           ─ Vtd::forget_source
//!           ─ counters forget "diskN_" ─ the id is free
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use devices::pci::PciBus;

use crate::config::{DeviceConfig, DiskConfig};
use crate::device_context::DeviceContext;
use crate::hotplug::{HOTPLUG_SLOTS, HotplugRegisters};
use crate::iommu::{bus0_sid, translated_memory};

/// How long the guest has to release a device it was asked to eject.
pub const EJECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an add or remove did not happen; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Every slot 1..31 is taken.
    #[error("PCI bus 0 has no free slot")]
    NoFreeSlot,
    /// No device by that id.
    #[error("This VM has no device '{0}'")]
    UnknownId(String),
    /// The guest did not eject in time (or refused).
    #[error("The guest did not release device {id} within {secs} s; it stays attached")]
    NotReleased {
        /// The device.
        id: String,
        /// The timeout.
        secs: u64,
    },
    /// The device could not be created or placed.
    #[error("Cannot add the disk: {0}")]
    Add(String),
}

/// What the bus holds, by device id.
#[derive(Debug)]
struct Attached {
    slots: BTreeMap<String, u8>,
    next_disk: usize,
}

/// Hot-plug of bus-0 devices for one running VM.
pub struct PciHotplug {
    devices: Arc<DeviceContext>,
    bus: Arc<PciBus>,
    registers: Arc<HotplugRegisters>,
    attached: Mutex<Attached>,
    /// One add or remove at a time (a remove holds it while the guest ejects), so two removes
    /// of one id, or a remove and an add that reuses its slot, never interleave.
    operation: Mutex<()>,
}

impl std::fmt::Debug for PciHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHotplug")
            .field("attached", &*self.lock())
            .finish_non_exhaustive()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl PciHotplug {
    /// Hot-plug on `bus` of the VM `devices`, signalling through `registers`; `boot` lists the
    /// devices placed at start (id, slot) and `boot_disks` how many are disks.
    pub fn new(
        devices: Arc<DeviceContext>,
        bus: Arc<PciBus>,
        registers: Arc<HotplugRegisters>,
        boot: impl IntoIterator<Item = (String, u8)>,
        boot_disks: usize,
    ) -> Self {
        PciHotplug {
            devices,
            bus,
            registers,
            attached: Mutex::new(Attached {
                slots: boot.into_iter().collect(),
                next_disk: boot_disks,
            }),
            operation: Mutex::new(()),
        }
    }

    fn one_operation(&self) -> MutexGuard<'_, ()> {
        self.operation.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Attached> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids of the devices on the bus now.
    pub fn ids(&self) -> Vec<String> {
        self.lock().slots.keys().cloned().collect()
    }

    /// The slot of device `id`.
    pub fn slot(&self, id: &str) -> Option<u8> {
        self.lock().slots.get(id).copied()
    }

    /// Where passthrough devices' host state lives (grows when the first `assigned=sim` disk
    /// is hot-added), for the vIOMMU state report.
    pub fn host_bindings(&self) -> Vec<crate::iommu_state::HostBindings> {
        self.devices.host_bindings()
    }

    /// The VM's devices (for tests that look at what is left).
    pub fn devices(&self) -> &Arc<DeviceContext> {
        &self.devices
    }

    /// The hot-plug registers (for tests that play the guest).
    pub fn registers(&self) -> &Arc<HotplugRegisters> {
        &self.registers
    }

    /// Adds `disk` at the lowest free slot and tells the guest; returns its id and slot.
    pub fn add_disk(&self, disk: &DiskConfig) -> Result<(String, u8), HotplugError> {
        let _operation = self.one_operation();
        let mut attached = self.lock();
        let slot = self.free_slot()?;
        let index = attached.next_disk;
        let devices = &*self.devices;
        let sid = bus0_sid(slot);
        let added = match (disk.assigned, disk.iommu, devices.vtd()) {
            (Some(_), _, _) => {
                let name = format!("disk{index}");
                let memory = devices
                    .passthrough()
                    .and_then(|p| p.assign(&name, sid))
                    .map_err(|e| HotplugError::Add(error_chain(&e)))?;
                let added =
                    crate::pci::add_disk(devices, &self.bus, index, slot, disk, memory, true);
                if added.is_err()
                    && let Some(p) = devices.existing_passthrough()
                {
                    p.unassign(sid);
                }
                added
            }
            (None, true, Some(unit)) => {
                let memory = translated_memory(devices.memory(), unit, sid, None);
                crate::pci::add_disk(devices, &self.bus, index, slot, disk, memory, true)
            }
            (None, true, None) => {
                return Err(HotplugError::Add(
                    crate::pci::Error::NoIommu(index).to_string(),
                ));
            }
            (None, false, _) => crate::pci::add_disk(
                devices,
                &self.bus,
                index,
                slot,
                disk,
                devices.memory().clone(),
                false,
            ),
        };
        let id = format!("disk{index}");
        if let Err(e) = added {
            // pci::add_disk registers the counters before it places the device.
            devices.counters().remove_component(&format!("{id}_"));
            return Err(HotplugError::Add(error_chain(&e)));
        }
        attached.next_disk += 1;
        attached.slots.insert(id.clone(), slot);
        drop(attached);
        self.registers.announce_add(slot);
        tracing::info!("{id}: hot-added at 00:{slot:02x}.0");
        Ok((id, slot))
    }

    /// Adds the VFIO host function of `config` (its id must be free) at the lowest free slot
    /// and tells the guest; returns its slot.
    pub fn add_vfio(&self, config: &DeviceConfig) -> Result<u8, HotplugError> {
        let _operation = self.one_operation();
        let mut attached = self.lock();
        let slot = self.free_slot()?;
        let id = config.id.clone();
        if let Err(e) = crate::vfio::add_device_at(&self.devices, &self.bus, config, slot) {
            // The function registers its dma_path counters before it is placed.
            self.devices.counters().remove_component(&format!("{id}_"));
            return Err(HotplugError::Add(error_chain(&e)));
        }
        attached.slots.insert(id.clone(), slot);
        drop(attached);
        self.registers.announce_add(slot);
        tracing::info!("{id}: hot-added at 00:{slot:02x}.0");
        Ok(slot)
    }

    fn free_slot(&self) -> Result<u8, HotplugError> {
        HOTPLUG_SLOTS
            .into_iter()
            .find(|&s| self.bus.device(s).is_none())
            .ok_or(HotplugError::NoFreeSlot)
    }

    /// Asks the guest to release device `id` and, once it ejects (within `timeout`), takes it
    /// off the bus with everything it holds.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<u8, HotplugError> {
        let _operation = self.one_operation();
        let slot = self
            .slot(id)
            .ok_or_else(|| HotplugError::UnknownId(id.to_owned()))?;
        self.registers.request_eject(slot);
        if !self.registers.wait_eject(slot, timeout) {
            return Err(HotplugError::NotReleased {
                id: id.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        self.detach(id, slot);
        Ok(slot)
    }

    fn detach(&self, id: &str, slot: u8) {
        let device = self.bus.remove_device(slot);
        // With the last reference: a disk's I/O thread is joined; a VFIO function is reset and
        // releases its BAR slots, accel binding or shadow, and host device (vfio::Release);
        // either's MSI-X vectors take their irqfds and GSI routes.
        drop(device);
        let sid = bus0_sid(slot);
        if let Some(passthrough) = self.devices.existing_passthrough() {
            passthrough.unassign(sid);
        }
        if let Some(unit) = self.devices.vtd() {
            unit.forget_source(sid);
        }
        self.devices.counters().remove_component(&format!("{id}_"));
        self.lock().slots.remove(id);
        tracing::info!("{id}: removed from 00:{slot:02x}.0");
    }
}
