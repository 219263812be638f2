//! Fault reasons (§7.1.3, §7.2) recorded in FRCD.FR for non-recoverable translation faults.
//!
//! Legacy-mode reasons are below 0x20, interrupt-remapping reasons 0x20-0x2F, scalable-mode
//! reasons from 0x30. The descriptions follow the spec's wording, which is also what the Linux
//! driver prints after `[fault reason 0xNN]`.

macro_rules! fault_reasons {
    ($($name:ident = $code:literal, $text:literal;)*) => {
        /// A fault reason code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FaultReason {
            $(
                #[doc = $text]
                $name = $code,
            )*
        }

        impl FaultReason {
            /// The FR encoding.
            pub const fn code(self) -> u8 {
                self as u8
            }
            /// The spec's description of the fault.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Self::$name => $text,)*
                }
            }
            /// Decodes an FR value, if it names a fault this model can raise.
            pub const fn from_code(code: u8) -> Option<Self> {
                match code {
                    $($code => Some(Self::$name),)*
                    _ => None,
                }
            }
            /// Every fault reason, in code order.
            pub const ALL: &'static [FaultReason] = &[$(Self::$name,)*];
        }
    };
}

fault_reasons! {
    RootNotPresent = 0x01, "The present field in the root entry is clear";
    ContextNotPresent = 0x02, "The present field in the context entry is clear";
    ContextInvalid = 0x03, "Invalid programming of a context entry";
    AddressBeyondAgaw = 0x04, "Access to an address beyond the guest address width";
    WriteDenied = 0x05, "The write field in a paging entry is clear";
    ReadDenied = 0x06, "The read field in a paging entry is clear";
    PagingEntryAccess = 0x07, "Error accessing a paging entry";
    RootEntryAccess = 0x08, "Error accessing a root entry";
    ContextEntryAccess = 0x09, "Error accessing a context entry";
    RootReserved = 0x0a, "Non-zero reserved field in a present root entry";
    ContextReserved = 0x0b, "Non-zero reserved field in a present context entry";
    PagingEntryReserved = 0x0c, "Non-zero reserved field in a present paging entry";
    TranslationTypeBlocked = 0x0d, "Request blocked by the context entry's translation type";
    InterruptAddress = 0x0e, "Output address in the interrupt address range";
    IrRequestReserved = 0x20, "Reserved field set in the decoded interrupt request";
    IrIndexBeyondTable = 0x21, "Interrupt index beyond the interrupt-remapping table size";
    IrEntryNotPresent = 0x22, "Present field in the IRTE is clear";
    IrTableAccess = 0x23, "Error accessing the interrupt-remapping table pointed to by IRTA_REG";
    IrEntryReserved = 0x24, "Reserved field set in a present IRTE";
    IrCompatibilityBlocked = 0x25, "Blocked a compatibility-format interrupt request";
    IrSourceBlocked = 0x26, "Blocked an interrupt request: source-id verification failed";
    IrPostedDescriptorAccess = 0x27, "Error accessing a posted-interrupt descriptor";
    SmInvalidRootTableAddress = 0x30, "SM: Invalid root table address";
    SmTtmLegacyWithPasid = 0x31, "SM: TTM 0 for a request with PASID";
    SmRootEntryAccess = 0x38, "SM: Error attempting to access the root entry";
    SmRootNotPresent = 0x39, "SM: Present bit in the root entry is clear";
    SmRootReserved = 0x3a, "SM: Non-zero reserved field set in the root entry";
    SmContextEntryAccess = 0x40, "SM: Error attempting to access the context entry";
    SmContextNotPresent = 0x41, "SM: Present bit in the context entry is clear";
    SmContextReserved = 0x42, "SM: Non-zero reserved field set in the context entry";
    SmContextInvalid = 0x43, "SM: Invalid context entry";
    SmDteClear = 0x44, "SM: DTE field in the context entry is clear";
    SmPasidEnableClear = 0x45, "SM: PASID enable field in the context entry is clear";
    SmPasidTooLarge = 0x46, "SM: PASID is larger than the maximum in the context entry";
    SmPreClear = 0x47, "SM: PRE field in the context entry is clear";
    SmRidPasidError = 0x48, "SM: RID_PASID field error in the context entry";
    SmPasidDirAccess = 0x50, "SM: Error attempting to access the PASID directory entry";
    SmPasidDirNotPresent = 0x51, "SM: Present bit in the PASID directory entry is clear";
    SmPasidDirReserved = 0x52, "SM: Non-zero reserved field set in the PASID directory entry";
    SmPasidEntryAccess = 0x58, "SM: Error attempting to access the PASID table entry";
    SmPasidEntryNotPresent = 0x59, "SM: Present bit in the PASID table entry is clear";
    SmPasidEntryReserved = 0x5a, "SM: Non-zero reserved field set in the PASID table entry";
    SmPasidEntryInvalid = 0x5b, "SM: Invalid scalable-mode PASID table entry";
    SmEreClear = 0x5c, "SM: ERE field is clear in the PASID table entry";
    SmSreClear = 0x5d, "SM: SRE field is clear in the PASID table entry";
    SmFirstStageAccess = 0x70, "SM: Error attempting to access a first-stage paging entry";
    SmFirstStageNotPresent = 0x71, "SM: Present bit in a first-stage paging entry is clear";
    SmFirstStageReserved = 0x72, "SM: Non-zero reserved field set in a first-stage paging entry";
    SmFirstStageRootAccess = 0x73, "SM: Error attempting to access the first-stage table root";
    SmSecondStageAccess = 0x78, "SM: Error attempting to access a second-stage paging entry";
    SmSecondStageNotPresent = 0x79, "SM: Read/write fields in a second-stage paging entry are clear";
    SmSecondStageReserved = 0x7a, "SM: Non-zero reserved field set in a second-stage paging entry";
    SmInvalidSecondStagePointer = 0x7b, "SM: Invalid second-stage page-table pointer";
    SmNonCanonical = 0x80, "SM: Address in first-stage translation is not canonical";
    SmUserDenied = 0x81, "SM: U/S clear in a first-stage entry for a user-privilege request";
    SmExecuteDenied = 0x82, "SM: No execute permission for the request";
    SmBeyondHardwareMax = 0x83, "SM: Address beyond the hardware's maximum";
    SmSecondStageBeyondMax = 0x84, "SM: Second-stage input address beyond the maximum";
    SmWriteDenied = 0x85, "SM: No write permission for a write request";
    SmReadDenied = 0x86, "SM: No read permission for a read request";
    SmInvalidInterruptAddress = 0x87, "SM: Request to the interrupt address range";
    SmFirstStageBitUpdateFailed = 0x91, "SM: Failed to update the A/D bits of a first-stage paging entry";
}

impl FaultReason {
    /// Whether this is an interrupt-remapping fault (0x20-0x2F): its record's FI field holds
    /// the interrupt index in bits 63:48 (§11.4.9.6).
    pub const fn is_interrupt_remapping(self) -> bool {
        matches!(self.code(), 0x20..=0x2f)
    }
}

impl std::fmt::Display for FaultReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[fault reason {:#04x}] {}",
            self.code(),
            self.description()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_sorted() {
        for pair in FaultReason::ALL.windows(2) {
            assert!(pair[0].code() < pair[1].code());
        }
        for &r in FaultReason::ALL {
            assert_eq!(FaultReason::from_code(r.code()), Some(r));
        }
        assert_eq!(FaultReason::from_code(0xff), None);
        assert_eq!(FaultReason::SmFirstStageNotPresent.code(), 0x71);
        assert_eq!(FaultReason::SmWriteDenied.code(), 0x85);
        let ir: Vec<u8> = FaultReason::ALL
            .iter()
            .filter(|r| r.is_interrupt_remapping())
            .map(|r| r.code())
            .collect();
        assert_eq!(ir, (0x20..=0x27).collect::<Vec<u8>>());
    }
}
