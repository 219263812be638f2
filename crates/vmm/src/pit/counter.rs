//! One counter of the 8254 programmable interval timer, as a pure function of time: every
//! method takes the current time in PIT clock ticks (1.193182 MHz) since the PIT's epoch, so
//! the model is exact and testable without sleeping.
//!
//! ```text
//! control word ─> mode, access, BCD; OUT to its initial level; null count
//! count written ─> mode 0, 4: counting from N now (a two-byte count in mode 0 stops the
//!                  count at its first byte)
//!                  mode 2, 3: counting from N now, or from the end of the running period
//!                  mode 1, 5: armed; the gate's rising edge starts counting
//! gate (counter 2 only; 0 and 1 are tied high):
//!                  mode 0, 4: low suspends counting, high resumes it
//!                  mode 2, 3: low stops counting with OUT high, high restarts from N
//!                  mode 1, 5: a rising edge (re)starts counting from N
//! time t ─> counting element (what a read returns) and OUT; OUT's rising edges are the
//!           interrupt requests of counter 0 (IRQ0, edge-triggered)
//! ```
//!
//! OUT over one count N (`e` ticks since counting started, as in the 8254 data sheet):
//!
//! | mode | OUT                                         | rising edges   |
//! |------|---------------------------------------------|----------------|
//! | 0    | low until e = N, then high                  | N              |
//! | 1    | low from the trigger until e = N            | N              |
//! | 2    | high, low for the tick where the count is 1 | kN, k ≥ 1      |
//! | 3    | high for ⌈N/2⌉ ticks, low for ⌊N/2⌋         | kN, k ≥ 1      |
//! | 4, 5 | high, low for the tick at e = N             | N + 1          |
//!
//! Everything the guest writes is accepted and bounded: a count of 0 means 65536 (10000 in BCD),
//! undefined mode encodings 6 and 7 are modes 2 and 3, BCD digits above 9 count with their
//! binary weight, and a count of 1 in modes 2 and 3 (undefined in the data sheet) runs with
//! period 1. The counter keeps counting after terminal count (modes 0, 1, 4, 5), wrapping
//! from 0 to the maximum, as the hardware does.

/// The PIT's input clock, in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// The read/write access a control word selects (RW, bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Least significant byte only.
    Lsb,
    /// Most significant byte only.
    Msb,
    /// Least significant byte, then most significant byte.
    LsbThenMsb,
}

/// The counting modes (M, bits 3:1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Mode 0: interrupt on terminal count.
    InterruptOnTerminalCount,
    /// Mode 1: hardware retriggerable one-shot.
    HardwareOneShot,
    /// Mode 2: rate generator.
    RateGenerator,
    /// Mode 3: square wave.
    SquareWave,
    /// Mode 4: software triggered strobe.
    SoftwareStrobe,
    /// Mode 5: hardware triggered strobe.
    HardwareStrobe,
}

impl Mode {
    /// Decodes bits 3:1 of a control word (6 and 7 are modes 2 and 3).
    pub fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::InterruptOnTerminalCount,
            1 => Self::HardwareOneShot,
            2 | 6 => Self::RateGenerator,
            3 | 7 => Self::SquareWave,
            4 => Self::SoftwareStrobe,
            _ => Self::HardwareStrobe,
        }
    }

    fn periodic(self) -> bool {
        matches!(self, Self::RateGenerator | Self::SquareWave)
    }

    /// OUT's level right after a control word.
    fn initial_out(self) -> bool {
        self != Self::InterruptOnTerminalCount
    }
}

/// What the counting element is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Not counting: no count loaded yet, a one-shot waiting for its trigger, or a mode-0
    /// count interrupted by the first byte of a new one. Reads return `count`.
    Idle { out: bool, count: u16 },
    /// Counting `n` ticks per cycle since tick `start`.
    Counting { start: u64, n: u32 },
    /// Counting held by a low gate after `elapsed` ticks of `n`.
    Held { elapsed: u64, n: u32 },
}

/// A count read back a byte at a time: latched (frozen) or live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LatchedCount {
    /// Both bytes still to be read (LSB first) or, with single-byte access, the one byte.
    Full(u16),
    /// The MSB still to be read.
    Msb(u8),
}

/// One 8254 counter.
#[derive(Clone, Debug)]
pub struct Counter {
    mode: Mode,
    access: Access,
    bcd: bool,
    /// Bits 5:0 of the last control word, for the status byte.
    control: u8,
    /// The count register as written (1..=65536, or 1..=10000 in BCD).
    reload: u32,
    /// The first byte of a two-byte count.
    write_lsb: Option<u8>,
    /// The next live read of a two-byte access returns the MSB.
    read_msb_next: bool,
    latched_count: Option<LatchedCount>,
    latched_status: Option<u8>,
    /// A count written but not yet loaded into the counting element.
    null_count: bool,
    /// A complete count was written since the last control word.
    has_count: bool,
    gate: bool,
    run: Run,
    /// Modes 2 and 3: a count written while counting, taking over at tick `.1`.
    pending: Option<(u32, u64)>,
}

impl Counter {
    /// A counter after power-up: mode 0, two-byte access, no count, gate `gate`.
    pub fn new(gate: bool) -> Self {
        Counter {
            mode: Mode::InterruptOnTerminalCount,
            access: Access::LsbThenMsb,
            bcd: false,
            control: 0x30,
            reload: 0x1_0000,
            write_lsb: None,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
            null_count: false,
            has_count: false,
            gate,
            run: Run::Idle {
                out: false,
                count: 0,
            },
            pending: None,
        }
    }

    /// The counting mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A control word for this counter (SC = 0..2): a counter-latch command (RW = 00), or a
    /// new mode, access and BCD setting that resets the counter's control logic.
    pub fn write_control(&mut self, word: u8, now: u64) {
        self.settle(now);
        let Some(access) = (match (word >> 4) & 3 {
            0 => None,
            1 => Some(Access::Lsb),
            2 => Some(Access::Msb),
            _ => Some(Access::LsbThenMsb),
        }) else {
            self.latch_count(now);
            return;
        };
        self.access = access;
        self.mode = Mode::from_bits(word >> 1);
        self.bcd = word & 1 != 0;
        self.control = word & 0x3f;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched_count = None;
        self.latched_status = None;
        self.null_count = true;
        self.has_count = false;
        self.pending = None;
        self.run = Run::Idle {
            out: self.mode.initial_out(),
            count: self.count_at(now),
        };
    }

    /// A byte written to the counter's data port: part or all of a new count.
    pub fn write_data(&mut self, byte: u8, now: u64) {
        self.settle(now);
        let raw = match (self.access, self.write_lsb.take()) {
            (Access::Lsb, _) => u16::from(byte),
            (Access::Msb, _) => u16::from(byte) << 8,
            (Access::LsbThenMsb, Some(lsb)) => u16::from_le_bytes([lsb, byte]),
            (Access::LsbThenMsb, None) => {
                self.write_lsb = Some(byte);
                if self.mode == Mode::InterruptOnTerminalCount {
                    // Writing the first byte stops the count and drives OUT low.
                    self.run = Run::Idle {
                        out: false,
                        count: self.count_at(now),
                    };
                }
                return;
            }
        };
        self.reload = self.decode_count(raw);
        self.null_count = true;
        self.has_count = true;
        self.load(now);
    }

    /// Reads a byte from the counter's data port: a latched status, then a latched count,
    /// else the live counting element.
    pub fn read_data(&mut self, now: u64) -> u8 {
        self.settle(now);
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        if let Some(latched) = self.latched_count.take() {
            return match (latched, self.access) {
                (LatchedCount::Full(count), Access::LsbThenMsb) => {
                    self.latched_count = Some(LatchedCount::Msb((count >> 8) as u8));
                    count as u8
                }
                (LatchedCount::Full(count), Access::Lsb) => count as u8,
                (LatchedCount::Full(count), Access::Msb) => (count >> 8) as u8,
                (LatchedCount::Msb(msb), _) => msb,
            };
        }
        let count = self.encode_count(self.count_at(now));
        match self.access {
            Access::Lsb => count as u8,
            Access::Msb => (count >> 8) as u8,
            Access::LsbThenMsb => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    count as u8
                } else {
                    (count >> 8) as u8
                }
            }
        }
    }

    /// Counter-latch or read-back: freezes the current count for the next reads (ignored while
    /// a latched count is still unread).
    pub fn latch_count(&mut self, now: u64) {
        self.settle(now);
        if self.latched_count.is_none() {
            self.latched_count = Some(LatchedCount::Full(self.encode_count(self.count_at(now))));
        }
    }

    /// Read-back with STATUS: freezes the status byte (OUT, null count, RW, M, BCD) for the
    /// next read (ignored while a latched status is still unread).
    pub fn latch_status(&mut self, now: u64) {
        self.settle(now);
        if self.latched_status.is_none() {
            let status =
                (u8::from(self.out(now)) << 7) | (u8::from(self.null_count) << 6) | self.control;
            self.latched_status = Some(status);
        }
    }

    /// The gate input's level changes (or is written again) at `now`.
    pub fn set_gate(&mut self, high: bool, now: u64) {
        self.settle(now);
        let rising = high && !self.gate;
        let falling = !high && self.gate;
        self.gate = high;
        match self.mode {
            Mode::InterruptOnTerminalCount | Mode::SoftwareStrobe => match self.run {
                Run::Counting { start, n } if falling => {
                    self.run = Run::Held {
                        elapsed: now.saturating_sub(start),
                        n,
                    }
                }
                Run::Held { elapsed, n } if rising => {
                    self.run = Run::Counting {
                        start: now.saturating_sub(elapsed),
                        n,
                    }
                }
                _ => {}
            },
            Mode::RateGenerator | Mode::SquareWave => match self.run {
                Run::Counting { start, n } if falling => {
                    self.pending = None;
                    self.run = Run::Held {
                        elapsed: now.saturating_sub(start),
                        n,
                    }
                }
                Run::Held { .. } if rising => self.start(now),
                _ => {}
            },
            Mode::HardwareOneShot | Mode::HardwareStrobe => {
                if rising && self.has_count {
                    self.start(now);
                }
            }
        }
    }

    /// OUT's level at `now`.
    pub fn out(&self, now: u64) -> bool {
        let (n, elapsed) = match self.cycle_at(now) {
            Run::Idle { out, .. } => return out,
            // A low gate stops modes 2 and 3 with OUT high.
            Run::Held { .. } if self.mode.periodic() => return true,
            Run::Held { elapsed, n } => (u64::from(n), elapsed),
            Run::Counting { start, n } => (u64::from(n), now.saturating_sub(start)),
        };
        match self.mode {
            Mode::InterruptOnTerminalCount | Mode::HardwareOneShot => elapsed >= n,
            Mode::RateGenerator => elapsed % n != n - 1,
            Mode::SquareWave => elapsed % n < n.div_ceil(2),
            Mode::SoftwareStrobe | Mode::HardwareStrobe => elapsed != n,
        }
    }

    /// The first rising edge of OUT strictly after tick `after`, if one is scheduled (the
    /// interrupt requests of counter 0).
    pub fn next_rising_edge(&self, after: u64) -> Option<u64> {
        let (start, n) = match self.run {
            Run::Counting { start, n } => (start, u64::from(n)),
            Run::Idle { .. } | Run::Held { .. } => return None,
        };
        match self.mode {
            Mode::InterruptOnTerminalCount | Mode::HardwareOneShot => {
                Some(start + n).filter(|&edge| edge > after)
            }
            Mode::SoftwareStrobe | Mode::HardwareStrobe => {
                Some(start + n + 1).filter(|&edge| edge > after)
            }
            Mode::RateGenerator | Mode::SquareWave => {
                if let Some((next_n, switch)) = self.pending {
                    if switch > after {
                        return Some(switch);
                    }
                    return Some(next_periodic_edge(switch, u64::from(next_n), after));
                }
                Some(next_periodic_edge(start, n, after))
            }
        }
    }

    /// The counting element at `now`, in binary.
    fn count_at(&self, now: u64) -> u16 {
        let (n, elapsed) = match self.cycle_at(now) {
            Run::Idle { count, .. } => return count,
            Run::Held { elapsed, n } => (u64::from(n), elapsed),
            Run::Counting { start, n } => (u64::from(n), now.saturating_sub(start)),
        };
        let modulus = if self.bcd { 10_000 } else { 0x1_0000 };
        let count = match self.mode {
            Mode::RateGenerator => n - elapsed % n,
            Mode::SquareWave => {
                let phase = elapsed % n;
                let high = n.div_ceil(2);
                // Counts down by two through each half.
                if phase < high {
                    2 * (high - phase)
                } else {
                    2 * (n - phase)
                }
            }
            _ => (n + modulus - elapsed % modulus) % modulus,
        };
        (count % modulus) as u16
    }

    /// Loads a complete count written at `now` according to the mode.
    fn load(&mut self, now: u64) {
        match (self.mode, self.run) {
            (Mode::HardwareOneShot | Mode::HardwareStrobe, _) => {}
            (Mode::RateGenerator | Mode::SquareWave, Run::Counting { start, n }) => {
                let end = next_periodic_edge(start, u64::from(n), now);
                self.pending = Some((self.reload, end));
            }
            (Mode::RateGenerator | Mode::SquareWave, _) if !self.gate => {
                self.run = Run::Held {
                    elapsed: 0,
                    n: self.reload,
                };
            }
            (Mode::InterruptOnTerminalCount | Mode::SoftwareStrobe, _) if !self.gate => {
                self.null_count = false;
                self.run = Run::Held {
                    elapsed: 0,
                    n: self.reload,
                };
            }
            _ => self.start(now),
        }
    }

    /// Starts counting from the count register at `now`.
    fn start(&mut self, now: u64) {
        self.null_count = false;
        self.pending = None;
        self.run = Run::Counting {
            start: now,
            n: self.reload,
        };
    }

    /// Applies a pending periodic count whose switch-over time has come.
    fn settle(&mut self, now: u64) {
        if let Some((n, switch)) = self.pending
            && switch <= now
        {
            self.pending = None;
            self.null_count = false;
            self.run = Run::Counting { start: switch, n };
        }
    }

    /// What the counting element does at `now` (a pending count taken into account).
    fn cycle_at(&self, now: u64) -> Run {
        match (self.run, self.pending) {
            (Run::Counting { .. }, Some((n, switch))) if switch <= now => {
                Run::Counting { start: switch, n }
            }
            (run, _) => run,
        }
    }

    /// A written count in the counter's number system: 0 is the maximum.
    fn decode_count(&self, raw: u16) -> u32 {
        let (value, max) = if self.bcd {
            let digits = (0..4).map(|i| u32::from((raw >> (4 * i)) & 0xf) * 10u32.pow(i));
            (digits.sum(), 10_000)
        } else {
            (u32::from(raw), 0x1_0000)
        };
        if value == 0 { max } else { value }
    }

    /// A binary count in the counter's number system.
    fn encode_count(&self, count: u16) -> u16 {
        if !self.bcd {
            return count;
        }
        (0..4).fold(0, |bcd, i| bcd | (((count / 10u16.pow(i)) % 10) << (4 * i)))
    }
}

/// The first multiple of `n` ticks after `start` that is strictly after `after`.
fn next_periodic_edge(start: u64, n: u64, after: u64) -> u64 {
    if after < start {
        return start + n;
    }
    let periods = (after - start) / n + 1;
    start + periods * n
}

#[cfg(test)]
mod tests;
