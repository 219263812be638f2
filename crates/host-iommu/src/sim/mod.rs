//! A software host IOMMU: an in-process model of the Linux iommufd kernel objects and the VT-d
//! hardware under them, the stand-in for nesting hardware (and for every test).
//!
//! - **Kernel rules** with the kernel's errnos (`drivers/iommu/iommufd`, `intel/nested.c`,
//!   `intel/pasid.c` at Linux 6.12+): object ids share one namespace; destroying an attached
//!   HWPT, a parent with children or an IOAS with HWPTs is `EBUSY`; a nested HWPT needs a
//!   nest-parent HWPT (`EINVAL`); without nesting a nest parent is `EOPNOTSUPP`; with
//!   ERRATA_772415 read-only mappings in an IOAS backing a nest parent are `EINVAL`. The
//!   `addr_width`, SRE and EAFE checks happen where the kernel does them, at *attach*
//!   (`intel_pasid_setup_nested`: `EINVAL`). Stricter than the kernel (which ignores them):
//!   unknown `iommu_hwpt_vtd_s1` flags and a non-zero `__reserved` fail allocation with
//!   `EOPNOTSUPP`.
//! - **Hardware**: DMA from an attached device is translated by a nested walk
//!   ([`walk`]) with per-HWPT caches ([`iotlb`]) that only `IOMMU_HWPT_INVALIDATE` (stage 1) or an
//!   IOAS unmap (stage 2: every nested HWPT on that IOAS is flushed, as the kernel's
//!   `cache_tag_flush_range` on the parent does) clear.
//! - **Several units**: [`SimHost::with_units`] builds a host with several VT-d units, each
//!   with its own [`SimConfig`] (erratum, FS1GP, width, ...); a device reports, is checked
//!   against and walks with its own unit; a nest parent keeps the erratum and width of the
//!   unit it was allocated for.
//! - **Test hooks**: [`SimCounters`], live-object counts, and one-shot failure injection.
//!
//! The sim never dereferences pointers: host memory is reached through [`HostMemory`], which
//! the VMM implements over its guest RAM.

#![forbid(unsafe_code)]

mod config;
pub mod device;
pub mod ioas;
pub mod iotlb;
mod kernel;
pub mod memory;
mod objects;
pub mod vm;
pub mod walk;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use config::SimConfig;
pub use memory::{HostMemory, HostMemoryError, VecHostMemory};
pub use vm::{GuestRamMemory, GuestRamRegion, SimIommu};
pub use walk::{DmaAccess, DmaFault};

use crate::{DeviceId, HwptId, Op, Result};
use iotlb::NestedCaches;
use objects::{DeviceObj, HwptKind, Object, State};

/// Live objects, for leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveObjects {
    /// IOASes.
    pub ioas: usize,
    /// Nest-parent HWPTs.
    pub nest_parents: usize,
    /// Nested HWPTs.
    pub nested: usize,
    /// Automatic HWPTs (device attached to an IOAS).
    pub auto: usize,
    /// Attached devices.
    pub attached_devices: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Inject {
    pub(crate) alloc: Option<i32>,
    pub(crate) attach: Option<i32>,
    pub(crate) invalidate: Option<(i32, u32)>,
}

counter_set::counter_set! {
    /// Live counters.
    pub(crate) struct Counters;
    /// What the sim counted since it was built.
    pub struct SimCounters;
    {
        nest_parent_allocs: AtomicU64 = "Successful nest-parent allocations.",
        binds: AtomicU64 = "Successful nested-HWPT allocations (binds).",
        attaches: AtomicU64 = "Successful attaches of a detached device.",
        replaces: AtomicU64 = "Successful attaches of an attached device (replaces).",
        detaches: AtomicU64 = "Detaches of an attached device.",
        invalidation_calls: AtomicU64 = "`IOMMU_HWPT_INVALIDATE` calls.",
        invalidation_entries: AtomicU64 = "Invalidation entries processed.",
        dma_translations: AtomicU64 = "DMA translations requested.",
        dma_faults: AtomicU64 = "DMA translations that faulted.",
        iotlb_hits: AtomicU64 = "Nested translations answered by an IOTLB.",
        iotlb_misses: AtomicU64 = "Nested translations that walked.",
    }
}

pub(crate) use counter_set::add as bump;

/// Locks a cache mutex; a panic elsewhere never makes the caches unusable.
pub(crate) fn lock_caches(m: &Mutex<NestedCaches>) -> MutexGuard<'_, NestedCaches> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The software host IOMMU (see the [module docs](self)).
///
/// Object operations take a write lock on the object table; DMA translation and
/// invalidation take a read lock plus the one nested HWPT's cache lock, so devices on
/// different HWPTs translate in parallel. Counters are atomics.
pub struct SimHost {
    /// One configuration per host VT-d unit (index = unit number).
    pub(crate) units: Vec<SimConfig>,
    pub(crate) mem: Arc<dyn HostMemory>,
    state: RwLock<State>,
    pub(crate) counters: Counters,
    inject: Mutex<Inject>,
}

impl fmt::Debug for SimHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHost")
            .field("units", &self.units)
            .finish_non_exhaustive()
    }
}

impl SimHost {
    /// A simulated host with one VT-d unit, over the VMM's host memory.
    pub fn new(config: SimConfig, mem: Arc<dyn HostMemory>) -> Self {
        Self::with_units(vec![config], mem)
    }
    /// A simulated host with several VT-d units (say, one with ERRATA_772415 and one
    /// without); devices are placed on a unit with [`add_device_on`](Self::add_device_on).
    /// An empty list means one default unit.
    pub fn with_units(mut units: Vec<SimConfig>, mem: Arc<dyn HostMemory>) -> Self {
        if units.is_empty() {
            units.push(SimConfig::default());
        }
        Self {
            units,
            mem,
            state: RwLock::new(State::default()),
            counters: Counters::default(),
            inject: Mutex::new(Inject::default()),
        }
    }
    /// The configuration of unit 0.
    pub fn config(&self) -> &SimConfig {
        &self.units[0]
    }
    /// The configuration of every unit.
    pub fn units(&self) -> &[SimConfig] {
        &self.units
    }
    /// The configuration of a device's unit.
    pub(crate) fn unit(&self, unit: usize) -> &SimConfig {
        self.units.get(unit).unwrap_or(&self.units[0])
    }
    /// The host memory it reads and writes.
    pub fn memory(&self) -> &Arc<dyn HostMemory> {
        &self.mem
    }
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn inject(&self) -> MutexGuard<'_, Inject> {
        self.inject.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds a (simulated) passthrough device behind unit 0; it starts detached.
    pub fn add_device(&self, name: &str) -> DeviceId {
        self.add_device_on(name, 0)
            .unwrap_or_else(|| unreachable!("unit 0 always exists"))
    }
    /// Binds a device behind `unit`; `None` if there is no such unit.
    pub fn add_device_on(&self, name: &str, unit: usize) -> Option<DeviceId> {
        (unit < self.units.len()).then(|| {
            DeviceId(self.write().alloc_id(Object::Device(DeviceObj {
                name: name.to_owned(),
                attached: None,
                unit,
            })))
        })
    }
    /// Unbinds a device (its cdev closed): it is detached first, as the kernel does. Drop
    /// its [`DeviceAttachment`](crate::DeviceAttachment) before this.
    pub fn remove_device(&self, dev: DeviceId) -> Result<()> {
        let mut st = self.write();
        let old = st.device(dev)?.attached;
        if old.is_some() {
            bump(&self.counters.detaches, 1);
        }
        st.objects.remove(&dev.0);
        st.release_attachment(old);
        Ok(())
    }
    /// The name a device was added with.
    pub fn device_name(&self, dev: DeviceId) -> Option<String> {
        self.read().device(dev).ok().map(|d| d.name.clone())
    }
    /// The HWPT a device is attached to.
    pub fn attached_hwpt(&self, dev: DeviceId) -> Option<HwptId> {
        self.read().device(dev).ok()?.attached.map(HwptId)
    }
    /// Counters so far.
    pub fn counters(&self) -> SimCounters {
        self.counters.snapshot()
    }
    /// Live objects now.
    pub fn live_objects(&self) -> LiveObjects {
        let st = self.read();
        let mut live = LiveObjects::default();
        for o in st.objects.values() {
            match o {
                Object::Ioas(_) => live.ioas += 1,
                Object::Hwpt(h) => match h.kind {
                    HwptKind::Paging { auto: true, .. } => live.auto += 1,
                    HwptKind::Paging { .. } => live.nest_parents += 1,
                    HwptKind::Nested { .. } => live.nested += 1,
                },
                Object::Device(d) => live.attached_devices += usize::from(d.attached.is_some()),
            }
        }
        live
    }
    /// (IOTLB, paging-structure cache) entries of a nested HWPT.
    pub fn cache_sizes(&self, hwpt: HwptId) -> Option<(usize, usize)> {
        match &self.read().hwpt(hwpt.0, Op::Invalidate).ok()?.kind {
            HwptKind::Nested { caches, .. } => Some(lock_caches(caches).sizes()),
            HwptKind::Paging { .. } => None,
        }
    }
    /// Makes the next HWPT allocation (nest parent or nested) fail with `errno`.
    pub fn fail_next_alloc(&self, errno: i32) {
        self.inject().alloc = Some(errno);
    }
    /// Makes the next attach fail with `errno` (the old attachment stays).
    pub fn fail_next_attach(&self, errno: i32) {
        self.inject().attach = Some(errno);
    }
    /// Makes the next invalidation fail with `errno` after processing `after` entries.
    pub fn fail_next_invalidate(&self, errno: i32, after: u32) {
        self.inject().invalidate = Some((errno, after));
    }
}

/// The sim's counters, under their field names.
impl counter_set::CounterSource for SimHost {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        self.counters.visit(f);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_walk;
