//! x86_64: the memory layout, e820, boot protocols, CPUID, MSRs, registers, GDT and page
//! tables.

pub mod boot;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod msr;
pub mod regs;
