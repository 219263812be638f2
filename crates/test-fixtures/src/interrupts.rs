//! Interrupt remapping as a driver sets it up (chapter 5): IRTEs written into a table in guest
//! RAM and the remappable-format messages that name them, from `vtd-spec`'s typed formats.
//!
//! ```text
//!  irte(vector, destination) ─► write_irte(ram, table, index, …)   (16 bytes per entry)
//!  remappable(handle) / with_subhandle(handle, sub) ─► (address, data) of an MSI
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd_spec::interrupt::{IRTE_SIZE, InterruptAddress, Irte, IrteHi, IrteLo};

/// A present IRTE: fixed delivery, physical destination mode, edge, no source validation.
/// `destination` is the APIC id: placed in DST 15:8 for xAPIC mode (`eime` false), whole for
/// x2APIC mode.
pub fn irte(vector: u8, destination: u32, eime: bool) -> Irte {
    let dst = if eime {
        destination
    } else {
        (destination & 0xff) << 8
    };
    Irte {
        lo: IrteLo::new()
            .with_present(true)
            .with_vector(vector)
            .with_dst(dst),
        hi: IrteHi::new(),
    }
}

/// Writes `entry` as entry `index` of the table at `table`.
pub fn write_irte(ram: &GuestMemoryMmap<()>, table: u64, index: u64, entry: Irte) {
    let at = table + IRTE_SIZE * index;
    let [lo, hi] = entry.into_words();
    ram.write_obj(lo, GuestAddress(at)).unwrap();
    ram.write_obj(hi, GuestAddress(at + 8)).unwrap();
}

/// The (address, data) of a remappable-format MSI naming entry `handle` (SHV clear, data 0),
/// as Linux's IOAPIC and HPET entries do.
pub fn remappable(handle: u16) -> (u64, u32) {
    let address = InterruptAddress::remappable_for(handle, false);
    (u64::from(address.into_bits()), 0)
}

/// The (address, data) of a remappable-format MSI with SHV: entry `handle + subhandle`, as
/// Linux's multi-vector MSI does.
pub fn with_subhandle(handle: u16, subhandle: u16) -> (u64, u32) {
    let address = InterruptAddress::remappable_for(handle, true);
    (u64::from(address.into_bits()), u32::from(subhandle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mem;

    #[test]
    fn entries_land_where_the_unit_reads_them() {
        let mem = Mem::new();
        let table = mem.page();
        write_irte(&mem.ram, table, 3, irte(0x31, 2, false));
        assert_eq!(
            mem.r64(table + 48),
            (1 | (0x31 << 16)) as u64 | (0x200u64 << 32)
        );
        assert_eq!(mem.r64(table + 56), 0);
        assert_eq!(
            remappable(0x8001),
            (0xfee0_0000 | (1 << 5) | (1 << 4) | (1 << 2), 0)
        );
        assert_eq!(
            with_subhandle(4, 2),
            (0xfee0_0000 | (4 << 5) | (1 << 4) | (1 << 3), 2)
        );
    }
}
