//! Parsing and executing one virtio-blk request from a descriptor chain.
//!
//! ```text
//!  head ─► walk_chain (bounded, own error for every defect) ─► segments: readable* writable*
//!          readable bytes: [ header(16) | OUT data ... ]
//!          writable bytes: [ IN data / GET_ID ...      | status(1) ]
//!  execute: bounds check vs capacity ─► file <-> guest memory (every access translated with
//!           Read for driver buffers, Write for device-written ones) ─► status byte
//! ```
//!
//! Guest input is hostile: every defect becomes an error status or a skipped request, never a
//! panic; loops are bounded by the table size and allocations by the segment limit.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (type, reserved, sector).
const HEADER_SIZE: u64 = 16;
const DESCRIPTOR_SIZE: u64 = 16;

/// Why a request could not be carried out.
#[derive(Debug, Error)]
pub enum RequestError {
    /// A descriptor index is beyond its table.
    #[error("Descriptor index {0} is out of range")]
    DescriptorIndex(u16),
    /// The chain is longer than its table (it loops).
    #[error("Descriptor chain loops")]
    ChainLoop,
    /// The chain has more descriptors than the device accepts.
    #[error("Descriptor chain has too many descriptors")]
    TooManyDescriptors,
    /// An indirect descriptor is malformed.
    #[error("Invalid indirect descriptor table")]
    BadIndirect,
    /// A device-readable descriptor follows a device-writable one.
    #[error("Readable descriptor after a writable one")]
    BadOrder,
    /// The chain has no header or no status byte.
    #[error("Request is too short")]
    TooShort,
    /// The queue's own descriptor table could not be read (unmapped, IOMMU fault): the ring
    /// is unusable, not just this request (the device then needs a reset).
    #[error("Descriptor table access failed")]
    DescriptorTable(#[source] vm_memory::GuestMemoryError),
    /// A guest-memory access failed (unmapped, IOMMU fault, out of guest RAM).
    #[error("Guest memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// A data transfer length is not a whole number of sectors.
    #[error("Data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// The request touches sectors beyond the end of the disk.
    #[error("Request beyond the end of the disk")]
    OutOfRange,
    /// A write to a read-only disk.
    #[error("Disk is read-only")]
    ReadOnly,
    /// The host file operation failed.
    #[error("Disk I/O failed")]
    Io(#[source] std::io::Error),
}

/// One guest buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest (I/O virtual) address.
    pub address: GuestAddress,
    /// Length in bytes.
    pub length: u32,
}

/// A descriptor chain split into device-readable and device-writable buffers.
#[derive(Debug, Default)]
pub struct Chain {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

/// Walks the chain starting at `head` in the descriptor table at `table` of `table_size`
/// entries, following at most one level of indirection, and returns its buffers.
pub fn walk_chain<M: GuestMemory>(
    memory: &M,
    table: GuestAddress,
    table_size: u16,
    head: u16,
    max_segments: usize,
) -> Result<Chain, RequestError> {
    let mut chain = Chain::default();
    let mut table = table;
    let mut size = table_size;
    let mut index = head;
    let mut budget = table_size;
    let mut indirect = false;
    let mut ahead = ReadAhead::default();
    loop {
        if index >= size {
            return Err(RequestError::DescriptorIndex(index));
        }
        if budget == 0 {
            return Err(RequestError::ChainLoop);
        }
        budget -= 1;
        let address = table
            .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
            .ok_or(RequestError::DescriptorIndex(index))?;
        let descriptor = if indirect {
            ahead.get(memory, address, index, size)?
        } else {
            memory
                .read_obj(address)
                .map_err(RequestError::DescriptorTable)?
        };
        if descriptor.refers_to_indirect_table() {
            let entries = u64::from(descriptor.len()) / DESCRIPTOR_SIZE;
            if indirect
                || descriptor.has_next()
                || u64::from(descriptor.len()) % DESCRIPTOR_SIZE != 0
                || entries == 0
                || entries > u64::from(u16::MAX)
            {
                return Err(RequestError::BadIndirect);
            }
            descriptor
                .addr()
                .checked_add(u64::from(descriptor.len()))
                .ok_or(RequestError::BadIndirect)?;
            indirect = true;
            table = descriptor.addr();
            size = entries as u16;
            budget = size;
            index = 0;
            continue;
        }
        if chain.readable.len() + chain.writable.len() >= max_segments {
            return Err(RequestError::TooManyDescriptors);
        }
        // A buffer that wraps around the address space is never valid.
        if descriptor
            .addr()
            .checked_add(u64::from(descriptor.len()))
            .is_none()
        {
            return Err(RequestError::Memory(
                vm_memory::GuestMemoryError::GuestAddressOverflow,
            ));
        }
        let segment = Segment {
            address: descriptor.addr(),
            length: descriptor.len(),
        };
        if descriptor.is_write_only() {
            chain.writable.push(segment);
        } else if chain.writable.is_empty() {
            chain.readable.push(segment);
        } else {
            return Err(RequestError::BadOrder);
        }
        if !descriptor.has_next() {
            return Ok(chain);
        }
        index = descriptor.next();
    }
}

/// Indirect-table descriptors read per guest-memory access.
const READ_AHEAD: usize = 16;

/// Descriptors of the indirect table read ahead in one access: the table is one buffer the
/// driver handed over whole, so reading past the descriptor in use stays inside it, and a
/// request's table costs one (translated) access instead of one per descriptor.
struct ReadAhead {
    first: u16,
    count: u16,
    bytes: [u8; READ_AHEAD * DESCRIPTOR_SIZE as usize],
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead {
            first: 0,
            count: 0,
            bytes: [0; READ_AHEAD * DESCRIPTOR_SIZE as usize],
        }
    }
}

impl ReadAhead {
    /// Descriptor `index` (at `address`) of a table of `size` entries.
    fn get<M: GuestMemory>(
        &mut self,
        memory: &M,
        address: GuestAddress,
        index: u16,
        size: u16,
    ) -> Result<Descriptor, RequestError> {
        if index < self.first || index - self.first >= self.count {
            let count = usize::from(size - index).min(READ_AHEAD);
            let length = count * DESCRIPTOR_SIZE as usize;
            self.first = index;
            self.count = 0;
            if memory
                .read_slice(&mut self.bytes[..length], address)
                .is_ok()
            {
                self.count = count as u16;
            } else {
                // Only the descriptor in use must be readable.
                memory
                    .read_slice(&mut self.bytes[..DESCRIPTOR_SIZE as usize], address)
                    .map_err(RequestError::Memory)?;
                self.count = 1;
            }
        }
        let at = usize::from(index - self.first) * DESCRIPTOR_SIZE as usize;
        let d = &self.bytes[at..at + DESCRIPTOR_SIZE as usize];
        let u16_at = |i: usize| u16::from_le_bytes([d[i], d[i + 1]]);
        Ok(Descriptor::new(
            u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]),
            u32::from_le_bytes([d[8], d[9], d[10], d[11]]),
            u16_at(12),
            u16_at(14),
        ))
    }
}

/// Calls `visit(address, length)` for each piece of `segments` in the byte range
/// `[skip, skip + length)` of their concatenation.
fn for_each_piece<F>(
    segments: &[Segment],
    skip: u64,
    length: u64,
    mut visit: F,
) -> Result<(), RequestError>
where
    F: FnMut(GuestAddress, usize) -> Result<(), RequestError>,
{
    let mut skip = skip;
    let mut remaining = length;
    for segment in segments {
        if remaining == 0 {
            break;
        }
        let segment_length = u64::from(segment.length);
        if skip >= segment_length {
            skip -= segment_length;
            continue;
        }
        let piece = (segment_length - skip).min(remaining);
        let address = segment
            .address
            .checked_add(skip)
            .ok_or(RequestError::Memory(
                vm_memory::GuestMemoryError::GuestAddressOverflow,
            ))?;
        visit(address, piece as usize)?;
        remaining -= piece;
        skip = 0;
    }
    if remaining == 0 {
        Ok(())
    } else {
        Err(RequestError::TooShort)
    }
}

fn total(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .map(|segment| u64::from(segment.length))
        .sum()
}

/// The disk a request runs against.
#[derive(Debug)]
pub struct Disk {
    /// The backing file or block device (used only by one I/O thread).
    pub file: File,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Whether writes are refused.
    pub read_only: bool,
    /// GET_ID answer (zero-padded).
    pub serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// What executing a request did.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes the device wrote into the chain (for the used ring), status byte included.
    pub used_length: u32,
    /// The status written (None when the chain had no place for it).
    pub status: Option<u8>,
    /// Request type from the header (None when the header was unreadable).
    pub request_type: Option<u32>,
    /// Bytes of data moved between the disk and guest memory.
    pub data_bytes: u64,
}

/// Executes the request in `chain` and writes its status byte.
pub fn execute<M: GuestMemory>(memory: &M, disk: &mut Disk, chain: &Chain) -> Completion {
    let writable_length = total(&chain.writable);
    let Some(data_writable) = writable_length.checked_sub(1) else {
        // Nowhere to put a status: the request cannot even be failed properly.
        return Completion {
            used_length: 0,
            status: None,
            request_type: None,
            data_bytes: 0,
        };
    };
    let (status, request_type, data_bytes) = match run(memory, disk, chain, data_writable) {
        Ok(outcome) => outcome,
        Err((request_type, error)) => {
            tracing::debug!(%error, "virtio-blk request failed");
            (VIRTIO_BLK_S_IOERR as u8, request_type, 0)
        }
    };
    let mut written = 0u64;
    if status == VIRTIO_BLK_S_OK as u8 && request_type != Some(VIRTIO_BLK_T_OUT) {
        written = data_bytes;
    }
    let status_written = for_each_piece(&chain.writable, data_writable, 1, |address, _| {
        memory
            .write_obj(status, address)
            .map_err(RequestError::Memory)
    });
    match status_written {
        Ok(()) => Completion {
            used_length: (written + 1).min(u64::from(u32::MAX)) as u32,
            status: Some(status),
            request_type,
            data_bytes,
        },
        Err(error) => {
            tracing::debug!(%error, "Cannot write virtio-blk status");
            Completion {
                used_length: 0,
                status: None,
                request_type,
                data_bytes,
            }
        }
    }
}

type Outcome = (u8, Option<u32>, u64);

fn run<M: GuestMemory>(
    memory: &M,
    disk: &mut Disk,
    chain: &Chain,
    data_writable: u64,
) -> Result<Outcome, (Option<u32>, RequestError)> {
    let mut header = [0u8; HEADER_SIZE as usize];
    let mut filled = 0usize;
    for_each_piece(&chain.readable, 0, HEADER_SIZE, |address, length| {
        memory
            .read_slice(&mut header[filled..filled + length], address)
            .map_err(RequestError::Memory)?;
        filled += length;
        Ok(())
    })
    .map_err(|error| (None, error))?;
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let fail = |error| (Some(request_type), error);
    match request_type {
        VIRTIO_BLK_T_IN => {
            let offset = check_range(disk, sector, data_writable).map_err(fail)?;
            disk.file
                .seek(SeekFrom::Start(offset))
                .map_err(|e| fail(RequestError::Io(e)))?;
            for_each_piece(&chain.writable, 0, data_writable, |address, length| {
                memory
                    .read_exact_volatile_from(address, &mut disk.file, length)
                    .map_err(RequestError::Memory)
            })
            .map_err(fail)?;
            Ok((VIRTIO_BLK_S_OK as u8, Some(request_type), data_writable))
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(fail(RequestError::ReadOnly));
            }
            let length = total(&chain.readable).saturating_sub(HEADER_SIZE);
            let offset = check_range(disk, sector, length).map_err(fail)?;
            disk.file
                .seek(SeekFrom::Start(offset))
                .map_err(|e| fail(RequestError::Io(e)))?;
            for_each_piece(&chain.readable, HEADER_SIZE, length, |address, piece| {
                memory
                    .write_all_volatile_to(address, &mut disk.file, piece)
                    .map_err(RequestError::Memory)
            })
            .map_err(fail)?;
            Ok((VIRTIO_BLK_S_OK as u8, Some(request_type), length))
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only {
                disk.file
                    .sync_all()
                    .map_err(|e| fail(RequestError::Io(e)))?;
            }
            Ok((VIRTIO_BLK_S_OK as u8, Some(request_type), 0))
        }
        VIRTIO_BLK_T_GET_ID => {
            let length = data_writable.min(u64::from(VIRTIO_BLK_ID_BYTES));
            let mut copied = 0usize;
            for_each_piece(&chain.writable, 0, length, |address, piece| {
                memory
                    .write_slice(&disk.serial[copied..copied + piece], address)
                    .map_err(RequestError::Memory)?;
                copied += piece;
                Ok(())
            })
            .map_err(fail)?;
            Ok((VIRTIO_BLK_S_OK as u8, Some(request_type), length))
        }
        _ => Ok((VIRTIO_BLK_S_UNSUPP as u8, Some(request_type), 0)),
    }
}

/// Checks that `length` bytes at `sector` are whole sectors inside the disk; returns the byte
/// offset.
fn check_range(disk: &Disk, sector: u64, length: u64) -> Result<u64, RequestError> {
    if !length.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(length));
    }
    let end = sector
        .checked_add(length / SECTOR_SIZE)
        .ok_or(RequestError::OutOfRange)?;
    if end > disk.sectors {
        return Err(RequestError::OutOfRange);
    }
    Ok(sector * SECTOR_SIZE)
}
