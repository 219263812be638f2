//! First-stage access rights (§3.6.2): the PASID-entry controls that shape them (§9.6), the
//! rights a walk accumulates over the entries it uses, and the checks a request passes against
//! both. The vIOMMU's walk and the software host IOMMU's nested walk both decide with these.
//!
//! ```text
//!  PASID entry ─► FsControls::of ─► check_request (SRE: 0x5D, ERE: 0x5C)
//!  walk:  FsRights::ALL ─► through(PML5E?) ─► through(PML4E) ─► ... ─► through(leaf)
//!           (R/W and U/S ANDed, XD ORed under NXE)
//!  leaf:  FsRights::check (U/S: 0x81, execute: 0x82, write: 0x85)
//! ```

use crate::fault::FaultReason;
use crate::pasid::PasidEntry;
use crate::pte::FirstStagePte;
use bitfield_struct::bitfield;

/// The PASID-entry controls that shape first-stage permissions (§9.6), packed as one byte so
/// that caches can tag their entries with them.
#[bitfield(u8, hash = true)]
#[derive(PartialEq, Eq)]
pub struct FsControls {
    /// SRE: supervisor requests allowed.
    pub sre: bool,
    /// ERE: execute requests allowed.
    pub ere: bool,
    /// WPE: supervisor writes honour R/W.
    pub wpe: bool,
    /// NXE: XD is honoured (otherwise it is reserved).
    pub nxe: bool,
    /// SMEP: supervisor execute of user pages is denied.
    pub smep: bool,
    /// EAFE: set the extended-accessed flag along with A.
    pub eafe: bool,
    #[bits(2)]
    __: u8,
}

impl FsControls {
    /// The controls of a PASID entry.
    pub fn of(pe: &PasidEntry) -> Self {
        let q = pe.qw2;
        Self::new()
            .with_sre(q.sre())
            .with_ere(q.ere())
            .with_wpe(q.wpe())
            .with_nxe(q.nxe())
            .with_smep(q.smep())
            .with_eafe(q.eafe())
    }

    /// Checks a request against the PASID entry before any walk: supervisor requests need SRE
    /// (0x5D), execute requests need ERE (0x5C).
    pub fn check_request(self, req: FsRequest) -> Result<(), FaultReason> {
        if req.privileged && !self.sre() {
            return Err(FaultReason::SmSreClear);
        }
        if req.execute && !self.ere() {
            return Err(FaultReason::SmEreClear);
        }
        Ok(())
    }
}

/// What a request asks of a first-stage translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsRequest {
    /// Supervisor privilege (PR=1, or RID_PRIV for requests without PASID).
    pub privileged: bool,
    /// The request writes.
    pub write: bool,
    /// The request asks for execute permission.
    pub execute: bool,
}

/// Rights accumulated over every entry of a walk: R/W and U/S are ANDed, XD is ORed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsRights {
    /// Every entry allows writes.
    pub rw: bool,
    /// Every entry allows user accesses.
    pub us: bool,
    /// Some entry disables execution (only with NXE).
    pub xd: bool,
}

impl FsRights {
    /// The rights before the walk has used any entry.
    pub const ALL: Self = Self {
        rw: true,
        us: true,
        xd: false,
    };

    /// The rights after the walk also used `pte` (any level), under the controls `c`.
    pub fn through(self, pte: FirstStagePte, c: FsControls) -> Self {
        Self {
            rw: self.rw && pte.rw(),
            us: self.us && pte.us(),
            xd: self.xd || (c.nxe() && pte.xd()),
        }
    }

    /// Whether a request of this privilege may write through pages with these rights
    /// (supervisor requests may write read-only pages unless WPE is set).
    pub fn may_write(self, c: FsControls, privileged: bool) -> bool {
        self.rw || (privileged && !c.wpe())
    }

    /// Checks a request against the rights of a translation (§3.6.2): user requests need U/S
    /// (0x81), execute needs no XD and, for supervisor requests under SMEP, no user page
    /// (0x82), writes need [`FsRights::may_write`] (0x85).
    pub fn check(self, c: FsControls, req: FsRequest) -> Result<(), FaultReason> {
        if !req.privileged && !self.us {
            return Err(FaultReason::SmUserDenied);
        }
        if req.execute && (self.xd || (req.privileged && c.smep() && self.us)) {
            return Err(FaultReason::SmExecuteDenied);
        }
        if req.write && !self.may_write(c, req.privileged) {
            return Err(FaultReason::SmWriteDenied);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER_WRITE: FsRequest = FsRequest {
        privileged: false,
        write: true,
        execute: false,
    };
    const SUPERVISOR_WRITE: FsRequest = FsRequest {
        privileged: true,
        write: true,
        execute: false,
    };

    #[test]
    fn rights_accumulate_over_the_entries() {
        let nxe = FsControls::new().with_nxe(true);
        let rw_us = FirstStagePte::new().with_rw(true).with_us(true);
        let ro_xd = FirstStagePte::new().with_us(true).with_xd(true);
        let r = FsRights::ALL.through(rw_us, nxe);
        assert_eq!(r, FsRights::ALL);
        let r = r.through(ro_xd, nxe);
        assert_eq!((r.rw, r.us, r.xd), (false, true, true));
        assert!(
            !FsRights::ALL.through(ro_xd, FsControls::new()).xd,
            "XD needs NXE"
        );
    }

    #[test]
    fn writes_and_privilege() {
        let ro = FsRights {
            rw: false,
            us: true,
            xd: false,
        };
        let none = FsControls::new();
        let wpe = none.with_wpe(true);
        assert_eq!(ro.check(none, USER_WRITE), Err(FaultReason::SmWriteDenied));
        assert_eq!(ro.check(none, SUPERVISOR_WRITE), Ok(()));
        assert_eq!(
            ro.check(wpe, SUPERVISOR_WRITE),
            Err(FaultReason::SmWriteDenied)
        );
        let supervisor_only = FsRights { us: false, ..ro };
        let user_read = FsRequest::default();
        assert_eq!(
            supervisor_only.check(none, user_read),
            Err(FaultReason::SmUserDenied)
        );
    }

    #[test]
    fn execute_and_smep() {
        let exec = FsRequest {
            privileged: true,
            write: false,
            execute: true,
        };
        let c = FsControls::new().with_sre(true).with_ere(true);
        assert_eq!(
            FsControls::new().check_request(exec),
            Err(FaultReason::SmSreClear)
        );
        assert_eq!(
            FsControls::new().with_sre(true).check_request(exec),
            Err(FaultReason::SmEreClear)
        );
        assert_eq!(c.check_request(exec), Ok(()));
        assert_eq!(FsRights::ALL.check(c, exec), Ok(()));
        assert_eq!(
            FsRights::ALL.check(c.with_smep(true), exec),
            Err(FaultReason::SmExecuteDenied)
        );
        let xd = FsRights {
            xd: true,
            ..FsRights::ALL
        };
        assert_eq!(xd.check(c, exec), Err(FaultReason::SmExecuteDenied));
    }

    #[test]
    fn controls_come_from_the_pasid_entry() {
        let mut pe = PasidEntry::from_qwords([0; 8]);
        pe.qw2 = pe.qw2.with_sre(true).with_nxe(true).with_eafe(true);
        let c = FsControls::of(&pe);
        assert!(c.sre() && c.nxe() && c.eafe());
        assert!(!c.ere() && !c.wpe() && !c.smep());
        assert_eq!(c.into_bits(), 0b10_1001);
    }
}
