//! SIGUSR1 writes the vIOMMU's state to stderr while the VM runs.
//!
//! ```text
//!  SIGUSR1 ─► on_signal: eventfd write (one write(2): async-signal-safe)
//!  "iommu-state" thread: eventfd read (blocks) ─► print(): the text to stderr
//! ```
//!
//! Only the binary installs the handler ([`install`]); the printing thread lives as long as the
//! process.

use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

/// Written by the handler, read by the printing thread.
static WAKE: OnceLock<EventFd> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if let Some(fd) = WAKE.get() {
        let _ = fd.write(1);
    }
}

/// Why the handler could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The eventfd.
    #[error("Cannot create the SIGUSR1 eventfd")]
    EventFd(#[source] std::io::Error),
    /// The handler.
    #[error("Cannot install the SIGUSR1 handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
    /// The thread.
    #[error("Cannot start the SIGUSR1 thread")]
    Thread(#[source] std::io::Error),
    /// Installed twice.
    #[error("The SIGUSR1 handler is already installed")]
    Twice,
}

/// Makes SIGUSR1 write `print()` to stderr (from a thread of its own, never in the handler).
pub fn install(print: impl Fn() -> String + Send + 'static) -> Result<(), Error> {
    let fd = EventFd::new(libc::EFD_CLOEXEC).map_err(Error::EventFd)?;
    let reader = fd.try_clone().map_err(Error::EventFd)?;
    WAKE.set(fd).map_err(|_| Error::Twice)?;
    std::thread::Builder::new()
        .name("iommu-state".into())
        .spawn(move || {
            while reader.read().is_ok() {
                eprint!("{}", print());
            }
        })
        .map_err(Error::Thread)?;
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, on_signal).map_err(Error::Handler)
}
