//! The virtio-blk I/O thread.
//!
//! ```text
//!  epoll ── kill EventFd ───────────────► exit
//!        └─ queue q notify EventFd ─► IoGate::enter (waits while the VM is paused; the stop
//!             flag set: exit) ─► drain avail ring: walk chain ─► execute ─► used ring
//!                                          (at most 2 x queue size per wakeup, then re-arm)
//!                                        ─► needs_notification? ─► signal_queue(q) (MSI-X)
//!  a ring unusable (bad avail index; descriptor table, avail or used ring not translatable)
//!        ─► DEVICE_NEEDS_RESET + configuration-change interrupt; every queue stops
//!  driver writes status 0 ─► Block::reset joins this thread ─► re-init starts a fresh one
//! ```
//!
//! A ring the device cannot use is an error it cannot recover from on its own (virtio 1.2,
//! 2.1.2): it sets DEVICE_NEEDS_RESET, sends a configuration-change notification, and touches
//! no queue again; the driver's reset (device_status 0) and re-initialisation bring up a new
//! thread with fresh queues. A request whose *buffers* fault only fails that request.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::BlockCounters;
use super::request::{Disk, RequestError, execute, walk_chain};
use crate::io_gate::IoGate;
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
    /// A ring failed: nothing is processed until the driver resets the device.
    pub(super) needs_reset: bool,
    pub(super) dma_enabled: Arc<AtomicBool>,
    /// Passed before each batch (see [`IoGate`]).
    pub(super) io_gate: Arc<IoGate>,
    /// Set when the device stops the thread (with a kill and an [`IoGate::wake`]).
    pub(super) stopping: Arc<AtomicBool>,
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
        {
            let gate = self.io_gate.clone();
            let Some(_pass) = gate.enter(&self.stopping) else {
                return;
            };
            for position in 0..self.queues.len() {
                self.process_queue(position);
            }
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
            if events[..count].iter().any(|e| e.data() == KILL_TOKEN) {
                return;
            }
            let gate = self.io_gate.clone();
            let Some(_pass) = gate.enter(&self.stopping) else {
                return;
            };
            let woke = std::time::Instant::now();
            for event in &events[..count] {
                let position = event.data() as usize;
                if let Some(active) = self.queues.get(position) {
                    if let Ok(notifications) = active.notify.read() {
                        self.counters
                            .notifications
                            .fetch_add(notifications, Ordering::Relaxed);
                    }
                    self.process_queue(position);
                }
            }
            let busy = u64::try_from(woke.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.counters.busy_ns.fetch_add(busy, Ordering::Relaxed);
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
        if self.needs_reset || !self.dma_enabled.load(Ordering::SeqCst) {
            // After a ring failure nothing runs until reset. While bus mastering is off the
            // requests stay where they are (the transport kicks the queue when it comes back).
            return;
        }
        let Some(active) = self.queues.get_mut(position) else {
            return;
        };
        let result = service_queue(
            &self.memory,
            &mut active.queue,
            &mut self.disk,
            &self.counters,
            self.max_segments,
        );
        let serviced = match result {
            Ok(serviced) => serviced,
            Err(error) => {
                log_limit::limited!(warn, queue = active.index, %error, "virtio-blk ring access failed: the device needs a reset");
                self.counters.ring_errors.fetch_add(1, Ordering::Relaxed);
                self.needs_reset = true;
                self.interrupt.set_needs_reset();
                return;
            }
        };
        if serviced.more {
            // Yield to the event loop (and a possible kill) but come back for the rest.
            if let Err(error) = active.notify.write(1) {
                log_limit::limited!(warn, %error, "Cannot re-arm virtio-blk queue");
            }
        }
        if serviced.notify {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            self.interrupt.signal_queue(active.index);
        }
    }
}

/// What one [`service_queue`] pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serviced {
    /// Requests completed (malformed and dropped ones included).
    pub completed: usize,
    /// The pass stopped at its budget (twice the queue size) with requests possibly left: the
    /// caller should come back (the I/O thread re-arms the queue's notify eventfd).
    pub more: bool,
    /// The driver wants an interrupt for what was completed.
    pub notify: bool,
}

/// One pass over a queue, as the I/O thread makes on each notification: completes the
/// available requests (at most twice the queue size), re-enables notifications (event index),
/// and says whether the driver should be interrupted. An `Err` means the rings themselves
/// (descriptor table, avail or used ring) are unusable: the device needs a reset.
pub fn service_queue<M: GuestMemory>(
    memory: &M,
    queue: &mut Queue,
    disk: &mut Disk,
    counters: &BlockCounters,
    max_segments: usize,
) -> Result<Serviced, virtio_queue::Error> {
    let limit = usize::from(queue.size()) * 2;
    let mut serviced = Serviced::default();
    let mut rechecked = false;
    loop {
        let drained = drain(
            memory,
            queue,
            disk,
            counters,
            max_segments,
            limit - serviced.completed,
        )?;
        serviced.completed += drained;
        if serviced.completed >= limit {
            serviced.more = true;
            break;
        }
        // The index said more was available but nothing could be taken (an avail entry the
        // device cannot read): asking again would say the same forever.
        if rechecked && drained == 0 {
            break;
        }
        if !queue.event_idx_enabled() || !queue.enable_notification(memory)? {
            break;
        }
        rechecked = true;
    }
    serviced.notify = serviced.completed > 0 && queue.needs_notification(memory).unwrap_or(true);
    Ok(serviced)
}

/// Completes up to `budget` requests; returns how many.
fn drain<M: GuestMemory>(
    memory: &M,
    queue: &mut Queue,
    disk: &mut Disk,
    counters: &BlockCounters,
    max_segments: usize,
    budget: usize,
) -> Result<usize, virtio_queue::Error> {
    let mut completed = 0;
    while completed < budget {
        if queue.event_idx_enabled() {
            queue.disable_notification(memory)?;
        }
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        let head = match queue.iter(memory)?.next() {
            Some(chain) => chain.head_index(),
            None => break,
        };
        if head >= size {
            // There is no used-ring slot such a head could be returned in: drop it.
            tracing::debug!(head, "Dropping out-of-range virtio-blk head");
            counters.errors.fetch_add(1, Ordering::Relaxed);
            completed += 1;
            continue;
        }
        let used_length = match walk_chain(memory, table, size, head, max_segments) {
            Ok(chain) => {
                let completion = execute(memory, disk, &chain);
                counters.record(&completion);
                completion.used_length
            }
            Err(RequestError::DescriptorTable(error)) => {
                return Err(virtio_queue::Error::GuestMemory(error));
            }
            Err(error) => {
                tracing::debug!(head, %error, "Skipping malformed virtio-blk request");
                counters.errors.fetch_add(1, Ordering::Relaxed);
                0
            }
        };
        queue.add_used(memory, head, used_length)?;
        completed += 1;
    }
    Ok(completed)
}
