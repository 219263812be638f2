//! Small platform devices: the ACPI power-management block (power-off and reset) and the
//! i8042's reset line. Both report to the VM through [`VmEventSender`].

use std::sync::mpsc::Sender;

use crate::arch::x86_64::layout::{
    ACPI_RESET_REG, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL, ACPI_SLEEP_STATUS,
};
use crate::bus::BusDevice;

/// Why the VM stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset; `how` says through what.
    Reboot {
        /// The mechanism (ACPI reset register, i8042, triple fault, ...).
        how: &'static str,
    },
    /// A vCPU halted with interrupts off and no irqchip (test guests only).
    Halted {
        /// vCPU index.
        cpu: u32,
    },
    /// A fatal vCPU error (one sentence).
    Error(String),
}

/// Where devices and vCPUs send [`VmEvent`]s.
pub type VmEventSender = Sender<VmEvent>;

/// SLP_EN in the hardware-reduced sleep control register.
const SLP_EN: u8 = 1 << 5;
/// The `_S5_` sleep type in the DSDT.
const SLP_TYP_S5: u8 = 5;

/// The ACPI power-management block: sleep control, sleep status, reset register.
#[derive(Debug)]
pub struct PmDevice {
    events: VmEventSender,
}

impl PmDevice {
    /// A PM block reporting to `events`.
    pub fn new(events: VmEventSender) -> Self {
        PmDevice { events }
    }
}

/// Decodes a sleep control register write: `Some(S5)` means power off.
pub fn sleep_type(value: u8) -> Option<u8> {
    (value & SLP_EN != 0).then_some((value >> 2) & 0x7)
}

impl BusDevice for PmDevice {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset as u16 {
            ACPI_SLEEP_CONTROL => match sleep_type(value) {
                Some(SLP_TYP_S5) => {
                    let _ = self.events.send(VmEvent::PowerOff);
                }
                Some(other) => {
                    log_limit::limited!(warn, "Guest requested unsupported sleep state S{other}")
                }
                None => {}
            },
            ACPI_SLEEP_STATUS => {}
            ACPI_RESET_REG if value == ACPI_RESET_VALUE => {
                let _ = self.events.send(VmEvent::Reboot {
                    how: "ACPI reset register",
                });
            }
            _ => {}
        }
    }
}

/// Command that pulses the CPU reset line.
const I8042_RESET_CMD: u8 = 0xfe;

/// The i8042 keyboard controller's command/status port, reduced to what firmware-less guests
/// touch: status reads as idle (no data, input buffer empty), and command 0xfe resets the
/// machine.
#[derive(Debug)]
pub struct I8042 {
    events: VmEventSender,
}

impl I8042 {
    /// An i8042 reporting resets to `events`.
    pub fn new(events: VmEventSender) -> Self {
        I8042 { events }
    }
}

impl BusDevice for I8042 {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // No data, input buffer empty: a reset command can always be sent.
        data.fill(0);
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&I8042_RESET_CMD) {
            let _ = self.events.send(VmEvent::Reboot { how: "i8042 reset" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn s5_powers_off_and_reset_reboots() {
        let (tx, rx) = channel();
        let pm = PmDevice::new(tx);
        pm.write(u64::from(ACPI_SLEEP_CONTROL), &[(5 << 2) | SLP_EN]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::PowerOff));
        pm.write(u64::from(ACPI_SLEEP_CONTROL), &[5 << 2]); // no SLP_EN
        assert!(rx.try_recv().is_err());
        pm.write(u64::from(ACPI_RESET_REG), &[ACPI_RESET_VALUE]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reboot { .. })));
        assert_eq!(sleep_type(0x34), Some(5));
    }

    #[test]
    fn i8042_reset() {
        let (tx, rx) = channel();
        let kbd = I8042::new(tx);
        let mut status = [0xffu8];
        kbd.read(0, &mut status);
        assert_eq!(status[0] & 0x3, 0, "no data, input buffer empty");
        kbd.write(0, &[0xd1]);
        assert!(rx.try_recv().is_err(), "only 0xfe resets");
        kbd.write(0, &[I8042_RESET_CMD]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Reboot { how: "i8042 reset" }));
    }
}
