//! PCI configuration space and BAR accesses from a hostile guest: any sequence of ECAM reads
//! and writes (any width, any offset, any function) and BAR-window reads and writes, on a bus
//! with the host bridge and a virtio-pci function (MSI-X, the PCI_CFG window, the common
//! configuration). Nothing may panic, and after every access the read-only parts of both
//! functions read back as they were built: identity, class, header type, interrupt pin,
//! capability chain and the virtio/MSI-X capability bodies, BAR type bits, and BAR values
//! aligned to their size.
//!
//! ```text
//!  bytes ─► op ─► PciEcam::write/read ─┐
//!             └─► PciBarWindow::write/read ─► PciBus ─► VirtioPciDevice / PciRootBridge
//!  after each op: read-only snapshot == now (through PciDevice::config, no side effects)
//! ```
#![no_main]

use std::sync::{Arc, Mutex};

use devices::BusDevice;
use devices::interrupt::FakeMsiController;
use devices::pci::{BarKind, PciBarWindow, PciBus, PciDevice, PciEcam};
use devices::virtio::pci::{BAR0_SIZE, VirtioPciDevice, VirtioPciOptions};
use devices::virtio::{ActivateError, Activation, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const WINDOW: u64 = 0xc000_0000;
const WINDOW_SIZE: u64 = 0x100_0000;
/// Offsets in BAR 0 the transport decodes (common, ISR, device, notify, MSI-X table, PBA).
const REGIONS: [u64; 6] = [0, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000];

/// A virtio device whose activation succeeds without starting anything.
struct Quiet;

impl VirtioDevice<GuestMemoryMmap> for Quiet {
    fn device_type(&self) -> u16 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16, 8]
    }
    fn features(&self) -> u64 {
        (1 << 9) | (1 << 29)
    }
    fn config_size(&self) -> usize {
        12
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as usize + i) as u8;
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _activation: Activation<GuestMemoryMmap>) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn width(&mut self) -> usize {
        [1, 2, 4, 4, 8, 3, 0, 16][usize::from(self.byte() % 8)]
    }
}

/// What must never change in a function's configuration space: (offset, mask) pairs read as
/// dwords, with their values when the function was built.
struct ReadOnly(Vec<(usize, u32, u32)>);

impl ReadOnly {
    fn of(device: &dyn PciDevice) -> Self {
        let config = device.config();
        let mut fields = vec![
            (0x00, u32::MAX),    // vendor, device
            (0x08, u32::MAX),    // revision, class
            (0x0c, 0xffff_ff00), // latency timer, header type, BIST
            (0x2c, u32::MAX),    // subsystem
            (0x34, 0xff),        // capability pointer
            (0x3c, 0xffff_ff00), // interrupt pin, min_gnt, max_lat
            (0x04, 0x0010_0000), // status: capability list
        ];
        for bar in 0..6usize {
            let high_of = bar
                .checked_sub(1)
                .and_then(|low| config.bar(low))
                .filter(|spec| spec.kind == BarKind::Memory64);
            let mask = match (config.bar(bar), high_of) {
                (Some(spec), _) => ((spec.size - 1) as u32) | 0xf,
                (None, Some(spec)) => ((spec.size - 1) >> 32) as u32,
                (None, None) => u32::MAX,
            };
            fields.push((0x10 + 4 * bar, mask));
        }
        // The capability chain: ids and next pointers; vendor capabilities other than PCI_CFG
        // and the MSI-X table/PBA locations are read-only as a whole.
        let mut at = (config.read_u32(0x34) & 0xfc) as usize;
        let mut hops = 0;
        while at != 0 && hops < 48 {
            fields.push((at, 0xffff));
            let head = config.read_u32(at);
            let (id, len) = (head & 0xff, (head >> 16) & 0xff);
            if id == 0x09 && config.read_u32(at) >> 24 != 5 {
                for dword in 1..(len as usize).div_ceil(4) {
                    fields.push((at + 4 * dword, u32::MAX));
                }
            }
            if id == 0x11 {
                fields.push((at, 0x07ff_ffff)); // table size
                fields.push((at + 4, u32::MAX));
                fields.push((at + 8, u32::MAX));
            }
            at = ((head >> 8) & 0xfc) as usize;
            hops += 1;
        }
        let fields = fields
            .into_iter()
            .map(|(offset, mask)| (offset, mask, config.read_u32(offset) & mask))
            .collect();
        ReadOnly(fields)
    }

    fn check(&self, device: &dyn PciDevice, name: &str) {
        let config = device.config();
        for &(offset, mask, value) in &self.0 {
            let now = config.read_u32(offset) & mask;
            assert_eq!(now, value, "{name}: read-only bits at {offset:#x} changed");
        }
        for spec in config.bars() {
            let address = config.bar_address(spec.index).unwrap_or(0);
            assert_eq!(
                address & (spec.size - 1),
                0,
                "{name}: BAR {} misaligned",
                spec.index
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Ok(memory) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]) else {
        return;
    };
    let options = VirtioPciOptions {
        behind_iommu: input.byte() & 1 != 0,
        msix_vectors: Some(u16::from(input.byte() % 8) + 1),
    };
    let msi = Arc::new(FakeMsiController::new());
    let Ok(device) = VirtioPciDevice::new(Box::new(Quiet), memory, msi, options) else {
        return;
    };
    let bus = Arc::new(PciBus::new(WINDOW, WINDOW_SIZE));
    let device = Arc::new(Mutex::new(device));
    let Ok(slot) = bus.add_device(device.clone()) else {
        return;
    };
    let bridge = bus.device(0).expect("the host bridge is at 00:00.0");
    let ecam = PciEcam::new(bus.clone());
    let bars = PciBarWindow::new(bus.clone(), WINDOW);
    let fixed_device = ReadOnly::of(&*device.lock().unwrap());
    let fixed_bridge = ReadOnly::of(&*bridge.lock().unwrap());
    let function_base = |slot: u8| u64::from(slot) << 15;

    for _ in 0..512 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let target = if op & 0x80 != 0 { 0 } else { slot };
        match op % 8 {
            0 | 1 => {
                // Configuration space, mostly the header and capabilities.
                let register = u64::from(input.u16()) & if op & 0x40 != 0 { 0xfff } else { 0xff };
                let function = if input.byte() == 0xff { 1 } else { 0 };
                let at = function_base(target) + (function << 12) + register;
                let width = input.width();
                if op % 8 == 0 {
                    ecam.write(at, &input.bytes(width));
                } else {
                    let mut buf = vec![0u8; width];
                    ecam.read(at, &mut buf);
                }
            }
            2 | 3 => {
                // BAR 0 wherever the guest put it, mostly at a decoded register block.
                let bar0 = device.lock().unwrap().config().bar_address(0).unwrap_or(0);
                let at = if op & 0x40 != 0 {
                    u64::from(input.u16()) << 4
                } else {
                    let region = REGIONS[usize::from(input.byte()) % REGIONS.len()];
                    (bar0 + region + u64::from(input.byte() & 0x7f)).wrapping_sub(WINDOW)
                };
                let width = input.width();
                if op % 8 == 2 {
                    bars.write(at, &input.bytes(width));
                } else {
                    let mut buf = vec![0u8; width];
                    bars.read(at, &mut buf);
                }
            }
            4 => {
                // Linux's BAR sizing: all-ones, read back, restore; then decode on.
                let base = function_base(target);
                let bar = 0x10 + 4 * u64::from(input.byte() % 6);
                let mut old = [0u8; 4];
                ecam.read(base + bar, &mut old);
                ecam.write(base + bar, &[0xff; 4]);
                let mut size = [0u8; 4];
                ecam.read(base + bar, &mut size);
                ecam.write(base + bar, &old);
                ecam.write(base + 4, &[0x06, 0]);
            }
            5 => {
                // Command register: decode and bus mastering on or off.
                let value = input.byte() & 0x7;
                ecam.write(function_base(target) + 4, &[value]);
            }
            6 => {
                // Virtio status bring-up through the common configuration.
                let bar0 = device.lock().unwrap().config().bar_address(0).unwrap_or(0);
                let at = bar0.wrapping_sub(WINDOW);
                for status in [1u8, 3, 11, 15] {
                    if input.byte() & 3 == 0 {
                        break;
                    }
                    bars.write(at + 0x14, &[status]);
                }
            }
            _ => {
                // A burst of writes to one BAR 0 register of the device.
                let bar0 = device.lock().unwrap().config().bar_address(0).unwrap_or(0);
                let at = (bar0 + u64::from(input.u16()) % BAR0_SIZE).wrapping_sub(WINDOW);
                let value = input.bytes(4);
                for _ in 0..input.byte() % 4 {
                    bars.write(at, &value);
                }
            }
        }
        fixed_device.check(&*device.lock().unwrap(), "virtio-pci");
        fixed_bridge.check(&*bridge.lock().unwrap(), "host bridge");
    }
});
