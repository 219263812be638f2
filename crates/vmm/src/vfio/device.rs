//! A host PCI function assigned through VFIO, as a function on the VMM's PCI bus.
//!
//! ```text
//!  config access ─► emulated bytes? ── BARs, ROM, interrupt line/pin, MSI-X control, MSI ─► here
//!                   └─ every other byte ─► the device's config region (vfio-pci virtualises it)
//!  BAR access    ─► mmapped areas: KVM memory slots, no exit (BarSlot, moved with the BAR)
//!                   MSI-X table / PBA: emulated (MsixConfig), never mmapped
//!                   the rest of a BAR that is not mmap-able: the device's region (pread/pwrite)
//!  MSI-X enable  ─► VFIO_DEVICE_SET_IRQS: one eventfd per vector = that vector's KVM irqfd;
//!                   the guest's table writes move its GSI route, its masks connect or
//!                   disconnect the irqfd (VectorSignaller::Kernel)
//!  MSI enable    ─► VFIO_DEVICE_SET_IRQS (MSI): one eventfd per enabled vector = its irqfd,
//!                   routed with the capability's address and data (msi::MsiCap)
//!  INTx (pin ≠ 0) ─► intx::Intx: a level line into the IOAPIC pin of the DSDT's _PRT, the
//!                   interrupt line register preset to that GSI; handed back to VFIO while
//!                   MSI-X is enabled
//! ```
//!
//! MSI is emulated too (msi::MsiCap: VFIO_PCI_MSI_IRQ_INDEX, a KVM irqfd per vector); a
//! function may have any of MSI-X, MSI and INTx. VFIO serves one interrupt type at a time:
//! INTx is handed back to it whenever neither MSI nor MSI-X is enabled.

use std::sync::Arc;

use devices::MsiController;
use devices::pci::PciDevice;
use devices::pci::config::{BarKind, BarSpec, PciConfiguration, PciIds};
use devices::pci::msix::{MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, MsixConfig, MsixLayout};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};

use vmm_sys_util::eventfd::EventFd;

use super::Error;
use super::intx::{Intx, IntxRoute};
use super::msi::MsiCap;
use super::sys::{BarSlot, RegionMmap};
use crate::interrupt::KvmMsiController;
use crate::vm::KvmVm;

/// What the function needs of the host device (vfio-ioctls' `VfioDevice`; a fake in tests).
pub trait HostFunction: Send + Sync {
    /// Size of VFIO region `index` (0 when absent).
    fn region_size(&self, index: u32) -> u64;
    /// Offset of region `index` in the device file.
    fn region_offset(&self, index: u32) -> u64;
    /// Whether region `index` may be mmapped, and its sparse mmap areas `(offset, size)` when
    /// the kernel lists them (`None`: all of it).
    fn mmap_areas(&self, index: u32) -> Option<Option<Vec<(u64, u64)>>>;
    /// Reads region `index` at `offset` (in bounds).
    fn read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Writes region `index` at `offset` (in bounds).
    fn write(&self, index: u32, offset: u64, data: &[u8]);
    /// `VFIO_DEVICE_SET_IRQS` for MSI-X with one eventfd per vector.
    fn enable_msix(&self, fds: &[EventFd]) -> Result<(), String>;
    /// `VFIO_DEVICE_SET_IRQS` disabling MSI-X.
    fn disable_msix(&self) -> Result<(), String>;
    /// `VFIO_DEVICE_SET_IRQS` for MSI with one eventfd per enabled vector.
    fn enable_msi(&self, fds: &[EventFd]) -> Result<(), String>;
    /// `VFIO_DEVICE_SET_IRQS` disabling MSI.
    fn disable_msi(&self) -> Result<(), String>;
    /// Maps `len` bytes of the device file at `offset`.
    fn mmap(&self, offset: u64, len: usize) -> std::io::Result<RegionMmap>;
    /// Whether VFIO offers the function's INTx.
    fn intx_available(&self) -> bool;
    /// `VFIO_DEVICE_SET_IRQS` for INTx: `trigger` signalled (the line masked) on each
    /// interrupt; `unmask`, if given, unmasks it when signalled.
    fn enable_intx(&self, trigger: &EventFd, unmask: Option<&EventFd>) -> Result<(), String>;
    /// `VFIO_DEVICE_SET_IRQS` disabling INTx.
    fn disable_intx(&self) -> Result<(), String>;
    /// `VFIO_DEVICE_SET_IRQS` unmasking INTx.
    fn unmask_intx(&self) -> Result<(), String>;
}

impl HostFunction for VfioDevice {
    fn region_size(&self, index: u32) -> u64 {
        self.get_region_size(index)
    }
    fn region_offset(&self, index: u32) -> u64 {
        self.get_region_offset(index)
    }
    fn mmap_areas(&self, index: u32) -> Option<Option<Vec<(u64, u64)>>> {
        if self.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return None;
        }
        let mut areas = None;
        for cap in self.get_region_caps(index) {
            if let VfioRegionInfoCap::SparseMmap(s) = cap {
                areas
                    .get_or_insert_with(Vec::new)
                    .extend(s.areas.iter().map(|a| (a.offset, a.size)));
            }
        }
        Some(areas)
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.region_read(index, data, offset);
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.region_write(index, data, offset);
    }
    fn enable_msix(&self, fds: &[EventFd]) -> Result<(), String> {
        VfioDevice::enable_msix(self, fds.iter().collect()).map_err(|e| e.to_string())
    }
    fn disable_msix(&self) -> Result<(), String> {
        VfioDevice::disable_msix(self).map_err(|e| e.to_string())
    }
    fn enable_msi(&self, fds: &[EventFd]) -> Result<(), String> {
        VfioDevice::enable_msi(self, fds.iter().collect()).map_err(|e| e.to_string())
    }
    fn disable_msi(&self) -> Result<(), String> {
        VfioDevice::disable_msi(self).map_err(|e| e.to_string())
    }
    fn mmap(&self, offset: u64, len: usize) -> std::io::Result<RegionMmap> {
        RegionMmap::new(self, offset, len)
    }
    fn intx_available(&self) -> bool {
        self.get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)
            .is_some_and(|irq| irq.count == 1)
    }
    fn enable_intx(&self, trigger: &EventFd, unmask: Option<&EventFd>) -> Result<(), String> {
        self.enable_irq(VFIO_PCI_INTX_IRQ_INDEX, vec![trigger])
            .map_err(|e| e.to_string())?;
        if let Some(unmask) = unmask {
            self.set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![unmask])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    fn disable_intx(&self) -> Result<(), String> {
        self.disable_irq(VFIO_PCI_INTX_IRQ_INDEX)
            .map_err(|e| e.to_string())
    }
    fn unmask_intx(&self) -> Result<(), String> {
        self.unmask_irq(VFIO_PCI_INTX_IRQ_INDEX)
            .map_err(|e| e.to_string())
    }
}

/// Where the function's MSI-X vectors go: a per-device controller that also hands out each
/// vector's eventfd (the VMM's `KvmMsiController` with `VectorSignaller::Kernel`).
pub trait VectorEventFds: MsiController + std::fmt::Debug {
    /// The eventfds of vectors `0..count`, created masked where new.
    fn eventfds(&self, count: u16) -> std::io::Result<Vec<EventFd>>;
}

impl VectorEventFds for KvmMsiController {
    fn eventfds(&self, count: u16) -> std::io::Result<Vec<EventFd>> {
        KvmMsiController::eventfds(self, count)
    }
}

/// Runs once when dropped: what releases a device's host binding (reset, detach, address
/// space) on teardown and on a failed start alike.
pub struct Release(Option<Box<dyn FnOnce() + Send>>);

impl Release {
    /// Runs `f` on drop.
    pub fn new(f: Box<dyn FnOnce() + Send>) -> Self {
        Self(Some(f))
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

const PAGE: u64 = 4096;
const CAP_MSI: u8 = 0x05;
const CAP_MSIX: u8 = 0x11;
/// Bytes of the type-0 header the VMM emulates: BARs (0x10..0x28) and the ROM BAR (0x30).
const BAR_BYTES: std::ops::Range<usize> = 0x10..0x28;
const ROM_BYTES: std::ops::Range<usize> = 0x30..0x34;
/// Interrupt line (scratch, preset to the GSI) and pin (the device's, or 0: no INTx).
const INTX_BYTES: std::ops::Range<usize> = 0x3c..0x3e;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
const COMMAND_BYTES: std::ops::Range<usize> = 0x04..0x06;

/// An mmapped area of a BAR.
#[derive(Debug)]
struct Area {
    /// Offset in the BAR.
    offset: u64,
    slot: BarSlot,
}

#[derive(Debug)]
struct Msix {
    /// Offset of the capability in configuration space.
    cap: usize,
    config: MsixConfig,
    controller: Arc<dyn VectorEventFds>,
    /// Whether VFIO currently has the eventfds.
    vfio_enabled: bool,
}

/// The assigned function.
pub struct VfioPciDevice {
    // Dropped in this order, after `drop` turned MSI-X, MSI and INTx off: the INTx line (its
    // irqfd or IOAPIC reader), the KVM slots and BAR mmaps, then the host binding (reset,
    // detach, DMA mappings, address space) while the device is still open, then the device.
    /// The INTx line, when the device has a pin and the VM an IOAPIC.
    intx: Option<Intx>,
    areas: Vec<(usize, Area)>,
    _release: Release,
    name: String,
    device: Arc<dyn HostFunction>,
    config: PciConfiguration,
    config_size: u64,
    msix: Option<Msix>,
    msi: Option<MsiCap>,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn read_phys(device: &dyn HostFunction, size: u64, offset: usize, data: &mut [u8]) {
    if (offset as u64).saturating_add(data.len() as u64) > size {
        data.fill(0xff);
        return;
    }
    device.read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, data);
}

fn phys_u32(device: &dyn HostFunction, size: u64, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    read_phys(device, size, offset, &mut b);
    u32::from_le_bytes(b)
}

/// Capabilities in the device's legacy configuration space: `(id, offset)`.
fn capabilities(device: &dyn HostFunction, size: u64) -> Vec<(u8, usize)> {
    let mut caps = Vec::new();
    let status = phys_u32(device, size, 0x04) >> 16;
    if status & (1 << 4) == 0 {
        return caps;
    }
    let mut next = (phys_u32(device, size, 0x34) & 0xfc) as usize;
    // At most 48 capabilities fit in 192 bytes: a looping list stops there.
    while next >= 0x40 && caps.len() < 48 {
        let header = phys_u32(device, size, next);
        caps.push((header as u8, next));
        next = ((header >> 8) & 0xfc) as usize;
    }
    caps
}

/// `[start, end)` with the pages of `holes` cut out, page aligned.
fn cut(start: u64, end: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces = vec![(start, end)];
    for &(h0, h1) in holes {
        let (h0, h1) = (h0 & !(PAGE - 1), h1.div_ceil(PAGE) * PAGE);
        pieces = pieces
            .into_iter()
            .flat_map(|(a, b)| {
                let mut out = Vec::new();
                if h1 <= a || h0 >= b {
                    out.push((a, b));
                } else {
                    if a < h0 {
                        out.push((a, h0));
                    }
                    if h1 < b {
                        out.push((h1, b));
                    }
                }
                out
            })
            .collect();
    }
    pieces.retain(|(a, b)| b > a);
    pieces
}

impl VfioPciDevice {
    /// Builds the function over an opened, reset `device`; `controller` delivers its MSI-X
    /// vectors, `msi_controller` its MSI vectors, `intx_route` says where its INTx goes. The
    /// mmap-able parts of its BARs become memory slots of `vm` (without a VM, every BAR access
    /// is trapped). `release` runs when the function goes, or now if it cannot be built.
    pub fn new(
        name: &str,
        device: Arc<dyn HostFunction>,
        vm: Option<&Arc<KvmVm>>,
        controller: Arc<dyn VectorEventFds>,
        msi_controller: Arc<dyn VectorEventFds>,
        intx_route: IntxRoute,
        release: Release,
    ) -> Result<Self, Error> {
        let size = device.region_size(VFIO_PCI_CONFIG_REGION_INDEX);
        let id = phys_u32(&*device, size, 0);
        let class = phys_u32(&*device, size, 0x08);
        let subsystem = phys_u32(&*device, size, 0x2c);
        let ids = PciIds {
            vendor_id: id as u16,
            device_id: (id >> 16) as u16,
            revision_id: class as u8,
            prog_if: (class >> 8) as u8,
            subclass: (class >> 16) as u8,
            class_code: (class >> 24) as u8,
            subsystem_vendor_id: subsystem as u16,
            subsystem_id: (subsystem >> 16) as u16,
        };
        let header_type = (phys_u32(&*device, size, 0x0c) >> 16) as u8 & 0x7f;
        if header_type != 0 {
            return Err(Error::Unsupported {
                device: name.to_owned(),
                why: "it is a bridge (header type 1); only endpoints can be assigned".into(),
            });
        }
        let mut config = PciConfiguration::new(&ids);

        let caps = capabilities(&*device, size);
        let msix_cap = caps.iter().find(|(id, _)| *id == CAP_MSIX).map(|&(_, o)| o);
        let layout = msix_cap.map(|cap| {
            let control = (phys_u32(&*device, size, cap) >> 16) as u16;
            let table = phys_u32(&*device, size, cap + 4);
            let pba = phys_u32(&*device, size, cap + 8);
            MsixLayout {
                vectors: (control & 0x7ff) + 1,
                table_bar: (table & 7) as u8,
                table_offset: table & !7,
                pba_bar: (pba & 7) as u8,
                pba_offset: pba & !7,
            }
        });
        let msi = caps.iter().find(|(id, _)| *id == CAP_MSI).map(|&(_, cap)| {
            let control = (phys_u32(&*device, size, cap) >> 16) as u16;
            MsiCap::new(cap, control, msi_controller)
        });

        let mut bar = 0usize;
        let mut areas = Vec::new();
        while bar < 6 {
            let index = bar;
            let raw = phys_u32(&*device, size, 0x10 + 4 * index);
            let bar_size = device.region_size(index as u32);
            let kind = if raw & 0b110 == 0b100 {
                BarKind::Memory64
            } else {
                BarKind::Memory32
            };
            bar += if kind == BarKind::Memory64 { 2 } else { 1 };
            if bar_size == 0 {
                continue;
            }
            if raw & 1 != 0 {
                tracing::warn!(
                    device = name,
                    bar = index,
                    "I/O BAR not offered to the guest"
                );
                continue;
            }
            let spec = BarSpec {
                index,
                size: bar_size.max(16).next_power_of_two(),
                kind,
                prefetchable: raw & 0b1000 != 0,
            };
            config
                .add_memory_bar(spec)
                .map_err(|e| Error::Unsupported {
                    device: name.to_owned(),
                    why: format!("BAR {index}: {e}"),
                })?;
            let (Some(vm), Some(sparse)) = (vm, device.mmap_areas(index as u32)) else {
                continue;
            };
            let mmap_able: Vec<(u64, u64)> = match sparse {
                Some(areas) => areas
                    .into_iter()
                    .map(|(o, l)| (o, o.saturating_add(l)))
                    .collect(),
                None => vec![(0, bar_size)],
            };
            let mut holes = Vec::new();
            if let Some(layout) = &layout {
                if usize::from(layout.table_bar) == index {
                    let o = u64::from(layout.table_offset);
                    holes.push((o, o + layout.table_size()));
                }
                if usize::from(layout.pba_bar) == index {
                    let o = u64::from(layout.pba_offset);
                    holes.push((o, o + layout.pba_size()));
                }
            }
            let region_offset = device.region_offset(index as u32);
            for (a, b) in mmap_able {
                for (start, end) in cut(a.min(bar_size), b.min(bar_size), &holes) {
                    if start % PAGE != 0 || (end - start) % PAGE != 0 {
                        continue;
                    }
                    let mmap = device
                        .mmap(region_offset + start, (end - start) as usize)
                        .map_err(|source| Error::Mmap {
                            device: name.to_owned(),
                            bar: index,
                            source,
                        })?;
                    areas.push((
                        index,
                        Area {
                            offset: start,
                            slot: BarSlot::new(vm.clone(), mmap),
                        },
                    ));
                }
            }
        }
        let msix = match (msix_cap, layout) {
            (Some(cap), Some(layout)) => {
                let vectors: Arc<dyn MsiController> = controller.clone();
                let config = MsixConfig::new(layout, vectors).map_err(|e| Error::Unsupported {
                    device: name.to_owned(),
                    why: format!("MSI-X: {e}"),
                })?;
                Some(Msix {
                    cap,
                    config,
                    controller,
                    vfio_enabled: false,
                })
            }
            _ => None,
        };
        let pin = (phys_u32(&*device, size, INTERRUPT_LINE) >> 8) as u8;
        let mut intx = None;
        if pin != 0 && device.intx_available() {
            match intx_route.connect(pin, &device) {
                Ok(line) => intx = line,
                Err(e) => tracing::warn!(device = name, "INTx not offered: cannot wire it: {e}"),
            }
        }
        if let Some(line) = &mut intx {
            config.write(INTERRUPT_LINE, &[line.gsi() as u8]);
            // As a reset function offers it (QEMU's vfio-pci does the same at realize).
            if let Err(e) = line.enable(&*device) {
                tracing::warn!(device = name, "INTx not offered: cannot enable it: {e}");
                intx = None;
            }
        }
        Ok(Self {
            name: name.to_owned(),
            device,
            config,
            config_size: size,
            areas,
            msix,
            msi,
            intx,
            _release: release,
        })
    }

    fn emulated(&self, p: usize) -> bool {
        BAR_BYTES.contains(&p)
            || ROM_BYTES.contains(&p)
            || INTX_BYTES.contains(&p)
            || self.msix_control(p)
            || self.msi.as_ref().is_some_and(|m| m.contains(p))
    }

    fn msix_control(&self, p: usize) -> bool {
        self.msix
            .as_ref()
            .is_some_and(|m| (m.cap + 2..m.cap + 4).contains(&p))
    }

    fn emulated_byte(&self, p: usize) -> u8 {
        if let Some(msix) = self.msix.as_ref().filter(|_| self.msix_control(p)) {
            let mut b = [0u8; 2];
            read_phys(&*self.device, self.config_size, msix.cap + 2, &mut b);
            let mut control =
                u16::from_le_bytes(b) & !(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
            if msix.config.enabled() {
                control |= MSIX_CONTROL_ENABLE;
            }
            if msix.config.function_masked() {
                control |= MSIX_CONTROL_FUNCTION_MASK;
            }
            return control.to_le_bytes()[p - msix.cap - 2];
        }
        if let Some(msi) = self.msi.as_ref().filter(|m| m.contains(p)) {
            return msi.read(p);
        }
        if p == INTERRUPT_PIN {
            let mut pin = [0u8; 1];
            if self.intx.is_some() {
                read_phys(&*self.device, self.config_size, p, &mut pin);
            }
            return pin[0];
        }
        let mut b = [0u8; 1];
        self.config.read(p, &mut b);
        b[0]
    }

    /// Whether VFIO has MSI or MSI-X eventfds.
    fn message_interrupts_on(&self) -> bool {
        self.msix.as_ref().is_some_and(|m| m.vfio_enabled)
            || self
                .msi
                .as_ref()
                .is_some_and(|m| m.vfio_vectors().is_some())
    }

    /// Hands the vectors' eventfds to VFIO when the guest enables MSI-X, takes them back when
    /// it disables it.
    fn sync_msix_enable(&mut self) {
        let Some(want) = self.msix.as_ref().map(|m| m.config.enabled()) else {
            return;
        };
        if Some(want) == self.msix.as_ref().map(|m| m.vfio_enabled) {
            return;
        }
        if want {
            self.set_intx(false);
        }
        let Some(msix) = &mut self.msix else {
            return;
        };
        let result = if want {
            msix.controller
                .eventfds(msix.config.layout().vectors)
                .map_err(|e| e.to_string())
                .and_then(|fds| self.device.enable_msix(&fds))
        } else {
            self.device.disable_msix()
        };
        match result {
            Ok(()) => msix.vfio_enabled = want,
            Err(e) => {
                tracing::error!(device = %self.name, "Cannot {} MSI-X: {e}", if want { "enable" } else { "disable" })
            }
        }
        if !self.message_interrupts_on() {
            self.set_intx(true);
        }
    }

    /// Follows the guest's MSI capability: the vectors' routes, and VFIO's MSI eventfds
    /// handed over when the guest enables MSI, taken back when it disables it.
    fn sync_msi(&mut self) {
        let Some(msi) = &self.msi else {
            return;
        };
        let want = msi.enabled().then(|| msi.vectors());
        let have = msi.vfio_vectors();
        if have.is_some() && have != want {
            if let Err(e) = self.device.disable_msi() {
                tracing::error!(device = %self.name, "Cannot disable MSI: {e}");
            }
            if let Some(msi) = &mut self.msi {
                msi.set_vfio_vectors(None);
            }
        }
        if want.is_some() && have != want {
            self.set_intx(false);
        }
        let Some(msi) = &mut self.msi else {
            return;
        };
        msi.configure();
        if let Some(n) = want.filter(|_| have != want) {
            match msi
                .eventfds()
                .map_err(|e| e.to_string())
                .and_then(|fds| self.device.enable_msi(&fds))
            {
                Ok(()) => msi.set_vfio_vectors(Some(n)),
                Err(e) => tracing::error!(device = %self.name, "Cannot enable MSI: {e}"),
            }
        }
        if !self.message_interrupts_on() {
            self.set_intx(true);
        }
    }

    /// Gives INTx to VFIO or takes it back: VFIO offers one interrupt type at a time, and a
    /// function with MSI or MSI-X enabled does not use INTx (PCI 3.0 6.8.1.3, 6.8.2).
    fn set_intx(&mut self, on: bool) {
        let Some(line) = &mut self.intx else {
            return;
        };
        let result = if on {
            line.enable(&*self.device)
        } else {
            line.disable(&*self.device)
        };
        if let Err(e) = result {
            tracing::error!(device = %self.name, "Cannot {} INTx: {e}", if on { "enable" } else { "disable" });
        }
    }

    fn msix_bar_part(&self, index: usize, offset: u64) -> Option<(bool, u64)> {
        let l = self.msix.as_ref()?.config.layout();
        let t = u64::from(l.table_offset);
        let p = u64::from(l.pba_offset);
        if usize::from(l.table_bar) == index && offset >= t && offset - t < l.table_size() {
            return Some((true, offset - t));
        }
        if usize::from(l.pba_bar) == index && offset >= p && offset - p < l.pba_size() {
            return Some((false, offset - p));
        }
        None
    }
}

impl PciDevice for VfioPciDevice {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        read_phys(&*self.device, self.config_size, offset, data);
        for (i, byte) in data.iter_mut().enumerate() {
            let p = offset.saturating_add(i);
            if self.emulated(p) {
                *byte = self.emulated_byte(p);
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let mut control = None;
        let mut msi_written = false;
        for (i, &byte) in data.iter().enumerate() {
            let Some(p) = offset.checked_add(i) else {
                break;
            };
            if (p as u64) >= self.config_size {
                break;
            }
            if let Some(cap) = self
                .msix
                .as_ref()
                .map(|m| m.cap)
                .filter(|_| self.msix_control(p))
            {
                let mut c = control.unwrap_or_else(|| {
                    let mut b = [0u8; 2];
                    for (j, x) in b.iter_mut().enumerate() {
                        *x = self.emulated_byte(cap + 2 + j);
                    }
                    u16::from_le_bytes(b)
                });
                let shift = 8 * (p - cap - 2);
                c = (c & !(0xff << shift)) | (u16::from(byte) << shift);
                control = Some(c);
            } else if let Some(msi) = self.msi.as_mut().filter(|m| m.contains(p)) {
                msi.write(p, byte);
                msi_written = true;
            } else if self.emulated(p) {
                self.config.write(p, &[byte]);
            } else {
                if COMMAND_BYTES.contains(&p) {
                    self.config.write(p, &[byte]);
                }
                self.device
                    .write(VFIO_PCI_CONFIG_REGION_INDEX, p as u64, &[byte]);
            }
        }
        if let (Some(c), Some(msix)) = (control, &mut self.msix) {
            msix.config.set_control(c);
            self.sync_msix_enable();
        }
        if msi_written {
            self.sync_msi();
        }
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        match self.msix_bar_part(index, offset) {
            Some((table, o)) => {
                if let Some(msix) = &self.msix {
                    if table {
                        msix.config.read_table(o, data);
                    } else {
                        msix.config.read_pba(o, data);
                    }
                }
            }
            None => {
                let size = self.device.region_size(index as u32);
                if offset.saturating_add(data.len() as u64) > size {
                    data.fill(0xff);
                } else {
                    self.device.read(index as u32, offset, data);
                }
            }
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        match self.msix_bar_part(index, offset) {
            Some((true, o)) => {
                if let Some(msix) = &mut self.msix {
                    msix.config.write_table(o, data);
                }
            }
            Some((false, _)) => {}
            None => {
                let size = self.device.region_size(index as u32);
                if offset.saturating_add(data.len() as u64) <= size {
                    self.device.write(index as u32, offset, data);
                }
            }
        }
    }

    fn bar_moved(&mut self, index: usize, _old: Option<u64>, new: Option<u64>) {
        for (bar, area) in self.areas.iter_mut().filter(|(b, _)| *b == index) {
            let gpa = new.and_then(|base| base.checked_add(area.offset));
            if let Err(e) = area.slot.place(gpa) {
                tracing::error!(device = %self.name, bar, "Cannot map a BAR area into the guest: {e}");
            }
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        if self.msix.as_ref().is_some_and(|m| m.vfio_enabled)
            && let Err(e) = self.device.disable_msix()
        {
            tracing::warn!(device = %self.name, "Cannot disable MSI-X: {e}");
        }
        if self
            .msi
            .as_ref()
            .is_some_and(|m| m.vfio_vectors().is_some())
            && let Err(e) = self.device.disable_msi()
        {
            tracing::warn!(device = %self.name, "Cannot disable MSI: {e}");
        }
        if let Some(line) = &mut self.intx
            && let Err(e) = line.disable(&*self.device)
        {
            tracing::warn!(device = %self.name, "Cannot disable INTx: {e}");
        }
        // The fields go next, in their declared order.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::MsiMessage;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    const BAR0: u64 = 0x4000;

    /// A host NVMe-like function: BAR0 (64-bit, 16 KiB) with the MSI-X table at 0x2000 and
    /// the PBA at 0x3000, an MSI capability at 0x40 and MSI-X (4 vectors) at 0x60.
    #[derive(Default)]
    struct FakeFunction {
        config: Mutex<Vec<u8>>,
        bar0: Mutex<Vec<u8>>,
        msix: Mutex<Vec<Option<usize>>>,
        /// VFIO MSI calls: the eventfd count, or `None` for a disable.
        msi: Mutex<Vec<Option<usize>>>,
        /// VFIO INTx calls, in order.
        intx: Mutex<Vec<&'static str>>,
        no_msix: bool,
    }

    impl FakeFunction {
        fn new(no_msix: bool) -> Arc<Self> {
            let mut c = vec![0u8; 4096];
            c[0..4].copy_from_slice(&0x5845_1b36u32.to_le_bytes());
            c[0x06] = 0x10; // capability list
            c[0x08..0x0c].copy_from_slice(&0x0108_0202u32.to_le_bytes());
            c[0x10] = 0b1100; // 64-bit, prefetchable
            c[0x34] = 0x40;
            c[0x3d] = 1; // INTA
            c[0x40] = CAP_MSI;
            c[0x41] = if no_msix { 0 } else { 0x60 };
            // MSI: 64-bit, per-vector masking, 4 vectors capable (0x40..0x58).
            c[0x42..0x44].copy_from_slice(&0x0184u16.to_le_bytes());
            if !no_msix {
                c[0x60] = CAP_MSIX;
                c[0x62] = 3; // 4 vectors
                c[0x64..0x68].copy_from_slice(&0x2000u32.to_le_bytes());
                c[0x68..0x6c].copy_from_slice(&0x3000u32.to_le_bytes());
            }
            let mut bar0 = vec![0u8; BAR0 as usize];
            bar0[0x100] = 0x5a;
            Arc::new(Self {
                config: Mutex::new(c),
                bar0: Mutex::new(bar0),
                msix: Mutex::new(Vec::new()),
                msi: Mutex::new(Vec::new()),
                intx: Mutex::new(Vec::new()),
                no_msix,
            })
        }
        fn config_byte(&self, at: usize) -> u8 {
            self.config.lock().unwrap()[at]
        }
    }

    impl HostFunction for FakeFunction {
        fn region_size(&self, index: u32) -> u64 {
            match index {
                0 => BAR0,
                VFIO_PCI_CONFIG_REGION_INDEX => 4096,
                _ => 0,
            }
        }
        fn region_offset(&self, index: u32) -> u64 {
            u64::from(index) << 40
        }
        fn mmap_areas(&self, _index: u32) -> Option<Option<Vec<(u64, u64)>>> {
            Some(None)
        }
        fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
            let src = match index {
                0 => self.bar0.lock().unwrap(),
                _ => self.config.lock().unwrap(),
            };
            let o = offset as usize;
            data.copy_from_slice(&src[o..o + data.len()]);
        }
        fn write(&self, index: u32, offset: u64, data: &[u8]) {
            let mut dst = match index {
                0 => self.bar0.lock().unwrap(),
                _ => self.config.lock().unwrap(),
            };
            let o = offset as usize;
            dst[o..o + data.len()].copy_from_slice(data);
        }
        fn enable_msix(&self, fds: &[EventFd]) -> Result<(), String> {
            assert!(!self.no_msix);
            self.msix.lock().unwrap().push(Some(fds.len()));
            Ok(())
        }
        fn disable_msix(&self) -> Result<(), String> {
            self.msix.lock().unwrap().push(None);
            Ok(())
        }
        fn enable_msi(&self, fds: &[EventFd]) -> Result<(), String> {
            self.msi.lock().unwrap().push(Some(fds.len()));
            Ok(())
        }
        fn disable_msi(&self) -> Result<(), String> {
            self.msi.lock().unwrap().push(None);
            Ok(())
        }
        fn mmap(&self, _offset: u64, _len: usize) -> std::io::Result<RegionMmap> {
            unreachable!("no VM: nothing is mmapped")
        }
        fn intx_available(&self) -> bool {
            true
        }
        fn enable_intx(&self, _trigger: &EventFd, unmask: Option<&EventFd>) -> Result<(), String> {
            assert!(
                unmask.is_none(),
                "the split irqchip unmasks at the EOI itself"
            );
            self.intx.lock().unwrap().push("enable");
            Ok(())
        }
        fn disable_intx(&self) -> Result<(), String> {
            self.intx.lock().unwrap().push("disable");
            Ok(())
        }
        fn unmask_intx(&self) -> Result<(), String> {
            self.intx.lock().unwrap().push("unmask");
            Ok(())
        }
    }

    #[derive(Debug, Default)]
    struct FakeVectors {
        configured: Mutex<Vec<(u16, MsiMessage, bool)>>,
    }

    impl MsiController for FakeVectors {
        fn configure(&self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()> {
            self.configured.lock().unwrap().push((vector, msg, masked));
            Ok(())
        }
        fn trigger(&self, _vector: u16) {
            panic!("the kernel signals a VFIO device's vectors, never the VMM");
        }
    }

    impl VectorEventFds for FakeVectors {
        fn eventfds(&self, count: u16) -> std::io::Result<Vec<EventFd>> {
            (0..count).map(|_| EventFd::new(0)).collect()
        }
    }

    fn build(
        no_msix: bool,
    ) -> (
        Result<VfioPciDevice, Error>,
        Arc<FakeFunction>,
        Arc<FakeVectors>,
        Arc<AtomicBool>,
    ) {
        build_with(no_msix, IntxRoute::None)
    }

    fn build_with(
        no_msix: bool,
        intx: IntxRoute,
    ) -> (
        Result<VfioPciDevice, Error>,
        Arc<FakeFunction>,
        Arc<FakeVectors>,
        Arc<AtomicBool>,
    ) {
        let f = FakeFunction::new(no_msix);
        let v = Arc::new(FakeVectors::default());
        let released = Arc::new(AtomicBool::new(false));
        let r = released.clone();
        let release = Release::new(Box::new(move || r.store(true, Ordering::SeqCst)));
        let d = VfioPciDevice::new("dev0", f.clone(), None, v.clone(), v.clone(), intx, release);
        (d, f, v, released)
    }

    fn r32(d: &mut VfioPciDevice, at: usize) -> u32 {
        let mut b = [0u8; 4];
        d.read_config(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_space_is_the_device_s_with_bars_rom_intx_and_msi_emulated() {
        let (d, f, _, released) = build(false);
        let mut d = d.unwrap();
        assert_eq!(r32(&mut d, 0), 0x5845_1b36);
        assert_eq!(r32(&mut d, 0x08), 0x0108_0202);
        assert_eq!(r32(&mut d, 0x3c) >> 8 & 0xff, 0, "no INTx pin");
        assert_eq!(r32(&mut d, 0x30), 0, "no ROM");
        // BAR0 sizing by the guest, against the emulated register.
        d.write_config(0x10, &0xffff_ffffu32.to_le_bytes());
        d.write_config(0x14, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(r32(&mut d, 0x10), !(BAR0 as u32 - 1) | 0b1100);
        assert_eq!(r32(&mut d, 0x14), 0xffff_ffff);
        assert_eq!(
            f.config_byte(0x10),
            0b1100,
            "the device's BAR is not touched"
        );
        // Other registers reach the device; the command register both.
        d.write_config(0x0c, &[0x10]);
        assert_eq!(f.config_byte(0x0c), 0x10);
        d.write_config(0x04, &0x0006u16.to_le_bytes());
        assert_eq!(f.config_byte(0x04), 0x06);
        assert!(d.config().memory_decode_enabled() && d.config().bus_master_enabled());
        // MSI is emulated: its enable reaches VFIO, never the device's register.
        d.write_config(0x42, &[1]);
        assert_eq!(f.config_byte(0x42), 0x84);
        assert_eq!(*f.msi.lock().unwrap(), vec![Some(1)]);
        // Accesses beyond configuration space read all-ones and write nothing.
        let mut b = [0u8; 4];
        d.read_config(4094, &mut b);
        assert_eq!(b, [0xff; 4]);
        d.write_config(usize::MAX, &[1, 2]);
        drop(d);
        assert!(released.load(Ordering::SeqCst));
    }

    #[test]
    fn msix_is_emulated_and_handed_to_vfio_on_enable() {
        let (d, f, v, _) = build(false);
        let mut d = d.unwrap();
        let ctl = 0x62;
        assert_eq!(r32(&mut d, 0x60) >> 16, 3, "4 vectors, disabled");
        // Linux: enable with the function masked, program vector 0, unmask.
        d.write_config(
            ctl,
            &(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK).to_le_bytes(),
        );
        assert_eq!(
            *f.msix.lock().unwrap(),
            vec![Some(4)],
            "all vectors' eventfds to VFIO"
        );
        assert_eq!(r32(&mut d, 0x60) >> 16, u32::from(0xc003u16));
        assert_eq!(
            f.config_byte(0x63),
            0,
            "the device's control is the kernel's"
        );
        let entry: Vec<u8> = [0xfee0_1000u32, 0, 0x41, 0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        d.write_bar(0, 0x2000, &entry);
        d.write_config(ctl, &MSIX_CONTROL_ENABLE.to_le_bytes());
        let msg = MsiMessage {
            address: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(*v.configured.lock().unwrap(), vec![(0, msg, false)]);
        assert!(
            f.bar0.lock().unwrap()[0x2000..0x2010]
                .iter()
                .all(|&b| b == 0),
            "table trapped"
        );
        // Masking the vector reaches the controller (which disconnects the irqfd).
        d.write_bar(0, 0x200c, &1u32.to_le_bytes());
        assert_eq!(v.configured.lock().unwrap().last(), Some(&(0, msg, true)));
        let mut b = [0u8; 8];
        d.read_bar(0, 0x3000, &mut b);
        assert_eq!(b, [0; 8], "PBA");
        // The rest of the BAR is the device's.
        let mut b = [0u8; 1];
        d.read_bar(0, 0x100, &mut b);
        assert_eq!(b, [0x5a]);
        d.write_bar(0, 0x104, &[7]);
        assert_eq!(f.bar0.lock().unwrap()[0x104], 7);
        d.read_bar(0, BAR0 - 2, &mut [0u8; 4]);
        d.write_config(ctl, &0u16.to_le_bytes());
        assert_eq!(
            f.msix.lock().unwrap().last(),
            Some(&None),
            "disabled in VFIO"
        );
    }

    /// The IOAPIC's deliveries, by pin.
    #[derive(Clone, Default)]
    struct Injected(Arc<Mutex<Vec<usize>>>);

    impl crate::ioapic::IoapicOutput for Injected {
        fn route(&self, _pin: usize, _msi: Option<crate::interrupt::Msi>) {}
        fn inject(&self, pin: usize) {
            self.0.lock().unwrap().push(pin);
        }
    }

    #[test]
    fn intx_is_a_level_line_into_the_prt_s_ioapic_pin_unmasked_at_each_eoi() {
        use crate::ioapic::{Ioapic, REG_REDIRECTION, Rte};
        let injected = Injected::default();
        let ioapic = Arc::new(Ioapic::new(Box::new(injected.clone())));
        let unmasks = Arc::new(crate::counters::Counter::default());
        let route = IntxRoute::Split {
            ioapic: ioapic.clone(),
            slot: 3,
            unmasks: unmasks.clone(),
        };
        let (d, f, _, _) = build_with(false, route);
        let mut d = d.unwrap();
        // INTA of device 3: GSI 16 + 3, preset in the interrupt line register.
        assert_eq!(r32(&mut d, 0x3c) & 0xffff, 0x0113, "pin A, line 19");
        assert_eq!(*f.intx.lock().unwrap(), vec!["enable"], "offered at once");
        // The guest may rewrite the line (scratch); the pin stays.
        d.write_config(0x3c, &[0x0b, 0x04]);
        assert_eq!(r32(&mut d, 0x3c) & 0xffff, 0x010b);
        assert_eq!(
            f.config_byte(0x3c),
            0,
            "the device's own register is not touched"
        );
        // Linux: pin 19 level-triggered (active-low, as a _PRT GSI is), vector 0x51.
        let rte = Rte::LEVEL | Rte::ACTIVE_LOW | 0x51;
        ioapic.write_register(REG_REDIRECTION + 2 * 19, rte as u32);
        let intx = d.intx.as_ref().unwrap();
        intx.assert_line();
        assert_eq!(*injected.0.lock().unwrap(), vec![19]);
        intx.assert_line();
        assert_eq!(injected.0.lock().unwrap().len(), 1, "one until the EOI");
        ioapic.end_of_interrupt(0x51);
        assert_eq!(*f.intx.lock().unwrap(), vec!["enable", "unmask"]);
        assert_eq!(unmasks.get(), 1, "counted");
        assert_eq!(injected.0.lock().unwrap().len(), 1, "lowered at the EOI");
        // VFIO signals again after the unmask while the device still asserts.
        d.intx.as_ref().unwrap().assert_line();
        assert_eq!(*injected.0.lock().unwrap(), vec![19, 19]);
        // MSI-X takes over from INTx and gives it back.
        d.write_config(0x62, &MSIX_CONTROL_ENABLE.to_le_bytes());
        d.write_config(0x62, &0u16.to_le_bytes());
        assert_eq!(
            *f.intx.lock().unwrap(),
            vec!["enable", "unmask", "disable", "enable"]
        );
        assert_eq!(*f.msix.lock().unwrap(), vec![Some(4), None]);
        drop(d);
        assert_eq!(f.intx.lock().unwrap().last(), Some(&"disable"));
        // The pin has no resampler left: an EOI unmasks nothing.
        ioapic.write_register(REG_REDIRECTION + 2 * 19, rte as u32);
        ioapic.set_level(19, true);
        ioapic.end_of_interrupt(0x51);
        assert_eq!(f.intx.lock().unwrap().len(), 5);
    }

    #[test]
    fn a_device_without_msix_offers_msi_emulated_and_handed_to_vfio() {
        let ioapic = Arc::new(crate::ioapic::Ioapic::new(Box::new(Injected::default())));
        let route = IntxRoute::Split {
            ioapic,
            slot: 2,
            unmasks: Arc::new(crate::counters::Counter::default()),
        };
        let (d, f, v, released) = build_with(true, route);
        let mut d = d.unwrap();
        assert_eq!(
            r32(&mut d, 0x40) >> 16,
            0x0184,
            "64-bit, masking, 4 vectors capable"
        );
        // Linux: address, upper address, data, mask bits, then MME = 2 (4 vectors) and enable.
        d.write_config(0x44, &0xfee0_1003u32.to_le_bytes());
        assert_eq!(r32(&mut d, 0x44), 0xfee0_1000, "dword aligned");
        d.write_config(0x48, &0u32.to_le_bytes());
        d.write_config(0x4c, &0x4141u16.to_le_bytes());
        d.write_config(0x50, &0b10u32.to_le_bytes());
        assert!(f.msi.lock().unwrap().is_empty(), "not enabled yet");
        d.write_config(0x42, &0x0021u16.to_le_bytes());
        assert_eq!(r32(&mut d, 0x40) >> 16, 0x01a5);
        assert_eq!(
            *f.msi.lock().unwrap(),
            vec![Some(4)],
            "four eventfds to VFIO"
        );
        assert_eq!(
            *f.intx.lock().unwrap(),
            vec!["enable", "disable"],
            "INTx off"
        );
        let last4: Vec<_> = v
            .configured
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(4)
            .rev()
            .cloned()
            .collect();
        let msg = |data| MsiMessage {
            address: 0xfee0_1000,
            data,
        };
        assert_eq!(
            last4,
            vec![
                (0, msg(0x4140), false),
                (1, msg(0x4141), true),
                (2, msg(0x4142), false),
                (3, msg(0x4143), false)
            ],
            "vector i sends the data with its low bits = i; vector 1 masked"
        );
        // Unmasking vector 1 moves its route, VFIO keeps its eventfds.
        d.write_config(0x50, &0u32.to_le_bytes());
        assert_eq!(
            v.configured.lock().unwrap().last(),
            Some(&(3, msg(0x4143), false))
        );
        assert!(
            v.configured
                .lock()
                .unwrap()
                .contains(&(1, msg(0x4141), false))
        );
        assert_eq!(f.msi.lock().unwrap().len(), 1);
        // A hostile guest: every byte of the capability and past it set; the enabled vectors
        // stay within what the device can do, pending bits read 0, the device is untouched.
        for p in 0x40..0x60 {
            d.write_config(p, &[0xff]);
        }
        assert_eq!(
            r32(&mut d, 0x40) >> 16,
            0x01f5,
            "MME 7 kept, 4 vectors used"
        );
        assert_eq!(r32(&mut d, 0x54), 0, "pending");
        assert_eq!(*f.msi.lock().unwrap(), vec![Some(4)], "still four");
        assert_eq!(
            f.config_byte(0x4c),
            0,
            "the device's own registers are not written"
        );
        // Disabled: VFIO lets MSI go and takes INTx back.
        d.write_config(0x42, &[0]);
        assert_eq!(*f.msi.lock().unwrap(), vec![Some(4), None]);
        assert_eq!(f.intx.lock().unwrap().last(), Some(&"enable"));
        // No MSI-X: the BAR is the device's everywhere.
        d.write_bar(0, 0x2000, &[9]);
        assert_eq!(f.bar0.lock().unwrap()[0x2000], 9);
        drop(d);
        assert!(released.load(Ordering::SeqCst));
    }

    #[test]
    fn msix_pages_are_cut_out_of_mmapped_areas() {
        assert_eq!(cut(0, 0x4000, &[]), vec![(0, 0x4000)]);
        // Table at 0x2000 (65 vectors: 1040 bytes), PBA at 0x3000.
        assert_eq!(
            cut(0, 0x4000, &[(0x2000, 0x2410), (0x3000, 0x3010)]),
            vec![(0, 0x2000)]
        );
        assert_eq!(
            cut(0, 0x8000, &[(0x2008, 0x2010)]),
            vec![(0, 0x2000), (0x3000, 0x8000)]
        );
        assert_eq!(cut(0x1000, 0x2000, &[(0, 0x1000)]), vec![(0x1000, 0x2000)]);
    }
}
