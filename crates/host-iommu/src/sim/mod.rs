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
//! - **Test hooks**: [`SimCounters`], live-object counts, and one-shot failure injection.
//!
//! The sim never dereferences pointers: host memory is reached through [`HostMemory`], which
//! the VMM implements over its guest RAM.

#![forbid(unsafe_code)]

pub mod device;
pub mod ioas;
pub mod iotlb;
pub mod memory;
pub mod vm;
pub mod walk;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vtd_spec::regs::{Cap, Ecap};

pub use memory::{HostMemory, HostMemoryError, VecHostMemory};
pub use vm::{GuestRamMemory, GuestRamRegion, SimIommu};
pub use walk::{DmaAccess, DmaFault};

use crate::{
    DeviceId, DmaPerm, HostIommu, HostIommuError, HwCaps, HwInfo, HwInfoType, HwptId, IoasId, Op,
    PtId, Result, VtdHwInfo, VtdS1HwptData, VtdS1Invalidation,
};
use ioas::IoasMap;
use iotlb::NestedCaches;

/// How the simulated host IOMMU is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// ECAP.NEST (with SMTS, SSTS, FSTS): nested translation is available.
    pub nesting: bool,
    /// CAP.FS1GP: first-stage 1 GiB pages.
    pub fs1gp: bool,
    /// Host address width: 48, or 57 (which also sets CAP.FS5LP).
    pub aw_bits: u32,
    /// Report (and enforce) ERRATA_772415_SPR17.
    pub errata_772415: bool,
    /// ECAP.SRS: supervisor requests.
    pub srs: bool,
    /// ECAP.EAFS: extended accessed flag.
    pub eafs: bool,
    /// ECAP.SSADS: dirty tracking capability.
    pub dirty_tracking: bool,
    /// PASID bits reported for devices (0: none).
    pub max_pasid_log2: u8,
}

impl Default for SimConfig {
    /// A nesting-capable host like a recent Xeon without the erratum: 48-bit, FS1GP, no
    /// SRS/EAFS.
    fn default() -> Self {
        Self {
            nesting: true,
            fs1gp: true,
            aw_bits: 48,
            errata_772415: false,
            srs: false,
            eafs: false,
            dirty_tracking: false,
            max_pasid_log2: 0,
        }
    }
}

impl SimConfig {
    /// The capability register this host reports (§11.4.2).
    pub fn cap(&self) -> Cap {
        let five = self.aw_bits >= 57;
        Cap::new()
            .with_nd(6)
            .with_sagaw(if five { 0b1100 } else { 0b0100 })
            .with_mgaw((self.aw_bits.clamp(39, 57) - 1) as u8)
            .with_sllps(0b11)
            .with_psi(true)
            .with_mamv(18)
            .with_fs1gp(self.fs1gp)
            .with_fs5lp(five)
            .with_fro(0x22)
    }
    /// The extended capability register this host reports (§11.4.3).
    pub fn ecap(&self) -> Ecap {
        Ecap::new()
            .with_qi(true)
            .with_iro(0xf)
            .with_smts(true)
            .with_fsts(true)
            .with_ssts(true)
            .with_smpwc(true)
            .with_pt(true)
            .with_nest(self.nesting)
            .with_srs(self.srs)
            .with_eafs(self.eafs)
            .with_ssads(self.dirty_tracking)
            .with_pasid(self.max_pasid_log2 > 0)
            .with_pss(self.max_pasid_log2.saturating_sub(1).min(19))
    }
}

/// What the sim counted since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Successful nest-parent allocations.
    pub nest_parent_allocs: u64,
    /// Successful nested-HWPT allocations (binds).
    pub binds: u64,
    /// Successful attaches of a detached device.
    pub attaches: u64,
    /// Successful attaches of an attached device (replaces).
    pub replaces: u64,
    /// Detaches of an attached device.
    pub detaches: u64,
    /// `IOMMU_HWPT_INVALIDATE` calls.
    pub invalidation_calls: u64,
    /// Invalidation entries processed.
    pub invalidation_entries: u64,
    /// DMA translations requested.
    pub dma_translations: u64,
    /// DMA translations that faulted.
    pub dma_faults: u64,
    /// Nested translations answered by an IOTLB.
    pub iotlb_hits: u64,
    /// Nested translations that walked.
    pub iotlb_misses: u64,
}

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

#[derive(Debug)]
struct IoasObj {
    map: IoasMap,
}

#[derive(Debug)]
enum HwptKind {
    /// A kernel-managed stage-2 HWPT on an IOAS.
    Paging {
        ioas: u32,
        nest_parent: bool,
        auto: bool,
    },
    /// A user-managed stage-1 HWPT on a nest parent.
    Nested {
        parent: u32,
        data: VtdS1HwptData,
        /// Locked on its own: DMA through one HWPT never waits for another's walk.
        caches: Mutex<NestedCaches>,
    },
}

#[derive(Debug)]
struct HwptObj {
    kind: HwptKind,
    /// Attached devices.
    users: u32,
    /// Nested HWPTs on this one.
    children: u32,
}

#[derive(Debug)]
struct DeviceObj {
    name: String,
    attached: Option<u32>,
}

#[derive(Debug, Default)]
struct Inject {
    alloc: Option<i32>,
    attach: Option<i32>,
    invalidate: Option<(i32, u32)>,
}

#[derive(Debug)]
enum Object {
    Ioas(IoasObj),
    Hwpt(HwptObj),
    Device(DeviceObj),
}

#[derive(Debug, Default)]
struct State {
    next_id: u32,
    objects: BTreeMap<u32, Object>,
}

#[derive(Debug, Default)]
struct Counters {
    nest_parent_allocs: AtomicU64,
    binds: AtomicU64,
    attaches: AtomicU64,
    replaces: AtomicU64,
    detaches: AtomicU64,
    invalidation_calls: AtomicU64,
    invalidation_entries: AtomicU64,
    dma_translations: AtomicU64,
    dma_faults: AtomicU64,
    iotlb_hits: AtomicU64,
    iotlb_misses: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> SimCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimCounters {
            nest_parent_allocs: g(&self.nest_parent_allocs),
            binds: g(&self.binds),
            attaches: g(&self.attaches),
            replaces: g(&self.replaces),
            detaches: g(&self.detaches),
            invalidation_calls: g(&self.invalidation_calls),
            invalidation_entries: g(&self.invalidation_entries),
            dma_translations: g(&self.dma_translations),
            dma_faults: g(&self.dma_faults),
            iotlb_hits: g(&self.iotlb_hits),
            iotlb_misses: g(&self.iotlb_misses),
        }
    }
}

/// Locks a cache mutex; a panic elsewhere never makes the caches unusable.
fn lock_caches(m: &Mutex<NestedCaches>) -> MutexGuard<'_, NestedCaches> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The software host IOMMU (see the [module docs](self)).
///
/// Object operations take a write lock on the object table; DMA translation and
/// invalidation take a read lock plus the one nested HWPT's cache lock, so devices on
/// different HWPTs translate in parallel. Counters are atomics.
pub struct SimHost {
    config: SimConfig,
    mem: Arc<dyn HostMemory>,
    state: RwLock<State>,
    counters: Counters,
    inject: Mutex<Inject>,
}

impl fmt::Debug for SimHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHost")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn err(op: Op, errno: i32) -> HostIommuError {
    HostIommuError::kernel(op, errno)
}

impl State {
    fn alloc_id(&mut self, obj: Object) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.objects.insert(id, obj);
        id
    }
    fn ioas(&self, id: u32, op: Op) -> Result<&IoasObj> {
        match self.objects.get(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    fn ioas_mut(&mut self, id: u32, op: Op) -> Result<&mut IoasObj> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    fn hwpt(&self, id: u32, op: Op) -> Result<&HwptObj> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(h)) => Ok(h),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    fn hwpt_mut(&mut self, id: u32, op: Op) -> Result<&mut HwptObj> {
        match self.objects.get_mut(&id) {
            Some(Object::Hwpt(h)) => Ok(h),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    fn device(&self, dev: DeviceId) -> Result<&DeviceObj> {
        match self.objects.get(&dev.0) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(HostIommuError::UnknownDevice(dev)),
        }
    }
    fn device_mut(&mut self, dev: DeviceId) -> Result<&mut DeviceObj> {
        match self.objects.get_mut(&dev.0) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(HostIommuError::UnknownDevice(dev)),
        }
    }
    /// The IOAS a paging or nested HWPT finally translates through.
    fn hwpt_ioas(&self, id: u32) -> Option<u32> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Paging { ioas, .. },
                ..
            })) => Some(*ioas),
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Nested { parent, .. },
                ..
            })) => self.hwpt_ioas(*parent),
            _ => None,
        }
    }
    /// Whether any nest parent sits on `ioas`.
    fn ioas_backs_nest_parent(&self, ioas: u32) -> bool {
        self.objects.values().any(|o| {
            matches!(o, Object::Hwpt(HwptObj { kind: HwptKind::Paging { ioas: i, nest_parent: true, .. }, .. }) if *i == ioas)
        })
    }
    /// Stage-2 change on `ioas`: flush every nested HWPT built over it.
    fn flush_nested_on_ioas(&mut self, ioas: u32) {
        let parents: Vec<u32> = self
            .objects
            .iter()
            .filter_map(|(id, o)| match o {
                Object::Hwpt(HwptObj {
                    kind: HwptKind::Paging { ioas: i, .. },
                    ..
                }) if *i == ioas => Some(*id),
                _ => None,
            })
            .collect();
        for o in self.objects.values() {
            if let Object::Hwpt(HwptObj {
                kind: HwptKind::Nested { parent, caches, .. },
                ..
            }) = o
                && parents.contains(parent)
            {
                lock_caches(caches).flush();
            }
        }
    }
    /// Moves `dev` off `old` (if any): drops the user count and frees an unused automatic
    /// HWPT, as the kernel does.
    fn release_attachment(&mut self, old: Option<u32>) {
        let Some(old) = old else { return };
        let mut free = false;
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&old) {
            h.users = h.users.saturating_sub(1);
            free = h.users == 0 && matches!(h.kind, HwptKind::Paging { auto: true, .. });
        }
        if free {
            self.objects.remove(&old);
        }
    }
}

impl SimHost {
    /// A simulated host IOMMU over the VMM's host memory.
    pub fn new(config: SimConfig, mem: Arc<dyn HostMemory>) -> Self {
        Self {
            config,
            mem,
            state: RwLock::new(State::default()),
            counters: Counters::default(),
            inject: Mutex::new(Inject::default()),
        }
    }
    /// Its configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }
    /// The host memory it reads and writes.
    pub fn memory(&self) -> &Arc<dyn HostMemory> {
        &self.mem
    }
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn inject(&self) -> MutexGuard<'_, Inject> {
        self.inject.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds a (simulated) passthrough device to this host IOMMU; it starts detached.
    pub fn add_device(&self, name: &str) -> DeviceId {
        DeviceId(self.write().alloc_id(Object::Device(DeviceObj {
            name: name.to_owned(),
            attached: None,
        })))
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

    fn hw_info_now(&self) -> HwInfo {
        let c = &self.config;
        HwInfo {
            kind: HwInfoType::IntelVtd,
            vtd: Some(VtdHwInfo {
                flags: if c.errata_772415 {
                    VtdHwInfo::ERRATA_772415_SPR17
                } else {
                    0
                },
                cap: c.cap(),
                ecap: c.ecap(),
            }),
            max_pasid_log2: c.max_pasid_log2,
            capabilities: HwCaps(if c.dirty_tracking {
                HwCaps::DIRTY_TRACKING
            } else {
                0
            }),
        }
    }

    /// `intel_pasid_setup_nested`'s checks of the stage-1 configuration, done at attach.
    fn check_s1_for_attach(&self, data: &VtdS1HwptData) -> std::result::Result<(), i32> {
        match data.addr_width {
            48 => {}
            57 if self.config.aw_bits >= 57 => {}
            _ => return Err(libc::EINVAL),
        }
        if data.sre() && !self.config.srs {
            return Err(libc::EINVAL);
        }
        if data.eafe() && !self.config.eafs {
            return Err(libc::EINVAL);
        }
        Ok(())
    }
}

impl HostIommu for SimHost {
    fn hw_info(&self, dev: DeviceId) -> Result<HwInfo> {
        self.read().device(dev)?;
        Ok(self.hw_info_now())
    }

    fn ioas_alloc(&self) -> Result<IoasId> {
        Ok(IoasId(self.write().alloc_id(Object::Ioas(IoasObj {
            map: IoasMap::default(),
        }))))
    }

    fn ioas_map(&self, ioas: IoasId, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        let mut st = self.write();
        let errata_ro =
            self.config.errata_772415 && !perm.write && st.ioas_backs_nest_parent(ioas.0);
        let obj = st.ioas_mut(ioas.0, Op::IoasMap)?;
        obj.map
            .check_map(iova, hva, len, perm)
            .map_err(|e| err(Op::IoasMap, e.errno()))?;
        if errata_ro {
            tracing::warn!(
                "Read-only mapping is disallowed on the domain which serves as the parent in a nested configuration, due to HW errata (ERRATA_772415_SPR17)"
            );
            return Err(err(Op::IoasMap, libc::EINVAL));
        }
        obj.map
            .map(iova, hva, len, perm)
            .map_err(|e| err(Op::IoasMap, e.errno()))
    }

    fn ioas_unmap(&self, ioas: IoasId, iova: u64, len: u64) -> Result<u64> {
        let mut st = self.write();
        let n = st
            .ioas_mut(ioas.0, Op::IoasUnmap)?
            .map
            .unmap(iova, len)
            .map_err(|e| err(Op::IoasUnmap, e.errno()))?;
        st.flush_nested_on_ioas(ioas.0);
        Ok(n)
    }

    fn hwpt_alloc_nest_parent(&self, dev: DeviceId, ioas: IoasId) -> Result<HwptId> {
        let op = Op::AllocNestParent;
        let mut st = self.write();
        st.device(dev)?;
        let has_ro = st.ioas(ioas.0, op)?.map.has_read_only();
        if let Some(errno) = self.inject().alloc.take() {
            return Err(err(op, errno));
        }
        if !self.config.nesting {
            return Err(err(op, libc::EOPNOTSUPP));
        }
        if self.config.errata_772415 && has_ro {
            // Filling the new domain from the IOAS hits a read-only area.
            return Err(err(op, libc::EINVAL));
        }
        let id = st.alloc_id(Object::Hwpt(HwptObj {
            kind: HwptKind::Paging {
                ioas: ioas.0,
                nest_parent: true,
                auto: false,
            },
            users: 0,
            children: 0,
        }));
        bump(&self.counters.nest_parent_allocs, 1);
        Ok(HwptId(id))
    }

    fn hwpt_alloc_nested(
        &self,
        dev: DeviceId,
        parent: HwptId,
        data: &VtdS1HwptData,
    ) -> Result<HwptId> {
        let op = Op::AllocNested;
        let mut st = self.write();
        st.device(dev)?;
        match st.objects.get(&parent.0) {
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Paging {
                    nest_parent: true, ..
                },
                ..
            })) => {}
            // An IOAS pt_id with VTD_S1 data: the driver's paging alloc refuses user data.
            Some(Object::Ioas(_)) => return Err(err(op, libc::EOPNOTSUPP)),
            // Not a parent (automatic or plain paging HWPT, or a nested one).
            Some(Object::Hwpt(_)) => return Err(err(op, libc::EINVAL)),
            _ => return Err(err(op, libc::ENOENT)),
        }
        if let Some(errno) = self.inject().alloc.take() {
            return Err(err(op, errno));
        }
        if data.flags & !VtdS1HwptData::ALL_FLAGS != 0 || data.reserved != 0 {
            return Err(err(op, libc::EOPNOTSUPP));
        }
        let id = st.alloc_id(Object::Hwpt(HwptObj {
            kind: HwptKind::Nested {
                parent: parent.0,
                data: *data,
                caches: Mutex::new(NestedCaches::default()),
            },
            users: 0,
            children: 0,
        }));
        st.hwpt_mut(parent.0, op)?.children += 1;
        bump(&self.counters.binds, 1);
        Ok(HwptId(id))
    }

    fn attach(&self, dev: DeviceId, pt: PtId) -> Result<HwptId> {
        let op = Op::Attach;
        let mut st = self.write();
        let old = st.device(dev)?.attached;
        // Resolve the target (an IOAS gets an automatic HWPT, reused if one exists).
        let target = match st.objects.get(&pt.raw()) {
            Some(Object::Ioas(_)) if matches!(pt, PtId::Ioas(_)) => None,
            Some(Object::Hwpt(h)) if matches!(pt, PtId::Hwpt(_)) => {
                if let HwptKind::Nested { data, .. } = &h.kind {
                    self.check_s1_for_attach(data).map_err(|e| err(op, e))?;
                }
                Some(pt.raw())
            }
            _ => return Err(err(op, libc::ENOENT)),
        };
        if let Some(errno) = self.inject().attach.take() {
            return Err(err(op, errno));
        }
        let target = match target {
            Some(t) => t,
            None => {
                let ioas = pt.raw();
                let reuse = st.objects.iter().find_map(|(id, o)| match o {
                    Object::Hwpt(HwptObj {
                        kind:
                            HwptKind::Paging {
                                ioas: i,
                                auto: true,
                                ..
                            },
                        ..
                    }) if *i == ioas => Some(*id),
                    _ => None,
                });
                match reuse {
                    Some(id) => id,
                    None => st.alloc_id(Object::Hwpt(HwptObj {
                        kind: HwptKind::Paging {
                            ioas,
                            nest_parent: false,
                            auto: true,
                        },
                        users: 0,
                        children: 0,
                    })),
                }
            }
        };
        if old == Some(target) {
            return Ok(HwptId(target));
        }
        st.hwpt_mut(target, op)?.users += 1;
        st.device_mut(dev)?.attached = Some(target);
        st.release_attachment(old);
        if old.is_some() {
            bump(&self.counters.replaces, 1);
        } else {
            bump(&self.counters.attaches, 1);
        }
        Ok(HwptId(target))
    }

    fn detach(&self, dev: DeviceId) -> Result<()> {
        let mut st = self.write();
        let old = st.device_mut(dev)?.attached.take();
        if old.is_some() {
            bump(&self.counters.detaches, 1);
        }
        st.release_attachment(old);
        Ok(())
    }

    fn hwpt_invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32> {
        let op = Op::Invalidate;
        let st = self.read();
        bump(&self.counters.invalidation_calls, 1);
        let inject = self.inject().invalidate.take();
        let total = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let mut caches = match &st.hwpt(hwpt.0, op)?.kind {
            HwptKind::Nested { caches, .. } => lock_caches(caches),
            HwptKind::Paging { .. } => return Err(err(op, libc::EINVAL)),
        };
        let mut processed = 0u32;
        let mut failure = None;
        for e in entries {
            if let Some((errno, after)) = inject
                && processed >= after
            {
                failure = Some(errno);
                break;
            }
            if e.flags & !VtdS1Invalidation::LEAF != 0 || e.reserved != 0 {
                failure = Some(libc::EOPNOTSUPP);
                break;
            }
            if e.addr & 0xfff != 0 || (e.is_all() && e.addr != 0) {
                failure = Some(libc::EINVAL);
                break;
            }
            if e.is_all() {
                caches.flush();
            } else {
                let len = e.npages.saturating_mul(vtd_spec::PAGE_SIZE);
                let last = e.addr.saturating_add(len.saturating_sub(1));
                if e.npages != 0 {
                    caches.invalidate(e.addr, last, e.leaf());
                }
            }
            processed += 1;
        }
        if failure.is_none()
            && let Some((errno, after)) = inject
            && processed >= after
            && entries.is_empty()
        {
            failure = Some(errno);
        }
        bump(&self.counters.invalidation_entries, u64::from(processed));
        match failure {
            None => Ok(processed),
            Some(errno) => Err(HostIommuError::Invalidate {
                processed,
                total,
                errno,
            }),
        }
    }

    fn hwpt_destroy(&self, hwpt: HwptId) -> Result<()> {
        let op = Op::Destroy;
        let mut st = self.write();
        let h = st.hwpt(hwpt.0, op)?;
        if h.users > 0 || h.children > 0 {
            return Err(err(op, libc::EBUSY));
        }
        let parent = match h.kind {
            HwptKind::Nested { parent, .. } => Some(parent),
            HwptKind::Paging { .. } => None,
        };
        st.objects.remove(&hwpt.0);
        if let Some(p) = parent
            && let Ok(p) = st.hwpt_mut(p, op)
        {
            p.children = p.children.saturating_sub(1);
        }
        Ok(())
    }

    fn ioas_destroy(&self, ioas: IoasId) -> Result<()> {
        let op = Op::Destroy;
        let mut st = self.write();
        st.ioas(ioas.0, op)?;
        let in_use = st.objects.values().any(|o| {
            matches!(o, Object::Hwpt(HwptObj { kind: HwptKind::Paging { ioas: i, .. }, .. }) if *i == ioas.0)
        });
        if in_use {
            return Err(err(op, libc::EBUSY));
        }
        st.objects.remove(&ioas.0);
        Ok(())
    }

    fn as_sim(&self) -> Option<&SimHost> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_walk;
