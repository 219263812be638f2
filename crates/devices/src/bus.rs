//! The bus seam: how the VMM forwards PIO and MMIO accesses to a device.
//!
//! The VMM owns the buses (address → device ranges). A device sees only the offset of an access
//! relative to the start of the range it was registered on.

/// A device reachable through a range of port I/O or MMIO addresses.
///
/// `offset` is relative to the start of the device's range. `data.len()` is the access width
/// (normally 1, 2, 4 or 8). Implementations must accept any width at any offset without
/// panicking: unknown or out-of-range reads return all-ones, such writes are ignored.
pub trait BusDevice: Send + Sync {
    /// Handles a read of `data.len()` bytes at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Reads up to eight little-endian bytes as an integer (missing high bytes are zero).
pub(crate) fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
}

/// Writes the low `data.len()` bytes of `value` to `data`, little-endian (extra bytes get 0).
pub(crate) fn put_le_value(data: &mut [u8], value: u64) {
    for (index, byte) in data.iter_mut().enumerate() {
        *byte = if index < 8 {
            (value >> (8 * index)) as u8
        } else {
            0
        };
    }
}

/// Copies the part of `image` starting at `offset` into `data`; bytes past the end read as
/// `fill`.
pub(crate) fn read_from_image(image: &[u8], offset: u64, data: &mut [u8], fill: u8) {
    for (index, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(index as u64)
            .and_then(|position| usize::try_from(position).ok())
            .and_then(|position| image.get(position))
            .copied()
            .unwrap_or(fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_helpers_round_trip_every_width() {
        for width in [1usize, 2, 4, 8] {
            let mut buffer = vec![0u8; width];
            put_le_value(&mut buffer, 0x1122_3344_5566_7788);
            let mask = if width == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * width)) - 1
            };
            assert_eq!(le_value(&buffer), 0x1122_3344_5566_7788 & mask);
        }
        let mut odd = [0u8; 12];
        put_le_value(&mut odd, u64::MAX);
        assert_eq!(&odd[8..], &[0, 0, 0, 0]);
    }

    #[test]
    fn image_reads_past_the_end_return_all_ones() {
        let image = [1u8, 2, 3];
        let mut data = [0u8; 4];
        read_from_image(&image, 1, &mut data, 0xff);
        assert_eq!(data, [2, 3, 0xff, 0xff]);
        read_from_image(&image, u64::MAX, &mut data, 0xff);
        assert_eq!(data, [0xff; 4]);
    }
}
