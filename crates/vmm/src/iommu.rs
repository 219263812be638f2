//! Wiring of the `vtd` virtual VT-d unit into the VM.
//!
//! ```text
//! --iommu intel,OPTS ──> vtd::Config::parse(OPTS) ──> vtd::Vtd::new(config, guest RAM, irq)
//!   DRHD page 0xfed90000 (MMIO bus) ──> VtdRegisterPage ──> Vtd::mmio_read / mmio_write
//!   fault / invalidation-completion events ──> MsiSignaller (KVM_SIGNAL_MSI)
//!   device DMA ──> IommuMemory<GuestMemoryMmap, DeviceIommu(sid)> ──> Vtd (Remapper)
//!   exit summary <── Vtd::counters() as `counter vtd_<name> <value>` lines
//! ```

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap, IommuMemory, Permissions};
use vtd::Vtd;
use vtd::iommu::DeviceIommu;
use vtd_spec::SourceId;

use crate::bus::BusDevice;
use crate::counters::Counters;
use crate::interrupt::MsiSignaller;

/// Errors configuring the vIOMMU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The option string was refused by the model.
    #[error("Invalid --iommu option: {0}")]
    Config(vtd::ConfigError),
}

/// Guest memory as a device behind the vIOMMU sees it.
pub type TranslatedMemory = IommuMemory<GuestMemoryMmap, DeviceIommu>;

/// The unit's 4 KiB register page as an MMIO bus device.
#[derive(Debug)]
pub struct VtdRegisterPage(pub Arc<Vtd>);

impl BusDevice for VtdRegisterPage {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.mmio_read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.0.mmio_write(offset, data);
    }
}

impl vtd::FaultInterrupt for MsiSignaller {
    fn deliver(&self, address: u64, data: u32) {
        if let Err(e) = MsiSignaller::deliver(self, address, data) {
            tracing::warn!("vIOMMU event interrupt lost: {e}");
        }
    }
}

/// Creates the unit from the option string after `intel,`.
pub fn create_unit(
    options: &str,
    memory: &GuestMemoryMmap,
    irq: MsiSignaller,
) -> Result<Arc<Vtd>, Error> {
    let config = vtd::Config::parse(options).map_err(Error::Config)?;
    Ok(Arc::new(Vtd::new(
        config,
        Arc::new(memory.clone()),
        Arc::new(irq),
    )))
}

/// The `VTD cap=<hex> ecap=<hex>` line printed at start.
pub fn cap_line(unit: &Vtd) -> String {
    format!(
        "VTD cap={:x} ecap={:x}",
        unit.cap().into_bits(),
        unit.ecap().into_bits()
    )
}

/// Adds the unit's counters (prefixed `vtd_`) to the exit summary.
pub fn add_counters(counters: &Counters, unit: &Arc<Vtd>) {
    let unit = unit.clone();
    counters.add_source(move || {
        unit.counters()
            .pairs()
            .into_iter()
            .map(|(name, value)| (format!("vtd_{name}"), value))
            .collect()
    });
}

/// The requester id of function 0 of `slot` on bus 0.
pub fn bus0_sid(slot: u8) -> SourceId {
    SourceId::new(0, slot, 0)
}

/// Guest memory as seen by the device at `sid`: every access is translated by the unit.
pub fn translated_memory(
    memory: &GuestMemoryMmap,
    unit: &Arc<Vtd>,
    sid: SourceId,
) -> TranslatedMemory {
    let remapper: Arc<dyn vtd::request::Remapper> = unit.clone();
    IommuMemory::new(memory.clone(), DeviceIommu::new(remapper, sid), true, ())
}

/// Test hook (`--test-dma-fault`): one translated read of `iova` by the device at `sid`, which
/// records a fault (and raises the fault event) if the guest never mapped it. Returns whether
/// the read was refused.
pub fn probe_dma(memory: &TranslatedMemory, iova: u64) -> bool {
    use vm_memory::GuestMemory;
    !memory.check_range(GuestAddress(iova), 4, Permissions::Read)
}
