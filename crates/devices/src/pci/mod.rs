//! PCI: configuration space, MSI-X, the host bridge and bus 0 with its access paths.
//!
//! See [`bus`] for the access flow. Only bus 0 and function 0 of each device exist; the root
//! complex has no bridges. The VMM reserves one MMIO window for BARs and hands it to
//! [`PciBus::new`]; BARs are assigned there, naturally aligned, when devices are added (the
//! guest sees them as firmware-assigned and may move them).

pub mod bus;
pub mod config;
pub mod device;
pub mod host_bridge;
pub mod msix;

pub use bus::{
    BarAllocator, PciBarWindow, PciBus, PciBusError, PciConfigIo, PciEcam, SharedPciDevice,
};
pub use config::{BarKind, BarSpec, ConfigError, DecodedBar, PciConfiguration, PciIds};
pub use device::{IoEventRegistrar, PciDevice};
pub use host_bridge::PciRootBridge;
pub use msix::{MsixConfig, MsixError, MsixLayout};
