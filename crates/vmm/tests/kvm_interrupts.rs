//! Interrupt plumbing against /dev/kvm with an in-kernel irqchip: GSI routing with MSI routes,
//! per-device MSI-X vectors over irqfds, ioeventfds, KVM_SIGNAL_MSI. Skipped, with the reason
//! printed, without /dev/kvm.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::bus::BusDevice;
use vmm::interrupt::{GsiRouting, IrqLine, KvmIoEvents, KvmMsiController, Msi, MsiSignaller};
use vmm::ioapic::{Ioapic, KvmIoapicOutput};
use vmm::vm::{self, Irqchip};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vtd_spec::SourceId;

#[test]
fn msi_routes_irqfds_and_ioeventfds() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED msi_routes_irqfds_and_ioeventfds: /dev/kvm is absent");
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vm = Arc::new(vm::create_vm(&kvm, &mem, Irqchip::InKernel, 1).expect("create VM"));
    let _vcpu = vm.create_vcpu(0).expect("vCPU");

    let routing = Arc::new(GsiRouting::new(vm.clone()));
    let line = IrqLine::new(&vm, 4).expect("irqfd on GSI 4");
    line.trigger().expect("pulse IRQ 4");

    let msix = KvmMsiController::new(vm.clone(), routing.clone(), SourceId::new(0, 1, 0));
    let msg = Msi {
        address: 0xfee0_0000,
        data: 0x41,
    };
    msix.configure(0, msg, false).expect("vector 0");
    msix.configure(
        1,
        Msi {
            address: 0xfee0_0000,
            data: 0x42,
        },
        true,
    )
    .expect("vector 1");
    msix.configure(0, msg, false).expect("unchanged vector 0");
    msix.trigger(0);
    msix.trigger(1); // masked: ignored
    msix.trigger(7); // never configured: ignored
    assert_eq!(
        routing.allocate_gsi().unwrap(),
        26,
        "GSIs 24 and 25 went to vectors 0 and 1"
    );

    assert_eq!(
        routing.msi_routes(),
        1,
        "vector 1 is masked: only vector 0 has a route"
    );
    // A device that goes (hot-unplug) drops its vectors: their routes and irqfds go too, and
    // their GSIs (24, 25; 26 was taken above) are handed out again, lowest first.
    drop(msix);
    assert_eq!(routing.msi_routes(), 0);
    assert_eq!(routing.allocate_gsi().unwrap(), 24);
    // Hot-plug cycles far beyond the GSI space (1000 above the IOAPIC's 24) never run out.
    for cycle in 0..3000u32 {
        let device = KvmMsiController::new(vm.clone(), routing.clone(), SourceId::new(0, 2, 0));
        device
            .configure(0, msg, false)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        device
            .configure(1, msg, true)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        device.trigger(0);
    }
    assert_eq!(routing.msi_routes(), 0);

    let doorbell = EventFd::new(EFD_NONBLOCK).unwrap();
    let io = KvmIoEvents::new(vm.clone());
    io.register(0xc000_1000, &doorbell).expect("ioeventfd");
    io.unregister(0xc000_1000, &doorbell)
        .expect("remove ioeventfd");

    MsiSignaller::new(vm)
        .deliver(0xfee0_0000, 0x43)
        .expect("KVM_SIGNAL_MSI");
}

#[test]
fn split_irqchip_routes_ioapic_pins_as_msis() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED split_irqchip_routes_ioapic_pins_as_msis: /dev/kvm is absent");
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    if !kvm.check_extension(kvm_ioctls::Cap::SplitIrqchip) {
        eprintln!("SKIPPED split_irqchip_routes_ioapic_pins_as_msis: no KVM_CAP_SPLIT_IRQCHIP");
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vm = Arc::new(vm::create_vm(&kvm, &mem, Irqchip::Split, 2).expect("create VM"));
    let _vcpus = [
        vm.create_vcpu(0).expect("vCPU 0"),
        vm.create_vcpu(1).expect("vCPU 1"),
    ];
    assert!(
        vm.create_pit2(Default::default()).is_err(),
        "KVM has no PIT without its PIC"
    );
    let routing = Arc::new(GsiRouting::new(vm.clone()));
    let ioapic = Ioapic::new(Box::new(
        KvmIoapicOutput::new(&vm, routing.clone()).expect("irqfds on GSIs 0..24"),
    ));
    // Pin 4 edge to vector 0x24 on APIC 1, pin 9 level to vector 0x39: MSI routes on GSIs 4, 9.
    for (index, value) in [(0x19, 1 << 24), (0x18, 0x24), (0x22, 0x8039)] {
        ioapic.write(0, &[index, 0, 0, 0]);
        ioapic.write(0x10, &u32::to_le_bytes(value));
    }
    let com1 = IrqLine::new(&vm, 4).expect("a device's own irqfd on GSI 4");
    com1.trigger().expect("edge on pin 4");
    ioapic.set_level(9, true);
    ioapic.end_of_interrupt(0x39);
    let msix = KvmMsiController::new(vm.clone(), routing.clone(), SourceId::new(0, 1, 0));
    msix.configure(
        0,
        Msi {
            address: 0xfee0_0000 | (0x1 << 40),
            data: 0x41,
        },
        false,
    )
    .expect("an MSI route with destination bits 31:8 in address_hi");
    routing.refresh_all().expect("routes re-evaluated");
    assert_eq!(
        vm.x2apic_api(),
        kvm.check_extension(kvm_ioctls::Cap::X2ApicApi)
    );
}
