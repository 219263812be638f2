//! The virtio-blk I/O thread.
//!
//! ```text
//!  epoll ── kill EventFd ───────────────► exit
//!        └─ queue q notify EventFd ─────► drain avail ring: walk chain ─► execute ─► used ring
//!                                          (at most 2 x queue size per wakeup, then re-arm)
//!                                        ─► needs_notification? ─► signal_queue(q) (MSI-X)
//!  avail/used ring unusable (bad index, IOMMU fault) ─► queue broken, DEVICE_NEEDS_RESET
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::BlockCounters;
use super::request::{Disk, execute, walk_chain};
use crate::virtio::{ActiveQueue, VirtioInterrupt};

const KILL_TOKEN: u64 = u64::MAX;

/// The state owned by the I/O thread.
pub(super) struct Worker<M> {
    pub(super) memory: M,
    pub(super) queues: Vec<ActiveQueue>,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) disk: Disk,
    pub(super) counters: Arc<BlockCounters>,
    pub(super) kill: EventFd,
    pub(super) max_segments: usize,
    pub(super) broken: Vec<bool>,
    pub(super) dma_enabled: Arc<AtomicBool>,
}

impl<M: GuestMemory> Worker<M> {
    /// Runs until the kill eventfd fires.
    pub(super) fn run(mut self) {
        let epoll = match self.setup_epoll() {
            Ok(epoll) => epoll,
            Err(error) => {
                tracing::error!(%error, "virtio-blk I/O thread cannot poll");
                self.interrupt.set_needs_reset();
                return;
            }
        };
        // Work may have been queued before the thread started.
        for position in 0..self.queues.len() {
            self.process_queue(position);
        }
        let mut events = vec![EpollEvent::default(); self.queues.len() + 1];
        loop {
            let count = match epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::error!(%error, "virtio-blk epoll failed");
                    return;
                }
            };
            for event in &events[..count] {
                let token = event.data();
                if token == KILL_TOKEN {
                    return;
                }
                let position = token as usize;
                if let Some(active) = self.queues.get(position) {
                    if let Ok(notifications) = active.notify.read() {
                        self.counters
                            .notifications
                            .fetch_add(notifications, Ordering::Relaxed);
                    }
                    self.process_queue(position);
                }
            }
        }
    }

    fn setup_epoll(&self) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let watch = |fd: &EventFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                EpollEvent::new(EventSet::IN, token),
            )
        };
        watch(&self.kill, KILL_TOKEN)?;
        for (position, active) in self.queues.iter().enumerate() {
            watch(&active.notify, position as u64)?;
        }
        Ok(epoll)
    }

    /// Processes available requests of the queue at `position` in `self.queues`.
    pub(super) fn process_queue(&mut self, position: usize) {
        if self.broken.get(position).copied().unwrap_or(true) {
            return;
        }
        if !self.dma_enabled.load(Ordering::SeqCst) {
            // Bus mastering is off: leave the requests where they are (the transport kicks
            // the queue when it comes back on).
            return;
        }
        let limit = usize::from(self.queues[position].queue.size()) * 2;
        let mut completed = 0usize;
        let result = loop {
            match self.drain(position, limit - completed) {
                Ok(count) => completed += count,
                Err(error) => break Err(error),
            }
            let active = &mut self.queues[position];
            if completed >= limit {
                // Yield to the event loop (and a possible kill) but come back for the rest.
                if let Err(error) = active.notify.write(1) {
                    tracing::warn!(%error, "Cannot re-arm virtio-blk queue");
                }
                break Ok(());
            }
            if !active.queue.event_idx_enabled() {
                break Ok(());
            }
            match active.queue.enable_notification(&self.memory) {
                Ok(true) => continue,
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if let Err(error) = result {
            tracing::warn!(queue = self.queues[position].index, %error, "virtio-blk queue is broken");
            self.broken[position] = true;
            self.interrupt.set_needs_reset();
            return;
        }
        if completed > 0 {
            let active = &mut self.queues[position];
            if active
                .queue
                .needs_notification(&self.memory)
                .unwrap_or(true)
            {
                self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
                self.interrupt.signal_queue(active.index);
            }
        }
    }

    /// Completes up to `budget` requests; returns how many.
    fn drain(&mut self, position: usize, budget: usize) -> Result<usize, virtio_queue::Error> {
        let mut completed = 0;
        while completed < budget {
            let active = &mut self.queues[position];
            if active.queue.event_idx_enabled() {
                active.queue.disable_notification(&self.memory)?;
            }
            let table = GuestAddress(active.queue.desc_table());
            let size = active.queue.size();
            let head = match active.queue.iter(&self.memory)?.next() {
                Some(chain) => chain.head_index(),
                None => break,
            };
            if head >= size {
                // There is no used-ring slot such a head could be returned in: drop it.
                tracing::debug!(head, "Dropping out-of-range virtio-blk head");
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                completed += 1;
                continue;
            }
            let used_length = match walk_chain(&self.memory, table, size, head, self.max_segments) {
                Ok(chain) => {
                    let completion = execute(&self.memory, &mut self.disk, &chain);
                    self.counters.record(&completion);
                    completion.used_length
                }
                Err(error) => {
                    tracing::debug!(head, %error, "Skipping malformed virtio-blk request");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            self.queues[position]
                .queue
                .add_used(&self.memory, head, used_length)?;
            completed += 1;
        }
        Ok(completed)
    }
}
