//! The interrupt seam: MSI messages and the per-device MSI controller.
//!
//! ```text
//!  guest writes MSI-X table ──► pci::MsixConfig ──configure(vector, msg, masked)──► VMM route
//!  device completes work   ──► pci::MsixConfig ──trigger(vector)──────────────────► irqfd
//! ```
//!
//! The VMM gives each device its own [`MsiController`] (vectors are device-local indices),
//! typically backed by one irqfd and one KVM GSI route per vector.

use std::io;
use std::sync::Mutex;

/// One MSI message: what the device writes, and where, to raise an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (the 64-bit value of the MSI-X table entry's address fields).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Interrupt delivery for the MSI-X vectors of one device.
///
/// `configure` is called when a vector's message or mask state changes in a way that matters
/// for delivery; `trigger` fires an unmasked vector. Masking and pending-bit bookkeeping is done
/// by the caller ([`crate::pci::MsixConfig`]); a controller never sees a trigger for a vector it
/// was told is masked.
pub trait MsiController: Send + Sync {
    /// Installs `msg` for `vector`; `masked` says whether the vector may currently fire.
    fn configure(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()>;
    /// Raises `vector`.
    fn trigger(&self, vector: u16);
}

/// An [`MsiController`] for tests: records every configuration and trigger.
#[derive(Debug, Default)]
pub struct FakeMsiController {
    configured: Mutex<Vec<(u16, MsiMessage, bool)>>,
    triggered: Mutex<Vec<u16>>,
}

impl FakeMsiController {
    /// Creates a controller with empty logs.
    pub fn new() -> Self {
        Self::default()
    }

    /// All `configure` calls so far, in order.
    pub fn configured(&self) -> Vec<(u16, MsiMessage, bool)> {
        lock(&self.configured).clone()
    }

    /// All triggered vectors so far, in order.
    pub fn triggered(&self) -> Vec<u16> {
        lock(&self.triggered).clone()
    }

    /// Number of triggers of `vector` so far.
    pub fn trigger_count(&self, vector: u16) -> usize {
        lock(&self.triggered)
            .iter()
            .filter(|&&seen| seen == vector)
            .count()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        lock(&self.configured).clear();
        lock(&self.triggered).clear();
    }
}

impl MsiController for FakeMsiController {
    fn configure(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
        lock(&self.configured).push((vector, msg, masked));
        Ok(())
    }

    fn trigger(&self, vector: u16) {
        lock(&self.triggered).push(vector);
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
