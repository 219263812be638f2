//! Interrupt remapping (chapter 5): the latched interrupt remapping table, the IRE / CFI
//! enables, the interrupt-entry cache and the decision for one interrupt request.
//!
//! ```text
//!  GCMD.SIRTP ─► latch IRTA (table, 2^(S+1) entries, EIME), empty the cache ─► GSTS.IRTPS
//!  GCMD.IRE / CFI ─► GSTS.IRES / CFIS
//!  QI IEC descriptor ─► drop cached entries (all, or 2^IM indices from IIDX aligned down)
//!
//!  request (sid, address, data)
//!    IRE clear ─────────────────────────────────────────────► unchanged
//!    address not FEEx_xxxx ─────────────────────────────────► fault 0x20
//!    compatibility format: EIME set or CFIS clear ──────────► fault 0x25, else unchanged
//!    remappable: data 31:16 set ────────────────────────────► fault 0x20
//!      index = handle (+ subhandle) ≥ table size ───────────► fault 0x21
//!      cached IRTE, else read table + 16·index from RAM
//!        beyond the address width ──────────────────────────► fault 0x21
//!        outside guest RAM ─────────────────────────────────► fault 0x23
//!        P clear ───────────────────────────────────────────► fault 0x22
//!        reserved bits or encodings (EIME, IM, SVT, DLM) ───► fault 0x24 (FPD honoured)
//!        (a present, valid entry is cached)
//!      source validation (SVT/SQ/SID) fails ────────────────► fault 0x26 (FPD honoured)
//!      ─► compatibility-format message (vector, DLM, TM, DM, RH, destination)
//! ```
//!
//! **The cache and invalidation.** A valid present IRTE is remembered by index until the
//! guest invalidates it (an IEC descriptor), latches a table (SIRTP) or resets the unit, so an
//! interrupt keeps following a cached entry the guest rewrote without invalidating, as on
//! hardware. The cache, the latched table and the enables sit under one mutex, which the
//! lookup holds while it reads the entry from guest RAM: an invalidation is either entirely
//! before a lookup (which then reads the new entry) or entirely after it. The unit applies a
//! queued IEC invalidation before the next wait descriptor completes, so a request made after
//! the guest saw the wait complete never uses the old entry. The mutex is never held while the
//! unit's register mutex is taken (faults are recorded after it is released). The cache holds
//! at most one entry per index of a table of at most 2^16 entries.
//!
//! **Not modelled:** posted interrupts (CAP.PI is clear, so IM=1 is a reserved field and fault
//! 0x27, a posted-descriptor access error, cannot happen), and ESIRTPS (SIRTP empties the
//! cache anyway, which the spec allows).

use crate::memory::GuestRam;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use vtd_spec::SourceId;
use vtd_spec::fault::FaultReason;
use vtd_spec::interrupt::{
    CompatibilityMessage, INTERRUPT_ADDRESS_BASE, IRTE_SIZE, InterruptAddress, Irta, Irte,
    REMAPPABLE_DATA_RESERVED,
};

/// What becomes of an interrupt request ([`crate::Vtd::remap_interrupt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptOutcome {
    /// Deliver this compatibility-format message: `address` = FEE0_0000h | destination 7:0 in
    /// bits 19:12 | RH in 3 | DM in 2, with destination bits 31:8 in bits 63:40 (KVM's
    /// address_hi 31:8 under `KVM_CAP_X2APIC_API`); `data` = vector | DLM in 10:8 | TM in 15
    /// (and level-assert in 14 for level). With remapping disabled, the request as it came.
    Deliver {
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
    },
    /// The request was blocked; its fault has been recorded unless the IRTE had FPD set.
    Blocked,
}

/// The scope of one interrupt-entry-cache invalidation (§6.5.2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IecScope {
    /// G = 0: every entry.
    Global,
    /// G = 1: 2^`mask` entries from `index` aligned down to that size.
    Index {
        /// IIDX.
        index: u16,
        /// IM.
        mask: u8,
    },
}

impl IecScope {
    /// Whether the scope covers entry `index`.
    fn covers(self, entry: u16) -> bool {
        match self {
            Self::Global => true,
            Self::Index { index, mask } => {
                let low = u32::MAX.checked_shl(u32::from(mask)).unwrap_or(0);
                u32::from(entry) & low == u32::from(index) & low
            }
        }
    }
}

/// A blocked request, before it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptFault {
    /// Why (0x20-0x26).
    pub reason: FaultReason,
    /// The interrupt index (0 when the request had none), for FRCD.FI bits 63:48.
    pub index: u16,
    /// The IRTE had FPD set: not recorded.
    pub fpd: bool,
}

/// A request that passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passed {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Whether an IRTE produced it (`false`: passed through unchanged).
    pub remapped: bool,
}

#[derive(Default)]
struct State {
    /// The IRTA value latched by the last SIRTP (the reset value before any).
    table: Irta,
    /// GSTS.IRES.
    enabled: bool,
    /// GSTS.CFIS.
    compatibility: bool,
    /// Valid present entries by index.
    cache: HashMap<u16, Irte>,
}

/// The unit's interrupt remapping state (see the module docs).
pub struct InterruptRemapping {
    state: Mutex<State>,
    /// Host address width: table entries at or above it are beyond the table (fault 0x21).
    haw: u32,
}

impl InterruptRemapping {
    /// Nothing latched, remapping disabled, for a unit of address width `haw` bits.
    pub fn new(haw: u32) -> Self {
        Self {
            state: Mutex::new(State::default()),
            haw,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIRTP: latches `irta` and empties the cache.
    pub fn latch_table(&self, irta: Irta) {
        let mut s = self.lock();
        s.table = irta;
        s.cache.clear();
    }

    /// IRE / CFI as GSTS now reports them.
    pub fn set_enables(&self, enabled: bool, compatibility: bool) {
        let mut s = self.lock();
        s.enabled = enabled;
        s.compatibility = compatibility;
    }

    /// Back to the reset state.
    pub fn reset(&self) {
        *self.lock() = State::default();
    }

    /// What the guest latched and enabled, and the cache's fill, for a readable state.
    pub fn snapshot(&self) -> crate::state::InterruptRemappingSnapshot {
        let s = self.lock();
        crate::state::InterruptRemappingSnapshot {
            enabled: s.enabled,
            compatibility_format_allowed: s.compatibility,
            table: s.table.table(),
            table_entries: s.table.entries(),
            extended_interrupt_mode: s.table.eime(),
            cached_entries: s.cache.len(),
        }
    }

    /// Drops the cached entries `scope` covers.
    pub fn invalidate(&self, scope: IecScope) {
        let mut s = self.lock();
        match scope {
            IecScope::Global => s.cache.clear(),
            _ => s.cache.retain(|&i, _| !scope.covers(i)),
        }
    }

    /// Number of cached entries.
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().cache.len()
    }

    /// Decides what becomes of the request `(sid, address, data)`; see the module docs.
    pub fn remap(
        &self,
        ram: &dyn GuestRam,
        sid: SourceId,
        address: u64,
        data: u32,
    ) -> Result<Passed, InterruptFault> {
        let unchanged = Passed {
            address,
            data,
            remapped: false,
        };
        let mut s = self.lock();
        if !s.enabled {
            return Ok(unchanged);
        }
        let fault = |reason, index, fpd| InterruptFault { reason, index, fpd };
        let low = u32::try_from(address)
            .ok()
            .map(InterruptAddress::from_bits)
            .filter(|a| u32::from(a.base()) == INTERRUPT_ADDRESS_BASE);
        let Some(low) = low else {
            return Err(fault(FaultReason::IrRequestReserved, 0, false));
        };
        let eime = s.table.eime();
        if !low.remappable() {
            return if eime || !s.compatibility {
                Err(fault(FaultReason::IrCompatibilityBlocked, 0, false))
            } else {
                Ok(unchanged)
            };
        }
        let wide_index = low.interrupt_index(data);
        let index = wide_index as u16;
        if data & REMAPPABLE_DATA_RESERVED != 0 {
            return Err(fault(FaultReason::IrRequestReserved, index, false));
        }
        if wide_index >= s.table.entries() {
            return Err(fault(FaultReason::IrIndexBeyondTable, index, false));
        }
        let irte = match s.cache.get(&index) {
            Some(&irte) => irte,
            None => {
                let at = s.table.table() + IRTE_SIZE * u64::from(index);
                if vtd_spec::beyond_haw(at, self.haw) {
                    return Err(fault(FaultReason::IrIndexBeyondTable, index, false));
                }
                let mut words = [0u64; 2];
                if ram.read_u64s(at, &mut words).is_err() {
                    return Err(fault(FaultReason::IrTableAccess, index, false));
                }
                let irte = Irte::from_words(words);
                if !irte.lo.present() {
                    return Err(fault(FaultReason::IrEntryNotPresent, index, false));
                }
                if irte.reserved_set(eime) {
                    return Err(fault(FaultReason::IrEntryReserved, index, irte.lo.fpd()));
                }
                s.cache.insert(index, irte);
                irte
            }
        };
        drop(s);
        if !irte.source_validation().allows(sid) {
            return Err(fault(FaultReason::IrSourceBlocked, index, irte.lo.fpd()));
        }
        let message = CompatibilityMessage::of(irte, eime);
        Ok(Passed {
            address: message.address(),
            data: message.data(),
            remapped: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    type Ram = GuestMemoryMmap<()>;

    /// 64 KiB of RAM at 0 holding IRTEs.
    fn ram() -> Ram {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(ram: &Ram, index: u64, vector: u8) {
        let lo = vtd_spec::interrupt::IrteLo::new()
            .with_present(true)
            .with_vector(vector)
            .with_dst(0x100);
        ram.write_obj(lo.into_bits(), GuestAddress(index * 16))
            .unwrap();
    }

    fn vector(ir: &InterruptRemapping, ram: &Ram, index: u16) -> Result<u32, FaultReason> {
        let address = InterruptAddress::remappable_for(index, false).into_bits();
        ir.remap(ram, SourceId(0), address.into(), 0)
            .map(|p| p.data & 0xff)
            .map_err(|f| f.reason)
    }

    #[test]
    fn scopes_cover_aligned_blocks() {
        let sel = |index, mask| IecScope::Index { index, mask };
        assert!(sel(5, 0).covers(5) && !sel(5, 0).covers(4));
        assert!(sel(5, 2).covers(4) && sel(5, 2).covers(7) && !sel(5, 2).covers(8));
        assert!(sel(0xffff, 31).covers(0) && IecScope::Global.covers(9));
    }

    #[test]
    fn entries_are_cached_until_invalidated() {
        let (ram, ir) = (ram(), InterruptRemapping::new(48));
        ir.latch_table(Irta::new().with_s(3));
        ir.set_enables(true, false);
        for i in 0..8 {
            put(&ram, i, 0x20 + i as u8);
            assert_eq!(vector(&ir, &ram, i as u16), Ok(0x20 + i as u32));
        }
        assert_eq!(ir.cached(), 8);
        for i in 0..8 {
            put(&ram, i, 0x40 + i as u8);
        }
        assert_eq!(vector(&ir, &ram, 3), Ok(0x23), "still cached");
        ir.invalidate(IecScope::Index { index: 5, mask: 1 });
        assert_eq!(ir.cached(), 6);
        assert_eq!(vector(&ir, &ram, 4), Ok(0x44));
        assert_eq!(vector(&ir, &ram, 5), Ok(0x45));
        assert_eq!(vector(&ir, &ram, 6), Ok(0x26));
        ir.invalidate(IecScope::Global);
        assert_eq!(vector(&ir, &ram, 6), Ok(0x46));
        assert_eq!(vector(&ir, &ram, 16), Err(FaultReason::IrIndexBeyondTable));
        ir.latch_table(Irta::new().with_s(3).with_irta(0x10));
        assert_eq!(ir.cached(), 0, "SIRTP empties the cache");
        assert_eq!(vector(&ir, &ram, 0), Err(FaultReason::IrTableAccess));
        ir.reset();
        assert_eq!(vector(&ir, &ram, 0), Ok(0), "disabled: unchanged");
    }
}
