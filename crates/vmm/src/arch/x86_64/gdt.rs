//! The boot GDT and the identity-mapped page tables for the 64-bit entry.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START};

/// Flat 64-bit code segment: present, DPL 0, execute/read, accessed, L=1, G=1.
pub const CODE64: u16 = 0xa09b;
/// Flat 32-bit code segment: present, DPL 0, execute/read, accessed, D=1, G=1.
pub const CODE32: u16 = 0xc09b;
/// Flat data segment: present, DPL 0, read/write, accessed, B=1, G=1.
pub const DATA: u16 = 0xc093;
/// 32/64-bit busy TSS.
pub const TSS: u16 = 0x808b;

/// Selector of the boot code segment (Linux's `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment (Linux's `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;

/// Encodes a segment descriptor from access/flags bits, base and 20-bit limit.
pub fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes a descriptor into the `kvm_segment` KVM wants for the hidden part of a segment
/// register.
pub fn segment(descriptor: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((descriptor >> n) & 1) as u8;
    let base = ((descriptor >> 16) & 0xff_ffff) | ((descriptor >> 32) & 0xff00_0000);
    let raw_limit = ((descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((descriptor >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: 0,
        padding: 0,
    }
}

/// The boot GDT: two null entries, code at [`BOOT_CS`], data at [`BOOT_DS`], TSS at
/// [`BOOT_TSS`]. `code` is [`CODE64`] for the 64-bit entry and [`CODE32`] for PVH.
pub fn gdt(code: u16) -> [u64; 5] {
    [
        0,
        0,
        descriptor(code, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS, 0, 0xfffff),
    ]
}

/// Writes the GDT and an empty IDT.
pub fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<(), GuestMemoryError> {
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
}

/// Writes page tables identity-mapping the low 4 GiB with 2 MiB pages; returns the CR3 value.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<u64, GuestMemoryError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))?;
    for dir in 0..4u64 {
        let pd = PDE_START + dir * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPTE_START + dir * 8))?;
        for i in 0..512u64 {
            let frame = ((dir << 9) | i) << 21;
            mem.write_obj(frame | PRESENT_RW | PAGE_SIZE_2M, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_architecture() {
        // The well-known flat descriptors.
        assert_eq!(descriptor(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segments_decode() {
        let cs = segment(descriptor(CODE64, 0, 0xfffff), BOOT_CS);
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.l, cs.db, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(descriptor(DATA, 0x1234_5678, 0xfffff), BOOT_DS);
        assert_eq!(ds.base, 0x1234_5678);
        assert_eq!((ds.type_, ds.db, ds.l), (0x3, 1, 0));
    }

    #[test]
    fn identity_map_covers_4gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(write_identity_map(&mem).unwrap(), PML4_START);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
