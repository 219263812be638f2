//! Readers for the structures between RTADDR and a page table: root entries, legacy and
//! scalable-mode context entries, PASID-directory entries and PASID-table entries.
//!
//! Each reader decodes with the typed formats of `vtd-spec` and returns either a validated entry
//! or the fault reason the spec prescribes for the first check that fails (§7.1.3, Table
//! "Non-recoverable fault conditions"). Fault *qualification* (FPD) is decided here too: faults
//! detected on a root or context entry are not qualified; faults on a PASID-directory entry are
//! qualified by the context entry's FPD, faults on a PASID entry also by the directory entry's
//! FPD (an entry's own FPD cannot be trusted while the entry itself is being rejected) — except
//! that an entry whose P field is clear is judged by its own FPD as well ([`not_present`]).

use crate::memory::{GuestRam, read_qwords};
use vtd_spec::context::{LegacyContextEntry, ScalableContextEntry, TranslationType};
use vtd_spec::fault::FaultReason;
use vtd_spec::pasid::{
    FirstStagePagingMode, PASID_DIR_ENTRY_SIZE, PASID_ENTRY_SIZE, PASIDS_PER_TABLE, PasidDirEntry,
    PasidEntry, Pgtt,
};
use vtd_spec::pte::second_stage_levels;
use vtd_spec::regs::{Cap, Ecap, RtAddr, TranslationTableMode};
use vtd_spec::root::{ROOT_ENTRY_SIZE, RootEntry};
use vtd_spec::{PASID_LIMIT, SourceId, beyond_haw};

/// A context entry that passed its checks, in the format of the root table's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    /// 128-bit legacy entry (RTADDR.TTM = 00b).
    Legacy(LegacyContextEntry),
    /// 256-bit scalable-mode entry (RTADDR.TTM = 01b).
    Scalable(ScalableContextEntry),
}

/// A fault found while reading tables, with its qualification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableFault {
    /// Fault reason.
    pub(crate) reason: FaultReason,
    /// Fault processing is disabled for it.
    pub(crate) fpd: bool,
}

impl TableFault {
    pub(crate) fn new(reason: FaultReason, fpd: bool) -> Self {
        Self { reason, fpd }
    }
}

/// The fault for a context, PASID-directory or PASID entry whose P field is clear: qualified by
/// the FPD of the entries above it (`inherited`) and by its own FPD, which hardware evaluates
/// irrespective of P (§9.3, §9.4, §9.5, §9.6 FPD). So software can turn a source's faults off
/// by clearing an entry to just FPD (Linux's `pasid_clear_entry_with_fpd()`).
fn not_present(reason: FaultReason, inherited: bool, own_fpd: bool) -> TableFault {
    TableFault::new(reason, inherited || own_fpd)
}

/// A root- or context-entry fault other than a clear P: never qualified.
fn unqualified(reason: FaultReason) -> TableFault {
    TableFault::new(reason, false)
}

/// The host address width: CAP.MGAW + 1 (the model's guest-physical address width).
pub(crate) fn host_address_width(cap: Cap) -> u32 {
    cap.guest_address_width()
}

/// Second-stage levels for an AW encoding if CAP.SAGAW offers that width (§9.3 AW, §11.4.2).
pub(crate) fn supported_ss_levels(cap: Cap, aw: u8) -> Option<u32> {
    let levels = second_stage_levels(aw)?;
    (cap.sagaw() & (1 << aw) != 0).then_some(levels)
}

/// Reads and checks the context entry for `sid` under the latched root table (§3.4.2, §3.4.3).
pub(crate) fn read_context(
    ram: &dyn GuestRam,
    root: RtAddr,
    cap: Cap,
    ecap: Ecap,
    sid: SourceId,
) -> Result<Context, TableFault> {
    match root.ttm() {
        TranslationTableMode::Legacy => read_legacy_context(ram, root, cap, ecap, sid),
        TranslationTableMode::Scalable => read_scalable_context(ram, root, cap, ecap, sid),
        // 10b is reserved and abort-DMA mode blocks everything: no root table to use.
        TranslationTableMode::Reserved | TranslationTableMode::AbortDma => {
            Err(unqualified(FaultReason::SmInvalidRootTableAddress))
        }
    }
}

fn read_root(
    ram: &dyn GuestRam,
    root: RtAddr,
    sid: SourceId,
    access: FaultReason,
) -> Result<RootEntry, FaultReason> {
    let addr = root.root_table() + u64::from(sid.bus()) * ROOT_ENTRY_SIZE;
    let [lo, hi] = read_qwords::<2>(ram, addr).map_err(|_| access)?;
    Ok(RootEntry::from_qwords(lo, hi))
}

fn read_legacy_context(
    ram: &dyn GuestRam,
    root: RtAddr,
    cap: Cap,
    ecap: Ecap,
    sid: SourceId,
) -> Result<Context, TableFault> {
    let haw = host_address_width(cap);
    if beyond_haw(root.root_table(), haw) {
        return Err(unqualified(FaultReason::RootEntryAccess));
    }
    let re = read_root(ram, root, sid, FaultReason::RootEntryAccess).map_err(unqualified)?;
    if !re.lo.present() {
        return Err(unqualified(FaultReason::RootNotPresent));
    }
    if re.legacy_reserved_set() || beyond_haw(re.lo.context_table(), haw) {
        return Err(unqualified(FaultReason::RootReserved));
    }
    let addr = re.lo.context_table()
        + u64::from(sid.devfn()) * vtd_spec::context::LEGACY_CONTEXT_ENTRY_SIZE;
    let [lo, hi] =
        read_qwords::<2>(ram, addr).map_err(|_| unqualified(FaultReason::ContextEntryAccess))?;
    let ce = LegacyContextEntry::from_qwords(lo, hi);
    if !ce.lo.present() {
        return Err(not_present(
            FaultReason::ContextNotPresent,
            false,
            ce.lo.fpd(),
        ));
    }
    if ce.reserved_set() {
        return Err(unqualified(FaultReason::ContextReserved));
    }
    match ce.lo.tt() {
        TranslationType::Reserved => return Err(unqualified(FaultReason::ContextInvalid)),
        // TT=01b needs device-TLB support, TT=10b pass-through support (§9.3 TT).
        TranslationType::DeviceTlb if !ecap.dt() => {
            return Err(unqualified(FaultReason::ContextInvalid));
        }
        TranslationType::PassThrough if !ecap.pt() => {
            return Err(unqualified(FaultReason::ContextInvalid));
        }
        TranslationType::PassThrough => return Ok(Context::Legacy(ce)),
        TranslationType::Untranslated | TranslationType::DeviceTlb => {}
    }
    if supported_ss_levels(cap, ce.hi.aw()).is_none() {
        return Err(unqualified(FaultReason::ContextInvalid));
    }
    if beyond_haw(ce.second_stage_table(), haw) {
        return Err(unqualified(FaultReason::ContextReserved));
    }
    Ok(Context::Legacy(ce))
}

fn read_scalable_context(
    ram: &dyn GuestRam,
    root: RtAddr,
    cap: Cap,
    ecap: Ecap,
    sid: SourceId,
) -> Result<Context, TableFault> {
    let haw = host_address_width(cap);
    if beyond_haw(root.root_table(), haw) {
        return Err(unqualified(FaultReason::SmInvalidRootTableAddress));
    }
    let re = read_root(ram, root, sid, FaultReason::SmRootEntryAccess).map_err(unqualified)?;
    let half = re.scalable_half(sid.devfn());
    if !half.present() {
        return Err(unqualified(FaultReason::SmRootNotPresent));
    }
    if half.reserved_set() || beyond_haw(half.context_table(), haw) {
        return Err(unqualified(FaultReason::SmRootReserved));
    }
    let addr = half.context_table()
        + u64::from(sid.devfn() & 0x7f) * vtd_spec::context::SCALABLE_CONTEXT_ENTRY_SIZE;
    let q =
        read_qwords::<4>(ram, addr).map_err(|_| unqualified(FaultReason::SmContextEntryAccess))?;
    let ce = ScalableContextEntry::from_qwords(q);
    if !ce.lo.present() {
        return Err(not_present(
            FaultReason::SmContextNotPresent,
            false,
            ce.lo.fpd(),
        ));
    }
    // Fields of features the unit does not report are treated as reserved (§9.4: DTE needs
    // ECAP.DT, PASIDE needs ECAP.PASID, PRE needs ECAP.PRS, RID_PRIV needs ECAP.SRS).
    let unsupported = (ce.lo.dte() && !ecap.dt())
        || (ce.lo.paside() && !ecap.pasid())
        || (ce.lo.pre() && !ecap.prs())
        || (ce.hi.rid_priv() && !ecap.srs());
    if ce.reserved_set() || unsupported || beyond_haw(ce.pasid_dir(), haw) {
        return Err(unqualified(FaultReason::SmContextReserved));
    }
    // RID_PASID must be 0 unless ECAP.RPS, and must fit the PASID directory.
    let rid_pasid = ce.hi.rid_pasid();
    if (rid_pasid != 0 && !ecap.rps()) || rid_pasid / PASIDS_PER_TABLE >= ce.pasid_dir_entries() {
        return Err(unqualified(FaultReason::SmRidPasidError));
    }
    Ok(Context::Scalable(ce))
}

/// Reads the PASID-directory entry and the raw PASID-table entry for `pasid` (§3.4.3), without
/// checking the PASID entry itself. Returns the entry and the directory entry's FPD.
pub(crate) fn read_pasid_entry_raw(
    ram: &dyn GuestRam,
    haw: u32,
    ce: &ScalableContextEntry,
    pasid: u32,
) -> Result<(PasidEntry, bool), TableFault> {
    let ctx_fpd = ce.lo.fpd();
    let dir_index = pasid / PASIDS_PER_TABLE;
    if pasid >= PASID_LIMIT || dir_index >= ce.pasid_dir_entries() {
        return Err(TableFault::new(FaultReason::SmPasidTooLarge, false));
    }
    let dir_addr = ce.pasid_dir() + u64::from(dir_index) * PASID_DIR_ENTRY_SIZE;
    let dir = ram
        .read_u64(dir_addr)
        .map(PasidDirEntry::from_bits)
        .map_err(|_| TableFault::new(FaultReason::SmPasidDirAccess, ctx_fpd))?;
    if !dir.present() {
        return Err(not_present(
            FaultReason::SmPasidDirNotPresent,
            ctx_fpd,
            dir.fpd(),
        ));
    }
    if dir.reserved_set() || beyond_haw(dir.table(), haw) {
        return Err(TableFault::new(FaultReason::SmPasidDirReserved, ctx_fpd));
    }
    let fpd = ctx_fpd || dir.fpd();
    let addr = dir.table() + u64::from(pasid % PASIDS_PER_TABLE) * PASID_ENTRY_SIZE;
    let q = read_qwords::<8>(ram, addr)
        .map_err(|_| TableFault::new(FaultReason::SmPasidEntryAccess, fpd))?;
    Ok((PasidEntry::from_qwords(q), dir.fpd()))
}

/// Checks a PASID-table entry (§9.6): present, reserved fields (including fields of features
/// the unit does not report), and a PGTT the unit offers. `inherited` is the FPD of the context
/// and PASID-directory entries above it.
pub(crate) fn check_pasid_entry(
    pe: &PasidEntry,
    cap: Cap,
    ecap: Ecap,
    inherited: bool,
) -> Result<(), TableFault> {
    if !pe.qw0.present() {
        return Err(not_present(
            FaultReason::SmPasidEntryNotPresent,
            inherited,
            pe.qw0.fpd(),
        ));
    }
    let fault = |reason| TableFault::new(reason, inherited);
    let unsupported = (pe.qw0.ssade() && !ecap.ssads())
        || (pe.qw2.sre() && !ecap.srs())
        || (pe.qw2.ere() && !ecap.ers())
        || (pe.qw2.eafe() && !ecap.eafs())
        || (pe.qw1.pgsnp() && !ecap.sc())
        || matches!(pe.qw2.fspm(), FirstStagePagingMode::Reserved(_));
    if pe.reserved_set() || unsupported {
        return Err(fault(FaultReason::SmPasidEntryReserved));
    }
    let offered = match pe.qw0.pgtt() {
        Pgtt::FirstStage => {
            ecap.fsts()
                && match pe.qw2.fspm() {
                    FirstStagePagingMode::Level4 => true,
                    FirstStagePagingMode::Level5 => cap.fs5lp(),
                    FirstStagePagingMode::Reserved(_) => false,
                }
        }
        Pgtt::SecondStage => ecap.ssts() && supported_ss_levels(cap, pe.qw0.aw()).is_some(),
        Pgtt::PassThrough => ecap.pt(),
        // Nested translation is not offered to the guest (ECAP.NEST is never reported).
        Pgtt::Nested | Pgtt::Reserved(_) => false,
    };
    if !offered {
        return Err(fault(FaultReason::SmPasidEntryInvalid));
    }
    Ok(())
}
