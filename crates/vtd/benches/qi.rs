//! One queued-invalidation submission as Linux makes it for a strict-mode unmap batch: 16
//! PASID-based IOTLB invalidations (page-selective within PASID) and a wait with a status write,
//! processed synchronously on the IQT write; and the same shape with waits only, to separate
//! the queue machinery from the translator's cache invalidation.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd::GuestRam;
use vtd::{Config, FaultInterrupt, Vtd};
use vtd_spec::regs::offset;

const QUEUE: u64 = 0x10_0000;
const STATUS: u64 = 0x20_0000;
const BATCH: u64 = 16;

struct NoIrq;

impl FaultInterrupt for NoIrq {
    fn deliver(&self, _address: u64, _data: u32) {}
}

fn bench(c: &mut Criterion) {
    let ram = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap());
    let vtd = Vtd::new(Config::first_stage(), ram.clone(), Arc::new(NoIrq));
    vtd.mmio_write(offset::IQT, &0u32.to_le_bytes());
    vtd.mmio_write(offset::IQA, &(QUEUE | (1 << 11)).to_le_bytes()); // 128 x 256-bit slots
    vtd.mmio_write(offset::GCMD, &(1u32 << 26).to_le_bytes());
    let entries = 128u64;
    let mut tail = 0u64;
    let put = |slot: u64, q0: u64, q1: u64| {
        let at = QUEUE + slot * 32;
        ram.write_at(at, &q0.to_le_bytes()).unwrap();
        ram.write_at(at + 8, &q1.to_le_bytes()).unwrap();
    };
    c.bench_function("qi: 16 PASID-IOTLB page invalidations + wait", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                // G=3, DID 2, PASID 0, one 4 KiB page with IH.
                put(
                    tail,
                    6 | (3 << 4) | (2 << 16),
                    (0xfff0_0000 + (i << 12)) | (1 << 6),
                );
                tail = (tail + 1) % entries;
            }
            put(tail, 5 | (1 << 5) | (2 << 32), STATUS);
            tail = (tail + 1) % entries;
            vtd.mmio_write(offset::IQT, &((tail << 5) as u32).to_le_bytes());
            black_box(tail);
        })
    });
    // The same submission shape with waits only: the queue machinery without cache work.
    c.bench_function("qi: 16 waits + wait (queue machinery only)", |b| {
        b.iter(|| {
            for _ in 0..=BATCH {
                put(tail, 5 | (1 << 5) | (2 << 32), STATUS);
                tail = (tail + 1) % entries;
            }
            vtd.mmio_write(offset::IQT, &((tail << 5) as u32).to_le_bytes());
            black_box(tail);
        })
    });
    let c = vtd.counters();
    assert_eq!(c.qi_errors, 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
