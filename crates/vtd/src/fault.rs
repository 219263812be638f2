//! Primary fault recording (§7.2.1) and the two event interrupts (§7.3): the fault event
//! (FECTL/FEDATA/FEADDR/FEUADDR) and the invalidation completion event
//! (IECTL/IEDATA/IEADDR/IEUADDR).
//!
//! **Recording.** The unit keeps an internal index of the next fault recording register to fill
//! (it starts at 0 and wraps at NFR+1). If that register still holds a fault (F=1), the new fault
//! is dropped and FSTS.PFO is set. Otherwise the record is written (FI, SID, T1, PRIV, EXE,
//! PP/PV, FR, F), FSTS.PPF is set and, if PPF was clear, FSTS.FRI names the new record.
//!
//! **Collapsing (bounded rule).** A fault identical to one still pending in a recording register
//! (same SID, PASID, page, access type and reason) is not recorded again: a device retrying the
//! same DMA does not fill the ring. The check scans at most NFR+1 registers.
//!
//! **Fault event.** Raised when a status bit (PFO, PPF, IQE, ICE, ITE) becomes set while none
//! was set before, so software sees one interrupt per batch of conditions, never a storm: if
//! FECTL.IM is clear the MSI goes out (address FEUADDR:FEADDR, data FEDATA), otherwise FECTL.IP
//! is set and the message is sent when software clears IM. IP is also cleared when software has
//! serviced every condition (all status bits clear).
//!
//! **Invalidation completion event.** A wait descriptor with IF sets ICS.IWC; if IWC was clear,
//! the same IM/IP protocol runs on IECTL. Clearing IWC clears IECTL.IP.

use crate::regs::{Layout, RegisterFile};
use crate::request::Fault;
use vtd_spec::regs::{EventControl, FrcdHi, FrcdLo, Fsts, offset};

/// Delivers the unit's interrupt messages (fault events, invalidation completion events) to the
/// guest. Called with no unit lock held.
pub trait FaultInterrupt: Send + Sync {
    /// Sends one MSI: `address` is the 64-bit message address, `data` the message data.
    fn deliver(&self, address: u64, data: u32);
}

/// An interrupt message to send once the register lock is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    /// Message address (upper:lower).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Which of the two event register sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Fault event: FECTL, FEDATA, FEADDR, FEUADDR (§11.4.9.2-5).
    Fault,
    /// Invalidation completion event: IECTL, IEDATA, IEADDR, IEUADDR (§11.4.11.5-8).
    InvalidationCompletion,
}

impl EventKind {
    fn control(self) -> u64 {
        match self {
            Self::Fault => offset::FECTL,
            Self::InvalidationCompletion => offset::IECTL,
        }
    }
    fn message(self, regs: &RegisterFile) -> Msi {
        let (data, lo, hi) = match self {
            Self::Fault => (offset::FEDATA, offset::FEADDR, offset::FEUADDR),
            Self::InvalidationCompletion => (offset::IEDATA, offset::IEADDR, offset::IEUADDR),
        };
        Msi {
            address: (u64::from(regs.get32(hi)) << 32) | u64::from(regs.get32(lo)),
            data: regs.get32(data),
        }
    }
}

/// FSTS bits whose setting is a fault-event interrupt condition.
const FAULT_CONDITIONS: u32 = 0x7f;

/// Raises an event: the message if unmasked, otherwise IP.
pub fn raise(regs: &mut RegisterFile, kind: EventKind) -> Option<Msi> {
    let ctl = EventControl::from_bits(regs.get32(kind.control()));
    if ctl.im() {
        regs.set32(kind.control(), ctl.with_ip(true).into_bits());
        None
    } else {
        Some(kind.message(regs))
    }
}

/// After software wrote the control register: if IM went 1→0 with IP set, the pending message
/// is sent and IP clears (§11.4.9.2).
pub fn control_written(regs: &mut RegisterFile, kind: EventKind, was: u32) -> Option<Msi> {
    let before = EventControl::from_bits(was);
    let now = EventControl::from_bits(regs.get32(kind.control()));
    if before.im() && !now.im() && now.ip() {
        regs.set32(kind.control(), now.with_ip(false).into_bits());
        Some(kind.message(regs))
    } else {
        None
    }
}

/// Sets FSTS status `bits` (IQE, ICE, ITE, PFO) and raises the fault event if no condition was
/// pending before.
pub fn set_status(regs: &mut RegisterFile, bits: u32) -> Option<Msi> {
    let before = regs.get32(offset::FSTS);
    regs.set32(offset::FSTS, before | bits);
    if before & FAULT_CONDITIONS == 0 && bits & FAULT_CONDITIONS != 0 {
        raise(regs, EventKind::Fault)
    } else {
        None
    }
}

/// Recomputes FSTS.PPF from the F bits, and clears FECTL.IP once software has serviced every
/// condition. Called after software writes FSTS or a fault recording register.
pub fn status_serviced(regs: &mut RegisterFile) {
    let layout = *regs.layout();
    let pending = (0..layout.frcd_count).any(|i| record_pending(regs, &layout, i));
    let fsts = Fsts::from_bits(regs.get32(offset::FSTS)).with_ppf(pending);
    regs.set32(offset::FSTS, fsts.into_bits());
    if fsts.into_bits() & FAULT_CONDITIONS == 0 {
        let ctl = EventControl::from_bits(regs.get32(offset::FECTL));
        regs.set32(offset::FECTL, ctl.with_ip(false).into_bits());
    }
}

/// After software wrote ICS: clearing IWC clears IECTL.IP (§11.4.11.4).
pub fn completion_serviced(regs: &mut RegisterFile) {
    if regs.get32(offset::ICS) & 1 == 0 {
        let ctl = EventControl::from_bits(regs.get32(offset::IECTL));
        regs.set32(offset::IECTL, ctl.with_ip(false).into_bits());
    }
}

/// An invalidation wait descriptor with IF completed: sets ICS.IWC and raises the completion
/// event unless IWC was already set.
pub fn wait_completed(regs: &mut RegisterFile) -> Option<Msi> {
    if regs.get32(offset::ICS) & 1 != 0 {
        return None;
    }
    regs.set32(offset::ICS, 1);
    raise(regs, EventKind::InvalidationCompletion)
}

fn record_pending(regs: &RegisterFile, layout: &Layout, index: usize) -> bool {
    FrcdHi::from_bits(regs.get64(layout.frcd(index) + 8)).f()
}

/// What became of a fault handed to [`record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Written to this fault recording register.
    At(usize),
    /// The same fault is still pending in this register.
    Collapsed(usize),
    /// The next register was still full: FSTS.PFO set, fault dropped.
    Overflow,
}

fn frcd_hi_for(fault: &Fault) -> FrcdHi {
    FrcdHi::new()
        .with_sid(fault.sid.0)
        .with_privileged(fault.access.privileged)
        .with_exe(fault.access.execute)
        .with_pp(fault.pasid.is_some())
        .with_pv(fault.pasid.unwrap_or(0) & 0xf_ffff)
        .with_fr(fault.reason.code())
        // T1: 1 = read, 0 = write. A request that writes is reported as a write.
        .with_t1(!fault.access.write)
        .with_f(true)
}

/// Records a (qualified) primary fault. `next` is the unit's internal index of the next
/// recording register. Returns what happened and the fault-event message to send, if any.
pub fn record(regs: &mut RegisterFile, next: &mut usize, fault: &Fault) -> (Recorded, Option<Msi>) {
    let layout = *regs.layout();
    let lo = FrcdLo::new().with_fi(fault.iova >> 12);
    let hi = frcd_hi_for(fault);
    for i in 0..layout.frcd_count {
        let at = layout.frcd(i);
        if regs.get64(at) == lo.into_bits() && regs.get64(at + 8) == hi.into_bits() {
            return (Recorded::Collapsed(i), None);
        }
    }
    let index = *next % layout.frcd_count;
    if record_pending(regs, &layout, index) {
        return (
            Recorded::Overflow,
            set_status(regs, Fsts::new().with_pfo(true).into_bits()),
        );
    }
    regs.set64(layout.frcd(index), lo.into_bits());
    regs.set64(layout.frcd(index) + 8, hi.into_bits());
    *next = (index + 1) % layout.frcd_count;
    let fsts = Fsts::from_bits(regs.get32(offset::FSTS));
    if !fsts.ppf() {
        regs.set32(offset::FSTS, fsts.with_fri(index as u8).into_bits());
    }
    (
        Recorded::At(index),
        set_status(regs, Fsts::new().with_ppf(true).into_bits()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::request::Access;
    use vtd_spec::SourceId;
    use vtd_spec::fault::FaultReason;

    fn regs() -> RegisterFile {
        let mut r = RegisterFile::new(&Config::first_stage());
        r.set32(offset::FEDATA, 0x4021);
        r.set32(offset::FEADDR, 0xfee0_1000);
        r.set32(offset::FEUADDR, 0x2);
        r
    }

    fn fault(page: u64) -> Fault {
        Fault {
            reason: FaultReason::SmFirstStageNotPresent,
            sid: SourceId::new(0, 3, 0),
            pasid: None,
            iova: page << 12 | 0x123,
            access: Access::READ,
            fpd: false,
        }
    }

    fn unmask(r: &mut RegisterFile) -> Option<Msi> {
        let was = r.get32(offset::FECTL);
        r.write(offset::FECTL, &0u32.to_le_bytes());
        control_written(r, EventKind::Fault, was)
    }

    #[test]
    fn records_fields_and_defers_the_event_while_masked() {
        let mut r = regs();
        let mut next = 0;
        let f = Fault {
            pasid: Some(5),
            access: Access {
                write: true,
                privileged: true,
                execute: true,
                ..Access::default()
            },
            ..fault(0xfffff)
        };
        assert_eq!(record(&mut r, &mut next, &f), (Recorded::At(0), None));
        let at = r.layout().frcd(0);
        assert_eq!(r.get64(at), 0xfffff << 12);
        let hi = FrcdHi::from_bits(r.get64(at + 8));
        assert_eq!(hi.sid(), SourceId::new(0, 3, 0).0);
        assert!(hi.f() && hi.pp() && hi.privileged() && hi.exe() && !hi.t1());
        assert_eq!((hi.pv(), hi.fr()), (5, 0x71));
        let fsts = Fsts::from_bits(r.get32(offset::FSTS));
        assert!(fsts.ppf() && fsts.fri() == 0);
        assert_eq!(r.get32(offset::FECTL), 0xc000_0000, "IM and IP");
        let msi = unmask(&mut r).expect("pending message sent on unmask");
        assert_eq!(
            msi,
            Msi {
                address: 0x2_fee0_1000,
                data: 0x4021
            }
        );
        assert_eq!(r.get32(offset::FECTL), 0);
        assert_eq!(unmask(&mut r), None, "only once");
    }

    #[test]
    fn unmasked_fault_sends_one_message_per_batch() {
        let mut r = regs();
        let mut next = 0;
        unmask(&mut r);
        let (_, msi) = record(&mut r, &mut next, &fault(1));
        assert!(msi.is_some());
        let (at, msi) = record(&mut r, &mut next, &fault(2));
        assert_eq!(
            (at, msi),
            (Recorded::At(1), None),
            "PPF already set: no new event"
        );
        assert_eq!(Fsts::from_bits(r.get32(offset::FSTS)).fri(), 0);
    }

    #[test]
    fn duplicates_collapse_and_overflow_sets_pfo() {
        let mut r = regs();
        let mut next = 0;
        record(&mut r, &mut next, &fault(1));
        assert_eq!(
            record(&mut r, &mut next, &fault(1)).0,
            Recorded::Collapsed(0)
        );
        for page in 2..=8 {
            assert!(matches!(
                record(&mut r, &mut next, &fault(page)).0,
                Recorded::At(_)
            ));
        }
        assert_eq!(record(&mut r, &mut next, &fault(100)).0, Recorded::Overflow);
        assert!(Fsts::from_bits(r.get32(offset::FSTS)).pfo());
        // Software clears record 0 (dword 3 bit 31) and PFO: the next fault lands in 0 again.
        let at = r.layout().frcd(0);
        r.write(at + 12, &0x8000_0000u32.to_le_bytes());
        r.write(offset::FSTS, &1u32.to_le_bytes());
        status_serviced(&mut r);
        let fsts = Fsts::from_bits(r.get32(offset::FSTS));
        assert!(fsts.ppf() && !fsts.pfo());
        assert_eq!(record(&mut r, &mut next, &fault(101)).0, Recorded::At(0));
    }

    #[test]
    fn ppf_and_ip_clear_when_everything_is_serviced() {
        let mut r = regs();
        let mut next = 0;
        record(&mut r, &mut next, &fault(1));
        let at = r.layout().frcd(0);
        r.write(at + 8, &u64::MAX.to_le_bytes());
        status_serviced(&mut r);
        assert_eq!(r.get32(offset::FSTS), 0);
        assert_eq!(r.get32(offset::FECTL), 0x8000_0000, "IP cleared, IM kept");
        assert_eq!(unmask(&mut r), None);
    }

    #[test]
    fn completion_event_follows_iwc() {
        let mut r = regs();
        r.set32(offset::IEDATA, 0x30);
        r.set32(offset::IEADDR, 0xfee0_0000);
        assert_eq!(wait_completed(&mut r), None);
        assert_eq!(r.get32(offset::IECTL), 0xc000_0000);
        assert_eq!(wait_completed(&mut r), None, "IWC already set");
        r.write(offset::ICS, &1u32.to_le_bytes());
        completion_serviced(&mut r);
        assert_eq!(r.get32(offset::IECTL), 0x8000_0000);
        let was = r.get32(offset::IECTL);
        r.write(offset::IECTL, &0u32.to_le_bytes());
        assert_eq!(
            control_written(&mut r, EventKind::InvalidationCompletion, was),
            None
        );
        assert_eq!(
            wait_completed(&mut r),
            Some(Msi {
                address: 0xfee0_0000,
                data: 0x30
            })
        );
    }
}
