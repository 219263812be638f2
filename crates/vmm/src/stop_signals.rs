//! SIGINT, SIGTERM and SIGHUP stop the VM the way a guest power-off does: the vCPUs are kicked
//! out of KVM_RUN and joined, the devices' threads stopped, the counters printed, and the
//! process exits with 128 + the signal number (QEMU prints "terminating on signal N" too).
//!
//! ```text
//!  signal ─► on_stop_signal: RECEIVED = N   (one atomic store: async-signal-safe)
//!  Vm::run waits for the first VmEvent, polling `take()` every POLL ─► VmExit::Signal(N)
//! ```
//!
//! Only the binary installs the handlers ([`install`]); a library user (and the test harness)
//! keeps the default actions.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// How often a waiting VM looks for a received signal.
pub const POLL: Duration = Duration::from_millis(50);

/// The signals that stop the VM.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The last stop signal received and not yet taken, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RECEIVED.store(num, Ordering::SeqCst);
}

/// Makes [`SIGNALS`] stop the VM instead of killing the process.
pub fn install() -> Result<(), vmm_sys_util::errno::Error> {
    for signal in SIGNALS {
        vmm_sys_util::signal::register_signal_handler(signal, on_stop_signal)?;
    }
    Ok(())
}

/// The stop signal received since the last call, if any.
pub fn take() -> Option<i32> {
    match RECEIVED.swap(0, Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// A signal's usual name, for the exit message.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
