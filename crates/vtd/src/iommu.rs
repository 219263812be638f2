//! A per-device view of a [`Remapper`] that implements vm-memory's [`vm_memory::Iommu`], so an
//! emulated device can use `vm_memory::IommuMemory` (and virtio-queue on top of it) unchanged.
//!
//! ```text
//!  virtio device ─► IommuMemory::read/write(iova, len)
//!                     └─► DeviceIommu::translate(iova, len, access)
//!                           for each page: Remapper::remap(sid, iova) ─► Translation | Fault
//!                           └─► a fresh vm_memory::Iotlb holding just this call's mappings
//! ```
//!
//! There is deliberately no second cache here: every call asks the remapper (whose IOTLB
//! follows the guest's invalidations), and the `Iotlb` it builds lives only as long as the
//! returned iterator. A range is translated page by page, but a superpage or pass-through
//! translation covers many pages in one step; the number of steps is bounded by
//! [`MAX_TRANSLATE_LEN`].

use crate::request::{Access, DmaRequest, Remapper};
use std::sync::Arc;
use vm_memory::iommu::{Error, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};
use vtd_spec::SourceId;

/// The longest range one `translate` call accepts (1 GiB), so a guest-supplied descriptor
/// length cannot make a call walk an unbounded number of pages (at most 262,144 4 KiB pages).
pub const MAX_TRANSLATE_LEN: usize = 1 << 30;

/// A device's view of the vIOMMU: its requester id plus the unit it sits behind.
pub struct DeviceIommu {
    remapper: Arc<dyn Remapper>,
    sid: SourceId,
}

impl DeviceIommu {
    /// The view of device `sid` behind `remapper`.
    pub fn new(remapper: Arc<dyn Remapper>, sid: SourceId) -> Self {
        Self { remapper, sid }
    }

    /// The requester id this view translates for.
    pub fn sid(&self) -> SourceId {
        self.sid
    }
}

impl std::fmt::Debug for DeviceIommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIommu")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

fn access_of(p: Permissions) -> Access {
    Access {
        read: matches!(p, Permissions::Read | Permissions::ReadWrite),
        write: matches!(p, Permissions::Write | Permissions::ReadWrite),
        execute: false,
        privileged: false,
    }
}

fn permissions_of(read: bool, write: bool) -> Permissions {
    match (read, write) {
        (false, false) => Permissions::No,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (true, true) => Permissions::ReadWrite,
    }
}

fn cannot_resolve(base: u64, length: usize, reason: String) -> Error {
    Error::CannotResolve {
        iova_range: IovaRange {
            base: GuestAddress(base),
            length,
        },
        reason,
    }
}

impl vm_memory::Iommu for DeviceIommu {
    type IotlbGuard<'a> = Box<Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, Error> {
        let start = iova.0;
        if length > MAX_TRANSLATE_LEN {
            return Err(cannot_resolve(
                start,
                length,
                format!("longer than {MAX_TRANSLATE_LEN:#x} bytes"),
            ));
        }
        let end = start
            .checked_add(length as u64)
            .ok_or_else(|| cannot_resolve(start, length, "range wraps around".into()))?;
        let mut tlb = Iotlb::new();
        let mut cur = start;
        let req_access = access_of(access);
        // Each step covers at least the rest of a 4 KiB page, so this bounds the loop even if
        // a remapper misbehaves.
        let max_steps = length / 4096 + 2;
        for _ in 0..max_steps {
            if cur >= end {
                break;
            }
            let req = DmaRequest {
                sid: self.sid,
                pasid: None,
                iova: cur,
                access: req_access,
            };
            let t = self
                .remapper
                .remap(&req)
                .map_err(|f| cannot_resolve(cur, (end - cur) as usize, f.reason.to_string()))?;
            let page_end = t.iova_base.saturating_add(t.size);
            if cur < t.iova_base || cur >= page_end {
                return Err(cannot_resolve(
                    cur,
                    (end - cur) as usize,
                    "translation does not cover the address".into(),
                ));
            }
            let chunk_end = page_end.min(end);
            let len = (chunk_end - cur) as usize;
            tlb.set_mapping(
                GuestAddress(cur),
                GuestAddress(t.gpa_base.wrapping_add(cur - t.iova_base)),
                len,
                permissions_of(t.perms.read, t.perms.write),
            )?;
            cur = chunk_end;
        }
        if cur < end {
            return Err(cannot_resolve(
                cur,
                (end - cur) as usize,
                "too many steps".into(),
            ));
        }
        Iotlb::lookup(Box::new(tlb), iova, length, access).map_err(|fails| {
            let first = fails
                .access_fails
                .first()
                .or(fails.misses.first())
                .map(|r| r.base.0)
                .unwrap_or(start);
            cannot_resolve(first, length, "access not permitted".into())
        })
    }
}
