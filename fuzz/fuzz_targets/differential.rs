//! Random tables and invalidation histories through the unit, every translation compared with
//! the reference walker, through `vtd::fuzzing::differential::run` (the same entry the stable
//! test replays). A disagreement panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vtd::fuzzing::differential::run(data);
});
