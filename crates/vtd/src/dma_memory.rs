//! Guest memory as a device behind the vIOMMU sees it: a vm-memory [`GuestMemory`] whose
//! addresses are IOVAs, translated a piece at a time by the device's [`DmaTranslate`] (for an
//! emulated device, its [`DeviceIommu`]).
//!
//! ```text
//!  virtio-queue / device ─► DmaMemory::get_slices(iova, count, access)
//!      DmaSlices::next ─► DmaTranslate::translate_piece(iova, remaining, access)
//!                            └─► (gpa, contiguous bytes) | fault ─► IommuError, iteration ends
//!                     ─► backend.get_slices(gpa, contiguous) ─► VolatileSlice(s)
//! ```
//!
//! vm-memory's own `IommuMemory` asks the IOMMU for an `Iotlb` iterator per access and looks
//! every range up in it (a range map); this type asks the device's remembered pages directly
//! and builds nothing per access. It is what the VMM gives an emulated device with
//! `iommu=on`; `IommuMemory` over [`DeviceIommu`] (which also implements vm-memory's `Iommu`)
//! stays available for other users and serves as the reference in the tests.
//!
//! Guest-controlled lengths are bounded: an access longer than [`MAX_TRANSLATE_LEN`] or
//! wrapping the address space is refused before anything is translated, and every piece
//! covers at least one byte, so an iteration takes at most `count` steps (one per 4 KiB page
//! in practice, one per superpage when the mapping is one).

use std::iter::FusedIterator;
use std::sync::Arc;

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::{GuestMemoryBackendSliceIterator, GuestMemorySliceIterator};
use vm_memory::iommu::Error as IommuError;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestMemoryResult, Permissions, VolatileSlice,
};

use crate::iommu::{DeviceIommu, MAX_TRANSLATE_LEN, cannot_resolve};

/// A device's translation, one contiguous piece at a time.
pub trait DmaTranslate: Send + Sync {
    /// The guest-physical address of `iova` for `access`, and how many bytes from `iova` on
    /// (at least 1, at most `len`) are contiguous there with that permission; or the fault.
    /// `len` is at least 1 and `iova + len` does not wrap.
    fn translate_piece(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(u64, usize), IommuError>;
}

impl DmaTranslate for DeviceIommu {
    fn translate_piece(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(u64, usize), IommuError> {
        DeviceIommu::translate_piece(self, iova, len, access)
    }
}

/// Guest memory `B` seen through a device's translation `T`.
#[derive(Debug)]
pub struct DmaMemory<B, T> {
    backend: B,
    translate: Arc<T>,
}

impl<B: Clone, T> Clone for DmaMemory<B, T> {
    fn clone(&self) -> Self {
        DmaMemory {
            backend: self.backend.clone(),
            translate: self.translate.clone(),
        }
    }
}

impl<B, T> DmaMemory<B, T> {
    /// `backend` (guest-physical memory) as the device behind `translate` sees it.
    pub fn new(backend: B, translate: Arc<T>) -> Self {
        DmaMemory { backend, translate }
    }

    /// The device's translation.
    pub fn translation(&self) -> &Arc<T> {
        &self.translate
    }
}

fn refused(iova: u64, count: usize, reason: &str) -> GuestMemoryError {
    GuestMemoryError::IommuError(cannot_resolve(iova, count, reason.to_owned()))
}

impl<B: GuestMemoryBackend, T: DmaTranslate> GuestMemory for DmaMemory<B, T> {
    type PhysicalMemory = B;
    type Bitmap = <B::R as GuestMemoryRegion>::B;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        match self.get_slices(addr, count, access) {
            Ok(mut slices) => slices.all(|slice| slice.is_ok()),
            Err(_) => false,
        }
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if count > MAX_TRANSLATE_LEN {
            return Err(refused(addr.0, count, "access longer than 1 GiB"));
        }
        if addr.0.checked_add(count as u64).is_none() {
            return Err(refused(addr.0, count, "range wraps around"));
        }
        Ok(DmaSlices {
            memory: self,
            iova: addr.0,
            remaining: count,
            access,
            current: None,
            done: false,
        })
    }

    // `physical_memory` stays `None`: nothing may bypass the translation.
}

/// The slices of one access (see the module docs).
struct DmaSlices<'a, B: GuestMemoryBackend, T> {
    memory: &'a DmaMemory<B, T>,
    /// Next IOVA to translate.
    iova: u64,
    /// Bytes not translated yet.
    remaining: usize,
    access: Permissions,
    /// Slices of the piece being visited.
    current: Option<GuestMemoryBackendSliceIterator<'a, B>>,
    /// A fault or an error ended the iteration.
    done: bool,
}

impl<'a, B: GuestMemoryBackend, T: DmaTranslate> Iterator for DmaSlices<'a, B, T> {
    type Item = GuestMemoryResult<VolatileSlice<'a, BS<'a, <B::R as GuestMemoryRegion>::B>>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                if item.is_err() {
                    self.done = true;
                }
                return Some(item);
            }
            self.current = None;
            if self.remaining == 0 {
                return None;
            }
            match self
                .memory
                .translate
                .translate_piece(self.iova, self.remaining, self.access)
            {
                Ok((gpa, length)) if length > 0 => {
                    let length = length.min(self.remaining);
                    self.current = Some(self.memory.backend.get_slices(GuestAddress(gpa), length));
                    self.iova = self.iova.wrapping_add(length as u64);
                    self.remaining -= length;
                }
                Ok(_) => {
                    self.done = true;
                    return Some(Err(refused(self.iova, self.remaining, "empty translation")));
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(GuestMemoryError::IommuError(error)));
                }
            }
        }
    }
}

impl<B: GuestMemoryBackend, T: DmaTranslate> FusedIterator for DmaSlices<'_, B, T> {}

impl<'a, B: GuestMemoryBackend, T: DmaTranslate>
    GuestMemorySliceIterator<'a, BS<'a, <B::R as GuestMemoryRegion>::B>> for DmaSlices<'a, B, T>
{
}
