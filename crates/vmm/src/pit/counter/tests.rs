use super::*;

/// Control word for this counter: RW = 11 (LSB then MSB), the mode, binary.
fn control(mode: u8) -> u8 {
    0x30 | (mode << 1)
}

/// A counter in `mode`, loaded with `n` (two bytes) at tick `at`.
fn loaded(mode: u8, n: u16, at: u64) -> Counter {
    let mut c = Counter::new(true);
    c.write_control(control(mode), at);
    c.write_data(n as u8, at);
    c.write_data((n >> 8) as u8, at);
    c
}

/// Reads a two-byte live or latched count, LSB first.
fn read16(c: &mut Counter, now: u64) -> u16 {
    u16::from_le_bytes([c.read_data(now), c.read_data(now)])
}

#[test]
fn mode0_counts_down_raises_out_at_terminal_count_and_wraps() {
    let n = 11_932; // Linux's 10 ms calibration latch
    let mut c = loaded(0, n, 100);
    assert!(!c.out(100));
    assert_eq!(read16(&mut c, 100), n);
    assert_eq!(read16(&mut c, 100 + u64::from(n) - 1), 1);
    assert!(!c.out(100 + u64::from(n) - 1));
    assert!(c.out(100 + u64::from(n)));
    assert_eq!(read16(&mut c, 100 + u64::from(n)), 0);
    assert_eq!(read16(&mut c, 101 + u64::from(n)), 0xffff, "keeps counting");
    assert!(c.out(5_000_000), "OUT stays high");
    assert_eq!(c.next_rising_edge(0), Some(100 + u64::from(n)));
    assert_eq!(c.next_rising_edge(100 + u64::from(n)), None, "one edge");
}

#[test]
fn mode0_first_byte_of_a_new_count_stops_counting() {
    let mut c = loaded(0, 1000, 0);
    c.write_data(0x10, 300);
    assert!(!c.out(2000), "OUT low, no terminal count");
    assert_eq!(c.next_rising_edge(0), None);
    assert_eq!(read16(&mut c, 5000), 700, "held at the count of tick 300");
    c.write_data(0x00, 6000); // count 0x0010 from tick 6000
    assert_eq!(c.next_rising_edge(0), Some(6016));
}

#[test]
fn mode2_pulses_low_once_per_period() {
    let mut c = loaded(2, 100, 0);
    assert!(c.out(0));
    assert_eq!(read16(&mut c, 0), 100);
    assert_eq!(read16(&mut c, 99), 1);
    assert!(!c.out(99), "low while the count is 1");
    assert!(c.out(100));
    assert_eq!(read16(&mut c, 100), 100, "reloaded");
    assert_eq!(c.next_rising_edge(0), Some(100));
    assert_eq!(c.next_rising_edge(100), Some(200));
    assert_eq!(c.next_rising_edge(250), Some(300));
}

#[test]
fn mode2_new_count_takes_over_at_the_end_of_the_period() {
    let mut c = loaded(2, 100, 0);
    c.write_data(50, 130);
    c.write_data(0, 130);
    assert_eq!(read16(&mut c, 150), 50, "still the old period (100 - 50)");
    assert_eq!(c.next_rising_edge(130), Some(200));
    assert_eq!(c.next_rising_edge(200), Some(250));
    assert_eq!(read16(&mut c, 210), 40, "the new period from tick 200");
}

#[test]
fn mode3_square_wave() {
    let mut c = loaded(3, 10, 0);
    for t in 0..5 {
        assert!(c.out(t), "high half at {t}");
    }
    for t in 5..10 {
        assert!(!c.out(t), "low half at {t}");
    }
    assert_eq!(read16(&mut c, 0), 10);
    assert_eq!(read16(&mut c, 1), 8);
    assert_eq!(read16(&mut c, 5), 10);
    assert_eq!(read16(&mut c, 9), 2);
    assert_eq!(c.next_rising_edge(3), Some(10));
    // Odd counts: high for (N + 1) / 2.
    let c = loaded(3, 5, 0);
    assert!(c.out(2) && !c.out(3) && !c.out(4) && c.out(5));
}

#[test]
fn mode4_strobes_one_tick_after_terminal_count() {
    let c = loaded(4, 20, 10);
    assert!(c.out(29) && !c.out(30) && c.out(31));
    assert_eq!(c.next_rising_edge(0), Some(31));
    assert_eq!(c.next_rising_edge(31), None);
}

#[test]
fn count_zero_is_the_maximum() {
    let mut c = loaded(2, 0, 0);
    assert_eq!(c.next_rising_edge(0), Some(0x1_0000));
    assert_eq!(read16(&mut c, 1), 0xffff);
    let mut bcd = Counter::new(true);
    bcd.write_control(control(2) | 1, 0);
    bcd.write_data(0, 0);
    bcd.write_data(0, 0);
    assert_eq!(bcd.next_rising_edge(0), Some(10_000));
}

#[test]
fn gate_holds_mode0_and_restarts_mode2() {
    let mut c = Counter::new(false); // counter 2: gate from port B, low at reset
    c.write_control(control(0), 0);
    c.write_data(100, 0);
    c.write_data(0, 0);
    assert_eq!(c.next_rising_edge(0), None, "gate low: not counting");
    c.set_gate(true, 10);
    assert_eq!(read16(&mut c, 40), 70);
    c.set_gate(false, 40);
    assert_eq!(read16(&mut c, 1000), 70, "held");
    c.set_gate(true, 1000);
    assert_eq!(c.next_rising_edge(0), Some(1070));

    let mut c = Counter::new(true);
    c.write_control(control(2), 0);
    c.write_data(100, 0);
    c.write_data(0, 0);
    c.set_gate(false, 99);
    assert!(c.out(99), "a low gate forces OUT high in mode 2");
    assert_eq!(c.next_rising_edge(0), None);
    c.set_gate(true, 500);
    assert_eq!(read16(&mut c, 500), 100, "reloaded by the rising gate");
    assert_eq!(c.next_rising_edge(500), Some(600));
}

#[test]
fn mode1_starts_on_the_gates_rising_edge_and_retriggers() {
    let mut c = Counter::new(false);
    c.write_control(control(1), 0);
    c.set_gate(true, 5);
    assert_eq!(c.next_rising_edge(0), None, "no count written yet");
    c.set_gate(false, 6);
    c.write_data(50, 10);
    c.write_data(0, 10);
    assert!(c.out(20), "armed, not triggered: OUT high");
    assert_eq!(c.next_rising_edge(0), None);
    c.set_gate(true, 100);
    assert!(!c.out(100) && !c.out(149) && c.out(150));
    c.set_gate(false, 120);
    c.set_gate(true, 130); // retrigger
    assert!(!c.out(150));
    assert_eq!(c.next_rising_edge(0), Some(180));
}

#[test]
fn latched_count_is_frozen_until_read_and_latches_do_not_stack() {
    let mut c = loaded(2, 1000, 0);
    c.latch_count(10);
    c.latch_count(500); // ignored: the first latch is unread
    assert_eq!(c.read_data(900), (990 & 0xff) as u8);
    c.latch_count(600); // ignored: the MSB of the first latch is still unread
    assert_eq!(c.read_data(900), (990 >> 8) as u8);
    assert_eq!(read16(&mut c, 900), 100, "live again");
}

#[test]
fn read_back_status_comes_before_the_count() {
    let mut c = Counter::new(true);
    c.write_control(control(2), 0);
    c.latch_status(0);
    assert_eq!(
        c.read_data(0),
        0x80 | 0x40 | 0x34,
        "OUT high, null count, RW 11, mode 2"
    );
    c.write_data(0x20, 0);
    c.write_data(0x00, 0);
    c.latch_count(8);
    c.latch_status(8);
    assert_eq!(
        c.read_data(20),
        0x80 | 0x34,
        "count loaded: null count clear"
    );
    assert_eq!(read16(&mut c, 20), 0x18);
}

#[test]
fn single_byte_access_and_bcd() {
    let mut c = Counter::new(true);
    c.write_control(0x20 | (2 << 1), 0); // MSB only, mode 2
    c.write_data(0x12, 0);
    assert_eq!(c.next_rising_edge(0), Some(0x1200));
    assert_eq!(c.read_data(0x100), 0x11, "MSB of 0x1100");
    c.write_control(0x10 | 1, 0); // LSB only, mode 0, BCD
    c.write_data(0x99, 0);
    assert_eq!(c.next_rising_edge(0), Some(99));
    assert_eq!(c.read_data(1), 0x98, "BCD 98");
    c.write_control(0x30 | 1, 0); // two bytes, mode 0, BCD
    c.write_data(0x34, 0);
    c.write_data(0x12, 0);
    assert_eq!(read16(&mut c, 0), 0x1234);
    assert_eq!(read16(&mut c, 35), 0x1199);
}

#[test]
fn undefined_modes_are_modes_2_and_3() {
    assert_eq!(Mode::from_bits(6), Mode::RateGenerator);
    assert_eq!(Mode::from_bits(7), Mode::SquareWave);
    assert_eq!(Mode::from_bits(8 | 1), Mode::HardwareOneShot, "only 3 bits");
}

#[test]
fn any_sequence_of_guest_accesses_is_bounded() {
    // A hostile guest: every byte on every port at growing times, in a fixed pseudo-random
    // order. Nothing panics, and every schedule is strictly after the time asked about.
    let mut counters = [Counter::new(true), Counter::new(true), Counter::new(false)];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut now = 0u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        now += x % 300;
        let c = &mut counters[(x >> 8) as usize % 3];
        let byte = (x >> 16) as u8;
        match (x >> 24) % 6 {
            0 => c.write_control(byte, now),
            1 => c.write_data(byte, now),
            2 => {
                c.read_data(now);
            }
            3 => c.set_gate(byte & 1 != 0, now),
            4 => c.latch_status(now),
            _ => c.latch_count(now),
        }
        if let Some(edge) = c.next_rising_edge(now) {
            assert!(edge > now && edge <= now + 0x1_0002);
        }
    }
}
