//! The PCI bus (bus 0 only) and its three access paths.
//!
//! ```text
//!  0xCF8/0xCFC ── PciConfigIo ─┐
//!  ECAM window ── PciEcam ─────┼─► PciBus::{read,write}_config(device, function, offset)
//!                              │        └─ after a write: re-decode BARs, tell the device
//!                              │           (PciDevice::bar_moved) and update the BAR map
//!  BAR window  ── PciBarWindow ┴─► PciBus::{read,write}_bar(address) ─► owner of the BAR
//! ```
//!
//! Locking: the BAR map has its own lock, released before a device lock is taken on the BAR
//! path; a configuration write takes the device lock, then the map lock. No lock is held across
//! calls back into the bus.

use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use super::config::{BarKind, ConfigError, DecodedBar};
use super::device::PciDevice;
use super::host_bridge::PciRootBridge;
use crate::bus::{BusDevice, put_le_value};
use crate::interrupt::lock;

/// Device numbers on one bus.
pub const DEVICES_PER_BUS: usize = 32;
/// Bytes of ECAM space per bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// The 8-byte port range of the legacy configuration mechanism (0xCF8..0xD00).
pub const CONFIG_IO_PORT: u16 = 0xcf8;
/// Size of [`CONFIG_IO_PORT`]'s range.
pub const CONFIG_IO_SIZE: u64 = 8;

/// A PCI function shared between the bus and the VMM.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors adding devices to the bus.
#[derive(Debug, Error)]
pub enum PciBusError {
    /// All 32 device numbers are taken.
    #[error("No free PCI device number")]
    NoFreeSlot,
    /// The requested device number is taken or out of range.
    #[error("PCI device number {0} is not available")]
    SlotUnavailable(u8),
    /// The BAR window has no room for a BAR.
    #[error("No room for a {size:#x}-byte BAR in the PCI BAR window")]
    OutOfBarSpace {
        /// Size of the BAR that did not fit.
        size: u64,
    },
    /// The BAR could not be programmed.
    #[error("Cannot program BAR")]
    Bar(#[source] ConfigError),
}

/// A naturally aligned bump allocator over the MMIO window the VMM reserves for BARs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarAllocator {
    base: u64,
    end: u64,
    next: u64,
}

impl BarAllocator {
    /// Allocates from `[base, base + size)`.
    pub fn new(base: u64, size: u64) -> Self {
        let end = base.saturating_add(size);
        BarAllocator {
            base,
            end,
            next: base,
        }
    }

    /// The window's base address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether `[address, address + size)` lies inside the window.
    pub fn contains(&self, address: u64, size: u64) -> bool {
        address >= self.base && address.checked_add(size).is_some_and(|end| end <= self.end)
    }

    /// Returns a `size`-aligned block of `size` bytes (`size` is a power of two), below 4 GiB
    /// when `below_4g`.
    pub fn allocate(&mut self, size: u64, below_4g: bool) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let address = self.next.checked_next_multiple_of(size)?;
        let end = address.checked_add(size)?;
        if end > self.end || (below_4g && end > 1 << 32) {
            return None;
        }
        self.next = end;
        Some(address)
    }
}

#[derive(Clone, Copy, Debug)]
struct BarMapping {
    device: u8,
    bar: DecodedBar,
}

/// Bus 0: the devices by number and the map from BAR addresses to their owners.
pub struct PciBus {
    devices: RwLock<[Option<SharedPciDevice>; DEVICES_PER_BUS]>,
    mappings: RwLock<Vec<BarMapping>>,
    allocator: Mutex<BarAllocator>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PciBus")
            .field("allocator", &*lock(&self.allocator))
            .finish_non_exhaustive()
    }
}

impl PciBus {
    /// Creates bus 0 with the host bridge at 00:00.0 and BARs allocated from
    /// `[bar_window_base, bar_window_base + bar_window_size)`.
    pub fn new(bar_window_base: u64, bar_window_size: u64) -> Self {
        let bus = PciBus {
            devices: RwLock::new(std::array::from_fn(|_| None)),
            mappings: RwLock::new(Vec::new()),
            allocator: Mutex::new(BarAllocator::new(bar_window_base, bar_window_size)),
        };
        let bridge: SharedPciDevice = Arc::new(Mutex::new(PciRootBridge::new()));
        bus.write_devices()[0] = Some(bridge);
        bus
    }

    /// Adds `device` at the lowest free device number, assigns its BARs (left undecoded until
    /// the guest enables memory space) and returns the device number.
    pub fn add_device(&self, device: SharedPciDevice) -> Result<u8, PciBusError> {
        let slot = self
            .read_devices()
            .iter()
            .position(Option::is_none)
            .ok_or(PciBusError::NoFreeSlot)?;
        self.add_device_at(slot as u8, device)?;
        Ok(slot as u8)
    }

    /// Adds `device` at device number `slot`.
    pub fn add_device_at(&self, slot: u8, device: SharedPciDevice) -> Result<(), PciBusError> {
        let mut devices = self.write_devices();
        let entry = devices
            .get_mut(usize::from(slot))
            .filter(|entry| entry.is_none())
            .ok_or(PciBusError::SlotUnavailable(slot))?;
        {
            let mut function = lock(&device);
            let mut allocator = lock(&self.allocator);
            let mut bars: Vec<_> = function.config().bars().collect();
            // Largest first keeps natural alignment from wasting space.
            bars.sort_by_key(|bar| std::cmp::Reverse(bar.size));
            for bar in bars {
                let address = allocator
                    .allocate(bar.size, bar.kind == BarKind::Memory32)
                    .ok_or(PciBusError::OutOfBarSpace { size: bar.size })?;
                function
                    .config_mut()
                    .set_bar_address(bar.index, address)
                    .map_err(PciBusError::Bar)?;
            }
        }
        *entry = Some(device);
        Ok(())
    }

    /// Takes the device at `slot` off the bus (never the host bridge at 0) and returns it for
    /// the caller to drop: its decoded BARs are reported as gone first (`bar_moved(.., None)`,
    /// so it drops what hangs on them, e.g. ioeventfds) and no longer route. The BAR space
    /// stays allocated (the allocator only grows).
    pub fn remove_device(&self, slot: u8) -> Option<SharedPciDevice> {
        if slot == 0 {
            return None;
        }
        let device = self.write_devices().get_mut(usize::from(slot))?.take()?;
        let mut target = lock(&device);
        let mut mappings = self.mappings.write().unwrap_or_else(|e| e.into_inner());
        for mapping in mappings.iter().filter(|mapping| mapping.device == slot) {
            target.bar_moved(mapping.bar.index, Some(mapping.bar.address), None);
        }
        mappings.retain(|mapping| mapping.device != slot);
        drop(mappings);
        drop(target);
        Some(device)
    }

    /// The device at `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.read_devices().get(usize::from(slot))?.clone()
    }

    /// Reads configuration space of `device`.`function` (absent functions read all-ones).
    pub fn read_config(&self, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        match self.function(device, function) {
            Some(target) => lock(&target).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of `device`.`function`, then re-decodes its BARs.
    pub fn write_config(&self, device: u8, function: u8, offset: usize, data: &[u8]) {
        let Some(target) = self.function(device, function) else {
            return;
        };
        let mut target = lock(&target);
        target.write_config(offset, data);
        let window = *lock(&self.allocator);
        // Only the BAR window is routed to the bus: a BAR the guest placed elsewhere is not
        // decoded (and gets no ioeventfds that could shadow other MMIO).
        let mut decoded = target.config().decoded_bars();
        decoded.retain(|bar| window.contains(bar.address, bar.size));
        let mut mappings = self.mappings.write().unwrap_or_else(|e| e.into_inner());
        let old: Vec<DecodedBar> = mappings
            .iter()
            .filter(|mapping| mapping.device == device)
            .map(|mapping| mapping.bar)
            .collect();
        if old == decoded {
            return;
        }
        let declared: Vec<_> = target.config().bars().collect();
        for bar in declared {
            let before = old.iter().find(|b| b.index == bar.index).map(|b| b.address);
            let after = decoded
                .iter()
                .find(|b| b.index == bar.index)
                .map(|b| b.address);
            if before != after {
                tracing::debug!(device, bar = bar.index, ?before, ?after, "PCI BAR moved");
                target.bar_moved(bar.index, before, after);
            }
        }
        mappings.retain(|mapping| mapping.device != device);
        mappings.extend(decoded.into_iter().map(|bar| BarMapping { device, bar }));
    }

    /// Reads guest-physical `address` in whichever decoded BAR contains it (else all-ones).
    pub fn read_bar(&self, address: u64, data: &mut [u8]) {
        match self.bar_owner(address) {
            Some((target, index, offset)) => lock(&target).read_bar(index, offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes guest-physical `address` in whichever decoded BAR contains it.
    pub fn write_bar(&self, address: u64, data: &[u8]) {
        if let Some((target, index, offset)) = self.bar_owner(address) {
            lock(&target).write_bar(index, offset, data);
        }
    }

    fn bar_owner(&self, address: u64) -> Option<(SharedPciDevice, usize, u64)> {
        let (device, index, offset) = {
            let mappings = self.mappings.read().unwrap_or_else(|e| e.into_inner());
            let mapping = mappings.iter().find(|mapping| {
                address >= mapping.bar.address && address - mapping.bar.address < mapping.bar.size
            })?;
            (
                mapping.device,
                mapping.bar.index,
                address - mapping.bar.address,
            )
        };
        Some((self.device(device)?, index, offset))
    }

    fn function(&self, device: u8, function: u8) -> Option<SharedPciDevice> {
        if function != 0 {
            return None;
        }
        self.device(device)
    }

    fn read_devices(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, [Option<SharedPciDevice>; DEVICES_PER_BUS]> {
        self.devices.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_devices(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, [Option<SharedPciDevice>; DEVICES_PER_BUS]> {
        self.devices.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Configuration mechanism #1: address register at 0xCF8, data window at 0xCFC..0xCFF.
///
/// Register it on the PIO bus over `0xCF8..0xD00` (offset 0 = 0xCF8).
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: Mutex<u32>,
}

impl std::fmt::Debug for PciConfigIo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PciConfigIo")
            .field("address", &*lock(&self.address))
            .finish()
    }
}

const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;

impl PciConfigIo {
    /// Creates the port pair for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigIo {
            bus,
            address: Mutex::new(0),
        }
    }

    /// Decodes the latched address into (device, function, register offset) for bus 0.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, usize)> {
        let address = *lock(&self.address);
        let bus = (address >> 16) & 0xff;
        if address & CONFIG_ADDRESS_ENABLE == 0 || bus != 0 {
            return None;
        }
        let device = ((address >> 11) & 0x1f) as u8;
        let function = ((address >> 8) & 0x7) as u8;
        let register = (address & 0xfc) as usize + data_offset as usize;
        Some((device, function, register))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let address = u64::from(*lock(&self.address)) >> (offset * 8);
                put_le_value(data, address);
            }
            4..=7 => {
                let available = (8 - offset) as usize;
                let (inside, outside) = data.split_at_mut(data.len().min(available));
                outside.fill(0xff);
                match self.target(offset - 4) {
                    Some((device, function, register)) => {
                        self.bus.read_config(device, function, register, inside)
                    }
                    None => inside.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match offset {
            // Only a full dword write at 0xCF8 latches the address (byte 0xCF9 is the reset
            // control register on real chipsets and is not emulated here).
            0 if data.len() == 4 => {
                *lock(&self.address) = crate::bus::le_value(data) as u32;
            }
            4..=7 => {
                let available = (8 - offset) as usize;
                let inside = &data[..data.len().min(available)];
                if let Some((device, function, register)) = self.target(offset - 4) {
                    self.bus.write_config(device, function, register, inside);
                }
            }
            _ => {}
        }
    }
}

/// PCI Express enhanced configuration access (ECAM) for bus 0.
///
/// Register it on the MMIO bus over the first 1 MiB of the ECAM window (the MCFG entry's base,
/// bus 0). Accesses to other buses read all-ones.
pub struct PciEcam {
    bus: Arc<PciBus>,
}

impl std::fmt::Debug for PciEcam {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PciEcam").finish_non_exhaustive()
    }
}

impl PciEcam {
    /// Creates the ECAM window for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciEcam { bus }
    }

    /// Splits an ECAM offset into (device, function, register, bytes left in the function).
    fn decode(offset: u64) -> Option<(u8, u8, usize, usize)> {
        if offset >= ECAM_BUS_SIZE {
            return None;
        }
        let device = ((offset >> 15) & 0x1f) as u8;
        let function = ((offset >> 12) & 0x7) as u8;
        let register = (offset & 0xfff) as usize;
        Some((device, function, register, 0x1000 - register))
    }
}

impl BusDevice for PciEcam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match Self::decode(offset) {
            Some((device, function, register, available)) => {
                let (inside, outside) = data.split_at_mut(data.len().min(available));
                outside.fill(0xff);
                self.bus.read_config(device, function, register, inside);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some((device, function, register, available)) = Self::decode(offset) {
            let inside = &data[..data.len().min(available)];
            self.bus.write_config(device, function, register, inside);
        }
    }
}

/// The MMIO window holding all BARs: dispatches accesses to the BAR's owner.
///
/// Register it on the MMIO bus over the same window that was given to [`PciBus::new`].
pub struct PciBarWindow {
    bus: Arc<PciBus>,
    base: u64,
}

impl std::fmt::Debug for PciBarWindow {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PciBarWindow")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl PciBarWindow {
    /// A window starting at guest-physical `base` that forwards to `bus`.
    pub fn new(bus: Arc<PciBus>, base: u64) -> Self {
        PciBarWindow { bus, base }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match self.base.checked_add(offset) {
            Some(address) => self.bus.read_bar(address, data),
            None => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(address) = self.base.checked_add(offset) {
            self.bus.write_bar(address, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::le_value;
    use crate::pci::config::{BarSpec, PciConfiguration, PciIds};

    const WINDOW_BASE: u64 = 0xc000_0000;
    const WINDOW_SIZE: u64 = 0x1000_0000;

    /// A function with a 64-bit BAR 0 and a 32-bit BAR 2 that echoes BAR accesses.
    struct TestDevice {
        config: PciConfiguration,
        bar_writes: Vec<(usize, u64, Vec<u8>)>,
        moves: Vec<(usize, Option<u64>, Option<u64>)>,
    }

    impl TestDevice {
        fn new() -> Self {
            let mut config = PciConfiguration::new(&PciIds {
                vendor_id: 0x1234,
                device_id: 0x5678,
                class_code: 0xff,
                ..PciIds::default()
            });
            config
                .add_memory_bar(BarSpec {
                    index: 0,
                    size: 0x4000,
                    kind: BarKind::Memory64,
                    prefetchable: false,
                })
                .unwrap();
            config
                .add_memory_bar(BarSpec {
                    index: 2,
                    size: 0x100,
                    kind: BarKind::Memory32,
                    prefetchable: false,
                })
                .unwrap();
            TestDevice {
                config,
                bar_writes: Vec::new(),
                moves: Vec::new(),
            }
        }
    }

    impl PciDevice for TestDevice {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
            put_le_value(data, ((index as u64) << 32) | offset);
        }
        fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
            self.bar_writes.push((index, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, index: usize, old: Option<u64>, new: Option<u64>) {
            self.moves.push((index, old, new));
        }
    }

    fn setup() -> (Arc<PciBus>, Arc<Mutex<TestDevice>>, u8) {
        let bus = Arc::new(PciBus::new(WINDOW_BASE, WINDOW_SIZE));
        let device = Arc::new(Mutex::new(TestDevice::new()));
        let slot = bus.add_device(device.clone()).unwrap();
        (bus, device, slot)
    }

    fn cf8_address(device: u8, function: u8, register: u32) -> u32 {
        CONFIG_ADDRESS_ENABLE | (u32::from(device) << 11) | (u32::from(function) << 8) | register
    }

    fn io_read(io: &PciConfigIo, device: u8, register: u32, width: usize) -> u64 {
        io.write(0, &cf8_address(device, 0, register & !3).to_le_bytes());
        let mut data = vec![0u8; width];
        io.read(4 + u64::from(register & 3), &mut data);
        le_value(&data)
    }

    fn ecam_read(ecam: &PciEcam, device: u8, register: u64, width: usize) -> u64 {
        let mut data = vec![0u8; width];
        ecam.read((u64::from(device) << 15) | register, &mut data);
        le_value(&data)
    }

    #[test]
    fn host_bridge_is_device_zero() {
        let bus = Arc::new(PciBus::new(WINDOW_BASE, WINDOW_SIZE));
        let io = PciConfigIo::new(bus.clone());
        assert_eq!(io_read(&io, 0, 0, 4), 0x0d57_8086);
        // Class code 06/00/00 at offset 0x0B/0x0A/0x09.
        assert_eq!(io_read(&io, 0, 8, 4) >> 8, 0x06_0000);
        let ecam = PciEcam::new(bus);
        assert_eq!(ecam_read(&ecam, 0, 0, 2), 0x8086);
        assert_eq!(ecam_read(&ecam, 0, 0x0b, 1), 0x06);
    }

    #[test]
    fn config_io_paths_reach_the_device() {
        let (bus, _, slot) = setup();
        assert_eq!(slot, 1);
        let io = PciConfigIo::new(bus.clone());
        assert_eq!(io_read(&io, slot, 0, 4), 0x5678_1234);
        assert_eq!(io_read(&io, slot, 2, 2), 0x5678);
        assert_eq!(io_read(&io, slot, 3, 1), 0x56);
        // Reading the address register back.
        let mut data = [0u8; 4];
        io.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), cf8_address(slot, 0, 0));
        // Absent devices and functions, and disabled addresses, read all-ones.
        assert_eq!(io_read(&io, 7, 0, 4), 0xffff_ffff);
        io.write(0, &cf8_address(slot, 1, 0).to_le_bytes());
        io.read(4, &mut data);
        assert_eq!(data, [0xff; 4]);
        io.write(
            0,
            &(cf8_address(slot, 0, 0) & !CONFIG_ADDRESS_ENABLE).to_le_bytes(),
        );
        io.read(4, &mut data);
        assert_eq!(data, [0xff; 4]);
        // Writes go through the data port at any byte lane.
        io.write(0, &cf8_address(slot, 0, 0x3c).to_le_bytes());
        io.write(4, &[0x0b]);
        let ecam = PciEcam::new(bus);
        assert_eq!(ecam_read(&ecam, slot, 0x3c, 1), 0x0b);
    }

    #[test]
    fn odd_accesses_never_panic() {
        let (bus, _, _) = setup();
        let io = PciConfigIo::new(bus.clone());
        let ecam = PciEcam::new(bus.clone());
        let window = PciBarWindow::new(bus, WINDOW_BASE);
        for offset in [
            0u64,
            1,
            3,
            5,
            7,
            8,
            0xfff,
            0x1000 - 2,
            ECAM_BUS_SIZE,
            u64::MAX - 3,
        ] {
            for width in [1usize, 2, 3, 4, 8, 16] {
                let mut data = vec![0u8; width];
                io.read(offset, &mut data);
                io.write(offset, &data);
                ecam.read(offset, &mut data);
                ecam.write(offset, &data);
                window.read(offset, &mut data);
                window.write(offset, &data);
            }
        }
        // An ECAM read straddling the end of a function's space is clipped.
        let mut data = [0u8; 4];
        ecam.read(0xffe, &mut data);
        assert_eq!(data[2..], [0xff, 0xff]);
    }

    #[test]
    fn bars_are_allocated_naturally_aligned_in_the_window() {
        let (bus, device, slot) = setup();
        let ecam = PciEcam::new(bus);
        let bar0 = ecam_read(&ecam, slot, 0x10, 4) | (ecam_read(&ecam, slot, 0x14, 4) << 32);
        let bar2 = ecam_read(&ecam, slot, 0x18, 4);
        assert_eq!(bar0 & 0xf, 0b0100, "64-bit, non-prefetchable");
        let bar0 = bar0 & !0xf;
        assert_eq!(bar0 % 0x4000, 0);
        assert_eq!(bar2 % 0x100, 0);
        assert!((WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&bar0));
        assert!((WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&bar2));
        assert!(bar0 + 0x4000 <= bar2 || bar2 + 0x100 <= bar0);
        // Not decoded before memory space is enabled.
        assert!(lock(&device).moves.is_empty());
    }

    #[test]
    fn bar_window_dispatches_to_the_owner_once_decoding() {
        let (bus, device, slot) = setup();
        let ecam = PciEcam::new(bus.clone());
        let window = PciBarWindow::new(bus, WINDOW_BASE);
        let bar0 = lock(&device).config.bar_address(0).unwrap();
        let mut data = [0u8; 8];
        window.read(bar0 - WINDOW_BASE + 0x10, &mut data);
        assert_eq!(data, [0xff; 8], "memory space disabled");
        let bar2 = lock(&device).config.bar_address(2);
        ecam.write(u64::from(slot) << 15 | 4, &[0x02]);
        assert_eq!(
            lock(&device).moves,
            vec![(0, None, Some(bar0)), (2, None, bar2)]
        );
        window.read(bar0 - WINDOW_BASE + 0x10, &mut data);
        assert_eq!(u64::from_le_bytes(data), 0x10);
        window.write(bar0 - WINDOW_BASE + 0x20, &[1, 2]);
        assert_eq!(lock(&device).bar_writes, vec![(0, 0x20, vec![1, 2])]);
    }

    #[test]
    fn a_removed_device_loses_its_bars_and_its_slot() {
        let (bus, device, slot) = setup();
        let ecam = PciEcam::new(bus.clone());
        let window = PciBarWindow::new(bus.clone(), WINDOW_BASE);
        let bar0 = lock(&device).config.bar_address(0).unwrap();
        let bar2 = lock(&device).config.bar_address(2);
        ecam.write(u64::from(slot) << 15 | 4, &[0x02]);
        assert!(bus.remove_device(0).is_none(), "the host bridge stays");
        let removed = bus.remove_device(slot).expect("the device");
        assert!(Arc::ptr_eq(&removed, &(device.clone() as SharedPciDevice)));
        assert_eq!(
            lock(&device).moves[2..],
            [(0, Some(bar0), None), (2, bar2, None)]
        );
        let mut data = [0u8; 8];
        window.read(bar0 - WINDOW_BASE + 0x10, &mut data);
        assert_eq!(data, [0xff; 8], "the BAR no longer routes");
        assert_eq!(
            ecam_read(&ecam, slot, 0, 4),
            0xffff_ffff,
            "the slot reads empty"
        );
        assert!(bus.remove_device(slot).is_none());
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(TestDevice::new())))
                .unwrap(),
            slot
        );
    }

    #[test]
    fn guest_bar_sizing_and_move_are_reported() {
        let (bus, device, slot) = setup();
        let ecam = PciEcam::new(bus.clone());
        let window = PciBarWindow::new(bus, WINDOW_BASE);
        let base = u64::from(slot) << 15;
        let old = lock(&device).config.bar_address(0).unwrap();
        ecam.write(base | 4, &[0x02]);
        // Linux sizes BARs with decoding off.
        ecam.write(base | 4, &[0x00]);
        ecam.write(base | 0x10, &0xffff_ffffu32.to_le_bytes());
        ecam.write(base | 0x14, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(ecam_read(&ecam, slot, 0x10, 4), 0xffff_c004);
        assert_eq!(ecam_read(&ecam, slot, 0x14, 4), 0xffff_ffff);
        let new = WINDOW_BASE + 0x80_0000;
        ecam.write(base | 0x10, &(new as u32).to_le_bytes());
        ecam.write(base | 0x14, &0u32.to_le_bytes());
        ecam.write(base | 4, &[0x02]);
        let bar2 = lock(&device).config.bar_address(2);
        assert_eq!(
            lock(&device).moves,
            vec![
                (0, None, Some(old)),
                (2, None, bar2),
                (0, Some(old), None),
                (2, bar2, None),
                (0, None, Some(new)),
                (2, None, bar2),
            ]
        );
        // A BAR moved outside the window is not decoded.
        ecam.write(base | 4, &[0x00]);
        ecam.write(base | 0x14, &1u32.to_le_bytes());
        ecam.write(base | 4, &[0x02]);
        assert_eq!(lock(&device).moves.last(), Some(&(2, None, bar2)));
        assert!(
            !lock(&device)
                .moves
                .contains(&(0, None, Some(0x1_0000_0000 | new)))
        );
        ecam.write(base | 0x14, &0u32.to_le_bytes());
        let mut data = [0u8; 4];
        window.read(new - WINDOW_BASE + 4, &mut data);
        assert_eq!(u32::from_le_bytes(data), 4);
        window.read(old - WINDOW_BASE + 4, &mut data);
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn allocator_respects_alignment_and_limits() {
        let mut allocator = BarAllocator::new(0x1000, 0x10000);
        assert_eq!(allocator.allocate(0x100, true), Some(0x1000));
        assert_eq!(allocator.allocate(0x4000, true), Some(0x4000));
        assert_eq!(allocator.allocate(0x10000, true), None);
        assert_eq!(allocator.allocate(0x300, true), None);
        let mut high = BarAllocator::new(0xffff_f000, 0x2000);
        assert_eq!(high.allocate(0x1000, true), Some(0xffff_f000));
        assert_eq!(high.allocate(0x1000, true), None);
        assert_eq!(high.allocate(0x1000, false), Some(0x1_0000_0000));
        assert!(high.contains(0xffff_f000, 0x1000));
        assert!(!high.contains(0xffff_f000, 0x3000));
        assert!(!high.contains(u64::MAX, 2));
        let mut full = BarAllocator::new(u64::MAX - 0xfff, 0x1000);
        assert_eq!(full.allocate(0x1000, false), None);
    }

    #[test]
    fn slots_fill_up() {
        let bus = PciBus::new(WINDOW_BASE, WINDOW_SIZE);
        for _ in 1..DEVICES_PER_BUS {
            bus.add_device(Arc::new(Mutex::new(PciRootBridge::new())))
                .unwrap();
        }
        assert!(matches!(
            bus.add_device(Arc::new(Mutex::new(PciRootBridge::new()))),
            Err(PciBusError::NoFreeSlot)
        ));
        assert!(matches!(
            bus.add_device_at(40, Arc::new(Mutex::new(PciRootBridge::new()))),
            Err(PciBusError::SlotUnavailable(40))
        ));
    }
}
