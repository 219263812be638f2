//! The fuzz target's entry function on stable: a few hundred pseudo-random inputs, plus inputs
//! shaped like a driver's bring-up, must run without a panic or a broken invariant.

use vtd::fuzzing::run;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_inputs_never_break_the_unit() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..400 {
        let len = (rng.next() % 3000) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        run(&data);
    }
}

#[test]
fn bring_up_shaped_inputs_reach_the_queue_and_the_walks() {
    let mut rng = Rng(42);
    let (mut descriptors, mut walks, mut faults, mut errors) = (0, 0, 0, 0);
    for config in 0..5u8 {
        for _ in 0..40 {
            // Config, bring-up (op 6), then a mix of tables (3), submissions (4), DMA (5).
            let mut data = vec![config, 6, 1, 1];
            for _ in 0..60 {
                data.push([3, 4, 5, 5, 7, 0][(rng.next() % 6) as usize]);
                data.extend((0..40).map(|_| rng.next() as u8));
            }
            let c = run(&data);
            descriptors +=
                c.qi_context_cache + c.qi_iotlb + c.qi_pasid_iotlb + c.qi_pasid_cache + c.qi_wait;
            walks += c.walks;
            faults += c.faults_recorded;
            errors += c.qi_errors;
        }
    }
    assert!(
        descriptors > 100 && walks > 100 && faults > 100 && errors > 10,
        "{descriptors} {walks} {faults} {errors}"
    );
    run(&[]);
    run(&[0xff; 4096]);
}
