//! DMA address translation: table readers, page walks and the caches in front of them.
//!
//! The [`Translator`] turns one [`DmaRequest`] into a [`Translation`] of the page holding its
//! address, or into a [`Fault`] carrying the spec's reason and qualification. It never records
//! faults: the unit does (FRCD, FSTS, fault event), because only the unit owns those registers.
//!
//! ```text
//!  translate(req)
//!    │ TE clear ───────────────────────────────────────────────► identity
//!    ├─► IOTLB (sid, pasid|none, page, level) ── hit, access ok ──► translation
//!    │   miss, or the cached rights refuse (re-walk: a cache may always be missed)
//!    ├─► scalable: plan (sid, pasid|none) ── hit ─► PGTT=FS below, no cache lookups
//!    ├─► context cache (sid) ─ miss ─► root entry ─► context entry        [tables]
//!    │
//!    ├─ legacy (TTM=00): TT=PT ─► identity
//!    │                   TT=00/01 ─► second-stage walk (AW levels) ─────► fill IOTLB
//!    │
//!    └─ scalable (TTM=01): PASID = request's (needs PASIDE) or RID_PASID
//!         PASID cache (sid, pasid) ─ miss ─► PASID dir[pasid>>6] ─► PASID entry [tables]
//!         PGTT=PT ─► identity
//!         PGTT=FS ─► fill the plan; SRE/ERE, canonical, first-stage walk + A/D ─► fill IOTLB
//!                    (from the leaf table cached for the 2 MiB region, when it is;
//!                    a 4 KiB leaf also fills the IOTLB with the other present, accessed
//!                    leaves of its 64-byte line: the request's other buffers)
//!         PGTT=SS ─► second-stage walk (SM reasons) ──────────────────► fill IOTLB
//!         other  ─► 0x5B
//! ```
//!
//! Invalidations ([`Translator::invalidate`]) follow §6.5 and are spelled out per cache in
//! `iotlb.rs`, `leaf_tables.rs` (the first-stage paging-structure cache), `plans.rs` and
//! `entry_cache.rs`. The IOTLB never scans: wide scopes bump a generation stamped into every
//! entry, page ranges probe the exact slots through the domain's requester record
//! (`generation.rs`, `requesters.rs`). Every fill takes a ticket from the invalidation clock
//! before it reads any table and inserts only if no invalidation started since, so a walk that
//! raced an invalidation never leaves its (possibly stale) result in a cache: once `invalidate`
//! returns, no translation starting afterwards uses anything it covered.
//!
//! Beyond the spec's minimum, a context-cache invalidation also drops the PASID-cache and IOTLB
//! entries of the sources it selects (the IOTLB is looked up per requester, so entries derived
//! from an old context entry must not outlive it even when a guest forgets the PASID-cache
//! flush the spec asks for — the Linux 6.7-rc2 case QEMU replays for), and every walk plan and
//! leaf table; over-flushing is always safe. PASID-cache invalidations drop PASID-cache entries
//! and the walk plans (which are those entries, resolved), not translations: the spec requires
//! the guest to follow them with a (PASID-based) IOTLB invalidation.
//!
//! Fault qualification: faults on the root and context entries are always reported, except a
//! context entry with P clear, which its own FPD qualifies (FPD is evaluated whatever P says);
//! faults on a PASID-directory entry are qualified by the context entry's FPD, on a PASID entry
//! also by the directory entry's FPD (and a clear P in either by the entry's own FPD), and
//! faults of the walk by all three and the PASID entry's own FPD. Counters: `translations` counts every request, `iotlb_hits` the requests served from the
//! IOTLB, `iotlb_misses` and `walks` the page walks (pass-through requests are not IOTLB
//! traffic: they are served from the context and PASID caches); the unit counts faults. These
//! four are per-thread [`crate::counters::HotCounter`]s: an IOTLB hit shares no written cache
//! line with other device threads.
//!
//! The root table, TE and capabilities come from [`UnitState`], a copy of what the unit latched
//! at the last SRTP/TE command. Cached entries survive an SRTP until the guest invalidates them
//! (the spec's rule; Linux does three global invalidations right after SRTP); with CAP.ESRTPS
//! the unit calls [`Translator::flush_all`] itself.

mod cache;
mod entry_cache;
mod generation;
mod iotlb;
mod leaf_tables;
mod plans;
mod requesters;
pub mod shadow_view;
mod tables;
mod walk;

use crate::counters::Counters;
use crate::interrupt_range::INTERRUPT_RANGE;
use crate::invalidation::Invalidation;
use crate::memory::GuestRam;
use crate::request::{Access, DmaRequest, Fault, Permissions, Translation};
use entry_cache::{CachedPasid, ContextCache, PasidCache};
use generation::{Clock, Ticket};
use iotlb::{CachedRights, Hit, Iotlb, IotlbEntry, NO_PASID};
use leaf_tables::{LeafTableKey, LeafTables};
use plans::{Plan, Plans};
use std::sync::Arc;
use tables::{Context, TableFault};
use vtd_spec::SourceId;
use vtd_spec::context::{LegacyContextEntry, ScalableContextEntry, TranslationType};
use vtd_spec::fault::FaultReason;
use vtd_spec::pasid::{PasidEntry, Pgtt};
use vtd_spec::pte::level_size;
use vtd_spec::regs::{Cap, Ecap, RtAddr, TranslationTableMode};
use vtd_spec::rights::FsControls;
use walk::first_stage::{self, FsWalk};
use walk::second_stage::{self, SsFaults, SsWalk};

/// What the translator needs of the unit's state: the root table latched by the last SRTP
/// (not the live RTADDR register), TE status, and CAP/ECAP.
#[derive(Clone, Copy, Debug)]
pub struct UnitState {
    /// Root table address and mode latched by the last SRTP.
    pub root: RtAddr,
    /// GSTS.TES: translation enabled.
    pub translation_enabled: bool,
    /// The capability register.
    pub cap: Cap,
    /// The extended capability register.
    pub ecap: Ecap,
}

/// Cache sizes (entries). Fixed: guest activity cannot grow them.
const SHARDS: usize = 16;
const CONTEXT_CACHE_PER_SHARD: usize = 64;
const PASID_CACHE_PER_SHARD: usize = 64;
const IOTLB_ENTRIES: usize = 8192;
/// First-stage walk plans (one per requester and PASID).
const PLANS_PER_SHARD: usize = 64;
/// First-stage leaf tables cached per part of the leaf-table cache (`SHARDS` parts; each table
/// maps 2 MiB: 1 GiB of input space in all).
const LEAF_TABLES_PER_PART: usize = 32;

/// log2 of the identity window returned for untranslated requests: a 2^52-byte aligned window
/// (the largest VT-d physical address width), so one translation covers any run of pages.
const IDENTITY_SHIFT: u32 = 52;

/// A fault found on the slow path, before it is tied to the request.
type SlowFault = TableFault;

/// Sizes and fill levels of the translator's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Context-cache entries.
    pub context_entries: usize,
    /// Context-cache capacity.
    pub context_capacity: usize,
    /// PASID-cache entries.
    pub pasid_entries: usize,
    /// PASID-cache capacity.
    pub pasid_capacity: usize,
    /// IOTLB entries.
    pub iotlb_entries: usize,
    /// IOTLB capacity.
    pub iotlb_capacity: usize,
    /// Cached first-stage leaf tables (paging-structure cache).
    pub leaf_table_entries: usize,
    /// Leaf-table cache capacity.
    pub leaf_table_capacity: usize,
}

/// The translation engine of one remapping unit: table walks plus the context cache, the PASID
/// cache and the IOTLB. `Send + Sync`; lookups from many device threads run in parallel.
pub struct Translator {
    cap: Cap,
    ecap: Ecap,
    counters: Arc<Counters>,
    /// Counts invalidations, so fills racing one stay out of the caches (`generation.rs`).
    clock: Clock,
    contexts: ContextCache,
    pasids: PasidCache,
    iotlb: Iotlb,
    leaf_tables: LeafTables,
    plans: Plans,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("cap", &self.cap)
            .field("ecap", &self.ecap)
            .field("caches", &self.cache_stats())
            .finish()
    }
}

fn identity(iova: u64) -> Translation {
    let base = iova & !((1u64 << IDENTITY_SHIFT) - 1);
    Translation {
        iova_base: base,
        gpa_base: base,
        size: 1 << IDENTITY_SHIFT,
        perms: Permissions {
            read: true,
            write: true,
        },
    }
}

impl Translator {
    /// A translator for a unit with these capabilities, counting into `counters`.
    pub fn new(cap: Cap, ecap: Ecap, counters: Arc<Counters>) -> Self {
        Self {
            cap,
            ecap,
            counters,
            clock: Clock::default(),
            contexts: ContextCache::new(SHARDS, CONTEXT_CACHE_PER_SHARD),
            pasids: PasidCache::new(SHARDS, PASID_CACHE_PER_SHARD),
            iotlb: Iotlb::new(IOTLB_ENTRIES),
            leaf_tables: LeafTables::new(SHARDS, LEAF_TABLES_PER_PART),
            plans: Plans::new(SHARDS, PLANS_PER_SHARD),
        }
    }

    /// The capability register this translator was built for.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The extended capability register this translator was built for.
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }

    /// How many context, PASID and IOTLB entries the caches hold for source `sid`.
    pub fn cached_entries_of(&self, sid: SourceId) -> usize {
        self.contexts.count_source(sid.0)
            + self.pasids.count_source(sid.0)
            + self.iotlb.count_source(sid.0)
    }

    /// Current sizes of the caches.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            context_entries: self.contexts.len(),
            context_capacity: self.contexts.capacity(),
            pasid_entries: self.pasids.len(),
            pasid_capacity: self.pasids.capacity(),
            iotlb_entries: self.iotlb.len(),
            iotlb_capacity: self.iotlb.capacity(),
            leaf_table_entries: self.leaf_tables.len(),
            leaf_table_capacity: self.leaf_tables.capacity(),
        }
    }

    /// Live IOTLB entries per domain id, by domain id.
    pub fn iotlb_per_domain(&self) -> Vec<(u16, usize)> {
        self.iotlb.per_domain()
    }

    /// Translate one page. Never records faults (the unit does): returns the Fault with reason,
    /// sid, pasid, iova, access and fpd.
    ///
    /// Inlined into callers: the IOTLB hit is a few dozen instructions, and returning the result
    /// through memory costs about as much again; misses go to an out-of-line slow path.
    #[inline]
    pub fn translate(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        req: &DmaRequest,
    ) -> Result<Translation, Fault> {
        self.translate_nearby(ram, state, req, &mut |_| {})
    }

    /// [`Translator::translate`], and `nearby` receives the other translations for the same
    /// requester that a first-stage walk cached on the way (the other present, accessed
    /// leaves of the walked leaf's line, those the request's privilege may read). Each is
    /// exactly what a request for it would have returned at that moment.
    #[inline]
    pub fn translate_nearby(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        req: &DmaRequest,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, Fault> {
        self.counters.translations.bump();
        if !state.translation_enabled {
            return Ok(identity(req.iova));
        }
        let tag = req.pasid.unwrap_or(NO_PASID);
        if let Some(e) = self.iotlb.lookup(req.sid, tag, req.iova)
            && let Some(perms) = hit(&e, req)
        {
            self.counters.iotlb_hits.bump();
            tracing::trace!(target: "vtd", sid = req.sid.0, pasid = tag, iova = req.iova,
                gpa = e.gpa_base(), level = e.level(), did = e.did(), "vtd_iotlb_page_hit");
            return Ok(Translation {
                iova_base: e.iova_base(),
                gpa_base: e.gpa_base(),
                size: e.size(),
                perms,
            });
        }
        self.translate_miss(ram, state, req, nearby)
    }

    /// Everything but an IOTLB hit: the walks, and the fault the unit records on failure.
    #[inline(never)]
    fn translate_miss(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        req: &DmaRequest,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, Fault> {
        let tag = req.pasid.unwrap_or(NO_PASID);
        self.translate_slow(ram, state, req, nearby).map_err(|f| {
            tracing::trace!(target: "vtd", sid = req.sid.0, pasid = tag, iova = req.iova,
                reason = f.reason.code(), fpd = f.fpd, "vtd_dmar_fault");
            Fault {
                reason: f.reason,
                sid: req.sid,
                pasid: req.pasid,
                iova: req.iova,
                access: req.access,
                fpd: f.fpd,
            }
        })
    }

    /// Apply one invalidation to every cache. When it returns, no translation starting
    /// afterwards uses an entry it covers; a translation that started before may still return
    /// the old answer.
    pub fn invalidate(&self, inv: &Invalidation) {
        // Before anything is removed: fills that read tables before this point stay out.
        self.clock.removal();
        let dropped = match *inv {
            // Scalable-mode context entries carry no DID: a domain-selective invalidation is
            // global for them (and QEMU treats it as global too).
            Invalidation::ContextGlobal | Invalidation::ContextDomain { .. } => {
                let n = self.contexts.len() + self.pasids.len() + self.plans.clear();
                self.contexts.clear();
                self.pasids.clear();
                self.iotlb.flush(&self.clock);
                n
            }
            Invalidation::ContextDevice { sid, fm, .. } => {
                let sel = |s: u16| SourceId(s).selected_by(sid, fm);
                self.plans.clear()
                    + self.contexts.drop_sources(sel)
                    + self.pasids.drop_sources(sel)
                    + self.iotlb.drop_sources(sel)
            }
            Invalidation::PasidCacheGlobal
            | Invalidation::PasidCacheDomain { .. }
            | Invalidation::PasidCachePasid { .. } => {
                self.plans.clear() + self.pasids.invalidate(inv)
            }
            Invalidation::IotlbGlobal
            | Invalidation::IotlbDomain { .. }
            | Invalidation::IotlbPage { .. }
            | Invalidation::PasidIotlbAll { .. }
            | Invalidation::PasidIotlbPage { .. } => self.iotlb.invalidate(&self.clock, inv),
        } + self.leaf_tables.invalidate(inv);
        tracing::trace!(target: "vtd", ?inv, dropped, "vtd_inv");
    }

    /// Drop everything (used on reset).
    pub fn flush_all(&self) {
        self.clock.removal();
        self.contexts.clear();
        self.pasids.clear();
        self.iotlb.flush(&self.clock);
        self.leaf_tables.clear();
        self.plans.clear();
    }

    /// Read the PASID entry for (sid, pasid) straight from guest memory, bypassing and not
    /// filling the PASID cache (for the passthrough-device path). Context-entry and PASID-
    /// directory faults are returned as Fault.
    ///
    /// The context entry is read from guest memory too. The PASID entry is returned as found,
    /// present or not and unchecked: the caller decides what a PGTT means for its device.
    pub fn read_pasid_entry(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        sid: SourceId,
        pasid: u32,
    ) -> Result<PasidEntry, Fault> {
        let fault = |f: TableFault| Fault {
            reason: f.reason,
            sid,
            pasid: Some(pasid),
            iova: 0,
            access: Access::default(),
            fpd: f.fpd,
        };
        if state.root.ttm() == TranslationTableMode::Legacy {
            return Err(fault(TableFault::new(
                FaultReason::SmTtmLegacyWithPasid,
                false,
            )));
        }
        let ce = match tables::read_context(ram, state.root, state.cap, state.ecap, sid) {
            Ok(Context::Scalable(ce)) => ce,
            Ok(Context::Legacy(_)) => {
                return Err(fault(TableFault::new(
                    FaultReason::SmTtmLegacyWithPasid,
                    false,
                )));
            }
            Err(f) => return Err(fault(f)),
        };
        let haw = tables::host_address_width(state.cap);
        tables::read_pasid_entry_raw(ram, haw, &ce, pasid)
            .map(|(pe, _)| pe)
            .map_err(fault)
    }

    fn context(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        sid: SourceId,
        ticket: Option<Ticket>,
    ) -> Result<Context, TableFault> {
        let scalable = state.root.ttm() == TranslationTableMode::Scalable;
        if let Some(c) = self.contexts.get(sid) {
            // An entry read under the other table mode (an SRTP switched modes and the guest
            // has not invalidated yet) cannot be interpreted: read again.
            if matches!(c, Context::Scalable(_)) == scalable {
                Counters::bump(&self.counters.context_cache_hits);
                tracing::trace!(target: "vtd", sid = sid.0, "vtd_context_cache_hit");
                return Ok(c);
            }
        }
        Counters::bump(&self.counters.context_cache_misses);
        tracing::trace!(target: "vtd", sid = sid.0, "vtd_context_cache_miss");
        let c = tables::read_context(ram, state.root, state.cap, state.ecap, sid)?;
        self.contexts.insert_if(sid, c, || self.clock.still(ticket));
        Ok(c)
    }

    fn pasid_entry(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        sid: SourceId,
        ce: &ScalableContextEntry,
        pasid: u32,
        ticket: Option<Ticket>,
    ) -> Result<CachedPasid, SlowFault> {
        if let Some(p) = self.pasids.get(sid, pasid) {
            Counters::bump(&self.counters.pasid_cache_hits);
            tracing::trace!(target: "vtd", sid = sid.0, pasid, "vtd_pasid_cache_hit");
            return Ok(p);
        }
        Counters::bump(&self.counters.pasid_cache_misses);
        tracing::trace!(target: "vtd", sid = sid.0, pasid, "vtd_pasid_cache_miss");
        let haw = tables::host_address_width(state.cap);
        let (entry, dir_fpd) = tables::read_pasid_entry_raw(ram, haw, ce, pasid)?;
        tables::check_pasid_entry(&entry, state.cap, state.ecap, ce.lo.fpd() || dir_fpd)?;
        let cached = CachedPasid { entry, dir_fpd };
        self.pasids
            .insert_if(sid, pasid, cached, || self.clock.still(ticket));
        Ok(cached)
    }

    fn translate_slow(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        req: &DmaRequest,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, SlowFault> {
        if req.pasid.is_some_and(|p| p >= vtd_spec::PASID_LIMIT) {
            return Err(TableFault::new(FaultReason::SmPasidTooLarge, false));
        }
        // Taken before any table is read: what this translation caches is dropped, or never
        // inserted, if an invalidation starts from here on.
        let ticket = self.clock.ticket();
        if state.root.ttm() == TranslationTableMode::Scalable
            && let Some(plan) = self.plans.get(req.sid.0, req.pasid.unwrap_or(NO_PASID))
        {
            // The plan is the context and PASID entries, resolved.
            Counters::bump(&self.counters.context_cache_hits);
            Counters::bump(&self.counters.pasid_cache_hits);
            tracing::trace!(target: "vtd", sid = req.sid.0, pasid = plan.pasid, "vtd_plan_hit");
            return self.planned(ram, req, &plan, ticket, nearby);
        }
        let ctx = self.context(ram, state, req.sid, ticket)?;
        match ctx {
            Context::Legacy(ce) => self.legacy(ram, state, req, &ce, ticket),
            Context::Scalable(ce) => self.scalable(ram, state, req, &ce, ticket, nearby),
        }
    }

    fn legacy(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        req: &DmaRequest,
        ce: &LegacyContextEntry,
        ticket: Option<Ticket>,
    ) -> Result<Translation, SlowFault> {
        if req.pasid.is_some() {
            return Err(TableFault::new(FaultReason::SmTtmLegacyWithPasid, false));
        }
        let fpd = ce.lo.fpd();
        if ce.lo.tt() == TranslationType::PassThrough {
            return Ok(identity(req.iova));
        }
        let levels = tables::supported_ss_levels(state.cap, ce.hi.aw())
            .ok_or(TableFault::new(FaultReason::ContextInvalid, false))?;
        let w = SsWalk {
            root: ce.second_stage_table(),
            levels,
            haw: tables::host_address_width(state.cap),
            sllps: state.cap.sllps(),
            snoop: state.ecap.sc(),
            execute: true,
            ad: false,
            faults: SsFaults::LEGACY,
        };
        self.second_stage(ram, req, &w, ce.hi.did(), NO_PASID, fpd, ticket)
    }

    fn scalable(
        &self,
        ram: &dyn GuestRam,
        state: &UnitState,
        req: &DmaRequest,
        ce: &ScalableContextEntry,
        ticket: Option<Ticket>,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, SlowFault> {
        let pasid = match req.pasid {
            Some(p) => {
                if !ce.lo.paside() {
                    return Err(TableFault::new(FaultReason::SmPasidEnableClear, false));
                }
                // PASIDs are PSS+1 bits wide (§11.4.3).
                let bits = u32::from(state.ecap.pss()) + 1;
                if bits < 32 && p >> bits != 0 {
                    return Err(TableFault::new(FaultReason::SmPasidTooLarge, false));
                }
                p
            }
            None => ce.hi.rid_pasid(),
        };
        let cached = self.pasid_entry(ram, state, req.sid, ce, pasid, ticket)?;
        let pe = cached.entry;
        let fpd = ce.lo.fpd() || cached.dir_fpd || pe.qw0.fpd();
        let haw = tables::host_address_width(state.cap);
        let did = pe.qw1.did();
        match pe.qw0.pgtt() {
            Pgtt::PassThrough => Ok(identity(req.iova)),
            Pgtt::FirstStage => {
                let plan = Plan {
                    walk: FsWalk::new(
                        pe.first_stage_table(),
                        pe.qw2.fspm().levels().unwrap_or(4),
                        haw,
                        state.cap.fs1gp(),
                        FsControls::of(&pe),
                    ),
                    did,
                    pasid,
                    fpd,
                    rid_priv: ce.hi.rid_priv(),
                };
                let tag = req.pasid.unwrap_or(NO_PASID);
                self.plans
                    .insert_if(req.sid.0, tag, plan, || self.clock.still(ticket));
                self.planned(ram, req, &plan, ticket, nearby)
            }
            Pgtt::SecondStage => {
                let levels = tables::supported_ss_levels(state.cap, pe.qw0.aw())
                    .ok_or(TableFault::new(FaultReason::SmPasidEntryInvalid, fpd))?;
                let root = pe.second_stage_table();
                if vtd_spec::beyond_haw(root, haw) {
                    return Err(TableFault::new(
                        FaultReason::SmInvalidSecondStagePointer,
                        fpd,
                    ));
                }
                let w = SsWalk {
                    root,
                    levels,
                    haw,
                    sllps: state.cap.sllps(),
                    snoop: state.ecap.sc(),
                    execute: pe.qw0.ssee(),
                    ad: pe.qw0.ssade(),
                    faults: SsFaults::SCALABLE,
                };
                self.second_stage(ram, req, &w, did, pasid, fpd, ticket)
            }
            Pgtt::Nested | Pgtt::Reserved(_) => {
                Err(TableFault::new(FaultReason::SmPasidEntryInvalid, fpd))
            }
        }
    }

    /// A first-stage translation of `req` by its requester's plan: the request checks, then
    /// the walk.
    fn planned(
        &self,
        ram: &dyn GuestRam,
        req: &DmaRequest,
        plan: &Plan,
        ticket: Option<Ticket>,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, SlowFault> {
        let privileged = if req.pasid.is_some() {
            req.access.privileged
        } else {
            plan.rid_priv
        };
        let w = &plan.walk;
        let f = |r| TableFault::new(r, plan.fpd);
        w.controls
            .check_request(req.access.first_stage(privileged))
            .map_err(f)?;
        first_stage::check_address(req.iova, w.levels, w.haw).map_err(f)?;
        self.first_stage(
            ram,
            req,
            w,
            privileged,
            (plan.did, plan.pasid),
            plan.fpd,
            ticket,
            nearby,
        )
    }

    /// Caches a page `req`'s requester may use: (DID, PASID, FPD) tags, (input base, output
    /// base, level), rights; kept out if an invalidation started since `ticket`.
    fn fill(
        &self,
        req: &DmaRequest,
        ticket: Option<Ticket>,
        (did, pasid, fpd): (u16, u32, bool),
        (iova_base, gpa_base, level): (u64, u64, u32),
        rights: CachedRights,
    ) {
        let entry = IotlbEntry {
            did,
            pasid,
            iova_base,
            gpa_base,
            level: level as u8,
            fpd,
            rights,
        };
        let tag = req.pasid.unwrap_or(NO_PASID);
        self.iotlb.insert(&self.clock, ticket, req.sid, tag, entry);
    }

    fn count_walk(&self) {
        self.counters.iotlb_misses.bump();
        self.counters.walks.bump();
    }

    #[allow(clippy::too_many_arguments)]
    fn first_stage(
        &self,
        ram: &dyn GuestRam,
        req: &DmaRequest,
        w: &FsWalk,
        privileged: bool,
        (did, pasid): (u16, u32),
        fpd: bool,
        ticket: Option<Ticket>,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, SlowFault> {
        self.count_walk();
        tracing::trace!(target: "vtd", sid = req.sid.0, pasid, iova = req.iova, "vtd_iotlb_page_miss");
        let key = LeafTableKey::new(did, pasid, req.iova, w.root, w.levels, w.controls);
        let cached = self.leaf_tables.get(&key);
        if cached.is_some() {
            Counters::bump(&self.counters.leaf_table_hits);
        } else {
            Counters::bump(&self.counters.leaf_table_misses);
        }
        let (leaf, reached) = first_stage::walk(ram, w, req.iova, req.access, privileged, cached)
            .map_err(|r| TableFault::new(r, fpd))?;
        if let Some(table) = reached {
            self.leaf_tables
                .insert_if(key, table, || self.clock.still(ticket));
        }
        let (iova_base, gpa_base, level) =
            avoid_interrupt_range(req.iova, leaf.page, leaf.level)
                .ok_or(TableFault::new(FaultReason::SmInvalidInterruptAddress, fpd))?;
        let size = level_size(level);
        let write =
            leaf.rights.may_write(w.controls, privileged) && (leaf.dirty_ok || req.access.write);
        let fill = |iova_base: u64, gpa_base: u64, level: u32, leaf: &first_stage::FsLeaf| {
            let rights = CachedRights::First {
                rights: leaf.rights,
                controls: w.controls,
                rid_priv: privileged && req.pasid.is_none(),
                dirty_ok: leaf.dirty_ok,
            };
            self.fill(
                req,
                ticket,
                (did, pasid, fpd),
                (iova_base, gpa_base, level),
                rights,
            );
        };
        fill(iova_base, gpa_base, level, &leaf);
        if leaf.level == 1
            && let Some(chain) = reached.or(cached)
        {
            // The line's other present leaves: the request's other buffers, mapped just before.
            for (page, n) in first_stage::line_neighbours(ram, w, chain, req.iova)
                .iter()
                .flatten()
            {
                if INTERRUPT_RANGE.contains(&n.page) {
                    continue;
                }
                Counters::bump(&self.counters.iotlb_prefetches);
                fill(*page, n.page, 1, n);
                if n.rights
                    .check(w.controls, Access::READ.first_stage(privileged))
                    .is_ok()
                {
                    nearby(Translation {
                        iova_base: *page,
                        gpa_base: n.page,
                        size: 4096,
                        perms: Permissions {
                            read: true,
                            write: n.rights.may_write(w.controls, privileged) && n.dirty_ok,
                        },
                    });
                }
            }
        }
        Ok(Translation {
            iova_base,
            gpa_base,
            size,
            perms: Permissions { read: true, write },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn second_stage(
        &self,
        ram: &dyn GuestRam,
        req: &DmaRequest,
        w: &SsWalk,
        did: u16,
        pasid: u32,
        fpd: bool,
        ticket: Option<Ticket>,
    ) -> Result<Translation, SlowFault> {
        self.count_walk();
        tracing::trace!(target: "vtd", sid = req.sid.0, pasid, iova = req.iova, "vtd_iotlb_page_miss");
        let leaf = second_stage::walk(ram, w, req.iova, req.access)
            .map_err(|r| TableFault::new(r, fpd))?;
        let (iova_base, gpa_base, level) = avoid_interrupt_range(req.iova, leaf.page, leaf.level)
            .ok_or(TableFault::new(w.faults.interrupt, fpd))?;
        let size = level_size(level);
        let rights = CachedRights::Second {
            read: leaf.read,
            write: leaf.write,
            dirty_ok: leaf.dirty_ok,
        };
        self.fill(
            req,
            ticket,
            (did, pasid, fpd),
            (iova_base, gpa_base, level),
            rights,
        );
        Ok(Translation {
            iova_base,
            gpa_base,
            size,
            perms: Permissions {
                read: leaf.read,
                write: leaf.write && (leaf.dirty_ok || req.access.write),
            },
        })
    }
}

/// Blocks output addresses in the interrupt range (§3.15: untranslated requests whose result
/// is in 0xFEEx_xxxx are blocked). The 4 KiB page holding the output address must lie outside
/// it; a larger page overlapping it is narrowed to that 4 KiB page, so the rest of the
/// superpage stays usable and nothing handed out (or cached) covers the range. Returns the
/// input base, output base and level to use.
fn avoid_interrupt_range(iova: u64, page: u64, level: u32) -> Option<(u64, u64, u32)> {
    let size = level_size(level);
    let offset = iova & (size - 1);
    let page_4k = page + (offset & !0xfff);
    if INTERRUPT_RANGE.contains(&page_4k) {
        return None;
    }
    if page < INTERRUPT_RANGE.end && INTERRUPT_RANGE.start < page + size {
        return Some((iova & !0xfff, page_4k, 1));
    }
    Some((iova & !(size - 1), page, level))
}

/// Serves a request from an IOTLB entry if the cached rights allow it without any update:
/// the permissions to hand out. `None` sends the request down the slow path, which re-walks and
/// faults if it must.
#[inline]
fn hit(e: &Hit, req: &DmaRequest) -> Option<Permissions> {
    let a = req.access;
    match e.rights() {
        CachedRights::First {
            rights,
            controls,
            rid_priv,
            dirty_ok,
        } => {
            let privileged = if req.pasid.is_some() {
                a.privileged
            } else {
                rid_priv
            };
            let fs = a.first_stage(privileged);
            controls.check_request(fs).ok()?;
            rights.check(controls, fs).ok()?;
            if a.write && !dirty_ok {
                return None;
            }
            Some(Permissions {
                read: true,
                write: rights.may_write(controls, privileged) && dirty_ok,
            })
        }
        CachedRights::Second {
            read,
            write,
            dirty_ok,
        } => {
            if (a.read && !read) || (a.write && (!write || !dirty_ok)) {
                return None;
            }
            Some(Permissions {
                read,
                write: write && dirty_ok,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn translator_is_shareable_between_device_threads() {
        send_sync::<Translator>();
        send_sync::<crate::iommu::DeviceIommu>();
    }

    #[test]
    fn identity_covers_any_address() {
        for iova in [0, 0xfff, 0x1234_5678_9abc, u64::MAX] {
            let t = identity(iova);
            assert!(t.iova_base <= iova && iova - t.iova_base < t.size);
            assert_eq!(t.gpa(iova), iova);
        }
    }

    #[test]
    fn interrupt_range_narrowing() {
        // 2 MiB page at 0xfee00000: the first 1 MiB is the interrupt range.
        assert_eq!(avoid_interrupt_range(0x20_0000, 0xfee0_0000, 2), None);
        assert_eq!(
            avoid_interrupt_range(0x30_0000, 0xfee0_0000, 2),
            Some((0x30_0000, 0xfef0_0000, 1))
        );
        // 1 GiB page at 3 GiB covers it.
        assert_eq!(
            avoid_interrupt_range(0x4000_1234, 0xc000_0000, 3),
            Some((0x4000_1000, 0xc000_1000, 1))
        );
        assert_eq!(
            avoid_interrupt_range(0x4000_1234, 0x1_0000_0000, 3),
            Some((0x4000_0000, 0x1_0000_0000, 3))
        );
    }
}
