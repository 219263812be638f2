//! The remapping unit: registers, commands, the invalidation queue, fault reporting and
//! translation tied together behind MMIO accesses and [`Remapper`].
//!
//! **Locking.** One mutex guards the register page and the queue/fault bookkeeping; MMIO
//! accesses and fault recording take it. The state translation needs ([`UnitState`]) is kept in
//! a separate `RwLock` that is written only by SRTP / TE / reset, so the DMA hot path takes a
//! read lock and never the register mutex (except to record a fault). Interrupt remapping
//! (`interrupt_remap`) has a mutex of its own, taken inside the register mutex by commands and
//! IEC descriptors and alone by [`Vtd::remap_interrupt`], which records its faults only after
//! releasing it. Observers and the interrupt sink are called after every lock is released: work
//! done under the mutex is collected as `Effects` and carried out afterwards.
//!
//! **Queue processing** is synchronous on the IQT write (and on enabling QI, and on clearing
//! FSTS.IQE, which resumes from IQH). It runs in segments: under the mutex, descriptors are
//! fetched and checked from IQH up to the next wait descriptor; the segment's invalidations are
//! then applied (translator, then observers) with no lock held, and only then, back under the
//! mutex, the wait's status write and completion event happen — so a guest that sees the status
//! word knows every earlier invalidation reached the caches and the observers. A register write
//! with no other effect (the IQT write) keeps the mutex for the first segment, so a submission of
//! invalidations and one wait takes the mutex twice; the invalidations of a segment are kept
//! inline (no heap allocation for a few), and the observers are snapshotted once per call, as
//! one `Arc` clone (none without observers). One call processes at most twice the queue size;
//! a concurrent IQT write while a call is running just moves the tail, which the running call
//! picks up.

use crate::config::Config;
use crate::counters::{Counters, CountersSnapshot};
use crate::fault::{self, EventKind, FaultInterrupt, Msi, Recorded};
use crate::generation_log::{GenerationLog, Stale};
use crate::interrupt_range;
use crate::interrupt_remap::IecScope;
use crate::interrupt_remap::{InterruptOutcome, InterruptRemapping};
use crate::invalidation::Invalidation;
use crate::memory::GuestRam;
use crate::observer::{InvalidationObserver, UnitView};
use crate::qi::{self, Action, QueueFeatures};
use crate::regs::{Register, RegisterFile, overlay};
use crate::request::{DmaRequest, Fault, Generations, Remapper, Translation};
use crate::translate::{Translator, UnitState};
use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tracing::{debug, trace};
use vtd_spec::SourceId;
use vtd_spec::interrupt::Irta;
use vtd_spec::inv::Descriptor;
use vtd_spec::pasid::PasidEntry;
use vtd_spec::regs::{
    Cap, Ccmd, Ecap, Fsts, Gcmd, Gsts, IotlbReg, Iqa, IqeInfo, Iqercd, QueuePointer,
    REGISTER_PAGE_SIZE, RtAddr, offset,
};

/// Invalidations kept inline by a [`Batch`] before it spills to the heap.
const BATCH_INLINE: usize = 4;

/// The invalidations of one queue segment or register command, in order: the first
/// [`BATCH_INLINE`] inline (a strict-mode submission has one), the rest on the heap.
struct Batch {
    inline: [Invalidation; BATCH_INLINE],
    len: usize,
    spill: Vec<Invalidation>,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            inline: [Invalidation::IotlbGlobal; BATCH_INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }
}

impl Batch {
    fn push(&mut self, inv: Invalidation) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = inv,
            None => self.spill.push(inv),
        }
        self.len += 1;
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }
    fn iter(&self) -> impl Iterator<Item = &Invalidation> + Clone {
        self.inline[..self.len.min(BATCH_INLINE)]
            .iter()
            .chain(&self.spill)
    }
}

/// Work decided under the register mutex and done after it is released.
#[derive(Default)]
struct Effects {
    invalidations: Batch,
    flush_all: bool,
    submission_done: bool,
    state_changed: bool,
    /// Interrupt remapping changed (IEC invalidation, SIRTP, IRE, CFI, reset).
    interrupt_entries_changed: bool,
    process_queue: bool,
    messages: Vec<(EventKind, Msi)>,
}

impl Effects {
    fn message(&mut self, kind: EventKind, msi: Option<Msi>) {
        if let Some(m) = msi {
            self.messages.push((kind, m));
        }
    }
    /// Whether processing the queue is all there is to do.
    fn only_process_queue(&self) -> bool {
        self.process_queue
            && self.invalidations.is_empty()
            && !self.flush_all
            && !self.submission_done
            && !self.state_changed
            && !self.interrupt_entries_changed
            && self.messages.is_empty()
    }
}

/// The registered observers at one moment; `None` when there are none.
type Observers = Option<Arc<[Arc<dyn InvalidationObserver>]>>;

struct Inner {
    regs: RegisterFile,
    /// The next fault recording register to fill (§7.2.1).
    next_fault_record: usize,
    /// A queue-processing call is running.
    queue_busy: bool,
}

/// A virtual VT-d remapping unit (DMA remapping hardware unit, one DRHD).
pub struct Vtd {
    config: Config,
    cap: Cap,
    ecap: Ecap,
    ram: Arc<dyn GuestRam>,
    irq: Arc<dyn FaultInterrupt>,
    counters: Arc<Counters>,
    translator: Translator,
    state: RwLock<UnitState>,
    /// Interrupt remapping: latched table, enables, interrupt-entry cache (own mutex, never
    /// held while `inner` is taken).
    interrupts: InterruptRemapping,
    inner: Mutex<Inner>,
    /// Replaced as a whole on registration, so a snapshot is one `Arc` clone.
    observers: RwLock<Arc<[Arc<dyn InvalidationObserver>]>>,
    /// Whether `observers` is non-empty (read without the lock).
    has_observers: AtomicBool,
    /// Bumped after every invalidation or cache flush is applied and after every change of the
    /// translation state (root, TE, reset): see [`Generations::generation`].
    generations: GenerationLog,
}

/// How a queue segment ended.
enum SegmentEnd {
    /// The queue is empty, stopped, disabled, or the budget is spent.
    Done,
    /// A wait descriptor at this slot follows the segment's invalidations.
    Wait {
        slot: u64,
        status: Option<(u64, u32)>,
        interrupt: bool,
    },
}

/// Geometry of the queue as IQA describes it.
#[derive(Clone, Copy)]
struct Queue {
    base: u64,
    wide: bool,
    entries: u64,
}

impl Queue {
    fn of(iqa: Iqa) -> Self {
        Self {
            base: iqa.base(),
            wide: iqa.dw(),
            entries: iqa.entries(),
        }
    }
    /// Slot index of a head/tail register value.
    fn slot(&self, pointer: u64) -> u64 {
        let index16 = u64::from(QueuePointer::from_bits(pointer).index16());
        if self.wide { index16 >> 1 } else { index16 }
    }
    /// Register value for a slot index.
    fn pointer(&self, slot: u64) -> u64 {
        slot << if self.wide { 5 } else { 4 }
    }
}

/// Upper bound of descriptors one processing call handles: twice the largest queue.
const QUEUE_BUDGET: u64 = 2 * (4096 << 7) / 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vtd {
    /// A unit with `config` (which should have passed [`Config::validate`]), reading and
    /// writing guest memory through `ram` and sending its interrupts through `irq`.
    pub fn new(config: Config, ram: Arc<dyn GuestRam>, irq: Arc<dyn FaultInterrupt>) -> Self {
        let (cap, ecap) = (config.cap(), config.ecap());
        let counters = Arc::new(Counters::default());
        Self {
            config,
            cap,
            ecap,
            ram,
            irq,
            translator: Translator::new(cap, ecap, counters.clone()),
            counters,
            state: RwLock::new(Self::initial_state(cap, ecap)),
            interrupts: InterruptRemapping::new(cap.guest_address_width()),
            inner: Mutex::new(Inner {
                regs: RegisterFile::new(&config),
                next_fault_record: 0,
                queue_busy: false,
            }),
            observers: RwLock::new(Arc::new([])),
            has_observers: AtomicBool::new(false),
            generations: GenerationLog::default(),
        }
    }

    fn initial_state(cap: Cap, ecap: Ecap) -> UnitState {
        UnitState {
            root: RtAddr::new(),
            translation_enabled: false,
            cap,
            ecap,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The capability register value.
    pub fn cap(&self) -> Cap {
        self.cap
    }
    /// The extended capability register value.
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }
    /// A copy of the counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }
    /// Registers an observer of invalidations and translation changes.
    pub fn add_observer(&self, observer: Arc<dyn InvalidationObserver>) {
        let mut list = self.observers.write().unwrap_or_else(|e| e.into_inner());
        let mut grown = list.to_vec();
        grown.push(observer);
        *list = grown.into();
        self.has_observers.store(true, Ordering::SeqCst);
    }

    fn observers(&self) -> Observers {
        if !self.has_observers.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            self.observers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    fn current_state(&self) -> UnitState {
        *self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the new translation state, then publishes a generation that makes every
    /// translation stale (the new state is in force before any device can read it).
    fn update_state(&self, f: impl FnOnce(&mut UnitState)) {
        f(&mut self.state.write().unwrap_or_else(|e| e.into_inner()));
        self.generations.publish(std::iter::empty());
    }

    /// A readable snapshot: registers, the entries of the devices `sids` (read from guest RAM
    /// as they are now) and cache occupancy (see [`crate::state`]).
    pub fn snapshot(&self, sids: &[SourceId]) -> crate::state::UnitSnapshot {
        let registers = crate::state::RegisterSnapshot::read(&lock(&self.inner).regs);
        let state = self.current_state();
        crate::state::UnitSnapshot {
            registers,
            translation_enabled: state.translation_enabled,
            latched_root_table: state.root.root_table(),
            latched_table_mode: crate::state::latched_mode(&state),
            devices: sids
                .iter()
                .map(|&sid| crate::state::device(&*self.ram, &state, sid))
                .collect(),
            caches: crate::state::CacheSnapshot {
                stats: self.translator.cache_stats(),
                iotlb_per_domain: self.translator.iotlb_per_domain(),
            },
            interrupt_remapping: self.interrupts.snapshot(),
        }
    }

    /// Drops every cached entry of the device `sid` (context, PASID and IOTLB entries), as a
    /// device-selective context-cache invalidation (§6.5.2.1) does, for a device that left the
    /// bus (hot-unplug). Observers are not told: the device and its bindings are gone.
    pub fn forget_source(&self, sid: SourceId) {
        let inv = Invalidation::ContextDevice { did: 0, sid, fm: 0 };
        self.generations
            .apply_then_publish(std::iter::once(Stale::of(&inv)), || {
                self.translator.invalidate(&inv)
            });
        debug!(target: "vtd", "forgot the cached entries of {sid:?}");
    }

    /// How many context, PASID and IOTLB entries the unit caches for the device `sid` (a live
    /// object count: zero once the device was unplugged and [`Self::forget_source`] ran).
    pub fn cached_entries_of(&self, sid: SourceId) -> usize {
        self.translator.cached_entries_of(sid)
    }

    /// Every register back to its reset value, translation off, caches flushed.
    pub fn reset(&self) {
        {
            let mut inner = lock(&self.inner);
            inner.regs.reset();
            inner.next_fault_record = 0;
            inner.queue_busy = false;
            self.update_state(|s| *s = Self::initial_state(self.cap, self.ecap));
            self.interrupts.reset();
        }
        debug!(target: "vtd", "reset");
        self.finish(Effects {
            flush_all: true,
            state_changed: true,
            interrupt_entries_changed: self.ecap.ir(),
            ..Effects::default()
        });
    }

    /// A guest read of `data.len()` bytes at `offset` in the register page. Never fails: bytes
    /// that hold no register read as 0.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.inner).regs.read(offset, data);
        trace!(target: "vtd", offset, len = data.len(), value = ?data, "register read");
    }

    /// A guest write of `data` at `offset` in the register page. Never fails; see
    /// [`crate::regs`] for the access rule and the unit docs for what each write does.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        trace!(target: "vtd", offset, len = data.len(), value = ?data, "register write");
        let mut fx = Effects::default();
        let mut guard = lock(&self.inner);
        self.write_locked(&mut guard, offset, data, &mut fx);
        if fx.only_process_queue() {
            // Nothing to carry out before the queue (an IQT write): start it under this lock.
            self.process_queue(Some(guard));
            return;
        }
        drop(guard);
        self.finish(fx);
    }

    fn write_locked(&self, inner: &mut Inner, at: u64, data: &[u8], fx: &mut Effects) {
        let regs = &mut inner.regs;
        // The range `RegisterFile::write` covers, known before it runs: the values of the
        // registers a side effect compares with are taken only if the write touches them.
        let start = at.min(REGISTER_PAGE_SIZE);
        let end = at.saturating_add(data.len() as u64).min(REGISTER_PAGE_SIZE);
        if start >= end {
            return;
        }
        let touched = |r: Register| r.touched_by(start, end);
        let layout = *regs.layout();
        let frcd_area = Register {
            offset: layout.frcd_base,
            size: 16 * layout.frcd_count as u64,
        };
        let frcd_touched = touched(frcd_area)
            && (0..layout.frcd_count).any(|i| touched(Register::r64(layout.frcd(i) + 8)));
        let gcmd = Register::r32(offset::GCMD);
        let enables =
            touched(gcmd).then(|| Self::current_enables(Gsts::from_bits(regs.get32(offset::GSTS))));
        let fsts = (touched(Register::r32(offset::FSTS)) || frcd_touched)
            .then(|| Fsts::from_bits(regs.get32(offset::FSTS)));
        let fectl = touched(Register::r32(offset::FECTL)).then(|| regs.get32(offset::FECTL));
        let iectl = touched(Register::r32(offset::IECTL)).then(|| regs.get32(offset::IECTL));
        regs.write(at, data);
        if let Some(v) = enables.and_then(|e| overlay(gcmd, e.into(), at, data)) {
            self.command(inner, Gcmd::from_bits(v as u32), fx);
        }
        let regs = &mut inner.regs;
        if touched(Register::r64(offset::CCMD)) {
            self.context_command(regs, fx);
        }
        if let Some(fsts) = fsts {
            fault::status_serviced(regs);
            if fsts.iqe() && !Fsts::from_bits(regs.get32(offset::FSTS)).iqe() {
                fx.process_queue = true;
            }
        }
        if let Some(fectl) = fectl {
            let msi = fault::control_written(regs, EventKind::Fault, fectl);
            fx.message(EventKind::Fault, msi);
        }
        if touched(Register::r64(offset::IQT)) && Gsts::from_bits(regs.get32(offset::GSTS)).qies() {
            fx.process_queue = true;
        }
        if touched(Register::r32(offset::ICS)) {
            fault::completion_serviced(regs);
        }
        if let Some(iectl) = iectl {
            let msi = fault::control_written(regs, EventKind::InvalidationCompletion, iectl);
            fx.message(EventKind::InvalidationCompletion, msi);
        }
        if touched(layout.iotlb) {
            self.iotlb_command(regs, layout.iotlb.offset, layout.iva.offset, fx);
        }
    }

    /// The GCMD value that leaves every enable as it is: bytes a narrow write does not cover
    /// take these values.
    fn current_enables(gsts: Gsts) -> u32 {
        Gcmd::new()
            .with_te(gsts.tes())
            .with_qie(gsts.qies())
            .with_ire(gsts.ires())
            .with_cfi(gsts.cfis())
            .with_eafl(gsts.afls())
            .into_bits()
    }

    /// GCMD (§10.4.4 / §11.4.4): each command updates GSTS before the write completes.
    fn command(&self, inner: &mut Inner, gcmd: Gcmd, fx: &mut Effects) {
        let regs = &mut inner.regs;
        let mut gsts = Gsts::from_bits(regs.get32(offset::GSTS));
        if gcmd.srtp() {
            let root = RtAddr::from_bits(regs.get64(offset::RTADDR));
            debug!(target: "vtd", root = format_args!("{:#x}", root.into_bits()), "set root table pointer");
            self.update_state(|s| s.root = root);
            gsts.set_rtps(true);
            fx.flush_all |= self.cap.esrtps();
            fx.state_changed = true;
        }
        if gcmd.te() != gsts.tes() {
            debug!(target: "vtd", enable = gcmd.te(), "translation enable");
            gsts.set_tes(gcmd.te());
            self.update_state(|s| s.translation_enabled = gcmd.te());
            fx.state_changed = true;
        }
        if gcmd.qie() != gsts.qies() {
            if gcmd.qie() {
                debug!(target: "vtd", "queued invalidation enabled");
                gsts.set_qies(true);
                fx.process_queue = true;
            } else {
                // Software must empty the queue first (§6.5.2). Processing is synchronous, so a
                // non-empty queue is either stopped by an error — nothing more will run, and a
                // rebooting or kexec'd driver disables QI exactly then — or being processed by
                // another vCPU right now, the only case refused.
                let (head, tail) = (regs.get64(offset::IQH), regs.get64(offset::IQT));
                let stopped = Fsts::from_bits(regs.get32(offset::FSTS)).iqe();
                if head == tail || tail == 0 || stopped {
                    debug!(target: "vtd", "queued invalidation disabled");
                    gsts.set_qies(false);
                    regs.set64(offset::IQH, 0);
                } else {
                    log_limit::limited!(warn, target: "vtd", head, tail, "QI disable refused: the queue is being processed");
                }
            }
        }
        if self.ecap.ir() {
            self.interrupt_command(regs, gcmd, &mut gsts, fx);
        }
        // WBF needs CAP.RWBF, SFL/EAFL need CAP.AFL: neither is offered, so those commands
        // are ignored and their status bits stay clear; so are SIRTP/IRE/CFI without ECAP.IR.
        regs.set32(offset::GSTS, gsts.into_bits());
    }

    /// SIRTP (one-shot: latch IRTA, GSTS.IRTPS), IRE and CFI (persistent: GSTS.IRES, CFIS)
    /// (§11.4.4, §5.1.5).
    fn interrupt_command(
        &self,
        regs: &RegisterFile,
        gcmd: Gcmd,
        gsts: &mut Gsts,
        fx: &mut Effects,
    ) {
        let before = *gsts;
        if gcmd.sirtp() {
            let irta = Irta::from_bits(regs.get64(offset::IRTA));
            debug!(target: "vtd", irta = format_args!("{:#x}", irta.into_bits()), entries = irta.entries(), eime = irta.eime(), "set interrupt remap table pointer");
            self.interrupts.latch_table(irta);
            gsts.set_irtps(true);
            fx.interrupt_entries_changed = true;
        }
        gsts.set_ires(gcmd.ire());
        gsts.set_cfis(gcmd.cfi());
        if (gsts.ires(), gsts.cfis()) != (before.ires(), before.cfis()) {
            debug!(target: "vtd", enable = gcmd.ire(), compatibility = gcmd.cfi(), "interrupt remapping enables");
            self.interrupts.set_enables(gsts.ires(), gsts.cfis());
            fx.interrupt_entries_changed = true;
        }
    }

    /// CCMD with ICC (§6.5.1.1); refused while queued invalidation is enabled.
    fn context_command(&self, regs: &mut RegisterFile, fx: &mut Effects) {
        let ccmd = Ccmd::from_bits(regs.get64(offset::CCMD));
        if !ccmd.icc() {
            return;
        }
        let result = if Gsts::from_bits(regs.get32(offset::GSTS)).qies() {
            log_limit::limited!(warn, target: "vtd", "CCMD invalidation refused: queued invalidation is enabled");
            qi::RegisterInvalidation {
                invalidation: None,
                actual: 0,
            }
        } else {
            qi::context_command(ccmd)
        };
        regs.set64(
            offset::CCMD,
            ccmd.with_icc(false).with_caig(result.actual).into_bits(),
        );
        self.register_invalidation(result, fx);
    }

    /// IOTLB register with IVT (§6.5.1.2); refused while queued invalidation is enabled.
    fn iotlb_command(&self, regs: &mut RegisterFile, at: u64, iva_at: u64, fx: &mut Effects) {
        let reg = IotlbReg::from_bits(regs.get64(at));
        if !reg.ivt() {
            return;
        }
        let result = if Gsts::from_bits(regs.get32(offset::GSTS)).qies() {
            log_limit::limited!(warn, target: "vtd", "IOTLB register invalidation refused: queued invalidation is enabled");
            qi::RegisterInvalidation {
                invalidation: None,
                actual: 0,
            }
        } else {
            qi::iotlb_command(reg, regs.get64(iva_at))
        };
        regs.set64(at, reg.with_ivt(false).with_iaig(result.actual).into_bits());
        self.register_invalidation(result, fx);
    }

    fn register_invalidation(&self, result: qi::RegisterInvalidation, fx: &mut Effects) {
        if let Some(inv) = result.invalidation {
            debug!(target: "vtd", ?inv, "register-based invalidation");
            Counters::bump(&self.counters.register_invalidations);
            fx.invalidations.push(inv);
            fx.submission_done = true;
        }
    }

    /// Carries out what was decided under the mutex; no lock is held here.
    fn finish(&self, fx: Effects) {
        if fx.flush_all {
            self.generations
                .apply_then_publish(std::iter::empty(), || self.translator.flush_all());
        }
        let observers = OnceCell::new();
        self.dispatch(&fx.invalidations, &observers);
        if fx.interrupt_entries_changed {
            self.interrupt_entries_changed(&observers);
        }
        if (fx.submission_done || fx.state_changed)
            && let Some(observers) = observers.get_or_init(|| self.observers())
        {
            if fx.state_changed {
                for o in observers.iter() {
                    o.root_or_translation_changed(self);
                }
            }
            if fx.submission_done {
                for o in observers.iter() {
                    o.submission_done(self);
                }
            }
        }
        self.deliver(&fx.messages);
        if fx.process_queue {
            self.process_queue(None);
        }
    }

    /// The one place invalidations are applied: the translator's caches, then every observer
    /// (`observers` is filled with a snapshot if it is still empty).
    fn dispatch(&self, invalidations: &Batch, observers: &OnceCell<Observers>) {
        if invalidations.is_empty() {
            return;
        }
        self.generations
            .apply_then_publish(invalidations.iter().map(Stale::of), || {
                for inv in invalidations.iter() {
                    self.translator.invalidate(inv);
                }
            });
        if let Some(observers) = observers.get_or_init(|| self.observers()) {
            for inv in invalidations.iter() {
                for o in observers.iter() {
                    o.invalidated(self, inv);
                }
            }
        }
    }

    /// Tells every observer that interrupt remapping changed.
    fn interrupt_entries_changed(&self, observers: &OnceCell<Observers>) {
        if let Some(observers) = observers.get_or_init(|| self.observers()) {
            for o in observers.iter() {
                o.interrupt_entries_changed();
            }
        }
    }

    fn deliver(&self, messages: &[(EventKind, Msi)]) {
        for (kind, msi) in messages {
            if *kind == EventKind::Fault {
                Counters::bump(&self.counters.fault_events);
            }
            debug!(target: "vtd", ?kind, address = format_args!("{:#x}", msi.address), data = msi.data, "event interrupt");
            self.irq.deliver(msi.address, msi.data);
        }
    }

    /// Processes the invalidation queue from IQH to IQT (see the module docs). `held` is the
    /// register mutex when the caller already holds it; the first segment runs under it.
    fn process_queue(&self, held: Option<MutexGuard<'_, Inner>>) {
        let mut held = held.unwrap_or_else(|| lock(&self.inner));
        if held.queue_busy {
            return;
        }
        held.queue_busy = true;
        let mut held = Some(held);
        let mut budget = QUEUE_BUDGET;
        let mut pending_wait: Option<SegmentEnd> = None;
        let mut processed = 0u64;
        let mut unflushed = false;
        // One snapshot of the observers for the whole call, taken when first needed.
        let observers = OnceCell::new();
        let mut fx = Effects::default();
        loop {
            fx.invalidations.clear();
            fx.messages.clear();
            fx.interrupt_entries_changed = false;
            let end = {
                let mut inner = held.take().unwrap_or_else(|| lock(&self.inner));
                let end = self.segment(&mut inner, pending_wait.take(), &mut budget, &mut fx);
                if matches!(end, SegmentEnd::Done) {
                    inner.queue_busy = false;
                }
                end
            };
            processed += fx.invalidations.len() as u64;
            unflushed |= !fx.invalidations.is_empty();
            self.dispatch(&fx.invalidations, &observers);
            if fx.interrupt_entries_changed {
                self.interrupt_entries_changed(&observers);
            }
            self.deliver(&fx.messages);
            match end {
                SegmentEnd::Done => break,
                wait => {
                    // The batch before a wait is complete: observers flush what they forward
                    // (e.g. to the host IOMMU) before the wait's status word is written.
                    if unflushed {
                        self.submission_done(&observers);
                        unflushed = false;
                    }
                    processed += 1;
                    pending_wait = Some(wait);
                }
            }
        }
        if processed > 0 || budget < QUEUE_BUDGET {
            Counters::bump(&self.counters.qi_submissions);
        }
        if unflushed {
            self.submission_done(&observers);
        }
    }

    /// Tells every observer that a batch of invalidations is complete.
    fn submission_done(&self, observers: &OnceCell<Observers>) {
        if let Some(observers) = observers.get_or_init(|| self.observers()) {
            for o in observers.iter() {
                o.submission_done(self);
            }
        }
    }

    /// Stops the queue with IQE: IQH stays at the offending descriptor (§6.5.2.10).
    fn queue_error(
        &self,
        regs: &mut RegisterFile,
        slot: Option<(Queue, u64)>,
        why: IqeInfo,
        fx: &mut Effects,
    ) {
        log_limit::limited!(warn, target: "vtd", ?why, slot = slot.map(|s| s.1), "invalidation queue error");
        Counters::bump(&self.counters.qi_errors);
        if let Some((queue, slot)) = slot {
            regs.set64(offset::IQH, queue.pointer(slot));
        }
        let rec = Iqercd::from_bits(regs.get64(offset::IQERCD)).with_iqei(why.code());
        regs.set64(offset::IQERCD, rec.into_bits());
        let msi = fault::set_status(regs, Fsts::new().with_iqe(true).into_bits());
        fx.message(EventKind::Fault, msi);
    }

    /// One locked step: finish the wait left by the previous segment, then fetch and check
    /// descriptors up to the next wait that follows an invalidation.
    fn segment(
        &self,
        inner: &mut Inner,
        pending: Option<SegmentEnd>,
        budget: &mut u64,
        fx: &mut Effects,
    ) -> SegmentEnd {
        let regs = &mut inner.regs;
        let gsts = Gsts::from_bits(regs.get32(offset::GSTS));
        if !gsts.qies() || Fsts::from_bits(regs.get32(offset::FSTS)).iqe() {
            return SegmentEnd::Done;
        }
        let queue = Queue::of(Iqa::from_bits(regs.get64(offset::IQA)));
        if let Some(SegmentEnd::Wait {
            slot,
            status,
            interrupt,
        }) = pending
            && !self.complete_wait(regs, queue, slot, status, interrupt, fx)
        {
            return SegmentEnd::Done;
        }
        let tail_reg = regs.get64(offset::IQT);
        if queue.wide && tail_reg & 0x10 != 0 {
            self.queue_error(regs, None, IqeInfo::TailMisaligned, fx);
            return SegmentEnd::Done;
        }
        let tail = queue.slot(tail_reg);
        let mut head = queue.slot(regs.get64(offset::IQH));
        if tail >= queue.entries || head >= queue.entries {
            self.queue_error(regs, None, IqeInfo::InvalidTail, fx);
            return SegmentEnd::Done;
        }
        let features = QueueFeatures::from_ecap(self.ecap);
        while head != tail {
            if *budget == 0 {
                return SegmentEnd::Done;
            }
            *budget -= 1;
            let words = if queue.wide { 4 } else { 2 };
            let mut q = [0u64; 4];
            let at = queue.base.wrapping_add(head * 8 * words as u64);
            if self.ram.read_u64s(at, &mut q[..words]).is_err() {
                self.queue_error(regs, Some((queue, head)), IqeInfo::FetchFailed, fx);
                return SegmentEnd::Done;
            }
            let desc = Descriptor::decode(q);
            trace!(target: "vtd", desc = qi::name(&desc), q0 = format_args!("{:#x}", q[0]), q1 = format_args!("{:#x}", q[1]), slot = head, "queued invalidation");
            let action = match qi::interpret_decoded(desc, q, queue.wide, features) {
                Ok(a) => a,
                Err(why) => {
                    self.queue_error(regs, Some((queue, head)), why, fx);
                    return SegmentEnd::Done;
                }
            };
            if let Some(c) = qi::counter_for(&self.counters, &desc) {
                Counters::bump(c);
            }
            match action {
                Action::Invalidate(inv) => fx.invalidations.push(inv),
                Action::InvalidateInterruptEntries(scope) => {
                    // Applied now (the interrupt-remapping mutex nests inside this one); the
                    // observers hear of it before the next wait completes.
                    let counter = match scope {
                        IecScope::Global => &self.counters.iec_global,
                        IecScope::Index { .. } => &self.counters.iec_selective,
                    };
                    Counters::bump(counter);
                    self.interrupts.invalidate(scope);
                    fx.interrupt_entries_changed = true;
                }
                Action::Nothing => {}
                Action::Wait { status, interrupt } => {
                    if !fx.invalidations.is_empty() || fx.interrupt_entries_changed {
                        return SegmentEnd::Wait {
                            slot: head,
                            status,
                            interrupt,
                        };
                    }
                    if !self.complete_wait(regs, queue, head, status, interrupt, fx) {
                        return SegmentEnd::Done;
                    }
                }
            }
            head = (head + 1) % queue.entries;
            regs.set64(offset::IQH, queue.pointer(head));
        }
        SegmentEnd::Done
    }

    /// Carries out a wait descriptor at `slot` and moves IQH past it. A status address outside
    /// guest RAM stops the queue (IQE, fetch/access error). Returns whether the queue goes on.
    fn complete_wait(
        &self,
        regs: &mut RegisterFile,
        queue: Queue,
        slot: u64,
        status: Option<(u64, u32)>,
        interrupt: bool,
        fx: &mut Effects,
    ) -> bool {
        if let Some((address, data)) = status
            && self.ram.write_u32(address, data).is_err()
        {
            self.queue_error(regs, Some((queue, slot)), IqeInfo::FetchFailed, fx);
            return false;
        }
        if interrupt {
            let msi = fault::wait_completed(regs);
            fx.message(EventKind::InvalidationCompletion, msi);
        }
        regs.set64(offset::IQH, queue.pointer((slot + 1) % queue.entries));
        true
    }

    /// What becomes of the interrupt request `data` at `address` from `sid` (a device's MSI,
    /// or an IOAPIC message): with interrupt remapping enabled (GSTS.IRES) it is translated
    /// through the interrupt remapping table into a compatibility-format message, or blocked
    /// with its fault recorded (unless the IRTE has FPD) and the fault event raised; with it
    /// disabled the request comes back unchanged. See [`InterruptOutcome`] for the message
    /// layout and `interrupt_remap` for the checks.
    pub fn remap_interrupt(&self, sid: SourceId, address: u64, data: u32) -> InterruptOutcome {
        match self.interrupts.remap(&*self.ram, sid, address, data) {
            Ok(passed) => {
                if passed.remapped {
                    Counters::bump(&self.counters.interrupts_remapped);
                    trace!(target: "vtd", %sid, from = format_args!("{address:#x}/{data:#x}"), to = format_args!("{:#x}/{:#x}", passed.address, passed.data), "interrupt remapped");
                }
                InterruptOutcome::Deliver {
                    address: passed.address,
                    data: passed.data,
                }
            }
            Err(f) => {
                Counters::bump(&self.counters.interrupts_blocked);
                Counters::bump(&self.counters.interrupt_faults);
                self.report_fault(&Fault::interrupt(f.reason, sid, f.index, f.fpd));
                InterruptOutcome::Blocked
            }
        }
    }

    /// Records a fault as the spec says (unless FPD), and sends the fault event.
    fn report_fault(&self, fault: &Fault) {
        Counters::bump(&self.counters.faults);
        if fault.fpd {
            debug!(target: "vtd", ?fault, "fault not recorded: fault processing disabled");
            return;
        }
        let (recorded, msi) = {
            let mut guard = lock(&self.inner);
            let inner = &mut *guard;
            fault::record(&mut inner.regs, &mut inner.next_fault_record, fault)
        };
        match recorded {
            Recorded::At(index) => {
                Counters::bump(&self.counters.faults_recorded);
                debug!(target: "vtd", sid = %fault.sid, pasid = ?fault.pasid, iova = format_args!("{:#x}", fault.iova), reason = %fault.reason, index, "fault recorded");
            }
            Recorded::Collapsed(index) => {
                trace!(target: "vtd", index, "fault identical to a pending record");
            }
            Recorded::Overflow => {
                log_limit::limited!(warn, target: "vtd", sid = %fault.sid, reason = %fault.reason, "fault dropped: recording registers full (PFO)");
            }
        }
        if let Some(m) = msi {
            self.deliver(&[(EventKind::Fault, m)]);
        }
    }
}

/// The unit's counters, under the model's own names (e.g. `translations`).
impl counter_set::CounterSource for Vtd {
    fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        self.counters.visit(f);
    }
}

impl Remapper for Vtd {
    fn remap(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.remap_nearby(req, &mut |_| {})
    }

    fn remap_nearby(
        &self,
        req: &DmaRequest,
        nearby: &mut dyn FnMut(Translation),
    ) -> Result<Translation, Fault> {
        let state = self.current_state();
        if req.pasid.is_some() || !state.translation_enabled {
            return self
                .translator
                .translate_nearby(&*self.ram, &state, req, nearby)
                .inspect_err(|fault| self.report_fault(fault));
        }
        // Without PASID: the interrupt range is not DMA, and nothing handed out covers it.
        if interrupt_range::is_interrupt_request(req) {
            let fault = interrupt_range::fault(req, state.root.ttm());
            self.report_fault(&fault);
            return Err(fault);
        }
        let mut outside = |t: Translation| {
            if !interrupt_range::covers_range(&t) {
                nearby(t);
            }
        };
        self.translator
            .translate_nearby(&*self.ram, &state, req, &mut outside)
            .map(|t| interrupt_range::outside_range(t, req.iova))
            .inspect_err(|fault| self.report_fault(fault))
    }

    fn interrupt(&self, sid: SourceId, address: u64, data: u32) -> bool {
        let Some((address, data)) = interrupt_range::message(address, data) else {
            return false;
        };
        match self.remap_interrupt(sid, address, data) {
            InterruptOutcome::Deliver { address, data } => {
                debug!(target: "vtd", %sid, address = format_args!("{address:#x}"), data = format_args!("{data:#x}"), "interrupt request");
                self.irq.deliver(address, data);
            }
            InterruptOutcome::Blocked => {
                debug!(target: "vtd", %sid, "interrupt request blocked");
            }
        }
        true
    }
}

/// The generation grows after the unit applied any invalidation or cache flush, and after any
/// change of its translation state (root table, TE, reset), and before the guest can see any
/// of them complete (a wait descriptor's status, a register's ready bit): that is how a
/// per-device cache outside the unit (`iommu::DeviceIommu`) follows the guest's invalidations
/// without a hook of its own (the protocol: `generation_log`).
impl Generations for Vtd {
    fn generation(&self) -> u64 {
        self.generations.current()
    }

    fn stale_between(&self, from: u64, to: u64, stale: &mut dyn FnMut(Stale)) -> bool {
        self.generations.stale_between(from, to, stale)
    }
}

impl UnitView for Vtd {
    fn state(&self) -> UnitState {
        self.current_state()
    }
    fn read_pasid_entry(&self, sid: SourceId, pasid: u32) -> Result<PasidEntry, Fault> {
        let state = self.current_state();
        self.translator
            .read_pasid_entry(&*self.ram, &state, sid, pasid)
    }
    fn device_tables(&self, sid: SourceId) -> crate::translate::shadow_view::DeviceTables {
        let state = self.current_state();
        crate::translate::shadow_view::device_tables(&*self.ram, &state, sid)
    }
    fn walk_second_stage(
        &self,
        tables: &crate::translate::shadow_view::SecondStageTables,
        start: u64,
        end: u64,
        budget: u64,
        visit: &mut dyn FnMut(crate::translate::shadow_view::SsRangeLeaf),
    ) -> crate::translate::shadow_view::SsRangeWalk {
        tables.walk(&*self.ram, start, end, budget, visit)
    }
}

impl std::fmt::Debug for Vtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vtd")
            .field("config", &self.config)
            .field("state", &self.current_state())
            .finish_non_exhaustive()
    }
}
