//! The API over a real Unix socket with the real client: every endpoint, pause and resume
//! parking real threads at the vCPU gate (the VM's own serve loop, kicked with the vCPU
//! signal), a vIOMMU whose guest tables the state shows, bad requests answered with a 4xx
//! sentence, shutdown, and the socket file gone afterwards. No KVM needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::time::Duration;

use devices::io_gate::IoGate;
use serde_json::Value;
use test_fixtures::Mem;
use test_fixtures::tables::{PageTable, Stage, Tables, fs_entry};
use vmm::api::client;
use vmm::api::remote::{self, Action, Remote, RemoteError};
use vmm::api::{ApiContext, ApiServer, ApiSocket};
use vmm::config::{DiskConfig, IommuConfig, VmConfig};
use vmm::control::{VcpuGate, VmControl};
use vmm::counters::Counters;
use vmm::iommu::bus0_sid;
use vmm::iommu_state::Reporter;
use vmm::legacy::VmEvent;
use vmm::running::{Stop, serve_until_stop};
use vtd_spec::regs::offset;

struct NoIrq;
impl vtd::FaultInterrupt for NoIrq {
    fn deliver(&self, _: u64, _: u32) {}
}

fn remote(socket: &Path, action: Action, json: bool) -> Result<String, RemoteError> {
    remote::run(&Remote {
        socket: socket.to_owned(),
        action,
        json,
    })
}

fn raw(socket: &Path, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
    let a = client::request(socket, method, endpoint, "application/json", body).unwrap();
    let message = if a.ok() { a.text() } else { a.error_message() };
    (a.status, message)
}

fn steps(counts: &[AtomicU64; 2]) -> [u64; 2] {
    [0, 1].map(|i| counts[i].load(Ordering::Relaxed))
}

#[test]
fn every_endpoint_over_the_socket() {
    let dir = std::env::temp_dir().join(format!("vtd-api-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();

    // A unit whose guest put disk0 (00:01.0) behind first-stage tables, domain 5.
    let mem = Mem::new();
    let options = "x-scalable-mode=on,x-flts=on";
    let unit = Arc::new(vtd::Vtd::new(
        vtd::Config::parse(options).unwrap(),
        mem.ram.clone(),
        Arc::new(NoIrq),
    ));
    let tables = Tables::scalable(&mem);
    let sid = bus0_sid(1);
    tables.sm_device(sid, false);
    let pt = PageTable::new(&mem, 4, Stage::First);
    tables.pasid_entry(sid, 0, fs_entry(&pt, 5));
    unit.mmio_write(offset::RTADDR, &tables.rtaddr().into_bits().to_le_bytes());
    unit.mmio_write(offset::GCMD, &(1u32 << 30).to_le_bytes());
    unit.mmio_write(offset::GCMD, &(1u32 << 31).to_le_bytes());

    let mut config = VmConfig::new(dir.join("kernel"));
    config.iommu = Some(IommuConfig {
        options: options.into(),
    });
    config.disks.push(DiskConfig {
        path: disk.clone(),
        readonly: false,
        iommu: true,
        assigned: None,
        indirect_desc: false,
    });
    let counters = Arc::new(Counters::new());
    counters.register("exits_pio").add(3);

    // The VM side: two "vCPU" threads passing the gate, served by the VM's own loop.
    vmm::vcpu::install_kick_handler().unwrap();
    let gate = Arc::new(VcpuGate::new());
    let (control, requests) = VmControl::new(gate.clone());
    let (_events, receiver) = channel::<VmEvent>();
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let io_gate = Arc::new(IoGate::new());
    let vm = {
        let (gate, counts, io_gate) = (gate.clone(), counts.clone(), io_gate.clone());
        std::thread::spawn(move || {
            let threads: Vec<_> = (0..2)
                .map(|i| {
                    let (gate, counts) = (gate.clone(), counts.clone());
                    std::thread::spawn(move || {
                        while gate.pass() {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    })
                })
                .collect();
            let stop = serve_until_stop(&receiver, &requests, &gate, &io_gate, &threads, || None);
            gate.stop();
            for t in threads {
                t.join().unwrap();
            }
            matches!(stop, Stop::Request(_))
        })
    };

    let socket: PathBuf = dir.join("api.sock");
    let server = ApiServer::start(
        ApiSocket::bind(&socket).unwrap(),
        ApiContext {
            config: config.clone(),
            control,
            counters,
            iommu: Some(Arc::new(Reporter::new(unit.clone(), &config, Vec::new()))),
            hotplug: None,
        },
    )
    .unwrap();

    let info: Value = serde_json::from_str(&remote(&socket, Action::Info, false).unwrap()).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["disks"][0]["id"], "disk0");
    assert_eq!(
        info["config"]["iommu"],
        "intel,x-scalable-mode=on,x-flts=on"
    );

    assert_eq!(
        remote(&socket, Action::Counters, false).unwrap(),
        "counter exits_pio 3\n"
    );
    let json: Value =
        serde_json::from_str(&remote(&socket, Action::Counters, true).unwrap()).unwrap();
    assert_eq!(json["exits_pio"], 3);

    let state: Value =
        serde_json::from_str(&remote(&socket, Action::IommuState, true).unwrap()).unwrap();
    assert_eq!(state["registers"]["gsts"]["set"][0], "TES");
    assert_eq!(state["translation"]["mode"], "scalable");
    let device = &state["devices"][0];
    assert_eq!(device["id"], "disk0");
    assert_eq!(device["sid"], "00:01.0");
    assert_eq!(device["context_entry"]["present"], true);
    assert_eq!(device["rid_pasid_entry"]["translation_type"], "first-stage");
    assert_eq!(device["rid_pasid_entry"]["domain_id"], 5);
    let text = remote(&socket, Action::IommuState, false).unwrap();
    assert!(text.contains("translation_type: first-stage"), "{text}");
    assert!(text.contains("mode: scalable"), "{text}");

    // Pause: both threads parked (their counts stand still) and the devices' I/O gate closed;
    // resume: they go on.
    assert!(!io_gate.is_closed());
    assert_eq!(remote(&socket, Action::Pause, false).unwrap(), "");
    assert!(io_gate.is_closed(), "a pause closes the devices' I/O gate");
    let frozen = steps(&counts);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(steps(&counts), frozen, "paused threads ran");
    let info: Value = serde_json::from_str(&remote(&socket, Action::Info, false).unwrap()).unwrap();
    assert_eq!(info["state"], "Paused");
    assert_eq!(
        remote(&socket, Action::Pause, false)
            .unwrap_err()
            .to_string(),
        "The VMM refused the request: The VM is already paused"
    );
    assert_eq!(remote(&socket, Action::Resume, false).unwrap(), "");
    assert!(!io_gate.is_closed(), "a resume opens it");
    while steps(&counts)
        .iter()
        .zip(frozen)
        .any(|(now, then)| *now == then)
    {
        std::thread::yield_now();
    }
    assert_eq!(
        remote(&socket, Action::Resume, false)
            .unwrap_err()
            .to_string(),
        "The VMM refused the request: The VM is not paused"
    );

    // Bad requests: a 4xx and one sentence, the VM untouched.
    assert_eq!(
        raw(&socket, "GET", "vm.pause", None),
        (405, "vm.pause takes PUT".into())
    );
    assert_eq!(
        raw(&socket, "PUT", "vm.info", None),
        (405, "vm.info takes GET".into())
    );
    assert_eq!(
        raw(&socket, "GET", "vm.nothing", None),
        (404, "Unknown endpoint 'vm.nothing'".into())
    );
    let (status, message) = raw(&socket, "PUT", "vm.add-disk", Some("{\"path\": 3"));
    assert_eq!(status, 400);
    assert!(
        message.starts_with("The body is not a JSON object"),
        "{message}"
    );
    let big = format!("{{\"path\": \"{}\"}}", "x".repeat(70_000));
    assert_eq!(raw(&socket, "PUT", "vm.add-disk", Some(&big)).0, 413);
    let err = remote(&socket, Action::AddDisk("path=/d,colour=red".into()), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The VMM refused the request: Invalid --disk 'colour=red,path=/d': unknown key 'colour'"
    );
    let missing = dir.join("missing.img");
    let err = remote(
        &socket,
        Action::AddDisk(format!("path={}", missing.display())),
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("Cannot open the disk image"),
        "{err}"
    );
    // Valid requests the VMM cannot carry out: no PCI hot-plug.
    let err = remote(
        &socket,
        Action::AddDisk(format!("path={},iommu=on", disk.display())),
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("PCI hot-plug is not available for this VM"),
        "{err}"
    );
    assert_eq!(
        remote(&socket, Action::RemoveDevice("disk7".into()), false)
            .unwrap_err()
            .to_string(),
        "The VMM refused the request: This VM has no device 'disk7'"
    );
    let (status, message) = raw(
        &socket,
        "PUT",
        "vm.remove-device",
        Some(r#"{"id":"disk0"}"#),
    );
    assert_eq!(status, 501);
    assert_eq!(
        message,
        "PCI hot-plug is not available for this VM, so device 'disk0' stays in place"
    );
    assert!(!vm.is_finished());

    assert_eq!(remote(&socket, Action::Shutdown, false).unwrap(), "");
    assert!(vm.join().unwrap(), "the VM stopped on the shutdown request");
    drop(server);
    assert!(!socket.exists(), "the socket file is removed");
    assert!(matches!(
        remote(&socket, Action::Info, false),
        Err(RemoteError::Client(client::ClientError::Connect { .. }))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
