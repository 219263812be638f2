//! MSI-X: the capability, the vector table and the pending-bit array (PCI Local Bus 3.0, 6.8.2).
//!
//! ```text
//!  config write (message control) ─► set_control(enable, function mask) ─┐
//!  BAR write (table entry)         ─► write_table ───────────────────────┤
//!                                                                       ▼
//!                                 per vector: effective mask, message ─► MsiController::configure
//!  device event ─► trigger(v): masked? ─yes─► set pending bit (delivered on unmask)
//!                                      └no──► MsiController::trigger(v)
//! ```

use std::sync::Arc;

use thiserror::Error;

use crate::interrupt::{MsiController, MsiMessage};

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes per MSI-X table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Largest number of vectors a function may have.
pub const MAX_MSIX_VECTORS: u16 = 2048;
/// Message control bit 15: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control bit 14: function mask.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit 0: the vector is masked.
const VECTOR_CONTROL_MASKED: u32 = 1;

/// Errors building an MSI-X configuration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MsixError {
    /// The vector count is zero or above 2048.
    #[error("MSI-X vector count {0} is not between 1 and 2048")]
    VectorCount(u16),
    /// The BAR indicator is not a BAR register index.
    #[error("MSI-X BAR indicator {0} is out of range")]
    BarIndicator(u8),
    /// Table and PBA offsets must be 8-byte aligned.
    #[error("MSI-X structure offset {0:#x} is not 8-byte aligned")]
    Alignment(u32),
}

/// Where the MSI-X structures live and how many vectors there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (table entries).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Size in bytes of the vector table.
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * MSIX_TABLE_ENTRY_SIZE
    }

    /// Size in bytes of the pending-bit array (whole qwords).
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// The capability body (after id and next pointer) and its writable mask, for
    /// [`crate::pci::PciConfiguration::add_capability`].
    pub fn capability(&self) -> Result<([u8; 10], [u8; 10]), MsixError> {
        self.validate()?;
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(self.table_offset | u32::from(self.table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(self.pba_offset | u32::from(self.pba_bar)).to_le_bytes());
        let mut writable = [0u8; 10];
        writable[1] = ((MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) >> 8) as u8;
        Ok((body, writable))
    }

    fn validate(&self) -> Result<(), MsixError> {
        if self.vectors == 0 || self.vectors > MAX_MSIX_VECTORS {
            return Err(MsixError::VectorCount(self.vectors));
        }
        for bar in [self.table_bar, self.pba_bar] {
            if bar > 5 {
                return Err(MsixError::BarIndicator(bar));
            }
        }
        for offset in [self.table_offset, self.pba_offset] {
            if offset % 8 != 0 {
                return Err(MsixError::Alignment(offset));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct TableEntry {
    /// Message address low, message address high, message data, vector control.
    fields: [u32; 4],
}

impl TableEntry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.fields[0]) | (u64::from(self.fields[1]) << 32),
            data: self.fields[2],
        }
    }

    fn masked(&self) -> bool {
        self.fields[3] & VECTOR_CONTROL_MASKED != 0
    }
}

/// The MSI-X state of one function: table, pending bits, enable and function mask.
pub struct MsixConfig {
    layout: MsixLayout,
    table: Vec<TableEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// What the controller was last told per vector (`None`: never configured, i.e. masked).
    programmed: Vec<Option<(MsiMessage, bool)>>,
    controller: Arc<dyn MsiController>,
    dropped: u64,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MsixConfig")
            .field("layout", &self.layout)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl MsixConfig {
    /// Creates the MSI-X state with every vector masked and MSI-X disabled (reset state).
    pub fn new(layout: MsixLayout, controller: Arc<dyn MsiController>) -> Result<Self, MsixError> {
        layout.validate()?;
        let vectors = usize::from(layout.vectors);
        Ok(MsixConfig {
            layout,
            table: vec![
                TableEntry {
                    fields: [0, 0, 0, VECTOR_CONTROL_MASKED]
                };
                vectors
            ],
            pending: vec![0; vectors.div_ceil(64)],
            enabled: false,
            function_masked: false,
            programmed: vec![None; vectors],
            controller,
            dropped: 0,
        })
    }

    /// The layout this configuration was created with.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Whether MSI-X is enabled in the message control register.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` is masked by its vector control (out-of-range vectors count as masked).
    pub fn vector_masked(&self, vector: u16) -> bool {
        self.table
            .get(usize::from(vector))
            .is_none_or(TableEntry::masked)
    }

    /// Whether `vector` has its pending bit set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let vector = usize::from(vector);
        self.pending
            .get(vector / 64)
            .is_some_and(|word| word & (1 << (vector % 64)) != 0)
    }

    /// Interrupts dropped because MSI-X was disabled when the device raised them.
    pub fn dropped_interrupts(&self) -> u64 {
        self.dropped
    }

    /// Applies a new message control value (from a configuration-space write).
    pub fn set_control(&mut self, message_control: u16) {
        let enabled = message_control & MSIX_CONTROL_ENABLE != 0;
        let function_masked = message_control & MSIX_CONTROL_FUNCTION_MASK != 0;
        if enabled == self.enabled && function_masked == self.function_masked {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for vector in 0..self.layout.vectors {
            self.update_vector(vector);
        }
    }

    /// Reads the vector table at `offset` (relative to the table start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(index as u64)
                .and_then(|position| self.table_byte(position))
                .unwrap_or(0);
        }
    }

    /// Writes the vector table at `offset`, then re-evaluates the touched vectors.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched: Option<(u16, u16)> = None;
        for (index, &value) in data.iter().enumerate() {
            let Some(position) = offset.checked_add(index as u64) else {
                break;
            };
            let Ok(entry_index) = usize::try_from(position / MSIX_TABLE_ENTRY_SIZE) else {
                break;
            };
            let Some(entry) = self.table.get_mut(entry_index) else {
                break;
            };
            let field = ((position % MSIX_TABLE_ENTRY_SIZE) / 4) as usize;
            let shift = (position % 4) * 8;
            let mut writable: u32 = if field == 3 {
                VECTOR_CONTROL_MASKED
            } else {
                !0
            };
            if field == 0 {
                // Message address bits 1:0 are reserved (dword aligned).
                writable &= !0b11;
            }
            let old = entry.fields[field];
            let mask = (writable >> shift) & 0xff;
            let new = (old & !(mask << shift)) | ((u32::from(value) & mask) << shift);
            entry.fields[field] = new;
            let vector = entry_index as u16;
            touched = Some(match touched {
                None => (vector, vector),
                Some((first, last)) => (first.min(vector), last.max(vector)),
            });
        }
        if let Some((first, last)) = touched {
            for vector in first..=last {
                self.update_vector(vector);
            }
        }
    }

    /// Reads the pending-bit array at `offset`; writes to the PBA are ignored by callers.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(index as u64)
                .and_then(|position| {
                    let word = self.pending.get(usize::try_from(position / 8).ok()?)?;
                    Some((word >> ((position % 8) * 8)) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// Raises `vector`: delivered now, or remembered as pending while masked.
    ///
    /// Interrupts raised while MSI-X is disabled are dropped (INTx is not implemented).
    pub fn trigger(&mut self, vector: u16) {
        if usize::from(vector) >= self.table.len() {
            return;
        }
        if !self.enabled {
            self.dropped += 1;
            return;
        }
        if self.effectively_masked(vector) {
            self.set_pending(vector, true);
            return;
        }
        self.controller.trigger(vector);
    }

    fn effectively_masked(&self, vector: u16) -> bool {
        !self.enabled || self.function_masked || self.vector_masked(vector)
    }

    fn update_vector(&mut self, vector: u16) {
        let index = usize::from(vector);
        let Some(entry) = self.table.get(index) else {
            return;
        };
        let message = entry.message();
        let masked = self.effectively_masked(vector);
        let previous = self.programmed[index];
        let unchanged = previous == Some((message, masked));
        // A masked vector's message only matters once it is unmasked.
        let still_masked = masked && previous.is_none_or(|(_, was_masked)| was_masked);
        if !unchanged && !still_masked {
            if let Err(error) = self.controller.configure(vector, message, masked) {
                log_limit::limited!(warn, vector, %error, "Failed to configure MSI-X vector");
            }
            self.programmed[index] = Some((message, masked));
        }
        if !masked && self.is_pending(vector) {
            self.set_pending(vector, false);
            self.controller.trigger(vector);
        }
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        let vector = usize::from(vector);
        if let Some(word) = self.pending.get_mut(vector / 64) {
            let bit = 1u64 << (vector % 64);
            if pending {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    fn table_byte(&self, position: u64) -> Option<u8> {
        let entry = self
            .table
            .get(usize::try_from(position / MSIX_TABLE_ENTRY_SIZE).ok()?)?;
        let field = entry.fields[((position % MSIX_TABLE_ENTRY_SIZE) / 4) as usize];
        Some((field >> ((position % 4) * 8)) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{le_value, put_le_value};
    use crate::interrupt::FakeMsiController;

    /// Convenience for tests that hold values rather than byte slices.
    fn write_table_value(msix: &mut MsixConfig, offset: u64, width: usize, value: u64) {
        let mut data = vec![0u8; width];
        put_le_value(&mut data, value);
        msix.write_table(offset, &data);
    }

    /// Reads `width` bytes of the table as an integer.
    fn read_table_value(msix: &MsixConfig, offset: u64, width: usize) -> u64 {
        let mut data = vec![0u8; width];
        msix.read_table(offset, &mut data);
        le_value(&data)
    }

    fn layout(vectors: u16) -> MsixLayout {
        MsixLayout {
            vectors,
            table_bar: 0,
            table_offset: 0x4000,
            pba_bar: 0,
            pba_offset: 0x6000,
        }
    }

    fn setup(vectors: u16) -> (MsixConfig, Arc<FakeMsiController>) {
        let controller = Arc::new(FakeMsiController::new());
        let msix = MsixConfig::new(layout(vectors), controller.clone()).unwrap();
        (msix, controller)
    }

    fn program(msix: &mut MsixConfig, vector: u16, address: u64, data: u32) {
        let base = u64::from(vector) * MSIX_TABLE_ENTRY_SIZE;
        write_table_value(msix, base, 8, address);
        write_table_value(msix, base + 8, 4, u64::from(data));
    }

    fn unmask(msix: &mut MsixConfig, vector: u16) {
        write_table_value(msix, u64::from(vector) * MSIX_TABLE_ENTRY_SIZE + 12, 4, 0);
    }

    #[test]
    fn capability_encodes_size_and_locations() {
        let (body, writable) = MsixLayout {
            vectors: 3,
            table_bar: 2,
            table_offset: 0x100,
            pba_bar: 4,
            pba_offset: 0x800,
        }
        .capability()
        .unwrap();
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2);
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x102);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x804);
        assert_eq!(writable[..2], [0, 0xc0]);
        assert_eq!(layout(0).capability(), Err(MsixError::VectorCount(0)));
        let misaligned = MsixLayout {
            table_offset: 4,
            ..layout(1)
        };
        assert_eq!(misaligned.capability(), Err(MsixError::Alignment(4)));
    }

    #[test]
    fn table_reset_state_and_field_masks() {
        let (mut msix, _) = setup(2);
        assert!(msix.vector_masked(0) && msix.vector_masked(1));
        assert_eq!(read_table_value(&msix, 12, 4), 1);
        write_table_value(&mut msix, 0, 4, 0xfee0_0003);
        assert_eq!(read_table_value(&msix, 0, 4), 0xfee0_0000);
        write_table_value(&mut msix, 12, 4, 0xffff_fffe);
        assert_eq!(read_table_value(&msix, 12, 4), 0);
        // 8-byte access across address low/high.
        write_table_value(&mut msix, 16, 8, 0x1234_5678_fee0_1000);
        assert_eq!(read_table_value(&msix, 16, 8), 0x1234_5678_fee0_1000);
        // Out-of-range accesses read zero and are ignored.
        write_table_value(&mut msix, 32, 8, u64::MAX);
        assert_eq!(read_table_value(&msix, 32, 8), 0);
        assert_eq!(read_table_value(&msix, u64::MAX, 8), 0);
        write_table_value(&mut msix, u64::MAX - 2, 8, u64::MAX);
    }

    #[test]
    fn unmasked_vector_is_configured_and_triggers() {
        let (mut msix, controller) = setup(4);
        msix.set_control(MSIX_CONTROL_ENABLE);
        program(&mut msix, 1, 0xfee0_0000, 0x41);
        // Still masked: the controller has not been bothered.
        assert!(controller.configured().is_empty());
        unmask(&mut msix, 1);
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(controller.configured(), vec![(1, message, false)]);
        msix.trigger(1);
        assert_eq!(controller.triggered(), vec![1]);
        // Out-of-range vectors are ignored.
        msix.trigger(4);
        assert_eq!(controller.triggered(), vec![1]);
    }

    #[test]
    fn masked_vector_sets_pending_and_fires_on_unmask() {
        let (mut msix, controller) = setup(2);
        msix.set_control(MSIX_CONTROL_ENABLE);
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        msix.trigger(0);
        assert!(controller.triggered().is_empty());
        assert!(msix.is_pending(0));
        let mut pba = [0u8; 8];
        msix.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        unmask(&mut msix, 0);
        assert_eq!(controller.triggered(), vec![0]);
        assert!(!msix.is_pending(0));
    }

    #[test]
    fn function_mask_holds_all_vectors() {
        let (mut msix, controller) = setup(2);
        msix.set_control(MSIX_CONTROL_ENABLE);
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        program(&mut msix, 1, 0xfee0_0000, 0x31);
        unmask(&mut msix, 0);
        unmask(&mut msix, 1);
        controller.clear();
        msix.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        // Both vectors are now reported masked to the controller.
        assert!(controller.configured().iter().all(|&(_, _, masked)| masked));
        msix.trigger(0);
        msix.trigger(1);
        assert!(controller.triggered().is_empty());
        assert!(msix.is_pending(0) && msix.is_pending(1));
        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(controller.triggered(), vec![0, 1]);
    }

    #[test]
    fn disabled_msix_drops_interrupts() {
        let (mut msix, controller) = setup(1);
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        unmask(&mut msix, 0);
        msix.trigger(0);
        assert!(controller.triggered().is_empty());
        assert!(!msix.is_pending(0));
        assert_eq!(msix.dropped_interrupts(), 1);
    }

    #[test]
    fn message_change_while_unmasked_reconfigures() {
        let (mut msix, controller) = setup(1);
        msix.set_control(MSIX_CONTROL_ENABLE);
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        unmask(&mut msix, 0);
        write_table_value(&mut msix, 8, 4, 0x31);
        let last = *controller.configured().last().unwrap();
        assert_eq!(last.1.data, 0x31);
        assert!(!last.2);
    }
}
