//! The split irqchip's PIT on /dev/kvm: a tiny 32-bit guest enables its LAPIC, points IOAPIC
//! pin 2 at vector 0x30, programs PIT counter 0 as a 1 ms rate generator and counts five
//! interrupts in its handler (EOI through the LAPIC) before reporting. The interrupts travel
//! PIT thread ─ irqfd (GSI 2) ─ the user-space IOAPIC's route ─ KVM's LAPIC, with no exit.
//! Skipped, with the reason printed, without /dev/kvm or the split irqchip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_segment};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::bus::BusDevice;
use vmm::counters::Counters;
use vmm::interrupt::{GsiRouting, IrqLine, MsiSignaller};
use vmm::ioapic::{IOAPIC_SIZE, Ioapic, KvmIoapicOutput};
use vmm::pit::{MonotonicClock, Pit, PortB};
use vmm::vcpu::{ExitCounters, IoBuses, Step, Vcpu};
use vmm::vm::{self, Irqchip};

/// The guest (GNU as, `.code32`, loaded at 0x1000). The handler never returns (kvm_pvm cannot
/// emulate a 32-bit IRET): it re-enables interrupts and halts, so each interrupt nests one
/// 12-byte frame deeper.
///
/// ```text
/// 0x00 movl $0x1ff, 0xfee000f0       LAPIC SVR: software-enabled, spurious vector 0xff
/// 0x0a movl $0x14, 0xfec00000        IOAPIC RTE 2 low: vector 0x30, edge, unmasked
/// 0x14 movl $0x30, 0xfec00010
/// 0x1e movl $0x15, 0xfec00000        IOAPIC RTE 2 high: destination APIC 0
/// 0x28 movl $0, 0xfec00010
/// 0x32 out 0x43 <- 0x34              counter 0, LSB then MSB, mode 2
/// 0x36 out 0x40 <- 0xa9; out 0x40 <- 0x04   count 0x04a9 = 1193 ticks (1 ms)
/// 0x3e sti; hlt; jmp hlt
/// 0x80 vector 0x30: incl [0x3000]; movl $0, 0xfee000b0 (EOI)
///      cmpl $5, [0x3000]; jae report; sti; hlt; jmp hlt
///      report: cli; out 0xf0 <- [0x3000]; hlt
/// 0xc0 vector 0x31: out 0xf0 <- 0xee; cli; hlt   (the test's watchdog)
/// ```
const CODE: &[u8] = &[
    0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe, 0xff, 0x01, 0x00, 0x00, // SVR
    0xc7, 0x05, 0x00, 0x00, 0xc0, 0xfe, 0x14, 0x00, 0x00, 0x00, // IOREGSEL = 0x14
    0xc7, 0x05, 0x10, 0x00, 0xc0, 0xfe, 0x30, 0x00, 0x00, 0x00, // IOWIN = 0x30
    0xc7, 0x05, 0x00, 0x00, 0xc0, 0xfe, 0x15, 0x00, 0x00, 0x00, // IOREGSEL = 0x15
    0xc7, 0x05, 0x10, 0x00, 0xc0, 0xfe, 0x00, 0x00, 0x00, 0x00, // IOWIN = 0
    0xb0, 0x34, 0xe6, 0x43, // mode 2
    0xb0, 0xa9, 0xe6, 0x40, 0xb0, 0x04, 0xe6, 0x40, // 1193
    0xfb, 0xf4, 0xeb, 0xfd, // sti; hlt; jmp hlt
];
const TIMER_HANDLER: &[u8] = &[
    0xff, 0x05, 0x00, 0x30, 0x00, 0x00, // incl 0x3000
    0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00, // EOI
    0x83, 0x3d, 0x00, 0x30, 0x00, 0x00, 0x05, // cmpl $5, 0x3000
    0x73, 0x04, // jae report
    0xfb, 0xf4, 0xeb, 0xfd, // sti; hlt; jmp hlt
    0xfa, // report: cli
    0xa0, 0x00, 0x30, 0x00, 0x00, // mov al, [0x3000]
    0xe6, 0xf0, // out 0xf0
    0xf4, 0xeb, 0xfd, // hlt; jmp hlt
];
const WATCHDOG_HANDLER: &[u8] = &[0xb0, 0xee, 0xe6, 0xf0, 0xfa, 0xf4, 0xeb, 0xfd];

const CODE_BASE: u64 = 0x1000;
const GDT_BASE: u64 = 0x500;
const IDT_BASE: u64 = 0x600;
const TIMER_VECTOR: u64 = 0x30;
const WATCHDOG_VECTOR: u32 = 0x31;

#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl BusDevice for Capture {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(data);
    }
}

/// A 32-bit interrupt gate to `offset` in code segment 0x08.
fn interrupt_gate(offset: u32) -> u64 {
    u64::from(offset & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (u64::from(offset >> 16) << 48)
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

#[test]
fn pit_counter_0_interrupts_reach_the_guest_through_the_user_space_ioapic() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED pit_counter_0_interrupts...: /dev/kvm is absent");
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    if !kvm.check_extension(kvm_ioctls::Cap::SplitIrqchip) {
        eprintln!("SKIPPED pit_counter_0_interrupts...: no KVM_CAP_SPLIT_IRQCHIP");
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_BASE + 8 * i as u64))
            .unwrap();
    }
    let gates = [
        (TIMER_VECTOR, CODE_BASE + 0x80),
        (u64::from(WATCHDOG_VECTOR), CODE_BASE + 0xc0),
    ];
    for (vector, handler) in gates {
        mem.write_obj(
            interrupt_gate(handler as u32),
            GuestAddress(IDT_BASE + 8 * vector),
        )
        .unwrap();
    }
    mem.write_slice(CODE, GuestAddress(CODE_BASE)).unwrap();
    mem.write_slice(TIMER_HANDLER, GuestAddress(CODE_BASE + 0x80))
        .unwrap();
    mem.write_slice(WATCHDOG_HANDLER, GuestAddress(CODE_BASE + 0xc0))
        .unwrap();

    let vm = Arc::new(vm::create_vm(&kvm, &mem, Irqchip::Split, 1).expect("create VM"));
    let counters = Counters::new();
    let buses = Arc::new(IoBuses::default());
    let routing = Arc::new(GsiRouting::new(vm.clone()));
    let ioapic = Arc::new(Ioapic::new(Box::new(
        KvmIoapicOutput::new(&vm, routing).expect("the IOAPIC's routes"),
    )));
    buses
        .mmio
        .insert("ioapic", 0xfec0_0000, IOAPIC_SIZE, ioapic)
        .unwrap();
    let pit = Arc::new(Pit::new(Box::<MonotonicClock>::default(), &counters));
    buses.pio.insert("pit", 0x40, 4, pit.clone()).unwrap();
    buses
        .pio
        .insert("port-b", 0x61, 1, Arc::new(PortB(pit.clone())))
        .unwrap();
    let capture = Arc::new(Capture::default());
    buses
        .pio
        .insert("report", 0xf0, 1, capture.clone())
        .unwrap();
    let _irq0 = pit
        .spawn_irq0(Box::new(IrqLine::new(&vm, 2).expect("irqfd on GSI 2")))
        .expect("the IRQ0 thread");

    let exits = Arc::new(ExitCounters::new(&counters));
    let mut vcpu = Vcpu::new(&vm, 0, buses, exits).expect("create vCPU");
    let mut sregs = vcpu.fd().get_sregs().unwrap();
    sregs.cs = flat_segment(0x08, 0xb);
    for segment in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        *segment = flat_segment(0x10, 0x3);
    }
    sregs.gdt.base = GDT_BASE;
    sregs.gdt.limit = 8 * gdt.len() as u16 - 1;
    sregs.idt.base = IDT_BASE;
    sregs.idt.limit = 8 * (u16::from(WATCHDOG_VECTOR as u8) + 1) - 1;
    sregs.cr0 |= 1; // protected mode, no paging
    vcpu.fd().set_sregs(&sregs).unwrap();
    vcpu.fd()
        .set_regs(&kvm_regs {
            rip: CODE_BASE,
            rsp: 0x7000,
            rflags: 0x2,
            ..Default::default()
        })
        .unwrap();

    // Should the interrupts never come, the vCPU sleeps in HLT inside KVM: after 20 s an MSI
    // to the watchdog vector wakes it to report 0xee.
    let signaller = MsiSignaller::new(vm.clone());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = signaller.deliver(0xfee0_0000, WATCHDOG_VECTOR);
    });
    for _ in 0..10_000 {
        if !capture.0.lock().unwrap().is_empty() {
            break;
        }
        if let Step::Stop(event) = vcpu.step() {
            let rip = vcpu.fd().get_regs().unwrap().rip;
            panic!("the guest stopped at {rip:#x}: {event:?}");
        }
    }
    assert_eq!(
        capture.0.lock().unwrap().as_slice(),
        &[5],
        "five timer interrupts counted (0xee: the watchdog fired instead)"
    );
    assert!(counters.register("pit_interrupts").get() >= 5);
}
