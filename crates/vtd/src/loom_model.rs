//! Model checks (loom) of the generation protocol between the vCPU thread, which invalidates,
//! and device threads, which translate through [`DeviceIommu`]: with the real
//! [`GenerationLog`] and the real `DeviceIommu`, in every interleaving loom explores, no
//! translation from before an invalidation is returned after that invalidation's wait
//! descriptor completed; and the opposite order (publish, then drop the caches) is caught.
//!
//! ```text
//!  vCPU thread                                   device thread(s)
//!   guest rewrites the PTE (OLD -> NEW)           done? = wait completed, read first
//!   invalidation: apply_then_publish(             DeviceIommu::translate_piece(IOVA)
//!     page scope, drop the unit's IOTLB)            ─► ModelUnit::remap (IOTLB, else PTE)
//!   wait completes (done = true)                  done? ⇒ the answer must be NEW
//! ```
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p vtd --lib --release loom_model`
//! (`scripts/loom` does it with a target directory of its own).

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use loom::sync::Mutex;
use loom::sync::atomic::{AtomicBool, AtomicU64};
use vm_memory::Permissions as Access;
use vtd_spec::SourceId;

use crate::generation_log::{GenerationLog, Stale};
use crate::iommu::DeviceIommu;
use crate::request::{DmaRequest, Fault, Generations, Permissions, Remapper, Translation};

const IOVA: u64 = 0x10_0000;
const OLD: u64 = 0x20_0000;
const NEW: u64 = 0x30_0000;

/// The unit reduced to what the protocol depends on: one page-table entry in guest memory, an
/// IOTLB that holds it until invalidated (a fill is atomic with its walk here; the real
/// translator's fill-versus-invalidation race has its own tests), and the real log.
struct ModelUnit {
    pte: AtomicU64,
    iotlb: Mutex<Option<u64>>,
    log: GenerationLog,
}

impl ModelUnit {
    /// The state after the device's first DMA: the unit's IOTLB holds OLD.
    fn warm() -> Self {
        Self {
            pte: AtomicU64::new(OLD),
            iotlb: Mutex::new(Some(OLD)),
            log: GenerationLog::default(),
        }
    }

    fn drop_iotlb(&self) {
        *self.iotlb.lock().unwrap() = None;
    }

    fn page() -> impl Iterator<Item = Stale> + Clone {
        std::iter::once(Stale::Iova {
            start: IOVA,
            end: IOVA + 0x1000,
        })
    }

    /// The unit's order (`Vtd::dispatch`).
    fn invalidate(&self) {
        self.log
            .apply_then_publish(Self::page(), || self.drop_iotlb());
    }

    /// The order that lost data: the new generation visible before the caches drop.
    fn invalidate_publishing_first(&self) {
        self.log.publish(Self::page());
        self.drop_iotlb();
    }
}

impl Remapper for ModelUnit {
    fn remap(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        let mut iotlb = self.iotlb.lock().unwrap();
        let gpa = *iotlb.get_or_insert_with(|| self.pte.load(SeqCst));
        Ok(Translation {
            iova_base: req.iova & !0xfff,
            gpa_base: gpa,
            size: 0x1000,
            perms: Permissions {
                read: true,
                write: true,
            },
        })
    }
}

impl Generations for ModelUnit {
    fn generation(&self) -> u64 {
        self.log.current()
    }

    fn stale_between(&self, from: u64, to: u64, stale: &mut dyn FnMut(Stale)) -> bool {
        self.log.stale_between(from, to, stale)
    }
}

fn translate(device: &DeviceIommu) -> u64 {
    device.translate_piece(IOVA, 8, Access::Read).unwrap().0
}

/// A device lookup that starts after the wait completed must see NEW.
fn checked_translate(device: &DeviceIommu, done: &AtomicBool) {
    let completed = done.load(SeqCst);
    let gpa = translate(device);
    if completed {
        assert_eq!(
            gpa, NEW,
            "a translation was used after its invalidation completed"
        );
    }
}

/// `devices` threads translate (twice each) while the vCPU rewrites the PTE, invalidates with
/// `invalidate` and completes the wait; afterwards every device must see NEW. One device is
/// explored exhaustively; with two, interleavings of up to three preemptions (the full space
/// takes hours; bugs of this kind need one or two).
fn model(devices: usize, invalidate: fn(&ModelUnit)) {
    let mut builder = loom::model::Builder::new();
    if devices > 1 {
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let unit = Arc::new(ModelUnit::warm());
        let device = Arc::new(DeviceIommu::new(unit.clone(), SourceId::new(0, 3, 0)));
        assert_eq!(translate(&device), OLD, "remembered before the race");
        let done = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..devices)
            .map(|_| {
                let (device, done) = (device.clone(), done.clone());
                loom::thread::spawn(move || {
                    checked_translate(&device, &done);
                    checked_translate(&device, &done);
                })
            })
            .collect();
        unit.pte.store(NEW, SeqCst);
        invalidate(&unit);
        done.store(true, SeqCst);
        checked_translate(&device, &done);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(translate(&device), NEW, "after every thread finished");
    });
}

#[test]
fn loom_model_no_translation_outlives_its_invalidation() {
    model(1, ModelUnit::invalidate);
}

#[test]
fn loom_model_two_devices_no_translation_outlives_its_invalidation() {
    model(2, ModelUnit::invalidate);
}

#[test]
#[should_panic(expected = "after its invalidation completed")]
fn loom_model_catches_publishing_before_the_caches_drop() {
    model(1, ModelUnit::invalidate_publishing_first);
}
