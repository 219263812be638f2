//! Queued invalidation (§6.5.2) and register-based invalidation (§6.5.1): turning what the
//! guest wrote into [`Invalidation`] values, or into the queue error the spec prescribes.
//!
//! The unit fetches descriptors; this module decides, per descriptor, what it means:
//!
//! | type | accepted when | becomes |
//! |---|---|---|
//! | context-cache (1) | G = 1, 2, 3 | `Context{Global,Domain,Device}` |
//! | IOTLB (2) | G = 1, 2, 3 (AM ≤ CAP.MAMV for G=3) | `Iotlb{Global,Domain,Page}` |
//! | device-TLB (3) | ECAP.DT | nothing to do (no device-TLB is modelled), counted |
//! | interrupt entry cache (4) | ECAP.IR; G = 0 global, 1 index-selective (IIDX, IM) | `IecScope` for the interrupt-entry cache |
//! | wait (5) | PD only with ECAP.PRS (never offered) | status write, completion event |
//! | PASID-IOTLB (6) | scalable mode; G = 2, 3 | `PasidIotlb{All,Page}` (AM > 52 is read as 52) |
//! | PASID-cache (7) | scalable mode; G = 0, 1, 3 | `PasidCache{Domain,Pasid,Global}` |
//! | PASID device-TLB (8) | scalable mode and ECAP.DT | nothing to do, counted |
//! | page group response (9) | never: ECAP.PRS is not offered | IQE, invalid type |
//!
//! Errors and their IQERCD.IQEI (§11.4.11.9): an unknown or unsupported type → 3 (invalid
//! type); a reserved bit set, including quadwords 2-3 of a 256-bit descriptor, or a reserved
//! granularity → 4 (reserved field); a scalable-mode-only type (6-9) in a 128-bit queue → 5
//! (invalid descriptor width). Tail checks (1: beyond the queue, 6: not 256-bit aligned) and
//! fetch failures (2) are the unit's, see `unit`.

use crate::config::MAX_ADDRESS_MASK;
use crate::counters::Counters;
use crate::interrupt_remap::IecScope;
use crate::invalidation::Invalidation;
use std::sync::atomic::AtomicU64;
use vtd_spec::SourceId;
use vtd_spec::inv::{Descriptor, InvAddress};
use vtd_spec::regs::{Ccmd, Ecap, IotlbReg, IqeInfo};

/// What one valid descriptor asks the unit to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply an invalidation to the caches and tell the observers.
    Invalidate(Invalidation),
    /// Drop interrupt-entry-cache entries, then tell the observers interrupt entries changed.
    InvalidateInterruptEntries(IecScope),
    /// An invalidation wait: write `status` (address, data) if SW, raise the completion event
    /// if `interrupt`. FN (fence) is trivially met: descriptors complete in order.
    Wait {
        /// Status write, when SW is set.
        status: Option<(u64, u32)>,
        /// IF: raise the invalidation completion event.
        interrupt: bool,
    },
    /// Accepted with nothing to do (device-TLB invalidations: no device-TLB is modelled).
    Nothing,
}

/// What the unit offers, as far as descriptor checking is concerned.
#[derive(Clone, Copy, Debug)]
pub struct QueueFeatures {
    /// ECAP.SMTS: scalable-mode descriptors (types 6-9) exist.
    pub scalable: bool,
    /// ECAP.DT: device-TLB invalidations are accepted.
    pub device_tlb: bool,
    /// ECAP.PRS: page requests (wait PD, page group responses).
    pub page_requests: bool,
    /// ECAP.IR: interrupt entry cache invalidations.
    pub interrupt_remapping: bool,
}

impl QueueFeatures {
    /// The features an ECAP value reports.
    pub fn from_ecap(ecap: Ecap) -> Self {
        Self {
            scalable: ecap.smts(),
            device_tlb: ecap.dt(),
            page_requests: ecap.prs(),
            interrupt_remapping: ecap.ir(),
        }
    }
}

/// The counter a descriptor type bumps.
pub fn counter_for<'c>(counters: &'c Counters, desc: &Descriptor) -> Option<&'c AtomicU64> {
    Some(match desc {
        Descriptor::ContextCache(_) => &counters.qi_context_cache,
        Descriptor::Iotlb(..) => &counters.qi_iotlb,
        Descriptor::DeviceTlb(..) => &counters.qi_device_tlb,
        Descriptor::Iec(_) => &counters.qi_iec,
        Descriptor::Wait(..) => &counters.qi_wait,
        Descriptor::PasidIotlb(..) => &counters.qi_pasid_iotlb,
        Descriptor::PasidCache(_) => &counters.qi_pasid_cache,
        Descriptor::PasidDeviceTlb(..) => &counters.qi_pasid_device_tlb,
        Descriptor::PageGroupResponse(..) => &counters.qi_page_group_response,
        Descriptor::Unknown(_) => return None,
    })
}

/// A short name for traces (Linux's `qi_submit` names).
pub fn name(desc: &Descriptor) -> &'static str {
    match desc {
        Descriptor::ContextCache(_) => "cc_inv",
        Descriptor::Iotlb(..) => "iotlb_inv",
        Descriptor::DeviceTlb(..) => "dev_tlb_inv",
        Descriptor::Iec(_) => "iec_inv",
        Descriptor::Wait(..) => "inv_wait",
        Descriptor::PasidIotlb(..) => "p_iotlb_inv",
        Descriptor::PasidCache(_) => "pc_inv",
        Descriptor::PasidDeviceTlb(..) => "p_dev_tlb_inv",
        Descriptor::PageGroupResponse(..) => "page_grp_resp",
        Descriptor::Unknown(_) => "unknown",
    }
}

fn scalable_only(desc: &Descriptor) -> bool {
    matches!(
        desc,
        Descriptor::PasidIotlb(..)
            | Descriptor::PasidCache(_)
            | Descriptor::PasidDeviceTlb(..)
            | Descriptor::PageGroupResponse(..)
    )
}

/// Checks one fetched descriptor, `desc` as decoded from its words `q` (`q[2..]` are zero for a
/// 128-bit queue), and says what to do.
pub fn interpret_decoded(
    desc: Descriptor,
    q: [u64; 4],
    wide: bool,
    features: QueueFeatures,
) -> Result<Action, IqeInfo> {
    let supported = match desc {
        Descriptor::Unknown(_) => false,
        Descriptor::Iec(_) => features.interrupt_remapping,
        Descriptor::DeviceTlb(..) => features.device_tlb,
        Descriptor::PasidIotlb(..) | Descriptor::PasidCache(_) => features.scalable,
        Descriptor::PasidDeviceTlb(..) => features.scalable && features.device_tlb,
        Descriptor::PageGroupResponse(..) => features.scalable && features.page_requests,
        _ => true,
    };
    if !supported {
        return Err(IqeInfo::InvalidType);
    }
    if !wide && scalable_only(&desc) {
        return Err(IqeInfo::InvalidWidth);
    }
    if desc.reserved_set() || (wide && (q[2] != 0 || q[3] != 0)) {
        return Err(IqeInfo::ReservedField);
    }
    let reserved = Err(IqeInfo::ReservedField);
    let action = match desc {
        Descriptor::ContextCache(d) => Action::Invalidate(match d.g() {
            1 => Invalidation::ContextGlobal,
            2 => Invalidation::ContextDomain { did: d.did() },
            3 => Invalidation::ContextDevice {
                did: d.did(),
                sid: SourceId(d.sid()),
                fm: d.fm(),
            },
            _ => return reserved,
        }),
        Descriptor::Iotlb(d, a) => Action::Invalidate(match d.g() {
            1 => Invalidation::IotlbGlobal,
            2 => Invalidation::IotlbDomain { did: d.did() },
            3 if a.am() <= MAX_ADDRESS_MASK => Invalidation::IotlbPage {
                did: d.did(),
                addr: a.base(),
                am: a.am(),
                ih: a.ih(),
            },
            _ => return reserved,
        }),
        Descriptor::Wait(d, a) => {
            if d.pd() && !features.page_requests {
                return reserved;
            }
            Action::Wait {
                status: d.sw().then(|| (a.address(), d.status_data())),
                interrupt: d.interrupt(),
            }
        }
        Descriptor::PasidIotlb(d, a) => Action::Invalidate(match d.g() {
            2 => Invalidation::PasidIotlbAll {
                did: d.did(),
                pasid: d.pasid(),
            },
            3 => {
                let am = a.am().min(52);
                Invalidation::PasidIotlbPage {
                    did: d.did(),
                    pasid: d.pasid(),
                    addr: a.with_am(am).base(),
                    am,
                    ih: a.ih(),
                }
            }
            _ => return reserved,
        }),
        Descriptor::PasidCache(d) => Action::Invalidate(match d.g() {
            0 => Invalidation::PasidCacheDomain { did: d.did() },
            1 => Invalidation::PasidCachePasid {
                did: d.did(),
                pasid: d.pasid(),
            },
            3 => Invalidation::PasidCacheGlobal,
            _ => return reserved,
        }),
        Descriptor::DeviceTlb(..) | Descriptor::PasidDeviceTlb(..) => Action::Nothing,
        Descriptor::Iec(d) => Action::InvalidateInterruptEntries(if d.g() {
            IecScope::Index {
                index: d.iidx(),
                mask: d.im(),
            }
        } else {
            IecScope::Global
        }),
        // Unreachable while PRS is not offered; accepted as a no-op if it ever is.
        Descriptor::PageGroupResponse(..) => Action::Nothing,
        Descriptor::Unknown(_) => return Err(IqeInfo::InvalidType),
    };
    Ok(action)
}

/// Result of a register-based invalidation: what to apply and the actual granularity
/// (CAIG / IAIG) to report. Granularity 0 means the request was refused and nothing was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterInvalidation {
    /// The invalidation, if one was performed.
    pub invalidation: Option<Invalidation>,
    /// Actual granularity to report.
    pub actual: u8,
}

/// A CCMD write with ICC set (§11.4.7): CIRG 1 global, 2 domain, 3 device; 0 is refused.
pub fn context_command(ccmd: Ccmd) -> RegisterInvalidation {
    let invalidation = match ccmd.cirg() {
        1 => Invalidation::ContextGlobal,
        2 => Invalidation::ContextDomain { did: ccmd.did() },
        3 => Invalidation::ContextDevice {
            did: ccmd.did(),
            sid: SourceId(ccmd.sid()),
            fm: ccmd.fm(),
        },
        _ => {
            return RegisterInvalidation {
                invalidation: None,
                actual: 0,
            };
        }
    };
    RegisterInvalidation {
        invalidation: Some(invalidation),
        actual: ccmd.cirg(),
    }
}

/// An IOTLB register write with IVT set (§11.4.8.1): IIRG 1 global, 2 domain, 3 page (with the
/// IVA register); 0 is refused. A page request with AM above CAP.MAMV is performed
/// domain-selectively and reported as such (IAIG = 2), which the spec allows.
pub fn iotlb_command(reg: IotlbReg, iva: u64) -> RegisterInvalidation {
    let did = reg.did();
    let (invalidation, actual) = match reg.iirg() {
        1 => (Invalidation::IotlbGlobal, 1),
        2 => (Invalidation::IotlbDomain { did }, 2),
        3 => {
            let a = InvAddress::from_bits(iva);
            if a.am() > MAX_ADDRESS_MASK {
                (Invalidation::IotlbDomain { did }, 2)
            } else {
                let inv = Invalidation::IotlbPage {
                    did,
                    addr: a.base(),
                    am: a.am(),
                    ih: a.ih(),
                };
                (inv, 3)
            }
        }
        _ => {
            return RegisterInvalidation {
                invalidation: None,
                actual: 0,
            };
        }
    };
    RegisterInvalidation {
        invalidation: Some(invalidation),
        actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpret(q: [u64; 4], wide: bool, features: QueueFeatures) -> Result<Action, IqeInfo> {
        interpret_decoded(Descriptor::decode(q), q, wide, features)
    }

    const SM: QueueFeatures = QueueFeatures {
        scalable: true,
        device_tlb: false,
        page_requests: false,
        interrupt_remapping: false,
    };

    fn wide(q0: u64, q1: u64) -> Result<Action, IqeInfo> {
        interpret([q0, q1, 0, 0], true, SM)
    }

    #[test]
    fn linux_descriptors_are_understood() {
        assert_eq!(
            wide(
                6 | (3 << 4) | (2 << 16) | (5 << 32),
                0x1234_5000 | (1 << 6) | 2
            ),
            Ok(Action::Invalidate(Invalidation::PasidIotlbPage {
                did: 2,
                pasid: 5,
                addr: 0x1234_4000,
                am: 2,
                ih: true
            }))
        );
        assert_eq!(
            wide(6 | (3 << 4) | (2 << 16), 63),
            Ok(Action::Invalidate(Invalidation::PasidIotlbPage {
                did: 2,
                pasid: 0,
                addr: 0,
                am: 52,
                ih: false
            }))
        );
        assert_eq!(
            wide(7 | (1 << 4) | (2 << 16) | (9 << 32), 0),
            Ok(Action::Invalidate(Invalidation::PasidCachePasid {
                did: 2,
                pasid: 9
            }))
        );
        assert_eq!(
            wide(5 | (1 << 5) | (1 << 4) | (2 << 32), 0x1000),
            Ok(Action::Wait {
                status: Some((0x1000, 2)),
                interrupt: true
            })
        );
        assert_eq!(
            interpret(
                [1 | (3 << 4) | (0x0308 << 32) | (1 << 48), 0, 0, 0],
                false,
                SM
            ),
            Ok(Action::Invalidate(Invalidation::ContextDevice {
                did: 0,
                sid: SourceId(0x0308),
                fm: 1
            }))
        );
    }

    #[test]
    fn errors_carry_the_right_iqei() {
        assert_eq!(wide(0xf, 0), Err(IqeInfo::InvalidType));
        assert_eq!(
            wide(4, 0),
            Err(IqeInfo::InvalidType),
            "no interrupt remapping"
        );
        assert_eq!(wide(3, 0), Err(IqeInfo::InvalidType), "no device TLB");
        assert_eq!(wide(9, 0), Err(IqeInfo::InvalidType), "no page requests");
        assert_eq!(
            interpret([6 | (2 << 4), 0, 0, 0], false, SM),
            Err(IqeInfo::InvalidWidth)
        );
        assert_eq!(
            interpret([5, 0, 1, 0], true, SM),
            Err(IqeInfo::ReservedField)
        );
        assert_eq!(
            interpret([5, 0, 0, 1 << 63], true, SM),
            Err(IqeInfo::ReservedField)
        );
        assert_eq!(
            wide(6 | (1 << 4), 0),
            Err(IqeInfo::ReservedField),
            "PASID-IOTLB G=1"
        );
        assert_eq!(wide(6, 0), Err(IqeInfo::ReservedField), "PASID-IOTLB G=0");
        assert_eq!(
            wide(7 | (2 << 4), 0),
            Err(IqeInfo::ReservedField),
            "PASID-cache G=2"
        );
        assert_eq!(wide(1, 0), Err(IqeInfo::ReservedField), "context G=0");
        assert_eq!(
            wide(2 | (3 << 4), 19),
            Err(IqeInfo::ReservedField),
            "AM > MAMV"
        );
        assert_eq!(
            wide(5 | (1 << 7), 0),
            Err(IqeInfo::ReservedField),
            "PD without PRS"
        );
        assert_eq!(
            wide(5, 2),
            Err(IqeInfo::ReservedField),
            "status address bit 1"
        );
        let legacy = QueueFeatures {
            scalable: false,
            ..SM
        };
        assert_eq!(
            interpret([7 | (3 << 4), 0, 0, 0], false, legacy),
            Err(IqeInfo::InvalidType)
        );
    }

    /// Linux's `qi_global_iec` (G=0) and `modify_irte`'s `qi_flush_iec(index, mask)` (G=1).
    #[test]
    fn interrupt_entry_cache_descriptors_need_ir() {
        let ir = QueueFeatures {
            interrupt_remapping: true,
            ..SM
        };
        assert_eq!(
            interpret([4, 0, 0, 0], false, ir),
            Ok(Action::InvalidateInterruptEntries(IecScope::Global))
        );
        assert_eq!(
            interpret(
                [4 | (1 << 4) | (2 << 27) | (0x1234 << 32), 0, 0, 0],
                true,
                ir
            ),
            Ok(Action::InvalidateInterruptEntries(IecScope::Index {
                index: 0x1234,
                mask: 2
            }))
        );
        assert_eq!(
            interpret([4 | (1 << 5), 0, 0, 0], false, ir),
            Err(IqeInfo::ReservedField)
        );
        assert_eq!(
            interpret([4, 0, 0, 0], false, SM),
            Err(IqeInfo::InvalidType)
        );
    }

    #[test]
    fn device_tlb_is_a_counted_no_op_with_dt() {
        let dt = QueueFeatures {
            device_tlb: true,
            ..SM
        };
        assert_eq!(interpret([3, 0, 0, 0], true, dt), Ok(Action::Nothing));
        assert_eq!(interpret([8, 0, 0, 0], true, dt), Ok(Action::Nothing));
    }

    #[test]
    fn register_commands_report_actual_granularity() {
        let ccmd = Ccmd::new().with_cirg(2).with_did(7).with_icc(true);
        assert_eq!(
            context_command(ccmd),
            RegisterInvalidation {
                invalidation: Some(Invalidation::ContextDomain { did: 7 }),
                actual: 2
            }
        );
        assert_eq!(context_command(Ccmd::new()).actual, 0);
        let page = IotlbReg::new().with_iirg(3).with_did(4);
        let iva = InvAddress::new().with_addr(0x10).with_am(1).into_bits();
        assert_eq!(
            iotlb_command(page, iva).invalidation,
            Some(Invalidation::IotlbPage {
                did: 4,
                addr: 0x10000,
                am: 1,
                ih: false
            })
        );
        let big = InvAddress::new().with_am(40).into_bits();
        assert_eq!(iotlb_command(page, big).actual, 2);
        assert_eq!(iotlb_command(IotlbReg::new(), 0).actual, 0);
        assert_eq!(
            iotlb_command(IotlbReg::new().with_iirg(1), 0).invalidation,
            Some(Invalidation::IotlbGlobal)
        );
    }
}
