//! The running VM: one thread per vCPU until the first VM event or stop signal, then every
//! vCPU kicked and joined and the device threads stopped.
//!
//! ```text
//!  Vm::run ─ spawn vcpuN threads ─ KVM_RUN loop ─ power-off / reset / error ─> VmEvent ─┐
//!     │                                                                                 │
//!     └─ wait_for_stop (VmEvent, or a stop signal polled every stop_signals::POLL) <────┘
//!          ─> stop flag, kick (signal) and join the vCPUs ─> shutdown hooks ─> VmExit
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::signal::Killable;

use crate::counters::Counters;
use crate::device_context::DeviceContext;
use crate::error::Error;
use crate::legacy::{VmEvent, VmEventSender};
use crate::vcpu::{self, Vcpu};

/// How a VM run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine (this VMM exits instead of rebooting).
    Reboot(&'static str),
    /// A vCPU executed HLT without an in-kernel irqchip (test guests).
    Halted(u32),
    /// The VMM received a stop signal (see [`crate::stop_signals`]).
    Signal(i32),
}

/// What stopped the VM: the first event from the vCPUs or devices, or a stop signal that
/// `signal` reports (polled every [`crate::stop_signals::POLL`]).
#[derive(Debug)]
pub enum Stop {
    /// A vCPU or device event.
    Event(VmEvent),
    /// A stop signal.
    Signal(i32),
}

/// Waits for the first of: an event on `receiver`, a signal `signal` reports.
pub fn wait_for_stop(receiver: &Receiver<VmEvent>, signal: impl Fn() -> Option<i32>) -> Stop {
    loop {
        if let Some(number) = signal() {
            return Stop::Signal(number);
        }
        match receiver.recv_timeout(crate::stop_signals::POLL) {
            Ok(event) => return Stop::Event(event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Stop::Event(VmEvent::Error(
                    "Every vCPU thread ended without a reason".to_owned(),
                ));
            }
        }
    }
}

/// Something to stop when the VM stops (device I/O threads).
pub type ShutdownHook = Box<dyn FnOnce() + Send>;

/// A VM ready to run.
pub struct Vm {
    vcpus: Vec<Vcpu>,
    receiver: Receiver<VmEvent>,
    events: VmEventSender,
    hooks: Mutex<Vec<ShutdownHook>>,
    devices: DeviceContext,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// A VM of `vcpus`, stopped by the first event on `receiver` (`events` is its sender), its
    /// devices wired through `devices`, with `hooks` to run once it stops.
    pub(crate) fn new(
        vcpus: Vec<Vcpu>,
        receiver: Receiver<VmEvent>,
        events: VmEventSender,
        hooks: Vec<ShutdownHook>,
        devices: DeviceContext,
    ) -> Self {
        Vm {
            vcpus,
            receiver,
            events,
            hooks: Mutex::new(hooks),
            devices,
        }
    }

    /// The counters printed at exit.
    pub fn counters(&self) -> &Arc<Counters> {
        self.devices.counters()
    }

    /// Runs every vCPU on its own thread until the guest powers off or resets (or a vCPU
    /// fails), then stops all vCPU and device threads.
    pub fn run(mut self) -> Result<VmExit, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut spawn_error = None;
        for vcpu in self.vcpus.drain(..) {
            let name = format!("vcpu{}", vcpu.index());
            let (stop, events) = (stop.clone(), self.events.clone());
            match std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || vcpu.run(&stop, &events))
            {
                Ok(t) => threads.push(t),
                Err(source) => {
                    spawn_error = Some(Error::Thread { name, source });
                    break;
                }
            }
        }
        let event = match spawn_error {
            Some(e) => Err(e),
            None => Ok(wait_for_stop(&self.receiver, crate::stop_signals::take)),
        };
        tracing::info!("Stopping the VM: {event:?}");
        stop.store(true, Ordering::Release);
        for t in &threads {
            while !t.is_finished() {
                // A signal interrupts KVM_RUN with EINTR; repeat in case it raced with entry.
                let _ = t.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("A vCPU thread panicked");
            }
        }
        for hook in self
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            hook();
        }
        let _ = std::io::stdout().flush();
        match event? {
            Stop::Signal(number) => Ok(VmExit::Signal(number)),
            Stop::Event(VmEvent::PowerOff) => Ok(VmExit::PowerOff),
            Stop::Event(VmEvent::Reboot { how }) => Ok(VmExit::Reboot(how)),
            Stop::Event(VmEvent::Halted { cpu }) => Ok(VmExit::Halted(cpu)),
            Stop::Event(VmEvent::Error(message)) => Err(Error::Guest(message)),
        }
    }
}
