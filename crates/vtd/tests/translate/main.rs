//! The translator on its own (`vtd::Translator` behind a stand-in unit, `support::Unit`), one
//! test binary with a module per concern.
//!
//! ```text
//!  support: guest RAM, table builders, stand-in unit ─► each module builds the tables a guest
//!           driver would, translates (or DMAs through DeviceIommu) and checks the answer;
//!           prop compares with support::reference, a plain walker
//! ```

mod support;

mod ad;
mod caches;
mod faults;
mod hostile;
mod invalidation_races;
mod iommu;
mod modes;
mod prop;
mod qemu;
mod shadow_view;
