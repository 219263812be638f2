//! The registry of passthrough devices and the vIOMMU observer that keeps them in sync.

use crate::binding::{Binding, BlockReason, Target};
use crate::checks::{CompatError, check_host_device};
use crate::counters::{AccelCounters, AccelCountersSnapshot, bump};
use crate::stage2::{RamRegion, Stage2};
use host_iommu::{
    DeviceAttachment, DeviceId, HostIommu, HostIommuError, VtdS1HwptData, VtdS1Invalidation,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{debug, info};
use vtd::invalidation::Invalidation;
use vtd::observer::{InvalidationObserver, UnitView};
use vtd_spec::SourceId;
use vtd_spec::pasid::Pgtt;
use vtd_spec::regs::TranslationTableMode;

/// The PASID used for requests without PASID. Like QEMU 11.0, only PASID 0 (Linux's RID_PASID)
/// is bound.
const PASID_0: u32 = 0;

/// A passthrough device to put behind the vIOMMU.
#[derive(Clone, Debug)]
pub struct HostDevice {
    /// The requester id the guest sees.
    pub sid: SourceId,
    /// A name for messages (e.g. the host PCI address or the VMM's disk name).
    pub name: String,
    /// The host IOMMU the device is bound to.
    pub host: Arc<dyn HostIommu>,
    /// The device's id in that host IOMMU.
    pub dev: DeviceId,
    /// Whether the device sits behind a PCI bridge (its requester id is aliased).
    pub behind_bridge: bool,
}

/// A passthrough device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// The device does not fit the vIOMMU configuration or the host.
    #[error("Cannot assign {device}")]
    Incompatible {
        /// The device name.
        device: String,
        /// Which check failed.
        #[source]
        source: CompatError,
    },
    /// The host refused an operation while setting the device up.
    #[error("Cannot assign {device}")]
    Host {
        /// The device name.
        device: String,
        /// The host's refusal.
        #[source]
        source: HostIommuError,
    },
}

/// Passthrough devices behind one vIOMMU. Register it with `Vtd::add_observer`.
#[derive(Debug)]
pub struct Accel {
    config: vtd::config::Config,
    ram: Vec<RamRegion>,
    inner: Mutex<Inner>,
    counters: AccelCounters,
}

#[derive(Debug, Default)]
struct Inner {
    stage2: Vec<Stage2>,
    bindings: BTreeMap<SourceId, Binding>,
}

impl Accel {
    /// A registry for a vIOMMU with `config`, whose guest RAM is `ram`.
    pub fn new(config: vtd::config::Config, ram: Vec<RamRegion>) -> Self {
        Self {
            config,
            ram,
            inner: Mutex::new(Inner::default()),
            counters: AccelCounters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and adds a device (at start or hot-plug): it is attached to a stage-2 nest parent
    /// that maps all guest RAM, shared with other devices on the same host IOMMU, and then
    /// synced with the guest's current tables.
    pub fn add_device(&self, unit: &dyn UnitView, device: HostDevice) -> Result<(), AccelError> {
        let name = device.name.clone();
        let incompatible = |source| AccelError::Incompatible {
            device: name.clone(),
            source,
        };
        let host_err = |source| AccelError::Host {
            device: name.clone(),
            source,
        };
        let mut inner = self.lock();
        if inner.bindings.contains_key(&device.sid) {
            return Err(incompatible(CompatError::Duplicate(device.sid.to_string())));
        }
        let info = device.host.hw_info(device.dev).map_err(host_err)?;
        check_host_device(&self.config, &info, device.behind_bridge).map_err(incompatible)?;
        let errata = info.vtd.is_some_and(|v| v.errata_772415());

        let mut attachment = DeviceAttachment::new(device.host.clone(), device.dev);
        let index = match inner
            .stage2
            .iter()
            .position(|s| Arc::ptr_eq(&s.host, &device.host))
        {
            Some(i) => i,
            None => {
                let s2 = Stage2::new(device.host.clone(), &self.ram, errata).map_err(host_err)?;
                inner.stage2.push(s2);
                inner.stage2.len() - 1
            }
        };
        let stage2 = &mut inner.stage2[index];
        let mut parent = None;
        for p in &stage2.parents {
            // A nest parent may span compatible host IOMMU units; the kernel refuses (EINVAL)
            // a device whose unit cannot use it, which then gets a parent of its own.
            match attachment.attach_parent(p.clone()) {
                Ok(()) => {
                    parent = Some(p.clone());
                    break;
                }
                Err(e) if e.errno() == Some(libc::EINVAL) => continue,
                Err(e) => return Err(host_err(e)),
            }
        }
        let parent = match parent {
            Some(p) => p,
            None => {
                let p = stage2.add_parent(device.dev).map_err(host_err)?;
                attachment.attach_parent(p.clone()).map_err(host_err)?;
                p
            }
        };
        bump(&self.counters.stage2_attaches);
        info!(target: "accel", device = %device.name, sid = %device.sid, "passthrough device added behind the vIOMMU");
        let mut binding = Binding::new(device.sid, device.name, attachment, parent);
        binding.apply(target(unit, device.sid), &self.counters);
        inner.bindings.insert(device.sid, binding);
        Ok(())
    }

    /// Removes a device (hot-unplug): it is detached, and its nested HWPT freed.
    pub fn remove_device(&self, sid: SourceId) -> bool {
        let mut inner = self.lock();
        let removed = inner.bindings.remove(&sid).is_some();
        let used: Vec<_> = inner.bindings.values().map(|b| b.parent_id()).collect();
        for s2 in &mut inner.stage2 {
            s2.parents.retain(|p| used.contains(&p.id()));
        }
        inner.stage2.retain(|s| !s.parents.is_empty());
        removed
    }

    /// What the host does with the DMA of the device at `sid`.
    pub fn state(&self, sid: SourceId) -> Option<Target> {
        self.lock().bindings.get(&sid).map(Binding::current)
    }

    /// Every device's binding, by requester id.
    pub fn bindings(&self) -> Vec<(SourceId, crate::binding::BindingView)> {
        self.lock()
            .bindings
            .iter()
            .map(|(sid, b)| (*sid, b.view()))
            .collect()
    }

    /// Number of stage-2 nest parents in use (devices on compatible host IOMMU units share one).
    pub fn nest_parents(&self) -> usize {
        self.lock().stage2.iter().map(|s| s.parents.len()).sum()
    }

    /// The counters.
    pub fn counters(&self) -> AccelCountersSnapshot {
        self.counters.snapshot()
    }

    /// Re-reads the PASID entry of every device `filter` selects and moves the host to match.
    fn sync(&self, unit: &dyn UnitView, filter: impl Fn(&Binding, &Target) -> bool) {
        let mut inner = self.lock();
        for b in inner.bindings.values_mut() {
            bump(&self.counters.syncs);
            let t = target(unit, b.sid);
            if filter(b, &t) {
                b.apply(t, &self.counters);
            }
        }
    }

    fn replay(&self, unit: &dyn UnitView) {
        bump(&self.counters.replays);
        self.sync(unit, |_, _| true);
    }

    /// Queues `inv` for every nested device in domain `did` (and PASID 0 when given).
    fn forward(&self, did: Option<u16>, pasid: Option<u32>, inv: VtdS1Invalidation) {
        if pasid.is_some_and(|p| p != PASID_0) {
            return;
        }
        let mut inner = self.lock();
        for b in inner.bindings.values_mut() {
            if let Target::Nested { did: bound, .. } = b.current()
                && did.is_none_or(|d| d == bound)
            {
                b.queue(inv);
            }
        }
    }
}

/// The passthrough counters, under their field names (the VMM prefixes them `accel_`).
impl counter_set::CounterSource for Accel {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        counter_set::CounterSource::visit(&self.counters, f);
    }
}

/// In the same domain as `did`: by the DID the host was bound from, or the one the guest now has.
fn in_domain(b: &Binding, t: &Target, did: u16) -> bool {
    b.current().did() == Some(did) || t.did() == Some(did)
}

/// What the guest's current programming asks for the device at `sid` (requests without PASID).
fn target(unit: &dyn UnitView, sid: SourceId) -> Target {
    let state = unit.state();
    if !state.translation_enabled {
        return Target::Stage2 { did: None };
    }
    if state.root.ttm() != TranslationTableMode::Scalable {
        return Target::Blocked(BlockReason::LegacyMode);
    }
    let entry = match unit.read_pasid_entry(sid, PASID_0) {
        Ok(e) if e.qw0.present() => e,
        Ok(_) | Err(_) => return Target::Blocked(BlockReason::NoEntry),
    };
    let did = entry.qw1.did();
    match entry.qw0.pgtt() {
        Pgtt::FirstStage => match VtdS1HwptData::from_pasid_entry(&entry) {
            Some(data) => Target::Nested { data, did },
            None => Target::Blocked(BlockReason::Unsupported),
        },
        Pgtt::PassThrough => Target::Stage2 { did: Some(did) },
        Pgtt::SecondStage | Pgtt::Nested | Pgtt::Reserved(_) => {
            Target::Blocked(BlockReason::Unsupported)
        }
    }
}

impl InvalidationObserver for Accel {
    fn invalidated(&self, unit: &dyn UnitView, inv: &Invalidation) {
        debug!(target: "accel", ?inv, "guest invalidation");
        match *inv {
            Invalidation::PasidCacheGlobal => self.sync(unit, |_, _| true),
            Invalidation::PasidCacheDomain { did } => self.sync(unit, |b, t| in_domain(b, t, did)),
            Invalidation::PasidCachePasid { did, pasid } => {
                if pasid == PASID_0 {
                    self.sync(unit, |b, t| in_domain(b, t, did));
                }
            }
            // Spec §6.5.2.1: after a context-cache invalidation the guest may skip the
            // PASID-cache flush, so every binding is re-read (QEMU does the same).
            Invalidation::ContextGlobal | Invalidation::ContextDomain { .. } => self.replay(unit),
            Invalidation::ContextDevice { sid, fm, .. } => {
                self.sync(unit, |b, _| b.sid.selected_by(sid, fm));
            }
            Invalidation::IotlbGlobal => self.forward(None, None, VtdS1Invalidation::all()),
            Invalidation::IotlbDomain { did } | Invalidation::IotlbPage { did, .. } => {
                self.forward(Some(did), None, VtdS1Invalidation::all());
            }
            Invalidation::PasidIotlbAll { did, pasid } => {
                self.forward(Some(did), Some(pasid), VtdS1Invalidation::all());
            }
            Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                ih,
            } => {
                let inv = VtdS1Invalidation::pasid_pages(addr, am, ih);
                self.forward(Some(did), Some(pasid), inv);
            }
        }
    }

    fn submission_done(&self, _unit: &dyn UnitView) {
        let mut inner = self.lock();
        for b in inner.bindings.values_mut() {
            b.flush(&self.counters);
        }
    }

    fn root_or_translation_changed(&self, unit: &dyn UnitView) {
        self.replay(unit);
    }
}
