//! Initial vCPU register state: general registers, segment and control registers, FPU and the
//! local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::gdt::{self, BOOT_CS, BOOT_DS, BOOT_TSS};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, ZERO_PAGE_START};

/// Errors setting up registers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM register ioctl failed.
    #[error("Cannot set the initial {what} of vCPU {cpu}")]
    Kvm {
        /// Which register group.
        what: &'static str,
        /// vCPU index.
        cpu: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, paging on, `rsi` = zero page (Linux 64-bit boot protocol).
    Long64 {
        /// Page-table root.
        cr3: u64,
    },
    /// 32-bit protected mode, paging off, `rbx` = `hvm_start_info` (PVH boot protocol).
    Pvh {
        /// Guest-physical address of the start info.
        start_info: u64,
    },
}

/// General registers for an entry at `rip`.
pub fn boot_regs(rip: u64, mode: EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip,
        ..Default::default()
    };
    match mode {
        EntryMode::Long64 { .. } => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh { start_info } => regs.rbx = start_info,
    }
    regs
}

/// Segment and control registers for `mode`, starting from KVM's defaults in `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let code = match mode {
        EntryMode::Long64 { .. } => gdt::CODE64,
        EntryMode::Pvh { .. } => gdt::CODE32,
    };
    let table = gdt::gdt(code);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = gdt::segment(table[usize::from(BOOT_CS / 8)], BOOT_CS);
    let data = gdt::segment(table[usize::from(BOOT_DS / 8)], BOOT_DS);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(table[usize::from(BOOT_TSS / 8)], BOOT_TSS);
    match mode {
        EntryMode::Long64 { cr3 } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// Sets the boot vCPU's registers for `mode`, entering at `rip`.
pub fn setup_boot_cpu(vcpu: &VcpuFd, cpu: u32, rip: u64, mode: EntryMode) -> Result<(), Error> {
    let kvm = |what| move |source| Error::Kvm { what, cpu, source };
    let sregs = vcpu.get_sregs().map_err(kvm("segment registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs, mode))
        .map_err(kvm("segment registers"))?;
    vcpu.set_regs(&boot_regs(rip, mode))
        .map_err(kvm("general registers"))?;
    Ok(())
}

/// Sets the FPU to its reset state (x87 control word 0x37f, MXCSR 0x1f80).
pub fn setup_fpu(vcpu: &VcpuFd, cpu: u32) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| Error::Kvm {
        what: "FPU state",
        cpu,
        source,
    })
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the 8259) and LINT1 to NMI, as firmware does.
pub fn setup_lints(vcpu: &VcpuFd, cpu: u32) -> Result<(), Error> {
    let kvm = |source| Error::Kvm {
        what: "local APIC",
        cpu,
        source,
    };
    let mut lapic = vcpu.get_lapic().map_err(kvm)?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
            *b = *r as u8;
        }
        let value = set_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (r, b) in lapic.regs[offset..offset + 4]
            .iter_mut()
            .zip(value.to_le_bytes())
        {
            *r = b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_state() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Long64 { cr3: 0x9000 });
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l, s.ds.selector), (0x10, 1, 0x18));
        let r = boot_regs(0x100200, EntryMode::Long64 { cr3: 0x9000 });
        assert_eq!((r.rip, r.rsi), (0x100200, ZERO_PAGE_START));
    }

    #[test]
    fn pvh_state() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh { start_info: 0x6000 });
        assert_eq!((s.cr0 & CR0_PG, s.efer, s.cs.l, s.cs.db), (0, 0, 0, 1));
        assert_eq!(
            boot_regs(0x1000000, EntryMode::Pvh { start_info: 0x6000 }).rbx,
            0x6000
        );
    }

    #[test]
    fn lint_delivery_modes() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }
}
