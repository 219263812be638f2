//! Pausing, resuming and shutting down a running VM from another thread (the API server).
//!
//! ```text
//!  VmControl::pause ─► ControlRequest ─► Vm::run's wait loop ─► VcpuGate::request_pause
//!        ▲                                    │                  kick every vCPU until each
//!        └──────────── reply (Ok / error) ◄───┘                  is parked in VcpuGate::pass
//!  vCPU thread: while gate.pass() { KVM_RUN ... }   (pass parks while paused, false once stopped)
//! ```
//!
//! The vCPU fast path reads one atomic flag per exit; the mutex is taken only while a pause is
//! requested.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the API asks of the running VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop every vCPU (parked outside KVM_RUN) and every emulated device's I/O (its batch in
    /// progress finished, nothing new started) until resumed.
    Pause,
    /// Let parked vCPUs run again.
    Resume,
    /// Stop the VM the way a guest power-off does.
    Shutdown,
}

/// Why a request was refused; each message is one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Pause while paused.
    #[error("The VM is already paused")]
    AlreadyPaused,
    /// Resume while running.
    #[error("The VM is not paused")]
    NotPaused,
    /// A vCPU did not leave KVM_RUN in time.
    #[error("vCPU threads did not stop within {0} seconds; the VM keeps running")]
    PauseTimeout(u64),
    /// A device's I/O thread did not finish its work in progress in time.
    #[error("Device I/O did not stop within {0} seconds; the VM keeps running")]
    DevicesBusy(u64),
    /// The VM has stopped (or is stopping).
    #[error("The VM is stopping")]
    Stopped,
}

/// A request and where its answer goes.
#[derive(Debug)]
pub struct ControlRequest {
    /// What to do.
    pub request: Request,
    /// The answer.
    pub reply: Sender<Result<(), ControlError>>,
}

/// A handle that sends requests to a running VM (cloneable, for the API threads).
#[derive(Clone, Debug)]
pub struct VmControl {
    sender: Sender<ControlRequest>,
    gate: Arc<VcpuGate>,
}

impl VmControl {
    /// A handle over the vCPUs' `gate` and the receiver the VM's wait loop serves.
    pub fn new(gate: Arc<VcpuGate>) -> (Self, Receiver<ControlRequest>) {
        let (sender, receiver) = channel();
        (VmControl { sender, gate }, receiver)
    }

    /// Whether the vCPUs are paused now.
    pub fn paused(&self) -> bool {
        self.gate.paused()
    }

    /// Sends `request` and waits for the VM's answer.
    pub fn send(&self, request: Request) -> Result<(), ControlError> {
        let (reply, answer) = channel();
        self.sender
            .send(ControlRequest { request, reply })
            .map_err(|_| ControlError::Stopped)?;
        answer.recv().unwrap_or(Err(ControlError::Stopped))
    }
}

#[derive(Debug, Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

/// What every vCPU thread passes before each KVM_RUN: the stop flag and the pause gate.
#[derive(Debug, Default)]
pub struct VcpuGate {
    stop: AtomicBool,
    pause_requested: AtomicBool,
    pause: Mutex<PauseState>,
    changed: Condvar,
}

impl VcpuGate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PauseState> {
        self.pause.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For a vCPU between two KVM_RUNs: parks while the VM is paused; `false` once the VM
    /// stops.
    pub fn pass(&self) -> bool {
        if self.pause_requested.load(Ordering::Acquire) {
            let mut state = self.lock();
            if state.requested && !self.stop.load(Ordering::Acquire) {
                state.parked += 1;
                self.changed.notify_all();
                while state.requested && !self.stop.load(Ordering::Acquire) {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.parked -= 1;
            }
        }
        !self.stop.load(Ordering::Acquire)
    }

    /// Stops every vCPU at its next pass (parked ones at once).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _state = self.lock();
        self.changed.notify_all();
    }

    /// Whether the VM is stopping.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks the vCPUs to park at their next pass; `false` if already paused.
    pub fn request_pause(&self) -> bool {
        let mut state = self.lock();
        if state.requested {
            return false;
        }
        state.requested = true;
        self.pause_requested.store(true, Ordering::Release);
        true
    }

    /// Whether a pause is in force.
    pub fn paused(&self) -> bool {
        self.lock().requested
    }

    /// How many vCPUs are parked now.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Lets parked vCPUs run again; `false` if not paused.
    pub fn resume(&self) -> bool {
        let mut state = self.lock();
        if !state.requested {
            return false;
        }
        state.requested = false;
        self.pause_requested.store(false, Ordering::Release);
        self.changed.notify_all();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Two "vCPU" threads spin through the gate; a pause parks both (their step counts stay
    /// put), a resume lets them go on, a stop ends them even while paused.
    #[test]
    fn pause_parks_every_thread_and_resume_and_stop_release_them() {
        let gate = Arc::new(VcpuGate::new());
        let steps: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (gate, steps) = (gate.clone(), steps.clone());
                std::thread::spawn(move || {
                    while gate.pass() {
                        steps[i].fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        assert!(gate.request_pause());
        assert!(!gate.request_pause(), "a second pause is refused");
        while gate.parked() < 2 {
            std::thread::yield_now();
        }
        let frozen: Vec<u64> = steps.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        for _ in 0..1000 {
            std::thread::yield_now();
        }
        let later: Vec<u64> = steps.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert_eq!(frozen, later, "parked threads do not step");

        assert!(gate.resume());
        assert!(!gate.resume(), "resume without a pause is refused");
        while steps[0].load(Ordering::Relaxed) == frozen[0]
            || steps[1].load(Ordering::Relaxed) == frozen[1]
        {
            std::thread::yield_now();
        }

        assert!(gate.request_pause());
        while gate.parked() < 2 {
            std::thread::yield_now();
        }
        gate.stop();
        for t in threads {
            t.join().unwrap();
        }
        assert!(gate.stopped());
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn a_request_to_a_vm_that_is_gone_is_refused() {
        let (control, receiver) = VmControl::new(Arc::new(VcpuGate::new()));
        drop(receiver);
        assert_eq!(control.send(Request::Pause), Err(ControlError::Stopped));
    }
}
