//! The primitives of the lock-free protocols between the vCPU thread and device threads
//! ([`crate::generation_log`], [`crate::iommu`]): std's, or loom's when the crate is built with
//! `RUSTFLAGS="--cfg loom"` so that the model checks in `generation_log`'s `loom_model` tests
//! explore every interleaving of the real code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, RwLock, RwLockReadGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU64;
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, RwLock, RwLockReadGuard};
