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
    pub ram: Arc<GuestMemoryMmap<()>>,
    pub vtd: Arc<Vtd>,
    pub accel: Arc<Accel>,
    next_page: u64,
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
        let ram = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
        );
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
            ram,
            vtd,
            accel,
            next_page: 1 << 20,
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
        let p = self.next_page;
        self.next_page += 4096;
        assert!(self.next_page < RAM, "guest model out of pages");
        self.ram.write_slice(&[0u8; 4096], GuestAddress(p)).unwrap();
        p
    }

    pub fn w64(&self, gpa: u64, v: u64) {
        self.ram.write_obj(v, GuestAddress(gpa)).unwrap();
    }
    pub fn r64(&self, gpa: u64) -> u64 {
        self.ram.read_obj(GuestAddress(gpa)).unwrap()
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
        let entries = 4096 / 32;
        self.w64(self.status, 0);
        let wait = [5 | (1 << 5) | (u64::from(QI_DONE) << 32), self.status, 0, 0];
        for d in descs.iter().chain(std::iter::once(&wait)) {
            let slot = self.iq + self.tail * 32;
            for (i, q) in d.iter().enumerate() {
                self.w64(slot + 8 * i as u64, *q);
            }
            self.tail = (self.tail + 1) % entries;
        }
        self.mmio_w32(offset::IQT, (self.tail * 32) as u32);
        assert_eq!(
            self.r64(self.status) as u32,
            QI_DONE,
            "wait descriptor completed"
        );
    }

    /// The address of `sid`'s scalable-mode context entry in the current root, creating the
    /// context table as needed.
    pub fn context_entry_addr(&mut self, sid: SourceId) -> u64 {
        let root_half =
            self.root + 16 * u64::from(sid.bus()) + if sid.devfn() >= 0x80 { 8 } else { 0 };
        let mut ctx_table = self.r64(root_half) & !0xfff;
        if ctx_table == 0 {
            ctx_table = self.page();
            self.w64(root_half, ctx_table | 1);
        }
        ctx_table + 32 * u64::from(sid.devfn() & 0x7f)
    }

    /// The context entry of `sid` in the current root, creating tables as needed; returns the
    /// PASID-table entry 0 address.
    fn pasid_entry_addr(&mut self, sid: SourceId) -> u64 {
        let ce = self.context_entry_addr(sid);
        let mut dir = self.r64(ce) & !0xfff;
        if dir == 0 {
            dir = self.page();
            // P, PDTS = 2 (512 directory entries) as Linux does, RID_PASID 0.
            self.w64(ce, dir | (2 << 9) | 1);
        }
        let mut table = self.r64(dir) & !0xfff;
        if table == 0 {
            table = self.page();
            self.w64(dir, table | 1);
        }
        table
    }

    /// `intel_pasid_setup_first_level` for PASID 0.
    pub fn set_first_stage(&mut self, sid: SourceId, did: u16, pgtbl: u64) {
        self.set_first_stage_with(sid, did, pgtbl, 0);
    }

    /// `intel_pasid_setup_first_level` for PASID 0 with more bits in the third quadword, e.g.
    /// [`NXE`] as Linux 6.1 sets it.
    pub fn set_first_stage_with(&mut self, sid: SourceId, did: u16, pgtbl: u64, qw2: u64) {
        let pe = self.pasid_entry_addr(sid);
        for i in 0..8 {
            self.w64(pe + 8 * i, 0);
        }
        self.w64(pe + 8, u64::from(did) | (1 << 23));
        self.w64(pe + 16, pgtbl | qw2);
        self.w64(pe, (2 << 2) | (1 << 6) | 1);
    }

    /// `intel_pasid_setup_pass_through` for PASID 0.
    pub fn set_pass_through(&mut self, sid: SourceId, did: u16) {
        let pe = self.pasid_entry_addr(sid);
        for i in 0..8 {
            self.w64(pe + 8 * i, 0);
        }
        self.w64(pe + 8, u64::from(did) | (1 << 23));
        self.w64(pe, (2 << 2) | (4 << 6) | 1);
    }

    /// `intel_pasid_tear_down_entry` for PASID 0.
    pub fn clear_entry(&mut self, sid: SourceId) {
        let pe = self.pasid_entry_addr(sid);
        self.w64(pe, 0);
    }

    /// A new, empty 4-level first-stage table.
    pub fn new_table(&mut self) -> u64 {
        self.page()
    }

    /// Maps the 4 KiB page `iova` → `gpa` in the first-stage table `root`; returns the PTE address.
    pub fn map(&mut self, root: u64, iova: u64, gpa: u64, writable: bool) -> u64 {
        self.map_with(root, iova, gpa, writable, 0)
    }

    /// [`Guest::map`] with `extra` ORed into every entry it writes, e.g. [`XD`] as Linux
    /// before 6.11 does.
    pub fn map_with(&mut self, root: u64, iova: u64, gpa: u64, writable: bool, extra: u64) -> u64 {
        let mut table = root;
        for level in (2..=4).rev() {
            let e = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 0x1ff);
            let mut next = self.r64(e) & 0x000f_ffff_ffff_f000;
            if next == 0 {
                next = self.page();
                self.w64(e, next | 0b100111 | extra);
            }
            table = next;
        }
        let pte = table + 8 * ((iova >> 12) & 0x1ff);
        self.w64(pte, gpa | 0b1100101 | extra | if writable { 2 } else { 0 });
        pte
    }
}

/// XD (bit 63) of a first-stage entry.
pub const XD: u64 = 1 << 63;
/// NXE (bit 133) of a PASID entry, as a bit of its third quadword.
pub const NXE: u64 = 1 << 5;

pub fn context_cache_global() -> [u64; 4] {
    [1 | (1 << 4), 0, 0, 0]
}
pub fn pasid_cache_global() -> [u64; 4] {
    [7 | (3 << 4), 0, 0, 0]
}
pub fn pasid_cache_pasid(did: u16, pasid: u32) -> [u64; 4] {
    [
        7 | (1 << 4) | (u64::from(did) << 16) | (u64::from(pasid) << 32),
        0,
        0,
        0,
    ]
}
pub fn pasid_cache_domain(did: u16) -> [u64; 4] {
    [7 | (u64::from(did) << 16), 0, 0, 0]
}
/// A device-selective context-cache invalidation (function mask 0).
pub fn context_cache_device(did: u16, sid: SourceId) -> [u64; 4] {
    [
        1 | (3 << 4) | (u64::from(did) << 16) | (u64::from(sid.0) << 32),
        0,
        0,
        0,
    ]
}
pub fn iotlb_domain(did: u16) -> [u64; 4] {
    [2 | (2 << 4) | (u64::from(did) << 16), 0, 0, 0]
}
pub fn iotlb_global() -> [u64; 4] {
    [2 | (1 << 4), 0, 0, 0]
}
pub fn piotlb_all(did: u16) -> [u64; 4] {
    [6 | (2 << 4) | (u64::from(did) << 16), 0, 0, 0]
}
pub fn piotlb_page(did: u16, addr: u64, am: u8, ih: bool) -> [u64; 4] {
    [
        6 | (3 << 4) | (u64::from(did) << 16),
        addr | u64::from(am) | if ih { 1 << 6 } else { 0 },
        0,
        0,
    ]
}
