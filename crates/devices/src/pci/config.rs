//! Type-0 PCI configuration space with per-bit access masks.
//!
//! Every dword of the 4 KiB space has three masks: the value, the bits the guest may write, and
//! the bits that are write-1-to-clear. A write of any width is applied byte by byte through
//! these masks, which also gives BAR size probing for free:
//!
//! ```text
//!  guest writes 0xffff_ffff to a BAR ──► value = written & ~(size - 1) | type bits (read-only)
//!  guest reads the BAR back           ──► ~(size - 1) | type bits   => the size
//! ```
//!
//! Capabilities are appended from offset 0x40 and chained through their next pointers.

use thiserror::Error;

/// Size of a PCI Express function's configuration space (what ECAM exposes).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Number of base address registers in a type-0 header.
pub const NUM_BARS: usize = 6;

const NUM_DWORDS: usize = CONFIG_SPACE_SIZE / 4;
const COMMAND_OFFSET: usize = 0x04;
const STATUS_OFFSET: usize = 0x06;
const BAR0_OFFSET: usize = 0x10;
const CAPABILITY_POINTER_OFFSET: usize = 0x34;
const FIRST_CAPABILITY_OFFSET: usize = 0x40;
/// End of the legacy (256-byte) configuration space, where standard capabilities must live.
const LEGACY_CONFIG_END: usize = 0x100;

/// Command register: I/O space, memory space, bus master, parity error response, SERR#,
/// interrupt disable (PCI Local Bus 3.0, section 6.2.2).
const COMMAND_WRITABLE: u16 = 0x0547;
/// Command register bit 1: memory space decode enable.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register bit 2: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status register bit 4: the function has a capability list.
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status register error bits that are write-1-to-clear (bits 8, 11..=15).
const STATUS_WRITE_ONE_TO_CLEAR: u16 = 0xf900;

/// Errors while building a configuration space (VMM programming errors, not guest input).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index is not usable for this BAR.
    #[error("BAR index {0} is out of range or already used")]
    BarIndex(usize),
    /// BAR sizes must be powers of two and at least 16 bytes.
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    /// A 32-bit BAR cannot decode more than 2 GiB.
    #[error("BAR size {0:#x} is too large for a 32-bit BAR")]
    BarTooLarge(u64),
    /// The capability does not fit in the 256-byte legacy configuration space.
    #[error("Capability of {0} bytes does not fit in configuration space")]
    CapabilitySpace(usize),
    /// The capability's writable mask is longer than the capability.
    #[error("Capability writable mask is longer than the capability body")]
    CapabilityMask,
}

/// Identity of a PCI function: the read-only header fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID (offset 0x00).
    pub vendor_id: u16,
    /// Device ID (offset 0x02).
    pub device_id: u16,
    /// Revision ID (offset 0x08).
    pub revision_id: u8,
    /// Base class code (offset 0x0B).
    pub class_code: u8,
    /// Sub-class code (offset 0x0A).
    pub subclass: u8,
    /// Programming interface (offset 0x09).
    pub prog_if: u8,
    /// Subsystem vendor ID (offset 0x2C).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (offset 0x2E).
    pub subsystem_id: u16,
}

/// The kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR (one register).
    Memory32,
    /// 64-bit memory BAR (two registers: `index` and `index + 1`).
    Memory64,
}

/// A memory BAR the function implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// Register index (0..=5; for 64-bit BARs the low half).
    pub index: usize,
    /// Size in bytes (a power of two, at least 16).
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Whether the BAR is marked prefetchable.
    pub prefetchable: bool,
}

/// A BAR as currently decoded: memory decoding enabled and a programmed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedBar {
    /// Register index.
    pub index: usize,
    /// Guest-physical base address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A type-0 configuration space.
#[derive(Clone)]
pub struct PciConfiguration {
    values: Box<[u32; NUM_DWORDS]>,
    writable: Box<[u32; NUM_DWORDS]>,
    write_one_to_clear: Box<[u32; NUM_DWORDS]>,
    bars: [Option<BarSpec>; NUM_BARS],
    last_capability: Option<usize>,
    next_capability: usize,
}

impl std::fmt::Debug for PciConfiguration {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PciConfiguration")
            .field("vendor_id", &(self.values[0] as u16))
            .field("device_id", &(self.values[0] >> 16))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl PciConfiguration {
    /// Creates a single-function type-0 header with the given identity and no BARs.
    pub fn new(ids: &PciIds) -> Self {
        let mut config = PciConfiguration {
            values: Box::new([0; NUM_DWORDS]),
            writable: Box::new([0; NUM_DWORDS]),
            write_one_to_clear: Box::new([0; NUM_DWORDS]),
            bars: [None; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY_OFFSET,
        };
        config.values[0] = u32::from(ids.vendor_id) | (u32::from(ids.device_id) << 16);
        config.writable[COMMAND_OFFSET / 4] = u32::from(COMMAND_WRITABLE);
        config.write_one_to_clear[COMMAND_OFFSET / 4] = u32::from(STATUS_WRITE_ONE_TO_CLEAR) << 16;
        config.values[0x08 / 4] = u32::from(ids.revision_id)
            | (u32::from(ids.prog_if) << 8)
            | (u32::from(ids.subclass) << 16)
            | (u32::from(ids.class_code) << 24);
        // Cache line size is read/write; latency timer, header type 0 and BIST are read-only.
        config.writable[0x0c / 4] = 0xff;
        config.values[0x2c / 4] =
            u32::from(ids.subsystem_vendor_id) | (u32::from(ids.subsystem_id) << 16);
        // Interrupt line is a read/write scratch byte; interrupt pin 0 = no INTx.
        config.writable[0x3c / 4] = 0xff;
        config
    }

    /// Declares a memory BAR. Its address starts at 0 until the VMM or the guest programs it.
    pub fn add_memory_bar(&mut self, spec: BarSpec) -> Result<(), ConfigError> {
        if spec.size < 16 || !spec.size.is_power_of_two() {
            return Err(ConfigError::BarSize(spec.size));
        }
        let registers = match spec.kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        if spec.index + registers > NUM_BARS
            || (spec.index..spec.index + registers).any(|index| self.register_is_used(index))
        {
            return Err(ConfigError::BarIndex(spec.index));
        }
        let address_mask = !(spec.size - 1);
        let mut type_bits = u32::from(spec.prefetchable) << 3;
        match spec.kind {
            BarKind::Memory32 => {
                if spec.size > 1 << 31 {
                    return Err(ConfigError::BarTooLarge(spec.size));
                }
            }
            BarKind::Memory64 => {
                type_bits |= 0b10 << 1;
                let high = BAR0_OFFSET / 4 + spec.index + 1;
                self.writable[high] = (address_mask >> 32) as u32;
                self.values[high] = 0;
            }
        }
        let low = BAR0_OFFSET / 4 + spec.index;
        self.writable[low] = (address_mask as u32) & !0xf;
        self.values[low] = type_bits;
        self.bars[spec.index] = Some(spec);
        Ok(())
    }

    fn register_is_used(&self, index: usize) -> bool {
        self.bars.iter().flatten().any(|bar| {
            bar.index == index || (bar.kind == BarKind::Memory64 && bar.index + 1 == index)
        })
    }

    /// The declared BARs.
    pub fn bars(&self) -> impl Iterator<Item = BarSpec> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// The BAR declared at `index`, if any (the low register for 64-bit BARs).
    pub fn bar(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The address currently programmed in BAR `index` (whether or not decoding is enabled).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bar(index)?;
        let low = BAR0_OFFSET / 4 + index;
        let mut address = u64::from(self.values[low] & !0xf);
        if spec.kind == BarKind::Memory64 {
            address |= u64::from(self.values[low + 1]) << 32;
        }
        Some(address)
    }

    /// Programs BAR `index` with `address` (used by the VMM's BAR allocator; the guest may move
    /// it later). The address is truncated to the BAR's alignment and width.
    pub fn set_bar_address(&mut self, index: usize, address: u64) -> Result<(), ConfigError> {
        let spec = self.bar(index).ok_or(ConfigError::BarIndex(index))?;
        let low = BAR0_OFFSET / 4 + index;
        let mask = !(spec.size - 1);
        self.values[low] = (self.values[low] & 0xf) | ((address & mask) as u32 & !0xf);
        if spec.kind == BarKind::Memory64 {
            self.values[low + 1] = ((address & mask) >> 32) as u32;
        }
        Ok(())
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.values[COMMAND_OFFSET / 4] as u16
    }

    /// Whether the memory space enable bit is set.
    pub fn memory_decode_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Whether the bus master enable bit is set.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// The BARs the function currently decodes: memory space enabled and the BAR range does not
    /// wrap around the address space.
    pub fn decoded_bars(&self) -> Vec<DecodedBar> {
        if !self.memory_decode_enabled() {
            return Vec::new();
        }
        self.bars()
            .filter_map(|spec| {
                let address = self.bar_address(spec.index)?;
                address.checked_add(spec.size)?;
                Some(DecodedBar {
                    index: spec.index,
                    address,
                    size: spec.size,
                })
            })
            .collect()
    }

    /// Appends a capability with `id` and `body` (the bytes after the id/next-pointer pair).
    ///
    /// `writable` gives, byte by byte from the start of `body`, the bits the guest may change;
    /// missing bytes are read-only. Returns the capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        if writable.len() > body.len() {
            return Err(ConfigError::CapabilityMask);
        }
        let length = body.len() + 2;
        let offset = self.next_capability;
        let end = offset + length;
        if end > LEGACY_CONFIG_END {
            return Err(ConfigError::CapabilitySpace(length));
        }
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        for (index, &byte) in body.iter().enumerate() {
            self.set_byte(offset + 2 + index, byte);
        }
        for (index, &mask) in writable.iter().enumerate() {
            let position = offset + 2 + index;
            let shift = (position % 4) * 8;
            self.writable[position / 4] |= u32::from(mask) << shift;
        }
        match self.last_capability {
            Some(previous) => self.set_byte(previous + 1, offset as u8),
            None => {
                self.set_byte(CAPABILITY_POINTER_OFFSET, offset as u8);
                let status =
                    self.values[STATUS_OFFSET / 4] | u32::from(STATUS_CAPABILITIES_LIST) << 16;
                self.values[STATUS_OFFSET / 4] = status;
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = (end + 3) & !3;
        Ok(offset)
    }

    /// Reads `data.len()` bytes at `offset`; bytes beyond the 4 KiB space read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(index)
                .filter(|&position| position < CONFIG_SPACE_SIZE)
                .map_or(0xff, |position| self.byte(position));
        }
    }

    /// Writes `data` at `offset` through the access masks; bytes beyond the space are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (index, &value) in data.iter().enumerate() {
            let Some(position) = offset
                .checked_add(index)
                .filter(|&position| position < CONFIG_SPACE_SIZE)
            else {
                return;
            };
            let dword = position / 4;
            let shift = (position % 4) * 8;
            let writable = (self.writable[dword] >> shift) as u8;
            let clear = (self.write_one_to_clear[dword] >> shift) as u8 & value;
            let old = self.byte(position);
            let new = ((old & !writable) | (value & writable)) & !clear;
            self.set_byte(position, new);
        }
    }

    /// Reads the dword at the 4-byte aligned `offset` (0 past the end).
    pub fn read_u32(&self, offset: usize) -> u32 {
        self.values.get(offset / 4).copied().unwrap_or(0)
    }

    /// Sets bytes of configuration space directly, bypassing the guest masks (device-side use,
    /// e.g. to update a read-only capability field).
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (index, &byte) in data.iter().enumerate() {
            if let Some(position) = offset.checked_add(index).filter(|&p| p < CONFIG_SPACE_SIZE) {
                self.set_byte(position, byte);
            }
        }
    }

    fn byte(&self, position: usize) -> u8 {
        (self.values[position / 4] >> ((position % 4) * 8)) as u8
    }

    fn set_byte(&mut self, position: usize, byte: u8) {
        let shift = (position % 4) * 8;
        let dword = &mut self.values[position / 4];
        *dword = (*dword & !(0xff << shift)) | (u32::from(byte) << shift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 0x01,
            subclass: 0x80,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    fn read32(config: &PciConfiguration, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        config.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(config: &mut PciConfiguration, offset: usize, value: u32) {
        config.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn identity_fields_are_read_only() {
        let mut config = PciConfiguration::new(&ids());
        write32(&mut config, 0, 0xdead_beef);
        write32(&mut config, 8, 0xdead_beef);
        write32(&mut config, 0x2c, 0xdead_beef);
        assert_eq!(read32(&config, 0), 0x1042_1af4);
        assert_eq!(read32(&config, 8), 0x0180_0001);
        assert_eq!(read32(&config, 0x2c), 0x0040_1af4);
    }

    #[test]
    fn command_register_keeps_only_defined_bits() {
        let mut config = PciConfiguration::new(&ids());
        config.write(4, &0xffffu16.to_le_bytes());
        assert_eq!(config.command(), COMMAND_WRITABLE);
        assert!(config.memory_decode_enabled() && config.bus_master_enabled());
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut config = PciConfiguration::new(&ids());
        config.set_bytes(6, &0x8100u16.to_le_bytes());
        config.write(6, &0x0100u16.to_le_bytes());
        let mut status = [0u8; 2];
        config.read(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 0x8000);
        // Writing the status register never sets bits.
        config.write(6, &0x0000u16.to_le_bytes());
        config.read(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 0x8000);
    }

    #[test]
    fn bar32_sizing_and_programming() {
        let mut config = PciConfiguration::new(&ids());
        config
            .add_memory_bar(BarSpec {
                index: 1,
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: false,
            })
            .unwrap();
        write32(&mut config, 0x14, 0xffff_ffff);
        assert_eq!(read32(&config, 0x14), 0xffff_f000);
        write32(&mut config, 0x14, 0xc000_1234);
        assert_eq!(read32(&config, 0x14), 0xc000_1000);
        assert_eq!(config.bar_address(1), Some(0xc000_1000));
        // Unimplemented BARs read as zero and ignore writes.
        write32(&mut config, 0x10, 0xffff_ffff);
        assert_eq!(read32(&config, 0x10), 0);
    }

    #[test]
    fn bar64_sizing_and_programming() {
        let mut config = PciConfiguration::new(&ids());
        config
            .add_memory_bar(BarSpec {
                index: 0,
                size: 0x8000,
                kind: BarKind::Memory64,
                prefetchable: true,
            })
            .unwrap();
        assert_eq!(read32(&config, 0x10), 0b1100);
        write32(&mut config, 0x10, 0xffff_ffff);
        write32(&mut config, 0x14, 0xffff_ffff);
        assert_eq!(read32(&config, 0x10), 0xffff_800c);
        assert_eq!(read32(&config, 0x14), 0xffff_ffff);
        write32(&mut config, 0x10, 0xe000_0000);
        write32(&mut config, 0x14, 0x1);
        assert_eq!(config.bar_address(0), Some(0x1_e000_0000));
        // Decoding follows the command register.
        assert!(config.decoded_bars().is_empty());
        config.write(4, &[COMMAND_MEMORY_SPACE as u8]);
        assert_eq!(
            config.decoded_bars(),
            vec![DecodedBar {
                index: 0,
                address: 0x1_e000_0000,
                size: 0x8000
            }]
        );
        // Byte-wide writes are masked too.
        config.write(0x11, &[0xff]);
        assert_eq!(read32(&config, 0x10), 0xe000_800c);
    }

    #[test]
    fn bar_declaration_errors() {
        let mut config = PciConfiguration::new(&ids());
        let spec = BarSpec {
            index: 5,
            size: 0x1000,
            kind: BarKind::Memory64,
            prefetchable: false,
        };
        assert_eq!(config.add_memory_bar(spec), Err(ConfigError::BarIndex(5)));
        let spec = BarSpec {
            index: 0,
            size: 0x1001,
            kind: BarKind::Memory32,
            prefetchable: false,
        };
        assert_eq!(
            config.add_memory_bar(spec),
            Err(ConfigError::BarSize(0x1001))
        );
        let spec = BarSpec {
            index: 0,
            size: 0x1000,
            kind: BarKind::Memory64,
            prefetchable: false,
        };
        config.add_memory_bar(spec).unwrap();
        let overlapping = BarSpec { index: 1, ..spec };
        assert_eq!(
            config.add_memory_bar(overlapping),
            Err(ConfigError::BarIndex(1))
        );
    }

    #[test]
    fn capability_chain_is_linked_and_masked() {
        let mut config = PciConfiguration::new(&ids());
        let first = config.add_capability(0x09, &[14, 1, 2, 3], &[]).unwrap();
        let second = config.add_capability(0x11, &[0, 0], &[0xff, 0xc0]).unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x48);
        let mut byte = [0u8; 1];
        config.read(0x34, &mut byte);
        assert_eq!(byte[0], 0x40);
        config.read(first + 1, &mut byte);
        assert_eq!(byte[0], 0x48);
        config.read(second + 1, &mut byte);
        assert_eq!(byte[0], 0);
        let mut status = [0u8; 2];
        config.read(6, &mut status);
        assert_ne!(u16::from_le_bytes(status) & STATUS_CAPABILITIES_LIST, 0);
        // Only the masked bits change.
        config.write(second + 2, &[0xff, 0xff]);
        let mut body = [0u8; 2];
        config.read(second + 2, &mut body);
        assert_eq!(body, [0xff, 0xc0]);
        // The id and next pointer stay read-only.
        config.write(first, &[0, 0]);
        config.read(first, &mut body);
        assert_eq!(body, [0x09, 0x48]);
    }

    #[test]
    fn accesses_past_the_end_never_panic() {
        let mut config = PciConfiguration::new(&ids());
        let mut data = [0u8; 8];
        config.read(CONFIG_SPACE_SIZE - 2, &mut data);
        assert_eq!(data[2..], [0xff; 6]);
        config.write(CONFIG_SPACE_SIZE - 1, &[1, 2, 3, 4]);
        config.read(usize::MAX, &mut data);
        config.write(usize::MAX, &data);
        assert_eq!(config.read_u32(usize::MAX & !3), 0);
    }
}
