//! The root complex's host bridge at 00:00.0.
//!
//! It has no BARs and no capabilities; its only job is to make the bus look like a PC: Linux
//! probes 00:00.0 first and expects a host bridge (class 06/00) there.

use super::config::{PciConfiguration, PciIds};
use super::device::PciDevice;

/// Intel's vendor ID.
pub const INTEL_VENDOR_ID: u16 = 0x8086;
/// Device ID used for the virtual host bridge (the ID Intel assigned to virtual PCIe hosts).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Base class "bridge device".
pub const CLASS_BRIDGE: u8 = 0x06;
/// Sub-class "host bridge".
pub const SUBCLASS_HOST_BRIDGE: u8 = 0x00;

/// The host bridge function.
#[derive(Debug)]
pub struct PciRootBridge {
    config: PciConfiguration,
}

impl PciRootBridge {
    /// Creates the host bridge.
    pub fn new() -> Self {
        PciRootBridge {
            config: PciConfiguration::new(&PciIds {
                vendor_id: INTEL_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class_code: CLASS_BRIDGE,
                subclass: SUBCLASS_HOST_BRIDGE,
                ..PciIds::default()
            }),
        }
    }
}

impl Default for PciRootBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciRootBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}
