//! The gate device I/O threads pass before they touch guest memory or a backend, so the VMM
//! can pause a VM's devices, not only its vCPUs.
//!
//! ```text
//! I/O thread: wake (queue notify) ─► IoGate::enter ─┬─ open: Pass (busy + 1) ─► process ─►
//!                                                   │         drop Pass (busy - 1)
//!                                                   ├─ closed: wait until opened
//!                                                   └─ its stop flag set: None ─► exit
//! VMM pause:  vCPUs parked ─► IoGate::close ─► wait until busy = 0 ─► every device idle
//! VMM resume: IoGate::open ─► waiting threads pass ─► vCPUs resume
//! ```
//!
//! A thread waiting in its event loop holds no pass, so closing waits only for the batches in
//! progress (bounded: a virtio-blk pass completes at most twice its queue size). While closed,
//! a notification that arrives (one the guest wrote before its vCPUs were parked) waits at
//! the gate: after `close` returns no device reads or writes guest memory or its backend until
//! `open`. Stopping a device sets its stop flag and calls [`IoGate::wake`], so a thread
//! waiting at a closed gate exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    closed: bool,
    busy: usize,
}

/// One VM's device I/O gate (shared by every device; a device built without one gets a gate
/// that is never closed).
#[derive(Debug, Default)]
pub struct IoGate {
    state: Mutex<State>,
    changed: Condvar,
}

/// Permission to process one batch; the gate counts it until dropped.
#[derive(Debug)]
pub struct Pass<'a>(&'a IoGate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy -= 1;
        drop(state);
        self.0.changed.notify_all();
    }
}

impl IoGate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while the gate is closed, then counts the caller as busy until the pass drops;
    /// `None` once `stop` is set (the caller's device is being stopped).
    pub fn enter(&self, stop: &AtomicBool) -> Option<Pass<'_>> {
        let mut state = self.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            if !state.closed {
                state.busy += 1;
                return Some(Pass(self));
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Closes the gate and waits until no pass is out. If passes are still out after
    /// `timeout`, the gate is opened again and `false` returned.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        state.closed = true;
        while state.busy > 0 {
            let now = Instant::now();
            if now >= deadline {
                state.closed = false;
                drop(state);
                self.changed.notify_all();
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Opens the gate: threads waiting at it go on.
    pub fn open(&self) {
        self.lock().closed = false;
        self.changed.notify_all();
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Wakes the threads waiting at the gate so they look at their stop flags.
    pub fn wake(&self) {
        // Taking the lock orders the wake-up after a waiter's check of its flag.
        drop(self.lock());
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn close_waits_for_the_passes_out_and_holds_new_ones() {
        let gate = Arc::new(IoGate::new());
        let stop = AtomicBool::new(false);
        let pass = gate.enter(&stop).expect("open gate");
        assert!(!gate.close(Duration::from_millis(10)), "a pass is out");
        assert!(!gate.is_closed(), "a failed close leaves the gate open");
        let closer = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.close(Duration::from_secs(60)))
        };
        while !gate.is_closed() {
            std::thread::yield_now();
        }
        let passed = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (gate, passed) = (gate.clone(), passed.clone());
            std::thread::spawn(move || {
                let stop = AtomicBool::new(false);
                let _pass = gate.enter(&stop).unwrap();
                passed.fetch_add(1, Ordering::SeqCst);
            })
        };
        drop(pass);
        assert!(closer.join().unwrap(), "closed once the pass came back");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(passed.load(Ordering::SeqCst), 0, "held at the closed gate");
        gate.open();
        waiter.join().unwrap();
        assert_eq!(passed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stopped_thread_leaves_a_closed_gate() {
        let gate = Arc::new(IoGate::new());
        assert!(gate.close(Duration::from_secs(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || gate.enter(&stop).is_none())
        };
        stop.store(true, Ordering::SeqCst);
        gate.wake();
        assert!(waiter.join().unwrap(), "no pass for a stopped thread");
    }
}
