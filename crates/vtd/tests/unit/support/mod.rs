//! Shared helpers of the `unit_*` integration tests: guest RAM, a recording interrupt sink and
//! a recording observer, register accessors and a queue driver.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use test_fixtures::RAM_SIZE;
use test_fixtures::descriptors::write_queue;
pub use test_fixtures::descriptors::{
    context_cache, iec_global, iec_index, iotlb, pasid_cache, piotlb, wait_interrupt,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd::FaultInterrupt;
use vtd::GuestRam;
use vtd::Vtd;
use vtd::config::Config;
use vtd::invalidation::Invalidation;
use vtd::observer::{InvalidationObserver, UnitView};
use vtd_spec::regs::offset;

/// Where tests put the invalidation queue (above the table and data areas).
pub const QUEUE: u64 = 0x300_0000;
/// Where tests put wait status words.
pub const STATUS: u64 = 0x380_0000;

/// Interrupts sent by the unit.
#[derive(Default)]
pub struct Irqs(pub Mutex<Vec<(u64, u32)>>);

impl FaultInterrupt for Irqs {
    fn deliver(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

impl Irqs {
    /// Takes the messages sent so far.
    pub fn take(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// One observer callback.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// `invalidated`, with the status word at [`STATUS`] at that moment.
    Invalidated(Invalidation, u32),
    /// `submission_done`.
    SubmissionDone,
    /// `root_or_translation_changed`, with the root pointer and TE then.
    Changed(u64, bool),
    /// `interrupt_entries_changed`, with the status word at [`STATUS`] at that moment.
    InterruptEntries(u32),
}

/// Records every observer call.
pub struct Recorder {
    /// The calls, in order.
    pub seen: Mutex<Vec<Seen>>,
    /// The status words at `STATUS` and `STATUS + 4` at each `submission_done`.
    pub done_status: Mutex<Vec<(u32, u32)>>,
    ram: Arc<GuestMemoryMmap<()>>,
}

impl Recorder {
    /// Takes the calls recorded so far.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
    /// Only the invalidations recorded so far.
    pub fn invalidations(&self) -> Vec<Invalidation> {
        self.take()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Invalidated(i, _) => Some(i),
                _ => None,
            })
            .collect()
    }
}

impl InvalidationObserver for Recorder {
    fn invalidated(&self, _unit: &dyn UnitView, inv: &Invalidation) {
        let mut b = [0u8; 4];
        self.ram.read_at(STATUS, &mut b).unwrap();
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Invalidated(*inv, u32::from_le_bytes(b)));
    }
    fn submission_done(&self, _unit: &dyn UnitView) {
        let word = |at| {
            let mut b = [0u8; 4];
            self.ram.read_at(at, &mut b).unwrap();
            u32::from_le_bytes(b)
        };
        let status = (word(STATUS), word(STATUS + 4));
        self.done_status.lock().unwrap().push(status);
        self.seen.lock().unwrap().push(Seen::SubmissionDone);
    }
    fn interrupt_entries_changed(&self) {
        let mut b = [0u8; 4];
        self.ram.read_at(STATUS, &mut b).unwrap();
        self.seen
            .lock()
            .unwrap()
            .push(Seen::InterruptEntries(u32::from_le_bytes(b)));
    }
    fn root_or_translation_changed(&self, unit: &dyn UnitView) {
        let s = unit.state();
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Changed(s.root.into_bits(), s.translation_enabled));
    }
}

/// A unit with its RAM, interrupt sink and a registered recorder.
pub struct Rig {
    /// The unit (shared, so tests can use it from several threads).
    pub vtd: Arc<Vtd>,
    /// Its guest RAM.
    pub ram: Arc<GuestMemoryMmap<()>>,
    /// Its interrupt sink.
    pub irqs: Arc<Irqs>,
    /// The observer.
    pub rec: Arc<Recorder>,
    /// Next free queue slot.
    pub tail: u64,
}

impl Rig {
    /// A unit with `options` (see `Config::parse`).
    pub fn new(options: &str) -> Self {
        Self::with_ram(
            options,
            Arc::new(
                GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
                    .unwrap(),
            ),
        )
    }

    /// A unit with `options` over existing guest RAM.
    pub fn with_ram(options: &str, ram: Arc<GuestMemoryMmap<()>>) -> Self {
        let irqs = Arc::new(Irqs::default());
        let vtd = Arc::new(Vtd::new(
            Config::parse(options).unwrap(),
            ram.clone(),
            irqs.clone(),
        ));
        let rec = Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            done_status: Mutex::new(Vec::new()),
            ram: ram.clone(),
        });
        vtd.add_observer(rec.clone());
        Self {
            vtd,
            ram,
            irqs,
            rec,
            tail: 0,
        }
    }

    /// The project's configuration: scalable mode, first stage.
    pub fn first_stage() -> Self {
        Self::new("x-scalable-mode=on,x-flts=on")
    }

    /// 32-bit read.
    pub fn r32(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.vtd.mmio_read(at, &mut b);
        u32::from_le_bytes(b)
    }
    /// 64-bit read.
    pub fn r64(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.vtd.mmio_read(at, &mut b);
        u64::from_le_bytes(b)
    }
    /// 32-bit write.
    pub fn w32(&self, at: u64, v: u32) {
        self.vtd.mmio_write(at, &v.to_le_bytes());
    }
    /// 64-bit write.
    pub fn w64(&self, at: u64, v: u64) {
        self.vtd.mmio_write(at, &v.to_le_bytes());
    }

    /// Sets a GCMD enable (`bit`) the way Linux does: current enables from GSTS plus the bit.
    pub fn command(&self, bit: u32) {
        let enables = self.r32(offset::GSTS) & 0x8680_0000; // TES, QIES, IRES, CFIS
        self.w32(offset::GCMD, enables | bit);
    }

    /// Programs IQA (`qs`, 256-bit when `wide`), IQT = 0 and enables QI, as Linux does.
    pub fn enable_qi(&mut self, wide: bool, qs: u64) {
        self.w32(offset::IQT, 0);
        self.w64(offset::IQA, QUEUE | (u64::from(wide) << 11) | qs);
        self.command(1 << 26);
        self.tail = 0;
        assert_ne!(self.r32(offset::GSTS) & (1 << 26), 0, "QIES");
    }

    fn wide(&self) -> bool {
        self.r64(offset::IQA) & (1 << 11) != 0
    }
    fn entries(&self) -> u64 {
        let iqa = self.r64(offset::IQA);
        (4096 << (iqa & 7)) / if self.wide() { 32 } else { 16 }
    }

    /// Writes descriptors at the tail (wrapping) without moving IQT.
    pub fn put(&mut self, descs: &[[u64; 4]]) {
        let (entries, wide) = (self.entries(), self.wide());
        self.tail = write_queue(&self.ram, QUEUE, self.tail, entries, wide, descs);
    }

    /// Writes descriptors and moves IQT past them (one submission).
    pub fn submit(&mut self, descs: &[[u64; 4]]) {
        self.put(descs);
        let shift = if self.wide() { 5 } else { 4 };
        self.w32(offset::IQT, (self.tail << shift) as u32);
    }

    /// The queue head as a slot index.
    pub fn head(&self) -> u64 {
        self.r64(offset::IQH) >> if self.wide() { 5 } else { 4 }
    }

    /// Points RTADDR at `rtaddr`, latches it (SRTP) and enables translation, as Linux does.
    pub fn enable_translation(&self, rtaddr: u64) {
        self.w64(offset::RTADDR, rtaddr);
        self.command(1 << 30);
        self.command(1 << 31);
    }

    /// The status word at `STATUS + 4 * i`.
    pub fn status(&self, i: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ram.read_at(STATUS + 4 * i, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
}

/// A wait descriptor with SW writing `data` at `STATUS + 4 * i`.
pub fn wait(i: u64, data: u32) -> [u64; 4] {
    test_fixtures::descriptors::wait(STATUS + 4 * i, data)
}
