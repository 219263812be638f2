//! Named event counters, the one way every component reports what it counted.
//!
//! A component declares its counters with [`counter_set!`] (a live struct of relaxed atomics,
//! bumped on its hot paths exactly as a bare atomic is, and a plain-`u64` snapshot of it) and
//! reports them through [`CounterSource::visit`]. The VMM registers the components and walks
//! them to print its exit summary (`counter <name> <value>` lines):
//!
//! ```text
//!  component ── counter_set! { name: Type = "doc", ... } ──> Live (AtomicU64 | any Count)
//!                                                               │ CounterSource::visit
//!  VMM registry: [(prefix, Arc<dyn CounterSource>)] ── walk ──> "counter <prefix><name> <value>"
//! ```
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// Something that counted events and reports each counter as a `(name, value)` pair.
pub trait CounterSource {
    /// Calls `f` once per counter, in a fixed order, with its name and current value.
    fn visit(&self, f: &mut dyn FnMut(&str, u64));

    /// The `(name, value)` pairs [`visit`](Self::visit) reports, in its order.
    fn pairs(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.visit(&mut |name, value| out.push((name.to_owned(), value)));
        out
    }
}

/// A counter cell [`counter_set!`] can read: a relaxed atomic, or a component's own type
/// (e.g. a counter spread over cache lines).
pub trait Count {
    /// The current value.
    fn get(&self) -> u64;
}

impl Count for AtomicU64 {
    fn get(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// Adds `n` to a relaxed atomic counter.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a relaxed atomic counter.
#[inline]
pub fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Declares a live counters struct and its snapshot; both report through [`CounterSource`]
/// under the field names.
///
/// ```
/// use std::sync::atomic::AtomicU64;
/// counter_set::counter_set! {
///     /// Live counters.
///     pub struct Live;
///     /// A copy of them.
///     pub struct Snapshot;
///     {
///         requests: AtomicU64 = "Requests served.",
///         errors: AtomicU64 = "Requests that failed.",
///     }
/// }
/// use counter_set::CounterSource;
/// let live = Live::default();
/// counter_set::bump(&live.errors);
/// assert_eq!(live.snapshot(), Snapshot { requests: 0, errors: 1 });
/// assert_eq!(live.pairs(), [("requests".to_owned(), 0), ("errors".to_owned(), 1)]);
/// ```
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$live_meta:meta])* $vis:vis struct $Live:ident;
        $(#[$snap_meta:meta])* $svis:vis struct $Snapshot:ident;
        { $($field:ident: $ty:ty = $doc:literal,)* }
    ) => {
        $(#[$live_meta])*
        #[derive(Debug, Default)]
        $vis struct $Live {
            $(#[doc = $doc] $vis $field: $ty,)*
        }

        $(#[$snap_meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $svis struct $Snapshot {
            $(#[doc = $doc] pub $field: u64,)*
        }

        impl $Live {
            /// Copies every counter.
            $vis fn snapshot(&self) -> $Snapshot {
                $Snapshot { $($field: $crate::Count::get(&self.$field),)* }
            }
        }

        impl $crate::CounterSource for $Live {
            fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
                $(f(stringify!($field), $crate::Count::get(&self.$field));)*
            }
        }

        impl $crate::CounterSource for $Snapshot {
            fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
                $(f(stringify!($field), self.$field);)*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    counter_set! {
        struct Live;
        struct Snapshot;
        {
            first: AtomicU64 = "The first.",
            second: AtomicU64 = "The second.",
        }
    }

    #[test]
    fn live_and_snapshot_report_the_same_pairs_in_declaration_order() {
        let live = Live::default();
        add(&live.second, 5);
        bump(&live.first);
        let want = [("first".to_owned(), 1), ("second".to_owned(), 5)];
        assert_eq!(live.pairs(), want);
        assert_eq!(live.snapshot().pairs(), want);
        assert_eq!(
            live.snapshot(),
            Snapshot {
                first: 1,
                second: 5
            }
        );
    }
}
