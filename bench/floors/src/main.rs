//! bench/floors: physical floors of the vIOMMU's hot operations, measured on this machine.
//!
//! Usage: cargo run --release (from bench/floors; bench/micro does it). Prints
//! `FLOOR <name> <ns per operation>` lines, each the median of 11 timed batches:
//!
//! * `hash_hit_sip` / `hash_hit_mul`: one lookup that hits in a 1024-entry `HashMap` keyed like
//!   an IOTLB entry (source id, PASID, page), with std's SipHash and with a multiplicative hash.
//!   The floor of an IOTLB hit: a hash and one or two cache lines.
//! * `walk4_cached` / `walk4_dram`: four dependent 8-byte reads (each address comes from the
//!   previous read), in a 32 KiB table (L1-resident, as when the page-table lines are hot) and
//!   in a 256 MiB one (each read misses the caches and the TLB: DRAM latency). The floor of a
//!   4-level page walk.
//! * `hash_walk1`: one multiplicative-hash lookup that hits (the cached leaf table of the page's
//!   2 MiB region) and one read it leads to (the PTE), cache-hot. The floor of a walk that
//!   starts from a cached leaf table.
//! * `qi16_read`: reading 16 256-bit descriptors and a wait descriptor from a ring (their first
//!   128 bits, which hold every field these descriptors use) and writing the wait's 4-byte
//!   status. `qi16_hash`: the same plus removing (and re-inserting,
//!   to keep the state) one entry per descriptor in a 1024-entry IOTLB-like map. The floor of
//!   one queue submission of 16 PASID-IOTLB invalidations and a wait.
//! * `scan8192`: comparing the domain and PASID of every entry of an 8192-entry table of
//!   32-byte entries (clearing the matching ones: none match). The floor of a PASID-selective
//!   flush that has to visit every IOTLB slot.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::time::Instant;

/// IOTLB-like key: source id, PASID, page number.
type Key = (u16, u32, u64);

/// A multiplicative (Fx-style) hasher: about the cheapest decent hash.
#[derive(Default)]
struct MulHasher(u64);

impl Hasher for MulHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Median over 11 batches of `iters` calls of `f`, in nanoseconds per call.
fn measure(iters: u64, mut f: impl FnMut(u64) -> u64) -> f64 {
    let mut sink = 0u64;
    for i in 0..iters / 10 {
        sink = sink.wrapping_add(f(i));
    }
    let mut runs: Vec<f64> = (0..11)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                sink = sink.wrapping_add(f(i));
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    black_box(sink);
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    runs[5]
}

fn report(name: &str, ns: f64) {
    println!("FLOOR {name} {ns:.2}");
}

fn hash_hits() {
    let keys: Vec<Key> = (0..1024u64).map(|i| (0x10, 0, 0x10_0000 + i * 7)).collect();
    let sip: HashMap<Key, u64> = keys.iter().map(|k| (*k, k.2 << 12)).collect();
    let mul: HashMap<Key, u64, BuildHasherDefault<MulHasher>> =
        keys.iter().map(|k| (*k, k.2 << 12)).collect();
    let key = keys[517];
    report("hash_hit_sip", measure(5_000_000, |_| sip[black_box(&key)]));
    report("hash_hit_mul", measure(5_000_000, |_| mul[black_box(&key)]));
}

/// A random single cycle over `n` slots (Sattolo), each slot holding the next index.
fn cycle(n: usize) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n as u64).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    let mut next = vec![0u64; n];
    for w in 0..n {
        next[order[w] as usize] = order[(w + 1) % n];
    }
    next
}

fn walks() {
    for (name, bytes, iters) in [
        ("walk4_cached", 32usize << 10, 20_000_000u64),
        ("walk4_dram", 256usize << 20, 200_000),
    ] {
        let table = cycle(bytes / 8);
        let mut at = 0u64;
        let ns = measure(iters, |_| {
            for _ in 0..4 {
                at = table[at as usize];
            }
            at
        });
        report(name, ns);
    }
}

fn hash_walk() {
    let keys: Vec<Key> = (0..256u64).map(|i| (2, 0, 0x8_0000 + i)).collect();
    let table = cycle(4096);
    let tables: HashMap<Key, u64, BuildHasherDefault<MulHasher>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, (i as u64 * 16) % 4096))
        .collect();
    report(
        "hash_walk1",
        measure(5_000_000, |i| {
            let leaf = tables[black_box(&keys[(i % 256) as usize])];
            table[(leaf + (i & 15)) as usize]
        }),
    );
}

fn queue() {
    // 64 slots of 32 bytes (four u64 each); a submission is 16 invalidations and a wait.
    let ring: Vec<u64> = (0..256u64)
        .map(|i| 0x0000_0010_0000_0006 ^ (i << 20))
        .collect();
    let mut status = vec![0u32; 16];
    let mut head = 0usize;
    let mut submit = |status: &mut Vec<u32>| {
        let mut acc = 0u64;
        for d in 0..17 {
            let slot = (head + d) % 64;
            acc = acc.wrapping_add(black_box(ring[4 * slot]) ^ black_box(ring[4 * slot + 1]));
        }
        head = (head + 17) % 64;
        status[(acc & 15) as usize] = 1;
        acc
    };
    report("qi16_read", measure(5_000_000, |_| submit(&mut status)));
    let mut map: HashMap<Key, u64, BuildHasherDefault<MulHasher>> =
        (0..1024u64).map(|i| ((0x10, 1, i), i << 12)).collect();
    report(
        "qi16_hash",
        measure(300_000, |i| {
            let mut acc = submit(&mut status);
            for d in 0..16 {
                let k = (0x10, 1, (i * 16 + d) % 1024);
                let v = map.remove(&k).unwrap_or(0);
                map.insert(k, v);
                acc = acc.wrapping_add(v);
            }
            acc
        }),
    );
}

/// An IOTLB-like entry: tag, domain id, PASID, translation.
#[derive(Clone, Copy)]
struct Entry {
    tag: u64,
    did: u16,
    pasid: u32,
    out: u64,
    valid: bool,
}

fn scan() {
    let mut table: Vec<Entry> = (0..8192u64)
        .map(|i| Entry {
            tag: i,
            did: 2,
            pasid: 0,
            out: i << 12,
            valid: true,
        })
        .collect();
    report(
        "scan8192",
        measure(20_000, |_| {
            let (did, pasid) = black_box((9u16, 0u32));
            let mut cleared = 0u64;
            for e in table.iter_mut() {
                if e.valid && e.did == did && e.pasid == pasid {
                    e.valid = false;
                    cleared += 1;
                }
            }
            cleared + table[0].tag + table[0].out
        }),
    );
}

fn main() {
    hash_hits();
    walks();
    hash_walk();
    queue();
    scan();
}
