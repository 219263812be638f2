//! A small reference walker, written plainly from the spec with raw bit arithmetic and
//! independent of the model's walker, tables and caches: the property tests
//! (`tests/translate/prop.rs`) and the `differential` fuzz target compare the two.
//!
//! Scope: first stage (4-level IA-32e, HAW 48, FS1GP, NXE=0 so XD is ignored, EAFE=0) for user
//! requests and supervisor requests with SRE=1 and a given WPE; legacy second stage (3 or 4
//! levels, HAW 48, SLLPS 2M+1G, no snoop control). Fault results are the VT-d fault reason codes.

use crate::memory::GuestRam;

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const HAW_RESERVED: u64 = 0x000f_0000_0000_0000; // address bits 51:48
const IRQ_FIRST: u64 = 0xfee0_0000;
const IRQ_LAST: u64 = 0xfeef_ffff;

fn read(mem: &dyn GuestRam, gpa: u64) -> Option<u64> {
    mem.read_u64(gpa).ok()
}

fn page_size(level: u32) -> u64 {
    1u64 << (12 + 9 * (level - 1))
}

fn in_irq_range(gpa: u64) -> bool {
    let page = gpa & !0xfff;
    (IRQ_FIRST..=IRQ_LAST).contains(&page)
}

/// First-stage translation of `iova` from the PML4 at `root`. Returns the GPA or a fault code.
pub fn first_stage(
    mem: &dyn GuestRam,
    root: u64,
    iova: u64,
    write: bool,
    supervisor: bool,
    wpe: bool,
) -> Result<u64, u8> {
    let upper = iova >> 47;
    if upper != 0 && upper != 0x1_ffff {
        return Err(0x80);
    }
    let mut table = root;
    let mut all_rw = true;
    let mut all_us = true;
    let mut level = 4;
    loop {
        let idx = (iova >> (12 + 9 * (level - 1))) & 511;
        let Some(e) = read(mem, table + idx * 8) else {
            return Err(if level == 4 { 0x73 } else { 0x70 });
        };
        if e & 1 == 0 {
            return Err(0x71);
        }
        let ps = e & 0x80 != 0;
        let is_leaf = level == 1 || (ps && (level == 2 || level == 3));
        let mut reserved = HAW_RESERVED;
        if level == 4 {
            reserved |= 0x80;
        }
        if level == 3 && ps {
            reserved |= 0x3fff_e000; // bits 29:13
        }
        if level == 2 && ps {
            reserved |= 0x1f_e000; // bits 20:13
        }
        if e & reserved != 0 {
            return Err(0x72);
        }
        all_rw = all_rw && e & 2 != 0;
        all_us = all_us && e & 4 != 0;
        if is_leaf {
            if !supervisor && !all_us {
                return Err(0x81);
            }
            let can_write = all_rw || (supervisor && !wpe);
            if write && !can_write {
                return Err(0x85);
            }
            let size = page_size(level);
            let base = if level == 1 {
                e & ADDR_MASK
            } else {
                e & ADDR_MASK & !(size - 1)
            };
            let gpa = base | (iova & (size - 1));
            if in_irq_range(gpa) {
                return Err(0x87);
            }
            return Ok(gpa);
        }
        table = e & ADDR_MASK;
        level -= 1;
    }
}

/// Legacy second-stage translation of `iova` from the table at `root` with `levels` levels.
pub fn second_stage_legacy(
    mem: &dyn GuestRam,
    root: u64,
    levels: u32,
    iova: u64,
    write: bool,
) -> Result<u64, u8> {
    let width = 12 + 9 * levels;
    if iova >> width.min(48) != 0 {
        return Err(0x04);
    }
    let deny = if write { 0x05 } else { 0x06 };
    let mut table = root;
    let mut level = levels;
    loop {
        let idx = (iova >> (12 + 9 * (level - 1))) & 511;
        let Some(e) = read(mem, table + idx * 8) else {
            return Err(0x07);
        };
        if e & 3 == 0 {
            return Err(deny);
        }
        let ps = e & 0x80 != 0;
        let is_leaf = level == 1 || (ps && (level == 2 || level == 3));
        let mut reserved = HAW_RESERVED | (1 << 11);
        if !is_leaf {
            reserved |= 0x78; // EMT and IPAT in a non-leaf
        }
        if level >= 4 {
            reserved |= 0x80;
        }
        if level == 3 && ps {
            reserved |= 0x3fff_f000; // bits 29:12
        }
        if level == 2 && ps {
            reserved |= 0x1f_f000; // bits 20:12
        }
        if e & reserved != 0 {
            return Err(0x0c);
        }
        if write && e & 2 == 0 {
            return Err(0x05);
        }
        if !write && e & 1 == 0 {
            return Err(0x06);
        }
        if is_leaf {
            let size = page_size(level);
            let gpa = (e & ADDR_MASK & !(size - 1)) | (iova & (size - 1));
            if in_irq_range(gpa) {
                return Err(0x0e);
            }
            return Ok(gpa);
        }
        table = e & ADDR_MASK;
        level -= 1;
    }
}
