//! The vIOMMU's state for people: [`vtd::state::UnitSnapshot`] of the unit and of every PCI
//! device behind it, as JSON (the API's `vm.iommu-state`) and as indented text (`remote
//! iommu-state`, and stderr on SIGUSR1), the text rendered from the JSON so both say the same.
//!
//! ```text
//!  Reporter::json ─► Vtd::snapshot(sids of the devices behind the unit) ─► serde_json::Value
//!                 └► per passthrough device: accel::Accel bindings (nest parent, nested HWPT,
//!                    blocked and why) or accel::Shadow state and mapped runs ─► "host"
//!  Reporter::text ─► json ─► text::render (one "key: value" line per field, lists as "- ")
//! ```

use std::sync::Arc;

use serde_json::{Value, json};
use vtd::state::{
    ContextView, DeviceSnapshot, Entry, InterruptRemappingSnapshot, RegisterSnapshot, UnitSnapshot,
};
use vtd_spec::SourceId;

use crate::config::VmConfig;
use crate::iommu::bus0_sid;

/// Where passthrough devices' host state lives.
#[derive(Clone, Debug)]
pub enum HostBindings {
    /// Guest first-stage tables nested on the host IOMMU.
    Nested(Arc<accel::Accel>),
    /// Guest second-stage tables shadowed into an IOAS or container.
    Shadow(Arc<accel::Shadow>),
}

impl HostBindings {
    /// What the host does for the device at `sid`, if this registry has it.
    fn device(&self, sid: SourceId) -> Option<Value> {
        match self {
            HostBindings::Nested(accel) => {
                let (_, view) = accel.bindings().into_iter().find(|(s, _)| *s == sid)?;
                let (path, detail) = match view.target {
                    accel::BindingState::Nested { data, did } => (
                        "nested",
                        json!({ "domain_id": did, "first_stage_table": hex(data.pgtbl_addr) }),
                    ),
                    accel::BindingState::Stage2 { did } => {
                        ("stage-2 only", json!({ "domain_id": did }))
                    }
                    accel::BindingState::Blocked(why) => {
                        ("blocked", json!({ "why": blocked(why) }))
                    }
                };
                Some(json!({
                    "path": path,
                    "detail": detail,
                    "nest_parent_hwpt": view.parent_hwpt.0,
                    "nested_hwpt": view.nested_hwpt.map(|h| h.0),
                }))
            }
            HostBindings::Shadow(shadow) => {
                let state = shadow.state(sid)?;
                let runs = shadow.mappings(sid);
                let (path, detail) = match state {
                    accel::ShadowState::Identity => {
                        ("shadow: all guest RAM at IOVA = GPA", Value::Null)
                    }
                    accel::ShadowState::SecondStage { did } => {
                        ("shadow of second-stage tables", json!({ "domain_id": did }))
                    }
                    accel::ShadowState::Blocked(why) => ("blocked", json!({ "why": blocked(why) })),
                };
                Some(json!({
                    "path": path,
                    "detail": detail,
                    "mapped_runs": runs.len(),
                    "mapped_bytes": runs.iter().map(|r| r.len).sum::<u64>(),
                }))
            }
        }
    }
}

fn blocked(why: accel::BlockReason) -> &'static str {
    match why {
        accel::BlockReason::NoEntry => "the guest's entry for it is not present",
        accel::BlockReason::Unsupported => {
            "its entry asks for a translation the host cannot follow"
        }
        accel::BlockReason::LegacyMode => "legacy-mode translation is not shadowed",
        accel::BlockReason::HostFailure => "a host IOMMU operation failed",
    }
}

/// Reads and renders the state of one unit.
#[derive(Debug)]
pub struct Reporter {
    unit: Arc<vtd::Vtd>,
    devices: std::sync::Mutex<Vec<(String, SourceId)>>,
    host: std::sync::Mutex<Vec<HostBindings>>,
}

fn hex(value: u64) -> Value {
    Value::String(format!("{value:#x}"))
}

fn sid_text(sid: SourceId) -> String {
    format!(
        "{:02x}:{:02x}.{}",
        sid.bus(),
        sid.devfn() >> 3,
        sid.devfn() & 7
    )
}

impl Reporter {
    /// A reporter for `unit` and the devices of `config` behind it (disks with `iommu=on` or
    /// `assigned=sim`, `--device` functions with `iommu=on`), at the slots the builder gives them.
    pub fn new(unit: Arc<vtd::Vtd>, config: &VmConfig, host: Vec<HostBindings>) -> Self {
        let slot = |index: usize| bus0_sid(u8::try_from(index).unwrap_or(u8::MAX));
        let disks = config
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.iommu || d.assigned.is_some())
            .map(|(i, _)| (format!("disk{i}"), slot(i + 1)));
        let first_slot = config.disks.len() + 1;
        let functions = config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.iommu)
            .map(|(i, d)| (d.id.clone(), slot(first_slot + i)));
        Reporter {
            unit,
            devices: std::sync::Mutex::new(disks.chain(functions).collect()),
            host: std::sync::Mutex::new(host),
        }
    }

    fn lock_devices(&self) -> std::sync::MutexGuard<'_, Vec<(String, SourceId)>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports device `id` at `sid` too (a device hot-added behind the unit).
    pub fn add_device(&self, id: &str, sid: SourceId) {
        self.lock_devices().push((id.to_owned(), sid));
    }

    /// Reads the host side of passthrough devices from `host` from now on (a hot-added
    /// `assigned=sim` disk may have created the first registry).
    pub fn set_host(&self, host: Vec<HostBindings>) {
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = host;
    }

    /// Stops reporting device `id` (it was unplugged).
    pub fn remove_device(&self, id: &str) {
        self.lock_devices().retain(|(name, _)| name != id);
    }

    /// The state as JSON.
    pub fn json(&self) -> Value {
        let listed = self.lock_devices().clone();
        let host_bindings = self.host.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sids: Vec<SourceId> = listed.iter().map(|(_, sid)| *sid).collect();
        let snapshot = self.unit.snapshot(&sids);
        let mut value = to_json(&snapshot, &listed);
        if let Some(Value::Array(devices)) = value.get_mut("devices") {
            for (device, (_, sid)) in devices.iter_mut().zip(&listed) {
                let host = host_bindings.iter().find_map(|h| h.device(*sid));
                let Value::Object(fields) = device else {
                    continue;
                };
                fields.insert(
                    "cached_entries".into(),
                    Value::from(self.unit.cached_entries_of(*sid)),
                );
                if let Some(host) = host {
                    fields.insert("host".into(), host);
                }
            }
        }
        value
    }

    /// The state as text.
    pub fn text(&self) -> String {
        crate::api::text::render(&self.json())
    }
}

fn registers(r: &RegisterSnapshot) -> Value {
    let records: Vec<Value> = r
        .fault_records
        .iter()
        .map(|f| {
            json!({
                "index": f.index,
                "sid": sid_text(f.sid),
                "pasid": f.pasid,
                "reason": format!("{:#04x}", f.reason),
                "meaning": f.reason_text,
                "page": hex(f.page),
                "access": if f.write { "write" } else { "read" },
            })
        })
        .collect();
    json!({
        "version": format!("{}.{}", r.version >> 4 & 0xf, r.version & 0xf),
        "cap": hex(r.cap),
        "ecap": hex(r.ecap),
        "gsts": { "value": hex(u64::from(r.gsts)), "set": r.gsts_set },
        "rtaddr": {
            "value": hex(r.rtaddr),
            "root_table": hex(r.root_table),
            "mode": r.table_mode,
        },
        "invalidation_queue": {
            "iqa": hex(r.iqa),
            "base": hex(r.iq_base),
            "entries": r.iq_entries,
            "descriptor_bits": r.iq_descriptor_bits,
            "head": r.iq_head,
            "tail": r.iq_tail,
        },
        "fsts": {
            "value": hex(u64::from(r.fsts)),
            "set": r.fsts_set,
            "fault_record_index": r.fault_record_index,
        },
        "fectl": {
            "value": hex(u64::from(r.fectl)),
            "interrupt_masked": r.fault_interrupt_masked,
            "interrupt_pending": r.fault_interrupt_pending,
        },
        "fault_records": records,
    })
}

fn entry<T>(e: &Entry<T>, f: impl FnOnce(&T) -> Value) -> Value {
    match e {
        Entry::Read(v) => f(v),
        Entry::Unreadable(at) => json!({ "unreadable": hex(*at) }),
        Entry::NotReached => Value::Null,
    }
}

fn context(c: &ContextView) -> Value {
    match c {
        ContextView::Legacy {
            address,
            present,
            fault_processing_disabled,
            translation_type,
            domain_id,
            address_width,
            second_stage_table,
        } => json!({
            "format": "legacy",
            "address": hex(*address),
            "present": present,
            "fault_processing_disabled": fault_processing_disabled,
            "translation_type": translation_type,
            "domain_id": domain_id,
            "address_width": address_width,
            "second_stage_table": hex(*second_stage_table),
        }),
        ContextView::Scalable {
            address,
            present,
            fault_processing_disabled,
            pasid_enabled,
            device_tlb_enabled,
            pasid_directory,
            pasid_directory_entries,
            rid_pasid,
            reserved_set,
        } => json!({
            "format": "scalable",
            "address": hex(*address),
            "present": present,
            "fault_processing_disabled": fault_processing_disabled,
            "pasid_enabled": pasid_enabled,
            "device_tlb_enabled": device_tlb_enabled,
            "pasid_directory": hex(*pasid_directory),
            "pasid_directory_entries": pasid_directory_entries,
            "rid_pasid": rid_pasid,
            "reserved_bits_set": reserved_set,
        }),
    }
}

fn device(name: &str, d: &DeviceSnapshot) -> Value {
    json!({
        "id": name,
        "sid": sid_text(d.sid),
        "root_entry": entry(&d.root, |r| json!({
            "address": hex(r.address),
            "present": r.present,
            "context_table": hex(r.context_table),
        })),
        "context_entry": entry(&d.context, context),
        "rid_pasid_entry": entry(&d.rid_pasid_entry, |p| json!({
            "pasid": p.pasid,
            "address": hex(p.address),
            "present": p.present,
            "fault_processing_disabled": p.fault_processing_disabled,
            "translation_type": p.translation_type,
            "domain_id": p.domain_id,
            "first_stage_table": hex(p.first_stage_table),
            "first_stage_levels": p.first_stage_levels,
            "second_stage_table": hex(p.second_stage_table),
            "second_stage_address_width": p.second_stage_address_width,
            "supervisor_requests": p.supervisor_requests,
            "write_protect": p.write_protect,
            "reserved_bits_set": p.reserved_set,
        })),
    })
}

/// The snapshot as JSON; `devices` names the snapshot's devices, in its order.
pub fn to_json(s: &UnitSnapshot, devices: &[(String, SourceId)]) -> Value {
    let c = &s.caches.stats;
    let per_domain: Vec<Value> = s
        .caches
        .iotlb_per_domain
        .iter()
        .map(|(did, n)| json!({ "domain_id": did, "entries": n }))
        .collect();
    json!({
        "registers": registers(&s.registers),
        "translation": {
            "enabled": s.translation_enabled,
            "root_table": hex(s.latched_root_table),
            "mode": s.latched_table_mode,
        },
        "devices": s
            .devices
            .iter()
            .zip(devices)
            .map(|(d, (name, _))| device(name, d))
            .collect::<Vec<_>>(),
        "caches": {
            "context": { "entries": c.context_entries, "capacity": c.context_capacity },
            "pasid": { "entries": c.pasid_entries, "capacity": c.pasid_capacity },
            "iotlb": {
                "entries": c.iotlb_entries,
                "capacity": c.iotlb_capacity,
                "per_domain": per_domain,
            },
            "first_stage_leaf_tables": {
                "entries": c.leaf_table_entries,
                "capacity": c.leaf_table_capacity,
            },
        },
        "interrupt_remapping": interrupt_remapping(&s.interrupt_remapping),
    })
}

fn interrupt_remapping(ir: &InterruptRemappingSnapshot) -> Value {
    json!({
        "enabled": ir.enabled,
        "compatibility_format_allowed": ir.compatibility_format_allowed,
        "table": hex(ir.table),
        "table_entries": ir.table_entries,
        "extended_interrupt_mode": ir.extended_interrupt_mode,
        "cached_entries": ir.cached_entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AssignedBackend, DiskConfig, IommuConfig};
    use crate::counters::Counters;
    use crate::passthrough::Passthrough;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    struct NoIrq;

    impl vtd::FaultInterrupt for NoIrq {
        fn deliver(&self, _address: u64, _data: u32) {}
    }

    /// An assigned=sim disk before the guest enables translation: its entries are not present
    /// yet, and the host keeps it on the nest parent only (stage 2, no nested HWPT).
    #[test]
    fn an_assigned_disk_shows_its_entries_and_host_binding() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let options = "x-scalable-mode=on,x-flts=on,caching-mode=on";
        let unit = Arc::new(vtd::Vtd::new(
            vtd::Config::parse(options).unwrap(),
            Arc::new(memory.clone()),
            Arc::new(NoIrq),
        ));
        let pt = Passthrough::new(&memory, &unit, &Counters::new());
        let _dma = pt.assign("disk0", bus0_sid(1)).unwrap();
        let mut config = VmConfig::new("/k");
        config.iommu = Some(IommuConfig {
            options: options.into(),
        });
        config.disks.push(DiskConfig {
            path: "/d".into(),
            readonly: false,
            iommu: false,
            assigned: Some(AssignedBackend::Sim),
            indirect_desc: false,
        });
        let reporter = Reporter::new(
            unit,
            &config,
            vec![HostBindings::Nested(pt.accel().clone())],
        );
        let json = reporter.json();
        let disk = &json["devices"][0];
        assert_eq!(disk["id"], "disk0");
        assert_eq!(disk["sid"], "00:01.0");
        assert_eq!(json["translation"]["enabled"], false);
        assert_eq!(disk["host"]["path"], "stage-2 only");
        assert!(disk["host"]["nest_parent_hwpt"].is_u64());
        assert_eq!(disk["host"]["nested_hwpt"], Value::Null);
        let text = reporter.text();
        assert!(text.contains("path: stage-2 only"), "{text}");
        assert!(text.contains("nested_hwpt: -"), "{text}");
    }

    /// Maps nothing, accepts everything (the shadow's host side).
    #[derive(Debug)]
    struct NoHost;

    impl host_iommu::DmaMap for NoHost {
        fn map(&self, _: u64, _: u64, _: u64, _: host_iommu::DmaPerm) -> host_iommu::Result<()> {
            Ok(())
        }
        fn unmap(&self, _: u64, len: u64) -> host_iommu::Result<u64> {
            Ok(len)
        }
    }

    /// A --device function shadowed while translation is off: all guest RAM at IOVA = GPA.
    #[test]
    fn a_shadowed_device_shows_its_state_and_mapped_runs() {
        use crate::config::{DeviceConfig, VfioBackend};
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let options = "x-scalable-mode=on,x-flts=off,caching-mode=on";
        let unit = Arc::new(vtd::Vtd::new(
            vtd::Config::parse(options).unwrap(),
            Arc::new(memory.clone()),
            Arc::new(NoIrq),
        ));
        let shadow = Arc::new(accel::Shadow::new(vec![accel::RamRegion {
            gpa: 0,
            hva: 0x7f00_0000_0000,
            len: 0x20_0000,
            writable: true,
        }]));
        shadow.add_device(&*unit, bus0_sid(1), "nvme", Arc::new(NoHost));
        let mut config = VmConfig::new("/k");
        config.devices.push(DeviceConfig {
            path: "/sys/bus/pci/devices/0000:00:10.0".into(),
            iommu: true,
            backend: VfioBackend::Iommufd,
            id: "nvme".into(),
        });
        let reporter = Reporter::new(unit, &config, vec![HostBindings::Shadow(shadow)]);
        let json = reporter.json();
        let device = &json["devices"][0];
        assert_eq!(device["id"], "nvme");
        assert_eq!(device["sid"], "00:01.0");
        assert_eq!(
            device["host"]["path"],
            "shadow: all guest RAM at IOVA = GPA"
        );
        assert_eq!(device["host"]["mapped_runs"], 1);
        assert_eq!(device["host"]["mapped_bytes"], 0x20_0000);
    }
}
