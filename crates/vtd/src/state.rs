//! A readable snapshot of the unit: its registers decoded, the root, context and PASID entries
//! of chosen devices with their meaning spelled out, and the occupancy of the translator's
//! caches. Plain structs (no serde): the VMM renders them as JSON and text.
//!
//! ```text
//!  Vtd::snapshot(sids) ─► RegisterSnapshot::read (register lock held only for the copy)
//!                     ├─► per sid: root entry (§9.1/§9.2) ─► context entry (§9.3/§9.4)
//!                     │            ─► scalable: PASID directory (§9.5) ─► RID_PASID entry (§9.6)
//!                     │            read from guest RAM as it is now, no cache used or filled
//!                     └─► Translator: cache sizes, IOTLB entries per domain
//! ```
//!
//! Whatever the guest wrote, a snapshot reads a bounded number of entries (at most four per
//! device) and reports an unreadable entry instead of failing.

use crate::memory::{GuestRam, read_qwords};
use crate::regs::RegisterFile;
use crate::translate::{CacheStats, UnitState};
use vtd_spec::SourceId;
use vtd_spec::context::{LegacyContextEntry, ScalableContextEntry, TranslationType};
use vtd_spec::fault::FaultReason;
use vtd_spec::pasid::{FirstStagePagingMode, PasidDirEntry, PasidEntry, Pgtt};
use vtd_spec::regs::{
    EventControl, FrcdHi, FrcdLo, Fsts, Gsts, Iqa, QueuePointer, RtAddr, TranslationTableMode,
    offset,
};
use vtd_spec::root::RootEntry;

/// The unit's registers as the guest sees them, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterSnapshot {
    /// VER_REG.
    pub version: u32,
    /// CAP_REG.
    pub cap: u64,
    /// ECAP_REG.
    pub ecap: u64,
    /// GSTS_REG raw.
    pub gsts: u32,
    /// The GSTS bits that are set, by their spec names (§11.4.5).
    pub gsts_set: Vec<&'static str>,
    /// RTADDR_REG raw (the register, not the pointer latched by the last SRTP).
    pub rtaddr: u64,
    /// The root table address in RTADDR.
    pub root_table: u64,
    /// RTADDR.TTM by name.
    pub table_mode: &'static str,
    /// IQA_REG raw.
    pub iqa: u64,
    /// The queue's base address.
    pub iq_base: u64,
    /// Descriptor slots in the queue.
    pub iq_entries: u64,
    /// Descriptor width in bits (128 or 256).
    pub iq_descriptor_bits: u32,
    /// IQH as a descriptor index.
    pub iq_head: u64,
    /// IQT as a descriptor index.
    pub iq_tail: u64,
    /// FSTS_REG raw.
    pub fsts: u32,
    /// The FSTS bits that are set, by their spec names (§11.4.9.1).
    pub fsts_set: Vec<&'static str>,
    /// FSTS.FRI.
    pub fault_record_index: u8,
    /// FECTL_REG raw.
    pub fectl: u32,
    /// FECTL.IM.
    pub fault_interrupt_masked: bool,
    /// FECTL.IP.
    pub fault_interrupt_pending: bool,
    /// The fault recording registers holding a fault (F set).
    pub fault_records: Vec<FaultRecord>,
}

/// One recorded fault (FRCD_REG, §11.4.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Index of the recording register.
    pub index: usize,
    /// Requester.
    pub sid: SourceId,
    /// PASID, when the request had one.
    pub pasid: Option<u32>,
    /// FR.
    pub reason: u8,
    /// The spec's description of FR, when it is one this model raises.
    pub reason_text: Option<&'static str>,
    /// The faulting page address.
    pub page: u64,
    /// A write (T1 = 0) rather than a read.
    pub write: bool,
}

impl RegisterSnapshot {
    /// Decodes the register page.
    pub(crate) fn read(regs: &RegisterFile) -> Self {
        let gsts = Gsts::from_bits(regs.get32(offset::GSTS));
        let rtaddr = RtAddr::from_bits(regs.get64(offset::RTADDR));
        let iqa = Iqa::from_bits(regs.get64(offset::IQA));
        let slot16 = iqa.descriptor_size() / 16;
        let index = |at| u64::from(QueuePointer::from_bits(regs.get64(at)).index16()) / slot16;
        let fsts = Fsts::from_bits(regs.get32(offset::FSTS));
        let fectl = EventControl::from_bits(regs.get32(offset::FECTL));
        let layout = regs.layout();
        let fault_records = (0..layout.frcd_count)
            .filter_map(|index| {
                let lo = FrcdLo::from_bits(regs.get64(layout.frcd(index)));
                let hi = FrcdHi::from_bits(regs.get64(layout.frcd(index) + 8));
                hi.f().then(|| FaultRecord {
                    index,
                    sid: SourceId(hi.sid()),
                    pasid: hi.pp().then(|| hi.pv()),
                    reason: hi.fr(),
                    reason_text: FaultReason::from_code(hi.fr()).map(FaultReason::description),
                    page: lo.fi() << 12,
                    write: !hi.t1(),
                })
            })
            .collect();
        let named = |bits: &[(bool, &'static str)]| -> Vec<&'static str> {
            bits.iter()
                .filter(|(set, _)| *set)
                .map(|&(_, n)| n)
                .collect()
        };
        RegisterSnapshot {
            version: regs.get32(offset::VER),
            cap: regs.get64(offset::CAP),
            ecap: regs.get64(offset::ECAP),
            gsts: gsts.into_bits(),
            gsts_set: named(&[
                (gsts.tes(), "TES"),
                (gsts.rtps(), "RTPS"),
                (gsts.fls(), "FLS"),
                (gsts.afls(), "AFLS"),
                (gsts.wbfs(), "WBFS"),
                (gsts.qies(), "QIES"),
                (gsts.ires(), "IRES"),
                (gsts.irtps(), "IRTPS"),
                (gsts.cfis(), "CFIS"),
            ]),
            rtaddr: rtaddr.into_bits(),
            root_table: rtaddr.root_table(),
            table_mode: table_mode(rtaddr.ttm()),
            iqa: iqa.into_bits(),
            iq_base: iqa.base(),
            iq_entries: iqa.entries(),
            iq_descriptor_bits: if iqa.dw() { 256 } else { 128 },
            iq_head: index(offset::IQH),
            iq_tail: index(offset::IQT),
            fsts: fsts.into_bits(),
            fsts_set: named(&[
                (fsts.pfo(), "PFO"),
                (fsts.ppf(), "PPF"),
                (fsts.afo(), "AFO"),
                (fsts.apf(), "APF"),
                (fsts.iqe(), "IQE"),
                (fsts.ice(), "ICE"),
                (fsts.ite(), "ITE"),
            ]),
            fault_record_index: fsts.fri(),
            fectl: fectl.into_bits(),
            fault_interrupt_masked: fectl.im(),
            fault_interrupt_pending: fectl.ip(),
            fault_records,
        }
    }
}

fn table_mode(ttm: TranslationTableMode) -> &'static str {
    match ttm {
        TranslationTableMode::Legacy => "legacy",
        TranslationTableMode::Scalable => "scalable",
        TranslationTableMode::Reserved => "reserved",
        TranslationTableMode::AbortDma => "abort-dma",
    }
}

/// A table entry on the way to a device's translation, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<T> {
    /// Read; its fields decoded.
    Read(T),
    /// Outside guest RAM.
    Unreadable(u64),
    /// Not reached: an entry before it is not present or not readable.
    NotReached,
}

/// A root entry half, the one for the device (§9.1, §9.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootView {
    /// Where the entry is.
    pub address: u64,
    /// P.
    pub present: bool,
    /// The context table it points at.
    pub context_table: u64,
}

/// A context entry, legacy or scalable, with its meaning (§9.3, §9.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextView {
    /// Legacy mode.
    Legacy {
        /// Where the entry is.
        address: u64,
        /// P.
        present: bool,
        /// FPD: faults of this device are not reported.
        fault_processing_disabled: bool,
        /// TT by meaning.
        translation_type: &'static str,
        /// DID.
        domain_id: u16,
        /// AW as an address width in bits (None: reserved encoding).
        address_width: Option<u32>,
        /// SSPTPTR.
        second_stage_table: u64,
    },
    /// Scalable mode.
    Scalable {
        /// Where the entry is.
        address: u64,
        /// P.
        present: bool,
        /// FPD.
        fault_processing_disabled: bool,
        /// PASIDE: requests with PASID allowed.
        pasid_enabled: bool,
        /// DTE: device-TLB (ATS) enabled.
        device_tlb_enabled: bool,
        /// The PASID directory.
        pasid_directory: u64,
        /// Its entries (2^(PDTS+7)).
        pasid_directory_entries: u32,
        /// RID_PASID: the PASID of requests without one.
        rid_pasid: u32,
        /// Reserved bits set (the unit faults on this entry).
        reserved_set: bool,
    },
}

/// A scalable-mode PASID table entry with its meaning (§9.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasidView {
    /// The PASID.
    pub pasid: u32,
    /// Where the entry is.
    pub address: u64,
    /// P.
    pub present: bool,
    /// FPD.
    pub fault_processing_disabled: bool,
    /// PGTT by meaning.
    pub translation_type: &'static str,
    /// DID.
    pub domain_id: u16,
    /// FSPTPTR (first stage, nested).
    pub first_stage_table: u64,
    /// FSPM as levels (None: reserved).
    pub first_stage_levels: Option<u32>,
    /// SSPTPTR (second stage, nested).
    pub second_stage_table: u64,
    /// AW as an address width in bits (second stage; None: reserved).
    pub second_stage_address_width: Option<u32>,
    /// SRE: supervisor requests allowed.
    pub supervisor_requests: bool,
    /// WPE: write protect enforced for supervisor requests.
    pub write_protect: bool,
    /// Reserved bits set (the unit faults on this entry).
    pub reserved_set: bool,
}

/// One device's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// The requester.
    pub sid: SourceId,
    /// Its root entry.
    pub root: Entry<RootView>,
    /// Its context entry.
    pub context: Entry<ContextView>,
    /// Scalable mode: the PASID entry of requests without PASID (RID_PASID).
    pub rid_pasid_entry: Entry<PasidView>,
}

/// Entries the translator caches now, against their capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSnapshot {
    /// The caches' fill levels.
    pub stats: CacheStats,
    /// Live IOTLB entries per domain id, by domain id.
    pub iotlb_per_domain: Vec<(u16, usize)>,
}

/// Interrupt remapping as the unit applies it (chapter 5): the table latched by the last SIRTP,
/// the enables and the interrupt-entry cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterruptRemappingSnapshot {
    /// GSTS.IRES: interrupt requests go through the table.
    pub enabled: bool,
    /// GSTS.CFIS: compatibility-format interrupts pass (unless EIME).
    pub compatibility_format_allowed: bool,
    /// The latched table's address.
    pub table: u64,
    /// Its size in entries (2^(S+1)).
    pub table_entries: u32,
    /// IRTA.EIME: 32-bit x2APIC destinations.
    pub extended_interrupt_mode: bool,
    /// Entries in the interrupt-entry cache (at most `table_entries`).
    pub cached_entries: usize,
}

/// The whole snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSnapshot {
    /// The registers.
    pub registers: RegisterSnapshot,
    /// The root pointer latched by the last SRTP and translation enable: what translation uses.
    pub translation_enabled: bool,
    /// The latched root table and its mode.
    pub latched_root_table: u64,
    /// Its mode by name.
    pub latched_table_mode: &'static str,
    /// The devices asked for.
    pub devices: Vec<DeviceSnapshot>,
    /// The caches.
    pub caches: CacheSnapshot,
    /// Interrupt remapping.
    pub interrupt_remapping: InterruptRemappingSnapshot,
}

fn aw_bits(aw: u8) -> Option<u32> {
    match aw {
        1 => Some(39),
        2 => Some(48),
        3 => Some(57),
        _ => None,
    }
}

fn translation_type(tt: TranslationType) -> &'static str {
    match tt {
        TranslationType::Untranslated => "second-stage (untranslated requests only)",
        TranslationType::DeviceTlb => "second-stage with device-TLB",
        TranslationType::PassThrough => "pass-through",
        TranslationType::Reserved => "reserved",
    }
}

fn pgtt(pgtt: Pgtt) -> &'static str {
    match pgtt {
        Pgtt::FirstStage => "first-stage",
        Pgtt::SecondStage => "second-stage",
        Pgtt::Nested => "nested",
        Pgtt::PassThrough => "pass-through",
        Pgtt::Reserved(_) => "reserved",
    }
}

fn fs_levels(mode: FirstStagePagingMode) -> Option<u32> {
    mode.levels()
}

/// Reads one device's entries under the latched root (`state`), as the walker would find them.
pub(crate) fn device(ram: &dyn GuestRam, state: &UnitState, sid: SourceId) -> DeviceSnapshot {
    let mut snap = DeviceSnapshot {
        sid,
        root: Entry::NotReached,
        context: Entry::NotReached,
        rid_pasid_entry: Entry::NotReached,
    };
    let scalable = match state.root.ttm() {
        TranslationTableMode::Legacy => false,
        TranslationTableMode::Scalable => true,
        _ => return snap,
    };
    let root_address = state.root.root_table() + u64::from(sid.bus()) * 16;
    let Ok([lo, hi]) = read_qwords::<2>(ram, root_address) else {
        snap.root = Entry::Unreadable(root_address);
        return snap;
    };
    let root = RootEntry::from_qwords(lo, hi);
    let half = if scalable {
        root.scalable_half(sid.devfn())
    } else {
        root.lo
    };
    snap.root = Entry::Read(RootView {
        address: root_address,
        present: half.present(),
        context_table: half.context_table(),
    });
    if !half.present() {
        return snap;
    }
    if !scalable {
        let address = half.context_table() + u64::from(sid.devfn()) * 16;
        snap.context = match read_qwords::<2>(ram, address) {
            Err(_) => Entry::Unreadable(address),
            Ok([lo, hi]) => {
                let ce = LegacyContextEntry::from_qwords(lo, hi);
                Entry::Read(ContextView::Legacy {
                    address,
                    present: ce.lo.present(),
                    fault_processing_disabled: ce.lo.fpd(),
                    translation_type: translation_type(ce.lo.tt()),
                    domain_id: ce.hi.did(),
                    address_width: aw_bits(ce.hi.aw()),
                    second_stage_table: ce.second_stage_table(),
                })
            }
        };
        return snap;
    }
    let address = half.context_table() + u64::from(sid.devfn() & 0x7f) * 32;
    let ce = match read_qwords::<4>(ram, address) {
        Err(_) => {
            snap.context = Entry::Unreadable(address);
            return snap;
        }
        Ok(q) => ScalableContextEntry::from_qwords(q),
    };
    snap.context = Entry::Read(ContextView::Scalable {
        address,
        present: ce.lo.present(),
        fault_processing_disabled: ce.lo.fpd(),
        pasid_enabled: ce.lo.paside(),
        device_tlb_enabled: ce.lo.dte(),
        pasid_directory: ce.pasid_dir(),
        pasid_directory_entries: ce.pasid_dir_entries(),
        rid_pasid: ce.hi.rid_pasid(),
        reserved_set: ce.reserved_set(),
    });
    if !ce.lo.present() {
        return snap;
    }
    let pasid = ce.hi.rid_pasid();
    let dir_address = ce.pasid_dir() + u64::from(pasid >> 6) * 8;
    let dir = match read_qwords::<1>(ram, dir_address) {
        Err(_) => {
            snap.rid_pasid_entry = Entry::Unreadable(dir_address);
            return snap;
        }
        Ok([q]) => PasidDirEntry::from_bits(q),
    };
    if !dir.present() {
        return snap;
    }
    let address = dir.table() + u64::from(pasid & 0x3f) * 64;
    snap.rid_pasid_entry = match read_qwords::<8>(ram, address) {
        Err(_) => Entry::Unreadable(address),
        Ok(q) => {
            let pe = PasidEntry::from_qwords(q);
            Entry::Read(PasidView {
                pasid,
                address,
                present: pe.qw0.present(),
                fault_processing_disabled: pe.qw0.fpd() || dir.fpd(),
                translation_type: pgtt(pe.qw0.pgtt()),
                domain_id: pe.qw1.did(),
                first_stage_table: pe.first_stage_table(),
                first_stage_levels: fs_levels(pe.qw2.fspm()),
                second_stage_table: pe.second_stage_table(),
                second_stage_address_width: aw_bits(pe.qw0.aw()),
                supervisor_requests: pe.qw2.sre(),
                write_protect: pe.qw2.wpe(),
                reserved_set: pe.reserved_set(),
            })
        }
    };
    snap
}

/// The latched root's mode by name.
pub(crate) fn latched_mode(state: &UnitState) -> &'static str {
    table_mode(state.root.ttm())
}
