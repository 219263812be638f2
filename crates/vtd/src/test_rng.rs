//! A small deterministic generator (xorshift64) for the crate's randomized tests: the same
//! sequence on every run, no dependency.

/// The generator started from `seed` (non-zero): each call gives the next 64-bit value.
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
