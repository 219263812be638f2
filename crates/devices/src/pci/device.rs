//! The trait every PCI function implements, and the ioeventfd seam used when BARs move.

use std::io;

use vmm_sys_util::eventfd::EventFd;

use super::config::PciConfiguration;

/// A PCI function on the [`super::PciBus`].
///
/// Configuration accesses arrive with an offset into the 4 KiB configuration space, BAR
/// accesses with the BAR index and the offset into that BAR. The default methods give plain
/// configuration-space behaviour; devices override them for side effects. All methods receive
/// guest-controlled offsets and widths and must not panic.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &PciConfiguration;

    /// The function's configuration space, mutably.
    fn config_mut(&mut self) -> &mut PciConfiguration;

    /// Reads configuration space at `offset`.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Writes configuration space at `offset`.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// Reads `data.len()` bytes at `offset` within BAR `index`.
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        let _ = (index, offset);
        data.fill(0xff);
    }

    /// Writes `data` at `offset` within BAR `index`.
    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        let _ = (index, offset, data);
    }

    /// Called by the bus after BAR `index` started (`new`), stopped (`old`) or moved (both)
    /// being decoded at a guest-physical address.
    fn bar_moved(&mut self, index: usize, old: Option<u64>, new: Option<u64>) {
        let _ = (index, old, new);
    }
}

/// Registers ioeventfds for MMIO doorbells (the VMM implements this over KVM_IOEVENTFD).
///
/// Registrations are for a 2- or 4-byte write at `addr` without data match (one notify
/// address per queue).
pub trait IoEventRegistrar: Send + Sync {
    /// Makes writes at `addr` signal `fd` instead of exiting to the VMM.
    fn register(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
}
