//! vCPU threads: KVM_RUN in a loop, port I/O and MMIO exits dispatched to the buses, every
//! other exit turned into a [`VmEvent`] or ignored.
//!
//! ```text
//! loop ── gate: stopped? ──> exit; paused? ──> park until resumed
//!   └─ KVM_RUN ─┬─ IoIn/IoOut ───> PIO bus   (unhandled: ignored, reads all-ones)
//!               ├─ MmioRead/Write > MMIO bus  (unhandled: ignored, reads all-ones)
//!               ├─ IoapicEoi (split irqchip) ─> Ioapic::end_of_interrupt
//!               ├─ Shutdown / SystemEvent ──> VmEvent::{PowerOff, Reboot}
//!               ├─ EINTR (kick signal) ─────> loop
//!               └─ FailEntry / InternalError > VmEvent::Error
//! ```

use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::bus::Bus;
use crate::control::VcpuGate;
use crate::counters::{Counter, Counters};
use crate::ioapic::Ioapic;
use crate::legacy::{VmEvent, VmEventSender};

/// Errors creating a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_CREATE_VCPU failed.
    #[error("Cannot create vCPU {0}")]
    Create(u32, #[source] kvm_ioctls::Error),
    /// Kick signal setup failed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// The two address spaces a vCPU exit can target.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Exit statistics shared by all vCPUs.
#[derive(Debug)]
pub struct ExitCounters {
    pio: Arc<Counter>,
    mmio: Arc<Counter>,
    pio_unhandled: Arc<Counter>,
    mmio_unhandled: Arc<Counter>,
    ioapic_eoi: Arc<Counter>,
    /// Nanoseconds spent in the VMM's MMIO handlers (device emulation, the vIOMMU's
    /// queued invalidation included), without KVM's own exit and entry.
    mmio_handler_ns: Arc<Counter>,
}

impl ExitCounters {
    /// Registers the exit counters.
    pub fn new(counters: &Counters) -> Self {
        ExitCounters {
            pio: counters.register("exits_pio"),
            mmio: counters.register("exits_mmio"),
            pio_unhandled: counters.register("exits_pio_unhandled"),
            mmio_unhandled: counters.register("exits_mmio_unhandled"),
            ioapic_eoi: counters.register("exits_ioapic_eoi"),
            mmio_handler_ns: counters.register("vcpu_mmio_handler_ns"),
        }
    }
}

fn elapsed_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What one KVM_RUN led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep running.
    Continue,
    /// Stop the VM.
    Stop(VmEvent),
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick signal handler, so the signal interrupts KVM_RUN with EINTR
/// instead of killing the process.
pub fn install_kick_handler() -> Result<(), Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(Error::Signal)
}

/// Reports a panicking vCPU thread as a VM error.
struct PanicReporter<'a> {
    cpu: u32,
    events: &'a VmEventSender,
}

impl Drop for PanicReporter<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let message = format!("The thread of vCPU {} panicked", self.cpu);
            let _ = self.events.send(VmEvent::Error(message));
        }
    }
}

/// One vCPU.
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    buses: Arc<IoBuses>,
    exits: Arc<ExitCounters>,
    ioapic: Option<Arc<Ioapic>>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    /// Creates vCPU `index` (its APIC ID) of `vm`.
    pub fn new(
        vm: &VmFd,
        index: u32,
        buses: Arc<IoBuses>,
        exits: Arc<ExitCounters>,
    ) -> Result<Self, Error> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| Error::Create(index, e))?;
        Ok(Vcpu {
            index,
            fd,
            buses,
            exits,
            ioapic: None,
        })
    }

    /// Sends the EOIs of level-triggered IOAPIC vectors (split irqchip) to `ioapic`.
    pub fn set_ioapic(&mut self, ioapic: Arc<Ioapic>) {
        self.ioapic = Some(ioapic);
    }

    /// The vCPU index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The KVM vCPU, for register setup.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the guest until the next exit and handles it.
    pub fn step(&mut self) -> Step {
        let index = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.exits.pio.inc();
                if !self.buses.pio.read(u64::from(port), data) {
                    self.exits.pio_unhandled.inc();
                    tracing::trace!("vCPU {index}: unhandled in from port {port:#x}");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.exits.pio.inc();
                if !self.buses.pio.write(u64::from(port), data) {
                    self.exits.pio_unhandled.inc();
                    tracing::trace!("vCPU {index}: unhandled out to port {port:#x}: {data:x?}");
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.exits.mmio.inc();
                let start = Instant::now();
                let handled = self.buses.mmio.read(addr, data);
                self.exits.mmio_handler_ns.add(elapsed_ns(start));
                if !handled {
                    self.exits.mmio_unhandled.inc();
                    tracing::debug!("vCPU {index}: unhandled MMIO read at {addr:#x}");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.exits.mmio.inc();
                let start = Instant::now();
                let handled = self.buses.mmio.write(addr, data);
                self.exits.mmio_handler_ns.add(elapsed_ns(start));
                if !handled {
                    self.exits.mmio_unhandled.inc();
                    tracing::debug!("vCPU {index}: unhandled MMIO write at {addr:#x}: {data:x?}");
                }
                Step::Continue
            }
            Ok(VcpuExit::IoapicEoi(vector)) => {
                self.exits.ioapic_eoi.inc();
                match &self.ioapic {
                    Some(ioapic) => ioapic.end_of_interrupt(vector),
                    None => tracing::debug!("vCPU {index}: IOAPIC EOI {vector:#x} without IOAPIC"),
                }
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => Step::Stop(VmEvent::Halted { cpu: index }),
            Ok(VcpuExit::Shutdown) => Step::Stop(VmEvent::Reboot {
                how: "triple fault",
            }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(VmEvent::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Step::Stop(VmEvent::Reboot {
                    how: "KVM system reset",
                }),
                KVM_SYSTEM_EVENT_CRASH => {
                    Step::Stop(VmEvent::Error(format!("The guest crashed on vCPU {index}")))
                }
                other => {
                    tracing::debug!("vCPU {index}: ignoring system event {other}");
                    Step::Continue
                }
            },
            Ok(VcpuExit::IrqWindowOpen | VcpuExit::Intr) => Step::Continue,
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Stop(VmEvent::Error(format!(
                "KVM cannot enter vCPU {index} (hardware reason {reason:#x} on host CPU {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => Step::Stop(VmEvent::Error(format!(
                "KVM internal error on vCPU {index}: an instruction could not be emulated"
            ))),
            Ok(other) => Step::Stop(VmEvent::Error(format!(
                "Unexpected KVM exit on vCPU {index}: {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => Step::Stop(VmEvent::Error(format!(
                "KVM_RUN failed on vCPU {index}: {e}"
            ))),
        }
    }

    /// Runs until `gate` stops or the guest stops the VM, parked while the VM is paused; sends
    /// the stopping event (also if the thread panics, so the VM never waits for a dead vCPU).
    pub fn run(mut self, gate: &VcpuGate, events: &VmEventSender) {
        let _guard = PanicReporter {
            cpu: self.index,
            events,
        };
        while gate.pass() {
            if let Step::Stop(event) = self.step() {
                tracing::debug!("vCPU {} stops: {event:?}", self.index);
                let _ = events.send(event);
                break;
            }
        }
    }
}
