//! Typed Intel VT-d architectural formats.
//!
//! This crate is the *spec layer* of vtd-nest: every structure the guest or the hardware writes —
//! registers, root/context/PASID entries, page-table entries, invalidation descriptors, fault
//! records — as a typed value with named fields, each citing its section of the Intel
//! Virtualization Technology for Directed I/O Architecture Specification (rev. 4.x, "§" below).
//! Behaviour lives elsewhere (the `vtd` crate for the vIOMMU, the `host-iommu` crate for the
//! software host IOMMU); no other code masks raw bits.
//!
//! ```text
//!   RTADDR ──► root table ──► context table ──► PASID directory ──► PASID table
//!   (regs)     (root)         (context)          (pasid)              (pasid)
//!                                 │                                     │
//!                                 ▼ legacy: SLPTPTR                     ▼ FSPTPTR / SLPTPTR
//!                              second-stage PTEs (pte)          first-/second-stage PTEs (pte)
//!
//!   IQA/IQH/IQT ──► invalidation queue of descriptors (inv)
//!   FRCD registers ◄── fault records with fault reasons (fault)
//!
//!   IRTA ──► interrupt remapping table of IRTEs (interrupt) ◄── remappable MSI address/data
//! ```
//!
//! Conversions from raw guest data never panic: every bit pattern decodes to *some* value, and
//! reserved-bit checks are explicit methods so behaviour code can report the spec's fault.

#![forbid(unsafe_code)]

pub mod context;
pub mod fault;
pub mod interrupt;
pub mod inv;
pub mod pasid;
pub mod pte;
pub mod regs;
pub mod rights;
pub mod root;

/// Size of a VT-d page-table page and of every table page (§3.4, §9).
pub const PAGE_SIZE: u64 = 4096;
/// Shift for a 4 KiB page.
pub const PAGE_SHIFT: u32 = 12;

/// A PCI requester (source) identifier: bus in bits 15:8, device/function in 7:0 (§3.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u16);

impl SourceId {
    /// Builds a source id from bus, device and function numbers.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self(((bus as u16) << 8) | (((device & 0x1f) as u16) << 3) | ((function & 0x7) as u16))
    }
    /// Bus number, the index into the root table.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Device/function number, the index into a context table.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }
    /// Whether this source is selected by a device-selective context-cache invalidation of
    /// `sid` with function mask `fm` (§6.5.2.1: FM 1, 2, 3 ignore function bits 2, 2:1, 2:0).
    pub const fn selected_by(self, sid: SourceId, fm: u8) -> bool {
        let ignore: u16 = match fm & 3 {
            0 => 0,
            1 => 0b100,
            2 => 0b110,
            _ => 0b111,
        };
        (self.0 & !ignore) == (sid.0 & !ignore)
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.devfn() >> 3,
            self.devfn() & 7
        )
    }
}

/// Whether a guest-physical address (a table pointer in a root, context, PASID-directory or
/// PASID entry) lies at or above the host address width `haw` (CAP.MGAW + 1). Pointer bits at and
/// above the HAW are reserved in every entry format (§9.1-§9.6).
pub const fn beyond_haw(addr: u64, haw: u32) -> bool {
    haw < 64 && (addr >> haw) != 0
}

/// The largest PASID value plus one: PASIDs are 20 bits (§3.4.3).
pub const PASID_LIMIT: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_beyond_the_host_address_width() {
        assert!(!beyond_haw(0xffff_ffff_f000, 48));
        assert!(beyond_haw(1 << 48, 48));
        assert!(beyond_haw(1 << 39, 39));
        assert!(!beyond_haw(u64::MAX, 64));
    }

    #[test]
    fn function_masks_ignore_low_function_bits() {
        let sid = SourceId::new(3, 4, 5);
        let others = |fm| (0..8).filter(move |&f| SourceId::new(3, 4, f).selected_by(sid, fm));
        assert_eq!(others(0).collect::<Vec<_>>(), [5]);
        assert_eq!(others(1).collect::<Vec<_>>(), [1, 5]);
        assert_eq!(others(2).collect::<Vec<_>>(), [1, 3, 5, 7]);
        assert_eq!(others(3).count(), 8);
        assert!(
            !SourceId::new(3, 5, 5).selected_by(sid, 3),
            "another device"
        );
    }
}
