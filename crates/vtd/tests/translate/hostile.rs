//! Hostile guests: random bytes as root, context, PASID and page tables, random RTADDR, random
//! capabilities, random requests and invalidations. Nothing may panic (tests run with overflow
//! checks), every call returns a translation or a fault, and the caches stay within bounds.

use crate::support::*;
use proptest::collection::vec;
use proptest::prelude::*;
use test_fixtures::TABLES_BASE;
use vtd::GuestRam;
use vtd::invalidation::Invalidation;
use vtd::request::{Access, DmaRequest};
use vtd::{Translator, UnitState};
use vtd_spec::SourceId;
use vtd_spec::regs::{Cap, Ecap, RtAddr};

/// The tables live in a 24 KiB window; entries mostly point back into it.
const WINDOW: u64 = 0x10_0000;
const WINDOW_PAGES: u64 = 6;

/// Low bits that make an entry plausible: present, R/W, U/S, PS, PASIDE, PDTS.
fn flags() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0x7u64),
        2 => Just(0x3u64),
        2 => Just(0x1u64),
        1 => Just(0x87u64),
        1 => Just(0x409u64),
        1 => Just(0x5u64),
        1 => any::<u16>().prop_map(|f| u64::from(f & 0xfff)),
    ]
}

fn qword() -> impl Strategy<Value = u64> {
    prop_oneof![
        // A plausible entry: a pointer into the window with plausible low flag bits.
        6 => (0..WINDOW_PAGES, flags()).prop_map(|(p, f)| (WINDOW + p * 0x1000) | f),
        // Same with random high bits (reserved, XD, ignored, beyond HAW).
        2 => (0..WINDOW_PAGES, any::<u16>(), any::<u16>())
            .prop_map(|(p, f, h)| (WINDOW + p * 0x1000) | u64::from(f & 0xfff) | (u64::from(h) << 48)),
        3 => Just(0u64),
        1 => any::<u64>(),
    ]
}

fn inv() -> impl Strategy<Value = Invalidation> {
    let did = 0u16..4;
    prop_oneof![
        Just(Invalidation::ContextGlobal),
        did.clone()
            .prop_map(|did| Invalidation::ContextDomain { did }),
        (did.clone(), any::<u16>(), 0u8..4).prop_map(|(did, s, fm)| Invalidation::ContextDevice {
            did,
            sid: SourceId(s),
            fm
        }),
        Just(Invalidation::IotlbGlobal),
        did.clone()
            .prop_map(|did| Invalidation::IotlbDomain { did }),
        (did.clone(), any::<u64>(), any::<u8>(), any::<bool>())
            .prop_map(|(did, addr, am, ih)| Invalidation::IotlbPage { did, addr, am, ih }),
        (did.clone(), 0u32..4).prop_map(|(did, pasid)| Invalidation::PasidIotlbAll { did, pasid }),
        (
            did.clone(),
            any::<u32>(),
            any::<u64>(),
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(did, pasid, addr, am, ih)| Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                ih
            }),
        Just(Invalidation::PasidCacheGlobal),
        did.clone()
            .prop_map(|did| Invalidation::PasidCacheDomain { did }),
        (did, any::<u32>()).prop_map(|(did, pasid)| Invalidation::PasidCachePasid { did, pasid }),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Translate(DmaRequest),
    Invalidate(Invalidation),
    ReadPasidEntry(u16, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let sid = prop_oneof![3 => (0u16..4).prop_map(|d| d << 3), 1 => any::<u16>()];
    let pasid = prop_oneof![3 => Just(None), 2 => (0u32..130).prop_map(Some), 1 => any::<u32>().prop_map(Some)];
    let iova = prop_oneof![3 => 0u64..(1 << 22), 1 => any::<u64>()];
    let access = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(read, write, execute, privileged)| Access {
            read,
            write,
            execute,
            privileged,
        },
    );
    prop_oneof![
        8 => (sid.clone(), pasid, iova, access).prop_map(|(s, pasid, iova, access)| {
            Op::Translate(DmaRequest { sid: SourceId(s), pasid, iova, access })
        }),
        2 => inv().prop_map(Op::Invalidate),
        1 => (sid, any::<u32>()).prop_map(|(s, p)| Op::ReadPasidEntry(s, p % 200)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_tables_never_panic(
        words in vec(qword(), (WINDOW_PAGES * 512) as usize),
        rtaddr in (0..WINDOW_PAGES, prop_oneof![4 => Just(0u64), 5 => Just(1u64), 1 => 2u64..4])
            .prop_map(|(p, ttm)| (WINDOW + p * 0x1000) | (ttm << 10)),
        cap_bits in any::<u64>(),
        ecap_bits in any::<u64>(),
        te in prop::bool::weighted(0.9),
        ops in vec(op(), 1..64),
    ) {
        let mem = Mem::new();
        for (i, w) in words.iter().enumerate() {
            mem.w64(WINDOW + 8 * i as u64, *w);
        }
        // Random capabilities, but always a usable width so walks happen.
        let cap = Cap::from_bits(cap_bits).with_mgaw(47).with_sagaw(0b1110 & cap_bits as u8 | 0b0100);
        let ecap = Ecap::from_bits(ecap_bits).with_smts(true);
        let state = UnitState {
            root: RtAddr::from_bits(rtaddr),
            translation_enabled: te,
            cap,
            ecap,
        };
        let t = Translator::new(cap, ecap, Default::default());
        for op in ops {
            match op {
                Op::Translate(req) => {
                    if let Ok(tr) = t.translate(&*mem.ram, &state, &req) {
                        prop_assert!(tr.size.is_power_of_two());
                        prop_assert!(tr.iova_base <= req.iova);
                        prop_assert!(req.iova - tr.iova_base < tr.size);
                        prop_assert_eq!(tr.gpa_base & (tr.size.min(1 << 30) - 1) & 0xfff, 0);
                    }
                }
                Op::Invalidate(inv) => t.invalidate(&inv),
                Op::ReadPasidEntry(sid, pasid) => {
                    let _ = t.read_pasid_entry(&*mem.ram, &state, SourceId(sid), pasid);
                }
            }
        }
        let s = t.cache_stats();
        prop_assert!(s.iotlb_entries <= s.iotlb_capacity);
        prop_assert!(s.context_entries <= s.context_capacity);
        prop_assert!(s.pasid_entries <= s.pasid_capacity);
        // Guest memory outside the window was never written by A/D updates.
        prop_assert_eq!(mem.ram.read_u64(WINDOW - 8).unwrap(), 0);
        prop_assert_eq!(mem.ram.read_u64(WINDOW + WINDOW_PAGES * 0x1000).unwrap(), 0);
    }
}

/// One corruption of a live table word: which word (among the non-zero ones), and how.
#[derive(Clone, Debug)]
struct Corruption {
    word: prop::sample::Index,
    xor: u64,
    overwrite: Option<u64>,
}

fn corruption() -> impl Strategy<Value = Corruption> {
    (
        any::<prop::sample::Index>(),
        prop_oneof![
            3 => (0u32..64).prop_map(|b| 1u64 << b),
            1 => any::<u64>(),
        ],
        prop::option::weighted(0.15, any::<u64>()),
    )
        .prop_map(|(word, xor, overwrite)| Corruption {
            word,
            xor,
            overwrite,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Well-formed tables (legacy or scalable with first- and second-stage PASIDs), then random
    /// bit flips and overwrites of live entries at every level: deep walks through bad data.
    #[test]
    fn corrupted_tables_never_panic(
        scalable in any::<bool>(),
        corruptions in vec(corruption(), 1..12),
        ops in vec(op(), 1..48),
    ) {
        let mem = Mem::new();
        let t = if scalable { Tables::scalable(&mem) } else { Tables::legacy(&mem) };
        let fs = PageTable::new(&mem, 4, Stage::First);
        let ss = PageTable::new(&mem, 4, Stage::Second);
        for i in 0..8u64 {
            fs.map4k(&mem, i * 0x1000, DATA_BASE + i * 0x1000);
            ss.map4k(&mem, i * 0x1000, DATA_BASE + i * 0x1000);
        }
        fs.map(&mem, 0x20_0000, 0x40_0000, 2, Stage::First.leaf_rw());
        ss.map(&mem, 0x4000_0000, 0x4000_0000, 3, Stage::Second.leaf_rw());
        let devs = [SourceId::new(0, 0, 0), SourceId::new(0, 1, 0), SourceId::new(0, 2, 0)];
        if scalable {
            for (n, &d) in devs.iter().enumerate() {
                t.sm_device(d, true);
                t.pasid_entry(d, 0, if n == 1 { ss_entry(&ss, 1) } else { fs_entry(&fs, 1) });
                t.pasid_entry(d, 5, fs_entry(&fs, 2));
                t.pasid_entry(d, 70, ss_entry(&ss, 3));
            }
        } else {
            for &d in &devs {
                t.legacy_translated(d, &ss, 1);
            }
        }
        let live: Vec<u64> = (TABLES_BASE..mem.allocated_end())
            .step_by(8)
            .filter(|&a| mem.r64(a) != 0)
            .collect();
        for c in &corruptions {
            let a = live[c.word.index(live.len())];
            mem.w64(a, c.overwrite.unwrap_or(mem.r64(a) ^ c.xor));
        }
        let state = t.state();
        let unit = Unit::new(&mem, state);
        for op in ops {
            match op {
                Op::Translate(mut req) => {
                    req.sid = devs[usize::from(req.sid.0) % devs.len()];
                    if let Ok(tr) = unit.translator.translate(&*mem.ram, &state, &req) {
                        prop_assert!(tr.size.is_power_of_two());
                        prop_assert!(req.iova.wrapping_sub(tr.iova_base) < tr.size);
                    }
                }
                Op::Invalidate(inv) => unit.inv(inv),
                Op::ReadPasidEntry(sid, pasid) => {
                    let _ = unit.translator.read_pasid_entry(&*mem.ram, &state, SourceId(sid), pasid);
                }
            }
        }
    }
}
