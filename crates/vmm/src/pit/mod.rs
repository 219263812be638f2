//! The i8254 programmable interval timer of the split irqchip (KVM has a PIT only together
//! with its own PIC): three counters behind ports 0x40-0x43, port B at 0x61 (counter 2's gate,
//! the speaker enable, the refresh toggle and counter 2's OUT), and counter 0's OUT as IRQ0,
//! which the MADT sends to IOAPIC pin 2.
//!
//! ```text
//! guest ─ out 0x43 (control word, counter latch, read-back) ─┐
//!       ─ out/in 0x40..0x42 (count bytes)                    ├─> Pit: three counter::Counter,
//!       ─ out/in 0x61 (gate 2, speaker; OUT2 and refresh) ───┘    time = Clock in PIT ticks
//!                                   │ every write wakes the timer thread
//!                                   ▼
//! "pit-irq0" thread: sleeps until counter 0's next OUT rising edge ─> EdgeLine::pulse
//!   (IrqLine on GSI 2 ─> the IOAPIC's pin-2 route ─> LAPIC; no exit), counts pit_interrupts
//! ```
//!
//! The counters are computed from the clock when read, so counts and OUT levels are exact at
//! every access (what Linux's TSC calibration polls through counter 2 and port 0x61), and the
//! thread exists only to deliver edges. Periodic interrupts (modes 2 and 3) are spaced at least
//! [`MIN_PERIODIC_INTERVAL`] apart, the floor KVM's in-kernel PIT applies
//! (`min_timer_period_us`), so a guest writing a count of 1 costs a bounded rate of wakeups;
//! edges that fall inside the floor, or while the thread was not scheduled, are coalesced
//! into the next interrupt.

mod counter;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use counter::{Counter, Mode, PIT_HZ};

use crate::bus::BusDevice;
use crate::counters::{Counter as EventCounter, Counters};
use crate::interrupt::EdgeLine;

/// Ports 0x40-0x43: counters 0, 1, 2 and the mode/command register.
pub const PIT_PORTS: u16 = 4;
/// The mode/command register's offset from port 0x40.
const COMMAND: u64 = 3;
/// Port B's bits the guest writes: counter 2's gate (0), speaker data (1), parity and
/// channel-check disables (2, 3).
const PORT_B_WRITABLE: u8 = 0x0f;
/// Port B bit 4: toggles with every DRAM refresh request, every 15.085 µs.
const PORT_B_REFRESH: u8 = 1 << 4;
/// Port B bit 5: counter 2's OUT.
const PORT_B_OUT2: u8 = 1 << 5;
/// The refresh request period of the PC's DRAM refresh counter (counter 1's classic job).
const REFRESH_PERIOD: Duration = Duration::from_nanos(15_085);
/// The shortest interval between two periodic interrupts (KVM's `min_timer_period_us`).
pub const MIN_PERIODIC_INTERVAL: Duration = Duration::from_micros(200);

/// Where the PIT reads the time.
pub trait Clock: Send + Sync {
    /// Time since the PIT's epoch.
    fn now(&self) -> Duration;
}

/// The host's monotonic clock, from the PIT's creation.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// PIT ticks in `time` (rounded down).
fn ticks(time: Duration) -> u64 {
    (time.as_nanos() * u128::from(PIT_HZ) / 1_000_000_000) as u64
}

/// The time at which tick `tick` begins (rounded up, so the tick has arrived by then).
fn time_of_tick(tick: u64) -> Duration {
    let nanos = (u128::from(tick) * 1_000_000_000).div_ceil(u128::from(PIT_HZ));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct State {
    counters: [Counter; 3],
    port_b: u8,
    stopping: bool,
}

/// The PIT (ports 0x40-0x43; [`PortB`] serves 0x61).
pub struct Pit {
    state: Mutex<State>,
    /// Signalled on every write (and at stop): counter 0's schedule may have changed.
    changed: Condvar,
    clock: Box<dyn Clock>,
    interrupts: Arc<EventCounter>,
}

impl std::fmt::Debug for Pit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pit").finish_non_exhaustive()
    }
}

impl Pit {
    /// A PIT after power-up (no counter counting, gate 2 low) reading `clock`, counting its
    /// interrupts into `counters` as `pit_interrupts`.
    pub fn new(clock: Box<dyn Clock>, counters: &Counters) -> Self {
        Pit {
            state: Mutex::new(State {
                counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
                port_b: 0,
                stopping: false,
            }),
            changed: Condvar::new(),
            clock,
            interrupts: counters.register("pit_interrupts"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_tick(&self) -> u64 {
        ticks(self.clock.now())
    }

    /// A byte written to port 0x40 + `offset`.
    fn write_port(&self, offset: u64, value: u8) {
        let now = self.now_tick();
        let mut state = self.lock();
        match offset {
            0..=2 => state.counters[offset as usize].write_data(value, now),
            COMMAND => write_command(&mut state.counters, value, now),
            _ => return,
        }
        drop(state);
        self.changed.notify_all();
    }

    /// A byte read from port 0x40 + `offset` (the command register reads as all ones).
    fn read_port(&self, offset: u64) -> u8 {
        let now = self.now_tick();
        match offset {
            0..=2 => self.lock().counters[offset as usize].read_data(now),
            _ => 0xff,
        }
    }

    /// Port B as read: the written bits, the refresh toggle and OUT2.
    fn read_port_b(&self) -> u8 {
        let now = self.clock.now();
        let state = self.lock();
        let refresh = (now.as_nanos() / REFRESH_PERIOD.as_nanos()) % 2 == 1;
        let out2 = state.counters[2].out(ticks(now));
        (state.port_b & PORT_B_WRITABLE)
            | if refresh { PORT_B_REFRESH } else { 0 }
            | if out2 { PORT_B_OUT2 } else { 0 }
    }

    /// Port B written: bit 0 is counter 2's gate.
    fn write_port_b(&self, value: u8) {
        let now = self.now_tick();
        let mut state = self.lock();
        state.port_b = value & PORT_B_WRITABLE;
        state.counters[2].set_gate(value & 1 != 0, now);
        drop(state);
        self.changed.notify_all();
    }

    /// Starts the thread that raises `irq0` at counter 0's OUT rising edges; it runs until
    /// the returned handle is stopped or dropped.
    pub fn spawn_irq0(self: &Arc<Self>, irq0: Box<dyn EdgeLine>) -> std::io::Result<Irq0Thread> {
        let pit = self.clone();
        let thread = std::thread::Builder::new()
            .name("pit-irq0".into())
            .spawn(move || pit.deliver_irq0(&*irq0))?;
        Ok(Irq0Thread {
            pit: self.clone(),
            thread: Some(thread),
        })
    }

    /// The IRQ0 loop: wait for the next rising edge of counter 0 (or a write that changes it),
    /// pulse the line once for every edge that has passed.
    fn deliver_irq0(&self, irq0: &dyn EdgeLine) {
        let mut delivered_through = self.now_tick();
        let mut last_periodic: Option<Duration> = None;
        let mut state = self.lock();
        loop {
            if state.stopping {
                return;
            }
            let counter = &state.counters[0];
            let Some(edge) = counter.next_rising_edge(delivered_through) else {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let periodic = matches!(counter.mode(), Mode::RateGenerator | Mode::SquareWave);
            let mut due = time_of_tick(edge);
            if let (true, Some(last)) = (periodic, last_periodic) {
                due = due.max(last + MIN_PERIODIC_INTERVAL);
            }
            let now = self.clock.now();
            if due > now {
                state = self
                    .changed
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            delivered_through = ticks(now).max(edge);
            last_periodic = periodic.then_some(now);
            drop(state);
            irq0.pulse();
            self.interrupts.inc();
            state = self.lock();
        }
    }
}

/// A write to the mode/command register (port 0x43).
fn write_command(counters: &mut [Counter; 3], word: u8, now: u64) {
    match word >> 6 {
        3 => {
            // Read-back: bit 5 clear latches the counts, bit 4 clear the statuses, of the
            // counters selected by bits 1-3.
            for (i, counter) in counters.iter_mut().enumerate() {
                if word & (2 << i) == 0 {
                    continue;
                }
                if word & (1 << 5) == 0 {
                    counter.latch_count(now);
                }
                if word & (1 << 4) == 0 {
                    counter.latch_status(now);
                }
            }
        }
        select => counters[usize::from(select)].write_control(word, now),
    }
}

impl BusDevice for Pit {
    fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_port(offset + i as u64);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_port(offset + i as u64, byte);
        }
    }
}

/// Port 0x61 ("port B" of the PC's system control): counter 2's gate and OUT.
#[derive(Debug)]
pub struct PortB(pub Arc<Pit>);

impl BusDevice for PortB {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(self.0.read_port_b());
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.0.write_port_b(value);
        }
    }
}

/// The IRQ0 thread; stopped and joined by [`Irq0Thread::stop`] or on drop.
#[derive(Debug)]
pub struct Irq0Thread {
    pit: Arc<Pit>,
    thread: Option<JoinHandle<()>>,
}

impl Irq0Thread {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.pit.lock().stopping = true;
        self.pit.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Irq0Thread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
