//! PCI wiring on /dev/kvm without booting a guest: a VM with the vIOMMU and two disks (one
//! behind it), probed through the 0xcf8/0xcfc ports and ECAM as firmware would. Skipped, with
//! the reason printed, without /dev/kvm.

use vmm::VmBuilder;
use vmm::arch::x86_64::layout::{DRHD_START, ECAM_START};
use vmm::config::{AssignedBackend, DiskConfig, IommuConfig, VmConfig};

fn config_address(device: u8, register: u8) -> [u8; 4] {
    (0x8000_0000u32 | (u32::from(device) << 11) | u32::from(register)).to_le_bytes()
}

#[test]
fn disks_appear_on_bus_0() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED disks_appear_on_bus_0: /dev/kvm is absent");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-pci-wiring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (kernel, d0, d1) = (dir.join("kernel"), dir.join("d0.img"), dir.join("d1.img"));
    std::fs::write(&kernel, b"not booted").unwrap();
    for d in [&d0, &d1] {
        std::fs::write(d, vec![0u8; 1 << 20]).unwrap();
    }
    let mut config = VmConfig::new(&kernel);
    config.memory = 64 << 20;
    config.iommu = Some(IommuConfig {
        options: "x-scalable-mode=on,x-flts=on".into(),
    });
    let disk = |path: &std::path::Path, iommu| DiskConfig {
        path: path.to_owned(),
        readonly: false,
        iommu,
        assigned: None,
        indirect_desc: false,
    };
    config.disks = vec![disk(&d0, false), disk(&d1, true)];

    let builder = VmBuilder::new(config).expect("VM");
    let devices = builder.devices();
    let bus = vmm::pci::add_bus(devices).expect("PCI bus");
    vmm::pci::add_disks(devices, &bus, &builder.config().disks, None).expect("disks");
    let buses = devices.buses();

    // Host bridge at 00:00.0, virtio-blk (1af4:1042) at 00:01.0 and 00:02.0, nothing at 00:03.0.
    let mut id = [0u8; 4];
    for (device, want) in [
        (0u8, None),
        (1, Some(0x1042_1af4u32)),
        (2, Some(0x1042_1af4)),
        (3, Some(u32::MAX)),
    ] {
        assert!(buses.pio.write(0xcf8, &config_address(device, 0)));
        assert!(buses.pio.read(0xcfc, &mut id));
        let got = u32::from_le_bytes(id);
        match want {
            Some(want) => assert_eq!(got, want, "device {device}"),
            None => assert_eq!(got & 0xffff, 0x8086, "host bridge vendor"),
        }
    }
    // The same through ECAM.
    assert!(buses.mmio.read(ECAM_START + (2 << 15), &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);
    // The vIOMMU's register page answers with its version register (VER_REG 1.0 = 0x10).
    let mut ver = [0u8; 4];
    assert!(buses.mmio.read(DRHD_START, &mut ver));
    assert_ne!(u32::from_le_bytes(ver), 0);

    std::fs::remove_dir_all(&dir).unwrap();
}

/// The exit summary's names, in order, for the vIOMMU, a disk behind it, a plain disk and an
/// assigned (software host IOMMU) disk: the e2e checks and bench/compare's report read these.
#[test]
fn summary_names_of_the_viommu_and_three_kinds_of_disk() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED summary_names_of_the_viommu_and_three_kinds_of_disk: no /dev/kvm");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-summary-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, b"not booted").unwrap();
    let mut config = VmConfig::new(&kernel);
    config.memory = 64 << 20;
    config.iommu = Some(IommuConfig {
        options: "x-scalable-mode=on,x-flts=on,caching-mode=on".into(),
    });
    for (index, (iommu, assigned)) in [
        (true, None),
        (false, None),
        (false, Some(AssignedBackend::Sim)),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(format!("d{index}.img"));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        config.disks.push(DiskConfig {
            path,
            readonly: false,
            iommu,
            assigned,
            indirect_desc: false,
        });
    }

    let builder = VmBuilder::new(config).expect("VM");
    let devices = builder.devices();
    let bus = vmm::pci::add_bus(devices).expect("PCI bus");
    vmm::pci::add_disks(devices, &bus, &builder.config().disks, None).expect("disks");
    let summary = devices.counters().summary();

    let vtd = "translations iotlb_hits iotlb_misses walks context_cache_hits \
        context_cache_misses pasid_cache_hits pasid_cache_misses leaf_table_hits \
        leaf_table_misses iotlb_prefetches faults faults_recorded fault_events qi_submissions \
        qi_context_cache qi_iotlb qi_device_tlb qi_iec qi_wait qi_pasid_iotlb qi_pasid_cache \
        qi_pasid_device_tlb qi_page_group_response qi_errors register_invalidations \
        interrupts_remapped interrupts_blocked interrupt_faults iec_global iec_selective";
    let accel = "nested_binds stage2_attaches blocks syncs replays forwarded_invalidations \
        forwarded_entries host_failures";
    let disk = "requests read_bytes write_bytes errors notifications interrupts ring_errors \
        busy_us";
    let mut want: Vec<String> = vtd.split_whitespace().map(str::to_owned).collect();
    want.extend(accel.split_whitespace().map(|n| format!("accel_{n}")));
    want.extend(
        "accel_live_bindings host_live_nest_parents host_live_nested_hwpts \
         host_live_attached_devices"
            .split_whitespace()
            .map(str::to_owned),
    );
    for index in 0..3 {
        want.extend(disk.split_whitespace().map(|n| format!("disk{index}_{n}")));
    }
    let names: Vec<&str> = summary
        .lines()
        .map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
            ["counter", name, value] if value.parse::<u64>().is_ok() => name,
            _ => panic!("not a `counter <name> <value>` line: {line}"),
        })
        .collect();
    assert_eq!(names, want);
    // The assigned disk is attached to the stage-2 nest parent as it is added.
    assert!(summary.contains("counter accel_stage2_attaches 1\n"));

    std::fs::remove_dir_all(&dir).unwrap();
}
