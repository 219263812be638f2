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

/// How a KVM_EXIT_SHUTDOWN is reported.
const TRIPLE_FAULT: &str = "triple fault";
/// Offsets of the LAPIC's in-service and interrupt-request registers: eight 32-bit words, 16
/// bytes apart, vector n in bit n % 32 of word n / 32 (Intel SDM vol. 3, 11.8.4).
const LAPIC_ISR: usize = 0x100;
const LAPIC_IRR: usize = 0x200;

/// The vectors set in the 256-bit LAPIC register at `offset` of a KVM_GET_LAPIC page.
fn lapic_vectors(page: &[u8], offset: usize) -> Vec<u8> {
    (0..=255u8)
        .filter(|&v| {
            let at = offset + 0x10 * usize::from(v / 32) + usize::from(v % 32 / 8);
            page.get(at).is_some_and(|byte| byte & (1 << (v % 8)) != 0)
        })
        .collect()
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
        let step = self.handle_exit();
        if let Step::Stop(VmEvent::Reboot { how: TRIPLE_FAULT }) = step {
            tracing::warn!("vCPU {}: triple fault: {}", self.index, self.fault_state());
        }
        step
    }

    /// The vCPU's state where it stopped, in one line: registers, control registers, the IDT,
    /// and the vectors its LAPIC has in service and requested (with an in-kernel LAPIC).
    fn fault_state(&self) -> String {
        let mut parts = Vec::new();
        if let Ok(r) = self.fd.get_regs() {
            parts.push(format!(
                "rip {:#x} rsp {:#x} rflags {:#x}",
                r.rip, r.rsp, r.rflags
            ));
        }
        if let Ok(s) = self.fd.get_sregs() {
            parts.push(format!(
                "cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}+{:#x}",
                s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base, s.idt.limit
            ));
        }
        if let Ok(lapic) = self.fd.get_lapic() {
            let bytes: Vec<u8> = lapic.regs.iter().map(|&b| b as u8).collect();
            parts.push(format!(
                "LAPIC in service {:x?} requested {:x?}",
                lapic_vectors(&bytes, LAPIC_ISR),
                lapic_vectors(&bytes, LAPIC_IRR)
            ));
        }
        parts.join(", ")
    }

    fn handle_exit(&mut self) -> Step {
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
            Ok(VcpuExit::Shutdown) => Step::Stop(VmEvent::Reboot { how: TRIPLE_FAULT }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_vectors_are_read_from_the_isr_and_irr_words() {
        let mut page = vec![0u8; 1024];
        // Vector 0x31: word 1 (offset 0x10), bit 17 (byte 2, bit 1); vector 0xec: word 7 (0x70),
        // bit 12 (byte 1, bit 4).
        page[LAPIC_ISR + 0x10 + 2] |= 1 << 1;
        page[LAPIC_ISR + 0x70 + 1] |= 1 << 4;
        page[LAPIC_IRR] |= 1;
        assert_eq!(lapic_vectors(&page, LAPIC_ISR), vec![0x31, 0xec]);
        assert_eq!(lapic_vectors(&page, LAPIC_IRR), vec![0]);
        assert!(
            lapic_vectors(&page[..0x100], LAPIC_ISR).is_empty(),
            "a short page"
        );
    }
}
