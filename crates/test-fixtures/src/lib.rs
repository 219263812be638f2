//! What the tests and benches of several crates (vtd, accel, vmm) need to play the guest
//! driver: guest RAM with a table-page allocator ([`Mem`]), builders that write root, context,
//! PASID and page tables as a driver would ([`tables`]), invalidation descriptors
//! ([`descriptors`]) and interrupt remapping tables ([`interrupts`]), all on `vtd-spec`'s typed formats. A dev-dependency only: nothing here
//! ships.
//!
//! ```text
//!  Mem (RAM + page allocator) ─► tables::Tables  root ─► context ─► PASID dir ─► PASID entry
//!                             └► tables::PageTable  first or second stage, any level
//!  descriptors::*  ─► [u64; 4] ─► descriptors::write_queue(mem, queue, tail, …) ─► IQT write
//!  interrupts::irte ─► interrupts::write_irte(ram, table, index, …); interrupts::remappable
//! ```

pub mod descriptors;
pub mod interrupts;
mod mem;
pub mod tables;

pub use mem::{DATA_BASE, Mem, RAM_SIZE, TABLES_BASE};
