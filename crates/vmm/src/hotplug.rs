//! ACPI PCI hot-plug on bus 0: the register block the DSDT's `PCNT` and `_EJ0` methods use, and
//! the handshake between the API thread (add, remove) and the guest (rescan, eject).
//!
//! Why ACPI hot-plug on bus 0 rather than PCIe native hot-plug on a root port: bus 0 is a flat
//! conventional bus, so a hot-added device gets a bus-0 source-id (`00:NN.0`) that the DMAR's
//! single INCLUDE_PCI_ALL DRHD already covers, exactly like a boot-time device; the nested
//! (accel) path wants no bridge between the device and the unit (a bridge would alias
//! requester ids); and the FADT is hardware-reduced, so the event reaches the guest through a
//! Generic Event Device (ACPI0013) whose interrupt is a plain legacy line
//! ([`crate::interrupt::IrqLine`]), the same path COM1 uses on either irqchip.
//!
//! ```text
//!  API add-disk ─ pci::add_disk_at(slot) ─ announce_add(slot): UP |= bit ─ GED line pulse
//!  API remove   ─ request_eject(slot):  DOWN |= bit, asked |= bit ─ GED line pulse
//!                                                                      │
//!  guest: GED _EVT ─> \_SB.PCI0.PCNT: read UP, DOWN (each read clears) ┘
//!         Notify(SLnn, 1) for UP bits  ─> acpiphp rescans the slot, driver binds
//!         Notify(SLnn, 3) for DOWN bits ─> acpiphp unbinds, SLnn._EJ0 writes bit to EJECT
//!  EJECT write: bits in `asked` move to `ejected` (others ignored) ─> wait_eject returns true
//!  wait_eject times out: the request is withdrawn, a later eject of that slot is ignored
//! ```
//!
//! Every register is a 32-bit slot bitmap; bit 0 (the host bridge) is never set, and guest
//! writes only ever clear bits the VMM set, so a hostile guest can neither grow state nor eject
//! a slot nobody asked for.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;
use crate::interrupt::EdgeLine;

/// Offset of UP: slots added since the last read (read clears).
pub const REG_UP: u64 = 0;
/// Offset of DOWN: slots the VMM asks the guest to eject, since the last read (read clears).
pub const REG_DOWN: u64 = 4;
/// Offset of EJECT: the guest writes the bit of a slot it has released (reads as 0).
pub const REG_EJECT: u64 = 8;
/// Size of the register block in port-I/O space.
pub const REGISTER_BLOCK_SIZE: u16 = 12;
/// The slots that can be hot-plugged (device numbers 1..=31 of bus 0).
pub const HOTPLUG_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;

#[derive(Debug, Default)]
struct State {
    up: u32,
    down: u32,
    asked: u32,
    ejected: u32,
    ignored_ejects: u64,
}

/// The hot-plug register block and the eject handshake.
pub struct HotplugRegisters {
    state: Mutex<State>,
    ejected: Condvar,
    notify: Box<dyn EdgeLine>,
}

impl std::fmt::Debug for HotplugRegisters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugRegisters")
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

fn slot_bit(slot: u8) -> u32 {
    if HOTPLUG_SLOTS.contains(&slot) {
        1 << slot
    } else {
        0
    }
}

impl HotplugRegisters {
    /// Registers that raise `notify` for each add or eject request.
    pub fn new(notify: Box<dyn EdgeLine>) -> Self {
        HotplugRegisters {
            state: Mutex::new(State::default()),
            ejected: Condvar::new(),
            notify,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the guest a device now sits at `slot` (ignored outside [`HOTPLUG_SLOTS`]).
    pub fn announce_add(&self, slot: u8) {
        self.lock().up |= slot_bit(slot);
        self.notify.pulse();
    }

    /// Asks the guest to release the device at `slot` (ignored outside [`HOTPLUG_SLOTS`]).
    pub fn request_eject(&self, slot: u8) {
        let bit = slot_bit(slot);
        {
            let mut state = self.lock();
            state.down |= bit;
            state.asked |= bit;
            state.ejected &= !bit;
        }
        self.notify.pulse();
    }

    /// Waits up to `timeout` for the guest to eject `slot` after [`Self::request_eject`];
    /// `false` withdraws the request (a later eject of that slot is then ignored).
    pub fn wait_eject(&self, slot: u8, timeout: Duration) -> bool {
        let bit = slot_bit(slot);
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if bit != 0 && state.ejected & bit != 0 {
                state.ejected &= !bit;
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if bit == 0 || left.is_zero() {
                state.asked &= !bit;
                state.down &= !bit;
                return false;
            }
            state = self
                .ejected
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many guest eject writes named a slot nobody asked to eject.
    pub fn ignored_ejects(&self) -> u64 {
        self.lock().ignored_ejects
    }

    fn guest_eject(&self, value: u32) {
        let mut state = self.lock();
        let accepted = value & state.asked;
        if value & !accepted != 0 {
            state.ignored_ejects += 1;
            log_limit::limited!(
                warn,
                "The guest ejected PCI slots {:#x} that were not asked to go; ignored",
                value & !accepted
            );
        }
        if accepted != 0 {
            state.asked &= !accepted;
            state.ejected |= accepted;
            self.ejected.notify_all();
        }
    }
}

impl BusDevice for HotplugRegisters {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (REG_UP, 4) => std::mem::take(&mut self.lock().up),
            (REG_DOWN, 4) => std::mem::take(&mut self.lock().down),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset == REG_EJECT
            && let Ok(bytes) = <[u8; 4]>::try_from(data)
        {
            self.guest_eject(u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Count(AtomicU32);
    impl EdgeLine for Arc<Count> {
        fn pulse(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn registers() -> (HotplugRegisters, Arc<Count>) {
        let count = Arc::new(Count::default());
        (HotplugRegisters::new(Box::new(count.clone())), count)
    }

    fn read(r: &HotplugRegisters, offset: u64) -> u32 {
        let mut b = [0xffu8; 4];
        r.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn up_and_down_are_read_once_and_each_request_notifies() {
        let (r, count) = registers();
        r.announce_add(3);
        r.announce_add(31);
        assert_eq!(read(&r, REG_UP), (1 << 3) | (1 << 31));
        assert_eq!(read(&r, REG_UP), 0, "a read clears UP");
        r.request_eject(5);
        assert_eq!(read(&r, REG_DOWN), 1 << 5);
        assert_eq!(read(&r, REG_DOWN), 0, "a read clears DOWN");
        assert_eq!(read(&r, REG_EJECT), 0);
        assert_eq!(count.0.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn slots_outside_1_to_31_never_show() {
        let (r, _) = registers();
        r.announce_add(0);
        r.announce_add(32);
        r.request_eject(0);
        r.request_eject(200);
        assert_eq!(read(&r, REG_UP), 0);
        assert_eq!(read(&r, REG_DOWN), 0);
        assert!(!r.wait_eject(0, Duration::ZERO));
    }

    #[test]
    fn an_asked_eject_completes_the_wait() {
        let (r, _) = registers();
        let r = Arc::new(r);
        r.request_eject(4);
        let guest = {
            let r = r.clone();
            std::thread::spawn(move || r.write(REG_EJECT, &(1u32 << 4).to_le_bytes()))
        };
        assert!(r.wait_eject(4, Duration::from_secs(60)));
        guest.join().unwrap();
        assert_eq!(r.ignored_ejects(), 0);
    }

    #[test]
    fn ejects_nobody_asked_for_are_ignored() {
        let (r, _) = registers();
        r.write(REG_EJECT, &u32::MAX.to_le_bytes());
        assert_eq!(r.ignored_ejects(), 1);
        r.request_eject(6);
        // Slot 7 was not asked; slot 6 was.
        r.write(REG_EJECT, &((1u32 << 6) | (1 << 7)).to_le_bytes());
        assert_eq!(r.ignored_ejects(), 2);
        assert!(r.wait_eject(6, Duration::ZERO));
        // Short, misplaced and odd-sized writes do nothing.
        r.request_eject(9);
        r.write(REG_EJECT, &[0xff]);
        r.write(REG_EJECT + 1, &u32::MAX.to_le_bytes());
        r.write(REG_UP, &u32::MAX.to_le_bytes());
        r.write(REG_EJECT, &[0xff; 8]);
        assert!(!r.wait_eject(9, Duration::ZERO));
    }

    #[test]
    fn a_request_that_timed_out_is_withdrawn() {
        let (r, _) = registers();
        r.request_eject(8);
        assert!(!r.wait_eject(8, Duration::from_millis(1)));
        assert_eq!(
            read(&r, REG_DOWN),
            0,
            "the withdrawn request no longer shows"
        );
        r.write(REG_EJECT, &(1u32 << 8).to_le_bytes());
        assert_eq!(r.ignored_ejects(), 1, "a late eject is ignored");
        assert!(!r.wait_eject(8, Duration::ZERO));
    }

    #[test]
    fn odd_sized_reads_fill_every_byte() {
        let (r, _) = registers();
        r.announce_add(1);
        let mut b = [0xffu8; 8];
        r.read(REG_UP, &mut b);
        assert_eq!(b, [0; 8], "only 4-byte reads see (and clear) UP");
        assert_eq!(read(&r, REG_UP), 1 << 1);
        let mut one = [0xffu8; 1];
        r.read(REG_DOWN + 2, &mut one);
        assert_eq!(one, [0]);
    }
}
