//! Invalidation descriptors (§6.5.2) as a driver writes them, from `vtd-spec`'s descriptor
//! types, and the queue writes that submit them.
//!
//! Fields a test may want out of range on purpose (a reserved granularity, an address with
//! reserved bits) are taken as they are: the encoders only place them.

use vtd_spec::inv::{
    ContextCacheDesc, IecDesc, InvAddress, IotlbDesc, PasidCacheDesc, PasidIotlbDesc, WaitAddress,
    WaitDesc, kind,
};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// One descriptor: 128 bits (the first two quadwords) or 256.
pub type Desc = [u64; 4];

/// `qw0` with the seven-bit `kind` placed in bits 3:0 and 11:9.
fn typed(kind: u8, qw0: u64) -> u64 {
    qw0 | u64::from(kind & 0xf) | (u64::from(kind >> 4) << 9)
}

/// Context-cache invalidation with granularity `g` (1 global, 2 domain, 3 device).
pub fn context_cache(g: u8, did: u16, sid: u16, fm: u8) -> Desc {
    let qw0 = ContextCacheDesc::new()
        .with_g(g)
        .with_did(did)
        .with_sid(sid)
        .with_fm(fm);
    [typed(kind::CONTEXT_CACHE, qw0.into_bits()), 0, 0, 0]
}

/// IOTLB invalidation with granularity `g` (1 global, 2 domain, 3 page); `qw1` is the
/// [`InvAddress`] (see [`inv_address`]).
pub fn iotlb(g: u8, did: u16, qw1: u64) -> Desc {
    let qw0 = IotlbDesc::new().with_g(g).with_did(did);
    [typed(kind::IOTLB, qw0.into_bits()), qw1, 0, 0]
}

/// PASID-based IOTLB invalidation with granularity `g` (2 PASID, 3 page within PASID); `qw1`
/// is the [`InvAddress`] (see [`inv_address`]).
pub fn piotlb(g: u8, did: u16, pasid: u32, qw1: u64) -> Desc {
    let qw0 = PasidIotlbDesc::new()
        .with_g(g)
        .with_did(did)
        .with_pasid(pasid);
    [typed(kind::PASID_IOTLB, qw0.into_bits()), qw1, 0, 0]
}

/// PASID-cache invalidation with granularity `g` (0 domain, 1 PASID, 3 global).
pub fn pasid_cache(g: u8, did: u16, pasid: u32) -> Desc {
    let qw0 = PasidCacheDesc::new()
        .with_g(g)
        .with_did(did)
        .with_pasid(pasid);
    [typed(kind::PASID_CACHE, qw0.into_bits()), 0, 0, 0]
}

/// Interrupt-entry-cache invalidation of every entry (Linux's `qi_global_iec`).
pub fn iec_global() -> Desc {
    [typed(kind::IEC, IecDesc::new().into_bits()), 0, 0, 0]
}

/// Interrupt-entry-cache invalidation of 2^`mask` entries from `index` (Linux's
/// `qi_flush_iec`).
pub fn iec_index(index: u16, mask: u8) -> Desc {
    let qw0 = IecDesc::new().with_g(true).with_iidx(index).with_im(mask);
    [typed(kind::IEC, qw0.into_bits()), 0, 0, 0]
}

/// A wait descriptor that writes `data` at `status` (SW).
pub fn wait(status: u64, data: u32) -> Desc {
    let qw0 = WaitDesc::new().with_sw(true).with_status_data(data);
    let qw1 = WaitAddress::new().with_addr(status >> 2);
    [typed(kind::WAIT, qw0.into_bits()), qw1.into_bits(), 0, 0]
}

/// A wait descriptor that raises the completion interrupt (IF) only.
pub fn wait_interrupt() -> Desc {
    let qw0 = WaitDesc::new().with_interrupt(true);
    [typed(kind::WAIT, qw0.into_bits()), 0, 0, 0]
}

/// The address quadword of a page-selective invalidation: 2^`am` pages from `iova`, `ih` for
/// "only leaves changed".
pub fn inv_address(iova: u64, am: u8, ih: bool) -> u64 {
    InvAddress::new()
        .with_addr(iova >> 12)
        .with_am(am)
        .with_ih(ih)
        .into_bits()
}

/// Context-cache global invalidation (Linux's boot flush).
pub fn context_cache_global() -> Desc {
    context_cache(1, 0, 0, 0)
}

/// PASID-cache global invalidation.
pub fn pasid_cache_global() -> Desc {
    pasid_cache(3, 0, 0)
}

/// PASID-cache invalidation of one domain.
pub fn pasid_cache_domain(did: u16) -> Desc {
    pasid_cache(0, did, 0)
}

/// PASID-cache invalidation of one PASID of a domain.
pub fn pasid_cache_pasid(did: u16, pasid: u32) -> Desc {
    pasid_cache(1, did, pasid)
}

/// IOTLB global invalidation.
pub fn iotlb_global() -> Desc {
    iotlb(1, 0, 0)
}

/// PASID-IOTLB invalidation of every page of one PASID (Linux's lazy-mode flush).
pub fn piotlb_pasid(did: u16, pasid: u32) -> Desc {
    piotlb(2, did, pasid, 0)
}

/// PASID-IOTLB invalidation of 2^`am` pages from `iova` (Linux's strict-mode unmap).
pub fn piotlb_page(did: u16, pasid: u32, iova: u64, am: u8, ih: bool) -> Desc {
    piotlb(3, did, pasid, inv_address(iova, am, ih))
}

/// Writes `descs` into the invalidation queue at `queue` in `ram` from slot `tail` on
/// (wrapping at `entries`; 256-bit slots when `wide`) and returns the new tail slot. IQT is
/// the caller's.
pub fn write_queue(
    ram: &GuestMemoryMmap<()>,
    queue: u64,
    tail: u64,
    entries: u64,
    wide: bool,
    descs: &[Desc],
) -> u64 {
    let size: u64 = if wide { 32 } else { 16 };
    let mut tail = tail;
    for d in descs {
        let slot = queue + tail * size;
        for (i, q) in d.iter().take(size as usize / 8).enumerate() {
            ram.write_obj(*q, GuestAddress(slot + 8 * i as u64))
                .unwrap();
        }
        tail = (tail + 1) % entries;
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mem;
    use vtd_spec::inv::Descriptor;

    #[test]
    fn encoders_decode_to_what_they_name() {
        assert!(matches!(
            Descriptor::decode(context_cache(3, 5, 0x18, 2)),
            Descriptor::ContextCache(d) if d.g() == 3 && d.did() == 5 && d.sid() == 0x18 && d.fm() == 2
        ));
        assert!(matches!(
            Descriptor::decode(piotlb_page(2, 7, 0xabc0_0000, 4, true)),
            Descriptor::PasidIotlb(d, a)
                if d.g() == 3 && d.did() == 2 && d.pasid() == 7
                    && a.base() == 0xabc0_0000 && a.am() == 4 && a.ih()
        ));
        assert!(matches!(
            Descriptor::decode(pasid_cache_pasid(2, 9)),
            Descriptor::PasidCache(d) if d.g() == 1 && d.did() == 2 && d.pasid() == 9
        ));
        assert!(matches!(
            Descriptor::decode(iotlb_global()),
            Descriptor::Iotlb(d, _) if d.g() == 1
        ));
        assert!(matches!(
            Descriptor::decode(wait(0x380_0008, 3)),
            Descriptor::Wait(d, a) if d.sw() && !d.interrupt() && d.status_data() == 3
                && a.address() == 0x380_0008
        ));
        assert!(matches!(
            Descriptor::decode(wait_interrupt()),
            Descriptor::Wait(d, _) if d.interrupt() && !d.sw()
        ));
    }

    #[test]
    fn the_encoders_write_the_bits_linux_writes() {
        // Literal encodings from Linux 6.12's qi_flush_* and qi_submit_sync.
        assert_eq!(context_cache_global(), [1 | (1 << 4), 0, 0, 0]);
        assert_eq!(pasid_cache_global(), [7 | (3 << 4), 0, 0, 0]);
        assert_eq!(iotlb_global(), [2 | (1 << 4), 0, 0, 0]);
        assert_eq!(piotlb_pasid(1, 0), [6 | (2 << 4) | (1 << 16), 0, 0, 0]);
        assert_eq!(
            piotlb_page(1, 0, 0x5000, 0, true),
            [6 | (3 << 4) | (1 << 16), 0x5000 | (1 << 6), 0, 0]
        );
        assert_eq!(wait(0x1000, 2), [5 | (1 << 5) | (2 << 32), 0x1000, 0, 0]);
        assert_eq!(iec_global(), [4, 0, 0, 0]);
        assert_eq!(
            iec_index(0x12, 1),
            [4 | (1 << 4) | (1 << 27) | (0x12 << 32), 0, 0, 0]
        );
    }

    #[test]
    fn the_queue_wraps_and_narrow_slots_take_two_quadwords() {
        let mem = Mem::new();
        let queue = mem.page();
        let tail = write_queue(
            &mem.ram,
            queue,
            255,
            256,
            false,
            &[[1, 2, 3, 4], [5, 6, 7, 8]],
        );
        assert_eq!(tail, 1);
        assert_eq!(
            (mem.r64(queue + 255 * 16), mem.r64(queue + 255 * 16 + 8)),
            (1, 2)
        );
        assert_eq!((mem.r64(queue), mem.r64(queue + 8)), (5, 6));
        assert_eq!(mem.r64(queue + 16), 0, "narrow slots hold two quadwords");
    }
}
