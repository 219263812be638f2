//! Interrupt delivery into the in-kernel irqchip.
//!
//! ```text
//! legacy line (COM1)   EventFd ──irqfd──> GSI 4 ──> IOAPIC pin 4
//! MSI/MSI-X vector     EventFd ──irqfd──> GSI n ──GSI routing (MSI address/data)──> LAPIC
//! vIOMMU fault event   KVM_SIGNAL_MSI (address, data) ──> LAPIC
//! ```
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so [`GsiRouting`] keeps KVM's default PIC and
//! IOAPIC routes for GSIs 0..24 and adds one MSI route per allocated vector above them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_msi,
};
use kvm_ioctls::VmFd;

use crate::vm::KvmVm;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

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

/// The VM's GSI routing table: default irqchip routes plus MSI routes.
pub struct GsiRouting {
    vm: Arc<KvmVm>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    msi: BTreeMap<u32, Msi>,
    next_gsi: u32,
}

impl std::fmt::Debug for GsiRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("GsiRouting")
            .field("msi", &state.msi)
            .finish()
    }
}

impl GsiRouting {
    /// A routing table for `vm`, with no MSI routes yet.
    pub fn new(vm: Arc<KvmVm>) -> Self {
        GsiRouting {
            vm,
            state: Mutex::new(RoutingState {
                msi: BTreeMap::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    /// Reserves a GSI for an MSI vector.
    pub fn allocate_gsi(&self) -> Result<u32, Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.next_gsi > MAX_GSI {
            return Err(Error::NoGsi);
        }
        let gsi = state.next_gsi;
        state.next_gsi += 1;
        Ok(gsi)
    }

    /// How many MSI routes the table holds (a live-object count: a dropped vector takes its
    /// route with it).
    pub fn msi_routes(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .msi
            .len()
    }

    /// Routes `gsi` to `msi` (or removes its route with `None`) and commits the table.
    pub fn set_msi_route(&self, gsi: u32, msi: Option<Msi>) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match msi {
            Some(m) => state.msi.insert(gsi, m),
            None => state.msi.remove(&gsi),
        };
        let mut routes = default_routes();
        routes.extend(state.msi.iter().map(|(&gsi, &m)| (gsi, Route::Msi(m))));
        let entries: Vec<kvm_irq_routing_entry> =
            routes.into_iter().map(|(gsi, r)| r.to_kvm(gsi)).collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| Error::TooManyRoutes)?;
        self.vm.set_gsi_routing(&table).map_err(Error::Routing)
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
}

impl MsiVector {
    /// Allocates a GSI and an irqfd for a new, unconfigured and masked vector.
    pub fn new(vm: &Arc<KvmVm>, routing: Arc<GsiRouting>) -> Result<Self, Error> {
        Self::with_signaller(vm, routing, VectorSignaller::Vmm)
    }

    /// Like [`MsiVector::new`], for eventfds `signaller` writes.
    pub fn with_signaller(
        vm: &Arc<KvmVm>,
        routing: Arc<GsiRouting>,
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
            gsi,
            evt,
            signaller,
            state: Mutex::new(VectorState {
                msi: None,
                masked: true,
                irqfd,
            }),
        })
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Sets the message and mask; the route is updated only when the message changes.
    pub fn configure(&self, msi: Msi, masked: bool) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.msi != Some(msi) {
            self.routing.set_msi_route(self.gsi, Some(msi))?;
            state.msi = Some(msi);
        }
        state.masked = masked;
        if self.signaller == VectorSignaller::Kernel && state.irqfd == masked {
            let gsi = self.gsi;
            if masked {
                self.vm
                    .unregister_irqfd(&self.evt, gsi)
                    .map_err(|source| Error::Irqfd { gsi, source })?;
            } else {
                self.vm
                    .register_irqfd(&self.evt, gsi)
                    .map_err(|source| Error::Irqfd { gsi, source })?;
            }
            state.irqfd = !masked;
        }
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
    /// GSI route with it.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if state.irqfd {
            let _ = self.vm.unregister_irqfd(&self.evt, self.gsi);
        }
        if state.msi.is_some() {
            let _ = self.routing.set_msi_route(self.gsi, None);
        }
    }
}

/// The MSI-X vectors of one device: vector `n` gets its own GSI and irqfd the first time it is
/// configured. This is what a PCI device's MSI-X capability drives (it keeps mask and pending
/// state itself, and never triggers a masked vector).
pub struct KvmMsiController {
    vm: Arc<KvmVm>,
    routing: Arc<GsiRouting>,
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
    /// A controller with no vectors yet.
    pub fn new(vm: Arc<KvmVm>, routing: Arc<GsiRouting>) -> Self {
        Self::with_signaller(vm, routing, VectorSignaller::Vmm)
    }

    /// A controller whose vectors' eventfds `signaller` writes.
    pub fn with_signaller(
        vm: Arc<KvmVm>,
        routing: Arc<GsiRouting>,
        signaller: VectorSignaller,
    ) -> Self {
        KvmMsiController {
            vm,
            routing,
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
                    MsiVector::with_signaller(&self.vm, self.routing.clone(), self.signaller)
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
                MsiVector::with_signaller(&self.vm, self.routing.clone(), self.signaller)
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
}
