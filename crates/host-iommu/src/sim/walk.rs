//! The nested walk: the guest's first-stage table (IA-32e 4/5-level, VT-d spec §3.6, §9.7)
//! over the nest parent's stage 2 (the IOAS). Every table pointer and the final GPA go through
//! stage 2; A/EA/D are set with atomic updates as hardware does (§3.6.2). The walk reads at
//! most one entry per level, so hostile tables cost a bounded amount of work and allocate
//! nothing beyond the bounded caches.

use vtd_spec::pte::{FirstStagePte, level_size, table_index};
use vtd_spec::rights::{FsRequest, FsRights};

use super::HostMemory;
use super::ioas::IoasMap;
use super::iotlb::{IotlbEntry, NestedCaches, PscEntry};
use crate::{DmaPerm, VtdS1HwptData};

/// A DMA request as the device issues it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaAccess {
    /// The request reads.
    pub read: bool,
    /// The request writes.
    pub write: bool,
    /// Supervisor privilege (a request with PASID and PR=1); plain requests are user.
    pub supervisor: bool,
}

impl DmaAccess {
    /// A user-privilege read.
    pub const READ: Self = Self {
        read: true,
        write: false,
        supervisor: false,
    };
    /// A user-privilege write.
    pub const WRITE: Self = Self {
        read: false,
        write: true,
        supervisor: false,
    };
}

/// Why a DMA was not translated (the host would record a fault; the device gets an abort).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// The device is not attached to anything.
    #[error("DMA blocked: the device is not attached")]
    Blocked,
    /// The IOVA is not canonical for the first-stage address width.
    #[error("IOVA {iova:#x} is not canonical for a {width}-bit first-stage table")]
    NonCanonical {
        /// The IOVA.
        iova: u64,
        /// The table's input width.
        width: u32,
    },
    /// A first-stage entry is not present.
    #[error("First-stage entry not present at level {level} for IOVA {iova:#x}")]
    S1NotPresent {
        /// The IOVA.
        iova: u64,
        /// Paging level (1 = PTE).
        level: u32,
    },
    /// A first-stage entry has reserved bits set.
    #[error("Reserved bits set in the first-stage entry at level {level} for IOVA {iova:#x}")]
    S1Reserved {
        /// The IOVA.
        iova: u64,
        /// Paging level.
        level: u32,
    },
    /// First-stage permissions (R/W, U/S, WPE) deny the access.
    #[error("First-stage permissions deny the access at IOVA {iova:#x} (write: {write})")]
    S1Permission {
        /// The IOVA.
        iova: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// A supervisor request on a HWPT without SRE.
    #[error("Supervisor request at IOVA {iova:#x} without SRE")]
    SupervisorDisabled {
        /// The IOVA.
        iova: u64,
    },
    /// Stage 2 does not map a GPA (a table page or the final address).
    #[error("Stage 2 does not map GPA {gpa:#x}")]
    S2NotMapped {
        /// The GPA.
        gpa: u64,
    },
    /// Stage-2 permissions deny the access (or the A/D update of a table entry).
    #[error("Stage-2 permissions deny the access at GPA {gpa:#x} (write: {write})")]
    S2Permission {
        /// The GPA.
        gpa: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// The VMM could not access a host address the IOAS maps.
    #[error("Host memory access failed at {hva:#x}")]
    HostMemory {
        /// The host address.
        hva: u64,
    },
    /// A first-stage entry kept changing under the atomic A/D update.
    #[error("First-stage entry at GPA {gpa:#x} kept changing during the A/D update")]
    Contended {
        /// The entry's GPA.
        gpa: u64,
    },
}

/// How the sim's host IOMMU is configured, as the walk needs it.
#[derive(Clone, Copy, Debug)]
pub struct WalkConfig {
    /// CAP.FS1GP.
    pub fs1gp: bool,
    /// Host address width (reserved physical-address bits at and above it).
    pub haw: u32,
}

/// Outcome of one translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translated {
    /// Host virtual address of the IOVA.
    pub hva: u64,
    /// Whether the IOTLB answered.
    pub iotlb_hit: bool,
}

/// Stage 2 only: the IOAS translates the IOVA (= GPA) directly.
pub fn translate_s2(s2: &IoasMap, gpa: u64, access: DmaAccess) -> Result<u64, DmaFault> {
    let (hva, perm) = s2.translate(gpa).ok_or(DmaFault::S2NotMapped { gpa })?;
    check_s2(perm, gpa, access)?;
    Ok(hva)
}

fn check_s2(perm: DmaPerm, gpa: u64, access: DmaAccess) -> Result<(), DmaFault> {
    if (access.read && !perm.read) || (access.write && !perm.write) {
        return Err(DmaFault::S2Permission {
            gpa,
            write: access.write && !perm.write,
        });
    }
    Ok(())
}

impl DmaAccess {
    /// This access as a first-stage request (devices here never ask for execute).
    fn first_stage(self) -> FsRequest {
        FsRequest {
            privileged: self.supervisor,
            write: self.write,
            execute: false,
        }
    }
}

const ACCESSED: u64 = FirstStagePte::new().with_accessed(true).into_bits();
const DIRTY: u64 = FirstStagePte::new().with_dirty(true).into_bits();
const EXTENDED_ACCESSED: u64 = FirstStagePte::new().with_ea(true).into_bits();
/// Attempts at the atomic A/D update before giving up.
const AD_ATTEMPTS: u32 = 4;

/// Translates `iova` through a nested HWPT: IOTLB, then paging-structure cache, then the
/// guest's table in host memory through stage 2.
pub fn translate_nested(
    mem: &dyn HostMemory,
    s2: &IoasMap,
    caches: &mut NestedCaches,
    data: &VtdS1HwptData,
    cfg: WalkConfig,
    iova: u64,
    access: DmaAccess,
) -> Result<Translated, DmaFault> {
    let width = if data.addr_width == 57 { 57 } else { 48 };
    let levels = (width - 12) / 9;
    let sign = iova >> (width - 1);
    if sign != 0 && sign != u64::MAX >> (width - 1) {
        return Err(DmaFault::NonCanonical { iova, width });
    }
    let controls = data.controls();
    let req = access.first_stage();
    if controls.check_request(req).is_err() {
        return Err(DmaFault::SupervisorDisabled { iova });
    }
    let va = iova & ((1u64 << width) - 1);
    let offset = iova & 0xfff;

    if let Some(e) = caches.iotlb(va) {
        let s2_ok = check_s2(e.s2, 0, access).is_ok();
        if s2_ok && e.s1.check(controls, req).is_ok() && (!access.write || e.dirty) {
            return Ok(Translated {
                hva: e.hva_page + offset,
                iotlb_hit: true,
            });
        }
        caches.remove_iotlb(va);
    }

    let mut level = levels;
    let mut table_gpa = data.pgtbl_addr & !0xfff;
    let mut rights = FsRights::ALL;
    for l in 2..=levels {
        if let Some(p) = caches.psc(l, va) {
            level = l - 1;
            table_gpa = p.table_gpa;
            rights = p.rights;
            break;
        }
    }

    while level >= 1 {
        let pte_gpa = table_gpa + table_index(va, level) * 8;
        let (pte_hva, s2perm) = s2
            .translate(pte_gpa)
            .ok_or(DmaFault::S2NotMapped { gpa: pte_gpa })?;
        check_s2(s2perm, pte_gpa, DmaAccess::READ)?;
        let mut raw = mem
            .read_u64(pte_hva)
            .map_err(|_| DmaFault::HostMemory { hva: pte_hva })?;
        let mut attempts = 0;
        let (pte, r) = loop {
            let pte = FirstStagePte::from_bits(raw);
            if !pte.present() {
                return Err(DmaFault::S1NotPresent { iova, level });
            }
            if raw & pte.reserved_mask(level, cfg.haw, cfg.fs1gp) != 0 {
                return Err(DmaFault::S1Reserved { iova, level });
            }
            let r = rights.through(pte, controls);
            let leaf = pte.is_leaf(level);
            if leaf && r.check(controls, req).is_err() {
                return Err(DmaFault::S1Permission {
                    iova,
                    write: access.write,
                });
            }
            let mut new = raw | ACCESSED;
            if controls.eafe() {
                new |= EXTENDED_ACCESSED;
            }
            if leaf && access.write {
                new |= DIRTY;
            }
            if new == raw {
                break (pte, r);
            }
            check_s2(s2perm, pte_gpa, DmaAccess::WRITE)?;
            match mem.compare_exchange_u64(pte_hva, raw, new) {
                Ok(Ok(_)) => break (FirstStagePte::from_bits(new), r),
                Ok(Err(current)) => {
                    attempts += 1;
                    if attempts >= AD_ATTEMPTS {
                        return Err(DmaFault::Contended { gpa: pte_gpa });
                    }
                    raw = current;
                }
                Err(_) => return Err(DmaFault::HostMemory { hva: pte_hva }),
            }
        };
        if pte.is_leaf(level) {
            let gpa = pte.output_address(level) + (va & (level_size(level) - 1));
            let (hva, p2) = s2.translate(gpa).ok_or(DmaFault::S2NotMapped { gpa })?;
            check_s2(p2, gpa, access)?;
            caches.insert_iotlb(
                va,
                IotlbEntry {
                    hva_page: hva & !0xfff,
                    s1: r,
                    s2: p2,
                    dirty: pte.dirty(),
                },
            );
            return Ok(Translated {
                hva,
                iotlb_hit: false,
            });
        }
        table_gpa = pte.next_table();
        caches.insert_psc(
            level,
            va,
            PscEntry {
                table_gpa,
                rights: r,
            },
        );
        rights = r;
        level -= 1;
    }
    // Level 1 entries are always leaves; the loop returns before getting here.
    Err(DmaFault::S1NotPresent { iova, level: 1 })
}
