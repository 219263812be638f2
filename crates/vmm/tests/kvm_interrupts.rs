//! Interrupt plumbing against /dev/kvm with an in-kernel irqchip: GSI routing with MSI routes,
//! per-device MSI-X vectors over irqfds, ioeventfds, KVM_SIGNAL_MSI. Skipped, with the reason
//! printed, without /dev/kvm.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::interrupt::{GsiRouting, IrqLine, KvmIoEvents, KvmMsiController, Msi, MsiSignaller};
use vmm::vm::{self, Irqchip};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

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

    let msix = KvmMsiController::new(vm.clone(), routing.clone());
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

    assert_eq!(routing.msi_routes(), 2);
    // A device that goes (hot-unplug) drops its vectors: their routes and irqfds go too.
    drop(msix);
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
