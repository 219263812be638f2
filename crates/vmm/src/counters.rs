//! The exit summary: the VMM's own named counters, then every registered component's
//! ([`CounterSource`]), printed as `counter <name> <value>` lines when the VM exits.
//!
//! ```text
//!  register("exits_pio") ─> Arc<Counter> (bumped by the vCPUs) ─┐
//!  add_component("disk0_", Arc<BlockCounters>) ──────────────────┼─> visit ─> summary()
//!  add_component("", vIOMMU), ("accel_", ..), ("shadow_", ..) ───┘
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use counter_set::CounterSource;

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
        counter_set::add(&self.0, n);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A component whose counters the summary reports, each name prefixed.
type Component = (String, Arc<dyn CounterSource + Send + Sync>);

/// The registry the summary walks: the VMM's own counters first (in registration order),
/// then the components' (in registration order).
#[derive(Default)]
pub struct Counters {
    own: Mutex<Vec<(String, Arc<Counter>)>>,
    components: Mutex<Vec<Component>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.pairs()).finish()
    }
}

impl Counters {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or returns the existing) VMM counter called `name`.
    pub fn register(&self, name: &str) -> Arc<Counter> {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = own.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let counter = Arc::new(Counter::default());
        own.push((name.to_owned(), counter.clone()));
        counter
    }

    /// Adds a component whose counters are reported as `<prefix><name>`.
    pub fn add_component(
        &self,
        prefix: impl Into<String>,
        component: Arc<dyn CounterSource + Send + Sync>,
    ) {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((prefix.into(), component));
    }

    /// Forgets what a device that was unplugged reported under `prefix`: the components
    /// registered with exactly that prefix and the own counters whose names start with it;
    /// returns how many there were.
    pub fn remove_component(&self, prefix: &str) -> usize {
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        let before = components.len();
        components.retain(|(p, _)| p != prefix);
        let mut removed = before - components.len();
        drop(components);
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let before = own.len();
        own.retain(|(name, _)| !name.starts_with(prefix));
        removed += before - own.len();
        removed
    }

    /// Every counter as one JSON object `{"<name>": <value>, ...}`.
    pub fn json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        self.visit(&mut |name, value| {
            map.insert(name.to_owned(), serde_json::Value::from(value));
        });
        serde_json::Value::Object(map)
    }

    /// The `counter <name> <value>` lines.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.visit(&mut |name, value| out.push_str(&format!("counter {name} {value}\n")));
        out
    }
}

impl CounterSource for Counters {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        for (name, counter) in self.own.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            f(name, counter.get());
        }
        for (prefix, component) in self
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            component.visit(&mut |name, value| f(&format!("{prefix}{name}"), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unit;
    impl CounterSource for Unit {
        fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
            f("iotlb_hits", 7);
            f("faults", 1);
        }
    }

    #[test]
    fn summary_lines() {
        let c = Counters::new();
        c.add_component("vtd_", Arc::new(Unit));
        c.register("pio_exits").add(3);
        c.register("pio_exits").inc();
        c.register("mmio_exits");
        assert_eq!(
            c.json().to_string(),
            r#"{"mmio_exits":0,"pio_exits":4,"vtd_faults":1,"vtd_iotlb_hits":7}"#
        );
        assert_eq!(
            c.summary(),
            "counter pio_exits 4\ncounter mmio_exits 0\ncounter vtd_iotlb_hits 7\n\
             counter vtd_faults 1\n"
        );
    }
}
