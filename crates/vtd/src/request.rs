//! What a device asks of the remapping unit, and what it gets back: a translation or a fault.

pub use crate::generation_log::Stale;
use vtd_spec::SourceId;
use vtd_spec::fault::FaultReason;
use vtd_spec::rights::FsRequest;

/// The kind of access a DMA request makes (§3.6: requests are reads or writes; execute and
/// supervisor privilege come with PASID-tagged requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The request reads memory.
    pub read: bool,
    /// The request writes memory.
    pub write: bool,
    /// The request asks for execute permission (ER attribute).
    pub execute: bool,
    /// The request carries supervisor privilege (PR attribute).
    pub privileged: bool,
}

impl Access {
    /// A plain read.
    pub const READ: Access = Access {
        read: true,
        write: false,
        execute: false,
        privileged: false,
    };
    /// A plain write.
    pub const WRITE: Access = Access {
        read: false,
        write: true,
        execute: false,
        privileged: false,
    };
    /// A read-modify-write (atomic) access.
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
        execute: false,
        privileged: false,
    };

    /// This access as a first-stage request of privilege `privileged` (the PR attribute for
    /// requests with PASID, the context entry's RID_PRIV for those without).
    pub(crate) fn first_stage(self, privileged: bool) -> FsRequest {
        FsRequest {
            privileged,
            write: self.write,
            execute: self.execute,
        }
    }
}

/// A DMA request from a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    /// Requester id.
    pub sid: SourceId,
    /// PASID, for requests-with-PASID.
    pub pasid: Option<u32>,
    /// Input (I/O virtual) address.
    pub iova: u64,
    /// The access asked for.
    pub access: Access,
}

/// Permissions of a translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
}

/// A successful translation of the page holding `DmaRequest::iova`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Input address of the first byte of the translated page (aligned to `size`).
    pub iova_base: u64,
    /// Guest-physical address the page maps to.
    pub gpa_base: u64,
    /// Page size in bytes: 4 KiB, 2 MiB, 1 GiB, or the whole space for pass-through.
    pub size: u64,
    /// What the page allows.
    pub perms: Permissions,
}

impl Translation {
    /// The guest-physical address for `iova`, which must lie in this translation's page.
    pub fn gpa(&self, iova: u64) -> u64 {
        self.gpa_base + (iova - self.iova_base)
    }
}

/// A translation fault, before it is recorded (§7.1, §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Why the request failed.
    pub reason: FaultReason,
    /// Requester id.
    pub sid: SourceId,
    /// PASID of a request-with-PASID.
    pub pasid: Option<u32>,
    /// The faulting input address.
    pub iova: u64,
    /// The access that faulted.
    pub access: Access,
    /// A context, PASID-directory or PASID entry on the path had FPD set: the fault is not
    /// recorded or reported (§7.1.2: qualified faults only).
    pub fpd: bool,
}

impl Fault {
    /// An interrupt-remapping fault (0x20-0x27) of the request from `sid` with interrupt
    /// index `index`: recorded as the spec lays out such records (§11.4.9.6), the index in
    /// FI bits 63:48 (carried here as `iova`) and the type of a write, without PASID.
    pub fn interrupt(reason: FaultReason, sid: SourceId, index: u16, fpd: bool) -> Self {
        Self {
            reason,
            sid,
            pasid: None,
            iova: vtd_spec::regs::FrcdLo::for_interrupt(index).into_bits(),
            access: Access::WRITE,
            fpd,
        }
    }
}

/// Anything that remaps DMA requests: the vIOMMU unit implements it, and per-device adapters
/// (such as the vm-memory `Iommu` implementation) are built on top of it.
pub trait Remapper: Send + Sync {
    /// Translates the page holding `req.iova`, recording and reporting a fault as the spec
    /// requires when it fails.
    fn remap(&self, req: &DmaRequest) -> Result<Translation, Fault>;

    /// [`Remapper::remap`], and `nearby` receives other translations for the same requester
    /// the remapper found on the way (pages next to the walked one), each what `remap` would
    /// return for it at that moment and valid under the same [`Generations::generation`] rule.
    /// The default finds none.
    fn remap_nearby(
        &self,
        req: &DmaRequest,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, Fault> {
        let _ = nearby;
        self.remap(req)
    }

    /// A single-DWORD write of `data` without PASID at `address` in the interrupt address range
    /// (`interrupt_range::INTERRUPT_RANGE`): an interrupt request, not DMA (§3.15). Returns
    /// whether it was delivered; `false` if `address` is not a DWORD-aligned address in the
    /// range (such a write, or a write of another length, is DMA: [`Remapper::remap`] faults
    /// it). With interrupt remapping enabled the request is remapped first
    /// ([`crate::Vtd::remap_interrupt`]); a blocked one is still an interrupt request (its fault
    /// is recorded) and returns `true`. The default delivers nothing.
    fn interrupt(&self, sid: SourceId, address: u64, data: u32) -> bool {
        let _ = (sid, address, data);
        false
    }
}

/// The invalidation generations of a remapper whose answers a caller may remember (the unit
/// implements it; [`crate::iommu::DeviceIommu`] requires it alongside [`Remapper`]). The
/// protocol that makes remembering safe is in `generation_log`'s module docs.
pub trait Generations: Send + Sync {
    /// A counter that grows with every invalidation, cache flush, root or TE change: after
    /// the remapper stopped answering with what the change made stale, and before the guest
    /// can see the change complete. A caller may reuse a translation it asked for after
    /// reading `g` for as long as the counter still reads `g`.
    fn generation(&self) -> u64;

    /// What became stale between generations `from` (exclusive) and `to` (inclusive): calls
    /// `stale` for each scope and returns `true`, or returns `false` when that is no longer
    /// known: the caller must then treat every translation as stale.
    fn stale_between(&self, from: u64, to: u64, stale: &mut dyn FnMut(Stale)) -> bool;
}
