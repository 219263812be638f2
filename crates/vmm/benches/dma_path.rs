//! The emulated-DMA path per virtio-blk request, natively: N 4 KiB reads through the real
//! `devices` virtio-blk code ([`devices::virtio::block::service_queue`], one pass per request,
//! as the I/O thread makes for a queue-depth-1 `dd iflag=direct`) over three memories:
//!
//! ```text
//!  plain    GuestMemoryMmap                                   (the `off` row)
//!  vtd      vmm::iommu::TranslatedMemory (DmaMemory over DeviceDma) ─► vtd::Vtd  (lazy row)
//!  vtd-strict  the same, the guest in strict mode                          (strict row)
//!  sim      DmaMemory<GuestMemoryMmap, HostTranslation> ─► host_iommu::sim    (assigned row)
//! ```
//!
//! The guest side is a small model of Linux (scalable mode, first-stage tables, `dma-iommu`):
//! the rings are mapped once (coherent), every request maps its indirect descriptor table,
//! header, data and status buffers at fresh IOVAs (top-down), unmaps them when it completes, and, in lazy mode, sends
//! one PASID-selective PASID-IOTLB invalidation (+ wait) per 256 unmaps; in strict mode one
//! page-selective PASID-IOTLB invalidation (IH=1, + wait) per unmap, as Linux's
//! `intel_iommu_tlb_sync` does.
//!
//! `cargo bench -p vmm --bench dma_path` runs criterion (time per request). For instruction
//! counts, run the bench binary under callgrind with `DMA_PATH=<plain|vtd|vtd-strict|sim>:<requests>`:
//! it sets up, runs that many requests once and exits; collect only the device side with
//! `--toggle-collect='*device_pass*'`; `crates/vmm/benches/dma-path-callgrind` does both and
//! prints instructions per request.
//!
//! `DMA_PATH=<path>:<requests>:cold` also times the device pass and each IQT write, and before
//! each of them switches to another process and back (a pipe round trip to a child), so that
//! each starts as it does in a VMM after a VM exit: with the TLB (and, under QEMU TCG, the
//! emulated TLB and its translated-code lookup cache) flushed by the address-space switch.
//! `:warm` times them the same way without the switch.

use std::io::Write;
use std::sync::Arc;

use criterion::Criterion;
use devices::virtio::block::request::Disk;
use devices::virtio::block::{BlockCounters, service_queue};
use test_fixtures::Mem;
use test_fixtures::descriptors::{
    context_cache_global, iotlb_global, pasid_cache_global, pasid_cache_pasid, piotlb_page,
    piotlb_pasid, wait, write_queue,
};
use test_fixtures::tables::{PageTable, Stage, Tables, fs_entry};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm::counters::CounterSource;
use vmm::iommu::TranslatedMemory;
use vtd::Vtd;
use vtd_spec::SourceId;
use vtd_spec::regs::offset;

const RAM: u64 = 64 << 20;
const QUEUE_SIZE: u16 = 256;
/// Requests whose buffers are in flight at once in the model (buffer slots).
const SLOTS: u64 = 64;
/// Guest-physical placement: page-table pages, rings, request buffers.
const TABLES_GPA: u64 = 1 << 20;
const RING_GPA: u64 = 16 << 20;
const BUFFERS_GPA: u64 = 20 << 20;
/// IOVAs: the top-down window the rings (first) and per-request buffers are mapped in.
const IOVA_TOP: u64 = 0xffff_f000;
const IOVA_PAGES: u64 = 4096;
/// Lazy mode: one PASID-selective invalidation per this many unmaps (Linux's flush queue).
const FLUSH_EVERY: u64 = 256;
const DISK_SECTORS: u64 = 8192;
const SID: SourceId = SourceId::new(0, 3, 0);
const DID: u16 = 1;

const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_QIE: u32 = 1 << 26;

struct NoIrq;
impl vtd::FaultInterrupt for NoIrq {
    fn deliver(&self, _address: u64, _data: u32) {}
}

/// Which memory the device sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Plain,
    Vtd,
    VtdStrict,
    Sim,
}

impl Path {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(Path::Plain),
            "vtd" => Some(Path::Vtd),
            "vtd-strict" => Some(Path::VtdStrict),
            "sim" => Some(Path::Sim),
            _ => None,
        }
    }
}

/// Timing of the device pass and the IQT writes (`:cold` / `:warm`): sums and counts.
#[derive(Default)]
struct Timing {
    /// A child process to switch to before each timed step (cold), else none (warm).
    partner: Option<Partner>,
    device_ns: u128,
    device_passes: u64,
    iqt_ns: u128,
    iqt_writes: u64,
}

/// The other end of the address-space switch: a child echoing bytes through pipes.
struct Partner {
    child: std::process::Child,
}

impl Partner {
    fn spawn() -> Self {
        let child = std::process::Command::new(std::env::current_exe().expect("own path"))
            .env("DMA_PATH_ECHO", "1")
            .env_remove("DMA_PATH")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("echo child");
        Partner { child }
    }

    /// One round trip: this process blocks until the child (another address space) answered.
    fn switch(&mut self) {
        use std::io::Read;
        let byte = [1u8];
        self.child
            .stdin
            .as_mut()
            .expect("pipe")
            .write_all(&byte)
            .expect("echo");
        let mut back = [0u8];
        self.child
            .stdout
            .as_mut()
            .expect("pipe")
            .read_exact(&mut back)
            .expect("echo");
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The child's side of [`Partner`]: echoes until its input closes.
fn echo() {
    use std::io::Read;
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut byte = [0u8];
    while input.read_exact(&mut byte).is_ok() {
        if output
            .write_all(&byte)
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
}

impl Timing {
    /// Runs `f` timed, after the switch when cold.
    fn time<T>(&mut self, iqt: bool, f: impl FnOnce() -> T) -> T {
        if let Some(partner) = self.partner.as_mut() {
            partner.switch();
        }
        let start = std::time::Instant::now();
        let value = f();
        let ns = start.elapsed().as_nanos();
        if iqt {
            self.iqt_ns += ns;
            self.iqt_writes += 1;
        } else {
            self.device_ns += ns;
            self.device_passes += 1;
        }
        value
    }
}

/// The Linux-like guest: its RAM, its vIOMMU and its page-table, queue and IOVA state.
struct Guest {
    /// Guest RAM and the allocator of the driver's table pages (below the rings).
    mem: Mem,
    unit: Arc<Vtd>,
    translated: bool,
    pgtbl: u64,
    iq: u64,
    tail: u64,
    status: u64,
    gcmd: u32,
    next_iova: u64,
    /// Where the per-request window starts (below the coherent ring mappings).
    window_top: u64,
    unmaps: u64,
    /// Strict mode: invalidate every unmapped page at once.
    strict: bool,
    /// Set by `:cold` / `:warm`: the device passes and IQT writes are timed.
    timing: Option<Timing>,
}

impl Guest {
    fn new(ram: &GuestMemoryMmap, options: &str, translated: bool) -> Self {
        let config = vtd::Config::parse(options).expect("options");
        let unit = Arc::new(Vtd::new(config, Arc::new(ram.clone()), Arc::new(NoIrq)));
        Guest {
            mem: Mem::over(Arc::new(ram.clone()), TABLES_GPA..RING_GPA),
            unit,
            translated,
            pgtbl: 0,
            iq: 0,
            tail: 0,
            status: 0,
            gcmd: 0,
            next_iova: IOVA_TOP,
            window_top: IOVA_TOP,
            unmaps: 0,
            strict: false,
            timing: None,
        }
    }

    fn page(&mut self) -> u64 {
        self.mem.page()
    }
    fn w64(&self, gpa: u64, v: u64) {
        self.mem.w64(gpa, v);
    }
    fn r64(&self, gpa: u64) -> u64 {
        self.mem.r64(gpa)
    }
    fn w32_reg(&self, off: u64, v: u32) {
        self.unit.mmio_write(off, &v.to_le_bytes());
    }
    fn command(&mut self, bit: u32, persistent: bool) {
        self.w32_reg(offset::GCMD, self.gcmd | bit);
        if persistent {
            self.gcmd |= bit;
        }
    }

    /// One invalidation submission: `descs` plus a wait descriptor, one IQT write.
    fn submit(&mut self, descs: &[[u64; 4]]) {
        self.w64(self.status, 0);
        let all: Vec<_> = descs
            .iter()
            .copied()
            .chain([wait(self.status, 2)])
            .collect();
        self.tail = write_queue(&self.mem.ram, self.iq, self.tail, 128, true, &all);
        let tail = (self.tail * 32) as u32;
        match self.timing.as_mut() {
            Some(timing) => timing.time(true, || {
                self.unit.mmio_write(offset::IQT, &tail.to_le_bytes())
            }),
            None => self.w32_reg(offset::IQT, tail),
        }
        assert_eq!(self.r64(self.status), 2, "wait descriptor completed");
    }

    /// `init_dmars` + attaching the device to a first-stage DMA domain (PASID 0, DID 1).
    fn boot(&mut self) {
        let root = self.page();
        self.iq = self.page();
        self.status = self.page();
        self.pgtbl = self.page();
        self.unit
            .mmio_write(offset::RTADDR, &(root | (1 << 10)).to_le_bytes());
        self.command(GCMD_SRTP, false);
        self.w32_reg(offset::IQT, 0);
        self.unit
            .mmio_write(offset::IQA, &(self.iq | (1 << 11)).to_le_bytes());
        self.command(GCMD_QIE, true);
        self.submit(&[context_cache_global()]);
        self.submit(&[pasid_cache_global()]);
        self.submit(&[iotlb_global()]);
        // Context entry → PASID directory (PDTS 2) → PASID table; entry 0 first-stage.
        let tables = Tables {
            mem: &self.mem,
            root,
            scalable: true,
        };
        let mut entry = fs_entry(&self.page_table(), DID);
        entry.qw1 = entry.qw1.with_pwsnp(true);
        tables.device_pasid_entry(SID, 0, entry);
        self.command(GCMD_TE, true);
        self.submit(&[pasid_cache_pasid(DID, 0), piotlb_pasid(DID, 0)]);
    }

    /// The device's 4-level first-stage table.
    fn page_table(&self) -> PageTable {
        PageTable {
            root: self.pgtbl,
            levels: 4,
            stage: Stage::First,
        }
    }

    /// `iommu_dma_map_page`: a fresh IOVA page for `gpa` (its offset kept); identity when the
    /// device is not translated.
    fn map(&mut self, gpa: u64, writable: bool) -> u64 {
        if !self.translated {
            return gpa;
        }
        let iova = self.next_iova;
        self.next_iova -= 4096;
        if self.next_iova <= self.window_top - IOVA_PAGES * 4096 {
            self.next_iova = self.window_top;
        }
        self.page_table()
            .map_like_linux(&self.mem, iova, gpa, writable);
        iova | (gpa & 0xfff)
    }

    /// `iommu_dma_unmap_page` in lazy mode: clear the PTE, queue the IOVA; flush per 256.
    fn unmap(&mut self, iova: u64) {
        if !self.translated {
            return;
        }
        let pte = self.page_table().entry_addr(&self.mem, iova, 1);
        self.w64(pte, 0);
        self.unmaps += 1;
        if self.strict {
            self.submit(&[piotlb_page(DID, 0, iova, 0, true)]);
        } else if self.unmaps.is_multiple_of(FLUSH_EVERY) {
            self.submit(&[piotlb_pasid(DID, 0)]);
        }
    }
}

/// One device with its queue and disk, and the driver state that feeds it.
struct Rig<M> {
    guest: Guest,
    memory: M,
    queue: Queue,
    disk: Disk,
    counters: BlockCounters,
    avail: u16,
    requests: u64,
}

fn disk() -> Disk {
    let path = std::env::temp_dir().join(format!("vtd-nest-dma-path-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("temp disk");
    let _ = std::fs::remove_file(&path);
    file.write_all(&vec![0x5a; (DISK_SECTORS * 512) as usize])
        .expect("temp disk");
    Disk {
        file,
        sectors: DISK_SECTORS,
        read_only: false,
        serial: [0; 20],
    }
}

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("guest RAM")
}

impl<M: GuestMemory> Rig<M> {
    fn new(mut guest: Guest, memory: M) -> Self {
        let desc = guest.map(RING_GPA, true);
        let avail = guest.map(RING_GPA + 0x1000, true);
        let used = guest.map(RING_GPA + 0x2000, true);
        guest.map(RING_GPA + 0x3000, true);
        guest.window_top = guest.next_iova;
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue.set_event_idx(true);
        queue.set_ready(true);
        assert!(queue.is_valid(&memory), "queue valid");
        Rig {
            guest,
            memory,
            queue,
            disk: disk(),
            counters: BlockCounters::default(),
            avail: 0,
            requests: 0,
        }
    }

    /// The driver queues one 4 KiB read (header, data, status at fresh IOVAs), the device
    /// services the queue, the driver unmaps the buffers.
    fn request(&mut self) {
        let slot = self.requests % SLOTS;
        let buffers = BUFFERS_GPA + slot * 0x3000;
        let sector = (self.requests * 8) % DISK_SECTORS;
        let header = [
            0u32.to_le_bytes(), // VIRTIO_BLK_T_IN
            0u32.to_le_bytes(),
            (sector as u32).to_le_bytes(),
            ((sector >> 32) as u32).to_le_bytes(),
        ]
        .concat();
        let ram = self.guest.mem.ram.clone();
        ram.write_slice(&header, GuestAddress(buffers))
            .expect("ram");
        let h = self.guest.map(buffers, false);
        let d = self.guest.map(buffers + 0x1000, true);
        let s = self.guest.map(buffers + 0x2000, true);
        // Linux's virtio_ring puts a multi-buffer request in an indirect table (kmalloc'd,
        // mapped DMA_TO_DEVICE at its own IOVA), one ring descriptor pointing at it.
        let table_gpa = BUFFERS_GPA + SLOTS * 0x3000 + slot * 0x1000;
        let descriptors = [(h, 16u32, 1u16, 1u16), (d, 4096, 1 | 2, 2), (s, 1, 2, 0)];
        for (i, (addr, len, flags, next)) in descriptors.into_iter().enumerate() {
            write_descriptor(&ram, table_gpa + 16 * i as u64, addr, len, flags, next);
        }
        let table = self.guest.map(table_gpa, false);
        let head = slot as u16;
        write_descriptor(&ram, RING_GPA + 16 * u64::from(head), table, 48, 4, 0);
        let avail = RING_GPA + 0x1000;
        let entry = avail + 4 + 2 * u64::from(self.avail % QUEUE_SIZE);
        ram.write_obj(head, GuestAddress(entry)).expect("ram");
        self.avail = self.avail.wrapping_add(1);
        ram.write_obj(self.avail, GuestAddress(avail + 2))
            .expect("ram");
        // used_event: interrupt after every request (what a waiting dd asks for).
        let used_event = avail + 4 + 2 * u64::from(QUEUE_SIZE);
        ram.write_obj(self.avail.wrapping_sub(1), GuestAddress(used_event))
            .expect("ram");
        let (memory, queue, disk, counters) = (
            &self.memory,
            &mut self.queue,
            &mut self.disk,
            &self.counters,
        );
        let completed = match self.guest.timing.as_mut() {
            Some(timing) => timing.time(false, || device_pass(memory, queue, disk, counters)),
            None => device_pass(memory, queue, disk, counters),
        };
        assert_eq!(completed, 1, "one request completed");
        let status: u8 = ram.read_obj(GuestAddress(buffers + 0x2000)).expect("ram");
        assert_eq!(status, 0, "request succeeded");
        for iova in [table, h, d, s] {
            self.guest.unmap(iova & !0xfff);
        }
        self.requests += 1;
    }
}

fn write_descriptor(ram: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    ram.write_obj(addr, GuestAddress(at)).expect("ram");
    ram.write_obj(len, GuestAddress(at + 8)).expect("ram");
    ram.write_obj(flags, GuestAddress(at + 12)).expect("ram");
    ram.write_obj(next, GuestAddress(at + 14)).expect("ram");
}

/// The device side of one request: one `service_queue` pass, as the I/O thread makes it.
#[inline(never)]
fn device_pass<M: GuestMemory>(
    memory: &M,
    queue: &mut Queue,
    disk: &mut Disk,
    counters: &BlockCounters,
) -> usize {
    let serviced = service_queue(memory, queue, disk, counters, usize::from(QUEUE_SIZE))
        .expect("queue usable");
    serviced.completed
}

fn plain() -> Rig<GuestMemoryMmap> {
    let ram = ram();
    let guest = Guest::new(&ram, "x-scalable-mode=on,x-flts=on", false);
    Rig::new(guest, ram)
}

fn vtd() -> Rig<TranslatedMemory> {
    vtd_mode(false)
}

fn vtd_strict() -> Rig<TranslatedMemory> {
    vtd_mode(true)
}

fn vtd_mode(strict: bool) -> Rig<TranslatedMemory> {
    let ram = ram();
    let mut guest = Guest::new(&ram, "x-scalable-mode=on,x-flts=on", true);
    guest.strict = strict;
    guest.boot();
    let memory = vmm::iommu::translated_memory(&ram, &guest.unit, SID, None);
    Rig::new(guest, memory)
}

fn sim() -> Rig<vmm::passthrough::AssignedMemory> {
    let ram = ram();
    let mut guest = Guest::new(&ram, "x-scalable-mode=on,x-flts=on,caching-mode=on", true);
    let counters = vmm::counters::Counters::new();
    let passthrough = vmm::passthrough::Passthrough::new(&ram, &guest.unit, &counters);
    let memory = passthrough.assign("disk0", SID).expect("assign");
    guest.boot();
    Rig::new(guest, memory)
}

/// `DMA_PATH=<path>:<requests>`: run that many requests once (for callgrind) and print the
/// vIOMMU's counters per request.
fn run_once(spec: &str) {
    const USAGE: &str = "DMA_PATH=<plain|vtd|vtd-strict|sim>:<requests>[:cold|:warm]";
    let mut parts = spec.split(':');
    let path = Path::parse(parts.next().unwrap_or_default()).expect(USAGE);
    let count: u64 = parts.next().unwrap_or("1000").parse().expect(USAGE);
    let timing = match parts.next() {
        None => None,
        Some("warm") => Some(Timing::default()),
        Some("cold") => Some(Timing {
            partner: Some(Partner::spawn()),
            ..Timing::default()
        }),
        Some(_) => panic!("{USAGE}"),
    };
    let (unit, timing) = match path {
        Path::Plain => run(plain(), count, timing),
        Path::Vtd => run(vtd(), count, timing),
        Path::VtdStrict => run(vtd_strict(), count, timing),
        Path::Sim => run(sim(), count, timing),
    };
    println!("path {path:?} requests {count}");
    if let Some(t) = timing {
        let per = |ns: u128, n: u64| ns as f64 / 1000.0 / n.max(1) as f64;
        println!(
            "  {} device pass {:.2} us per request, IQT write {:.2} us ({} writes, {:.2} per request)",
            if t.partner.is_some() { "cold" } else { "warm" },
            per(t.device_ns, t.device_passes),
            per(t.iqt_ns, t.iqt_writes),
            t.iqt_writes,
            t.iqt_writes as f64 / count as f64,
        );
    }
    for (name, value) in unit.counters().pairs() {
        if value != 0 {
            println!(
                "  {name} {value} ({:.2} per request)",
                value as f64 / count as f64
            );
        }
    }
}

fn run<M: GuestMemory>(
    mut rig: Rig<M>,
    count: u64,
    timing: Option<Timing>,
) -> (Arc<Vtd>, Option<Timing>) {
    rig.guest.timing = timing;
    for _ in 0..count {
        rig.request();
    }
    (rig.guest.unit.clone(), rig.guest.timing.take())
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtio-blk 4 KiB read, one request");
    macro_rules! path {
        ($name:literal, $rig:expr) => {
            let mut rig = $rig();
            group.bench_function($name, |b| b.iter(|| rig.request()));
        };
    }
    path!("plain", plain);
    path!("vtd lazy", vtd);
    path!("vtd strict", vtd_strict);
    path!("sim (assigned)", sim);
    group.finish();
}

fn main() {
    if std::env::var_os("DMA_PATH_ECHO").is_some() {
        echo();
        return;
    }
    if let Ok(spec) = std::env::var("DMA_PATH") {
        run_once(&spec);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
