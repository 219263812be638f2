//! Root, context and PASID tables and page tables, written into [`Mem`] the way a guest
//! driver writes them, from `vtd-spec`'s entry types.
//!
//! ```text
//!  Tables::scalable(mem) ─► root ─► context_addr(sid) ─► sm_device(sid) ─► PASID dir
//!                                                       └► pasid_entry(sid, pasid, fs_entry(pt))
//!  PageTable::new(mem, levels, stage) ─► map(iova, gpa, level, flags) / map4k / map_like_linux
//! ```

use vtd_spec::SourceId;
use vtd_spec::context::{
    LegacyContextEntry, LegacyContextHi, LegacyContextLo, ScalableContextEntry, ScalableContextHi,
    ScalableContextLo, TranslationType,
};
use vtd_spec::pasid::{
    FirstStagePagingMode, PasidDirEntry, PasidEntry, PasidEntryQw0, PasidEntryQw1, PasidEntryQw2,
    Pgtt,
};
use vtd_spec::pte::table_index;
use vtd_spec::regs::{RtAddr, TranslationTableMode};
use vtd_spec::root::RootHalf;

use crate::Mem;

/// First-stage entry bits (§9.7): present.
pub const FS_P: u64 = 1;
/// Read/write.
pub const FS_RW: u64 = 1 << 1;
/// User/supervisor.
pub const FS_US: u64 = 1 << 2;
/// Accessed.
pub const FS_A: u64 = 1 << 5;
/// Dirty.
pub const FS_D: u64 = 1 << 6;
/// Page size (a superpage leaf).
pub const FS_PS: u64 = 1 << 7;
/// Extended accessed.
pub const FS_EA: u64 = 1 << 10;
/// Execute disable.
pub const FS_XD: u64 = 1 << 63;

/// Second-stage entry bits (§9.8): read.
pub const SS_R: u64 = 1;
/// Write.
pub const SS_W: u64 = 1 << 1;
/// Page size (a superpage leaf).
pub const SS_PS: u64 = 1 << 7;
/// Accessed.
pub const SS_A: u64 = 1 << 8;
/// Dirty.
pub const SS_D: u64 = 1 << 9;

/// Bits of an output address in a table entry.
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The leaf/table flags of a stage, to build page tables generically.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    /// First-stage (IA-32e-like) tables.
    First,
    /// Second-stage (EPT-like) tables.
    Second,
}

impl Stage {
    /// The flags of a non-leaf entry: present (or readable) and writable, user for first stage.
    pub fn table_flags(self) -> u64 {
        match self {
            Stage::First => FS_P | FS_RW | FS_US,
            Stage::Second => SS_R | SS_W,
        }
    }
    /// The flags of a read/write leaf.
    pub fn leaf_rw(self) -> u64 {
        self.table_flags()
    }
    /// The page-size bit of a superpage leaf.
    pub fn ps(self) -> u64 {
        match self {
            Stage::First => FS_PS,
            Stage::Second => SS_PS,
        }
    }
}

/// A page table rooted at `root` with `levels` levels.
#[derive(Clone, Copy, Debug)]
pub struct PageTable {
    /// The top-level table.
    pub root: u64,
    /// 3, 4 or 5.
    pub levels: u32,
    /// Which entry format.
    pub stage: Stage,
}

impl PageTable {
    /// An empty table of `levels` levels.
    pub fn new(mem: &Mem, levels: u32, stage: Stage) -> Self {
        Self {
            root: mem.page(),
            levels,
            stage,
        }
    }

    /// Address of the entry for `iova` at `level`, creating intermediate tables.
    pub fn entry_addr(&self, mem: &Mem, iova: u64, level: u32) -> u64 {
        self.entry_addr_with(mem, iova, level, self.stage.table_flags())
    }

    /// [`Self::entry_addr`], new intermediate entries written with `table_flags`.
    fn entry_addr_with(&self, mem: &Mem, iova: u64, level: u32, table_flags: u64) -> u64 {
        let mut table = self.root;
        for l in (level + 1..=self.levels).rev() {
            let addr = table + table_index(iova, l) * 8;
            let e = mem.r64(addr);
            let next = e & ADDRESS_MASK;
            if e & self.stage.table_flags() == 0 || next == 0 {
                let t = mem.page();
                mem.w64(addr, t | table_flags);
                table = t;
            } else {
                table = next;
            }
        }
        table + table_index(iova, level) * 8
    }

    /// Maps `iova` to `gpa` with a leaf at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) and `flags`
    /// (PS is added for superpages). Returns the leaf's address.
    pub fn map(&self, mem: &Mem, iova: u64, gpa: u64, level: u32, flags: u64) -> u64 {
        let addr = self.entry_addr(mem, iova, level);
        let ps = if level > 1 { self.stage.ps() } else { 0 };
        mem.w64(addr, gpa | flags | ps);
        addr
    }

    /// Maps a 4 KiB page read/write (user).
    pub fn map4k(&self, mem: &Mem, iova: u64, gpa: u64) -> u64 {
        self.map(mem, iova, gpa, 1, self.stage.leaf_rw())
    }

    /// Maps a 4 KiB first-stage page as Linux's `dma-iommu` does: tables P, R/W, U/S, A; the
    /// leaf P, U/S, A, D, and R/W only if `writable`. Returns the leaf's address.
    pub fn map_like_linux(&self, mem: &Mem, iova: u64, gpa: u64, writable: bool) -> u64 {
        let addr = self.entry_addr_with(mem, iova, 1, FS_P | FS_RW | FS_US | FS_A);
        let rw = if writable { FS_RW } else { 0 };
        mem.w64(addr, (gpa & ADDRESS_MASK) | FS_P | FS_US | FS_A | FS_D | rw);
        addr
    }
}

/// Root/context/PASID tables of one unit.
pub struct Tables<'a> {
    /// Where they live.
    pub mem: &'a Mem,
    /// The root table.
    pub root: u64,
    /// Scalable-mode (or legacy) formats.
    pub scalable: bool,
}

impl<'a> Tables<'a> {
    /// An empty legacy-mode root table.
    pub fn legacy(mem: &'a Mem) -> Self {
        Self {
            mem,
            root: mem.page(),
            scalable: false,
        }
    }

    /// An empty scalable-mode root table.
    pub fn scalable(mem: &'a Mem) -> Self {
        Self {
            mem,
            root: mem.page(),
            scalable: true,
        }
    }

    /// The RTADDR value that points at the root table.
    pub fn rtaddr(&self) -> RtAddr {
        RtAddr::new()
            .with_rta(self.root >> 12)
            .with_ttm(if self.scalable {
                TranslationTableMode::Scalable
            } else {
                TranslationTableMode::Legacy
            })
    }

    /// Address of the root entry half for `sid`.
    pub fn root_half_addr(&self, sid: SourceId) -> u64 {
        let hi = self.scalable && sid.devfn() >= 0x80;
        self.root + u64::from(sid.bus()) * 16 + if hi { 8 } else { 0 }
    }

    /// Address of the context entry for `sid`, creating the context table.
    pub fn context_addr(&self, sid: SourceId) -> u64 {
        let half_addr = self.root_half_addr(sid);
        let half = RootHalf::from_bits(self.mem.r64(half_addr));
        let table = if half.present() {
            half.context_table()
        } else {
            let t = self.mem.page();
            self.mem.w64(
                half_addr,
                RootHalf::new()
                    .with_present(true)
                    .with_ctp(t >> 12)
                    .into_bits(),
            );
            t
        };
        if self.scalable {
            table + u64::from(sid.devfn() & 0x7f) * 32
        } else {
            table + u64::from(sid.devfn()) * 16
        }
    }

    /// Writes a legacy context entry.
    pub fn legacy_context(&self, sid: SourceId, ce: LegacyContextEntry) -> u64 {
        let a = self.context_addr(sid);
        self.mem.w64(a, ce.lo.into_bits());
        self.mem.w64(a + 8, ce.hi.into_bits());
        a
    }

    /// A legacy context entry translating through `pt` (4 levels: AW=2) in domain `did`.
    pub fn legacy_translated(&self, sid: SourceId, pt: &PageTable, did: u16) -> u64 {
        self.legacy_context(
            sid,
            LegacyContextEntry {
                lo: LegacyContextLo::new()
                    .with_present(true)
                    .with_tt(TranslationType::Untranslated)
                    .with_ssptptr(pt.root >> 12),
                hi: LegacyContextHi::new()
                    .with_aw(second_stage_aw(pt))
                    .with_did(did),
            },
        )
    }

    /// A legacy pass-through context entry.
    pub fn legacy_pt(&self, sid: SourceId, did: u16) -> u64 {
        self.legacy_context(
            sid,
            LegacyContextEntry {
                lo: LegacyContextLo::new()
                    .with_present(true)
                    .with_tt(TranslationType::PassThrough),
                hi: LegacyContextHi::new().with_aw(2).with_did(did),
            },
        )
    }

    /// Writes a scalable-mode context entry.
    pub fn sm_context(&self, sid: SourceId, ce: ScalableContextEntry) -> u64 {
        let a = self.context_addr(sid);
        self.mem.w64(a, ce.lo.into_bits());
        self.mem.w64(a + 8, ce.hi.into_bits());
        self.mem.w64(a + 16, ce.upper[0]);
        self.mem.w64(a + 24, ce.upper[1]);
        a
    }

    /// A scalable-mode context entry as Linux writes it (PDTS=2, RID_PASID=0), with `paside`;
    /// returns the PASID directory.
    pub fn sm_device(&self, sid: SourceId, paside: bool) -> u64 {
        let dir = self.mem.page();
        self.sm_context(
            sid,
            ScalableContextEntry {
                lo: ScalableContextLo::new()
                    .with_present(true)
                    .with_paside(paside)
                    .with_pdts(2)
                    .with_pasid_dir_ptr(dir >> 12),
                hi: ScalableContextHi::new(),
                upper: [0, 0],
            },
        );
        dir
    }

    /// The PASID directory of `sid`'s scalable context entry.
    pub fn pasid_dir(&self, sid: SourceId) -> u64 {
        let ce = self.mem.r64(self.context_addr(sid));
        ScalableContextLo::from_bits(ce).pasid_dir_ptr() << 12
    }

    /// Address of the PASID entry for (sid, pasid), creating the PASID table.
    pub fn pasid_entry_addr(&self, sid: SourceId, pasid: u32) -> u64 {
        let dir = self.pasid_dir(sid);
        let de_addr = dir + u64::from(pasid >> 6) * 8;
        let de = PasidDirEntry::from_bits(self.mem.r64(de_addr));
        let table = if de.present() {
            de.table()
        } else {
            let t = self.mem.page();
            self.mem.w64(
                de_addr,
                PasidDirEntry::new()
                    .with_present(true)
                    .with_table_ptr(t >> 12)
                    .into_bits(),
            );
            t
        };
        table + u64::from(pasid & 63) * 64
    }

    /// Writes a PASID entry.
    pub fn pasid_entry(&self, sid: SourceId, pasid: u32, pe: PasidEntry) -> u64 {
        self.write_pasid_entry(self.pasid_entry_addr(sid, pasid), pe)
    }

    fn write_pasid_entry(&self, a: u64, pe: PasidEntry) -> u64 {
        for (i, q) in pe.to_qwords().iter().enumerate() {
            self.mem.w64(a + 8 * i as u64, *q);
        }
        a
    }

    /// [`Self::pasid_entry_addr`], first giving `sid` a scalable context entry as Linux does
    /// ([`Self::sm_device`] without PASIDE) if it has none.
    pub fn device_pasid_entry_addr(&self, sid: SourceId, pasid: u32) -> u64 {
        let ce = ScalableContextLo::from_bits(self.mem.r64(self.context_addr(sid)));
        if !ce.present() {
            self.sm_device(sid, false);
        }
        self.pasid_entry_addr(sid, pasid)
    }

    /// [`Self::pasid_entry`] at [`Self::device_pasid_entry_addr`].
    pub fn device_pasid_entry(&self, sid: SourceId, pasid: u32, pe: PasidEntry) -> u64 {
        self.write_pasid_entry(self.device_pasid_entry_addr(sid, pasid), pe)
    }
}

/// A PASID entry with `pgtt`, `did`, and zeroed everything else.
pub fn pasid_entry(pgtt: Pgtt, did: u16) -> PasidEntry {
    PasidEntry {
        qw0: PasidEntryQw0::new().with_present(true).with_pgtt(pgtt),
        qw1: PasidEntryQw1::new().with_did(did),
        qw2: PasidEntryQw2::new(),
        upper: [0; 5],
    }
}

/// The first-stage PASID entry Linux 6.12 writes (AW=2 written even for first stage), without
/// page-walk snooping.
pub fn fs_entry(pt: &PageTable, did: u16) -> PasidEntry {
    let mut pe = pasid_entry(Pgtt::FirstStage, did);
    pe.qw0 = pe.qw0.with_aw(2);
    pe.qw2 = pe
        .qw2
        .with_fspm(if pt.levels == 5 {
            FirstStagePagingMode::Level5
        } else {
            FirstStagePagingMode::Level4
        })
        .with_fsptptr(pt.root >> 12);
    pe
}

/// A second-stage PASID entry.
pub fn ss_entry(pt: &PageTable, did: u16) -> PasidEntry {
    let mut pe = pasid_entry(Pgtt::SecondStage, did);
    pe.qw0 = pe
        .qw0
        .with_aw(second_stage_aw(pt))
        .with_ssptptr(pt.root >> 12);
    pe
}

/// The pass-through PASID entry Linux writes (AW=2).
pub fn pt_entry(did: u16) -> PasidEntry {
    let mut pe = pasid_entry(Pgtt::PassThrough, did);
    pe.qw0 = pe.qw0.with_aw(2);
    pe
}

/// The AW field for a second-stage table of `pt.levels` levels (3: 39 bits, 4: 48, 5: 57).
fn second_stage_aw(pt: &PageTable) -> u8 {
    match pt.levels {
        3 => 1,
        4 => 2,
        _ => 3,
    }
}
