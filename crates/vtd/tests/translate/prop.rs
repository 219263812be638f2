//! Property tests: random first- and second-stage tables (random mappings including
//! superpages, random flags and reserved bits, random damage to intermediate entries) against
//! the plain reference walker in `vtd::fuzzing::reference`. Translations and fault reasons
//! must agree, request after request, through the translator's caches.

use crate::support::*;
use proptest::collection::vec;
use proptest::prelude::*;
use test_fixtures::TABLES_BASE;
use vtd::fuzzing::reference;
use vtd::request::Access;

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

fn idx(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & 511
}

fn present(stage: Stage, e: u64) -> bool {
    match stage {
        Stage::First => e & FS_P != 0,
        Stage::Second => e & (SS_R | SS_W) != 0,
    }
}

fn is_table_page(gpa: u64) -> bool {
    (TABLES_BASE..DATA_BASE).contains(&gpa)
}

/// Writes `value` as the entry for `iova` at `level`, creating (or replacing leaves by) tables
/// on the way down.
fn put(mem: &Mem, pt: &PageTable, iova: u64, level: u32, value: u64) {
    let mut table = pt.root;
    for l in (level + 1..=pt.levels).rev() {
        let a = table + idx(iova, l) * 8;
        let e = mem.r64(a);
        let leaf = l <= 3 && e & 0x80 != 0;
        let next = e & ADDR_MASK;
        table = if present(pt.stage, e) && !leaf && is_table_page(next) {
            next
        } else {
            let t = mem.page();
            mem.w64(a, t | pt.stage.table_flags());
            t
        };
    }
    mem.w64(table + idx(iova, level) * 8, value);
}

/// The entry address for `iova` at `level` if the path to it exists.
fn find(mem: &Mem, pt: &PageTable, iova: u64, level: u32) -> Option<u64> {
    let mut table = pt.root;
    for l in (level + 1..=pt.levels).rev() {
        let e = mem.r64(table + idx(iova, l) * 8);
        let next = e & ADDR_MASK;
        if !present(pt.stage, e) || (l <= 3 && e & 0x80 != 0) || !is_table_page(next) {
            return None;
        }
        table = next;
    }
    Some(table + idx(iova, level) * 8)
}

/// IOVAs from a small structured space so mappings collide and share tables; a few outside it.
fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => (0u64..2, 0u64..3, 0u64..3, 0u64..4, 0u64..4096).prop_map(|(a, b, c, d, off)| {
            (a << 39) | (b << 30) | (c << 21) | (d << 12) | off
        }),
        1 => Just(1u64 << 47),
        1 => Just(0xffff_ff80_0000_0000u64),
        1 => any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
struct MapOp {
    iova: u64,
    level: u32,
    value: u64,
}

fn map_op(stage: Stage) -> impl Strategy<Value = MapOp> {
    let (p, rw, us, ps) = match stage {
        Stage::First => (FS_P, FS_RW, FS_US, FS_PS),
        Stage::Second => (SS_R, SS_W, 0, SS_PS),
    };
    (
        iova(),
        prop_oneof![6 => Just(1u32), 2 => Just(2u32), 1 => Just(3u32)],
        0u64..24,
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.8),
        prop_oneof![
            12 => Just(0u64),
            1 => Just(1u64 << 51),
            1 => Just(1u64 << 63),
            1 => Just(1u64 << 13),
            1 => Just(1u64 << 11),
            1 => Just(1u64 << 12),
            1 => Just(0x78u64),
        ],
    )
        .prop_map(move |(iova, level, k, has_p, has_rw, has_us, extra)| {
            let size = 1u64 << (12 + 9 * (level - 1));
            let target = match k {
                0 => 0xfee0_0000 & !(size - 1),
                1 => OUTSIDE_RAM,
                _ => (DATA_BASE & !(size - 1)) + k * size,
            };
            let mut value = target | extra;
            if has_p {
                value |= p;
            }
            if has_rw {
                value |= rw;
            }
            if has_us {
                value |= us;
            }
            if level > 1 {
                value |= ps;
            }
            MapOp {
                iova: iova & !(size - 1),
                level,
                value,
            }
        })
}

/// A request: mostly at an address some mapping covers, sometimes anywhere.
#[derive(Clone, Debug)]
struct Req {
    pick: Option<(prop::sample::Index, u64)>,
    other: u64,
    write: bool,
    mode: u8,
}

impl Req {
    fn iova(&self, maps: &[MapOp]) -> u64 {
        match &self.pick {
            Some((i, off)) if !maps.is_empty() => {
                let m = &maps[i.index(maps.len())];
                let size = 1u64 << (12 + 9 * (m.level - 1));
                m.iova.wrapping_add(off % size)
            }
            _ => self.other,
        }
    }
}

fn req() -> impl Strategy<Value = Req> {
    (
        prop::option::weighted(0.75, (any::<prop::sample::Index>(), any::<u64>())),
        iova(),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(pick, other, write, mode)| Req {
            pick,
            other,
            write,
            mode,
        })
}

#[derive(Clone, Debug)]
struct Damage {
    iova: u64,
    level: u32,
    set: u64,
    clear: u64,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        iova(),
        1u32..=4,
        prop_oneof![
            Just(0u64),
            Just(0x80),
            Just(1 << 50),
            Just(0x8),
            Just(1 << 63)
        ],
        prop_oneof![Just(0u64), Just(1), Just(2), Just(4), Just(3)],
    )
        .prop_map(|(iova, level, set, clear)| Damage {
            iova,
            level,
            set,
            clear,
        })
}

fn build(mem: &Mem, pt: &PageTable, maps: &[MapOp], damage: &[Damage]) {
    for m in maps {
        if m.iova >> 48 == 0 {
            put(mem, pt, m.iova, m.level.min(pt.levels), m.value);
        }
    }
    for d in damage {
        if d.level <= pt.levels
            && let Some(a) = find(mem, pt, d.iova, d.level)
        {
            mem.w64(a, (mem.r64(a) | d.set) & !d.clear);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn first_stage_matches_reference(
        maps in vec(map_op(Stage::First), 1..24),
        dmg in vec(damage(), 0..6),
        reqs in vec(req(), 1..40),
        wpe in any::<bool>(),
    ) {
        let mem = Mem::new();
        let t = Tables::scalable(&mem);
        t.sm_device(SID, true);
        let pt = PageTable::new(&mem, 4, Stage::First);
        build(&mem, &pt, &maps, &dmg);
        t.pasid_entry(SID, 0, fs_entry(&pt, 2));
        let mut pe = fs_entry(&pt, 2);
        pe.qw2 = pe.qw2.with_sre(true).with_wpe(wpe);
        t.pasid_entry(SID, 1, pe);
        let unit = Unit::new(&mem, t.state());
        for r in reqs {
            let (iova, write, mode) = (r.iova(&maps), r.write, r.mode);
            let (pasid, supervisor, wpe) = match mode {
                0 => (None, false, false),
                1 => (Some(1), false, wpe),
                _ => (Some(1), true, wpe),
            };
            let mut access = if write { Access::WRITE } else { Access::READ };
            access.privileged = supervisor;
            let got = unit
                .req(SID, pasid, iova, access)
                .map(|tr| tr.gpa(iova))
                .map_err(|f| f.reason.code());
            let want = reference::first_stage(&*mem.ram, pt.root, iova, write, supervisor, wpe);
            prop_assert_eq!(got, want, "iova {:#x} write {} mode {}", iova, write, mode);
        }
    }

    #[test]
    fn legacy_second_stage_matches_reference(
        maps in vec(map_op(Stage::Second), 1..24),
        dmg in vec(damage(), 0..6),
        reqs in vec(req(), 1..40),
        four_levels in any::<bool>(),
    ) {
        let mem = Mem::new();
        let t = Tables::legacy(&mem);
        let levels = if four_levels { 4 } else { 3 };
        let pt = PageTable::new(&mem, levels, Stage::Second);
        build(&mem, &pt, &maps, &dmg);
        t.legacy_translated(SID, &pt, 2);
        let unit = Unit::new(&mem, t.state());
        for r in reqs {
            let (iova, write) = (r.iova(&maps), r.write);
            let access = if write { Access::WRITE } else { Access::READ };
            let got = unit
                .req(SID, None, iova, access)
                .map(|tr| tr.gpa(iova))
                .map_err(|f| f.reason.code());
            let want = reference::second_stage_legacy(&*mem.ram, pt.root, levels, iova, write);
            prop_assert_eq!(got, want, "iova {:#x} write {}", iova, write);
        }
    }
}
