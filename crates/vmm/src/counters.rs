//! Named event counters, printed as `counter <name> <value>` lines when the VM exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing counter, cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A summary source: returns `(name, value)` pairs when the summary is printed.
pub type CounterSource = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// A registry of counters and of extra summary sources (the vIOMMU's own counters).
#[derive(Default)]
pub struct Counters {
    counters: Mutex<Vec<(String, Arc<Counter>)>>,
    sources: Mutex<Vec<CounterSource>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl Counters {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or returns the existing) counter called `name`.
    pub fn register(&self, name: &str) -> Arc<Counter> {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = counters.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let counter = Arc::new(Counter::default());
        counters.push((name.to_owned(), counter.clone()));
        counter
    }

    /// Adds a source of `(name, value)` pairs read at summary time.
    pub fn add_source(&self, source: impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(source));
    }

    /// All values, registered counters first, in registration order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, c)| (n.clone(), c.get()))
            .collect();
        for source in self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.extend(source());
        }
        out
    }

    /// The `counter <name> <value>` lines.
    pub fn summary(&self) -> String {
        self.snapshot()
            .iter()
            .map(|(n, v)| format!("counter {n} {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        let c = Counters::new();
        c.register("pio_exits").add(3);
        c.register("pio_exits").inc();
        c.register("mmio_exits");
        c.add_source(|| vec![("vtd_iotlb_hits".to_owned(), 7)]);
        assert_eq!(
            c.summary(),
            "counter pio_exits 4\ncounter mmio_exits 0\ncounter vtd_iotlb_hits 7\n"
        );
    }
}
