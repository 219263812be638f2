//! Register writes, queue submissions and translations over fuzzer-built guest memory, through
//! `vtd::fuzzing::run` (the same entry the stable replay test uses).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vtd::fuzzing::run(data);
});
