//! Hot-plug on /dev/kvm without booting a guest: a disk behind the vIOMMU is added to a live
//! bus 0, a guest that does not eject keeps it, and a guest (a thread on the register block)
//! that ejects lets it go with nothing of it left; the same for an `assigned=sim` disk, whose
//! accel binding and host IOMMU objects go too. Skipped, with the reason printed, without
//! /dev/kvm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vmm::arch::x86_64::layout::ECAM_START;
use vmm::bus::BusDevice;
use vmm::config::DiskConfig;
use vmm::device_context::DeviceContext;
use vmm::hotplug::{HotplugRegisters, REG_DOWN, REG_EJECT, REG_UP};
use vmm::interrupt::EdgeLine;
use vmm::pci_hotplug::{HotplugError, PciHotplug};
use vmm::vm::{self, Irqchip};

struct Raised(Arc<AtomicU32>);
impl EdgeLine for Raised {
    fn pulse(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn read(registers: &HotplugRegisters, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    registers.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn vendor_device(devices: &DeviceContext, slot: u8) -> u32 {
    let mut id = [0u8; 4];
    assert!(
        devices
            .buses()
            .mmio
            .read(ECAM_START + (u64::from(slot) << 15), &mut id)
    );
    u32::from_le_bytes(id)
}

fn disk_counters(devices: &DeviceContext) -> Vec<String> {
    let json = devices.counters().json();
    let map = json.as_object().unwrap();
    map.keys()
        .filter(|k| k.starts_with("disk0_"))
        .cloned()
        .collect()
}

/// What each test starts from: a 1 MiB disk image in a directory of its own (`tag`), and a
/// VM with 64 MiB of RAM whose device context has a vIOMMU with `options`. `None` (with the
/// reason printed) without /dev/kvm.
fn rig(tag: &str, options: &str) -> Option<(std::path::PathBuf, DeviceContext, Arc<vtd::Vtd>)> {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED {tag}: /dev/kvm is absent");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vmm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("hot.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let memory = vmm::memory::create_guest_memory(64 << 20).unwrap();
    let vm = Arc::new(vm::create_vm(&kvm, &memory, Irqchip::InKernel, 1).expect("VM"));
    let mut devices = DeviceContext::new(vm, memory);
    let unit = vmm::iommu::create_unit(
        options,
        devices.memory(),
        devices.msi_signaller(),
        false,
        false,
    )
    .unwrap();
    devices.set_vtd(unit.clone());
    Some((image, devices, unit))
}

#[test]
fn a_disk_is_added_kept_while_unreleased_and_removed_after_the_eject() {
    let Some((image, devices, unit)) = rig("hotplug", "x-scalable-mode=on,x-flts=on") else {
        return;
    };
    let raised = Arc::new(AtomicU32::new(0));
    let (devices, bus, registers, hotplug) = hotplug_on(devices, raised.clone());

    // Add: slot 1, announced in UP with one event, visible in config space, counted.
    let disk = behind_the_viommu(&image);
    assert_eq!(vendor_device(&devices, 1), u32::MAX, "slot 1 starts empty");
    let (id, slot) = hotplug.add_disk(&disk).expect("add");
    assert_eq!((id.as_str(), slot), ("disk0", 1));
    assert_eq!(raised.load(Ordering::Relaxed), 1);
    assert_eq!(read(&registers, REG_UP), 1 << 1);
    assert_eq!(vendor_device(&devices, 1), 0x1042_1af4);
    assert!(!disk_counters(&devices).is_empty(), "the disk's counters");
    assert_eq!(hotplug.ids(), vec!["disk0".to_owned()]);

    // A guest that does not eject: the device stays, with a sentence for the client.
    let err = hotplug
        .remove("disk0", Duration::from_millis(20))
        .unwrap_err();
    assert!(matches!(err, HotplugError::NotReleased { .. }), "{err}");
    assert!(err.to_string().contains("it stays attached"), "{err}");
    assert_eq!(vendor_device(&devices, 1), 0x1042_1af4);
    assert_eq!(read(&registers, REG_DOWN), 0, "the withdrawn request");
    // A hostile eject of that slot now, and of every slot, is ignored.
    registers.write(REG_EJECT, &u32::MAX.to_le_bytes());
    assert_eq!(registers.ignored_ejects(), 1);
    assert_eq!(vendor_device(&devices, 1), 0x1042_1af4);

    // A guest that ejects: it sees the request in DOWN and writes the slot's bit.
    let guest = {
        let registers = registers.clone();
        std::thread::spawn(move || {
            loop {
                let down = read(&registers, REG_DOWN);
                if down != 0 {
                    registers.write(REG_EJECT, &down.to_le_bytes());
                    return down;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    assert_eq!(hotplug.remove("disk0", Duration::from_secs(60)).unwrap(), 1);
    assert_eq!(guest.join().unwrap(), 1 << 1);

    // Nothing of it is left: the slot, its counters, its id, its cached translations.
    assert_eq!(vendor_device(&devices, 1), u32::MAX);
    assert!(bus.device(1).is_none());
    assert_eq!(disk_counters(&devices), Vec::<String>::new());
    assert!(hotplug.ids().is_empty());
    let caches = unit.snapshot(&[]).caches.stats;
    assert_eq!(
        (
            caches.context_entries,
            caches.pasid_entries,
            caches.iotlb_entries
        ),
        (0, 0, 0)
    );
    assert_eq!(unit.cached_entries_of(vmm::iommu::bus0_sid(1)), 0);
    assert!(matches!(
        hotplug.remove("disk0", Duration::ZERO),
        Err(HotplugError::UnknownId(_))
    ));

    // The slot is free again for the next disk, which gets the next id.
    let (id, slot) = hotplug.add_disk(&disk).expect("add again");
    assert_eq!((id.as_str(), slot), ("disk1", 1));

    std::fs::remove_dir_all(image.parent().unwrap()).unwrap();
}

/// Bus 0 of `devices` with PCI hot-plug through a register block whose event pulses count into
/// `raised`: the devices, the bus, the registers (the guest's side) and the hot-plug handle.
fn hotplug_on(
    devices: DeviceContext,
    raised: Arc<AtomicU32>,
) -> (
    Arc<DeviceContext>,
    Arc<devices::pci::PciBus>,
    Arc<HotplugRegisters>,
    Arc<PciHotplug>,
) {
    let bus = vmm::pci::add_bus(&devices).unwrap();
    let registers = Arc::new(HotplugRegisters::new(Box::new(Raised(raised))));
    let devices = Arc::new(devices);
    let hotplug = PciHotplug::new(
        devices.clone(),
        bus.clone(),
        registers.clone(),
        Vec::new(),
        0,
    );
    (devices, bus, registers, Arc::new(hotplug))
}

/// A disk on `image` behind the vIOMMU.
fn behind_the_viommu(image: &std::path::Path) -> DiskConfig {
    DiskConfig {
        path: image.to_owned(),
        readonly: false,
        iommu: true,
        assigned: None,
        indirect_desc: false,
    }
}

/// A guest thread that ejects whatever the VMM asks for.
fn ejecting_guest(registers: Arc<HotplugRegisters>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        loop {
            let down = read(&registers, REG_DOWN);
            if down != 0 {
                registers.write(REG_EJECT, &down.to_le_bytes());
                return down;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn counter(devices: &DeviceContext, name: &str) -> u64 {
    devices.counters().json()[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn an_assigned_disk_leaves_no_binding_hwpt_or_host_device_behind() {
    let options = "x-scalable-mode=on,x-flts=on,caching-mode=on";
    let Some((image, devices, _unit)) = rig("hotplug-assigned", options) else {
        return;
    };
    let (devices, _, registers, hotplug) = hotplug_on(devices, Arc::default());
    assert!(hotplug.host_bindings().is_empty(), "no passthrough before");

    let disk = DiskConfig {
        path: image.clone(),
        readonly: false,
        iommu: false,
        assigned: Some(vmm::config::AssignedBackend::Sim),
        indirect_desc: false,
    };
    assert_eq!(hotplug.add_disk(&disk).expect("add").1, 1);
    assert_eq!(
        hotplug.host_bindings().len(),
        1,
        "the accel registry for the report"
    );
    // Translation is off: the device is bound to the stage-2 nest parent.
    assert_eq!(counter(&devices, "accel_live_bindings"), 1);
    assert_eq!(counter(&devices, "host_live_nest_parents"), 1);
    assert_eq!(counter(&devices, "host_live_attached_devices"), 1);

    let guest = ejecting_guest(registers);
    hotplug
        .remove("disk0", Duration::from_secs(60))
        .expect("remove");
    assert_eq!(guest.join().unwrap(), 1 << 1);
    for name in [
        "accel_live_bindings",
        "host_live_nest_parents",
        "host_live_nested_hwpts",
        "host_live_attached_devices",
    ] {
        assert_eq!(counter(&devices, name), 0, "{name}");
    }
    assert!(disk_counters(&devices).is_empty());

    // The same requester id can be assigned again.
    assert_eq!(hotplug.add_disk(&disk).expect("add again").1, 1);
    assert_eq!(counter(&devices, "host_live_attached_devices"), 1);
    std::fs::remove_dir_all(image.parent().unwrap()).unwrap();
}

/// Through the API's routes: add-disk answers the id and bdf and the disk joins the vIOMMU
/// state report; remove-device (with a guest that ejects) answers 204 and the disk leaves the
/// report; a second remove is a 404.
#[test]
fn the_api_adds_and_removes_a_disk_and_the_state_report_follows() {
    use vmm::api::routes::{ApiContext, Method, handle};
    use vmm::config::{IommuConfig, VmConfig};
    use vmm::control::{VcpuGate, VmControl};
    use vmm::iommu_state::Reporter;

    let options = "x-scalable-mode=on,x-flts=on";
    let Some((image, devices, unit)) = rig("hotplug-api", options) else {
        return;
    };
    let dir = image.parent().unwrap().to_path_buf();
    let (devices, _, registers, hotplug) = hotplug_on(devices, Arc::default());
    let mut config = VmConfig::new(dir.join("kernel"));
    config.iommu = Some(IommuConfig {
        options: options.into(),
    });
    let reporter = Arc::new(Reporter::new(unit, &config, Vec::new()));
    let (control, _requests) = VmControl::new(Arc::new(VcpuGate::new()));
    let context = ApiContext {
        config,
        control,
        counters: devices.counters().clone(),
        iommu: Some(reporter.clone()),
        hotplug: Some(hotplug),
    };
    let listed = || -> Vec<String> {
        reporter.json()["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect()
    };
    assert!(listed().is_empty());

    let body = serde_json::json!({ "path": image, "iommu": "on" }).to_string();
    let reply = handle(
        &context,
        Method::Put,
        "/api/v1/vm.add-disk",
        false,
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["id"], "disk0");
    assert_eq!(answer["bdf"], "0000:00:01.0");
    let now = listed();
    assert_eq!(now.len(), 1);
    assert!(
        now[0].contains("disk0") && now[0].contains("00:01.0"),
        "{now:?}"
    );

    let guest = ejecting_guest(registers);
    let remove = br#"{"id": "disk0"}"#;
    let reply = handle(
        &context,
        Method::Put,
        "/api/v1/vm.remove-device",
        false,
        remove,
    );
    assert_eq!(reply.status, 204, "{}", reply.body);
    guest.join().unwrap();
    assert!(listed().is_empty(), "the report forgot disk0");
    let reply = handle(
        &context,
        Method::Put,
        "/api/v1/vm.remove-device",
        false,
        remove,
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Over the socket, with the server's own threads: while a remove-device waits for the guest,
/// vm.info is answered, and a second remove of the same device waits its turn and then finds
/// the device gone (404) instead of ejecting a slot twice.
#[test]
fn the_api_answers_while_a_remove_waits_for_the_guest() {
    use vmm::api::remote::{self, Action, Remote};
    use vmm::api::{ApiContext, ApiServer, ApiSocket, client};
    use vmm::config::VmConfig;
    use vmm::control::{VcpuGate, VmControl};

    let Some((image, devices, _unit)) = rig("hotplug-api-threads", "x-scalable-mode=on") else {
        return;
    };
    let dir = image.parent().unwrap().to_path_buf();
    let (devices, _, registers, hotplug) = hotplug_on(devices, Arc::default());
    let disk = behind_the_viommu(&image);
    hotplug.add_disk(&disk).unwrap();
    let (control, _requests) = VmControl::new(Arc::new(VcpuGate::new()));
    let context = ApiContext {
        config: VmConfig::new(dir.join("kernel")),
        control,
        counters: devices.counters().clone(),
        iommu: None,
        hotplug: Some(hotplug.clone()),
    };
    let socket = dir.join("api.sock");
    let server = ApiServer::start(ApiSocket::bind(&socket).unwrap(), context).unwrap();

    // A remove-device of disk0 over the socket, from a client thread: its HTTP status.
    let remove_disk0 = || {
        let socket = socket.clone();
        std::thread::spawn(move || {
            client::request(
                &socket,
                "PUT",
                "vm.remove-device",
                "application/json",
                Some(r#"{"id":"disk0"}"#),
            )
            .map(|answer| answer.status)
        })
    };
    let first = remove_disk0();
    // The guest's view: the down register (cleared by the read) names slot 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut down = 0;
    while down == 0 && std::time::Instant::now() < deadline {
        down = read(&registers, REG_DOWN);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(down, 1 << 1, "the eject of slot 1 is requested");
    let info = remote::run(&Remote {
        socket: socket.clone(),
        action: Action::Info,
        json: true,
    })
    .expect("vm.info while the remove waits");
    assert!(info.contains("\"cpus\""), "{info}");
    assert!(
        !first.is_finished(),
        "the first remove still waits for the guest"
    );
    let second = remove_disk0();
    // Give the second request time to reach a serving thread before the guest ejects (its
    // answer is 404 either way once the first remove is done).
    std::thread::sleep(Duration::from_millis(200));
    registers.write(REG_EJECT, &down.to_le_bytes());
    assert_eq!(first.join().unwrap().unwrap(), 204);
    assert_eq!(second.join().unwrap().unwrap(), 404);
    assert!(hotplug.ids().is_empty());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
