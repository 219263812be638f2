//! The user-space IOAPIC of the split irqchip: 24 pins behind IOREGSEL/IOWIN at 0xfec00000,
//! version 0x20 (with the EOI register at offset 0x40), ID, arbitration ID and one 64-bit
//! redirection entry (RTE) per pin. Each RTE becomes the MSI its pin sends, installed as the
//! route of GSI = pin, so a device's irqfd on that GSI reaches the LAPICs without an exit.
//!
//! ```text
//! guest ─ IOREGSEL/IOWIN ─> Ioapic ─ RTE n written ─> IoapicOutput::route(n, MSI | None: masked)
//!                                                       └─> GsiRouting: source-id ff:00.0,
//!                                                           through the remapping hook
//! edge line:   device ─ irqfd (GSI n) ─> KVM: route n ─> LAPIC          (no VMM involvement)
//! level line:  Ioapic::set_level(n) ─> remote IRR set ─> IoapicOutput::inject(n) ─> LAPIC
//!              guest EOI ─> KVM_EXIT_IOAPIC_EOI (vector) ─┐
//!              guest write to the EOI register (vector) ──┴─> Ioapic::end_of_interrupt
//!                ─> remote IRR cleared for the level pins with that vector ─> still high? inject
//! resampled:   a line with a resampler (an assigned function's INTx, whose source masks
//!              itself after each interrupt) is lowered at that EOI and its resampler runs
//!              (VFIO unmask); a source still asserting raises it again through set_level
//! ```
//!
//! An RTE is turned into a message the way the 82093AA's successors put it on the bus (VT-d
//! 5.1.5.1): RTE bits 63:48 become address bits 19:4 and the destination-mode bit 11 address
//! bit 2. In compatibility format that is destination ID 7:0 (63:56) → address 19:12 and the
//! extended destination ID (55:49) → address 11:5; in remappable format (bit 48) it is the
//! format bit → address bit 4, interrupt index 14:0 (63:49) → address 19:5 and index bit 15
//! (bit 11) → address bit 2, with SHV clear. The data carries the vector, the delivery mode and,
//! for level-triggered pins, the trigger-mode and assert bits, so KVM requests an EOI exit for
//! exactly those vectors (`kvm_scan_ioapic_routes`).
//!
//! Everything the guest writes is taken as is and bounded: a register index beyond the table
//! reads as zero and ignores writes; every access width is accepted.

use std::sync::{Arc, Mutex};

use crate::arch::x86_64::layout::{IOAPIC_ID, IOAPIC_PINS, IOAPIC_SOURCE_ID};
use crate::bus::BusDevice;
use crate::interrupt::{GsiRouting, IrqLine, Msi, MsiSource};

/// Number of pins, as an index bound.
pub const PINS: usize = IOAPIC_PINS as usize;
/// Size of the MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// IOREGSEL: the index of the register IOWIN reaches.
pub const IOREGSEL: u64 = 0x00;
/// IOWIN: the selected register.
pub const IOWIN: u64 = 0x10;
/// EOI register (version 0x20): writing a vector ends level interrupts with that vector.
pub const IOEOI: u64 = 0x40;
/// Register 0: ID in bits 27:24.
pub const REG_ID: u8 = 0x00;
/// Register 1: version (7:0) and maximum redirection entry (23:16).
pub const REG_VERSION: u8 = 0x01;
/// Register 2: arbitration ID in bits 27:24.
pub const REG_ARBITRATION: u8 = 0x02;
/// Register 0x10 + 2n: RTE n bits 31:0; 0x11 + 2n: bits 63:32.
pub const REG_REDIRECTION: u8 = 0x10;
/// The version this IOAPIC reports: 0x20, an IOAPIC with an EOI register.
pub const VERSION: u32 = 0x20;

/// The MSI address every interrupt is written to (destination fields ORed in).
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

/// One redirection entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rte(pub u64);

impl Rte {
    /// Bit 16: the pin is masked (the reset value).
    pub const MASK: u64 = 1 << 16;
    /// Bit 15: level-triggered.
    pub const LEVEL: u64 = 1 << 15;
    /// Bit 14: remote IRR, set while a level interrupt awaits its EOI (read-only).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Bit 13: active low.
    pub const ACTIVE_LOW: u64 = 1 << 13;
    /// Bit 12: delivery status (read-only; always idle here: delivery is immediate).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Bit 11: logical destination mode (compatibility format), interrupt index bit 15
    /// (remappable format).
    pub const DEST_MODE: u64 = 1 << 11;
    /// Bit 48: remappable format (VT-d 5.1.5.1).
    pub const REMAPPABLE: u64 = 1 << 48;
    /// Bits the guest cannot write.
    const READ_ONLY: u64 = Self::REMOTE_IRR | Self::DELIVERY_STATUS;

    /// The vector (bits 7:0).
    pub fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Whether the pin is masked.
    pub fn masked(self) -> bool {
        self.0 & Self::MASK != 0
    }

    /// Whether the pin is level-triggered.
    pub fn level(self) -> bool {
        self.0 & Self::LEVEL != 0
    }

    /// Whether a level interrupt awaits its EOI.
    pub fn remote_irr(self) -> bool {
        self.0 & Self::REMOTE_IRR != 0
    }

    /// Whether the entry is in remappable format.
    pub fn remappable(self) -> bool {
        self.0 & Self::REMAPPABLE != 0
    }

    /// The remappable-format interrupt index: bits 63:49 and bit 11 (VT-d 5.1.5.1).
    pub fn interrupt_index(self) -> u16 {
        ((self.0 >> 49) as u16 & 0x7fff) | (((self.0 >> 11) as u16 & 1) << 15)
    }

    /// The message the pin sends (see the module documentation for the bit mapping).
    pub fn msi(self) -> Msi {
        let address = MSI_ADDRESS_BASE
            | (((self.0 >> 48) & 0xffff) << 4)
            | (((self.0 & Self::DEST_MODE) >> 11) << 2);
        let delivery_mode = ((self.0 >> 8) & 0x7) as u32;
        let mut data = u32::from(self.vector()) | (delivery_mode << 8);
        if self.level() {
            const ASSERT: u32 = 1 << 14;
            const TRIGGER_LEVEL: u32 = 1 << 15;
            data |= ASSERT | TRIGGER_LEVEL;
        }
        Msi { address, data }
    }
}

/// Where the IOAPIC's messages go.
pub trait IoapicOutput: Send + Sync {
    /// Pin `pin` now sends `msi`, or nothing (`None`: masked).
    fn route(&self, pin: usize, msi: Option<Msi>);
    /// Delivers one interrupt of `pin` through its route.
    fn inject(&self, pin: usize);
}

#[derive(Debug)]
struct Pin {
    rte: Rte,
    /// The line's level, for level-triggered delivery and edge detection.
    asserted: bool,
    /// What [`IoapicOutput::route`] was last told.
    published: Option<Msi>,
}

#[derive(Debug)]
struct State {
    select: u8,
    id: u8,
    pins: [Pin; PINS],
}

/// What an EOI of a resampled line runs: the source is told it may interrupt again.
pub type Resampler = Arc<dyn Fn() + Send + Sync>;

/// The IOAPIC.
pub struct Ioapic {
    state: Mutex<State>,
    output: Box<dyn IoapicOutput>,
    /// `(pin, id, resampler)`; see [`Ioapic::add_resampler`].
    resamplers: Mutex<Vec<(usize, u64, Resampler)>>,
    next_resampler: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Ioapic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioapic").finish_non_exhaustive()
    }
}

impl Ioapic {
    /// An IOAPIC in its reset state (every pin masked, ID [`IOAPIC_ID`]) sending to `output`.
    pub fn new(output: Box<dyn IoapicOutput>) -> Self {
        let pins = std::array::from_fn(|_| Pin {
            rte: Rte(Rte::MASK),
            asserted: false,
            published: None,
        });
        Ioapic {
            state: Mutex::new(State {
                select: 0,
                id: IOAPIC_ID,
                pins,
            }),
            output,
            resamplers: Mutex::new(Vec::new()),
            next_resampler: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Makes `pin` a resampled level line: at each EOI that clears its remote IRR the line
    /// is lowered and `resampler` runs (after the IOAPIC's state is released, so it may block
    /// or call [`Ioapic::set_level`]). Returns the id [`Ioapic::remove_resampler`] takes.
    pub fn add_resampler(&self, pin: usize, resampler: Resampler) -> u64 {
        let id = self
            .next_resampler
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.resamplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((pin, id, resampler));
        id
    }

    /// Removes the resampler `id` returned by [`Ioapic::add_resampler`].
    pub fn remove_resampler(&self, id: u64) {
        self.resamplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, i, _)| *i != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads register `index` (what IOWIN shows with IOREGSEL = `index`).
    pub fn read_register(&self, index: u8) -> u32 {
        let state = self.lock();
        match index {
            REG_ID | REG_ARBITRATION => u32::from(state.id) << 24,
            REG_VERSION => VERSION | ((IOAPIC_PINS - 1) << 16),
            _ => match redirection(index) {
                Some((pin, high)) => {
                    let rte = state.pins[pin].rte.0;
                    if high { (rte >> 32) as u32 } else { rte as u32 }
                }
                None => 0,
            },
        }
    }

    /// Writes register `index`.
    pub fn write_register(&self, index: u8, value: u32) {
        let mut state = self.lock();
        if index == REG_ID {
            state.id = ((value >> 24) & 0xf) as u8;
            return;
        }
        let Some((n, high)) = redirection(index) else {
            return;
        };
        let pin = &mut state.pins[n];
        let old = pin.rte.0;
        let written = if high {
            (old & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        let mut rte = (written & !Rte::READ_ONLY) | (old & Rte::READ_ONLY);
        if rte & Rte::LEVEL == 0 {
            rte &= !Rte::REMOTE_IRR;
        }
        pin.rte = Rte(rte);
        self.publish(pin, n);
        self.service(pin, n);
    }

    /// Sets the level of the line into `pin` (out-of-range pins are ignored). A rising edge on
    /// an unmasked edge-triggered pin sends one interrupt; a high level-triggered line sends
    /// one whenever no earlier one awaits its EOI.
    pub fn set_level(&self, pin: usize, level: bool) {
        let mut state = self.lock();
        let Some(p) = state.pins.get_mut(pin) else {
            return;
        };
        let rising = level && !p.asserted;
        p.asserted = level;
        if p.rte.level() {
            self.service(p, pin);
        } else if rising && !p.rte.masked() {
            self.output.inject(pin);
        }
    }

    /// An EOI for `vector` (a LAPIC EOI broadcast or a write to the EOI register): every
    /// level-triggered pin with that vector and its remote IRR set is ready again, and sends
    /// again if its line is still high.
    pub fn end_of_interrupt(&self, vector: u8) {
        let resamplers: Vec<(usize, Resampler)> = self
            .resamplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(pin, _, r)| (*pin, r.clone()))
            .collect();
        let mut resampled = [false; PINS];
        {
            let mut state = self.lock();
            for (n, pin) in state.pins.iter_mut().enumerate() {
                if pin.rte.level() && pin.rte.remote_irr() && pin.rte.vector() == vector {
                    pin.rte.0 &= !Rte::REMOTE_IRR;
                    if resamplers.iter().any(|(p, _)| *p == n) {
                        pin.asserted = false;
                        resampled[n] = true;
                    }
                    self.service(pin, n);
                }
            }
        }
        for (pin, resampler) in resamplers {
            if resampled.get(pin) == Some(&true) {
                resampler();
            }
        }
    }

    /// Tells the output about the pin's message if it changed.
    fn publish(&self, pin: &mut Pin, n: usize) {
        let msi = (!pin.rte.masked()).then(|| pin.rte.msi());
        if msi != pin.published {
            pin.published = msi;
            self.output.route(n, msi);
        }
    }

    /// Sends a level-triggered pin's interrupt if its line is high, it is unmasked and no
    /// earlier interrupt awaits its EOI.
    fn service(&self, pin: &mut Pin, n: usize) {
        let rte = pin.rte;
        if rte.level() && pin.asserted && !rte.masked() && !rte.remote_irr() {
            pin.rte.0 |= Rte::REMOTE_IRR;
            self.output.inject(n);
        }
    }
}

/// The pin and half (`true`: bits 63:32) register `index` reaches, if it is an RTE.
fn redirection(index: u8) -> Option<(usize, bool)> {
    let offset = usize::from(index.checked_sub(REG_REDIRECTION)?);
    let pin = offset / 2;
    (pin < PINS).then_some((pin, offset % 2 == 1))
}

/// Little-endian value of up to the first four bytes of `data`.
fn le_value(data: &[u8]) -> u32 {
    data.iter()
        .take(4)
        .enumerate()
        .fold(0, |v, (i, &b)| v | (u32::from(b) << (8 * i)))
}

impl BusDevice for Ioapic {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let register = offset & !3;
        let value = match register {
            IOREGSEL => u32::from(self.lock().select),
            IOWIN => {
                let select = self.lock().select;
                self.read_register(select)
            }
            _ => 0,
        };
        let shifted = value >> (8 * (offset & 3));
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = if i < 4 { (shifted >> (8 * i)) as u8 } else { 0 };
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        // Registers are written as whole dwords at their own offsets; other writes are ignored.
        if offset & 3 != 0 {
            return;
        }
        let value = le_value(data);
        match offset {
            IOREGSEL => self.lock().select = value as u8,
            IOWIN => {
                let select = self.lock().select;
                self.write_register(select, value);
            }
            IOEOI => self.end_of_interrupt(value as u8),
            _ => {}
        }
    }
}

/// The IOAPIC's output into KVM: pin `n`'s message is the MSI route of GSI `n` (source-id
/// [`IOAPIC_SOURCE_ID`], through the remapping hook), and an interrupt is a write to the
/// IOAPIC's own irqfd on that GSI (a device raising an edge line has an irqfd of its own on the
/// same GSI).
#[derive(Debug)]
pub struct KvmIoapicOutput {
    routing: Arc<GsiRouting>,
    lines: Vec<IrqLine>,
}

impl KvmIoapicOutput {
    /// An irqfd on each of GSIs 0..24 of the VM `routing` belongs to.
    pub fn new(
        vm: &kvm_ioctls::VmFd,
        routing: Arc<GsiRouting>,
    ) -> Result<Self, crate::interrupt::Error> {
        let lines = (0..IOAPIC_PINS)
            .map(|gsi| IrqLine::new(vm, gsi))
            .collect::<Result<_, _>>()?;
        Ok(KvmIoapicOutput { routing, lines })
    }
}

impl IoapicOutput for KvmIoapicOutput {
    fn route(&self, pin: usize, msi: Option<Msi>) {
        let Ok(gsi) = u32::try_from(pin) else { return };
        let source = msi.map(|msi| MsiSource {
            sid: IOAPIC_SOURCE_ID,
            msi,
        });
        if let Err(e) = self.routing.set_msi_route(gsi, source) {
            log_limit::limited!(warn, "IOAPIC pin {pin}: {e}");
        }
    }

    fn inject(&self, pin: usize) {
        if let Some(Err(e)) = self.lines.get(pin).map(IrqLine::trigger) {
            log_limit::limited!(warn, "IOAPIC pin {pin}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        Route(usize, Option<Msi>),
        Inject(usize),
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Event>>>);

    impl Recorder {
        fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl IoapicOutput for Recorder {
        fn route(&self, pin: usize, msi: Option<Msi>) {
            self.0.lock().unwrap().push(Event::Route(pin, msi));
        }
        fn inject(&self, pin: usize) {
            self.0.lock().unwrap().push(Event::Inject(pin));
        }
    }

    fn ioapic() -> (Ioapic, Recorder) {
        let recorder = Recorder::default();
        (Ioapic::new(Box::new(recorder.clone())), recorder)
    }

    /// Through MMIO, as the guest does it: select, then the window.
    fn mmio_write(io: &Ioapic, index: u8, value: u32) {
        io.write(IOREGSEL, &[index, 0, 0, 0]);
        io.write(IOWIN, &value.to_le_bytes());
    }

    fn mmio_read(io: &Ioapic, index: u8) -> u32 {
        io.write(IOREGSEL, &u32::from(index).to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn set_rte(io: &Ioapic, pin: u8, rte: u64) {
        mmio_write(io, REG_REDIRECTION + 2 * pin + 1, (rte >> 32) as u32);
        mmio_write(io, REG_REDIRECTION + 2 * pin, rte as u32);
    }

    #[test]
    fn identification_registers() {
        let (io, _) = ioapic();
        assert_eq!(
            mmio_read(&io, REG_VERSION),
            0x0017_0020,
            "24 pins, version 0x20"
        );
        assert_eq!(mmio_read(&io, REG_ID), 0);
        mmio_write(&io, REG_ID, 0x0500_0000);
        assert_eq!(mmio_read(&io, REG_ID), 0x0500_0000);
        assert_eq!(mmio_read(&io, REG_ARBITRATION), 0x0500_0000);
        mmio_write(&io, REG_VERSION, 0xffff_ffff);
        assert_eq!(mmio_read(&io, REG_VERSION), 0x0017_0020, "read-only");
        let mut sel = [0u8; 4];
        io.read(IOREGSEL, &mut sel);
        assert_eq!(sel, [REG_VERSION, 0, 0, 0]);
    }

    #[test]
    fn redirection_entries_reset_masked_and_read_back() {
        let (io, out) = ioapic();
        for pin in 0..24 {
            assert_eq!(
                mmio_read(&io, REG_REDIRECTION + 2 * pin),
                0x1_0000,
                "pin {pin}"
            );
            assert_eq!(mmio_read(&io, REG_REDIRECTION + 2 * pin + 1), 0);
        }
        // Remote IRR and delivery status cannot be written.
        set_rte(&io, 3, 0x0300_0000_0001_d0f1);
        assert_eq!(mmio_read(&io, 0x16), 0x0001_80f1);
        assert_eq!(mmio_read(&io, 0x17), 0x0300_0000);
        assert_eq!(out.take(), vec![], "still masked: no route");
    }

    #[test]
    fn hostile_accesses_are_bounded() {
        let (io, out) = ioapic();
        for index in [0x03, 0x0f, 0x40, 0x41, 0xfe, 0xff] {
            mmio_write(&io, index, 0xffff_ffff);
            assert_eq!(mmio_read(&io, index), 0, "register {index:#x}");
        }
        let mut wide = [0xaau8; 8];
        io.read(IOWIN, &mut wide);
        assert_eq!(&wide[4..], &[0; 4]);
        io.write(IOWIN + 1, &[1, 2, 3]);
        io.write(0xff8, &[0xff; 8]);
        io.write(IOWIN, &[]);
        io.read(0xfff, &mut [0u8; 1]);
        io.set_level(24, true);
        io.set_level(usize::MAX, true);
        assert_eq!(out.take(), vec![]);
    }

    #[test]
    fn compatibility_format_message() {
        // Vector 0x31, lowest priority, logical, level, destination 0x0f, extended bits 0x05.
        let rte =
            Rte((0x0f_u64 << 56) | (0x05 << 49) | Rte::LEVEL | Rte::DEST_MODE | (1 << 8) | 0x31);
        assert_eq!(
            rte.msi(),
            Msi {
                address: 0xfee0_f0a4,
                data: 0xc131
            }
        );
        let edge = Rte((0x02_u64 << 56) | 0x40);
        assert_eq!(
            edge.msi(),
            Msi {
                address: 0xfee0_2000,
                data: 0x40
            }
        );
    }

    #[test]
    fn remappable_format_message() {
        // As Linux's IO-APIC remapping programs it: index 0x8321 (bits 63:49 and 11), format
        // bit 48, the pin number as the vector.
        let index: u64 = 0x8321;
        let rte = Rte(((index & 0x7fff) << 49) | Rte::REMAPPABLE | (((index >> 15) & 1) << 11) | 4);
        assert!(rte.remappable());
        assert_eq!(rte.interrupt_index(), 0x8321);
        let msi = rte.msi();
        assert_eq!(msi.address & 0xffff_fff0_0000, 0xfee0_0000);
        assert_ne!(msi.address & Msi::REMAPPABLE, 0, "format bit");
        assert_eq!(msi.address & (1 << 3), 0, "no subhandle");
        assert_eq!((msi.address >> 5) & 0x7fff, 0x0321, "handle 14:0");
        assert_eq!((msi.address >> 2) & 1, 1, "handle 15");
        assert_eq!(msi.data, 4);
    }

    #[test]
    fn unmasking_routes_and_masking_disconnects() {
        let (io, out) = ioapic();
        set_rte(&io, 4, (1 << 56) | 0x24);
        let msi = Some(Msi {
            address: 0xfee0_1000,
            data: 0x24,
        });
        assert_eq!(out.take(), vec![Event::Route(4, msi)]);
        // Rewriting the same entry does not touch the routing table again.
        set_rte(&io, 4, (1 << 56) | 0x24);
        assert_eq!(out.take(), vec![]);
        set_rte(&io, 4, (1 << 56) | Rte::MASK | 0x24);
        assert_eq!(out.take(), vec![Event::Route(4, None)]);
    }

    #[test]
    fn edge_pins_fire_on_rising_edges_when_unmasked() {
        let (io, out) = ioapic();
        io.set_level(1, true);
        io.set_level(1, false);
        assert_eq!(out.take(), vec![], "masked: lost, as on the chip");
        set_rte(&io, 1, 0x21);
        out.take();
        io.set_level(1, true);
        io.set_level(1, true);
        io.set_level(1, false);
        io.set_level(1, true);
        assert_eq!(out.take(), vec![Event::Inject(1), Event::Inject(1)]);
        io.end_of_interrupt(0x21);
        assert_eq!(out.take(), vec![], "edge pins have no remote IRR");
        assert_eq!(mmio_read(&io, 0x12) & (1 << 14), 0);
    }

    #[test]
    fn level_pins_wait_for_eoi_and_reassert() {
        let (io, out) = ioapic();
        set_rte(&io, 9, Rte::LEVEL | 0x39);
        out.take();
        io.set_level(9, true);
        assert_eq!(out.take(), vec![Event::Inject(9)]);
        assert_ne!(mmio_read(&io, 0x22) & (1 << 14), 0, "remote IRR set");
        io.set_level(9, true);
        assert_eq!(out.take(), vec![], "no second delivery before the EOI");
        io.end_of_interrupt(0x38);
        assert_eq!(out.take(), vec![], "another vector");
        io.end_of_interrupt(0x39);
        assert_eq!(
            out.take(),
            vec![Event::Inject(9)],
            "still high: delivered again"
        );
        io.set_level(9, false);
        io.end_of_interrupt(0x39);
        assert_eq!(out.take(), vec![], "low at the EOI: nothing more");
        assert_eq!(mmio_read(&io, 0x22) & (1 << 14), 0, "remote IRR clear");
    }

    #[test]
    fn a_resampled_line_is_lowered_at_its_eoi_and_its_source_told() {
        let (io, out) = ioapic();
        set_rte(&io, 17, Rte::LEVEL | Rte::ACTIVE_LOW | 0x41);
        out.take();
        let unmasks = Arc::new(Mutex::new(0u32));
        let u = unmasks.clone();
        let id = io.add_resampler(17, Arc::new(move || *u.lock().unwrap() += 1));
        // A stray resampler on a pin that does not exist is never run and never panics.
        io.add_resampler(usize::MAX, Arc::new(|| panic!("no such pin")));
        io.set_level(17, true);
        assert_eq!(out.take(), vec![Event::Inject(17)]);
        io.end_of_interrupt(0x40);
        assert_eq!(*unmasks.lock().unwrap(), 0, "another vector: not resampled");
        io.end_of_interrupt(0x41);
        assert_eq!(
            out.take(),
            vec![],
            "lowered at the EOI: not delivered again"
        );
        assert_eq!(*unmasks.lock().unwrap(), 1, "the source is unmasked");
        assert_eq!(
            mmio_read(&io, 0x10 + 2 * 17) & (1 << 14),
            0,
            "remote IRR clear"
        );
        // The source, still asserting once unmasked, raises the line again.
        io.set_level(17, true);
        assert_eq!(out.take(), vec![Event::Inject(17)]);
        // An EOI with no interrupt pending on the pin does not unmask again.
        io.end_of_interrupt(0x41);
        io.end_of_interrupt(0x41);
        assert_eq!(*unmasks.lock().unwrap(), 2);
        io.remove_resampler(id);
        io.set_level(17, true);
        io.end_of_interrupt(0x41);
        assert_eq!(*unmasks.lock().unwrap(), 2, "removed");
    }

    #[test]
    fn eoi_register_ends_level_interrupts() {
        let (io, out) = ioapic();
        set_rte(&io, 10, Rte::LEVEL | 0x3a);
        io.set_level(10, true);
        out.take();
        io.write(IOEOI, &0x3a_u32.to_le_bytes());
        assert_eq!(out.take(), vec![Event::Inject(10)]);
    }

    #[test]
    fn masked_level_pins_deliver_when_unmasked() {
        let (io, out) = ioapic();
        set_rte(&io, 11, Rte::LEVEL | Rte::MASK | 0x3b);
        io.set_level(11, true);
        assert_eq!(out.take(), vec![], "masked");
        set_rte(&io, 11, Rte::LEVEL | 0x3b);
        let routed = Some(Rte(Rte::LEVEL | 0x3b).msi());
        assert_eq!(
            out.take(),
            vec![Event::Route(11, routed), Event::Inject(11)],
            "unmasked while high: routed, then delivered"
        );
        // Switching the pin to edge drops its remote IRR.
        set_rte(&io, 11, 0x3b);
        assert_eq!(mmio_read(&io, 0x26) & (1 << 14), 0);
    }
}
