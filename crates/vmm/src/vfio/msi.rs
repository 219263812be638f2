//! An assigned function's MSI capability, emulated (PCI Local Bus 3.0, 6.8.1): the guest's
//! message control, address, data and mask bits stay here; VFIO gets one eventfd per enabled
//! vector (`VFIO_PCI_MSI_IRQ_INDEX`), each a KVM irqfd whose route is the vector's message
//! through the same remapping hook as MSI-X (`interrupt::GsiRouting`).
//!
//! ```text
//!  +0  id, next          the device's
//!  +2  message control   enable (0), multiple message enable (6:4) the guest's; multiple
//!                        message capable (3:1), 64-bit (7), per-vector masking (8) the device's
//!  +4  address [+8 upper address, 64-bit]   the guest's
//!  data (16 bits)        the guest's; vector i sends it with its low log2(n) bits = i
//!  [mask, pending]       per-vector masking only: mask bits the guest's, pending reads 0
//!
//!  enable 0→1 ─► vectors 0..n configured (message, masked?) ─► VFIO_DEVICE_SET_IRQS (n fds)
//!  writes while enabled ─► vectors reconfigured (a masked vector has no route, as MSI-X)
//!  enable 1→0 ─► VFIO disables MSI ─► vectors masked
//! ```
//!
//! Every guest write is bounded: the enabled count is at most what the device is capable of
//! (at most 32), and bytes beyond the capability are never touched.

use std::sync::Arc;

use devices::MsiMessage;

use super::device::VectorEventFds;

/// Message control: MSI enable.
const CONTROL_ENABLE: u16 = 1;
/// Message control: multiple message capable (log2 of the vectors the device has).
const CONTROL_MMC_SHIFT: u16 = 1;
/// Message control: multiple message enable (log2 of the vectors the guest allows).
const CONTROL_MME_SHIFT: u16 = 4;
/// Message control: 64-bit address.
const CONTROL_64BIT: u16 = 1 << 7;
/// Message control: per-vector masking.
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;
/// The largest log2 vector count (32 vectors; 6 and 7 are reserved).
const MAX_LOG2_VECTORS: u16 = 5;
/// Bytes of the longest capability (64-bit address with mask and pending bits).
const MAX_LEN: usize = 24;

/// The emulated capability.
#[derive(Debug)]
pub struct MsiCap {
    /// Offset in configuration space.
    cap: usize,
    /// What the device reports in message control (capable bits, 64-bit, masking).
    device_control: u16,
    /// Bytes `0..len` of the capability as the guest sees them (id and next excepted).
    regs: [u8; MAX_LEN],
    controller: Arc<dyn VectorEventFds>,
    /// How many vectors VFIO currently has eventfds for.
    vfio_vectors: Option<u16>,
}

impl MsiCap {
    /// The capability at `cap` whose message control the device reports as `device_control`;
    /// `controller` delivers its vectors.
    pub fn new(cap: usize, device_control: u16, controller: Arc<dyn VectorEventFds>) -> Self {
        let device_control =
            device_control & (CONTROL_64BIT | CONTROL_PER_VECTOR_MASK | (7 << CONTROL_MMC_SHIFT));
        let mut regs = [0u8; MAX_LEN];
        regs[2..4].copy_from_slice(&device_control.to_le_bytes());
        Self {
            cap,
            device_control,
            regs,
            controller,
            vfio_vectors: None,
        }
    }

    /// Length of the capability in bytes.
    pub fn len(&self) -> usize {
        let mut len = 10;
        if self.is_64bit() {
            len += 4;
        }
        if self.per_vector_masking() {
            len += 10;
        }
        len
    }

    fn is_64bit(&self) -> bool {
        self.device_control & CONTROL_64BIT != 0
    }

    fn per_vector_masking(&self) -> bool {
        self.device_control & CONTROL_PER_VECTOR_MASK != 0
    }

    fn data_offset(&self) -> usize {
        if self.is_64bit() { 0x0c } else { 0x08 }
    }

    fn mask_offset(&self) -> usize {
        self.data_offset() + 4
    }

    fn reg16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.regs[at], self.regs[at + 1]])
    }

    fn reg32(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.regs[at],
            self.regs[at + 1],
            self.regs[at + 2],
            self.regs[at + 3],
        ])
    }

    /// Whether configuration-space offset `p` is an emulated byte (all but id and next).
    pub fn contains(&self, p: usize) -> bool {
        (self.cap + 2..self.cap + self.len()).contains(&p)
    }

    /// The byte at configuration-space offset `p` (emulated; see [`MsiCap::contains`]).
    pub fn read(&self, p: usize) -> u8 {
        let o = p.wrapping_sub(self.cap);
        let pending = self.per_vector_masking() && o >= self.mask_offset() + 4;
        match self.regs.get(o) {
            Some(&b) if o < self.len() && !pending => b,
            _ => 0,
        }
    }

    /// The guest writes `byte` at configuration-space offset `p`: only the bits it may write
    /// change.
    pub fn write(&mut self, p: usize, byte: u8) {
        let o = p.wrapping_sub(self.cap);
        if o < 2 || o >= self.len() {
            return;
        }
        let data = self.data_offset();
        let writable: u8 = match o {
            // Enable and multiple message enable.
            2 => 0x71,
            3 => 0,
            // The address is dword aligned.
            4 => 0xfc,
            5..=7 => 0xff,
            8..=11 if self.is_64bit() => 0xff,
            _ if o == data || o == data + 1 => 0xff,
            _ if self.per_vector_masking()
                && (self.mask_offset()..self.mask_offset() + 4).contains(&o) =>
            {
                0xff
            }
            _ => 0,
        };
        self.regs[o] = (self.regs[o] & !writable) | (byte & writable);
    }

    /// Whether the guest enabled MSI.
    pub fn enabled(&self) -> bool {
        self.reg16(2) & CONTROL_ENABLE != 0
    }

    /// The vectors the guest enabled: 2^MME, at most what the device is capable of.
    pub fn vectors(&self) -> u16 {
        let control = self.reg16(2);
        let capable = ((self.device_control >> CONTROL_MMC_SHIFT) & 7).min(MAX_LOG2_VECTORS);
        let enabled = (control >> CONTROL_MME_SHIFT) & 7;
        1 << enabled.min(capable)
    }

    /// The message vector `i` (below [`MsiCap::vectors`]) sends.
    pub fn message(&self, i: u16) -> MsiMessage {
        let mut address = u64::from(self.reg32(4));
        if self.is_64bit() {
            address |= u64::from(self.reg32(8)) << 32;
        }
        let n = self.vectors();
        let data = (self.reg16(self.data_offset()) & !(n - 1)) | (i & (n - 1));
        MsiMessage {
            address,
            data: u32::from(data),
        }
    }

    /// Whether the guest masked vector `i`.
    pub fn masked(&self, i: u16) -> bool {
        self.per_vector_masking() && self.reg32(self.mask_offset()) & (1 << (i & 31)) != 0
    }

    /// Installs every enabled vector's message (masked ones, and all while MSI is off, have
    /// no route).
    pub fn configure(&self) {
        let on = self.enabled();
        for i in 0..self.vectors() {
            if let Err(e) = self
                .controller
                .configure(i, self.message(i), !on || self.masked(i))
            {
                log_limit::limited!(warn, "MSI vector {i}: {e}");
            }
        }
    }

    /// The eventfds VFIO is to signal for the enabled vectors.
    pub fn eventfds(&self) -> std::io::Result<Vec<vmm_sys_util::eventfd::EventFd>> {
        self.controller.eventfds(self.vectors())
    }

    /// How many vectors VFIO has eventfds for (`None`: MSI is off in VFIO).
    pub fn vfio_vectors(&self) -> Option<u16> {
        self.vfio_vectors
    }

    /// Records what VFIO now has.
    pub fn set_vfio_vectors(&mut self, vectors: Option<u16>) {
        self.vfio_vectors = vectors;
    }
}
