use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// A clock the test moves by hand.
#[derive(Default)]
struct ManualClock(Mutex<Duration>);

impl Clock for Arc<ManualClock> {
    fn now(&self) -> Duration {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    fn set_tick(&self, tick: u64) {
        *self.0.lock().unwrap() = time_of_tick(tick);
    }
}

fn pit_with_manual_clock() -> (Arc<Pit>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let pit = Arc::new(Pit::new(Box::new(clock.clone()), &Counters::new()));
    (pit, clock)
}

fn inb(pit: &Pit, port: u16) -> u8 {
    let mut b = [0u8];
    pit.read(u64::from(port - 0x40), &mut b);
    b[0]
}

#[test]
fn ticks_and_times_round_trip() {
    assert_eq!(ticks(Duration::from_secs(1)), PIT_HZ);
    for tick in [0, 1, 2, 11_932, PIT_HZ, 7 * PIT_HZ + 3] {
        assert_eq!(ticks(time_of_tick(tick)), tick, "tick {tick}");
        if let Some(earlier) = time_of_tick(tick).checked_sub(Duration::from_nanos(1)) {
            assert!(ticks(earlier) < tick, "tick {tick} begins at time_of_tick");
        }
    }
}

#[test]
fn linux_slow_tsc_calibration_sees_out2_rise_after_the_latch() {
    // pit_calibrate_tsc(): gate 2 high and speaker off through port B, counter 2 in mode 0
    // with a 10 ms latch, then poll port B bit 5 until OUT2 rises.
    let (pit, clock) = pit_with_manual_clock();
    let port_b = PortB(pit.clone());
    let mut b = [0u8];
    port_b.read(0, &mut b);
    port_b.write(0, &[(b[0] & !0x02) | 0x01]);
    clock.set_tick(1000);
    pit.write(3, &[0xb0]);
    pit.write(2, &[(11_932 & 0xff) as u8]);
    pit.write(2, &[(11_932 >> 8) as u8]);
    let out2 = |tick| {
        clock.set_tick(tick);
        let mut b = [0u8];
        port_b.read(0, &mut b);
        assert_eq!(
            b[0] & 0xcf & !PORT_B_REFRESH,
            0x01,
            "gate written, no NMI sources"
        );
        b[0] & PORT_B_OUT2 != 0
    };
    assert!(!out2(1000));
    assert!(!out2(1000 + 11_931));
    assert!(out2(1000 + 11_932));
}

#[test]
fn linux_fast_tsc_calibration_reads_the_live_msb() {
    // quick_pit_calibrate(): counter 2, mode 0, count 0xffff; each probe reads the LSB and
    // then the MSB of the running count without latching; the MSB falls by one every 256
    // ticks.
    let (pit, clock) = pit_with_manual_clock();
    PortB(pit.clone()).write(0, &[0x01]);
    pit.write(3, &[0xb0]);
    pit.write(2, &[0xff]);
    pit.write(2, &[0xff]);
    for i in 0..200u64 {
        clock.set_tick(256 * i + 10);
        let _lsb = inb(&pit, 0x42);
        assert_eq!(inb(&pit, 0x42), 0xff - i as u8, "probe {i}");
    }
}

#[test]
fn read_back_through_the_command_port() {
    let (pit, clock) = pit_with_manual_clock();
    pit.write(3, &[0x34]); // counter 0, mode 2
    pit.write(0, &[0x00]);
    pit.write(0, &[0x10]); // 0x1000
    clock.set_tick(0x10);
    // Read-back of counter 0's count and status (bits 5 and 4 clear, bit 1 set).
    pit.write(3, &[0xc2]);
    clock.set_tick(0x800);
    assert_eq!(
        inb(&pit, 0x40),
        0x80 | 0x34,
        "status: OUT high, loaded, RW 11, mode 2"
    );
    assert_eq!(inb(&pit, 0x40), 0xf0);
    assert_eq!(inb(&pit, 0x40), 0x0f, "the count of tick 0x10");
    // Counter latch command for counter 0.
    pit.write(3, &[0x00]);
    clock.set_tick(0x900);
    assert_eq!((inb(&pit, 0x40), inb(&pit, 0x40)), (0x00, 0x08));
    assert_eq!(inb(&pit, 0x43), 0xff, "the command register is write-only");
}

#[test]
fn port_b_keeps_its_written_bits_and_toggles_refresh() {
    let (pit, clock) = pit_with_manual_clock();
    let port_b = PortB(pit.clone());
    port_b.write(0, &[0xff]);
    let read = || {
        let mut b = [0u8];
        port_b.read(0, &mut b);
        b[0]
    };
    *clock.0.lock().unwrap() = Duration::from_nanos(1);
    let first = read();
    assert_eq!(first & 0xcf, 0x0f, "bits 3:0 as written, 7:6 clear");
    *clock.0.lock().unwrap() = Duration::from_nanos(1 + 15_085);
    assert_ne!(read() & PORT_B_REFRESH, first & PORT_B_REFRESH);
}

#[test]
fn hostile_port_traffic_is_absorbed() {
    let (pit, clock) = pit_with_manual_clock();
    let port_b = PortB(pit.clone());
    let mut x: u32 = 0x1234_5678;
    for i in 0..50_000u64 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        clock.set_tick(i * 7);
        let value = (x >> 24) as u8;
        match (x >> 8) % 5 {
            0 => pit.write(u64::from(x % 4), &[value, value]),
            1 => {
                let mut b = [0u8; 4];
                pit.read(u64::from(x % 4), &mut b[..(x as usize >> 4) % 4 + 1]);
            }
            2 => port_b.write(0, &[value]),
            3 => port_b.read(0, &mut [0u8; 2]),
            _ => pit.write(3, &[value | 0xc0]),
        }
    }
}

/// Counts the pulses of a line.
#[derive(Default)]
struct Pulses(AtomicU64);

impl EdgeLine for Arc<Pulses> {
    fn pulse(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits (at most 20 s) until `pulses` reaches `n`.
fn wait_for(pulses: &Pulses, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pulses.0.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    pulses.0.load(Ordering::SeqCst)
}

#[test]
fn irq0_follows_counter_0_on_the_host_clock() {
    let counters = Counters::new();
    let pit = Arc::new(Pit::new(Box::<MonotonicClock>::default(), &counters));
    let pulses = Arc::new(Pulses::default());
    let mut thread = pit.spawn_irq0(Box::new(pulses.clone())).unwrap();
    // Mode 2, 1193 ticks: a 1 ms rate generator.
    pit.write(3, &[0x34]);
    pit.write(0, &[(1193 & 0xff) as u8]);
    pit.write(0, &[(1193 >> 8) as u8]);
    assert!(wait_for(&pulses, 5) >= 5, "periodic interrupts arrive");
    // Mode 0, 1 ms: exactly one more interrupt.
    pit.write(3, &[0x30]);
    let before = pulses.0.load(Ordering::SeqCst);
    pit.write(0, &[(1193 & 0xff) as u8]);
    pit.write(0, &[(1193 >> 8) as u8]);
    assert_eq!(wait_for(&pulses, before + 1), before + 1);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(pulses.0.load(Ordering::SeqCst), before + 1, "one-shot");
    thread.stop();
    assert_eq!(
        counters.register("pit_interrupts").get(),
        pulses.0.load(Ordering::SeqCst)
    );
}

#[test]
fn a_count_of_one_is_held_to_the_periodic_floor() {
    let pit = Arc::new(Pit::new(Box::<MonotonicClock>::default(), &Counters::new()));
    let pulses = Arc::new(Pulses::default());
    let thread = pit.spawn_irq0(Box::new(pulses.clone())).unwrap();
    let start = Instant::now();
    pit.write(3, &[0x14]); // counter 0, LSB only, mode 2
    pit.write(0, &[1]); // 1.19 MHz asked for
    wait_for(&pulses, 3);
    std::thread::sleep(Duration::from_millis(20));
    drop(thread); // stops and joins
    let elapsed = start.elapsed();
    let most = elapsed.as_micros() / MIN_PERIODIC_INTERVAL.as_micros() + 1;
    let seen = u128::from(pulses.0.load(Ordering::SeqCst));
    assert!(seen >= 3 && seen <= most, "{seen} pulses in {elapsed:?}");
}
