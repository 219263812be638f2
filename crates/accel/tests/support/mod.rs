//! A small model of what the Linux intel-iommu driver does in scalable mode with first-stage
//! domains (`drivers/iommu/intel/`: `iommu.c`, `pasid.c`, `dmar.c`): it builds root, context, PASID and first-stage tables
//! in guest RAM, programs the unit's registers and submits invalidations followed by a wait,
//! exactly one IQT write per submission. The passthrough device's DMA is done by the software
//! host IOMMU, never by the vIOMMU.

#![allow(dead_code)]

use accel::{Accel, HostDevice, RamRegion};
use host_iommu::sim::{GuestRamMemory, GuestRamRegion, SimConfig, SimHost};
use host_iommu::{DeviceId, HostIommu};
use std::sync::Arc;
use test_fixtures::Mem;
pub use test_fixtures::descriptors::{
    context_cache, context_cache_global, iotlb, iotlb_global, pasid_cache_global,
    pasid_cache_pasid, piotlb_page, piotlb_pasid,
};
use test_fixtures::descriptors::{wait, write_queue};
use test_fixtures::tables::{PageTable, Stage, Tables, fs_entry, pt_entry};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd::FaultInterrupt;
use vtd::Vtd;
use vtd_spec::SourceId;
use vtd_spec::regs::offset;

/// Guest RAM size.
pub const RAM: u64 = 16 << 20;
/// Where the "VMM" pretends guest RAM is mapped in its address space.
pub const HVA: u64 = 0x7f00_0000_0000;
/// A device's requester id.
pub const SID: SourceId = SourceId::new(0, 4, 0);
/// The DID Linux gives the first domain.
pub const DID: u16 = 2;

const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_QIE: u32 = 1 << 26;
const QI_DONE: u32 = 2;

#[derive(Debug)]
struct NoIrq;
impl FaultInterrupt for NoIrq {
    fn deliver(&self, _address: u64, _data: u32) {}
}

/// The guest, its vIOMMU, the software host IOMMU and the passthrough registry.
pub struct Guest {
    /// Guest RAM and the page allocator of the driver model's tables.
    pub mem: Mem,
    pub ram: Arc<GuestMemoryMmap<()>>,
    pub vtd: Arc<Vtd>,
    pub accel: Arc<Accel>,
    gcmd: u32,
    pub root: u64,
    iq: u64,
    tail: u64,
    status: u64,
}

pub const OPTIONS: &str = "x-scalable-mode=on,x-flts=on,caching-mode=on";

impl Guest {
    /// A guest whose vIOMMU has `options`, with a passthrough registry over all of RAM.
    pub fn new(options: &str) -> Self {
        let mem = Mem::with_layout(RAM, (1 << 20)..RAM);
        let ram = mem.ram.clone();
        let config = vtd::config::Config::parse(options).unwrap();
        let vtd = Arc::new(Vtd::new(config, ram.clone(), Arc::new(NoIrq)));
        let accel = Arc::new(Accel::new(
            config,
            vec![RamRegion {
                gpa: 0,
                hva: HVA,
                len: RAM,
                writable: true,
            }],
        ));
        vtd.add_observer(accel.clone());
        let mut g = Self {
            mem,
            ram,
            vtd,
            accel,
            gcmd: 0,
            root: 0,
            iq: 0,
            tail: 0,
            status: 0,
        };
        g.root = g.page();
        g.iq = g.page();
        g.status = g.page();
        g
    }

    /// A software host IOMMU over this guest's RAM.
    pub fn sim(&self, config: SimConfig) -> Arc<SimHost> {
        let mem = GuestRamMemory::new(
            (*self.ram).clone(),
            vec![GuestRamRegion {
                gpa: 0,
                size: RAM,
                hva: HVA,
            }],
        );
        Arc::new(SimHost::new(config, Arc::new(mem)))
    }

    /// Assigns a new sim device at `sid`.
    pub fn assign(&self, sim: &Arc<SimHost>, sid: SourceId) -> Result<DeviceId, accel::AccelError> {
        let dev = sim.add_device(&sid.to_string());
        let host: Arc<dyn HostIommu> = sim.clone();
        self.accel.add_device(
            &*self.vtd,
            HostDevice {
                sid,
                name: sid.to_string(),
                host,
                dev,
                behind_bridge: false,
            },
        )?;
        Ok(dev)
    }

    /// A zeroed page of guest RAM.
    pub fn page(&mut self) -> u64 {
        self.mem.page()
    }

    pub fn w64(&self, gpa: u64, v: u64) {
        self.mem.w64(gpa, v);
    }
    pub fn r64(&self, gpa: u64) -> u64 {
        self.mem.r64(gpa)
    }
    pub fn fill(&self, gpa: u64, byte: u8) {
        self.ram
            .write_slice(&[byte; 4096], GuestAddress(gpa))
            .unwrap();
    }

    fn mmio_w32(&self, off: u64, v: u32) {
        self.vtd.mmio_write(off, &v.to_le_bytes());
    }
    fn mmio_w64(&self, off: u64, v: u64) {
        self.vtd.mmio_write(off, &v.to_le_bytes());
    }
    fn mmio_r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.vtd.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn command(&mut self, bit: u32, persistent: bool) {
        self.mmio_w32(offset::GCMD, self.gcmd | bit);
        if persistent {
            self.gcmd |= bit;
        }
    }

    /// `init_dmars`: root table (scalable), SRTP, QI with 256-bit descriptors, global flushes.
    pub fn boot(&mut self) {
        self.mmio_w64(offset::RTADDR, self.root | (1 << 10));
        self.command(GCMD_SRTP, false);
        self.mmio_w32(offset::IQT, 0);
        self.mmio_w64(offset::IQA, self.iq | (1 << 11));
        self.command(GCMD_QIE, true);
        assert_ne!(self.mmio_r32(offset::GSTS) & GCMD_QIE, 0, "QIES");
        self.submit(&[context_cache_global()]);
        self.submit(&[pasid_cache_global()]);
        self.submit(&[iotlb_global()]);
    }

    /// GCMD.TE on or off.
    pub fn translation(&mut self, on: bool) {
        if on {
            self.command(GCMD_TE, true);
        } else {
            self.gcmd &= !GCMD_TE;
            self.mmio_w32(offset::GCMD, self.gcmd);
        }
    }

    /// Points RTADDR at `root` (scalable or legacy) and latches it.
    pub fn set_root(&mut self, root: u64, scalable: bool) {
        self.root = root;
        self.mmio_w64(offset::RTADDR, root | if scalable { 1 << 10 } else { 0 });
        self.command(GCMD_SRTP, false);
    }

    /// One submission: the descriptors plus a wait with status write, one IQT write.
    pub fn submit(&mut self, descs: &[[u64; 4]]) {
        self.w64(self.status, 0);
        let all: Vec<_> = descs
            .iter()
            .copied()
            .chain([wait(self.status, QI_DONE)])
            .collect();
        self.tail = write_queue(&self.ram, self.iq, self.tail, 4096 / 32, true, &all);
        self.mmio_w32(offset::IQT, (self.tail * 32) as u32);
        assert_eq!(
            self.r64(self.status) as u32,
            QI_DONE,
            "wait descriptor completed"
        );
    }

    /// The driver's view of the root table at `self.root` (scalable).
    fn tables(&self) -> Tables<'_> {
        Tables {
            mem: &self.mem,
            root: self.root,
            scalable: true,
        }
    }

    /// `intel_pasid_setup_first_level` for PASID 0 (page-walk snooping on, as the unit's
    /// ECAP.SMPWC asks).
    pub fn set_first_stage(&mut self, sid: SourceId, did: u16, pgtbl: u64) {
        self.set_first_stage_with(sid, did, pgtbl, false);
    }

    /// [`Guest::set_first_stage`] with the PASID entry's NXE as given (Linux 6.1 sets it).
    pub fn set_first_stage_with(&mut self, sid: SourceId, did: u16, pgtbl: u64, nxe: bool) {
        let mut pe = fs_entry(&first_stage(pgtbl), did);
        pe.qw1 = pe.qw1.with_pwsnp(true);
        pe.qw2 = pe.qw2.with_nxe(nxe);
        self.tables().device_pasid_entry(sid, 0, pe);
    }

    /// The address of `sid`'s scalable-mode context entry, creating the context table.
    pub fn context_entry_addr(&self, sid: SourceId) -> u64 {
        self.tables().context_addr(sid)
    }

    /// `intel_pasid_setup_pass_through` for PASID 0.
    pub fn set_pass_through(&mut self, sid: SourceId, did: u16) {
        let mut pe = pt_entry(did);
        pe.qw1 = pe.qw1.with_pwsnp(true);
        self.tables().device_pasid_entry(sid, 0, pe);
    }

    /// `intel_pasid_tear_down_entry` for PASID 0.
    pub fn clear_entry(&mut self, sid: SourceId) {
        let pe = self.tables().device_pasid_entry_addr(sid, 0);
        self.w64(pe, 0);
    }

    /// A new, empty 4-level first-stage table.
    pub fn new_table(&mut self) -> u64 {
        self.page()
    }

    /// Maps the 4 KiB page `iova` → `gpa` in the first-stage table `root` as Linux does;
    /// returns the PTE address.
    pub fn map(&mut self, root: u64, iova: u64, gpa: u64, writable: bool) -> u64 {
        first_stage(root).map_like_linux(&self.mem, iova, gpa, writable)
    }

    /// [`Guest::map`] with `extra` ORed into the entry at every level, e.g. [`XD`] as Linux
    /// before 6.11 writes it.
    pub fn map_with(&mut self, root: u64, iova: u64, gpa: u64, writable: bool, extra: u64) -> u64 {
        let table = first_stage(root);
        let pte = table.map_like_linux(&self.mem, iova, gpa, writable);
        for level in 1..=4 {
            let entry = table.entry_addr(&self.mem, iova, level);
            self.mem.w64(entry, self.mem.r64(entry) | extra);
        }
        pte
    }
}

/// XD (bit 63) of a first-stage entry.
pub const XD: u64 = 1 << 63;

/// The 4-level first-stage table at `root`.
fn first_stage(root: u64) -> PageTable {
    PageTable {
        root,
        levels: 4,
        stage: Stage::First,
    }
}
