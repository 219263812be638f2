//! The running VM: one thread per vCPU until the first VM event or stop signal, then every
//! vCPU kicked and joined and the device threads stopped.
//!
//! ```text
//!  Vm::run ─ spawn vcpuN threads ─ KVM_RUN loop ─ power-off / reset / error ─> VmEvent ─┐
//!     │                                                                                 │
//!     └─ wait_for_stop (VmEvent, or a stop signal polled every stop_signals::POLL) <────┘
//!          │  (also serves control::Request: pause = park every vCPU, then close the devices'
//!          │   IoGate and wait for their batches in progress; resume; shutdown)
//!          ─> stop flag, kick (signal) and join the vCPUs ─> shutdown hooks ─> VmExit
//! ```

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use devices::io_gate::IoGate;

use crate::control::{ControlError, ControlRequest, Request, VcpuGate, VmControl};
use crate::counters::Counters;
use crate::device_context::DeviceContext;
use crate::error::Error;
use crate::legacy::{VmEvent, VmEventSender};
use crate::pci_hotplug::PciHotplug;
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
    /// A shutdown request through [`VmControl`] (the API's `vm.shutdown`).
    Shutdown,
}

/// What stopped the VM: the first event from the vCPUs or devices, or a stop signal that
/// `signal` reports (polled every [`crate::stop_signals::POLL`]).
#[derive(Debug)]
pub enum Stop {
    /// A vCPU or device event.
    Event(VmEvent),
    /// A stop signal.
    Signal(i32),
    /// A request through [`VmControl`].
    Request(ControlRequest),
}

/// Waits for the first of: an event on `receiver`, a signal `signal` reports.
pub fn wait_for_stop(receiver: &Receiver<VmEvent>, signal: impl Fn() -> Option<i32>) -> Stop {
    wait_for_stop_or_request(receiver, &signal, None)
}

/// [`wait_for_stop`], or a request on `requests` (looked at every poll).
pub fn wait_for_stop_or_request(
    receiver: &Receiver<VmEvent>,
    signal: &impl Fn() -> Option<i32>,
    requests: Option<&Receiver<ControlRequest>>,
) -> Stop {
    loop {
        if let Some(number) = signal() {
            return Stop::Signal(number);
        }
        if let Some(request) = requests.and_then(|r| r.try_recv().ok()) {
            return Stop::Request(request);
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

/// How long a pause waits for every vCPU to leave KVM_RUN.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// With the vCPUs parked, closes the devices' I/O gate and waits for the batches in progress;
/// if they do not end in time, the VM runs on.
fn quiesce(gate: &VcpuGate, io_gate: &IoGate) -> Result<(), ControlError> {
    if io_gate.close(PAUSE_TIMEOUT) {
        return Ok(());
    }
    gate.resume();
    Err(ControlError::DevicesBusy(PAUSE_TIMEOUT.as_secs()))
}

/// Kicks the vCPU threads that are neither parked nor finished until all are, or the timeout.
fn park_vcpus(gate: &VcpuGate, threads: &[JoinHandle<()>]) -> Result<(), ControlError> {
    let started = Instant::now();
    loop {
        let finished = threads.iter().filter(|t| t.is_finished()).count();
        if gate.parked() + finished >= threads.len() {
            return Ok(());
        }
        if started.elapsed() > PAUSE_TIMEOUT {
            gate.resume();
            return Err(ControlError::PauseTimeout(PAUSE_TIMEOUT.as_secs()));
        }
        for t in threads.iter().filter(|t| !t.is_finished()) {
            // Parked threads are not in KVM_RUN; the empty kick handler costs them nothing.
            let _ = t.kill(vcpu::kick_signal());
        }
        std::thread::sleep(Duration::from_millis(1));
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
    devices: Arc<DeviceContext>,
    hotplug: Arc<PciHotplug>,
    gate: Arc<VcpuGate>,
    control: VmControl,
    requests: Receiver<ControlRequest>,
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
    /// devices wired through `devices` (bus 0 changed through `hotplug`), with `hooks` to run
    /// once it stops.
    pub(crate) fn new(
        vcpus: Vec<Vcpu>,
        receiver: Receiver<VmEvent>,
        events: VmEventSender,
        hooks: Vec<ShutdownHook>,
        devices: Arc<DeviceContext>,
        hotplug: Arc<PciHotplug>,
    ) -> Self {
        let gate = Arc::new(VcpuGate::new());
        let (control, requests) = VmControl::new(gate.clone());
        Vm {
            vcpus,
            receiver,
            events,
            hooks: Mutex::new(hooks),
            devices,
            hotplug,
            gate,
            control,
            requests,
        }
    }

    /// A handle that pauses, resumes or shuts down this VM while it runs.
    pub fn control(&self) -> VmControl {
        self.control.clone()
    }

    /// The devices, the vIOMMU and the counters of this VM.
    pub fn devices(&self) -> &DeviceContext {
        &self.devices
    }

    /// Adding and removing bus-0 devices while the VM runs.
    pub fn hotplug(&self) -> &Arc<PciHotplug> {
        &self.hotplug
    }

    /// The counters printed at exit.
    pub fn counters(&self) -> &Arc<Counters> {
        self.devices.counters()
    }

    /// Runs every vCPU on its own thread until the guest powers off or resets (or a vCPU
    /// fails), then stops all vCPU and device threads.
    pub fn run(mut self) -> Result<VmExit, Error> {
        let gate = self.gate.clone();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut spawn_error = None;
        for vcpu in self.vcpus.drain(..) {
            let name = format!("vcpu{}", vcpu.index());
            let (gate, events) = (gate.clone(), self.events.clone());
            match std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || vcpu.run(&gate, &events))
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
            None => Ok(serve_until_stop(
                &self.receiver,
                &self.requests,
                &gate,
                self.devices.io_gate(),
                &threads,
                crate::stop_signals::take,
            )),
        };
        tracing::info!("Stopping the VM: {event:?}");
        gate.stop();
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
            Stop::Request(_) => Ok(VmExit::Shutdown),
            Stop::Event(VmEvent::PowerOff) => Ok(VmExit::PowerOff),
            Stop::Event(VmEvent::Reboot { how }) => Ok(VmExit::Reboot(how)),
            Stop::Event(VmEvent::Halted { cpu }) => Ok(VmExit::Halted(cpu)),
            Stop::Event(VmEvent::Error(message)) => Err(Error::Guest(message)),
        }
    }
}

/// Waits for what stops the VM (an event on `receiver`, a signal `signal` reports, a shutdown
/// request), serving pause and resume requests from `requests` meanwhile by parking the vCPU
/// `threads` at `gate`. A shutdown request is answered here and returned as `Stop::Request`.
pub fn serve_until_stop(
    receiver: &Receiver<VmEvent>,
    requests: &Receiver<ControlRequest>,
    gate: &VcpuGate,
    io_gate: &IoGate,
    threads: &[JoinHandle<()>],
    signal: impl Fn() -> Option<i32>,
) -> Stop {
    loop {
        let stop = wait_for_stop_or_request(receiver, &signal, Some(requests));
        let Stop::Request(ControlRequest { request, reply }) = stop else {
            return stop;
        };
        let answer = match request {
            Request::Pause if !gate.request_pause() => Err(ControlError::AlreadyPaused),
            Request::Pause => park_vcpus(gate, threads).and_then(|()| quiesce(gate, io_gate)),
            Request::Resume => {
                io_gate.open();
                if gate.resume() {
                    Ok(())
                } else {
                    Err(ControlError::NotPaused)
                }
            }
            Request::Shutdown => {
                let _ = reply.send(Ok(()));
                return Stop::Request(ControlRequest { request, reply });
            }
        };
        tracing::info!("API request {request:?}: {answer:?}");
        let _ = reply.send(answer);
    }
}
