//! The 4 KiB register page (§10.4 / §11.4) as bytes with per-bit access attributes.
//!
//! Every byte of the page has a value, a mask of software-writable (RW) bits, a mask of
//! write-1-to-clear (RW1C) bits and a reset value. Bits in neither mask are read-only (RO) or
//! reserved and ignore writes; offsets that hold no register read as 0 and ignore writes, as
//! the spec requires of reserved registers (and as Linux's debugfs register dump expects).
//!
//! **Access rule.** An access of any length at any offset is valid and never panics. Each byte
//! is read or written on its own with its own masks: an access straddling two registers touches
//! the bytes of both, and the bytes of an access beyond the page read as 0 and are dropped. After
//! a write, the unit runs the side effects of every register the access touched, in ascending
//! offset order (see [`RegisterFile::write`]). Oversized accesses (QEMU once aborted on them) are
//! handled by the same rule.
//!
//! Side effects (commands, queue processing, W1C of status) live in the `unit` module; this
//! module only knows the storage and the access attributes.

use crate::config::Config;
use vtd_spec::interrupt::Irta;
use vtd_spec::regs::{
    Ccmd, EventControl, Fsts, IotlbReg, Iqa, REGISTER_PAGE_SIZE, Version, offset,
};

const PAGE: usize = REGISTER_PAGE_SIZE as usize;

/// One architectural register: where it is and how wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// Offset in the register page.
    pub offset: u64,
    /// Width in bytes (4 or 8).
    pub size: u64,
}

impl Register {
    /// A 32-bit register.
    pub const fn r32(offset: u64) -> Self {
        Self { offset, size: 4 }
    }
    /// A 64-bit register.
    pub const fn r64(offset: u64) -> Self {
        Self { offset, size: 8 }
    }
    /// Whether the byte range `[start, end)` overlaps this register.
    pub fn touched_by(self, start: u64, end: u64) -> bool {
        start < self.offset + self.size && self.offset < end
    }
}

/// Register layout of this unit: the fixed offsets plus those CAP/ECAP place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The invalidate address register (ECAP.IRO·16).
    pub iva: Register,
    /// The IOTLB invalidate register (IVA + 8).
    pub iotlb: Register,
    /// Offset of the first fault recording register (CAP.FRO·16).
    pub frcd_base: u64,
    /// Number of fault recording registers (CAP.NFR + 1).
    pub frcd_count: usize,
}

impl Layout {
    /// The layout for a configuration.
    pub fn new(config: &Config) -> Self {
        let iva = config.ecap().iotlb_register_offset();
        let cap = config.cap();
        Self {
            iva: Register::r64(iva),
            iotlb: Register::r64(iva + 8),
            frcd_base: cap.fault_record_offset(),
            frcd_count: cap.fault_records(),
        }
    }
    /// Offset of fault recording register `index` (16 bytes each).
    pub fn frcd(&self, index: usize) -> u64 {
        self.frcd_base + 16 * index as u64
    }
}

/// Storage for the whole register page.
#[derive(Clone)]
pub struct RegisterFile {
    words: Box<Words>,
    layout: Layout,
}

/// One 8-byte word of the page with its attributes side by side, so a register access touches
/// one cache line (and the queue, fault and command registers, all below 0x100, one page of
/// host memory) instead of one page per attribute.
#[derive(Clone, Copy, Default)]
struct Word {
    value: u64,
    writable: u64,
    write1_clear: u64,
    reset_value: u64,
}

/// The page's words, page-aligned so the low registers share one host page.
#[derive(Clone)]
#[repr(C, align(4096))]
struct Words([Word; PAGE / 8]);

/// The byte mask of bytes `[from, to)` of a word (`from < to <= 8`).
fn byte_mask(from: usize, to: usize) -> u64 {
    let high = if to >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * to)) - 1
    };
    high & !((1u64 << (8 * from)) - 1)
}

impl Words {
    /// The value byte at `o` (`o < PAGE`).
    fn byte(&self, o: usize) -> u8 {
        (self.0[o / 8].value >> (8 * (o % 8))) as u8
    }
}

impl RegisterFile {
    /// Defines every register of a unit with this configuration and resets them.
    pub fn new(config: &Config) -> Self {
        let layout = Layout::new(config);
        let mut regs = Self {
            words: Box::new(Words([Word::default(); PAGE / 8])),
            layout,
        };
        let version = if config.scalable_mode {
            Version::new().with_max(4)
        } else {
            Version::new().with_max(1)
        };
        let im = EventControl::new().with_im(true).into_bits();
        regs.define32(offset::VER, version.into_bits(), 0, 0);
        regs.define64(offset::CAP, config.cap().into_bits(), 0, 0);
        regs.define64(offset::ECAP, config.ecap().into_bits(), 0, 0);
        // GCMD is write-only: it reads 0 and the unit sees the written bytes (§11.4.4).
        regs.define32(offset::GCMD, 0, 0, 0);
        regs.define32(offset::GSTS, 0, 0, 0);
        regs.define64(offset::RTADDR, 0, !0x3ff, 0);
        let ccmd_rw = Ccmd::new()
            .with_did(0xffff)
            .with_sid(0xffff)
            .with_fm(3)
            .with_cirg(3)
            .with_icc(true);
        regs.define64(offset::CCMD, 0, ccmd_rw.into_bits(), 0);
        regs.define32(offset::FSTS, 0, 0, Fsts::RW1C_MASK);
        regs.define32(offset::FECTL, im, im, 0);
        regs.define32(offset::FEDATA, 0, 0xffff, 0);
        regs.define32(offset::FEADDR, 0, !0x3, 0);
        regs.define32(offset::FEUADDR, 0, !0, 0);
        regs.define64(offset::IQH, 0, 0, 0);
        regs.define64(offset::IQT, 0, 0x7fff0, 0);
        let iqa_rw = Iqa::new()
            .with_qs(7)
            .with_dw(config.scalable_mode)
            .with_iqa((1 << 52) - 1);
        regs.define64(offset::IQA, 0, iqa_rw.into_bits(), 0);
        regs.define32(offset::ICS, 0, 0, 1);
        regs.define32(offset::IECTL, im, im, 0);
        regs.define32(offset::IEDATA, 0, 0xffff, 0);
        regs.define32(offset::IEADDR, 0, !0x3, 0);
        regs.define32(offset::IEUADDR, 0, !0, 0);
        regs.define64(offset::IQERCD, 0, 0, 0);
        if config.interrupt_remapping() {
            let irta_rw = Irta::writable_mask(config.extended_interrupt_mode());
            regs.define64(offset::IRTA, 0, irta_rw, 0);
        }
        // IVA: AM, IH and ADDR are RW (§11.4.8.2).
        regs.define64(layout.iva.offset, 0, !0xf80, 0);
        let iotlb_rw = IotlbReg::new()
            .with_did(0xffff)
            .with_dw(true)
            .with_dr(true)
            .with_iirg(3)
            .with_ivt(true);
        regs.define64(layout.iotlb.offset, 0, iotlb_rw.into_bits(), 0);
        for i in 0..layout.frcd_count {
            let at = layout.frcd(i);
            regs.define64(at, 0, 0, 0);
            // F (bit 127) is RW1C; everything else in the record is RO (§11.4.9.6 FRCD_REG).
            regs.define64(at + 8, 0, 0, 1 << 63);
        }
        regs.reset();
        regs
    }

    fn define(&mut self, at: u64, bytes: &[u8], reset: u64, writable: u64, w1c: u64) {
        for (i, _) in bytes.iter().enumerate() {
            let o = at as usize + i;
            if o < PAGE {
                let (shift, place) = (8 * i, 8 * (o % 8));
                let byte = |v: u64| ((v >> shift) & 0xff) << place;
                let w = &mut self.words.0[o / 8];
                let keep = !(0xffu64 << place);
                w.reset_value = (w.reset_value & keep) | byte(reset);
                w.writable = (w.writable & keep) | byte(writable);
                w.write1_clear = (w.write1_clear & keep) | byte(w1c);
            }
        }
    }
    fn define32(&mut self, at: u64, reset: u32, writable: u32, w1c: u32) {
        self.define(at, &[0; 4], reset.into(), writable.into(), w1c.into());
    }
    fn define64(&mut self, at: u64, reset: u64, writable: u64, w1c: u64) {
        self.define(at, &[0; 8], reset, writable, w1c);
    }

    /// The register layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Puts every register back to its reset value.
    pub fn reset(&mut self) {
        for w in self.words.0.iter_mut() {
            w.value = w.reset_value;
        }
    }

    /// Software read: bytes outside the page read as 0.
    pub fn read(&self, at: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = at
                .checked_add(i as u64)
                .filter(|&o| o < REGISTER_PAGE_SIZE)
                .map_or(0, |o| self.words.byte(o as usize));
        }
    }

    /// Software write: RW bits take the new value, RW1C bits clear where a 1 is written, all
    /// other bits keep theirs. Returns the byte range `[start, end)` the write covered inside
    /// the page (empty when it missed the page).
    pub fn write(&mut self, at: u64, data: &[u8]) -> (u64, u64) {
        let start = at.min(REGISTER_PAGE_SIZE);
        let end = at.saturating_add(data.len() as u64).min(REGISTER_PAGE_SIZE);
        // A non-empty range starts at `at`, so `data` lines up with the page from `start`.
        let (mut o, end_byte) = (start as usize, end as usize);
        let mut data = data;
        while o < end_byte {
            // The bytes of this access that fall in word `o / 8`, applied at once.
            let (from, to) = (o % 8, (end_byte - (o - o % 8)).min(8));
            let n = to - from;
            let mut d = [0u8; 8];
            d[from..to].copy_from_slice(&data[..n]);
            let (d, covered) = (u64::from_le_bytes(d), byte_mask(from, to));
            let w = &mut self.words.0[o / 8];
            let keep = w.value & !(w.writable & covered);
            w.value = (keep | (d & w.writable & covered)) & !(d & w.write1_clear & covered);
            data = &data[n..];
            o += n;
        }
        (start, end)
    }

    /// The `N` bytes at `at` when they lie inside one word of the page.
    fn bytes<const N: usize>(&self, at: u64) -> Option<[u8; N]> {
        let at = usize::try_from(at).ok().filter(|&at| at < PAGE)?;
        let from = at % 8;
        let word = self.words.0[at / 8].value.to_le_bytes();
        word.get(from..from.checked_add(N)?)?.try_into().ok()
    }
    /// Hardware read of a 32-bit register.
    pub fn get32(&self, at: u64) -> u32 {
        let b = self.bytes(at).unwrap_or_else(|| {
            let mut b = [0u8; 4];
            self.read(at, &mut b);
            b
        });
        u32::from_le_bytes(b)
    }
    /// Hardware read of a 64-bit register.
    pub fn get64(&self, at: u64) -> u64 {
        let b = self.bytes(at).unwrap_or_else(|| {
            let mut b = [0u8; 8];
            self.read(at, &mut b);
            b
        });
        u64::from_le_bytes(b)
    }
    /// Hardware write of a 32-bit register, ignoring access attributes.
    pub fn set32(&mut self, at: u64, value: u32) {
        self.set_bytes(at, &value.to_le_bytes());
    }
    /// Hardware write of a 64-bit register, ignoring access attributes.
    pub fn set64(&mut self, at: u64, value: u64) {
        self.set_bytes(at, &value.to_le_bytes());
    }
    fn set_bytes(&mut self, at: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(o) = at.checked_add(i as u64).filter(|&o| o < REGISTER_PAGE_SIZE) {
                let (o, place) = (o as usize, 8 * (o as usize % 8));
                let w = &mut self.words.0[o / 8];
                w.value = (w.value & !(0xffu64 << place)) | (u64::from(*b) << place);
            }
        }
    }
}

/// The value a write of `data` at `at` gives to the register at `reg` when the bytes it does
/// not cover keep `current`. `None` when the write misses the register. GCMD is decoded this way,
/// so a byte write to its top byte (TE, SRTP, ...) leaves the other enables as they are.
pub fn overlay(reg: Register, current: u64, at: u64, data: &[u8]) -> Option<u64> {
    let end = at.saturating_add(data.len() as u64);
    if !reg.touched_by(at, end) {
        return None;
    }
    let mut bytes = current.to_le_bytes();
    for (i, byte) in bytes.iter_mut().enumerate().take(reg.size as usize) {
        let o = reg.offset + i as u64;
        if o >= at && o < end {
            *byte = data[(o - at) as usize];
        }
    }
    Some(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> RegisterFile {
        RegisterFile::new(&Config::first_stage())
    }

    #[test]
    fn reset_values() {
        let r = regs();
        assert_eq!(r.get32(offset::VER), 0x40);
        assert_eq!(
            r.get64(offset::CAP),
            Config::first_stage().cap().into_bits()
        );
        assert_eq!(
            r.get64(offset::ECAP),
            Config::first_stage().ecap().into_bits()
        );
        assert_eq!(r.get32(offset::FECTL), 0x8000_0000);
        assert_eq!(r.get32(offset::IECTL), 0x8000_0000);
        assert_eq!(r.get32(offset::GSTS), 0);
        assert_eq!(
            RegisterFile::new(&Config::default()).get32(offset::VER),
            0x10
        );
    }

    #[test]
    fn attributes_apply_per_bit() {
        let mut r = regs();
        r.write(offset::CAP, &[0xff; 8]);
        assert_eq!(
            r.get64(offset::CAP),
            Config::first_stage().cap().into_bits()
        );
        r.write(offset::RTADDR, &u64::MAX.to_le_bytes());
        assert_eq!(r.get64(offset::RTADDR), !0x3ff);
        r.set32(offset::FSTS, 0x7f);
        r.write(offset::FSTS, &0x10u32.to_le_bytes());
        assert_eq!(r.get32(offset::FSTS), 0x6f, "IQE cleared, PPF untouched");
        r.write(offset::FSTS, &0x2u32.to_le_bytes());
        assert_eq!(r.get32(offset::FSTS), 0x6f, "PPF is RO");
        r.write(offset::FECTL, &0u32.to_le_bytes());
        assert_eq!(r.get32(offset::FECTL), 0);
        r.write(offset::GCMD, &u32::MAX.to_le_bytes());
        assert_eq!(r.get32(offset::GCMD), 0, "GCMD reads 0");
    }

    #[test]
    fn accesses_beyond_the_page_are_clamped() {
        let mut r = regs();
        let mut big = [0xaau8; 64];
        r.read(4090, &mut big);
        assert!(big[6..].iter().all(|&b| b == 0));
        assert_eq!(r.write(4095, &[1; 16]), (4095, 4096));
        assert_eq!(r.write(u64::MAX - 2, &[1; 8]), (4096, 4096));
        r.read(u64::MAX, &mut big);
        assert!(big.iter().all(|&b| b == 0));
    }

    /// The access rule byte by byte, over plain arrays: what the word-wise storage must match.
    struct ReferencePage {
        value: Vec<u8>,
        writable: Vec<u8>,
        w1c: Vec<u8>,
    }

    impl ReferencePage {
        fn of(r: &RegisterFile) -> Self {
            let (mut value, mut writable, mut w1c) = (vec![0; PAGE], vec![0; PAGE], vec![0; PAGE]);
            for o in 0..PAGE {
                let w = &r.words.0[o / 8];
                let byte = |v: u64| (v >> (8 * (o % 8))) as u8;
                (value[o], writable[o], w1c[o]) =
                    (byte(w.value), byte(w.writable), byte(w.write1_clear));
            }
            Self {
                value,
                writable,
                w1c,
            }
        }
        fn write(&mut self, at: u64, data: &[u8]) {
            for (i, &d) in data.iter().enumerate() {
                if let Some(o) = at.checked_add(i as u64).filter(|&o| o < PAGE as u64) {
                    let o = o as usize;
                    let keep = self.value[o] & !self.writable[o];
                    self.value[o] = (keep | (d & self.writable[o])) & !(d & self.w1c[o]);
                }
            }
        }
    }

    #[test]
    fn word_storage_follows_the_byte_rule_for_any_access() {
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut r = regs();
        r.set64(offset::FSTS, u64::MAX);
        r.set64(offset::ICS, u64::MAX);
        let mut reference = ReferencePage::of(&r);
        for _ in 0..50_000 {
            let v = next();
            // Mostly the low registers (where the attributes vary), unaligned and straddling.
            let at = if v & 1 == 0 {
                (v >> 8) % 0x140
            } else {
                (v >> 8) % 4200
            };
            let len = ((v >> 40) % 17) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            r.write(at, &data);
            reference.write(at, &data);
            if v & 0xf00 == 0 {
                // Compare, then re-arm the RW1C bits.
                assert!(
                    ReferencePage::of(&r).value == reference.value,
                    "after {at:#x}+{len}"
                );
                r.set32(offset::FSTS, u32::MAX);
                reference = ReferencePage::of(&r);
            }
        }
        assert!(
            ReferencePage::of(&r).value == reference.value,
            "values diverged"
        );
        for at in (0..0x140).step_by(4) {
            let mut b = [0u8; 4];
            r.read(at, &mut b);
            assert_eq!(
                u32::from_le_bytes(b),
                r.get32(at),
                "read and get32 at {at:#x}"
            );
            assert_eq!(&b[..], &reference.value[at as usize..at as usize + 4]);
        }
    }

    #[test]
    fn overlay_keeps_uncovered_bytes() {
        let gcmd = Register::r32(offset::GCMD);
        assert_eq!(overlay(gcmd, 0x0080_0000, 0x1b, &[0x80]), Some(0x8080_0000));
        assert_eq!(overlay(gcmd, 0x1234, 0x1c, &[0xff]), None);
        // A 16-byte write from 0x10 covers GCMD completely.
        let data: Vec<u8> = (0..16).collect();
        assert_eq!(overlay(gcmd, 0, 0x10, &data), Some(0x0b0a_0908));
    }
}
