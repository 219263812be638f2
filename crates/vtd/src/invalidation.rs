//! The cache-invalidation scopes the spec defines, independent of how the guest requested them
//! (a queued descriptor, or the CCMD / IOTLB registers).

use vtd_spec::SourceId;

/// One invalidation the caches must apply (§6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Context cache: everything (§6.5.2.1, G=1).
    ContextGlobal,
    /// Context cache: entries tagged with a domain (G=2). Scalable-mode context entries carry
    /// no DID, so implementations may treat this as global.
    ContextDomain {
        /// Domain id.
        did: u16,
    },
    /// Context cache: one device, `fm` low devfn bits ignored (G=3).
    ContextDevice {
        /// Domain id.
        did: u16,
        /// Source id.
        sid: SourceId,
        /// Function mask: 0 none, 1 ignore bit 2, 2 ignore bits 2:1, 3 ignore bits 2:0.
        fm: u8,
    },
    /// IOTLB: everything, including paging-structure caches (§6.5.2.2, G=1).
    IotlbGlobal,
    /// IOTLB: everything tagged with a domain (G=2).
    IotlbDomain {
        /// Domain id.
        did: u16,
    },
    /// IOTLB: pages of a domain (G=3). Second-stage entries in the range are dropped; for
    /// first-stage (and nested) entries the spec drops *all* entries of the domain.
    IotlbPage {
        /// Domain id.
        did: u16,
        /// First byte of the 2^am-page range, aligned.
        addr: u64,
        /// Address mask.
        am: u8,
        /// Only leaf entries changed: paging-structure caches may be kept.
        ih: bool,
    },
    /// PASID-based IOTLB: all first-stage entries of (DID, PASID) (§6.5.2.4, G=2).
    PasidIotlbAll {
        /// Domain id.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// PASID-based IOTLB: pages of (DID, PASID) (G=3). AM may be as large as 52 (whole space).
    PasidIotlbPage {
        /// Domain id.
        did: u16,
        /// PASID.
        pasid: u32,
        /// First byte of the 2^am-page range, aligned.
        addr: u64,
        /// Address mask.
        am: u8,
        /// Only leaf entries changed.
        ih: bool,
    },
    /// PASID cache: everything (§6.5.2.3, G=3).
    PasidCacheGlobal,
    /// PASID cache: entries of a domain (G=0).
    PasidCacheDomain {
        /// Domain id.
        did: u16,
    },
    /// PASID cache: one PASID within a domain (G=1).
    PasidCachePasid {
        /// Domain id.
        did: u16,
        /// PASID.
        pasid: u32,
    },
}
