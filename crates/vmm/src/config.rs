//! The VM configuration and the strict `vtd-nest` command-line parser that produces it.
//!
//! Hand-written on purpose (no parser dependency): every option takes exactly one value, as
//! `--name value` or `--name=value`; anything unknown, missing or malformed is an error of one
//! sentence, and `main` exits with status 2.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest RAM accepted.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Most vCPUs with 8-bit APIC IDs (255 is the xAPIC broadcast ID); more need x2APIC, which
/// needs the vIOMMU's interrupt remapping in extended interrupt mode.
pub const MAX_XAPIC_CPUS: u16 = crate::vm::MAX_XAPIC_CPUS;
/// Most vCPUs accepted at all (KVM's own limit is checked when the VM is created).
pub const MAX_CPUS: u16 = 4096;

/// The help text.
pub const USAGE: &str = "\
vtd-nest: a KVM VMM with a virtual Intel VT-d IOMMU (scalable mode, first-stage translation)

Usage:
  vtd-nest run --kernel PATH [OPTIONS]
  vtd-nest remote --api-socket FILE COMMAND
  vtd-nest --help | --version

Commands of `remote` (answers on stdout; an error is one sentence and exit status 1):
  info, counters [--json], iommu-state [--json], pause, resume, shutdown,
  add-disk KEY=VALUE,... (as --disk), add-device KEY=VALUE,... (as --device), remove-device ID

Options of `run` (each as `--name VALUE` or `--name=VALUE`):
  --kernel PATH         bzImage or ELF vmlinux (PVH entry when the ELF note is present)
  --initrd PATH         initial ramdisk
  --cmdline STRING      kernel command line [default: console=ttyS0]
  --memory SIZE         guest RAM, e.g. 512M, 1G (suffixes K, M, G, T) [default: 512M]
  --cpus N              number of vCPUs, 1-254, or up to 4096 with --iommu
                        intel,intremap=on,eim=on (x2APIC) [default: 1]
  --irqchip kernel|split
                        kernel: KVM emulates the PIC, IOAPIC, LAPICs and PIT; split: only
                        the LAPICs, the IOAPIC is the VMM's (no PIC, no PIT), which interrupt
                        remapping needs [default: split with intremap=on, else kernel]
  --iommu intel[,OPT=VALUE...]
                        add a virtual Intel VT-d IOMMU; options use QEMU's names:
                          x-scalable-mode=on|off  scalable-mode tables [off: legacy]
                          x-flts=on|off           first-stage translation (scalable mode) [off]
                          x-ssts=on|off           second-stage translation too [off]
                          aw-bits=39|48           address width [48]
                          caching-mode=on|off     CAP.CM, needed for --device [off]
                          fs1gp=on|off            1 GiB first-stage pages [on]
                          pt=on|off               pass-through entries [on]
                          snoop-control=on|off    ECAP.SC [off]
                          x-pasid-mode=on|off|N   PASID support (N: PASID width in bits)
                          device-iotlb=on|off     ECAP.DT (ATS) [off]
                          intremap=on|off|auto    interrupt remapping; auto: on with the
                                                  split irqchip [auto]
                          eim=on|off|auto         x2APIC-mode remapping (ECAP.EIM); auto: on
                                                  with intremap and KVM's x2APIC API [auto]
  --disk path=FILE[,readonly=on|off][,iommu=on|off][,assigned=sim][,indirect_desc=on|off]
                        add a virtio-blk disk (repeatable); iommu=on puts its DMA behind the
                        vIOMMU (VIRTIO_F_ACCESS_PLATFORM); assigned=sim models it as a
                        passthrough device on the software host IOMMU (needs the vIOMMU
                        with caching-mode=on, as QEMU requires for device assignment);
                        indirect_desc=on offers indirect descriptors [default: off: one
                        DMA mapping, and in strict mode one invalidation, fewer per request]
  --device path=/sys/bus/pci/devices/DDDD:BB:DD.F[,iommu=on|off][,backend=auto|iommufd|container][,id=NAME]
                        assign a host PCI device bound to vfio-pci (repeatable); iommu=on puts
                        it behind the vIOMMU (needs --iommu intel with caching-mode=on: the
                        guest's second-stage tables are shadowed, or, with x-flts=on, its
                        first-stage tables nested on a host IOMMU that can nest); backend
                        auto takes iommufd when /dev/iommu exists, else the VFIO container
  --serial stdio|file=PATH
                        where COM1 output goes [default: stdio]
  --log-level DIRECTIVES
                        a level (error, warn, info, debug, trace) or tracing directives by
                        target, e.g. warn,vtd=debug,accel=trace [default: RUST_LOG, else warn]
  --log-file FILE       write the log there instead of stderr
  --counters FILE       write the counters there as JSON at exit, instead of the
                        `counter NAME VALUE` summary on stderr
  --api-socket path=FILE
                        serve the HTTP API on a Unix socket (mode 0600, removed at exit):
                        GET /api/v1/vm.info, vm.counters, vm.iommu-state; PUT vm.pause,
                        vm.resume, vm.shutdown, vm.add-disk, vm.add-device, vm.remove-device
  --test-dma-fault IOVA test only: the first iommu=on disk reads IOVA through the vIOMMU
                        once, just before its first DMA (a fault if the guest never mapped it)

Exit status: 0 when the guest powers off or reboots, 1 on a VM error, 2 on bad options,
128 + N after signal N (SIGINT, SIGTERM or SIGHUP stop the VM and print the counters).
";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Boot a VM.
    Run(Box<VmConfig>),
    /// Print [`USAGE`].
    Help,
    /// Print the version.
    Version,
    /// Send one request to a running VMM's API socket.
    Remote(crate::api::remote::Remote),
}

/// Everything needed to build a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u16,
    /// Which interrupt controllers KVM emulates.
    pub irqchip: IrqchipMode,
    /// The vIOMMU, if any.
    pub iommu: Option<IommuConfig>,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// Assigned host PCI devices (VFIO).
    pub devices: Vec<DeviceConfig>,
    /// Serial output.
    pub serial: SerialConfig,
    /// Log directives from `--log-level`; `None`: RUST_LOG, else [`LogLevel::DEFAULT`].
    pub log_level: Option<LogLevel>,
    /// Where logs go instead of stderr (`--log-file`).
    pub log_file: Option<PathBuf>,
    /// Where the counters go, as JSON, instead of the summary on stderr (`--counters`).
    pub counters_file: Option<PathBuf>,
    /// Test only: an IOVA to read through the vIOMMU once, to provoke a DMA fault.
    pub test_dma_fault: Option<u64>,
    /// The API socket (`--api-socket`).
    pub api_socket: Option<PathBuf>,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_owned(),
            memory: DEFAULT_MEMORY,
            cpus: 1,
            irqchip: IrqchipMode::Kernel,
            iommu: None,
            disks: Vec::new(),
            devices: Vec::new(),
            serial: SerialConfig::Stdio,
            log_level: None,
            log_file: None,
            counters_file: None,
            test_dma_fault: None,
            api_socket: None,
        }
    }
}

/// A file named in the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("Cannot open the {what} {}", .path.display())]
pub struct FileError {
    /// Which option named it.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Checks that the `what` at `path` opens (read-write when `write`) and is not a directory.
pub fn check_file(what: &'static str, path: &Path, write: bool) -> Result<(), FileError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .and_then(|file| file.metadata())
        .and_then(|meta| {
            // Opening a directory for reading succeeds; reading it does not.
            if meta.is_dir() {
                Err(std::io::ErrorKind::IsADirectory.into())
            } else {
                Ok(())
            }
        })
        .map_err(|source| FileError {
            what,
            path: path.to_owned(),
            source,
        })
}

impl VmConfig {
    /// Checks that the kernel, initrd and disk files can be opened (read-write for writable
    /// disks), before any VM is created.
    pub fn check_files(&self) -> Result<(), FileError> {
        check_file("kernel", &self.kernel, false)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd, false)?;
        }
        for disk in &self.disks {
            check_file("disk image", &disk.path, !disk.readonly)?;
        }
        Ok(())
    }
}

/// `--iommu intel[,...]`: the model and its option string, handed to the vIOMMU's own parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Everything after `intel,` (QEMU option syntax), possibly empty.
    pub options: String,
}

/// `--irqchip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqchipMode {
    /// PIC, IOAPIC, LAPICs and PIT in KVM.
    Kernel,
    /// LAPICs in KVM, the IOAPIC in the VMM.
    Split,
}

impl IommuConfig {
    /// The vIOMMU's options with interrupt remapping decided for `irqchip` (QEMU's rules,
    /// `vtd::Config::resolve_interrupt_remapping`), assuming KVM_CAP_X2APIC_API, which creating
    /// the unit checks again.
    pub fn resolved(&self, irqchip: IrqchipMode) -> Result<vtd::Config, ArgError> {
        let bad = |e: vtd::ConfigError| ArgError::BadIommuOptions(e.to_string());
        let mut vtd = vtd::Config::parse(&self.options).map_err(bad)?;
        vtd.resolve_interrupt_remapping(irqchip == IrqchipMode::Split, true)
            .map_err(bad)?;
        Ok(vtd)
    }

    /// Whether the options ask for interrupt remapping outright (`intremap=on`), which makes
    /// the split irqchip the default.
    pub fn asks_for_interrupt_remapping(&self) -> bool {
        vtd::Config::parse(&self.options).is_ok_and(|c| c.intremap == vtd::config::OnOffAuto::On)
    }
}

/// `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Backing file.
    pub path: PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// DMA through the vIOMMU (offers VIRTIO_F_ACCESS_PLATFORM).
    pub iommu: bool,
    /// Modelled as an assigned (passthrough) device on this host IOMMU backend.
    pub assigned: Option<AssignedBackend>,
    /// Offer VIRTIO_RING_F_INDIRECT_DESC (QEMU's `indirect_desc`).
    pub indirect_desc: bool,
}

/// `--device`: a host PCI device assigned through VFIO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The device's sysfs directory, `/sys/bus/pci/devices/DDDD:BB:DD.F`.
    pub path: PathBuf,
    /// Behind the vIOMMU.
    pub iommu: bool,
    /// How the device is bound to the host IOMMU.
    pub backend: VfioBackend,
    /// A name for messages and counters (`vfioN` when not given).
    pub id: String,
}

/// The host VFIO interface an assigned device goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfioBackend {
    /// iommufd when `/dev/iommu` exists, else the container.
    Auto,
    /// `/dev/iommu` and the device's VFIO cdev.
    Iommufd,
    /// The legacy VFIO container and group (type1).
    Container,
}

/// Host IOMMU backend for an assigned device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignedBackend {
    /// The software host IOMMU.
    Sim,
}

/// `--serial`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    /// The VMM's stdout.
    Stdio,
    /// A file (created or truncated).
    File(PathBuf),
}

/// `--log-level`: tracing directives, checked when parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLevel(String);

impl LogLevel {
    /// The level when neither `--log-level` nor `RUST_LOG` says.
    pub const DEFAULT: &str = "warn";

    /// Checks `directives` (`warn`, `vtd=debug,accel=trace`: tracing-subscriber's EnvFilter
    /// syntax, which RUST_LOG uses too).
    pub fn parse(directives: &str) -> Option<Self> {
        tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .ok()
            .map(|_| LogLevel(directives.to_owned()))
    }

    /// The directives.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A command-line error; its message is one sentence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    /// No command.
    #[error("No command given; try 'vtd-nest run --kernel PATH' or 'vtd-nest --help'")]
    NoCommand,
    /// An argument that is not UTF-8 (shown lossily, with its position after the program name).
    #[error("Argument {0} ('{1}') is not valid UTF-8")]
    NotUtf8(usize, String),
    /// Not `run`.
    #[error("Unknown command '{0}'; the only command is 'run' (see 'vtd-nest --help')")]
    UnknownCommand(String),
    /// Unknown option.
    #[error("Unknown option '{0}' (see 'vtd-nest --help')")]
    UnknownOption(String),
    /// A positional argument where an option was expected.
    #[error("Unexpected argument '{0}'; options start with '--'")]
    Unexpected(String),
    /// Missing value.
    #[error("Option '--{0}' needs a value")]
    MissingValue(&'static str),
    /// Given twice.
    #[error("Option '--{0}' is given more than once")]
    Duplicate(&'static str),
    /// Empty value.
    #[error("Option '--{0}' needs a non-empty value")]
    Empty(&'static str),
    /// No kernel.
    #[error("Option '--kernel' is required")]
    NoKernel,
    /// Bad size.
    #[error(
        "Invalid size '{0}' for --memory: use a whole number with an optional K, M, G or T suffix"
    )]
    BadSize(String),
    /// Size out of range.
    #[error(
        "Memory size {0} is out of range: it must be a multiple of 4 KiB between 16 MiB and 1 TiB"
    )]
    SizeRange(String),
    /// Bad CPU count.
    #[error("Invalid vCPU count '{0}': use a number from 1 to 4096")]
    BadCpus(String),
    /// More vCPUs than 8-bit APIC IDs reach, without x2APIC interrupt remapping (QEMU: "current
    /// -smp configuration requires Extended Interrupt Mode enabled").
    #[error(
        "--cpus {0} requires Extended Interrupt Mode: more than 254 vCPUs need x2APIC, enable it with --iommu intel,intremap=on,eim=on"
    )]
    CpusNeedEim(u16),
    /// Bad --irqchip value.
    #[error("Invalid --irqchip '{0}': use kernel or split")]
    BadIrqchip(String),
    /// Bad IOMMU model.
    #[error("Unsupported IOMMU '{0}': only 'intel' is available")]
    BadIommu(String),
    /// Options the vIOMMU model refuses.
    #[error("Invalid --iommu option: {0}")]
    BadIommuOptions(String),
    /// Bad disk option.
    #[error("Invalid --disk '{spec}': {why}")]
    BadDisk {
        /// The whole spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A disk wants the vIOMMU, but there is none.
    #[error("Disk {0} uses iommu=on or assigned=sim, which need --iommu intel,...")]
    DiskNeedsIommu(String),
    /// Bad device option.
    #[error("Invalid --device '{spec}': {why}")]
    BadDevice {
        /// The whole spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A device wants the vIOMMU, but there is none.
    #[error("Device {0} has iommu=on, which needs --iommu intel,...")]
    DeviceNeedsIommu(String),
    /// QEMU's refusal of device assignment behind a vIOMMU without caching mode.
    #[error("Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU.")]
    AssignmentNeedsCachingMode,
    /// Two devices with one id.
    #[error("Device id '{0}' is given twice")]
    DuplicateDeviceId(String),
    /// One host device assigned twice.
    #[error("Device {0} is assigned twice")]
    DuplicateDevicePath(String),
    /// `--test-dma-fault` without a translated disk.
    #[error("Option '--test-dma-fault' needs a disk with iommu=on to issue the DMA")]
    FaultNeedsDisk,
    /// Bad serial.
    #[error("Invalid --serial '{0}': use 'stdio' or 'file=PATH'")]
    BadSerial(String),
    /// Bad log level.
    #[error(
        "Invalid --log-level '{0}': use a level (error, warn, info, debug, trace) or directives \
         such as vtd=debug,accel=trace"
    )]
    BadLogLevel(String),
    /// Bad IOVA.
    #[error("Invalid --test-dma-fault '{0}': use an address such as 0x1000")]
    BadIova(String),
    /// A `remote` command line that does not parse.
    #[error("{0} (see 'vtd-nest --help')")]
    BadRemote(String),
}

/// Parses `512M`, `1G`, `4096`, `2GiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, ArgError> {
    let bad = || ArgError::BadSize(text.to_owned());
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    value.checked_mul(1 << shift).ok_or_else(bad)
}

fn parse_on_off(value: &str) -> Option<bool> {
    match value {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Parses a `--disk` value.
pub fn parse_disk(spec: &str) -> Result<DiskConfig, ArgError> {
    let bad = |why: String| ArgError::BadDisk {
        spec: spec.to_owned(),
        why,
    };
    let mut path = None;
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        readonly: false,
        iommu: false,
        assigned: None,
        indirect_desc: false,
    };
    for (key, value) in key_values(spec).map_err(bad)? {
        let flag = || parse_on_off(value).ok_or_else(|| bad(format!("{key} must be on or off")));
        match key {
            "path" if value.is_empty() => return Err(bad("path is empty".into())),
            "path" => path = Some(PathBuf::from(value)),
            "readonly" => disk.readonly = flag()?,
            "iommu" => disk.iommu = flag()?,
            "indirect_desc" => disk.indirect_desc = flag()?,
            "assigned" if value == "sim" => disk.assigned = Some(AssignedBackend::Sim),
            "assigned" => return Err(bad("the only assigned backend is 'sim'".into())),
            _ => return Err(bad(format!("unknown key '{key}'"))),
        }
    }
    disk.path = path.ok_or_else(|| bad("path=FILE is required".into()))?;
    Ok(disk)
}

/// The `KEY=VALUE` items of a comma-separated option value (`--disk`, `--device`), each key at
/// most once, in order.
pub fn key_values(spec: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut items: Vec<(&str, &str)> = Vec::new();
    for item in spec.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("'{item}' is not KEY=VALUE"));
        };
        if items.iter().any(|&(k, _)| k == key) {
            return Err(format!("'{key}' is given twice"));
        }
        items.push((key, value));
    }
    Ok(items)
}

/// Parses a `--device` value; `index` names it `vfio<index>` when it has no `id`.
pub fn parse_device(spec: &str, index: usize) -> Result<DeviceConfig, ArgError> {
    let bad = |why: String| ArgError::BadDevice {
        spec: spec.to_owned(),
        why,
    };
    let mut path = None;
    let mut device = DeviceConfig {
        path: PathBuf::new(),
        iommu: false,
        backend: VfioBackend::Auto,
        id: format!("vfio{index}"),
    };
    for (key, value) in key_values(spec).map_err(bad)? {
        match key {
            "path" if value.is_empty() => return Err(bad("path is empty".into())),
            "path" => path = Some(PathBuf::from(value)),
            "iommu" => {
                device.iommu =
                    parse_on_off(value).ok_or_else(|| bad("iommu must be on or off".into()))?
            }
            "backend" => {
                device.backend = match value {
                    "auto" => VfioBackend::Auto,
                    "iommufd" => VfioBackend::Iommufd,
                    "container" => VfioBackend::Container,
                    _ => return Err(bad("backend must be auto, iommufd or container".into())),
                }
            }
            "id" if value.is_empty() || value.contains(char::is_whitespace) => {
                return Err(bad("id must be a non-empty word".into()));
            }
            "id" => device.id = value.to_owned(),
            _ => return Err(bad(format!("unknown key '{key}'"))),
        }
    }
    device.path =
        path.ok_or_else(|| bad("path=/sys/bus/pci/devices/DDDD:BB:DD.F is required".into()))?;
    Ok(device)
}

/// Parses an `--iommu` value: the model name here, the options by the model itself.
pub fn parse_iommu(spec: &str) -> Result<IommuConfig, ArgError> {
    let (model, options) = spec.split_once(',').unwrap_or((spec, ""));
    if model != "intel" {
        return Err(ArgError::BadIommu(model.to_owned()));
    }
    vtd::Config::parse(options).map_err(|e| ArgError::BadIommuOptions(e.to_string()))?;
    Ok(IommuConfig {
        options: options.to_owned(),
    })
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Parses the arguments after the program name (e.g. `std::env::args_os().skip(1)`); an
/// argument that is not UTF-8 is refused.
pub fn parse_args<I, S>(args: I) -> Result<Command, ArgError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args = args
        .into_iter()
        .enumerate()
        .map(|(i, arg)| {
            arg.into()
                .into_string()
                .map_err(|raw| ArgError::NotUtf8(i + 1, raw.to_string_lossy().into_owned()))
        })
        .collect::<Result<Vec<String>, ArgError>>()?;
    let mut args = args.into_iter();
    let command = args.next().ok_or(ArgError::NoCommand)?;
    match command.as_str() {
        "--help" | "-h" | "help" => return Ok(Command::Help),
        "--version" | "-V" => return Ok(Command::Version),
        "run" => {}
        "remote" => return crate::api::remote::parse(args).map(Command::Remote),
        other if other.starts_with('-') => return Err(ArgError::UnknownOption(other.to_owned())),
        other => return Err(ArgError::UnknownCommand(other.to_owned())),
    }

    let mut config = VmConfig::new("");
    let mut kernel = None;
    let mut irqchip = None;
    let mut seen: Vec<&'static str> = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(ArgError::Unexpected(arg));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        const NAMES: [&str; 15] = [
            "kernel",
            "initrd",
            "cmdline",
            "memory",
            "cpus",
            "irqchip",
            "iommu",
            "disk",
            "device",
            "serial",
            "log-level",
            "test-dma-fault",
            "api-socket",
            "log-file",
            "counters",
        ];
        let Some(&name) = NAMES.iter().find(|n| **n == name) else {
            return Err(ArgError::UnknownOption(format!("--{name}")));
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or(ArgError::MissingValue(name))?,
        };
        if name != "disk" && name != "device" {
            if seen.contains(&name) {
                return Err(ArgError::Duplicate(name));
            }
            seen.push(name);
        }
        if value.is_empty() && name != "cmdline" {
            return Err(ArgError::Empty(name));
        }
        match name {
            "kernel" => kernel = Some(PathBuf::from(value)),
            "initrd" => config.initrd = Some(PathBuf::from(value)),
            "cmdline" => config.cmdline = value,
            "memory" => {
                let size = parse_size(&value)?;
                if !(MIN_MEMORY..=MAX_MEMORY).contains(&size) || size % 4096 != 0 {
                    return Err(ArgError::SizeRange(value));
                }
                config.memory = size;
            }
            "cpus" => {
                config.cpus = match value.parse::<u16>() {
                    Ok(n) if (1..=MAX_CPUS).contains(&n) => n,
                    _ => return Err(ArgError::BadCpus(value)),
                }
            }
            "irqchip" => {
                irqchip = Some(match value.as_str() {
                    "kernel" => IrqchipMode::Kernel,
                    "split" => IrqchipMode::Split,
                    _ => return Err(ArgError::BadIrqchip(value)),
                })
            }
            "iommu" => config.iommu = Some(parse_iommu(&value)?),
            "disk" => config.disks.push(parse_disk(&value)?),
            "device" => {
                let device = parse_device(&value, config.devices.len())?;
                if config.devices.iter().any(|d| d.id == device.id) {
                    return Err(ArgError::DuplicateDeviceId(device.id));
                }
                if config.devices.iter().any(|d| d.path == device.path) {
                    return Err(ArgError::DuplicateDevicePath(
                        device.path.display().to_string(),
                    ));
                }
                config.devices.push(device);
            }
            "serial" => {
                config.serial = match value.as_str() {
                    "stdio" => SerialConfig::Stdio,
                    v => match v.strip_prefix("file=") {
                        Some(p) if !p.is_empty() => SerialConfig::File(PathBuf::from(p)),
                        _ => return Err(ArgError::BadSerial(value)),
                    },
                }
            }
            "log-level" => {
                config.log_level =
                    Some(LogLevel::parse(&value).ok_or(ArgError::BadLogLevel(value))?)
            }
            "log-file" => config.log_file = Some(PathBuf::from(value)),
            "counters" => config.counters_file = Some(PathBuf::from(value)),
            "test-dma-fault" => {
                config.test_dma_fault = Some(parse_u64(&value).ok_or(ArgError::BadIova(value))?)
            }
            "api-socket" => {
                // Cloud Hypervisor's spelling `path=FILE`, or a bare path.
                let path = value.strip_prefix("path=").unwrap_or(&value);
                if path.is_empty() {
                    return Err(ArgError::Empty("api-socket"));
                }
                config.api_socket = Some(PathBuf::from(path));
            }
            _ => unreachable!("every name in NAMES is handled"),
        }
    }
    config.kernel = kernel.ok_or(ArgError::NoKernel)?;
    let asks_for_remapping = config
        .iommu
        .as_ref()
        .is_some_and(IommuConfig::asks_for_interrupt_remapping);
    config.irqchip = irqchip.unwrap_or(if asks_for_remapping {
        IrqchipMode::Split
    } else {
        IrqchipMode::Kernel
    });
    let vtd = config
        .iommu
        .as_ref()
        .map(|i| i.resolved(config.irqchip))
        .transpose()?;
    if config.cpus > MAX_XAPIC_CPUS && !vtd.is_some_and(|v| v.extended_interrupt_mode()) {
        return Err(ArgError::CpusNeedEim(config.cpus));
    }
    if config.iommu.is_none()
        && let Some(disk) = config
            .disks
            .iter()
            .find(|d| d.iommu || d.assigned.is_some())
    {
        return Err(ArgError::DiskNeedsIommu(disk.path.display().to_string()));
    }
    if let Some(device) = config.devices.iter().find(|d| d.iommu) {
        let Some(iommu) = &config.iommu else {
            return Err(ArgError::DeviceNeedsIommu(device.id.clone()));
        };
        let vtd = vtd::Config::parse(&iommu.options)
            .map_err(|e| ArgError::BadIommuOptions(e.to_string()))?;
        if !vtd.caching_mode {
            return Err(ArgError::AssignmentNeedsCachingMode);
        }
    }
    if config.test_dma_fault.is_some() && !config.disks.iter().any(|d| d.iommu) {
        return Err(ArgError::FaultNeedsDisk);
    }
    Ok(Command::Run(Box::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<VmConfig, ArgError> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        match parse_args(all)? {
            Command::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_non_utf8_argument_is_refused() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"/k\xff".to_vec());
        let args = [OsString::from("run"), OsString::from("--kernel"), bad];
        let err = parse_args(args).unwrap_err();
        assert_eq!(err, ArgError::NotUtf8(3, "/k\u{fffd}".into()));
        assert_eq!(
            err.to_string(),
            "Argument 3 ('/k\u{fffd}') is not valid UTF-8"
        );
    }

    #[test]
    fn a_directory_is_not_a_kernel() {
        let dir = std::env::temp_dir();
        let err = VmConfig::new(&dir).check_files().unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::IsADirectory);
        assert_eq!(
            err.to_string(),
            format!("Cannot open the kernel {}", dir.display())
        );
        assert_eq!(err.source.to_string(), "is a directory");
    }

    #[test]
    fn api_socket_log_and_counters_files() {
        let c = run(&[
            "--kernel",
            "/k",
            "--api-socket",
            "path=/run/vtd.sock",
            "--log-level",
            "warn,vtd=debug,accel::binding=trace",
            "--log-file=/tmp/vtd.log",
            "--counters",
            "/tmp/counters.json",
        ])
        .unwrap();
        assert_eq!(c.api_socket, Some(PathBuf::from("/run/vtd.sock")));
        assert_eq!(
            c.log_level.as_ref().map(LogLevel::as_str),
            Some("warn,vtd=debug,accel::binding=trace")
        );
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/vtd.log")));
        assert_eq!(c.counters_file, Some(PathBuf::from("/tmp/counters.json")));
        // Cloud Hypervisor also takes a bare path.
        let c = run(&["--kernel", "/k", "--api-socket", "/run/a.sock"]).unwrap();
        assert_eq!(c.api_socket, Some(PathBuf::from("/run/a.sock")));
        assert_eq!(
            run(&["--kernel", "/k", "--api-socket", "path="]),
            Err(ArgError::Empty("api-socket"))
        );
        assert_eq!(run(&["--kernel", "/k"]).unwrap().log_level, None);
    }

    #[test]
    fn full_command_line() {
        let c = run(&[
            "--kernel",
            "/k",
            "--initrd=/i",
            "--cmdline",
            "console=ttyS0 intel_iommu=on,sm_on",
            "--memory",
            "1G",
            "--cpus",
            "2",
            "--iommu",
            "intel,x-scalable-mode=on,x-flts=on,aw-bits=48",
            "--disk",
            "path=/d1,readonly=on,iommu=on",
            "--disk",
            "path=/d2,assigned=sim,indirect_desc=on",
            "--serial",
            "file=/tmp/s",
            "--log-level",
            "debug",
            "--test-dma-fault",
            "0x1000",
        ])
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0 intel_iommu=on,sm_on");
        assert_eq!((c.memory, c.cpus), (1 << 30, 2));
        let iommu = c.iommu.unwrap();
        assert_eq!(iommu.options, "x-scalable-mode=on,x-flts=on,aw-bits=48");
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[0].readonly && c.disks[0].iommu && c.disks[0].assigned.is_none());
        assert_eq!(c.disks[1].assigned, Some(AssignedBackend::Sim));
        assert!(!c.disks[0].indirect_desc && c.disks[1].indirect_desc);
        assert_eq!(c.serial, SerialConfig::File("/tmp/s".into()));
        assert_eq!(c.log_level, LogLevel::parse("debug"));
        assert_eq!(c.test_dma_fault, Some(0x1000));
    }

    #[test]
    fn defaults() {
        let c = run(&["--kernel", "/k"]).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        assert_eq!(c.memory, 512 << 20);
        let iommu = run(&["--kernel", "/k", "--iommu", "intel"]).unwrap().iommu;
        assert_eq!(iommu.unwrap().options, "");
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_args(["--help"]), Ok(Command::Help));
        assert_eq!(
            parse_args(["run", "--kernel", "/k", "--help"]),
            Ok(Command::Help)
        );
        assert_eq!(parse_args(["--version"]), Ok(Command::Version));
        for name in [
            "--kernel",
            "--initrd",
            "--cmdline",
            "--memory",
            "--cpus",
            "--irqchip",
            "--iommu",
            "--disk",
            "--device",
            "--serial",
            "--log-level",
            "--test-dma-fault",
        ] {
            assert!(USAGE.contains(name), "{name}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("4K"), Ok(4096));
        for bad in [
            "",
            "M",
            "12Q",
            "1.5G",
            "-1G",
            "99999999999999999999",
            "100000000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interrupt_remapping_and_the_irqchip() {
        let c = run(&["--kernel", "/k", "--iommu", "intel,intremap=on"]).unwrap();
        assert_eq!(
            c.irqchip,
            IrqchipMode::Split,
            "intremap=on picks the split irqchip"
        );
        let c = run(&[
            "--kernel",
            "/k",
            "--iommu",
            "intel,intremap=on,eim=on",
            "--cpus",
            "300",
        ])
        .unwrap();
        assert_eq!(c.cpus, 300);
        let c = run(&[
            "--kernel",
            "/k",
            "--iommu",
            "intel",
            "--irqchip",
            "split",
            "--cpus",
            "288",
        ])
        .unwrap();
        assert_eq!(
            c.cpus, 288,
            "auto resolves to intremap and eim on with the split irqchip"
        );
        let err = |args: &[&str]| run(args).unwrap_err().to_string();
        assert!(
            err(&[
                "--kernel",
                "/k",
                "--iommu",
                "intel,intremap=on",
                "--irqchip",
                "kernel"
            ])
            .contains("Interrupt Remapping cannot work with --irqchip kernel")
        );
        assert_eq!(
            run(&[
                "--kernel",
                "/k",
                "--iommu",
                "intel,intremap=on,eim=off",
                "--cpus",
                "255"
            ]),
            Err(ArgError::CpusNeedEim(255))
        );
    }

    #[test]
    fn irqchip_choice() {
        let c = run(&["--kernel", "/k"]).unwrap();
        assert_eq!(c.irqchip, IrqchipMode::Kernel, "default without remapping");
        let c = run(&["--kernel", "/k", "--irqchip", "split", "--cpus", "254"]).unwrap();
        assert_eq!((c.irqchip, c.cpus), (IrqchipMode::Split, 254));
        let c = run(&["--kernel", "/k", "--irqchip=kernel"]).unwrap();
        assert_eq!(c.irqchip, IrqchipMode::Kernel);
        assert_eq!(
            ArgError::CpusNeedEim(300).to_string(),
            "--cpus 300 requires Extended Interrupt Mode: more than 254 vCPUs need x2APIC, \
             enable it with --iommu intel,intremap=on,eim=on"
        );
    }

    #[test]
    fn bad_options_are_rejected() {
        let cases: &[(&[&str], ArgError)] = &[
            (&["--kernel"], ArgError::MissingValue("kernel")),
            (&["--memory", "1G"], ArgError::NoKernel),
            (
                &["--kernel", "/k", "--frobnicate", "1"],
                ArgError::UnknownOption("--frobnicate".into()),
            ),
            (
                &["--kernel", "/k", "extra"],
                ArgError::Unexpected("extra".into()),
            ),
            (
                &["--kernel", "/k", "--memory", "12Q"],
                ArgError::BadSize("12Q".into()),
            ),
            (
                &["--kernel", "/k", "--memory", "1M"],
                ArgError::SizeRange("1M".into()),
            ),
            (
                &["--kernel", "/k", "--memory", "16777217"],
                ArgError::SizeRange("16777217".into()),
            ),
            (
                &["--kernel", "/k", "--cpus", "0"],
                ArgError::BadCpus("0".into()),
            ),
            (
                &["--kernel", "/k", "--cpus", "255"],
                ArgError::CpusNeedEim(255),
            ),
            (
                &["--kernel", "/k", "--cpus", "300", "--iommu", "intel"],
                ArgError::CpusNeedEim(300),
            ),
            (
                &["--kernel", "/k", "--cpus", "4097"],
                ArgError::BadCpus("4097".into()),
            ),
            (
                &["--kernel", "/k", "--irqchip", "off"],
                ArgError::BadIrqchip("off".into()),
            ),
            (
                &["--kernel", "/k", "--cpus", "two"],
                ArgError::BadCpus("two".into()),
            ),
            (
                &["--kernel", "/k", "--iommu", "amd"],
                ArgError::BadIommu("amd".into()),
            ),
            (
                &["--kernel", "/k", "--iommu", "intelx,pt=on"],
                ArgError::BadIommu("intelx".into()),
            ),
            (
                &["--kernel", "/k", "--disk", "path=/d,iommu=on"],
                ArgError::DiskNeedsIommu("/d".into()),
            ),
            (
                &["--kernel", "/k", "--disk", "path=/d,assigned=sim"],
                ArgError::DiskNeedsIommu("/d".into()),
            ),
            (
                &[
                    "--kernel",
                    "/k",
                    "--iommu",
                    "intel",
                    "--test-dma-fault",
                    "0x1000",
                ],
                ArgError::FaultNeedsDisk,
            ),
            (
                &["--kernel", "/k", "--serial", "tty"],
                ArgError::BadSerial("tty".into()),
            ),
            (
                &["--kernel", "/k", "--serial", "file="],
                ArgError::BadSerial("file=".into()),
            ),
            (
                &["--kernel", "/k", "--log-level", "vtd=loud"],
                ArgError::BadLogLevel("vtd=loud".into()),
            ),
            (
                &["--kernel", "/k", "--kernel", "/k2"],
                ArgError::Duplicate("kernel"),
            ),
            (&["--kernel", ""], ArgError::Empty("kernel")),
            (
                &["--kernel", "/k", "--test-dma-fault", "zz"],
                ArgError::BadIova("zz".into()),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(run(args).unwrap_err(), *want, "{args:?}");
        }
        let err = run(&["--kernel", "/k", "--iommu", "intel,frobnicate=on"]).unwrap_err();
        assert!(matches!(err, ArgError::BadIommuOptions(_)), "{err}");
        assert_eq!(parse_args(Vec::<String>::new()), Err(ArgError::NoCommand));
        assert_eq!(
            parse_args(["boot"]),
            Err(ArgError::UnknownCommand("boot".into()))
        );
        assert_eq!(
            parse_args(["--kernel"]),
            Err(ArgError::UnknownOption("--kernel".into()))
        );
    }

    #[test]
    fn devices() {
        const P: &str = "/sys/bus/pci/devices/0000:00:04.0";
        const Q: &str = "/sys/bus/pci/devices/0000:00:05.0";
        let c = run(&[
            "--kernel",
            "/k",
            "--iommu",
            "intel,caching-mode=on",
            "--device",
            &format!("path={P},iommu=on,backend=container,id=nvme0"),
            "--device",
            &format!("path={Q}"),
        ])
        .unwrap();
        assert_eq!(
            c.devices,
            vec![
                DeviceConfig {
                    path: P.into(),
                    iommu: true,
                    backend: VfioBackend::Container,
                    id: "nvme0".into(),
                },
                DeviceConfig {
                    path: Q.into(),
                    iommu: false,
                    backend: VfioBackend::Auto,
                    id: "vfio1".into(),
                },
            ]
        );
        let dev = format!("path={P},iommu=on");
        assert_eq!(
            run(&["--kernel", "/k", "--device", &dev]).unwrap_err(),
            ArgError::DeviceNeedsIommu("vfio0".into())
        );
        let err = run(&[
            "--kernel",
            "/k",
            "--iommu",
            "intel,x-scalable-mode=on",
            "--device",
            &dev,
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
        );
        // Without iommu=on the device does not go behind the vIOMMU: no caching mode needed.
        assert!(
            run(&[
                "--kernel",
                "/k",
                "--iommu",
                "intel",
                "--device",
                &format!("path={P}")
            ])
            .is_ok()
        );
        assert_eq!(
            run(&[
                "--kernel",
                "/k",
                "--device",
                &format!("path={P},id=a"),
                "--device",
                &format!("path={P},id=a")
            ])
            .unwrap_err(),
            ArgError::DuplicateDeviceId("a".into())
        );
        assert_eq!(
            run(&[
                "--kernel",
                "/k",
                "--device",
                &format!("path={P}"),
                "--device",
                &format!("path={P}")
            ])
            .unwrap_err()
            .to_string(),
            format!("Device {P} is assigned twice")
        );
        for spec in [
            "iommu=on",
            "path=",
            "path=/p,iommu=maybe",
            "path=/p,backend=vfio",
            "path=/p,id=",
            "path=/p,rombar=0",
            "path=/p,path=/q",
        ] {
            let err = parse_device(spec, 0).unwrap_err();
            assert!(matches!(err, ArgError::BadDevice { .. }), "{spec}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn bad_disks_are_rejected() {
        for spec in [
            "/d",
            "readonly=on",
            "path=",
            "path=/d,readonly=maybe",
            "path=/d,iommu",
            "path=/d,assigned=vfio",
            "path=/d,cache=none",
            "path=/d,indirect_desc=2",
            "path=/d,path=/e",
        ] {
            let err = parse_disk(spec).unwrap_err();
            assert!(matches!(err, ArgError::BadDisk { .. }), "{spec}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn messages_are_single_sentences() {
        let err = run(&["--kernel", "/k", "--memory", "12Q"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("Invalid size '12Q'"), "{err}");
        assert!(!err.contains('\n'));
    }
}
