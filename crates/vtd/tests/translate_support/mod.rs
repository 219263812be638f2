//! Test helpers: fake guest memory, builders that write root/context/PASID tables and page
//! tables the way a guest driver would, and a minimal `Remapper` around a `Translator`.

#![allow(dead_code)]

use std::cell::Cell;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd::Counters;
use vtd::GuestRam;
use vtd::invalidation::Invalidation;
use vtd::request::{Access, DmaRequest, Fault, Remapper, Translation};
use vtd::{Translator, UnitState};
use vtd_spec::SourceId;
use vtd_spec::context::{
    LegacyContextEntry, LegacyContextHi, LegacyContextLo, ScalableContextEntry, ScalableContextHi,
    ScalableContextLo, TranslationType,
};
use vtd_spec::pasid::{
    FirstStagePagingMode, PasidDirEntry, PasidEntry, PasidEntryQw0, PasidEntryQw1, PasidEntryQw2,
    Pgtt,
};
use vtd_spec::regs::{Cap, Ecap, RtAddr, TranslationTableMode};
use vtd_spec::root::RootHalf;

/// Guest RAM size: 64 MiB at GPA 0.
pub const RAM_SIZE: u64 = 64 << 20;
/// Table pages are allocated from here up.
pub const TABLES_BASE: u64 = 0x10_0000;
/// Data pages tests DMA into live above this.
pub const DATA_BASE: u64 = 0x200_0000;
/// A GPA beyond guest RAM but within the 48-bit host address width.
pub const OUTSIDE_RAM: u64 = 0x40_0000_0000;

/// The device the tests use.
pub const SID: SourceId = SourceId::new(0, 3, 0);
/// A second device on another bus.
pub const SID2: SourceId = SourceId::new(1, 0, 1);

/// First-stage flags.
pub const FS_P: u64 = 1;
pub const FS_RW: u64 = 1 << 1;
pub const FS_US: u64 = 1 << 2;
pub const FS_A: u64 = 1 << 5;
pub const FS_D: u64 = 1 << 6;
pub const FS_PS: u64 = 1 << 7;
pub const FS_EA: u64 = 1 << 10;
pub const FS_XD: u64 = 1 << 63;
/// Second-stage flags.
pub const SS_R: u64 = 1;
pub const SS_W: u64 = 1 << 1;
pub const SS_PS: u64 = 1 << 7;
pub const SS_A: u64 = 1 << 8;
pub const SS_D: u64 = 1 << 9;

/// Fake guest memory with a bump allocator for zeroed table pages.
pub struct Mem {
    pub ram: Arc<GuestMemoryMmap<()>>,
    next: Cell<u64>,
}

impl Default for Mem {
    fn default() -> Self {
        Self::new()
    }
}

impl Mem {
    pub fn new() -> Self {
        Self {
            ram: Arc::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap(),
            ),
            next: Cell::new(TABLES_BASE),
        }
    }
    /// A fresh zeroed 4 KiB page.
    pub fn page(&self) -> u64 {
        let p = self.next.get();
        assert!(p + 4096 <= DATA_BASE, "test table area exhausted");
        self.next.set(p + 4096);
        self.ram.write_at(p, &[0u8; 4096]).unwrap();
        p
    }
    /// End of the table pages allocated so far.
    pub fn allocated_end(&self) -> u64 {
        self.next.get()
    }
    pub fn w64(&self, gpa: u64, v: u64) {
        self.ram.write_at(gpa, &v.to_le_bytes()).unwrap();
    }
    pub fn r64(&self, gpa: u64) -> u64 {
        self.ram.read_u64(gpa).unwrap()
    }
    pub fn w32(&self, gpa: u64, v: u32) {
        self.ram.write_at(gpa, &v.to_le_bytes()).unwrap();
    }
    pub fn r32(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ram.read_at(gpa, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
}

/// CAP as QEMU's intel-iommu reports it with aw-bits=48 and fs1gp: SAGAW 39/48 bits, MGAW 48,
/// 2 MiB + 1 GiB second-stage pages, FS1GP, PSI, MAMV 18.
pub fn cap() -> Cap {
    Cap::new()
        .with_nd(2)
        .with_sagaw(0b0110)
        .with_mgaw(47)
        .with_fro(0x22)
        .with_sllps(0b11)
        .with_psi(true)
        .with_nfr(7)
        .with_mamv(18)
        .with_fs1gp(true)
}

/// ECAP with everything the tests need: QI, PT, SC off, scalable mode with first and second
/// stage, PASID with 20-bit PASIDs, supervisor and execute requests.
pub fn ecap() -> Ecap {
    Ecap::new()
        .with_qi(true)
        .with_pt(true)
        .with_smts(true)
        .with_fsts(true)
        .with_ssts(true)
        .with_pasid(true)
        .with_pss(19)
        .with_srs(true)
        .with_ers(true)
        .with_eafs(true)
        .with_ssads(true)
}

/// The leaf/table flags of a stage, to build page tables generically.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    First,
    Second,
}

impl Stage {
    pub fn table_flags(self) -> u64 {
        match self {
            Stage::First => FS_P | FS_RW | FS_US,
            Stage::Second => SS_R | SS_W,
        }
    }
    pub fn leaf_rw(self) -> u64 {
        self.table_flags()
    }
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
    pub root: u64,
    pub levels: u32,
    pub stage: Stage,
}

fn index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & 0x1ff
}

impl PageTable {
    pub fn new(mem: &Mem, levels: u32, stage: Stage) -> Self {
        Self {
            root: mem.page(),
            levels,
            stage,
        }
    }

    /// Address of the entry for `iova` at `level`, creating intermediate tables.
    pub fn entry_addr(&self, mem: &Mem, iova: u64, level: u32) -> u64 {
        let mut table = self.root;
        for l in (level + 1..=self.levels).rev() {
            let addr = table + index(iova, l) * 8;
            let e = mem.r64(addr);
            let next = e & 0x000f_ffff_ffff_f000;
            if e & self.stage.table_flags() == 0 || next == 0 {
                let t = mem.page();
                mem.w64(addr, t | self.stage.table_flags());
                table = t;
            } else {
                table = next;
            }
        }
        table + index(iova, level) * 8
    }

    /// Maps `iova` to `gpa` with a leaf at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) and `flags`
    /// (PS is added for superpages). Returns the leaf's address.
    pub fn map(&self, mem: &Mem, iova: u64, gpa: u64, level: u32, flags: u64) -> u64 {
        let addr = self.entry_addr(mem, iova, level);
        let ps = if level > 1 { self.stage.ps() } else { 0 };
        mem.w64(addr, gpa | flags | ps);
        addr
    }

    /// Maps a 4 KiB page read/write (user) .
    pub fn map4k(&self, mem: &Mem, iova: u64, gpa: u64) -> u64 {
        self.map(mem, iova, gpa, 1, self.stage.leaf_rw())
    }
}

/// Root/context/PASID tables of one unit.
pub struct Tables<'a> {
    pub mem: &'a Mem,
    pub root: u64,
    pub scalable: bool,
}

impl<'a> Tables<'a> {
    pub fn legacy(mem: &'a Mem) -> Self {
        Self {
            mem,
            root: mem.page(),
            scalable: false,
        }
    }
    pub fn scalable(mem: &'a Mem) -> Self {
        Self {
            mem,
            root: mem.page(),
            scalable: true,
        }
    }

    pub fn rtaddr(&self) -> RtAddr {
        RtAddr::new()
            .with_rta(self.root >> 12)
            .with_ttm(if self.scalable {
                TranslationTableMode::Scalable
            } else {
                TranslationTableMode::Legacy
            })
    }

    pub fn state(&self) -> UnitState {
        UnitState {
            root: self.rtaddr(),
            translation_enabled: true,
            cap: cap(),
            ecap: ecap(),
        }
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
        let aw = match pt.levels {
            3 => 1,
            4 => 2,
            _ => 3,
        };
        self.legacy_context(
            sid,
            LegacyContextEntry {
                lo: LegacyContextLo::new()
                    .with_present(true)
                    .with_tt(TranslationType::Untranslated)
                    .with_ssptptr(pt.root >> 12),
                hi: LegacyContextHi::new().with_aw(aw).with_did(did),
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
        let a = self.pasid_entry_addr(sid, pasid);
        for (i, q) in pe.to_qwords().iter().enumerate() {
            self.mem.w64(a + 8 * i as u64, *q);
        }
        a
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

/// The first-stage PASID entry Linux 6.12 writes (AW=2 written even for first stage).
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
    let aw = match pt.levels {
        3 => 1,
        4 => 2,
        _ => 3,
    };
    let mut pe = pasid_entry(Pgtt::SecondStage, did);
    pe.qw0 = pe.qw0.with_aw(aw).with_ssptptr(pt.root >> 12);
    pe
}

/// A unit stand-in: translator + memory + state, as a `Remapper`.
pub struct Unit {
    pub translator: Translator,
    pub counters: Arc<Counters>,
    pub ram: Arc<GuestMemoryMmap<()>>,
    pub state: std::sync::Mutex<UnitState>,
}

impl Unit {
    pub fn new(mem: &Mem, state: UnitState) -> Arc<Self> {
        let counters = Arc::new(Counters::default());
        Arc::new(Self {
            translator: Translator::new(state.cap, state.ecap, counters.clone()),
            counters,
            ram: mem.ram.clone(),
            state: std::sync::Mutex::new(state),
        })
    }
    pub fn state(&self) -> UnitState {
        *self.state.lock().unwrap()
    }
    pub fn req(
        &self,
        sid: SourceId,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Translation, Fault> {
        self.translator.translate(
            &*self.ram,
            &self.state(),
            &DmaRequest {
                sid,
                pasid,
                iova,
                access,
            },
        )
    }
    /// The GPA a read of `iova` by `sid` (no PASID) lands at.
    pub fn gpa(&self, sid: SourceId, iova: u64) -> Result<u64, Fault> {
        self.req(sid, None, iova, Access::READ).map(|t| t.gpa(iova))
    }
    pub fn gpa_pasid(&self, sid: SourceId, pasid: u32, iova: u64) -> Result<u64, Fault> {
        self.req(sid, Some(pasid), iova, Access::READ)
            .map(|t| t.gpa(iova))
    }
    pub fn inv(&self, inv: Invalidation) {
        self.translator.invalidate(&inv);
    }
}

impl Remapper for Unit {
    fn remap(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.translator.translate(&*self.ram, &self.state(), req)
    }
}
