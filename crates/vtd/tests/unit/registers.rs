//! The register page through `mmio_read` / `mmio_write`: reset, access widths and offsets,
//! attributes, and the GCMD commands.

use crate::support::*;
use vtd::GuestRam;
use vtd_spec::regs::offset;

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const WBF: u32 = 1 << 27;
const QIE: u32 = 1 << 26;

fn snapshot(rig: &Rig) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    rig.vtd.mmio_read(0, &mut page);
    page
}

#[test]
fn reset_restores_every_register() {
    let mut rig = Rig::first_stage();
    let clean = snapshot(&rig);
    // Scribble: commands, queue work, a fault, then every byte of the page.
    rig.w64(offset::RTADDR, 0x3000 | (1 << 10));
    rig.command(SRTP);
    rig.command(TE);
    rig.enable_qi(true, 0);
    rig.submit(&[[0xf, 0, 0, 0]]);
    rig.w32(offset::FECTL, 0);
    for at in 0..4096u64 {
        rig.vtd.mmio_write(at, &[0xa5]);
    }
    assert_ne!(snapshot(&rig), clean);
    rig.vtd.reset();
    assert_eq!(snapshot(&rig), clean);
    let state = vtd::observer::UnitView::state(&*rig.vtd);
    assert!(!state.translation_enabled);
    assert_eq!(state.root.into_bits(), 0);
}

#[test]
fn every_offset_and_width_is_safe_and_read_only_registers_stay() {
    let rig = Rig::first_stage();
    let (ver, cap, ecap) = (
        rig.r32(offset::VER),
        rig.r64(offset::CAP),
        rig.r64(offset::ECAP),
    );
    for width in [1usize, 2, 4, 8] {
        for at in 0..4096u64 {
            let mut buf = vec![0u8; width];
            rig.vtd.mmio_read(at, &mut buf);
            rig.vtd.mmio_write(at, &vec![0xff; width]);
            rig.vtd.mmio_write(at, &vec![0x00; width]);
        }
    }
    assert_eq!(rig.r32(offset::VER), ver);
    assert_eq!(rig.r64(offset::CAP), cap);
    assert_eq!(rig.r64(offset::ECAP), ecap);
    assert_eq!(
        rig.r64(offset::IQERCD) >> 4,
        0,
        "reserved bits of IQERCD stay 0"
    );
}

/// QEMU aborted on MMIO accesses wider than 8 bytes; here any length at any offset is fine.
#[test]
fn oversized_and_out_of_page_accesses_do_not_panic() {
    let rig = Rig::first_stage();
    let mut big = [0u8; 64];
    rig.vtd.mmio_read(0, &mut big);
    assert_eq!(
        u64::from_le_bytes(big[8..16].try_into().unwrap()),
        rig.r64(offset::CAP)
    );
    rig.vtd.mmio_write(0, &[0xff; 64]);
    rig.vtd.mmio_write(4090, &[0xff; 64]);
    rig.vtd.mmio_read(4090, &mut big);
    assert!(big[6..].iter().all(|&b| b == 0));
    rig.vtd.mmio_write(u64::MAX - 3, &[0xff; 16]);
    rig.vtd.mmio_read(u64::MAX, &mut big);
    assert!(big.iter().all(|&b| b == 0));
    rig.vtd.mmio_write(0x1000, &[0xff; 8]);
    rig.vtd.mmio_read(0x18, &mut []);
    rig.vtd.mmio_write(0x18, &[]);
    // The 64-byte write at 0 covered GCMD with all ones: TE and QIE are now on.
    assert_ne!(rig.r32(offset::GSTS) & TE, 0);
}

#[test]
fn sixty_four_bit_registers_work_as_two_halves() {
    let rig = Rig::first_stage();
    let cap = rig.r64(offset::CAP);
    assert_eq!(
        rig.r32(offset::CAP) as u64 | (rig.r32(offset::CAP + 4) as u64) << 32,
        cap
    );
    rig.w32(offset::RTADDR, 0x1234_5400);
    rig.w32(offset::RTADDR + 4, 0x9);
    assert_eq!(rig.r64(offset::RTADDR), 0x9_1234_5400);
    rig.w32(offset::IQA, 0x7000 | (1 << 11) | 2);
    rig.w32(offset::IQA + 4, 0x1);
    assert_eq!(rig.r64(offset::IQA), 0x1_0000_7802);
}

#[test]
fn write_one_to_clear_bits() {
    let mut rig = Rig::first_stage();
    rig.enable_qi(true, 0);
    rig.submit(&[[5 | (1 << 4), 0, 0, 0], [0xf, 0, 0, 0]]);
    assert_eq!(rig.r32(offset::ICS), 1);
    assert_eq!(rig.r32(offset::FSTS) & 0x10, 0x10);
    rig.w32(offset::ICS, 0);
    rig.w32(offset::FSTS, 0);
    assert_eq!(
        (rig.r32(offset::ICS), rig.r32(offset::FSTS) & 0x10),
        (1, 0x10),
        "writing 0 keeps"
    );
    // Replace the bad descriptor, or clearing IQE would resume into it again.
    rig.ram.write_at(QUEUE + 32, &5u64.to_le_bytes()).unwrap();
    rig.w32(offset::ICS, 1);
    rig.w32(offset::FSTS, 0x10);
    assert_eq!((rig.r32(offset::ICS), rig.r32(offset::FSTS)), (0, 0));
}

#[test]
fn gcmd_commands_update_gsts_and_the_translation_state() {
    let rig = Rig::first_stage();
    let root = 0x5000 | (1 << 10);
    rig.w64(offset::RTADDR, root);
    assert_eq!(
        vtd::observer::UnitView::state(&*rig.vtd).root.into_bits(),
        0,
        "not latched yet"
    );
    rig.command(SRTP);
    assert_eq!(rig.r32(offset::GSTS), 1 << 30, "RTPS");
    let s = vtd::observer::UnitView::state(&*rig.vtd);
    assert_eq!(s.root.into_bits(), root);
    rig.w64(offset::RTADDR, 0x9000);
    assert_eq!(
        vtd::observer::UnitView::state(&*rig.vtd).root.into_bits(),
        root
    );
    rig.command(TE);
    assert_eq!(rig.r32(offset::GSTS) & TE, TE);
    assert!(vtd::observer::UnitView::state(&*rig.vtd).translation_enabled);
    let seen = rig.rec.take();
    assert_eq!(seen.len(), 2, "one replay notice per change: {seen:?}");
    assert_eq!(seen[1], Seen::Changed(root, true));
    // Byte writes: GCMD bytes a write does not cover keep the current enables.
    rig.w32(offset::IQT, 0);
    rig.vtd
        .mmio_write(offset::GCMD + 3, &[((TE | QIE) >> 24) as u8]);
    assert_eq!(rig.r32(offset::GSTS) & (TE | QIE), TE | QIE);
    rig.vtd.mmio_write(offset::GCMD, &[0, 0]);
    assert_eq!(rig.r32(offset::GSTS) & (TE | QIE), TE | QIE);
    // WBF without CAP.RWBF, and the interrupt-remapping commands, are ignored.
    rig.w32(
        offset::GCMD,
        TE | QIE | WBF | (1 << 25) | (1 << 24) | (1 << 23),
    );
    assert_eq!(rig.r32(offset::GSTS), TE | QIE | (1 << 30));
    assert_eq!(rig.r32(offset::GCMD), 0, "GCMD reads 0");
    rig.w32(offset::GCMD, QIE);
    assert!(!vtd::observer::UnitView::state(&*rig.vtd).translation_enabled);
}

#[test]
fn reset_values_follow_the_spec() {
    let rig = Rig::first_stage();
    assert_eq!(rig.r32(offset::VER), 0x40);
    assert_eq!(rig.r32(offset::FECTL), 0x8000_0000, "FECTL.IM");
    assert_eq!(rig.r32(offset::IECTL), 0x8000_0000, "IECTL.IM");
    assert_eq!(rig.r64(offset::CAP), rig.vtd.cap().into_bits());
    assert_eq!(rig.r64(offset::ECAP), rig.vtd.ecap().into_bits());
    for reg in [offset::GSTS, offset::FSTS, offset::ICS] {
        assert_eq!(rig.r32(reg), 0);
    }
    for reg in [
        offset::RTADDR,
        offset::IQH,
        offset::IQT,
        offset::IQA,
        offset::IQERCD,
    ] {
        assert_eq!(rig.r64(reg), 0);
    }
    // Registers of features not offered (AFL, PMR, IR, page requests, MTRR) read 0.
    for reg in [
        offset::AFLOG,
        offset::PMEN,
        offset::IRTA,
        offset::PQA,
        offset::MTRRCAP,
    ] {
        rig.w64(reg, u64::MAX);
        assert_eq!(rig.r64(reg), 0);
    }
}
