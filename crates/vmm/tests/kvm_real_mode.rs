//! A tiny real-mode guest on /dev/kvm: port output, an unhandled port read (all-ones), an MMIO
//! read served by a bus device, then HLT. Skipped, with the reason printed, without /dev/kvm.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::bus::BusDevice;
use vmm::counters::Counters;
use vmm::legacy::VmEvent;
use vmm::vcpu::{ExitCounters, IoBuses, Step, Vcpu};
use vmm::vm::{self, Irqchip};

#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl BusDevice for Capture {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.0.lock().unwrap().extend_from_slice(data);
        }
    }
}

struct Constant(u8);

impl BusDevice for Constant {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(self.0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

const CODE: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'H', // mov al, 'H'
    0xee, // out dx, al
    0xb0, b'i', // mov al, 'i'
    0xee, // out dx, al
    0xe4, 0x99, // in al, 0x99 (nothing there)
    0xee, // out dx, al
    0xb8, 0x00, 0x20, // mov ax, 0x2000
    0x8e, 0xd8, // mov ds, ax
    0xa0, 0x10, 0x00, // mov al, [0x10]  (linear 0x20010, beyond RAM: MMIO)
    0xee, // out dx, al
    0xf4, // hlt
];

#[test]
fn real_mode_guest_does_port_io_mmio_and_halts() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED real_mode_guest_does_port_io_mmio_and_halts: /dev/kvm is absent");
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(CODE, GuestAddress(0x1000)).unwrap();
    let vm = vm::create_vm(&kvm, &mem, Irqchip::None, 1).expect("create VM");

    let buses = Arc::new(IoBuses::default());
    let capture = Arc::new(Capture::default());
    buses
        .pio
        .insert("capture", 0x3f8, 8, capture.clone())
        .unwrap();
    buses
        .mmio
        .insert("constant", 0x20000, 0x1000, Arc::new(Constant(0x5a)))
        .unwrap();
    let counters = Counters::new();
    let exits = Arc::new(ExitCounters::new(&counters));
    let mut vcpu = Vcpu::new(&vm, 0, buses, exits).expect("create vCPU");

    let mut sregs = vcpu.fd().get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.fd().set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.fd().set_regs(&regs).unwrap();

    let mut event = None;
    for _ in 0..100 {
        if let Step::Stop(e) = vcpu.step() {
            event = Some(e);
            break;
        }
    }
    assert_eq!(event, Some(VmEvent::Halted { cpu: 0 }));
    assert_eq!(
        capture.0.lock().unwrap().as_slice(),
        &[b'H', b'i', 0xff, 0x5a]
    );
    let summary = counters.summary();
    assert!(summary.contains("counter exits_pio 5\n"), "{summary}");
    assert!(
        summary.contains("counter exits_pio_unhandled 1\n"),
        "{summary}"
    );
    assert!(summary.contains("counter exits_mmio 1\n"), "{summary}");
}
