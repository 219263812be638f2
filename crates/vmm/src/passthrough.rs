//! Assigned (passthrough) devices on the software host IOMMU: `--disk ...,assigned=sim`.
//!
//! ```text
//!  guest PASID entries / invalidations ──> vtd::Vtd ──observer──> accel::Accel
//!                                                                   │ bind / invalidate
//!                                                                   ▼
//!  device DMA ──> DmaMemory<GuestMemoryMmap, HostTranslation> ──> SimIommu ──> host_iommu::sim::SimHost
//!                 (nested walk: guest first stage, then the stage-2 nest parent = guest RAM)
//! ```
//!
//! The device's DMA never enters the vIOMMU: the host model translates it with the tables the
//! accel layer bound, exactly as a real host IOMMU would for a VFIO device.

use std::sync::Arc;

use accel::{Accel, HostDevice, RamRegion};
use host_iommu::HostIommu;
use host_iommu::sim::{GuestRamMemory, GuestRamRegion, SimConfig, SimHost, SimIommu};
use vm_memory::iommu::Error as IommuError;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, Permissions};
use vtd::Vtd;
use vtd::dma_memory::{DmaMemory, DmaTranslate};
use vtd_spec::SourceId;

use crate::counters::Counters;

/// Errors assigning a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Passthrough needs the vIOMMU.
    #[error("assigned=sim needs a vIOMMU (--iommu intel,...)")]
    NoIommu,
    /// The accel layer refused the device.
    #[error(transparent)]
    Accel(#[from] accel::AccelError),
}

/// Guest memory as an assigned device sees it: translated by the host IOMMU model, through the
/// same DMA adapter as an emulated device behind the vIOMMU (`iommu::TranslatedMemory`).
pub type AssignedMemory = DmaMemory<GuestMemoryMmap, HostTranslation>;

/// An assigned device's translation: the host IOMMU model, a piece at a time.
#[derive(Debug)]
pub struct HostTranslation(pub SimIommu);

impl DmaTranslate for HostTranslation {
    fn translate_piece(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(u64, usize), IommuError> {
        self.0.translate_piece(iova, len, access)
    }
}

/// The software host IOMMU with its accel layer, shared by all assigned devices.
pub struct Passthrough {
    memory: GuestMemoryMmap,
    ram: Vec<GuestRamRegion>,
    sim: Arc<SimHost>,
    accel: Arc<Accel>,
    unit: Arc<Vtd>,
    assigned: std::sync::Mutex<Vec<(SourceId, host_iommu::DeviceId)>>,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("ram", &self.ram)
            .finish_non_exhaustive()
    }
}

/// Guest RAM regions with the host virtual addresses of their mappings.
pub fn ram_regions(memory: &GuestMemoryMmap) -> Vec<GuestRamRegion> {
    memory
        .iter()
        .map(|r| GuestRamRegion {
            gpa: r.start_addr().0,
            size: r.len(),
            hva: r.as_ptr() as u64,
        })
        .collect()
}

/// Live-object gauges of the passthrough path, for the exit summary and the API's counters:
/// what an unplug must bring back to zero.
struct LiveObjects {
    sim: Arc<SimHost>,
    accel: Arc<Accel>,
}

impl counter_set::CounterSource for LiveObjects {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        let live = self.sim.live_objects();
        f("accel_live_bindings", self.accel.bindings().len() as u64);
        f("host_live_nest_parents", live.nest_parents as u64);
        f("host_live_nested_hwpts", live.nested as u64);
        f("host_live_attached_devices", live.attached_devices as u64);
    }
}

impl Passthrough {
    /// The host model over guest RAM, its accel layer registered as an observer of `unit`,
    /// and its counters (`accel_*`) in the exit summary.
    pub fn new(memory: &GuestMemoryMmap, unit: &Arc<Vtd>, counters: &Counters) -> Self {
        let ram = ram_regions(memory);
        let host_memory = Arc::new(GuestRamMemory::new(memory.clone(), ram.clone()));
        let sim = Arc::new(SimHost::new(SimConfig::default(), host_memory));
        let stage2: Vec<RamRegion> = ram
            .iter()
            .map(|r| RamRegion {
                gpa: r.gpa,
                hva: r.hva,
                len: r.size,
                writable: true,
            })
            .collect();
        let accel = Arc::new(Accel::new(*unit.config(), stage2));
        unit.add_observer(accel.clone());
        counters.add_component("accel_", accel.clone());
        counters.add_component(
            "",
            Arc::new(LiveObjects {
                sim: sim.clone(),
                accel: accel.clone(),
            }),
        );
        Passthrough {
            memory: memory.clone(),
            ram,
            sim,
            accel,
            unit: unit.clone(),
            assigned: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The software host IOMMU (its live objects: HWPTs, attached devices).
    pub fn host(&self) -> &Arc<SimHost> {
        &self.sim
    }

    /// Releases the device at `sid` (it was unplugged): accel drops its binding, with its
    /// nested HWPT and, when no other device uses it, the nest parent; then the host model
    /// forgets the device. Returns whether `sid` was assigned.
    pub fn unassign(&self, sid: SourceId) -> bool {
        let dev = {
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = assigned.iter().position(|(s, _)| *s == sid) else {
                return false;
            };
            assigned.remove(i).1
        };
        self.accel.remove_device(sid);
        if let Err(e) = self.sim.remove_device(dev) {
            tracing::warn!("The host IOMMU model cannot release {sid:?}: {e}");
        }
        true
    }

    /// The bindings of the assigned disks.
    pub fn accel(&self) -> &Arc<Accel> {
        &self.accel
    }

    /// Assigns a device named `name` at requester id `sid`; returns the memory its DMA uses.
    pub fn assign(&self, name: &str, sid: SourceId) -> Result<AssignedMemory, Error> {
        let dev = self.sim.add_device(name);
        let host: Arc<dyn HostIommu> = self.sim.clone();
        let device = HostDevice {
            sid,
            name: name.to_owned(),
            host,
            dev,
            behind_bridge: false,
        };
        if let Err(e) = self.accel.add_device(&*self.unit, device) {
            let _ = self.sim.remove_device(dev);
            return Err(e.into());
        }
        self.assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((sid, dev));
        let iommu = SimIommu::new(self.sim.clone(), dev, self.ram.clone());
        Ok(DmaMemory::new(
            self.memory.clone(),
            Arc::new(HostTranslation(iommu)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    struct NoIrq;

    impl vtd::FaultInterrupt for NoIrq {
        fn deliver(&self, _address: u64, _data: u32) {}
    }

    #[test]
    fn assigned_device_uses_stage_2_while_translation_is_off() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let config = vtd::Config::parse("x-scalable-mode=on,x-flts=on,caching-mode=on").unwrap();
        let unit = Arc::new(Vtd::new(config, Arc::new(memory.clone()), Arc::new(NoIrq)));
        let counters = Counters::new();
        let pt = Passthrough::new(&memory, &unit, &counters);
        let dma = pt.assign("disk0", SourceId::new(0, 2, 0)).unwrap();
        // Translation is off: the device is attached to stage 2 (GPA = IOVA), like QEMU.
        memory.write_obj(0xabcdu16, GuestAddress(0x1000)).unwrap();
        let seen = dma.read_obj::<u16>(GuestAddress(0x1000));
        let summary = counters.summary();
        assert!(
            summary.contains("counter accel_nested_binds 0\n"),
            "{summary}"
        );
        assert!(
            summary.contains("counter accel_stage2_attaches "),
            "{summary}"
        );
        assert_eq!(
            seen.unwrap(),
            0xabcd,
            "stage 2 maps guest RAM at IOVA = GPA"
        );
        assert!(matches!(
            pt.assign("disk0", SourceId::new(0, 2, 0)),
            Err(Error::Accel(_))
        ));
    }
}
