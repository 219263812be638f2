//! COM1: vm-superio's 16550 UART at 0x3f8, interrupting on IRQ 4 through an irqfd on GSI 4 (KVM's
//! IOAPIC pin 4, or with the split irqchip the MSI route of the VMM's IOAPIC pin 4); output to
//! stdout or a file, input optionally from stdin.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::counters::{Counter, Counters};

/// Raises the UART's interrupt by writing its irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Counts transmitted and lost bytes.
#[derive(Debug)]
pub struct SerialCounters {
    out: Arc<Counter>,
    lost: Arc<Counter>,
}

impl SerialEvents for SerialCounters {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.out.inc();
    }
    fn tx_lost_byte(&self) {
        self.lost.inc();
    }
    fn in_buffer_empty(&self) {}
}

type Uart = Serial<IrqTrigger, SerialCounters, Box<dyn Write + Send>>;

/// The UART as a port-I/O bus device (8 registers).
pub struct SerialDevice {
    uart: Mutex<Uart>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART writing to `out`, interrupting through `irq`, counting into `counters`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, counters: &Counters) -> Self {
        let events = SerialCounters {
            out: counters.register("serial_tx_bytes"),
            lost: counters.register("serial_tx_lost_bytes"),
        };
        SerialDevice {
            uart: Mutex::new(Serial::with_events(IrqTrigger(irq), events, out)),
        }
    }

    /// Feeds `input` to the guest from a background thread until EOF, waiting while the
    /// receive FIFO is full.
    pub fn spawn_input(self: &Arc<Self>, mut input: impl Read + Send + 'static) {
        let device = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("serial-in".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = input.read(&mut buf) {
                    let mut pending = &buf[..n];
                    while !pending.is_empty() {
                        let Some(device) = device.upgrade() else {
                            return;
                        };
                        let taken = device
                            .uart
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .enqueue_raw_bytes(pending)
                            .unwrap_or(0);
                        pending = &pending[taken..];
                        if taken == 0 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("Serial input disabled: cannot start its thread: {e}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = uart.read(offset);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first())
            && let Err(e) = uart.write(offset, value)
        {
            tracing::debug!("COM1 write at offset {offset}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_counts_and_interrupts() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = Shared::default();
        let counters = Counters::new();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()), &counters);
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok\n");
        assert!(irq.read().unwrap() >= 1);
        assert!(counters.summary().contains("counter serial_tx_bytes 3\n"));
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
