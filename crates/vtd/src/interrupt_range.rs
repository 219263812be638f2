//! Requests without PASID to the interrupt address range FEEx_xxxxh (§3.15): not DMA.
//!
//! ```text
//!  device write of one DWORD ─► Remapper::interrupt(sid, address, data)
//!      ─► compatibility-format MSI (interrupt remapping is not offered, §5.1.2.1)
//!      ─► the unit's interrupt sink (FaultInterrupt), as written
//!  Remapper::remap(request without PASID, address in the range), translation enabled
//!      ─► fault: a read, an atomic or a write that is not one DWORD is illegal (§3.15)
//!  Remapper::remap(request without PASID, address outside the range)
//!      ─► translation narrowed so that it does not cover the range
//!  requests with PASID ─► translated like any other address
//! ```
//!
//! **Fault reason.** §3.15 reports the illegal requests as DMA-remapping faults without naming a
//! condition; such a request is not remapped, so its output address is its input address, which
//! is the interrupt-range condition: LGN.4 (0x0E) in legacy mode, SGN.8 (0x87) in scalable mode
//! (Table 30). No translation structure is read, so no FPD applies. QEMU completes such reads
//! without a fault; the model follows the specification.
//!
//! **Narrowing.** A translation for a request just outside the range may be a superpage (or the
//! pass-through window) that covers it; whoever remembers it (e.g. `iommu::DeviceIommu`) would
//! then serve addresses in the range as DMA. The unit halves such a translation around the
//! requested address until it no longer covers the range (the range is 1 MiB aligned, so at
//! most a 1 MiB page is left), and drops nearby translations that cover it.

use crate::request::{DmaRequest, Fault, Translation};
use vtd_spec::fault::FaultReason;
use vtd_spec::regs::TranslationTableMode;

/// The interrupt address range FEEx_xxxxh.
pub const INTERRUPT_RANGE: std::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Whether `req` is a request without PASID to the interrupt range.
pub(crate) fn is_interrupt_request(req: &DmaRequest) -> bool {
    req.pasid.is_none() && INTERRUPT_RANGE.contains(&req.iova)
}

/// The fault for a request without PASID to the interrupt range under table mode `ttm`.
pub(crate) fn fault(req: &DmaRequest, ttm: TranslationTableMode) -> Fault {
    let reason = match ttm {
        TranslationTableMode::Legacy => FaultReason::InterruptAddress,
        _ => FaultReason::SmInvalidInterruptAddress,
    };
    Fault {
        reason,
        sid: req.sid,
        pasid: None,
        iova: req.iova,
        access: req.access,
        fpd: false,
    }
}

/// Whether `[base, base + size)` overlaps the interrupt range.
pub(crate) fn covers_range(t: &Translation) -> bool {
    t.iova_base < INTERRUPT_RANGE.end && INTERRUPT_RANGE.start < t.iova_base.saturating_add(t.size)
}

/// `t` (a translation of `iova`, which lies outside the range) narrowed to the largest aligned
/// block around `iova` that does not cover the range.
pub(crate) fn outside_range(mut t: Translation, iova: u64) -> Translation {
    while covers_range(&t) && t.size > 4096 {
        let size = t.size / 2;
        let base = iova & !(size - 1);
        t = Translation {
            iova_base: base,
            gpa_base: t.gpa(base),
            size,
            perms: t.perms,
        };
    }
    t
}

/// The message of a single-DWORD write of `data` at `address`, if it is an interrupt request:
/// a DWORD-aligned address in the range. Returns `(address, data)` as the MSI to send.
pub(crate) fn message(address: u64, data: u32) -> Option<(u64, u32)> {
    (INTERRUPT_RANGE.contains(&address) && address.is_multiple_of(4)).then_some((address, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Permissions;

    fn translation(iova_base: u64, gpa_base: u64, size: u64) -> Translation {
        Translation {
            iova_base,
            gpa_base,
            size,
            perms: Permissions {
                read: true,
                write: true,
            },
        }
    }

    #[test]
    fn narrowing_keeps_the_largest_block_outside_the_range() {
        // The pass-through window below the range: the lower 2 GiB, then up to 0xfec0_0000.
        let id = translation(0, 0, 1 << 52);
        assert_eq!(outside_range(id, 0x1234), translation(0, 0, 1 << 31));
        assert_eq!(
            outside_range(id, 0xfed0_0000),
            translation(0xfec0_0000, 0xfec0_0000, 2 << 20)
        );
        // Above it.
        assert_eq!(
            outside_range(id, 0xfef0_1000),
            translation(0xfef0_0000, 0xfef0_0000, 1 << 20)
        );
        // A 1 GiB page at 0xc000_0000 mapping elsewhere.
        let page = translation(0xc000_0000, 0x4000_0000, 1 << 30);
        assert_eq!(
            outside_range(page, 0xc000_1000),
            translation(0xc000_0000, 0x4000_0000, 1 << 29)
        );
        // Pages clear of the range are untouched.
        let clear = translation(0x20_0000, 0x80_0000, 2 << 20);
        assert_eq!(outside_range(clear, 0x20_1000), clear);
        // Every address of the page outside the range keeps its translation.
        for t in [id, page] {
            for iova in [0xc000_0000, 0xfedf_f000, 0xfef0_0000, 0xffff_f000] {
                let n = outside_range(t, iova);
                assert!(!covers_range(&n), "{iova:#x}");
                assert!(n.iova_base <= iova && iova < n.iova_base + n.size);
                assert_eq!(n.gpa(iova), t.gpa(iova));
            }
        }
    }

    #[test]
    fn only_dword_aligned_writes_in_the_range_are_messages() {
        assert_eq!(message(0xfee0_1000, 0x4041), Some((0xfee0_1000, 0x4041)));
        assert_eq!(message(0xfeef_fffc, 7), Some((0xfeef_fffc, 7)));
        assert_eq!(message(0xfee0_1002, 7), None);
        assert_eq!(message(0xfef0_0000, 7), None);
        assert_eq!(message(0xfedf_fffc, 7), None);
    }
}
