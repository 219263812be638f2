//! Page-table walkers: first stage (IA-32e, §3.6) and second stage (§3.7), shared by legacy and
//! scalable mode.
//!
//! A walk reads one entry per level through [`GuestRam`], checks it, and sets accessed/dirty
//! flags with an atomic compare-exchange on guest memory. When the guest changes an entry
//! between our read and our compare-exchange, the walk restarts from the top, at most
//! [`MAX_ATTEMPTS`] times; a guest that keeps racing us gets the stage's access fault instead of
//! an unbounded loop.

pub(crate) mod first_stage;
pub(crate) mod second_stage;

use crate::memory::GuestRam;
use vtd_spec::fault::FaultReason;

/// Walk attempts before a racing guest is given up on.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// Why one walk attempt stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The walk faulted.
    Fault(FaultReason),
    /// An entry changed under an accessed/dirty update: walk again.
    Retry,
}

impl From<FaultReason> for Stop {
    fn from(r: FaultReason) -> Self {
        Stop::Fault(r)
    }
}

/// Atomically sets `bits` in the entry at `addr`, which was read as `seen`. All the flags go in
/// one update (QEMU's "always write all the flags" fix), and nothing is written when they are
/// already set.
pub(crate) fn set_flags(
    ram: &dyn GuestRam,
    addr: u64,
    seen: u64,
    bits: u64,
    access_fault: FaultReason,
) -> Result<u64, Stop> {
    if seen & bits == bits {
        return Ok(seen);
    }
    let new = seen | bits;
    match ram.compare_exchange_u64(addr, seen, new) {
        Ok(Ok(_)) => Ok(new),
        Ok(Err(_)) => Err(Stop::Retry),
        Err(_) => Err(Stop::Fault(access_fault)),
    }
}

/// Runs `attempt` until it does not ask for a retry, at most [`MAX_ATTEMPTS`] times.
pub(crate) fn with_retries<T>(
    exhausted: FaultReason,
    mut attempt: impl FnMut() -> Result<T, Stop>,
) -> Result<T, FaultReason> {
    for _ in 0..MAX_ATTEMPTS {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Stop::Fault(r)) => return Err(r),
            Err(Stop::Retry) => {}
        }
    }
    Err(exhausted)
}
