//! A model of an Intel VT-d remapping unit as a guest sees it.
//!
//! (Crate documentation with the flow diagram is completed as the modules land.)

#![forbid(unsafe_code)]

pub mod config;
pub mod counters;
pub mod fault;
pub mod invalidation;
pub mod iommu;
pub mod memory;
pub mod qi;
pub mod regs;
pub mod request;
pub mod translate;
