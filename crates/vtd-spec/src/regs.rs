//! Remapping-unit registers (§11.4): offsets, and the layout of every register with fields.
//!
//! Registers are little-endian, 32 or 64 bits wide. Offsets of the IOTLB registers and of the
//! fault recording registers are not fixed: they come from ECAP.IRO and CAP.FRO.

use bitfield_struct::bitfield;

/// Register offsets within the 4 KiB register page (§11.4, Table "Register address map").
pub mod offset {
    /// Version register, 32 bits (§11.4.1).
    pub const VER: u64 = 0x000;
    /// Capability register, 64 bits (§11.4.2).
    pub const CAP: u64 = 0x008;
    /// Extended capability register, 64 bits (§11.4.3).
    pub const ECAP: u64 = 0x010;
    /// Global command register, 32 bits (§11.4.4).
    pub const GCMD: u64 = 0x018;
    /// Global status register, 32 bits (§11.4.5).
    pub const GSTS: u64 = 0x01c;
    /// Root table address register, 64 bits (§11.4.6).
    pub const RTADDR: u64 = 0x020;
    /// Context command register, 64 bits (§11.4.7).
    pub const CCMD: u64 = 0x028;
    /// Fault status register, 32 bits (§11.4.9.1).
    pub const FSTS: u64 = 0x034;
    /// Fault event control register, 32 bits (§11.4.9.2).
    pub const FECTL: u64 = 0x038;
    /// Fault event data register, 32 bits (§11.4.9.3).
    pub const FEDATA: u64 = 0x03c;
    /// Fault event address register, 32 bits (§11.4.9.4).
    pub const FEADDR: u64 = 0x040;
    /// Fault event upper address register, 32 bits (§11.4.9.5).
    pub const FEUADDR: u64 = 0x044;
    /// Advanced fault log register, 64 bits (§11.4.9.7).
    pub const AFLOG: u64 = 0x058;
    /// Protected memory enable register, 32 bits (§11.4.10.1).
    pub const PMEN: u64 = 0x064;
    /// Protected low-memory base register, 32 bits (§11.4.10.2).
    pub const PLMBASE: u64 = 0x068;
    /// Protected low-memory limit register, 32 bits (§11.4.10.3).
    pub const PLMLIMIT: u64 = 0x06c;
    /// Protected high-memory base register, 64 bits (§11.4.10.4).
    pub const PHMBASE: u64 = 0x070;
    /// Protected high-memory limit register, 64 bits (§11.4.10.5).
    pub const PHMLIMIT: u64 = 0x078;
    /// Invalidation queue head register, 64 bits (§11.4.11.1).
    pub const IQH: u64 = 0x080;
    /// Invalidation queue tail register, 64 bits (§11.4.11.2).
    pub const IQT: u64 = 0x088;
    /// Invalidation queue address register, 64 bits (§11.4.11.3).
    pub const IQA: u64 = 0x090;
    /// Invalidation completion status register, 32 bits (§11.4.11.4).
    pub const ICS: u64 = 0x09c;
    /// Invalidation event control register, 32 bits (§11.4.11.5).
    pub const IECTL: u64 = 0x0a0;
    /// Invalidation event data register, 32 bits (§11.4.11.6).
    pub const IEDATA: u64 = 0x0a4;
    /// Invalidation event address register, 32 bits (§11.4.11.7).
    pub const IEADDR: u64 = 0x0a8;
    /// Invalidation event upper address register, 32 bits (§11.4.11.8).
    pub const IEUADDR: u64 = 0x0ac;
    /// Invalidation queue error record register, 64 bits (§11.4.11.9).
    pub const IQERCD: u64 = 0x0b0;
    /// Interrupt remapping table address register, 64 bits (§11.4.12.1).
    pub const IRTA: u64 = 0x0b8;
    /// Page request queue head register, 64 bits (§11.4.13.1).
    pub const PQH: u64 = 0x0c0;
    /// Page request queue tail register, 64 bits (§11.4.13.2).
    pub const PQT: u64 = 0x0c8;
    /// Page request queue address register, 64 bits (§11.4.13.3).
    pub const PQA: u64 = 0x0d0;
    /// Page request status register, 32 bits (§11.4.13.4).
    pub const PRS: u64 = 0x0dc;
    /// Page request event control register, 32 bits (§11.4.13.5).
    pub const PECTL: u64 = 0x0e0;
    /// Page request event data register, 32 bits (§11.4.13.6).
    pub const PEDATA: u64 = 0x0e4;
    /// Page request event address register, 32 bits (§11.4.13.7).
    pub const PEADDR: u64 = 0x0e8;
    /// Page request event upper address register, 32 bits (§11.4.13.8).
    pub const PEUADDR: u64 = 0x0ec;
    /// MTRR capability register, 64 bits (§11.4.14.1).
    pub const MTRRCAP: u64 = 0x100;
    /// MTRR default type register, 64 bits (§11.4.14.2).
    pub const MTRRDEF: u64 = 0x108;
    /// Extended capability for enhanced commands, 64 bits each, four of them (§11.4.16).
    pub const ECCAP: u64 = 0x430;
}

/// The register page is 4 KiB (one DRHD `size` of 0 in the DMAR table).
pub const REGISTER_PAGE_SIZE: u64 = 4096;

/// Version register (§11.4.1): architecture version, major in 7:4 and minor in 3:0.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Version {
    /// Minor version.
    #[bits(4)]
    pub min: u8,
    /// Major version.
    #[bits(4)]
    pub max: u8,
    #[bits(24)]
    __: u32,
}

/// Capability register (§11.4.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Cap {
    /// ND: number of domains supported, 2^(4 + 2·ND).
    #[bits(3)]
    pub nd: u8,
    /// AFL: advanced fault logging.
    pub afl: bool,
    /// RWBF: required write-buffer flushing.
    pub rwbf: bool,
    /// PLMR: protected low-memory region.
    pub plmr: bool,
    /// PHMR: protected high-memory region.
    pub phmr: bool,
    /// CM: caching mode — not-present and erroneous entries may be cached.
    pub cm: bool,
    /// SAGAW: supported second-stage adjusted guest address widths (bit 1: 39-bit/3-level,
    /// bit 2: 48-bit/4-level, bit 3: 57-bit/5-level).
    #[bits(5)]
    pub sagaw: u8,
    #[bits(3)]
    __: u8,
    /// MGAW: maximum guest address width minus one.
    #[bits(6)]
    pub mgaw: u8,
    /// ZLR: zero-length read.
    pub zlr: bool,
    /// Bit 23, deprecated (was ISOCH).
    pub deprecated23: bool,
    /// FRO: fault-recording register offset, in 16-byte units from the register base.
    #[bits(10)]
    pub fro: u16,
    /// SLLPS: second-stage large page support (bit 0: 2 MiB, bit 1: 1 GiB).
    #[bits(4)]
    pub sllps: u8,
    __: bool,
    /// PSI: page-selective invalidation (second stage).
    pub psi: bool,
    /// NFR: number of fault-recording registers minus one.
    pub nfr: u8,
    /// MAMV: maximum address mask value for page-selective invalidation.
    #[bits(6)]
    pub mamv: u8,
    /// DWD: write draining.
    pub dwd: bool,
    /// DRD: read draining.
    pub drd: bool,
    /// FS1GP: first-stage 1 GiB pages.
    pub fs1gp: bool,
    #[bits(2)]
    __: u8,
    /// PI: posted interrupts.
    pub pi: bool,
    /// FS5LP: first-stage 5-level paging.
    pub fs5lp: bool,
    /// ECMDS: enhanced command support.
    pub ecmds: bool,
    /// ESIRTPS: enhanced set interrupt root table pointer support.
    pub esirtps: bool,
    /// ESRTPS: enhanced set root table pointer support (SRTP also invalidates caches).
    pub esrtps: bool,
}

impl Cap {
    /// Number of domain identifiers supported (§11.4.2, ND).
    pub fn domains(self) -> u32 {
        1 << (4 + 2 * u32::from(self.nd().min(6)))
    }
    /// Number of fault-recording registers.
    pub fn fault_records(self) -> usize {
        usize::from(self.nfr()) + 1
    }
    /// Byte offset of the first fault-recording register.
    pub fn fault_record_offset(self) -> u64 {
        u64::from(self.fro()) * 16
    }
    /// Maximum guest address width in bits.
    pub fn guest_address_width(self) -> u32 {
        u32::from(self.mgaw()) + 1
    }
}

/// Extended capability register (§11.4.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Ecap {
    /// C: page-walk coherency (legacy mode).
    pub c: bool,
    /// QI: queued invalidation.
    pub qi: bool,
    /// DT: device-TLB (ATS).
    pub dt: bool,
    /// IR: interrupt remapping.
    pub ir: bool,
    /// EIM: extended interrupt mode (x2APIC).
    pub eim: bool,
    __: bool,
    /// PT: pass-through.
    pub pt: bool,
    /// SC: snoop control.
    pub sc: bool,
    /// IRO: IOTLB register offset, in 16-byte units.
    #[bits(10)]
    pub iro: u16,
    #[bits(2)]
    __: u8,
    /// MHMV: maximum handle mask value (interrupt remapping).
    #[bits(4)]
    pub mhmv: u8,
    __: bool,
    /// MTS: memory type support.
    pub mts: bool,
    /// NEST: nested translation.
    pub nest: bool,
    __: bool,
    __: bool,
    /// PRS: page requests.
    pub prs: bool,
    /// ERS: execute requests.
    pub ers: bool,
    /// SRS: supervisor requests.
    pub srs: bool,
    __: bool,
    /// NWFS: no write flag.
    pub nwfs: bool,
    /// EAFS: extended accessed flag.
    pub eafs: bool,
    /// PSS: PASID size supported minus one (PASIDs are PSS+1 bits).
    #[bits(5)]
    pub pss: u8,
    /// PASID: process address space identifiers.
    pub pasid: bool,
    /// DIT: device-TLB invalidation throttle.
    pub dit: bool,
    /// PDS: page-request drain.
    pub pds: bool,
    /// SMTS: scalable-mode translation.
    pub smts: bool,
    /// VCS: virtual command.
    pub vcs: bool,
    /// SSADS: second-stage accessed/dirty.
    pub ssads: bool,
    /// SSTS: second-stage translation (in scalable mode).
    pub ssts: bool,
    /// FSTS: first-stage translation.
    pub fsts: bool,
    /// SMPWC: scalable-mode page-walk coherency.
    pub smpwc: bool,
    /// RPS: RID_PASID support.
    pub rps: bool,
    /// ADMS: abort DMA mode.
    pub adms: bool,
    /// PMS: performance monitoring.
    pub pms: bool,
    #[bits(12)]
    __: u16,
}

impl Ecap {
    /// Byte offset of the IVA register; the IOTLB register follows at +8.
    pub fn iotlb_register_offset(self) -> u64 {
        u64::from(self.iro()) * 16
    }
}

/// Global command register (§11.4.4). Bits 22:0 are reserved.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Gcmd {
    #[bits(23)]
    __: u32,
    /// CFI: compatibility format interrupt.
    pub cfi: bool,
    /// SIRTP: set interrupt remap table pointer (one-shot).
    pub sirtp: bool,
    /// IRE: interrupt remapping enable.
    pub ire: bool,
    /// QIE: queued invalidation enable.
    pub qie: bool,
    /// WBF: write buffer flush (one-shot).
    pub wbf: bool,
    /// EAFL: enable advanced fault logging.
    pub eafl: bool,
    /// SFL: set fault log (one-shot).
    pub sfl: bool,
    /// SRTP: set root table pointer (one-shot).
    pub srtp: bool,
    /// TE: translation enable.
    pub te: bool,
}

/// Global status register (§11.4.5), the status bit for each command bit of [`Gcmd`].
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Gsts {
    #[bits(23)]
    __: u32,
    /// CFIS: compatibility format interrupt status.
    pub cfis: bool,
    /// IRTPS: interrupt remapping table pointer status.
    pub irtps: bool,
    /// IRES: interrupt remapping enable status.
    pub ires: bool,
    /// QIES: queued invalidation enable status.
    pub qies: bool,
    /// WBFS: write buffer flush status (1 while a flush is pending).
    pub wbfs: bool,
    /// AFLS: advanced fault logging status.
    pub afls: bool,
    /// FLS: fault log status.
    pub fls: bool,
    /// RTPS: root table pointer status.
    pub rtps: bool,
    /// TES: translation enable status.
    pub tes: bool,
}

/// Translation table mode in RTADDR (§11.4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationTableMode {
    /// 00b: legacy root and context entries.
    Legacy,
    /// 01b: scalable-mode root and context entries.
    Scalable,
    /// 10b: reserved (was extended mode).
    Reserved,
    /// 11b: abort DMA mode (only with ECAP.ADMS).
    AbortDma,
}

impl TranslationTableMode {
    const fn into_bits(self) -> u8 {
        match self {
            Self::Legacy => 0,
            Self::Scalable => 1,
            Self::Reserved => 2,
            Self::AbortDma => 3,
        }
    }
    const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Legacy,
            1 => Self::Scalable,
            2 => Self::Reserved,
            _ => Self::AbortDma,
        }
    }
}

/// Root table address register (§11.4.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RtAddr {
    #[bits(10)]
    __: u16,
    /// TTM: translation table mode.
    #[bits(2)]
    pub ttm: TranslationTableMode,
    /// RTA: root table address, 4 KiB aligned (bits 63:12).
    #[bits(52)]
    pub rta: u64,
}

impl RtAddr {
    /// Root table guest-physical address.
    pub fn root_table(self) -> u64 {
        self.rta() << 12
    }
}

/// Context command register (§11.4.7), register-based context-cache invalidation.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Ccmd {
    /// DID: domain id for domain-selective invalidation.
    pub did: u16,
    /// SID: source id for device-selective invalidation.
    pub sid: u16,
    /// FM: function mask for device-selective invalidation.
    #[bits(2)]
    pub fm: u8,
    #[bits(25)]
    __: u32,
    /// CAIG: actual invalidation granularity (set by hardware).
    #[bits(2)]
    pub caig: u8,
    /// CIRG: requested invalidation granularity (1 global, 2 domain, 3 device).
    #[bits(2)]
    pub cirg: u8,
    /// ICC: invalidate context cache; hardware clears it when done.
    pub icc: bool,
}

/// IOTLB invalidate register (§11.4.8.1), at ECAP.IRO·16 + 8.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IotlbReg {
    #[bits(32)]
    __: u32,
    /// DID: domain id for domain- and page-selective invalidation.
    pub did: u16,
    /// DW: drain writes.
    pub dw: bool,
    /// DR: drain reads.
    pub dr: bool,
    #[bits(7)]
    __: u8,
    /// IAIG: actual invalidation granularity (set by hardware).
    #[bits(2)]
    pub iaig: u8,
    __: bool,
    /// IIRG: requested invalidation granularity (1 global, 2 domain, 3 page).
    #[bits(2)]
    pub iirg: u8,
    __: bool,
    /// IVT: invalidate IOTLB; hardware clears it when done.
    pub ivt: bool,
}

/// Invalidate address register (§11.4.8.2), at ECAP.IRO·16.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IvaReg {
    /// AM: address mask, 2^AM pages.
    #[bits(6)]
    pub am: u8,
    /// IH: invalidation hint (leaf entries only).
    pub ih: bool,
    #[bits(5)]
    __: u8,
    /// ADDR: page number (bits 63:12).
    #[bits(52)]
    pub addr: u64,
}

/// Fault status register (§11.4.9.1).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Fsts {
    /// PFO: primary fault overflow (RW1C).
    pub pfo: bool,
    /// PPF: primary pending fault (RO: set while any FRCD has F).
    pub ppf: bool,
    /// AFO: advanced fault overflow (RW1C).
    pub afo: bool,
    /// APF: advanced pending fault (RW1C).
    pub apf: bool,
    /// IQE: invalidation queue error (RW1C).
    pub iqe: bool,
    /// ICE: invalidation completion error (RW1C).
    pub ice: bool,
    /// ITE: invalidation time-out error (RW1C).
    pub ite: bool,
    /// Bit 7, deprecated (was PRO).
    pub deprecated7: bool,
    /// FRI: fault record index of the first pending record.
    pub fri: u8,
    #[bits(16)]
    __: u16,
}

impl Fsts {
    /// The bits software clears by writing 1 (§11.4.9.1).
    pub const RW1C_MASK: u32 = 0x7d;
}

/// Fault event control register (§11.4.9.2); also the layout of IECTL and PECTL.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct EventControl {
    #[bits(30)]
    __: u32,
    /// IP: interrupt pending (RO).
    pub ip: bool,
    /// IM: interrupt mask (RW), set at reset.
    pub im: bool,
}

/// Invalidation queue address register (§11.4.11.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iqa {
    /// QS: queue size, 2^QS 4 KiB pages.
    #[bits(3)]
    pub qs: u8,
    #[bits(8)]
    __: u8,
    /// DW: descriptor width (0 = 128 bits, 1 = 256 bits; only with ECAP.SMTS).
    pub dw: bool,
    /// IQA: queue base address (bits 63:12).
    #[bits(52)]
    pub iqa: u64,
}

impl Iqa {
    /// Queue base guest-physical address.
    pub fn base(self) -> u64 {
        self.iqa() << 12
    }
    /// Size of one descriptor in bytes.
    pub fn descriptor_size(self) -> u64 {
        if self.dw() { 32 } else { 16 }
    }
    /// Number of descriptor slots in the queue.
    pub fn entries(self) -> u64 {
        (4096u64 << self.qs()) / self.descriptor_size()
    }
}

/// Queue head / tail registers (§11.4.11.1-2): the byte offset of a 128-bit slot in bits 18:4.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct QueuePointer {
    #[bits(4)]
    __: u8,
    /// Index in 16-byte units.
    #[bits(15)]
    pub index16: u16,
    #[bits(45)]
    __: u64,
}

/// Invalidation queue error info (IQERCD.IQEI, §11.4.11.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IqeInfo {
    /// No information available.
    NotAvailable = 0,
    /// The tail pointer was programmed beyond the queue.
    InvalidTail = 1,
    /// A descriptor could not be fetched (queue outside memory).
    FetchFailed = 2,
    /// A descriptor has an invalid or unsupported type.
    InvalidType = 3,
    /// A descriptor has reserved fields set, or an unsupported value in a field.
    ReservedField = 4,
    /// The descriptor width programmed in IQA does not fit (IQA.DW=1 without ECAP.SMTS, or a
    /// scalable-mode-only descriptor type in a 128-bit queue).
    InvalidWidth = 5,
    /// The tail is not 256-bit aligned while 256-bit descriptors are in use.
    TailMisaligned = 6,
    /// The descriptor is not allowed in the current translation table mode (RTADDR.TTM).
    InvalidTtm = 7,
}

impl IqeInfo {
    /// The IQEI encoding.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// Invalidation queue error record register (§11.4.11.9).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iqercd {
    /// IQEI: invalidation queue error info, see [`IqeInfo`].
    #[bits(4)]
    pub iqei: u8,
    #[bits(28)]
    __: u32,
    /// ITESID: source id of a device-TLB invalidation that timed out.
    pub itesid: u16,
    /// ICESID: source id of a device-TLB invalidation completion error.
    pub icesid: u16,
}

/// Invalidation completion status register (§11.4.11.4).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Ics {
    /// IWC: an invalidation wait descriptor with IF=1 completed (RW1C).
    pub iwc: bool,
    #[bits(31)]
    __: u32,
}

/// Low 64 bits of a fault recording register (FRCD_REG, §11.4.9).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FrcdLo {
    #[bits(12)]
    __: u16,
    /// FI: faulting page address (bits 63:12); for an interrupt-remapping fault, the
    /// interrupt index in bits 63:48 with bits 47:12 clear (see [`FrcdLo::interrupt_index`]).
    #[bits(52)]
    pub fi: u64,
}

impl FrcdLo {
    /// The FI field's layout for an interrupt-remapping fault: `index` in bits 63:48.
    pub fn for_interrupt(index: u16) -> Self {
        Self::new().with_fi(u64::from(index) << 36)
    }
    /// The interrupt index of an interrupt-remapping fault record (FI bits 63:48).
    pub fn interrupt_index(self) -> u16 {
        (self.into_bits() >> 48) as u16
    }
}

/// High 64 bits of a fault recording register (FRCD_REG bits 127:64).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FrcdHi {
    /// SID: requester id of the faulting request.
    pub sid: u16,
    #[bits(12)]
    __: u16,
    /// T2: type bit 2 (1 = page request / translation request).
    pub t2: bool,
    /// PRIV: supervisor privilege was requested.
    pub privileged: bool,
    /// EXE: execute permission was requested.
    pub exe: bool,
    /// PP: the request carried a PASID.
    pub pp: bool,
    /// FR: fault reason.
    pub fr: u8,
    /// PV: PASID value when PP is set.
    #[bits(20)]
    pub pv: u32,
    /// AT: address type of the request.
    #[bits(2)]
    pub at: u8,
    /// T1: type bit 1 (1 = read, 0 = write).
    pub t1: bool,
    /// F: fault recorded; software clears it by writing 1 (RW1C).
    pub f: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the reference notes, decoded field by field.
    #[test]
    fn cap_fields_match_the_suggested_phase1_value() {
        let cap = Cap::from_bits(0x0112_0084_222f_0406);
        assert_eq!(cap.nd(), 6);
        assert_eq!(cap.sagaw(), 4);
        assert_eq!(cap.mgaw(), 47);
        assert_eq!(cap.fro(), 0x22);
        assert_eq!(cap.fault_record_offset(), 0x220);
        assert_eq!(cap.sllps(), 1);
        assert!(cap.psi());
        assert_eq!(cap.nfr(), 0);
        assert_eq!(cap.mamv(), 18);
        assert!(cap.fs1gp());
        assert!(!cap.fs5lp());
        assert!(!cap.cm());
    }

    #[test]
    fn ecap_fields_match_qemu_flts_value() {
        // QEMU x-flts with intremap: cap=1d2008c222f0606 ecap=880000f00f5a (as a Linux guest of
        // QEMU 10 reports them in sysfs; docs/benchmarks.md's guest details show the same).
        let ecap = Ecap::from_bits(0x8800_00f0_0f5a);
        assert!(ecap.qi() && ecap.ir() && ecap.eim() && ecap.pt());
        assert_eq!(ecap.iro(), 0xf);
        assert_eq!(ecap.iotlb_register_offset(), 0xf0);
        assert_eq!(ecap.mhmv(), 0xf);
        assert!(ecap.smts() && ecap.fsts());
        assert!(!ecap.ssts() && !ecap.nest() && !ecap.pasid());
        let cap = Cap::from_bits(0x01d2_008c_222f_0606);
        assert!(cap.fs1gp() && cap.drd() && cap.dwd());
        assert_eq!(cap.sagaw(), 6);
    }

    #[test]
    fn frcd_hi_layout_matches_linux_decoding() {
        // Linux reads dword 3 (bits 127:96): FR = 7:0, PV = 27:8, T = bit 30.
        let hi = FrcdHi::new()
            .with_fr(0x71)
            .with_pv(5)
            .with_t1(true)
            .with_f(true)
            .with_pp(true);
        let raw = hi.into_bits();
        let dword3 = (raw >> 32) as u32;
        assert_eq!(dword3 & 0xff, 0x71);
        assert_eq!((dword3 >> 8) & 0xfffff, 5);
        assert_eq!((dword3 >> 30) & 1, 1);
        assert_eq!(dword3 >> 31, 1);
        assert_eq!((raw as u32) >> 31, 1, "PP is bit 31 of dword 2");
    }

    /// IQEI codes of §11.4.11.9 (the same numbering as VirtualBox's `VTDIQEI`).
    #[test]
    fn iqei_codes_follow_the_spec_table() {
        assert_eq!(IqeInfo::InvalidTail.code(), 1);
        assert_eq!(IqeInfo::FetchFailed.code(), 2);
        assert_eq!(IqeInfo::InvalidType.code(), 3);
        assert_eq!(IqeInfo::ReservedField.code(), 4);
        assert_eq!(IqeInfo::InvalidWidth.code(), 5);
        assert_eq!(IqeInfo::TailMisaligned.code(), 6);
        assert_eq!(IqeInfo::InvalidTtm.code(), 7);
        let r = Iqercd::new().with_iqei(IqeInfo::TailMisaligned.code());
        assert_eq!(r.into_bits(), 6);
    }

    #[test]
    fn rtaddr_and_iqa_decode() {
        let rt = RtAddr::from_bits(0x1234_5000 | (1 << 10));
        assert_eq!(rt.ttm(), TranslationTableMode::Scalable);
        assert_eq!(rt.root_table(), 0x1234_5000);
        let iqa = Iqa::from_bits(0x7000 | (1 << 11) | 1);
        assert_eq!(iqa.base(), 0x7000);
        assert_eq!(iqa.descriptor_size(), 32);
        assert_eq!(iqa.entries(), 256);
    }
}
