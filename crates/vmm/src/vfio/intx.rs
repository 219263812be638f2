//! An assigned function's INTx: a level-triggered line into an IOAPIC pin (the GSI the DSDT's
//! `_PRT` names for its slot and pin).
//!
//! ```text
//! in-kernel irqchip:
//!   device INTx ─► VFIO masks it, signals trigger ─► KVM irqfd (GSI, resample) ─► KVM IOAPIC
//!   guest EOI ─► KVM lowers the line, signals resample = VFIO's unmask eventfd ─► VFIO unmasks
//!                (still asserted? VFIO signals trigger again)              no exit at all
//! split irqchip (the VMM's IOAPIC):
//!   device INTx ─► VFIO masks it, signals trigger ─► reader thread ─► Ioapic::set_level(pin)
//!                                                    ─► the RTE's message (remapped if IR)
//!   guest EOI ─► KVM_EXIT_IOAPIC_EOI, or a write to the IOAPIC's EOI register (Linux, for a
//!                remapped pin) ─► Ioapic::end_of_interrupt ─► line lowered, resampler:
//!                VFIO_DEVICE_SET_IRQS unmask (counted) ─► (still asserted? trigger again)
//! ```
//!
//! VFIO hands out INTx only while neither MSI nor MSI-X is enabled, so the function disables
//! INTx before enabling either and enables it again after (PCI 3.0 6.8.1.3: enabling MSI
//! disables INTx). The command register's Interrupt Disable bit goes through to vfio-pci,
//! which masks the line while it is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::EventFd;

use super::device::HostFunction;
use crate::arch::x86_64::layout::pci_intx_gsi;
use crate::counters::Counter;
use crate::ioapic::Ioapic;
use crate::vm::KvmVm;

/// Which IOAPIC an assigned function's INTx goes to, and its slot on bus 0.
#[derive(Clone)]
pub enum IntxRoute {
    /// No IOAPIC (or no INTx offered): the pin reads 0.
    None,
    /// KVM's IOAPIC.
    Kernel {
        /// The VM.
        vm: Arc<KvmVm>,
        /// The function's device number on bus 0.
        slot: u8,
    },
    /// The VMM's IOAPIC.
    Split {
        /// The IOAPIC.
        ioapic: Arc<Ioapic>,
        /// The function's device number on bus 0.
        slot: u8,
        /// Counts the EOIs that unmask the line in VFIO (`<id>_intx_unmasks`).
        unmasks: Arc<Counter>,
    },
}

impl IntxRoute {
    /// Wires interrupt pin `pin` (1 = INTA, from the device's configuration space) of `host`
    /// to the GSI the `_PRT` names; `None` without an IOAPIC, for pin 0 or a pin beyond INTD.
    pub fn connect(&self, pin: u8, host: &Arc<dyn HostFunction>) -> std::io::Result<Option<Intx>> {
        let (IntxRoute::Kernel { slot, .. } | IntxRoute::Split { slot, .. }) = self else {
            return Ok(None);
        };
        let Some(gsi) = pci_intx_gsi(*slot, pin) else {
            return Ok(None);
        };
        match self {
            IntxRoute::None => Ok(None),
            IntxRoute::Kernel { vm, .. } => Intx::kernel(vm.clone(), gsi).map(Some),
            IntxRoute::Split {
                ioapic, unmasks, ..
            } => Intx::split(ioapic.clone(), gsi, host.clone(), unmasks.clone()).map(Some),
        }
    }
}

/// Where the line goes.
enum Wiring {
    /// A KVM irqfd with resample on the GSI; the resample eventfd is VFIO's unmask eventfd.
    Kernel { vm: Arc<KvmVm>, resample: EventFd },
    /// The VMM's IOAPIC: a thread raises the pin on each trigger; the pin's resampler unmasks.
    Split {
        ioapic: Arc<Ioapic>,
        resampler: u64,
        stop: Arc<AtomicBool>,
        reader: Option<std::thread::JoinHandle<()>>,
    },
}

/// The function's INTx line, wired while it exists.
pub struct Intx {
    gsi: u32,
    trigger: EventFd,
    wiring: Wiring,
    /// Whether VFIO currently signals `trigger`.
    enabled: bool,
}

impl std::fmt::Debug for Intx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intx")
            .field("gsi", &self.gsi)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Intx {
    /// INTx on `gsi` of KVM's IOAPIC: a resampling irqfd.
    pub fn kernel(vm: Arc<KvmVm>, gsi: u32) -> std::io::Result<Self> {
        let trigger = EventFd::new(0)?;
        let resample = EventFd::new(0)?;
        vm.register_irqfd_with_resample(&trigger, &resample, gsi)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self {
            gsi,
            trigger,
            wiring: Wiring::Kernel { vm, resample },
            enabled: false,
        })
    }

    /// INTx on pin `gsi` of the VMM's IOAPIC, unmasked in `host` at each EOI (counted in
    /// `unmasks`).
    pub fn split(
        ioapic: Arc<Ioapic>,
        gsi: u32,
        host: Arc<dyn HostFunction>,
        unmasks: Arc<Counter>,
    ) -> std::io::Result<Self> {
        let trigger = EventFd::new(0)?;
        let pin = gsi as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (trigger, ioapic, stop) = (trigger.try_clone()?, ioapic.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("intx-gsi{gsi}"))
                .spawn(move || {
                    while trigger.read().is_ok() && !stop.load(Ordering::Acquire) {
                        ioapic.set_level(pin, true);
                    }
                })?
        };
        let resampler = ioapic.add_resampler(
            pin,
            Arc::new(move || {
                unmasks.inc();
                if let Err(e) = host.unmask_intx() {
                    log_limit::limited!(warn, "Cannot unmask INTx of an assigned device: {e}");
                }
            }),
        );
        Ok(Self {
            gsi,
            trigger,
            wiring: Wiring::Split {
                ioapic,
                resampler,
                stop,
                reader: Some(reader),
            },
            enabled: false,
        })
    }

    /// The GSI (IOAPIC pin) of the line.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Hands the eventfds to VFIO (idempotent).
    pub fn enable(&mut self, host: &dyn HostFunction) -> Result<(), String> {
        if self.enabled {
            return Ok(());
        }
        let unmask = match &self.wiring {
            Wiring::Kernel { resample, .. } => Some(resample),
            Wiring::Split { .. } => None,
        };
        host.enable_intx(&self.trigger, unmask)?;
        self.enabled = true;
        Ok(())
    }

    /// Takes them back (idempotent); the line is lowered.
    pub fn disable(&mut self, host: &dyn HostFunction) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        host.disable_intx()?;
        self.enabled = false;
        if let Wiring::Split { ioapic, .. } = &self.wiring {
            ioapic.set_level(self.gsi as usize, false);
        }
        Ok(())
    }

    /// The split irqchip's work on one trigger (what the reader thread does).
    #[cfg(test)]
    pub fn assert_line(&self) {
        if let Wiring::Split { ioapic, .. } = &self.wiring {
            ioapic.set_level(self.gsi as usize, true);
        }
    }
}

impl Drop for Intx {
    fn drop(&mut self) {
        match &mut self.wiring {
            Wiring::Kernel { vm, .. } => {
                if let Err(e) = vm.unregister_irqfd(&self.trigger, self.gsi) {
                    tracing::warn!("Cannot remove the INTx irqfd of GSI {}: {e}", self.gsi);
                }
            }
            Wiring::Split {
                ioapic,
                resampler,
                stop,
                reader,
            } => {
                ioapic.remove_resampler(*resampler);
                stop.store(true, Ordering::Release);
                // Wakes the reader, which sees `stop` and ends.
                let _ = self.trigger.write(1);
                if let Some(reader) = reader.take() {
                    let _ = reader.join();
                }
            }
        }
    }
}
