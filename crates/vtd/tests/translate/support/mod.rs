//! Test helpers: the shared fixtures (guest RAM, builders that write root/context/PASID tables
//! and page tables the way a guest driver would: `test_fixtures`), the capabilities the tests
//! assume, and a minimal `Remapper` around a `Translator`.

#![allow(dead_code)]

pub use test_fixtures::tables::*;
pub use test_fixtures::{DATA_BASE, Mem};

use std::sync::Arc;
use vm_memory::GuestMemoryMmap;
use vtd::Counters;
use vtd::invalidation::Invalidation;
use vtd::request::{Access, DmaRequest, Fault, Generations, Remapper, Stale, Translation};
use vtd::{Translator, UnitState};
use vtd_spec::SourceId;
use vtd_spec::regs::{Cap, Ecap};

/// A GPA beyond guest RAM but within the 48-bit host address width.
pub const OUTSIDE_RAM: u64 = 0x40_0000_0000;

/// The device the tests use.
pub const SID: SourceId = SourceId::new(0, 3, 0);
/// A second device on another bus.
pub const SID2: SourceId = SourceId::new(1, 0, 1);

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

/// The translator's state with `tables` as its root, translation on, and [`cap`] / [`ecap`].
pub trait TablesState {
    /// That state.
    fn state(&self) -> UnitState;
}

impl TablesState for Tables<'_> {
    fn state(&self) -> UnitState {
        UnitState {
            root: self.rtaddr(),
            translation_enabled: true,
            cap: cap(),
            ecap: ecap(),
        }
    }
}

/// A unit stand-in: translator + memory + state, as a `Remapper` with `Generations` (bumped by
/// every [`Unit::inv`], which it cannot scope: a device drops everything it remembered).
pub struct Unit {
    pub translator: Translator,
    pub counters: Arc<Counters>,
    pub ram: Arc<GuestMemoryMmap<()>>,
    pub state: std::sync::Mutex<UnitState>,
    generation: std::sync::atomic::AtomicU64,
}

impl Unit {
    pub fn new(mem: &Mem, state: UnitState) -> Arc<Self> {
        let counters = Arc::new(Counters::default());
        Arc::new(Self {
            translator: Translator::new(state.cap, state.ecap, counters.clone()),
            counters,
            ram: mem.ram.clone(),
            state: std::sync::Mutex::new(state),
            generation: std::sync::atomic::AtomicU64::new(0),
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
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Remapper for Unit {
    fn remap(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.translator.translate(&*self.ram, &self.state(), req)
    }
}

impl Generations for Unit {
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn stale_between(&self, _from: u64, _to: u64, _stale: &mut dyn FnMut(Stale)) -> bool {
        false
    }
}
