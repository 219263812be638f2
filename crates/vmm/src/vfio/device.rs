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
//! ```
//!
//! INTx and MSI are not offered: the interrupt pin reads 0 and writes to an MSI capability are
//! dropped, so the guest's driver uses MSI-X; a device without MSI-X is refused at start.

use std::sync::Arc;

use devices::MsiController;
use devices::pci::PciDevice;
use devices::pci::config::{BarKind, BarSpec, PciConfiguration, PciIds};
use devices::pci::msix::{MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, MsixConfig, MsixLayout};
use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};

use super::Error;
use super::sys::{BarSlot, RegionMmap};
use crate::interrupt::KvmMsiController;
use crate::vm::KvmVm;

const PAGE: u64 = 4096;
const CAP_MSI: u8 = 0x05;
const CAP_MSIX: u8 = 0x11;
/// Bytes of the type-0 header the VMM emulates: BARs (0x10..0x28) and the ROM BAR (0x30).
const BAR_BYTES: std::ops::Range<usize> = 0x10..0x28;
const ROM_BYTES: std::ops::Range<usize> = 0x30..0x34;
/// Interrupt line (scratch) and pin (0: no INTx).
const INTX_BYTES: std::ops::Range<usize> = 0x3c..0x3e;
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
    controller: Arc<KvmMsiController>,
    /// Whether VFIO currently has the eventfds.
    vfio_enabled: bool,
}

/// The assigned function.
pub struct VfioPciDevice {
    name: String,
    device: Arc<VfioDevice>,
    config: PciConfiguration,
    config_size: u64,
    areas: Vec<(usize, Area)>,
    msix: Msix,
    msi_cap: Option<(usize, usize)>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn read_phys(device: &VfioDevice, size: u64, offset: usize, data: &mut [u8]) {
    if (offset as u64).saturating_add(data.len() as u64) > size {
        data.fill(0xff);
        return;
    }
    device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, offset as u64);
}

fn phys_u32(device: &VfioDevice, size: u64, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    read_phys(device, size, offset, &mut b);
    u32::from_le_bytes(b)
}

/// Capabilities in the device's legacy configuration space: `(id, offset)`.
fn capabilities(device: &VfioDevice, size: u64) -> Vec<(u8, usize)> {
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
    /// vectors. `on_drop` runs after the device is quiesced and reset (it releases the host
    /// binding).
    pub fn new(
        name: &str,
        device: Arc<VfioDevice>,
        vm: &Arc<KvmVm>,
        controller: Arc<KvmMsiController>,
        on_drop: Box<dyn FnOnce() + Send>,
    ) -> Result<Self, Error> {
        let size = device.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX);
        let id = phys_u32(&device, size, 0);
        let class = phys_u32(&device, size, 0x08);
        let subsystem = phys_u32(&device, size, 0x2c);
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
        let header_type = (phys_u32(&device, size, 0x0c) >> 16) as u8 & 0x7f;
        if header_type != 0 {
            return Err(Error::Unsupported {
                device: name.to_owned(),
                why: "it is a bridge (header type 1); only endpoints can be assigned".into(),
            });
        }
        let mut config = PciConfiguration::new(&ids);

        let caps = capabilities(&device, size);
        let msix_cap = caps
            .iter()
            .find(|(id, _)| *id == CAP_MSIX)
            .map(|&(_, o)| o)
            .ok_or_else(|| Error::Unsupported {
                device: name.to_owned(),
                why: "it has no MSI-X capability, and INTx and MSI are not offered".into(),
            })?;
        let control = (phys_u32(&device, size, msix_cap) >> 16) as u16;
        let table = phys_u32(&device, size, msix_cap + 4);
        let pba = phys_u32(&device, size, msix_cap + 8);
        let layout = MsixLayout {
            vectors: (control & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        };
        let msi_cap = caps
            .iter()
            .find(|(id, _)| *id == CAP_MSI)
            .map(|&(_, o)| (o, o + 24));

        let mut bar = 0usize;
        let mut areas = Vec::new();
        while bar < 6 {
            let index = bar;
            let raw = phys_u32(&device, size, 0x10 + 4 * index);
            let bar_size = device.get_region_size(index as u32);
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
            let flags = device.get_region_flags(index as u32);
            if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
                continue;
            }
            let mut mmap_able: Vec<(u64, u64)> = Vec::new();
            let mut sparse = false;
            for cap in device.get_region_caps(index as u32) {
                if let VfioRegionInfoCap::SparseMmap(s) = cap {
                    sparse = true;
                    mmap_able.extend(s.areas.iter().map(|a| (a.offset, a.offset + a.size)));
                }
            }
            if !sparse {
                mmap_able.push((0, bar_size));
            }
            let mut holes = Vec::new();
            if usize::from(layout.table_bar) == index {
                let o = u64::from(layout.table_offset);
                holes.push((o, o + layout.table_size()));
            }
            if usize::from(layout.pba_bar) == index {
                let o = u64::from(layout.pba_offset);
                holes.push((o, o + layout.pba_size()));
            }
            let region_offset = device.get_region_offset(index as u32);
            for (a, b) in mmap_able {
                for (start, end) in cut(a.min(bar_size), b.min(bar_size), &holes) {
                    if start % PAGE != 0 || (end - start) % PAGE != 0 {
                        continue;
                    }
                    let mmap =
                        RegionMmap::new(&*device, region_offset + start, (end - start) as usize)
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
        let msi: Arc<dyn MsiController> = controller.clone();
        let msix_config = MsixConfig::new(layout, msi).map_err(|e| Error::Unsupported {
            device: name.to_owned(),
            why: format!("MSI-X: {e}"),
        })?;
        Ok(Self {
            name: name.to_owned(),
            device,
            config,
            config_size: size,
            areas,
            msix: Msix {
                cap: msix_cap,
                config: msix_config,
                controller,
                vfio_enabled: false,
            },
            msi_cap,
            on_drop: Some(on_drop),
        })
    }

    fn emulated(&self, p: usize) -> bool {
        BAR_BYTES.contains(&p)
            || ROM_BYTES.contains(&p)
            || INTX_BYTES.contains(&p)
            || self.msix_control(p)
    }

    fn msix_control(&self, p: usize) -> bool {
        (self.msix.cap + 2..self.msix.cap + 4).contains(&p)
    }

    fn in_msi(&self, p: usize) -> bool {
        self.msi_cap.is_some_and(|(a, b)| (a + 2..b).contains(&p))
    }

    fn emulated_byte(&self, p: usize) -> u8 {
        if self.msix_control(p) {
            let mut b = [0u8; 2];
            read_phys(&self.device, self.config_size, self.msix.cap + 2, &mut b);
            let mut control =
                u16::from_le_bytes(b) & !(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
            if self.msix.config.enabled() {
                control |= MSIX_CONTROL_ENABLE;
            }
            if self.msix.config.function_masked() {
                control |= MSIX_CONTROL_FUNCTION_MASK;
            }
            return control.to_le_bytes()[p - self.msix.cap - 2];
        }
        let mut b = [0u8; 1];
        self.config.read(p, &mut b);
        b[0]
    }

    /// Hands the vectors' eventfds to VFIO when the guest enables MSI-X, takes them back when
    /// it disables it.
    fn sync_msix_enable(&mut self) {
        let want = self.msix.config.enabled();
        if want == self.msix.vfio_enabled {
            return;
        }
        let result = if want {
            self.msix
                .controller
                .eventfds(self.msix.config.layout().vectors)
                .map_err(|e| e.to_string())
                .and_then(|fds| {
                    self.device
                        .enable_msix(fds.iter().collect())
                        .map_err(|e| e.to_string())
                })
        } else {
            self.device.disable_msix().map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => self.msix.vfio_enabled = want,
            Err(e) => {
                tracing::error!(device = %self.name, "Cannot {} MSI-X: {e}", if want { "enable" } else { "disable" })
            }
        }
    }

    fn msix_bar_part(&self, index: usize, offset: u64) -> Option<(bool, u64)> {
        let l = self.msix.config.layout();
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
        read_phys(&self.device, self.config_size, offset, data);
        for (i, byte) in data.iter_mut().enumerate() {
            let p = offset.saturating_add(i);
            if self.emulated(p) {
                *byte = self.emulated_byte(p);
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let mut control = None;
        for (i, &byte) in data.iter().enumerate() {
            let Some(p) = offset.checked_add(i) else {
                return;
            };
            if (p as u64) >= self.config_size {
                return;
            }
            if self.msix_control(p) {
                let mut c = control.unwrap_or_else(|| {
                    let mut b = [0u8; 2];
                    for (j, x) in b.iter_mut().enumerate() {
                        *x = self.emulated_byte(self.msix.cap + 2 + j);
                    }
                    u16::from_le_bytes(b)
                });
                let shift = 8 * (p - self.msix.cap - 2);
                c = (c & !(0xff << shift)) | (u16::from(byte) << shift);
                control = Some(c);
            } else if self.emulated(p) {
                self.config.write(p, &[byte]);
            } else if self.in_msi(p) {
                // MSI is not offered: its enable never sticks.
            } else {
                if COMMAND_BYTES.contains(&p) {
                    self.config.write(p, &[byte]);
                }
                self.device
                    .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &[byte], p as u64);
            }
        }
        if let Some(c) = control {
            self.msix.config.set_control(c);
            self.sync_msix_enable();
        }
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        match self.msix_bar_part(index, offset) {
            Some((true, o)) => self.msix.config.read_table(o, data),
            Some((false, o)) => self.msix.config.read_pba(o, data),
            None => {
                let size = self.device.get_region_size(index as u32);
                if offset.saturating_add(data.len() as u64) > size {
                    data.fill(0xff);
                } else {
                    self.device.region_read(index as u32, data, offset);
                }
            }
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        match self.msix_bar_part(index, offset) {
            Some((true, o)) => self.msix.config.write_table(o, data),
            Some((false, _)) => {}
            None => {
                let size = self.device.get_region_size(index as u32);
                if offset.saturating_add(data.len() as u64) <= size {
                    self.device.region_write(index as u32, data, offset);
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
        if self.msix.vfio_enabled {
            let _ = self.device.disable_msix();
        }
        self.device.reset();
        tracing::info!(device = %self.name, "assigned device reset");
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
