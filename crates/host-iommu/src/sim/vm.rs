//! An emulated device DMAing "as a passthrough device would": [`SimIommu`] translates for a
//! (sim, device) pair. IOVA → host VA goes through the sim's nested walk (and its caches),
//! host VA → guest-physical through the VMM's guest-RAM table; nothing is cached here, so there
//! is nothing an invalidation could miss.
//!
//! [`SimIommu::translate_piece`] is the one translation: the VMM gives an assigned device the
//! same DMA adapter as an emulated one (`vtd::dma_memory::DmaMemory`, one piece at a time), and
//! the [`vm_memory::Iommu`] implementation (a fresh [`Iotlb`] per call, owned by the returned
//! iterator) builds on it for `vm_memory::IommuMemory` users.
//!
//! [`GuestRamMemory`] is the matching [`HostMemory`] over the same guest RAM: the sim reads
//! the guest's page tables and sets A/D bits through it, with no pointer in sight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::iommu::{Error as IommuError, IotlbIterator, IovaRange};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, Iommu, Iotlb, Permissions, VolatileMemory,
};

use super::{DmaAccess, HostMemory, HostMemoryError, SimHost};
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

fn hva_to_gpa(ram: &[GuestRamRegion], hva: u64) -> Option<(u64, u64)> {
    ram.iter().find_map(|r| {
        let off = hva.checked_sub(r.hva)?;
        (off < r.size).then(|| (r.gpa + off, r.size - off))
    })
}

/// Host memory = the VMM's guest RAM: host VAs from the RAM table, accessed through
/// vm-memory (atomic compare-exchange included).
#[derive(Debug)]
pub struct GuestRamMemory<M> {
    mem: M,
    ram: Vec<GuestRamRegion>,
}

impl<M: GuestMemoryBackend> GuestRamMemory<M> {
    /// Host memory over `mem`, whose regions are at the host VAs `ram` lists.
    pub fn new(mem: M, ram: Vec<GuestRamRegion>) -> Self {
        Self { mem, ram }
    }
    /// The GPA of `[hva, hva + len)`, if it lies in one region.
    fn gpa(&self, hva: u64, len: usize) -> Result<GuestAddress, HostMemoryError> {
        match hva_to_gpa(&self.ram, hva) {
            Some((gpa, room)) if room >= len as u64 => Ok(GuestAddress(gpa)),
            _ => Err(HostMemoryError { hva, len }),
        }
    }
}

impl<M: GuestMemoryBackend + Send + Sync> HostMemory for GuestRamMemory<M> {
    fn read(&self, hva: u64, buf: &mut [u8]) -> Result<(), HostMemoryError> {
        let err = HostMemoryError {
            hva,
            len: buf.len(),
        };
        let gpa = self.gpa(hva, buf.len())?;
        self.mem.read_slice(buf, gpa).map_err(|_| err)
    }
    fn write(&self, hva: u64, data: &[u8]) -> Result<(), HostMemoryError> {
        let err = HostMemoryError {
            hva,
            len: data.len(),
        };
        let gpa = self.gpa(hva, data.len())?;
        self.mem.write_slice(data, gpa).map_err(|_| err)
    }
    fn compare_exchange_u64(
        &self,
        hva: u64,
        old: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, HostMemoryError> {
        let err = HostMemoryError { hva, len: 8 };
        let gpa = self.gpa(hva, 8)?;
        let slice = self.mem.get_slice(gpa, 8).map_err(|_| err)?;
        let atomic = slice.get_atomic_ref::<AtomicU64>(0).map_err(|_| err)?;
        Ok(atomic.compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst))
    }
}

/// The one-call [`Iotlb`] a [`SimIommu`] translation hands vm-memory, owned by its iterator.
#[derive(Debug, Default)]
pub struct OwnedIotlb(Iotlb);

impl std::ops::Deref for OwnedIotlb {
    type Target = Iotlb;
    fn deref(&self) -> &Iotlb {
        &self.0
    }
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

impl SimIommu {
    /// The guest-physical address of `iova` for `access`, and how many bytes from there (at
    /// least 1, at most `len`, never past the 4 KiB page or the RAM region) are contiguous: one
    /// walk of the host IOMMU. What every DMA adapter over the software host asks, page by page.
    pub fn translate_piece(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(u64, usize), IommuError> {
        let end = iova
            .checked_add(len as u64)
            .filter(|&end| end > iova)
            .ok_or_else(|| cannot(iova, len, "empty or wrapping IOVA range".into()))?;
        let dma = DmaAccess {
            read: access.allow(Permissions::Read),
            write: access.has_write(),
            supervisor: false,
        };
        let hva = self
            .host
            .dma_translate_access(self.dev, iova, dma)
            .map_err(|f| {
                // Callers such as virtio-queue's ring checks report only that an access failed;
                // the host IOMMU's reason is here (debug: a guest can cause many).
                tracing::debug!(
                    target: "host_iommu",
                    iova,
                    write = dma.write,
                    "host IOMMU DMA fault: {f}"
                );
                cannot(iova, len, f.to_string())
            })?;
        let (gpa, room) = hva_to_gpa(&self.ram, hva)
            .ok_or_else(|| cannot(iova, len, format!("host address {hva:#x} is not guest RAM")))?;
        let page_end = (iova | 0xfff).saturating_add(1).min(end);
        Ok((gpa, (page_end - iova).min(room) as usize))
    }
}

impl Iommu for SimIommu {
    type IotlbGuard<'a> = OwnedIotlb;

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
        let mut tlb = Iotlb::new();
        let mut at = start;
        while at < end {
            let (gpa, chunk) = self.translate_piece(at, (end - at) as usize, access)?;
            tlb.set_mapping(GuestAddress(at), GuestAddress(gpa), chunk, access)?;
            at += chunk as u64;
        }
        Iotlb::lookup(OwnedIotlb(tlb), iova, length, access)
            .map_err(|_| cannot(start, length, "translation incomplete".into()))
    }
}
