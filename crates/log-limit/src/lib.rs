//! A rate limit for log lines a guest can trigger (a queue error, a fault the registers cannot
//! hold, a device the driver misprograms): a guest repeating the condition must not fill the
//! host's log.
//!
//! Each call site of [`limited!`] owns one [`RateLimit`] (a `static` in the expansion): at most
//! [`LINES_PER_SECOND`] lines per one-second window; the rest of the window's lines are counted,
//! not logged, and the first line logged in a later window is preceded by one
//! "suppressed K similar messages" line.
//!
//! ```text
//!  limited!(warn, ...) ─► RateLimit::admit(now)
//!      same window, < LINES_PER_SECOND so far ─► Admit::Log { suppressed: 0 } ─► the line
//!      same window, budget spent ──────────────► Admit::Suppress (counted)
//!      a later window ──────────────────────────► Admit::Log { suppressed: K }
//!                                                  ─► "suppressed K similar messages", the line
//! ```
//!
//! The check is lock-free: one atomic load and one compare-and-swap while lines are logged, one
//! load and one add while they are suppressed. The macro expands to `::tracing` calls, so this
//! crate needs no dependency; its users have `tracing`.

#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines one call site may log per one-second window.
pub const LINES_PER_SECOND: u64 = 10;

/// Bits of the packed state that count the window's lines; the rest hold the window number.
const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// What [`RateLimit::admit`] decided for one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it, after a "suppressed K similar messages" line if `suppressed` (K) is not 0.
    Log {
        /// Lines of this call site suppressed since the last one logged.
        suppressed: u64,
    },
    /// Drop it (counted).
    Suppress,
}

/// One call site's budget: the current window and the lines logged in it, packed in one word
/// (so a window change and the first count are one atomic step), and the lines suppressed since
/// the last one logged.
#[derive(Debug, Default)]
pub struct RateLimit {
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A budget no line has used yet.
    pub const fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Decides for a line at the process's monotonic clock.
    pub fn admit(&self) -> Admit {
        self.admit_at(now_seconds())
    }

    /// Decides for a line in window `second` (seconds on any monotonic clock; windows start at
    /// 1, a `second` of 0 counts as 1). A window older than the current one counts as the
    /// current one.
    pub fn admit_at(&self, second: u64) -> Admit {
        let window = second.clamp(1, u64::MAX >> COUNT_BITS);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (seen, lines) = (current >> COUNT_BITS, current & COUNT_MASK);
            let (next, fresh) = if window > seen {
                ((window << COUNT_BITS) | 1, true)
            } else if lines < LINES_PER_SECOND {
                (current + 1, false)
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return Admit::Suppress;
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let suppressed = if fresh {
                        self.suppressed.swap(0, Ordering::Relaxed)
                    } else {
                        0
                    };
                    return Admit::Log { suppressed };
                }
                Err(now) => current = now,
            }
        }
    }
}

/// Whole seconds since the first call, plus one (so the first window is 1).
fn now_seconds() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// A `tracing` event at `$level` (`error`, `warn`, `info`, `debug`, `trace`), rate-limited per
/// call site (see the crate docs). Takes the arguments of `tracing`'s macros, with an optional
/// leading `target: "...",` that the "suppressed" line shares:
///
/// ```text
/// log_limit::limited!(warn, target: "vtd", ?why, "invalidation queue error");
/// ```
#[macro_export]
macro_rules! limited {
    ($level:ident, target: $target:expr, $($rest:tt)+) => {{
        static LIMIT: $crate::RateLimit = $crate::RateLimit::new();
        if let $crate::Admit::Log { suppressed } = LIMIT.admit() {
            if suppressed != 0 {
                ::tracing::$level!(target: $target, suppressed, "suppressed {suppressed} similar messages");
            }
            ::tracing::$level!(target: $target, $($rest)+);
        }
    }};
    ($level:ident, $($rest:tt)+) => {{
        static LIMIT: $crate::RateLimit = $crate::RateLimit::new();
        if let $crate::Admit::Log { suppressed } = LIMIT.admit() {
            if suppressed != 0 {
                ::tracing::$level!(suppressed, "suppressed {suppressed} similar messages");
            }
            ::tracing::$level!($($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(limit: &RateLimit, second: u64, lines: u64) -> Vec<Admit> {
        (0..lines).map(|_| limit.admit_at(second)).collect()
    }

    #[test]
    fn a_window_logs_its_budget_then_suppresses() {
        let limit = RateLimit::new();
        let got = logged(&limit, 1, LINES_PER_SECOND + 5);
        let (log, rest) = got.split_at(LINES_PER_SECOND as usize);
        assert!(log.iter().all(|a| *a == Admit::Log { suppressed: 0 }));
        assert!(rest.iter().all(|a| *a == Admit::Suppress));
    }

    #[test]
    fn the_next_window_reports_what_was_suppressed_once() {
        let limit = RateLimit::new();
        logged(&limit, 7, LINES_PER_SECOND + 1234);
        assert_eq!(limit.admit_at(8), Admit::Log { suppressed: 1234 });
        assert_eq!(limit.admit_at(8), Admit::Log { suppressed: 0 });
        // Windows later, with nothing suppressed in between: nothing to report.
        assert_eq!(limit.admit_at(100), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn a_quiet_call_site_is_never_limited() {
        let limit = RateLimit::new();
        for second in 1..1000 {
            assert_eq!(
                logged(&limit, second, LINES_PER_SECOND),
                vec![Admit::Log { suppressed: 0 }; LINES_PER_SECOND as usize]
            );
        }
    }

    #[test]
    fn a_clock_going_back_or_starting_at_zero_stays_in_the_current_window() {
        let limit = RateLimit::new();
        logged(&limit, 5, LINES_PER_SECOND);
        assert_eq!(limit.admit_at(4), Admit::Suppress);
        assert_eq!(limit.admit_at(0), Admit::Suppress);
        assert_eq!(limit.admit_at(6), Admit::Log { suppressed: 2 });
        let fresh = RateLimit::new();
        assert_eq!(fresh.admit_at(0), Admit::Log { suppressed: 0 });
        assert_eq!(fresh.admit_at(u64::MAX), Admit::Log { suppressed: 0 });
        assert_eq!(fresh.admit_at(u64::MAX), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn threads_together_log_at_most_the_budget_per_window() {
        let limit = RateLimit::new();
        let per_thread = 1000;
        let counts: Vec<(u64, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let got = logged(&limit, 3, per_thread);
                        let log = got
                            .iter()
                            .filter(|a| matches!(a, Admit::Log { .. }))
                            .count();
                        (log as u64, per_thread - log as u64)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let logged_total: u64 = counts.iter().map(|c| c.0).sum();
        let suppressed_total: u64 = counts.iter().map(|c| c.1).sum();
        assert_eq!(logged_total, LINES_PER_SECOND);
        assert_eq!(
            limit.admit_at(4),
            Admit::Log {
                suppressed: suppressed_total
            }
        );
    }
}
