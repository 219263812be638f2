//! An emulated device DMAing "as a passthrough device would": a [`vm_memory::Iommu`] for a
//! (sim, device) pair. IOVA → host VA goes through the sim's nested walk (and its caches),
//! host VA → guest-physical through the VMM's guest-RAM table. A fresh [`Iotlb`] is built
//! for every call, so there is no cache here that an invalidation could miss.
//!
//! The VMM wraps a device's memory as `IommuMemory<GuestMemoryMmap, SimIommu>`.

use std::sync::Arc;

use vm_memory::iommu::{Error as IommuError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iommu, Iotlb, Permissions};

use super::{DmaAccess, SimHost};
use crate::DeviceId;

/// One guest RAM region: `size` bytes at guest-physical `gpa`, mapped at host VA `hva`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRamRegion {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address.
    pub hva: u64,
}

/// The sim's translation for one device, as vm-memory's [`Iommu`].
#[derive(Debug)]
pub struct SimIommu {
    host: Arc<SimHost>,
    dev: DeviceId,
    ram: Vec<GuestRamRegion>,
}

impl SimIommu {
    /// Translation for `dev`'s DMA; `ram` maps host VAs back to guest-physical addresses.
    pub fn new(host: Arc<SimHost>, dev: DeviceId, ram: Vec<GuestRamRegion>) -> Self {
        Self { host, dev, ram }
    }
    /// The device.
    pub fn device(&self) -> DeviceId {
        self.dev
    }
    fn hva_to_gpa(&self, hva: u64) -> Option<(u64, u64)> {
        self.ram.iter().find_map(|r| {
            let off = hva.checked_sub(r.hva)?;
            (off < r.size).then(|| (r.gpa + off, r.size - off))
        })
    }
}

fn cannot(iova: u64, length: usize, reason: String) -> IommuError {
    IommuError::CannotResolve {
        iova_range: IovaRange {
            base: GuestAddress(iova),
            length,
        },
        reason,
    }
}

impl Iommu for SimIommu {
    type IotlbGuard<'a> = Box<Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let start = iova.0;
        let end = start
            .checked_add(length as u64)
            .ok_or_else(|| cannot(start, length, "IOVA range overflows".into()))?;
        let dma = DmaAccess {
            read: access.allow(Permissions::Read),
            write: access.has_write(),
            supervisor: false,
        };
        let mut tlb = Iotlb::new();
        let mut at = start;
        while at < end {
            let page_end = (at | 0xfff).saturating_add(1).min(end);
            let hva = self
                .host
                .dma_translate_access(self.dev, at, dma)
                .map_err(|f| cannot(start, length, f.to_string()))?;
            let (gpa, room) = self.hva_to_gpa(hva).ok_or_else(|| {
                cannot(
                    start,
                    length,
                    format!("host address {hva:#x} is not guest RAM"),
                )
            })?;
            let chunk = (page_end - at).min(room);
            tlb.set_mapping(GuestAddress(at), GuestAddress(gpa), chunk as usize, access)?;
            at += chunk;
        }
        Iotlb::lookup(Box::new(tlb), iova, length, access)
            .map_err(|_| cannot(start, length, "translation incomplete".into()))
    }
}
