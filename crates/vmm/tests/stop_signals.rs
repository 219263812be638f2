//! SIGTERM to a VMM process that installed the stop handlers is recorded, not fatal, and ends a
//! waiting VM with `Stop::Signal`; without a signal, the first VM event wins. Its own test
//! binary: the signal goes to the whole process.

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use vmm::legacy::VmEvent;
use vmm::running::{Stop, wait_for_stop};
use vmm::stop_signals;

#[test]
fn a_stop_signal_ends_the_wait_and_an_event_wins_without_one() {
    stop_signals::install().expect("install the handlers");
    assert_eq!(stop_signals::take(), None);

    // No signal: the first event is what stops the VM.
    let (sender, receiver) = channel();
    sender.send(VmEvent::PowerOff).unwrap();
    assert!(matches!(
        wait_for_stop(&receiver, stop_signals::take),
        Stop::Event(VmEvent::PowerOff)
    ));

    // SIGTERM from outside (kill(1)), while the VM waits with no event.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let started = Instant::now();
    let stop = wait_for_stop(&receiver, stop_signals::take);
    assert!(
        matches!(stop, Stop::Signal(libc::SIGTERM)),
        "{stop:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(stop_signals::take(), None, "taken once");
    assert_eq!(stop_signals::name(libc::SIGTERM), "SIGTERM");

    // Every vCPU gone without an event: an error, not a hang.
    drop(sender);
    assert!(matches!(
        wait_for_stop(&receiver, || None),
        Stop::Event(VmEvent::Error(_))
    ));
}
