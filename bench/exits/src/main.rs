//! bench/exits: what one guest MMIO write costs on this machine, by the path that handles it.
//!
//! ```text
//! guest (16-bit, 4 KiB of code):  repeat N: write i to the doorbell; [wait until RAM flag == i]
//!                                   │
//!   exit          KVM_EXIT_MMIO ──> this thread sets the flag ──> KVM_RUN again
//!   kernel        ioeventfd: KVM signals an eventfd and resumes the guest (nobody waits)
//!   doorbell-same ioeventfd + a worker blocked on the eventfd, on the vCPU's CPU, sets the flag
//!   doorbell-other  the same, the worker on the other CPU
//!   poll-other    ioeventfd + a worker spinning on the (non-blocking) eventfd on the other CPU
//! ```
//!
//! `exit` is what the VMM does for an invalidation-queue tail write (the handler's own work is
//! left out: the flag write stands for it). `kernel` is the part of that which stays in the
//! kernel: the guest-to-host switch and KVM's decoding of the write. The `doorbell-*` modes are
//! the asynchronous alternative: KVM keeps the write in the kernel and a VMM thread does the work
//! while the guest waits for it in RAM, as Linux waits for an invalidation wait descriptor's
//! status.
//!
//! Usage: `bench/exits/run` (builds this program and runs it inside the benchmarks' L1, see
//! there), or `cargo run --release` directly on a host with /dev/kvm. Prints
//! `EXITS mode=<mode> us_per_write=<median of the rounds>` and one `EXITS round` line per round.
//! Settings, as arguments `writes=N rounds=N`: writes per mode and round (default 3000) and
//! rounds (default 5). Other arguments are ignored (the e2e runner passes the VMM's).

mod sys;

use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuExit};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use sys::{GuestRam, Vm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM: 64 KiB from address 0; code at `CODE`, the flag word at `FLAG`.
const RAM: usize = 0x10000;
const CODE: u64 = 0x1000;
const FLAG: usize = 0x3000;
/// The doorbell: outside RAM, so a write to it is MMIO.
const DOORBELL: u64 = 0x20000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Exit,
    Kernel,
    DoorbellSame,
    DoorbellOther,
    PollOther,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Exit,
        Mode::Kernel,
        Mode::DoorbellSame,
        Mode::DoorbellOther,
        Mode::PollOther,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Exit => "exit",
            Mode::Kernel => "kernel",
            Mode::DoorbellSame => "doorbell-same",
            Mode::DoorbellOther => "doorbell-other",
            Mode::PollOther => "poll-other",
        }
    }

    /// Whether the guest waits for the flag after each write.
    fn waits(self) -> bool {
        self != Mode::Kernel
    }
}

/// The guest loop, 16-bit real mode (DS base 0, ES base `DOORBELL`).
fn guest_code(writes: u32, wait: bool) -> Vec<u8> {
    let mut c = vec![0x66, 0xB9]; // mov ecx, writes
    c.extend_from_slice(&writes.to_le_bytes());
    c.extend_from_slice(&[0x66, 0x31, 0xDB]); // xor ebx, ebx
    c.extend_from_slice(&[0x66, 0x43]); // next: inc ebx
    c.extend_from_slice(&[0x26, 0x66, 0x89, 0x1E, 0x00, 0x00]); // mov es:[0], ebx
    let flag = (FLAG as u16).to_le_bytes();
    let wait_loop = [
        0x66, 0x3B, 0x1E, flag[0], flag[1], // wait: cmp ebx, [FLAG]
        0x74, 0x04, // je done
        0xF3, 0x90, // pause
        0xEB, 0xF5, // jmp wait
    ];
    if wait {
        c.extend_from_slice(&wait_loop);
    } else {
        c.extend_from_slice(&[0x90; 11]);
    }
    // done: dec ecx; jnz next; hlt
    c.extend_from_slice(&[0x66, 0x49, 0x75, 0xE9, 0xF4]);
    c
}

/// One mode's run: µs per write.
fn measure(kvm: &Kvm, mode: Mode, writes: u32, cpus: (usize, usize)) -> Result<f64, String> {
    fn err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    sys::pin_to(cpus.0);
    let mut ram = GuestRam::new(RAM).map_err(|e| format!("guest memory: {e}"))?;
    ram.write(CODE as usize, &guest_code(writes, mode.waits()));
    let vm = Vm::new(kvm, ram)?;
    let ram = &vm.ram;
    let mut vcpu = vm.fd.create_vcpu(0).map_err(err("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    (sregs.cs.base, sregs.cs.selector) = (0, 0);
    (sregs.ds.base, sregs.ds.selector) = (0, 0);
    (sregs.es.base, sregs.es.selector) = (DOORBELL, (DOORBELL >> 4) as u16);
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
    (regs.rip, regs.rflags) = (CODE, 2);
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut worker = None;
    if mode != Mode::Exit {
        let polling = mode == Mode::PollOther;
        let efd = EventFd::new(if polling { EFD_NONBLOCK } else { 0 })
            .map_err(|e| format!("eventfd: {e}"))?;
        vm.fd
            .register_ioevent(&efd, &IoEventAddress::Mmio(DOORBELL), NoDatamatch)
            .map_err(err("KVM_IOEVENTFD"))?;
        if mode.waits() {
            let cpu = if mode == Mode::DoorbellSame {
                cpus.0
            } else {
                cpus.1
            };
            let (stop, ram) = (stop.clone(), ram.clone());
            let waker = efd.try_clone().map_err(|e| format!("eventfd: {e}"))?;
            let handle = std::thread::spawn(move || {
                sys::pin_to(cpu);
                let mut seen = 0u32;
                while !stop.load(Ordering::Acquire) {
                    match efd.read() {
                        Ok(n) => {
                            seen = seen.wrapping_add(n as u32);
                            ram.word(FLAG).store(seen, Ordering::Release);
                        }
                        Err(_) => std::hint::spin_loop(),
                    }
                }
            });
            worker = Some((handle, waker));
        }
    }

    let start = Instant::now();
    let result = loop {
        match vcpu.run() {
            Ok(VcpuExit::MmioWrite(_, data)) => {
                let value = data.iter().rev().fold(0u32, |v, b| v << 8 | u32::from(*b));
                ram.word(FLAG).store(value, Ordering::Release);
            }
            Ok(VcpuExit::Hlt) => break Ok(start.elapsed()),
            Ok(other) => break Err(format!("unexpected exit {other:?}")),
            Err(e) => break Err(format!("KVM_RUN: {e}")),
        }
    };
    stop.store(true, Ordering::Release);
    if let Some((handle, waker)) = worker {
        let _ = waker.write(1);
        let _ = handle.join();
    }
    result.map(|t| t.as_secs_f64() * 1e6 / f64::from(writes))
}

/// The value of the `NAME=N` argument (N > 0), or `default`.
fn setting(name: &str, default: u32) -> u32 {
    std::env::args()
        .rev()
        .filter_map(|a| a.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .find(|&n| n > 0)
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bench/exits: cannot open /dev/kvm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let writes = setting("writes", 3000);
    let rounds = setting("rounds", 5);
    let cpus = match std::thread::available_parallelism().map(|n| n.get()) {
        Ok(n) if n > 1 => (1, 0),
        _ => (0, 0),
    };
    let mut samples = vec![Vec::new(); Mode::ALL.len()];
    for round in 1..=rounds {
        let mut line = format!("EXITS round={round}");
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            match measure(&kvm, mode, writes, cpus) {
                Ok(us) => {
                    line += &format!(" {}={us:.1}", mode.name());
                    samples[i].push(us);
                }
                Err(e) => {
                    eprintln!("bench/exits: {}: {e}", mode.name());
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("{line}");
    }
    for (mode, mut s) in Mode::ALL.into_iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        println!(
            "EXITS mode={} us_per_write={:.1}",
            mode.name(),
            s[s.len() / 2]
        );
    }
    println!(
        "EXITS writes={writes} rounds={rounds} cpus={}+{}",
        cpus.0, cpus.1
    );
    ExitCode::SUCCESS
}
