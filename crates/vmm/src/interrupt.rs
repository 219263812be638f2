//! Interrupt delivery into KVM's irqchip, every device message through one remapping hook.
//!
//! ```text
//! legacy line (COM1)   EventFd ──irqfd──> GSI 4 ─┬─ kernel irqchip: IOAPIC pin 4
//!                                                └─ split: the RTE's MSI (ioapic), source-id
//!                                                   IOAPIC_SOURCE_ID ──┐
//! MSI/MSI-X vector     EventFd ──irqfd──> GSI n ── (source-id, message) ┤
//!                                                                       ▼
//!          GsiRouting: MsiRemap::remap(sid, message) ─┬─ Some(message) ─> MSI route ─> LAPIC
//!                                                     └─ None (blocked) ─> no route: dropped
//! vIOMMU fault event   KVM_SIGNAL_MSI (address, data) ──> LAPIC  (not a device interrupt:
//!                                                                 never remapped)
//! ```
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so [`GsiRouting`] keeps every route's source-id
//! and message as the device wrote it, and rebuilds the table through the hook on each change;
//! [`GsiRouting::refresh_all`] re-evaluates every route at once (after the guest invalidates
//! its interrupt entries). With the in-kernel irqchip the table also keeps KVM's default PIC and
//! IOAPIC routes for GSIs 0..24; with the split irqchip GSIs 0..24 are the IOAPIC pins' MSIs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_msi,
};
use kvm_ioctls::VmFd;

use crate::vm::{Irqchip, KvmVm};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vtd_spec::SourceId;

use crate::arch::x86_64::layout::IOAPIC_PINS;

/// Errors wiring interrupts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// eventfd creation failed.
    #[error("Cannot create an interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD failed.
    #[error("Cannot connect an irqfd to GSI {gsi}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_GSI_ROUTING failed.
    #[error("Cannot update the GSI routing table")]
    Routing(#[source] kvm_ioctls::Error),
    /// The routing table could not be built.
    #[error("Too many GSI routes")]
    TooManyRoutes,
    /// No GSI left.
    #[error("No free GSI for another MSI vector")]
    NoGsi,
    /// Triggering failed.
    #[error("Cannot signal an interrupt")]
    Signal(#[source] std::io::Error),
    /// KVM_SIGNAL_MSI failed.
    #[error("Cannot inject an MSI (address {address:#x}, data {data:#x})")]
    SignalMsi {
        /// MSI address.
        address: u64,
        /// MSI data.
        data: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An MSI message: what the device writes, and where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msi {
    /// Address (0xfeeX_XXXX; bits 11:5 carry extended destination ID bits).
    pub address: u64,
    /// Data (vector, delivery mode).
    pub data: u32,
}

impl Msi {
    /// Address bit 4: the message is in remappable format (VT-d 5.1.5.2).
    pub const REMAPPABLE: u64 = 1 << 4;
    /// Address bits 11:5 of a compatibility-format message: destination ID bits 14:8 when the
    /// guest uses KVM's extended destination ID (`KVM_FEATURE_MSI_EXT_DEST_ID`).
    const EXT_DEST_ID: u64 = 0x7f << 5;

    /// Whether the message reaches the LAPICs as KVM can route it: address bits 31:20 =
    /// 0xfee (anything else is a memory write, not an interrupt) and bits 39:32 clear (KVM
    /// refuses a whole routing table holding one route with those bits under
    /// KVM_CAP_X2APIC_API, where bits 63:40 carry destination bits 31:8).
    pub fn is_interrupt(self) -> bool {
        self.address & 0xfff0_0000 == 0xfee0_0000 && (self.address >> 32) & 0xff == 0
    }

    /// The message as KVM reads it with KVM_CAP_X2APIC_API: a compatibility-format message's
    /// extended destination ID bits (address 11:5) moved to destination bits 14:8 (address
    /// 46:40). Remappable-format messages and messages already carrying high destination bits
    /// are left as they are.
    pub fn with_ext_dest_id_in_high_address(self) -> Msi {
        let ext = self.address & Self::EXT_DEST_ID;
        if ext == 0 || self.address & Self::REMAPPABLE != 0 || self.address >> 40 != 0 {
            return self;
        }
        Msi {
            address: (self.address & !Self::EXT_DEST_ID) | ((ext >> 5) << 40),
            data: self.data,
        }
    }
}

/// Where every device interrupt message goes before KVM sees it: the vIOMMU's interrupt
/// remapping (the adapter over `vtd::Vtd` is installed with [`GsiRouting::set_remap`]), or
/// [`IdentityRemap`].
pub trait MsiRemap: Send + Sync {
    /// The message `msi` written by the requester `sid` as it reaches the
    /// LAPICs, with destination ID bits 31:8 in address bits 63:40 (KVM's `address_hi` with
    /// KVM_CAP_X2APIC_API); `None` when the message is blocked.
    fn remap(&self, sid: SourceId, msi: Msi) -> Option<Msi>;
}

/// No interrupt remapping: every message is delivered as written (its extended destination
/// ID moved where KVM reads it).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityRemap;

impl MsiRemap for IdentityRemap {
    fn remap(&self, _sid: SourceId, msi: Msi) -> Option<Msi> {
        Some(msi.with_ext_dest_id_in_high_address())
    }
}

/// A route's input: who sent the message, and the message as it wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiSource {
    /// Requester ID; the IOAPIC's is [`crate::arch::x86_64::layout::IOAPIC_SOURCE_ID`].
    pub sid: SourceId,
    /// The message.
    pub msi: Msi,
}

/// Highest GSI handed out (KVM's default table size is 1024 entries; stay within it).
const MAX_GSI: u32 = 1023;

/// One GSI route, as plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To an irqchip pin.
    Irqchip {
        /// KVM_IRQCHIP_PIC_MASTER, _SLAVE or _IOAPIC.
        chip: u32,
        /// Pin on that chip.
        pin: u32,
    },
    /// An MSI message.
    Msi(Msi),
}

impl Route {
    /// The KVM routing entry for `gsi`.
    pub fn to_kvm(self, gsi: u32) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            ..Default::default()
        };
        match self {
            Route::Irqchip { chip, pin } => {
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
            }
            Route::Msi(msi) => {
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi = kvm_irq_routing_msi {
                    address_lo: msi.address as u32,
                    address_hi: (msi.address >> 32) as u32,
                    data: msi.data,
                    ..Default::default()
                };
            }
        }
        e
    }
}

/// KVM's default x86 routes: GSIs 0..16 to the PICs and the IOAPIC, 16..24 to the IOAPIC.
pub fn default_routes() -> Vec<(u32, Route)> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            routes.push((gsi, Route::Irqchip { chip, pin }));
        }
        routes.push((
            gsi,
            Route::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: gsi,
            },
        ));
    }
    routes
}

/// The whole routing table for `irqchip`: KVM's default routes with the in-kernel irqchip, then
/// every source's remapped message; blocked messages, and messages that are no interrupt
/// ([`Msi::is_interrupt`]; a guest may write anything into an MSI-X table), get no route.
pub fn build_routes(
    irqchip: Irqchip,
    sources: &BTreeMap<u32, MsiSource>,
    remap: &dyn MsiRemap,
) -> Vec<(u32, Route)> {
    let mut routes = match irqchip {
        Irqchip::InKernel => default_routes(),
        Irqchip::Split | Irqchip::None => Vec::new(),
    };
    routes.extend(sources.iter().filter_map(|(&gsi, source)| {
        remap
            .remap(source.sid, source.msi)
            .filter(|m| m.is_interrupt())
            .map(|m| (gsi, Route::Msi(m)))
    }));
    routes
}

/// The VM's GSI routing table: default irqchip routes plus MSI routes, each remapped.
pub struct GsiRouting {
    vm: Arc<KvmVm>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    sources: BTreeMap<u32, MsiSource>,
    remap: Arc<dyn MsiRemap>,
    next_gsi: u32,
    /// GSIs given back by dropped vectors (hot-unplugged devices), handed out again lowest
    /// first, so add/remove cycles never run out.
    released: BTreeSet<u32>,
}

impl std::fmt::Debug for GsiRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("GsiRouting")
            .field("sources", &state.sources)
            .finish_non_exhaustive()
    }
}

impl GsiRouting {
    /// A routing table for `vm`, with no MSI routes yet and no remapping.
    pub fn new(vm: Arc<KvmVm>) -> Self {
        GsiRouting {
            vm,
            state: Mutex::new(RoutingState {
                sources: BTreeMap::new(),
                remap: Arc::new(IdentityRemap),
                next_gsi: IOAPIC_PINS,
                released: BTreeSet::new(),
            }),
        }
    }

    /// Reserves a GSI for an MSI vector: a released one if any, else the next unused one.
    pub fn allocate_gsi(&self) -> Result<u32, Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gsi) = state.released.pop_first() {
            return Ok(gsi);
        }
        if state.next_gsi > MAX_GSI {
            return Err(Error::NoGsi);
        }
        let gsi = state.next_gsi;
        state.next_gsi += 1;
        Ok(gsi)
    }

    /// Gives back a GSI that no longer has a route or an irqfd.
    fn release_gsi(&self, gsi: u32) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert!(!state.sources.contains_key(&gsi), "GSI {gsi} still routed");
        state.released.insert(gsi);
    }

    /// How many MSI routes the table holds (a live-object count: a dropped vector takes its
    /// route with it).
    pub fn msi_routes(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sources
            .len()
    }

    /// Routes `gsi` to `source`'s message through the remapping hook (or removes its route
    /// with `None`) and commits the table.
    pub fn set_msi_route(&self, gsi: u32, source: Option<MsiSource>) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match source {
            Some(s) => state.sources.insert(gsi, s),
            None => state.sources.remove(&gsi),
        };
        self.commit(&state)
    }

    /// Puts every route behind `remap` and re-evaluates them all.
    pub fn set_remap(&self, remap: Arc<dyn MsiRemap>) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.remap = remap;
        self.commit(&state)
    }

    /// Re-evaluates every route through the remapping hook and commits the table once (after
    /// the guest invalidated interrupt entries).
    pub fn refresh_all(&self) -> Result<(), Error> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.commit(&state)
    }

    fn commit(&self, state: &RoutingState) -> Result<(), Error> {
        let routes = build_routes(self.vm.irqchip(), &state.sources, state.remap.as_ref());
        let entries: Vec<kvm_irq_routing_entry> =
            routes.into_iter().map(|(gsi, r)| r.to_kvm(gsi)).collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| Error::TooManyRoutes)?;
        self.vm.set_gsi_routing(&table).map_err(Error::Routing)
    }
}

/// An edge-triggered interrupt line a device pulses (the PIT's IRQ0, the GED's hot-plug
/// event); [`IrqLine`] in the VMM, a counter in tests.
pub trait EdgeLine: Send + Sync {
    /// One edge: one interrupt request.
    fn pulse(&self);
}

impl EdgeLine for IrqLine {
    fn pulse(&self) {
        if let Err(e) = self.trigger() {
            log_limit::limited!(warn, "Cannot raise GSI {}: {e}", self.gsi);
        }
    }
}

/// A legacy interrupt line: an eventfd wired to an IOAPIC pin (edge: each write is a pulse).
#[derive(Debug)]
pub struct IrqLine {
    evt: EventFd,
    gsi: u32,
}

impl IrqLine {
    /// Creates the line for `gsi` and registers it as an irqfd.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<Self, Error> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&evt, gsi)
            .map_err(|source| Error::Irqfd { gsi, source })?;
        Ok(IrqLine { evt, gsi })
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Pulses the line.
    pub fn trigger(&self) -> Result<(), Error> {
        self.evt.write(1).map_err(Error::Signal)
    }

    /// A second handle on the eventfd (for devices that want to own a trigger).
    pub fn try_clone_eventfd(&self) -> Result<EventFd, Error> {
        self.evt.try_clone().map_err(Error::EventFd)
    }
}

/// Who signals a vector's eventfd, and so how masking is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorSignaller {
    /// The VMM's device model, which never signals a masked vector: the irqfd stays
    /// connected.
    Vmm,
    /// The host kernel (a VFIO device's `VFIO_DEVICE_SET_IRQS` eventfd), which signals whatever
    /// the guest's mask says: the irqfd is connected only while the vector is configured and
    /// unmasked. A signal that arrives while masked stays in the eventfd and is delivered when
    /// the irqfd is connected again (KVM polls the eventfd at KVM_IRQFD).
    Kernel,
}

/// One MSI(-X) vector: an irqfd on its own GSI whose route carries the message.
#[derive(Debug)]
pub struct MsiVector {
    vm: Arc<KvmVm>,
    routing: Arc<GsiRouting>,
    sid: SourceId,
    gsi: u32,
    evt: EventFd,
    signaller: VectorSignaller,
    state: Mutex<VectorState>,
}

#[derive(Debug)]
struct VectorState {
    msi: Option<Msi>,
    masked: bool,
    irqfd: bool,
    /// The message the GSI is routed to: the vector's while it is unmasked, none while masked.
    routed: Option<Msi>,
}

impl MsiVector {
    /// Allocates a GSI and an irqfd for a new, unconfigured and masked vector of the
    /// requester `sid`.
    pub fn new(vm: &Arc<KvmVm>, routing: Arc<GsiRouting>, sid: SourceId) -> Result<Self, Error> {
        Self::with_signaller(vm, routing, sid, VectorSignaller::Vmm)
    }

    /// Like [`MsiVector::new`], for eventfds `signaller` writes.
    pub fn with_signaller(
        vm: &Arc<KvmVm>,
        routing: Arc<GsiRouting>,
        sid: SourceId,
        signaller: VectorSignaller,
    ) -> Result<Self, Error> {
        let gsi = routing.allocate_gsi()?;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let irqfd = signaller == VectorSignaller::Vmm;
        if irqfd {
            vm.register_irqfd(&evt, gsi)
                .map_err(|source| Error::Irqfd { gsi, source })?;
        }
        Ok(MsiVector {
            vm: vm.clone(),
            routing,
            sid,
            gsi,
            evt,
            signaller,
            state: Mutex::new(VectorState {
                msi: None,
                masked: true,
                irqfd,
                routed: None,
            }),
        })
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Sets the message and mask. The GSI is routed to the message (through the remapping
    /// hook) only while the vector is unmasked: a masked vector sends nothing, so its message is
    /// not evaluated (with interrupt remapping, an entry the guest has already freed would
    /// otherwise count as a fault). The route is updated only when that changes; a kernel-signalled
    /// vector's irqfd is disconnected before its route goes and connected after it is set, so a
    /// signal never meets a missing route.
    pub fn configure(&self, msi: Msi, masked: bool) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if masked {
            self.connect_irqfd(&mut state, false)?;
        }
        let route = (!masked).then_some(msi);
        if state.routed != route {
            let source = route.map(|msi| MsiSource { sid: self.sid, msi });
            self.routing.set_msi_route(self.gsi, source)?;
            state.routed = route;
        }
        if !masked {
            self.connect_irqfd(&mut state, true)?;
        }
        state.msi = Some(msi);
        state.masked = masked;
        Ok(())
    }

    /// Connects or disconnects a kernel-signalled vector's irqfd (the VMM's own vectors stay
    /// connected: their device never signals a masked vector).
    fn connect_irqfd(&self, state: &mut VectorState, connect: bool) -> Result<(), Error> {
        if self.signaller != VectorSignaller::Kernel || state.irqfd == connect {
            return Ok(());
        }
        let gsi = self.gsi;
        if connect {
            self.vm.register_irqfd(&self.evt, gsi)
        } else {
            self.vm.unregister_irqfd(&self.evt, gsi)
        }
        .map_err(|source| Error::Irqfd { gsi, source })?;
        state.irqfd = connect;
        Ok(())
    }

    /// Fires the vector; returns `false` (nothing sent) if it is masked or unconfigured, so the
    /// caller can set its pending bit.
    pub fn trigger(&self) -> Result<bool, Error> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.masked || state.msi.is_none() {
            return Ok(false);
        }
        self.evt.write(1).map_err(Error::Signal)?;
        Ok(true)
    }

    /// The irqfd, for devices that signal it from their own threads.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl Drop for MsiVector {
    /// A vector that goes (its device was unplugged, or the VM stops) takes its irqfd and its
    /// GSI route with it, and gives the GSI back for the next device.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if state.irqfd && self.vm.unregister_irqfd(&self.evt, self.gsi).is_err() {
            // Still wired to this GSI in KVM: never hand it out again.
            return;
        }
        if state.routed.is_some() && self.routing.set_msi_route(self.gsi, None).is_err() {
            return;
        }
        self.routing.release_gsi(self.gsi);
    }
}

/// The MSI-X vectors of one device: vector `n` gets its own GSI and irqfd the first time it is
/// configured. This is what a PCI device's MSI-X capability drives (it keeps mask and pending
/// state itself, and never triggers a masked vector).
pub struct KvmMsiController {
    vm: Arc<KvmVm>,
    routing: Arc<GsiRouting>,
    sid: SourceId,
    signaller: VectorSignaller,
    vectors: RwLock<BTreeMap<u16, MsiVector>>,
}

impl std::fmt::Debug for KvmMsiController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vectors = self.vectors.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("KvmMsiController")
            .field("vectors", &vectors.len())
            .finish()
    }
}

impl KvmMsiController {
    /// A controller with no vectors yet for the device with requester ID `sid` (the source-id
    /// its messages are remapped with).
    pub fn new(vm: Arc<KvmVm>, routing: Arc<GsiRouting>, sid: SourceId) -> Self {
        Self::with_signaller(vm, routing, sid, VectorSignaller::Vmm)
    }

    /// A controller whose vectors' eventfds `signaller` writes.
    pub fn with_signaller(
        vm: Arc<KvmVm>,
        routing: Arc<GsiRouting>,
        sid: SourceId,
        signaller: VectorSignaller,
    ) -> Self {
        KvmMsiController {
            vm,
            routing,
            sid,
            signaller,
            vectors: RwLock::new(BTreeMap::new()),
        }
    }

    /// Creates vectors `0..count` (masked and unconfigured where new) and returns their
    /// eventfds, for a VFIO device's `VFIO_DEVICE_SET_IRQS`.
    pub fn eventfds(&self, count: u16) -> std::io::Result<Vec<EventFd>> {
        let mut vectors = self.vectors.write().unwrap_or_else(|e| e.into_inner());
        let mut fds = Vec::with_capacity(usize::from(count));
        for vector in 0..count {
            let v = match vectors.entry(vector) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(
                    MsiVector::with_signaller(
                        &self.vm,
                        self.routing.clone(),
                        self.sid,
                        self.signaller,
                    )
                    .map_err(std::io::Error::other)?,
                ),
            };
            fds.push(v.eventfd().try_clone()?);
        }
        Ok(fds)
    }

    /// Installs `msi` for `vector` (allocating its GSI and irqfd on first use).
    pub fn configure(&self, vector: u16, msi: Msi, masked: bool) -> std::io::Result<()> {
        let mut vectors = self.vectors.write().unwrap_or_else(|e| e.into_inner());
        let v = match vectors.entry(vector) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(
                MsiVector::with_signaller(&self.vm, self.routing.clone(), self.sid, self.signaller)
                    .map_err(std::io::Error::other)?,
            ),
        };
        v.configure(msi, masked).map_err(std::io::Error::other)
    }

    /// Fires `vector`; unconfigured or masked vectors are ignored (logged at debug level).
    pub fn trigger(&self, vector: u16) {
        let vectors = self.vectors.read().unwrap_or_else(|e| e.into_inner());
        match vectors.get(&vector).map(MsiVector::trigger) {
            Some(Ok(true)) => {}
            Some(Ok(false)) | None => tracing::debug!("MSI-X vector {vector} is not deliverable"),
            Some(Err(e)) => log_limit::limited!(warn, "MSI-X vector {vector}: {e}"),
        }
    }
}

/// Registers KVM ioeventfds for MMIO doorbells (virtio queue notifications): a guest write of
/// any width at the address signals the eventfd without an exit to the VMM.
#[derive(Clone, Debug)]
pub struct KvmIoEvents {
    vm: Arc<KvmVm>,
}

impl KvmIoEvents {
    /// For `vm`.
    pub fn new(vm: Arc<KvmVm>) -> Self {
        KvmIoEvents { vm }
    }

    /// Makes writes at `addr` signal `fd`.
    pub fn register(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        let at = kvm_ioctls::IoEventAddress::Mmio(addr);
        self.vm
            .register_ioevent(fd, &at, kvm_ioctls::NoDatamatch)
            .map_err(std::io::Error::from)
    }

    /// Undoes [`KvmIoEvents::register`].
    pub fn unregister(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        let at = kvm_ioctls::IoEventAddress::Mmio(addr);
        self.vm
            .unregister_ioevent(fd, &at, kvm_ioctls::NoDatamatch)
            .map_err(std::io::Error::from)
    }
}

/// Injects one-off MSIs with KVM_SIGNAL_MSI (the vIOMMU's fault event).
#[derive(Clone, Debug)]
pub struct MsiSignaller {
    vm: Arc<KvmVm>,
}

impl MsiSignaller {
    /// For `vm`.
    pub fn new(vm: Arc<KvmVm>) -> Self {
        MsiSignaller { vm }
    }

    /// Sends `data` to `address`. KVM returns 0 when the interrupt was blocked (e.g. masked
    /// LAPIC), which is not an error.
    pub fn deliver(&self, address: u64, data: u32) -> Result<(), Error> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|source| Error::SignalMsi {
                address,
                data,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_kvm() {
        let r = default_routes();
        assert_eq!(r.len(), 16 * 2 + 8);
        let of = |gsi| {
            r.iter()
                .filter(|(g, _)| *g == gsi)
                .map(|(_, r)| *r)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of(9),
            vec![
                Route::Irqchip {
                    chip: KVM_IRQCHIP_PIC_SLAVE,
                    pin: 1
                },
                Route::Irqchip {
                    chip: KVM_IRQCHIP_IOAPIC,
                    pin: 9
                }
            ]
        );
        assert_eq!(
            of(20),
            vec![Route::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: 20
            }]
        );
        assert!(of(24).is_empty());
    }

    #[test]
    fn kvm_entries() {
        let e = Route::Msi(Msi {
            address: 0x1_fee0_1000,
            data: 0x4041,
        })
        .to_kvm(30);
        assert_eq!((e.gsi, e.type_), (30, KVM_IRQ_ROUTING_MSI));
        let e = Route::Irqchip {
            chip: KVM_IRQCHIP_IOAPIC,
            pin: 4,
        }
        .to_kvm(4);
        assert_eq!((e.gsi, e.type_), (4, KVM_IRQ_ROUTING_IRQCHIP));
    }

    /// Blocks one requester, moves another's messages to vector 0x99.
    struct TestRemap;

    impl MsiRemap for TestRemap {
        fn remap(&self, sid: SourceId, msi: Msi) -> Option<Msi> {
            match sid.0 {
                0x0008 => None,
                0x0010 => Some(Msi { data: 0x99, ..msi }),
                _ => Some(msi),
            }
        }
    }

    fn sources() -> BTreeMap<u32, MsiSource> {
        let msi = |data| Msi {
            address: 0xfee0_0000,
            data,
        };
        BTreeMap::from([
            (
                4,
                MsiSource {
                    sid: SourceId(0xff00),
                    msi: msi(0x24),
                },
            ),
            (
                24,
                MsiSource {
                    sid: SourceId(0x0008),
                    msi: msi(0x41),
                },
            ),
            (
                25,
                MsiSource {
                    sid: SourceId(0x0010),
                    msi: msi(0x42),
                },
            ),
        ])
    }

    #[test]
    fn every_route_goes_through_the_hook() {
        let split = build_routes(Irqchip::Split, &sources(), &TestRemap);
        assert_eq!(
            split,
            vec![
                (
                    4,
                    Route::Msi(Msi {
                        address: 0xfee0_0000,
                        data: 0x24
                    })
                ),
                (
                    25,
                    Route::Msi(Msi {
                        address: 0xfee0_0000,
                        data: 0x99
                    })
                ),
            ],
            "split: no irqchip routes, the blocked requester has no route, the other is remapped"
        );
        let kernel = build_routes(Irqchip::InKernel, &sources(), &IdentityRemap);
        assert_eq!(kernel.len(), default_routes().len() + 3);
        assert_eq!(
            &kernel[..default_routes().len()],
            default_routes().as_slice()
        );
    }

    #[test]
    fn messages_that_are_no_interrupt_get_no_route() {
        let mut all = sources();
        for (gsi, address) in [
            (30, 0x0),
            (31, 0xfed0_0000),
            (32, 0x1_fee0_0000),
            (33, 0xffff_ffff_ffff_ffff),
        ] {
            let msi = Msi {
                address,
                data: 0x41,
            };
            all.insert(
                gsi,
                MsiSource {
                    sid: SourceId(0x18),
                    msi,
                },
            );
        }
        let gsis: Vec<u32> = build_routes(Irqchip::Split, &all, &IdentityRemap)
            .into_iter()
            .map(|(gsi, _)| gsi)
            .collect();
        assert_eq!(gsis, vec![4, 24, 25]);
        let high = Msi {
            address: 0xfee0_0000 | (0x1234 << 40),
            data: 0x41,
        };
        assert!(
            high.is_interrupt(),
            "destination bits 31:8 in address 63:40"
        );
    }

    #[test]
    fn identity_moves_the_extended_destination_id() {
        // APIC ID 0x1234: bits 7:0 in address 19:12, bits 14:8 in address 11:5.
        let compat = Msi {
            address: 0xfee3_4000 | (0x12 << 5),
            data: 0x30,
        };
        assert_eq!(
            IdentityRemap.remap(SourceId(8), compat),
            Some(Msi {
                address: 0xfee3_4000 | (0x12 << 40),
                data: 0x30
            })
        );
        for unchanged in [
            Msi {
                address: 0xfee3_4000,
                data: 0x30,
            },
            Msi {
                address: 0xfee0_0000 | Msi::REMAPPABLE | (0x12 << 5),
                data: 0,
            },
        ] {
            assert_eq!(IdentityRemap.remap(SourceId(8), unchanged), Some(unchanged));
        }
    }
}
