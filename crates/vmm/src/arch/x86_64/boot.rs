//! Loading the kernel, initrd and command line, and writing the boot protocol structures:
//! the Linux zero page for bzImage and plain 64-bit ELF kernels, `hvm_start_info` for PVH.
//!
//! ```text
//! bzImage ──BzImage::load @1MiB──> zero page (setup header, e820, cmdline, initrd, RSDP)
//!                                  entry: 64-bit, rip = load + 0x200, rsi = zero page
//! vmlinux ──Elf::load──┬─ PVH note ──> hvm_start_info (memmap, modules, cmdline, RSDP)
//!                      │               entry: 32-bit flat, rbx = start info
//!                      └─ no note ───> zero page; entry: 64-bit at e_entry
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::e820::{self, E820Entry};
use super::gdt;
use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, RESET_VECTOR, ZERO_PAGE_START,
};
use super::regs::EntryMode;

/// Errors loading the kernel and writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel or initrd file cannot be opened or read.
    #[error("Cannot read {}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel image.
    #[error("Cannot load kernel {} (not a usable bzImage or ELF vmlinux): {reason}", .path.display())]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// The loader's innermost complaint.
        reason: String,
    },
    /// The bzImage cannot be entered in 64-bit mode.
    #[error("Kernel {} has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64 is required)", .0.display())]
    No64BitEntry(PathBuf),
    /// The command line is too long or has characters Linux does not accept.
    #[error("Kernel command line is invalid: {0}")]
    Cmdline(&'static str),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("Initrd of {size} bytes does not fit in guest memory below {limit:#x}")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Highest address it may end at.
        limit: u64,
    },
    /// Writing the zero page or PVH start info failed.
    #[error("Cannot write the boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// A guest memory write failed.
    #[error("Cannot write boot data to guest memory")]
    Memory(#[source] GuestMemoryError),
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    /// bzImage or ELF vmlinux.
    pub kernel: &'a Path,
    /// Optional initrd.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Guest-physical address of the ACPI RSDP.
    pub rsdp: u64,
}

/// Where and how the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// Entry instruction pointer.
    pub rip: u64,
    /// CPU mode at entry.
    pub mode: EntryMode,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

/// The innermost message of a linux-loader error, without its "Kernel Loader: " prefixes.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(next) = e.source() {
        e = next;
    }
    let text = e.to_string();
    text.rsplit("Kernel Loader: ")
        .next()
        .unwrap_or(&text)
        .trim_end_matches('.')
        .to_owned()
}

/// Checks the command line is printable ASCII and fits the boot protocol's buffer.
pub fn validate_cmdline(cmdline: &str) -> Result<(), Error> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::Cmdline("longer than 64 KiB"));
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::Cmdline(
            "only printable ASCII characters are allowed",
        ));
    }
    Ok(())
}

/// Real-mode code at the reset vector: `mov al, 1; mov dx, 0x602; out dx, al; hlt; jmp $-1`.
/// Linux's BIOS reboot method (chosen after the EFI method on hardware-reduced ACPI) jumps
/// here; without it the vCPU would execute zeros forever.
pub const RESET_STUB: [u8; 9] = [0xb0, 0x01, 0xba, 0x02, 0x06, 0xee, 0xf4, 0xeb, 0xfd];

/// Loads the kernel, initrd and command line and writes the boot structures; returns the entry.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<KernelEntry, Error> {
    validate_cmdline(spec.cmdline)?;
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))
        .map_err(Error::Memory)?;
    let mut kernel = open(spec.kernel)?;
    let kernel_err = |source: linux_loader::loader::Error| Error::Kernel {
        path: spec.kernel.to_owned(),
        reason: innermost(&source),
    };
    let mut magic = [0u8; 4];
    kernel.read_exact(&mut magic).map_err(|_| Error::Kernel {
        path: spec.kernel.to_owned(),
        reason: "the file is too small".to_owned(),
    })?;
    let himem = Some(GuestAddress(HIMEM_START));

    let mut cmdline = spec.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_START))
        .map_err(Error::Memory)?;
    let map = e820::e820_map(spec.mem_size);

    if magic == ELF_MAGIC {
        let loaded = Elf::load(mem, None, &mut kernel, himem).map_err(kernel_err)?;
        let initrd = load_initrd(mem, spec, loaded.kernel_end, u64::MAX)?;
        if let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap {
            write_pvh_start_info(mem, &map, initrd, spec.rsdp)?;
            gdt::write_gdt(mem, &gdt::gdt(gdt::CODE32)).map_err(Error::Memory)?;
            return Ok(KernelEntry {
                rip: entry.raw_value(),
                mode: EntryMode::Pvh {
                    start_info: PVH_INFO_START,
                },
            });
        }
        let mut params = boot_params::default();
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        write_zero_page(mem, params, &map, cmdline.len(), initrd, spec.rsdp)?;
        return Ok(KernelEntry {
            rip: loaded.kernel_load.raw_value(),
            mode: long_mode(mem)?,
        });
    }

    let loaded = BzImage::load(mem, himem, &mut kernel, himem).map_err(kernel_err)?;
    let hdr = loaded.setup_header.unwrap_or_default();
    if hdr.version < 0x20c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::No64BitEntry(spec.kernel.to_owned()));
    }
    let initrd = load_initrd(mem, spec, loaded.kernel_end, u64::from(hdr.initrd_addr_max))?;
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.code32_start = HIMEM_START as u32;
    write_zero_page(mem, params, &map, cmdline.len(), initrd, spec.rsdp)?;
    Ok(KernelEntry {
        rip: loaded.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        mode: long_mode(mem)?,
    })
}

/// Writes the 64-bit GDT and identity map.
fn long_mode(mem: &GuestMemoryMmap) -> Result<EntryMode, Error> {
    gdt::write_gdt(mem, &gdt::gdt(gdt::CODE64)).map_err(Error::Memory)?;
    let cr3 = gdt::write_identity_map(mem).map_err(Error::Memory)?;
    Ok(EntryMode::Long64 { cr3 })
}

/// Where the initrd landed: `(address, size)`.
type Initrd = Option<(u64, u64)>;

/// Initrd placement: page-aligned, as high as possible below both the top of low RAM and
/// `addr_max` (inclusive), and above `kernel_end`.
pub fn initrd_address(mem_size: u64, kernel_end: u64, addr_max: u64, size: u64) -> Option<u64> {
    let limit = e820::low_ram_end(mem_size).min(addr_max.saturating_add(1));
    let addr = limit.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    spec: &BootSpec<'_>,
    kernel_end: u64,
    addr_max: u64,
) -> Result<Initrd, Error> {
    let Some(path) = spec.initrd else {
        return Ok(None);
    };
    let mut file = open(path)?;
    let size = file
        .metadata()
        .map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?
        .len();
    let addr =
        initrd_address(spec.mem_size, kernel_end, addr_max, size).ok_or(Error::InitrdTooLarge {
            size,
            limit: e820::low_ram_end(spec.mem_size).min(addr_max),
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(Error::Memory)?;
    Ok(Some((addr, size)))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mut params: boot_params,
    map: &[E820Entry],
    cmdline_size: usize,
    initrd: Initrd,
    rsdp: u64,
) -> Result<(), Error> {
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(Error::BootParams)
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    map: &[E820Entry],
    initrd: Initrd,
    rsdp: u64,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.code(),
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(Error::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn initrd_goes_high_and_aligned() {
        let addr = initrd_address(512 * MIB, 20 * MIB, 0x7fff_ffff, 10 * MIB + 5).unwrap();
        assert_eq!(addr, (502 * MIB - 5) & !0xfff);
        assert_eq!(addr % 4096, 0);
        assert!(addr + 10 * MIB + 5 <= 512 * MIB);
        // initrd_addr_max below the top of RAM wins.
        let addr = initrd_address(4096 * MIB, 20 * MIB, 0x7fff_ffff, MIB).unwrap();
        assert_eq!(addr, 0x8000_0000 - MIB);
    }

    #[test]
    fn initrd_must_not_overlap_the_kernel() {
        assert_eq!(initrd_address(64 * MIB, 60 * MIB, u64::MAX, 8 * MIB), None);
        assert_eq!(initrd_address(64 * MIB, 0, u64::MAX, 65 * MIB), None);
    }

    #[test]
    fn reset_stub_targets_the_acpi_reset_register() {
        use crate::arch::x86_64::layout::{ACPI_PM_START, ACPI_RESET_REG, ACPI_RESET_VALUE};
        let port = ACPI_PM_START + ACPI_RESET_REG;
        assert_eq!(RESET_STUB[1], ACPI_RESET_VALUE);
        assert_eq!(u16::from_le_bytes([RESET_STUB[3], RESET_STUB[4]]), port);
        assert!(RESET_VECTOR + RESET_STUB.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn cmdline_rules() {
        assert!(validate_cmdline("console=ttyS0 intel_iommu=on,sm_on").is_ok());
        assert!(validate_cmdline("bad\nline").is_err());
        assert!(validate_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let dir = std::env::temp_dir().join(format!("vmm-boot-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let spec = BootSpec {
            kernel: &dir,
            initrd: None,
            cmdline: "",
            mem_size: 16 << 20,
            rsdp: 0xe0000,
        };
        let err = load(&mem, &spec).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(err, Error::Kernel { .. }), "{err}");
    }
}
