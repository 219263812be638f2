//! One deterministic driver of the whole unit from arbitrary bytes, shared by the cargo-fuzz
//! target `unit` (`fuzz/`) and a stable `#[test]` that replays random inputs; the
//! [`differential`] driver (target `differential`), which compares every translation with the
//! independent [`reference`] walker; and that walker, which the property tests use too.
//!
//! The input chooses a configuration, then up to [`MAX_OPS`] operations: register writes and
//! reads of any width at any offset, guest-RAM writes, table entries at a fixed layout (so walks
//! go deep) and interrupt remapping table entries, queue submissions, translations, interrupt
//! requests and resets. After every operation the driver checks invariants that hold whatever
//! the guest does: read-only registers keep their values, GSTS only reports what the unit
//! offers, IQH stays inside the queue, a request while GSTS.TES is clear passes untranslated,
//! an interrupt while GSTS.IRES is clear passes unchanged, and nothing panics.

pub mod differential;
pub mod reference;

use crate::config::Config;
use crate::counters::CountersSnapshot;
use crate::fault::FaultInterrupt;
use crate::interrupt_remap::InterruptOutcome;
use crate::memory::GuestRam;
use crate::observer::UnitView;
use crate::request::{Access, DmaRequest, Remapper};
use crate::unit::Vtd;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_spec::SourceId;
use vtd_spec::regs::{Gsts, Iqa, TranslationTableMode, offset};

/// Guest RAM of a fuzz run.
pub const RAM_SIZE: u64 = 2 << 20;
/// Operations per input at most.
pub const MAX_OPS: usize = 256;
const ROOT: u64 = 0x1000;
const CONTEXT: u64 = 0x2000;
const PASID_DIR: u64 = 0x3000;
const PASID_TABLE: u64 = 0x4000;
const PAGE_TABLES: u64 = 0x5000;
const QUEUE: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
/// The interrupt remapping table of op 6's bring-up (the input may point IRTA anywhere).
const IRT: u64 = 0x3_0000;
/// Devices on bus 0 the driver uses: devfn 0, 1 (low context table half), 0x80, 0x81 (high).
const DEVFN_MASK: u8 = 0x81;

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.byte()))
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

struct Sink;

impl FaultInterrupt for Sink {
    fn deliver(&self, _address: u64, _data: u32) {}
}

fn config(choice: u8) -> Config {
    let options = match choice % 7 {
        0 => "",
        1 => "x-scalable-mode=on",
        2 => "x-scalable-mode=on,x-flts=on",
        3 => "x-scalable-mode=on,x-flts=on,x-ssts=on,x-pasid-mode=20,device-iotlb=on",
        4 => "aw-bits=39,caching-mode=on,pt=off",
        5 => "x-scalable-mode=on,x-flts=on,intremap=on,eim=on",
        _ => "intremap=on",
    };
    Config::parse(options).unwrap_or_default()
}

/// Runs one input and returns the unit's counters. Panics only if an invariant of the unit is
/// broken.
pub fn run(data: &[u8]) -> CountersSnapshot {
    let mut input = Input { data };
    let config = config(input.byte());
    let Ok(ram) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
    else {
        return CountersSnapshot::default();
    };
    let ram = Arc::new(ram);
    let vtd = Vtd::new(config, ram.clone(), Arc::new(Sink));
    let (ver, cap, ecap) = (read32(&vtd, offset::VER), vtd.cap(), vtd.ecap());
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        step(&vtd, &*ram, &mut input);
        assert_eq!(read32(&vtd, offset::VER), ver);
        assert_eq!(read64(&vtd, offset::CAP), cap.into_bits());
        assert_eq!(read64(&vtd, offset::ECAP), ecap.into_bits());
        let gsts = Gsts::from_bits(read32(&vtd, offset::GSTS));
        assert!(!gsts.wbfs() && !gsts.fls());
        if !ecap.ir() {
            assert!(!gsts.ires() && !gsts.irtps() && !gsts.cfis());
        }
        // IQH only ever holds a slot offset of the largest queue (bits 18:4); it can lie
        // beyond a queue the guest shrank (or re-shaped) under it, which the next IQT write
        // reports.
        let head = read64(&vtd, offset::IQH);
        assert_eq!(head & !0x7_fff0, 0, "IQH holds a queue offset");
    }
    vtd.counters()
}

fn read32(vtd: &Vtd, at: u64) -> u32 {
    let mut b = [0u8; 4];
    vtd.mmio_read(at, &mut b);
    u32::from_le_bytes(b)
}

fn read64(vtd: &Vtd, at: u64) -> u64 {
    let mut b = [0u8; 8];
    vtd.mmio_read(at, &mut b);
    u64::from_le_bytes(b)
}

fn write(vtd: &Vtd, at: u64, value: u64, width: usize) {
    vtd.mmio_write(at, &value.to_le_bytes()[..width]);
}

fn step(vtd: &Vtd, ram: &dyn GuestRam, input: &mut Input<'_>) {
    match input.byte() % 10 {
        0 => {
            let at = u64::from(input.u16() & 0x1fff);
            let width = [1, 2, 4, 8, 16, 3][usize::from(input.byte() % 6)];
            vtd.mmio_write(at, &input.bytes(width));
        }
        1 => {
            let at = u64::from(input.u16());
            let mut buf = vec![0u8; usize::from(input.byte() % 17)];
            vtd.mmio_read(at, &mut buf);
        }
        2 => {
            let at = u64::from(input.u16()) << 5;
            let len = usize::from(input.byte() % 64);
            let _ = ram.write_at(at, &input.bytes(len));
        }
        3 => tables(vtd, ram, input),
        4 => submit(vtd, ram, input),
        5 => {
            let access = input.byte();
            let req = DmaRequest {
                sid: SourceId(u16::from(input.byte() & DEVFN_MASK)),
                pasid: (access & 0x10 != 0).then(|| u32::from(input.u16())),
                iova: input.u64()
                    & [0xffff_f000, 0x0000_ffff_ffff_ffff, u64::MAX][usize::from(access >> 6) % 3],
                access: Access {
                    read: access & 1 != 0,
                    write: access & 2 != 0,
                    execute: access & 0x24 == 0x24,
                    privileged: access & 0x28 == 0x28,
                },
            };
            let translating = Gsts::from_bits(read32(vtd, offset::GSTS)).tes();
            let result = vtd.remap(&req);
            if !translating {
                // With translation disabled every request is untranslated.
                let gpa = result.ok().map(|t| t.gpa(req.iova));
                assert_eq!(
                    gpa,
                    Some(req.iova),
                    "DMA with TES clear must pass untranslated"
                );
            }
        }
        6 => {
            // Linux's bring-up: root table, SRTP, QI, TE.
            // The TTM the unit supports, or (rarely) the other one.
            let scalable = vtd.ecap().smts() != (input.byte() == 0xff);
            write(vtd, offset::RTADDR, ROOT | (u64::from(scalable) << 10), 8);
            write(vtd, offset::GCMD, 1 << 30, 4);
            write(vtd, offset::IQT, 0, 4);
            let dw = u64::from(vtd.ecap().smts()) << 11;
            write(vtd, offset::IQA, QUEUE | dw, 8);
            write(
                vtd,
                offset::GCMD,
                (1 << 26) | (u64::from(input.byte() & 1) << 31),
                4,
            );
            write(vtd, offset::FECTL, 0, 4);
            if vtd.ecap().ir() {
                // Linux's interrupt remapping bring-up: IRTA, SIRTP, IRE (CFI sometimes).
                // The first entries present, as a driver fills them before enabling.
                for index in 0..8 {
                    let irte = [1 | u64::from(input.byte()) << 16 | 0x100 << 32, 0];
                    let _ = ram.write_at(IRT + 16 * index, &irte.map(u64::to_le_bytes).concat());
                }
                let b = input.byte();
                let irta = IRT | u64::from(b & 0xf) | (u64::from(b >> 7) << 11);
                write(vtd, offset::IRTA, irta, 8);
                write(vtd, offset::GCMD, (1 << 26) | (1 << 24), 4);
                let cfi = u64::from(input.byte() & 1) << 23;
                write(vtd, offset::GCMD, (1 << 26) | (1 << 25) | cfi, 4);
            }
        }
        7 => {
            let at = [
                offset::FSTS,
                offset::ICS,
                0x220 + 12,
                offset::FECTL,
                offset::IECTL,
            ][usize::from(input.byte() % 5)];
            write(
                vtd,
                at,
                u64::from(input.byte()) << 24 | u64::from(input.byte()),
                4,
            );
        }
        8 => interrupt(vtd, input),
        _ => {
            if input.byte() == 0xff {
                vtd.reset();
            }
        }
    }
}

/// An interrupt request: mostly a remappable-format MSI naming a low entry, sometimes any
/// address and data; through `remap_interrupt` or as a device's DWORD write.
fn interrupt(vtd: &Vtd, input: &mut Input<'_>) {
    let mode = input.byte();
    let sid = SourceId(u16::from(input.byte() & DEVFN_MASK));
    let (address, data) = match mode & 3 {
        0 | 1 => {
            let handle = u64::from(input.byte() & 0x7);
            let shv = u64::from(mode & 4);
            (
                0xfee0_0010 | (handle << 5) | shv << 1,
                u32::from(input.byte() & 3),
            )
        }
        2 => (
            0xfee0_0000 | u64::from(input.u16()) << 4,
            u32::from(input.u16()),
        ),
        _ => (
            input.u64(),
            u32::from(input.u16()) << 8 | u32::from(input.byte()),
        ),
    };
    let remapping = Gsts::from_bits(read32(vtd, offset::GSTS)).ires();
    if mode & 0x80 != 0 {
        vtd.interrupt(sid, address, data);
        return;
    }
    let outcome = vtd.remap_interrupt(sid, address, data);
    if !remapping {
        assert_eq!(
            outcome,
            InterruptOutcome::Deliver { address, data },
            "interrupts with IRES clear pass unchanged"
        );
    }
}

/// Writes table entries at the fixed layout, pointers forced to the next level so walks go
/// deep, other bits from the input.
fn tables(vtd: &Vtd, ram: &dyn GuestRam, input: &mut Input<'_>) {
    let which = input.byte();
    if which & 0x80 == 0 {
        let scalable = UnitView::state(vtd).root.ttm() == TranslationTableMode::Scalable;
        let four_levels = vtd.cap().sagaw() & 0b100 != 0;
        return chain(ram, input, scalable, four_levels);
    }
    let index = u64::from(input.byte());
    let low = input.u64() & 0xfff;
    let high = input.u64();
    let (at, first, second) = match which % 7 {
        0 => (ROOT + (index & 0xf) * 16, CONTEXT | low, high),
        1 => (CONTEXT + (index & 0x7f) * 32, PASID_DIR | low, high),
        2 => (PASID_DIR + (index & 0x7) * 8, PASID_TABLE | low, high),
        3 => (PASID_TABLE + (index & 0x3f) * 64, low, high),
        4 => {
            let level = index % 5;
            let next = PAGE_TABLES + (level + 1) * 0x1000;
            (
                PAGE_TABLES + level * 0x1000 + (index >> 3) * 8,
                next | low,
                high,
            )
        }
        5 => (
            PASID_TABLE + (index & 0x3f) * 64 + 16,
            PAGE_TABLES | low | (high << 52),
            high,
        ),
        // An IRTE of op 6's table: mostly present and valid in xAPIC and x2APIC mode, with
        // source validation from the input (SID on bus 0).
        _ if which & 0x40 == 0 => (
            IRT + (index & 0x7) * 16,
            (high & 0x0000_ff00_00ff_0f1f) | 1,
            low & 0xf_00ff,
        ),
        _ => (IRT + (index & 0x7) * 16, high, low << 52 | high >> 12),
    };
    let _ = ram.write_at(at, &first.to_le_bytes());
    let _ = ram.write_at(at + 8, &second.to_le_bytes());
}

/// Writes up to 8 descriptors at the queue tail and moves IQT, sometimes to a hostile value.
fn submit(vtd: &Vtd, ram: &dyn GuestRam, input: &mut Input<'_>) {
    let iqa = Iqa::from_bits(read64(vtd, offset::IQA));
    let size = iqa.descriptor_size();
    let entries = iqa.entries();
    let mut tail = (read64(vtd, offset::IQT) >> 4) / (size / 16);
    if read32(vtd, offset::FSTS) & 0x10 != 0 && input.byte() & 1 == 0 {
        // Linux's recovery: overwrite the refused descriptor with a wait, clear IQE.
        let head = (read64(vtd, offset::IQH) >> 4) / (size / 16);
        let at = iqa.base().wrapping_add(head * size);
        let _ = ram.write_at(
            at,
            &[5u64, 0, 0, 0].map(u64::to_le_bytes).concat()[..size as usize],
        );
        write(vtd, offset::FSTS, 0x10, 4);
    }
    let count = input.byte() % 9;
    for _ in 0..count {
        let mode = input.byte();
        // Mostly the types Linux sends; sometimes any of the sixteen low type codes.
        let kind = match mode & 0x40 {
            0 => [1u64, 2, 5, 6, 7, 4, 5, 2][usize::from(mode % 8)],
            _ => u64::from(mode % 16),
        };
        let (mut q0, mut q1) = (input.u64(), input.u64());
        if mode & 0x80 == 0 {
            // Mostly well-formed: only the fields a driver fills.
            q0 &= match kind {
                5 => 0xffff_ffff_0000_0070,
                4 => 0x0000_ffff_f800_0010,
                _ => 0x000f_ffff_ffff_0030,
            };
            q1 &= !0xf80;
        }
        let mut q = [(q0 & !0xf) | kind, q1, 0, 0];
        if kind == 5 && input.byte() & 1 == 0 {
            q[1] = STATUS;
        }
        if input.byte() == 0xee {
            q[2] = input.u64();
        }
        let at = iqa.base().wrapping_add(tail % entries * size);
        for (i, qw) in q.iter().take(size as usize / 8).enumerate() {
            let _ = ram.write_at(at + 8 * i as u64, &qw.to_le_bytes());
        }
        tail = (tail + 1) % entries;
    }
    let value = if input.byte() == 0xbb {
        input.u64()
    } else {
        tail * size
    };
    write(vtd, offset::IQT, value, 4);
}

/// Writes a whole, mostly valid chain for one device on bus 0 (PASID 0 in scalable mode) and a
/// 4-level page-table path for one IOVA, as a driver would, with some fields from the input.
fn chain(ram: &dyn GuestRam, input: &mut Input<'_>, scalable: bool, four_levels: bool) {
    let put = |at: u64, v: u64| {
        let _ = ram.write_at(at, &v.to_le_bytes());
    };
    let devfn = u64::from(input.byte() & DEVFN_MASK);
    let did = u64::from(input.u16());
    put(ROOT, CONTEXT | 1);
    put(ROOT + 8, if scalable { CONTEXT | 1 } else { 0 });
    if scalable {
        // FPD and PASIDE from the input; DTE and PRE would be reserved here.
        let flags = u64::from(input.byte()) & 0x0a;
        put(CONTEXT + (devfn & 0x7f) * 32, PASID_DIR | 1 | flags);
        put(CONTEXT + (devfn & 0x7f) * 32 + 8, 0);
        put(PASID_DIR, PASID_TABLE | 1);
        let pgtt = [1u64, 1, 1, 2, 4, 3][usize::from(input.byte() % 6)];
        put(PASID_TABLE, PAGE_TABLES | (pgtt << 6) | (2 << 2) | 1);
        put(PASID_TABLE + 8, did);
        put(PASID_TABLE + 16, PAGE_TABLES);
    } else {
        // Mostly translated (TT=0), sometimes pass-through or device-TLB.
        let tt = [0u64, 0, 0, 2, 1][usize::from(input.byte() % 5)] << 2;
        let (aw, root) = if four_levels {
            (2, PAGE_TABLES)
        } else {
            (1, PAGE_TABLES + 0x1000)
        };
        put(CONTEXT + devfn * 16, root | tt | 1);
        put(CONTEXT + devfn * 16 + 8, aw | (did << 8));
    }
    let iova = input.u64();
    let leaf_flags = u64::from(input.byte()) | 1;
    for level in (1..=4u64).rev() {
        let index = (iova >> (12 + 9 * (level - 1))) & 0x1ff;
        let table = PAGE_TABLES + (4 - level) * 0x1000;
        let entry = if level == 1 {
            (iova & 0xf_f000) | 0x10_0000 | leaf_flags
        } else {
            (table + 0x1000) | 0x7
        };
        put(table + index * 8, entry);
    }
}

/// The fuzz target's entry function on stable: a few hundred pseudo-random inputs, plus inputs
/// shaped like a driver's bring-up, must run without a panic or a broken invariant.
#[cfg(test)]
mod tests {
    use super::run;
    use crate::test_rng::xorshift;

    #[test]
    fn random_inputs_never_break_the_unit() {
        let mut next = xorshift(0x5eed_1234_abcd_0001);
        for _ in 0..400 {
            let len = (next() % 3000) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            run(&data);
        }
    }

    #[test]
    fn bring_up_shaped_inputs_reach_the_queue_and_the_walks() {
        let mut next = xorshift(42);
        let (mut descriptors, mut walks, mut faults, mut errors) = (0, 0, 0, 0);
        let (mut remapped, mut iec) = (0, 0);
        for config in 0..7u8 {
            for _ in 0..40 {
                // Config, bring-up (op 6), then a mix of tables (3), submissions (4), DMA (5).
                let mut data = vec![config, 6, 1, 1];
                for _ in 0..60 {
                    data.push([3, 4, 5, 5, 7, 0, 8, 3][(next() % 8) as usize]);
                    data.extend((0..40).map(|_| next() as u8));
                }
                let c = run(&data);
                descriptors += c.qi_context_cache
                    + c.qi_iotlb
                    + c.qi_pasid_iotlb
                    + c.qi_pasid_cache
                    + c.qi_wait;
                walks += c.walks;
                faults += c.faults_recorded;
                errors += c.qi_errors;
                remapped += c.interrupts_remapped;
                iec += c.iec_global + c.iec_selective;
            }
        }
        assert!(remapped > 100 && iec > 20, "{remapped} {iec}");
        assert!(
            descriptors > 100 && walks > 100 && faults > 100 && errors > 10,
            "{descriptors} {walks} {faults} {errors}"
        );
        run(&[]);
        run(&[0xff; 4096]);
    }
}
