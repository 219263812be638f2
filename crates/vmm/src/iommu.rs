//! Wiring of the `vtd` virtual VT-d unit into the VM.
//!
//! ```text
//! --iommu intel,OPTS ──> vtd::Config::parse(OPTS) ──> vtd::Vtd::new(config, guest RAM, irq)
//!   DRHD page 0xfed90000 (MMIO bus) ──> VtdRegisterPage ──> Vtd::mmio_read / mmio_write
//!   fault / invalidation-completion events ──> MsiSignaller (KVM_SIGNAL_MSI)
//!   device DMA ──> DmaMemory<GuestMemoryMmap, DeviceDma(sid)> ──> DeviceIommu ──> Vtd (Remapper)
//!   exit summary <── Vtd as a counter_set::CounterSource (`counter <name> <value>` lines)
//!   interrupt remapping: GsiRouting ─ VtdInterruptRemap ─> Vtd::remap_interrupt (each route)
//!     IEC invalidation, SIRTP/IRE/CFI ─> RouteRefresher ─> GsiRouting::refresh_all
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::{GuestMemoryMmap, Permissions};
use vtd::Vtd;
use vtd::dma_memory::{DmaMemory, DmaTranslate};
use vtd::iommu::DeviceIommu;
use vtd_spec::SourceId;

use crate::bus::BusDevice;
use crate::interrupt::{GsiRouting, Msi, MsiRemap, MsiSignaller};

/// Errors configuring the vIOMMU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The option string was refused by the model.
    #[error("Invalid --iommu option: {0}")]
    Config(vtd::ConfigError),
}

/// Guest memory as a device behind the vIOMMU sees it.
pub type TranslatedMemory = DmaMemory<GuestMemoryMmap, DeviceDma>;

/// One device's DMA path into the unit: its [`DeviceIommu`], with the test-only probe of
/// `--test-dma-fault` in front only when that option is given. The probe issues one extra read
/// of a chosen IOVA just before the device's first translated access (by then the guest has
/// attached the device to a DMA domain, so an IOVA it never mapped faults with reason 0x71
/// against this device's requester id).
#[derive(Debug)]
pub enum DeviceDma {
    /// The device's view of the unit, nothing else.
    Plain(DeviceIommu),
    /// The view with the one-shot fault probe in front.
    Probed(FaultProbe),
}

/// The `--test-dma-fault` probe in front of a device's [`DeviceIommu`].
#[derive(Debug)]
pub struct FaultProbe {
    inner: DeviceIommu,
    iova: u64,
    /// Whether the probe is still to run.
    pending: AtomicBool,
}

impl DeviceDma {
    /// The DMA path of device `sid` behind `unit`, with an optional one-shot fault probe.
    pub fn new(unit: &Arc<Vtd>, sid: SourceId, probe: Option<u64>) -> Self {
        let inner = DeviceIommu::new(unit.clone(), sid);
        match probe {
            None => DeviceDma::Plain(inner),
            Some(iova) => DeviceDma::Probed(FaultProbe {
                inner,
                iova,
                pending: AtomicBool::new(true),
            }),
        }
    }

    fn inner(&self) -> &DeviceIommu {
        match self {
            DeviceDma::Plain(inner) | DeviceDma::Probed(FaultProbe { inner, .. }) => inner,
        }
    }

    /// The requester id.
    pub fn sid(&self) -> SourceId {
        self.inner().sid()
    }
}

impl FaultProbe {
    fn run_once(&self) {
        if !self.pending.load(Ordering::Relaxed) || !self.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let refused = self
            .inner
            .translate_piece(self.iova, 4, Permissions::Read)
            .is_err();
        tracing::info!(
            "--test-dma-fault: read of IOVA {:#x} by {} {}",
            self.iova,
            self.inner.sid(),
            if refused { "faulted" } else { "was translated" }
        );
    }
}

impl DmaTranslate for DeviceDma {
    fn translate_piece(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(u64, usize), vm_memory::iommu::Error> {
        if let DeviceDma::Probed(probe) = self {
            probe.run_once();
        }
        self.inner().translate_piece(iova, len, access)
    }
}

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
            log_limit::limited!(warn, "vIOMMU event interrupt lost: {e}");
        }
    }
}

/// Creates the unit from the option string after `intel,`, with interrupt remapping decided
/// for the VM's irqchip (`split_irqchip`) and KVM's x2APIC API.
pub fn create_unit(
    options: &str,
    memory: &GuestMemoryMmap,
    irq: MsiSignaller,
    split_irqchip: bool,
    x2apic_api: bool,
) -> Result<Arc<Vtd>, Error> {
    let mut config = vtd::Config::parse(options).map_err(Error::Config)?;
    config
        .resolve_interrupt_remapping(split_irqchip, x2apic_api)
        .map_err(Error::Config)?;
    Ok(Arc::new(Vtd::new(
        config,
        Arc::new(memory.clone()),
        Arc::new(irq),
    )))
}

/// The unit's interrupt remapping as the routing table's hook: each message is translated
/// through the guest's interrupt remapping table (or passes unchanged while remapping is
/// disabled); a blocked message leaves its route disconnected.
#[derive(Debug)]
pub struct VtdInterruptRemap(pub Arc<Vtd>);

impl MsiRemap for VtdInterruptRemap {
    fn remap(&self, sid: SourceId, msi: Msi) -> Option<Msi> {
        match self.0.remap_interrupt(sid, msi.address, msi.data) {
            vtd::InterruptOutcome::Deliver { address, data } => {
                Some(Msi { address, data }.with_ext_dest_id_in_high_address())
            }
            vtd::InterruptOutcome::Blocked => None,
        }
    }
}

/// Re-evaluates every interrupt route when the guest changes what remapping does (an IEC
/// invalidation, SIRTP, IRE or CFI), before its wait descriptor completes.
#[derive(Debug)]
pub struct RouteRefresher(pub std::sync::Weak<GsiRouting>);

impl vtd::InvalidationObserver for RouteRefresher {
    fn invalidated(&self, _unit: &dyn vtd::UnitView, _inv: &vtd::invalidation::Invalidation) {}
    fn submission_done(&self, _unit: &dyn vtd::UnitView) {}
    fn root_or_translation_changed(&self, _unit: &dyn vtd::UnitView) {}
    fn interrupt_entries_changed(&self) {
        if let Some(routing) = self.0.upgrade()
            && let Err(e) = routing.refresh_all()
        {
            log_limit::limited!(
                warn,
                "Interrupt routes not updated after the guest's change: {e}"
            );
        }
    }
}

/// Puts every device interrupt route behind `unit`'s interrupt remapping, when it offers it.
pub fn remap_interrupts(
    unit: &Arc<Vtd>,
    routing: &Arc<GsiRouting>,
) -> Result<(), crate::interrupt::Error> {
    if !unit.config().interrupt_remapping() {
        return Ok(());
    }
    unit.add_observer(Arc::new(RouteRefresher(Arc::downgrade(routing))));
    routing.set_remap(Arc::new(VtdInterruptRemap(unit.clone())))
}

/// The `VTD cap=<hex> ecap=<hex>` line printed at start.
pub fn cap_line(unit: &Vtd) -> String {
    format!(
        "VTD cap={:x} ecap={:x}",
        unit.cap().into_bits(),
        unit.ecap().into_bits()
    )
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
    fault_probe: Option<u64>,
) -> TranslatedMemory {
    DmaMemory::new(
        memory.clone(),
        Arc::new(DeviceDma::new(unit, sid, fault_probe)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    struct NoIrq;

    impl vtd::FaultInterrupt for NoIrq {
        fn deliver(&self, _address: u64, _data: u32) {}
    }

    fn unit(memory: &GuestMemoryMmap) -> Arc<Vtd> {
        let config = vtd::Config::parse("x-scalable-mode=on,x-flts=on").unwrap();
        Arc::new(Vtd::new(config, Arc::new(memory.clone()), Arc::new(NoIrq)))
    }

    #[test]
    fn routes_take_the_guests_interrupt_remapping_table() {
        use test_fixtures::interrupts::{irte, remappable, write_irte};
        use vtd_spec::regs::offset;
        const TABLE: u64 = 0x10_0000;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mut config = vtd::Config::parse("intremap=on,eim=on").unwrap();
        config.resolve_interrupt_remapping(true, true).unwrap();
        let unit = Arc::new(Vtd::new(config, Arc::new(memory.clone()), Arc::new(NoIrq)));
        let remap = VtdInterruptRemap(unit.clone());
        let sid = bus0_sid(3);
        let compat = Msi {
            address: 0xfee0_1000 | (0x2 << 5),
            data: 0x31,
        };
        assert_eq!(
            remap.remap(sid, compat),
            Some(Msi {
                address: 0xfee0_1000 | (0x2 << 40),
                data: 0x31
            }),
            "remapping off: as written, the extended destination ID where KVM reads it"
        );
        // As Linux brings it up: IRTA (256 entries, x2APIC mode), SIRTP, then IRE.
        let page = VtdRegisterPage(unit.clone());
        page.write(offset::IRTA, &(TABLE | (1 << 11) | 7).to_le_bytes());
        page.write(offset::GCMD, &(1u32 << 24).to_le_bytes());
        page.write(offset::GCMD, &(1u32 << 25).to_le_bytes());
        write_irte(&memory, TABLE, 5, irte(0x42, 0x1234, true));
        let (address, data) = remappable(5);
        let msi = remap
            .remap(sid, Msi { address, data })
            .expect("entry 5 is present");
        assert_eq!(msi.data & 0xff, 0x42, "the IRTE's vector");
        assert_eq!((msi.address >> 12) & 0xff, 0x34, "destination 7:0");
        assert_eq!(msi.address >> 40, 0x12, "destination 31:8 in address 63:40");
        let (address, data) = remappable(6);
        assert_eq!(
            remap.remap(sid, Msi { address, data }),
            None,
            "not present: blocked"
        );
    }

    #[test]
    fn cap_line_matches_the_registers() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let unit = unit(&memory);
        let mut cap = [0u8; 8];
        VtdRegisterPage(unit.clone()).read(0x08, &mut cap);
        let line = cap_line(&unit);
        assert!(line.starts_with(&format!("VTD cap={:x} ecap=", u64::from_le_bytes(cap))));
    }

    #[test]
    fn no_probe_unless_asked() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let unit = unit(&memory);
        let dma = translated_memory(&memory, &unit, bus0_sid(3), None);
        assert!(matches!(&**dma.translation(), DeviceDma::Plain(_)));
    }

    #[test]
    fn probe_runs_once_before_the_first_access() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        memory
            .write_obj(0x1234_5678u32, GuestAddress(0x2000))
            .unwrap();
        let unit = unit(&memory);
        let dma = translated_memory(&memory, &unit, bus0_sid(3), Some(0xdead000));
        assert_eq!(dma.translation().sid(), SourceId::new(0, 3, 0));
        // Translation is off until the guest enables it: accesses pass through.
        assert_eq!(
            dma.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0x1234_5678
        );
        let DeviceDma::Probed(probe) = &**dma.translation() else {
            panic!("a probe was asked for");
        };
        assert!(!probe.pending.load(Ordering::SeqCst), "the probe ran");
        assert_eq!(
            dma.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0x1234_5678
        );
    }
}
