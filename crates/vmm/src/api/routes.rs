//! The endpoints: what each request means and its answer (status, body). Everything here is
//! a pure function of the request and the VM's state, apart from the control requests.

use std::io::Read;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::{self, VmConfig};
use crate::control::{ControlError, Request, VmControl};
use crate::counters::Counters;
use crate::iommu_state::Reporter;
use crate::pci_hotplug::{EJECT_TIMEOUT, HotplugError, PciHotplug};

/// What the endpoints answer from.
#[derive(Clone)]
pub struct ApiContext {
    /// The configuration the VM was started with.
    pub config: VmConfig,
    /// Pause, resume, shutdown.
    pub control: VmControl,
    /// The counters of the exit summary.
    pub counters: Arc<Counters>,
    /// The vIOMMU's state, when there is a vIOMMU.
    pub iommu: Option<Arc<Reporter>>,
    /// Adding and removing devices on bus 0 (`None`: this VM's bus cannot change).
    pub hotplug: Option<Arc<PciHotplug>>,
}

/// An answer: status, media type, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `application/json` or `text/plain`.
    pub content_type: &'static str,
    /// The body (empty for 204).
    pub body: String,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Self {
        let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
        body.push('\n');
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn text(body: String) -> Self {
        Reply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    fn no_content() -> Self {
        Reply {
            status: 204,
            content_type: "application/json",
            body: String::new(),
        }
    }

    /// An error: `{"error": "<one sentence>"}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &json!({ "error": message.into() }))
    }
}

/// The request's method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// Anything else.
    Other,
}

/// Reads the request, answers it and sends the answer (a failed send only loses that answer).
pub fn answer(context: &ApiContext, mut request: tiny_http::Request) {
    let method = match request.method() {
        tiny_http::Method::Get => Method::Get,
        tiny_http::Method::Put => Method::Put,
        _ => Method::Other,
    };
    let text = request.headers().iter().any(|h| {
        h.field.equiv("Accept") && h.value.as_str().to_ascii_lowercase().contains("text/plain")
    });
    let url = request.url().to_owned();
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(super::MAX_BODY + 1)
        .read_to_end(&mut body);
    let reply = match read {
        Err(e) => Reply::error(400, format!("Cannot read the request body: {e}")),
        Ok(_) if body.len() as u64 > super::MAX_BODY => Reply::error(
            413,
            format!("The request body is larger than {} bytes", super::MAX_BODY),
        ),
        Ok(_) => handle(context, method, &url, text, &body),
    };
    tracing::debug!(target: "api", "{method:?} {url}: {}", reply.status);
    let mut response = tiny_http::Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_chunked_threshold(usize::MAX);
    if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", reply.content_type) {
        response.add_header(header);
    }
    let _ = request.respond(response);
}

/// The answer to `method url` with `body`; `text` when the client asked for text/plain.
pub fn handle(context: &ApiContext, method: Method, url: &str, text: bool, body: &[u8]) -> Reply {
    let path = url.split('?').next().unwrap_or(url);
    let Some(endpoint) = path.strip_prefix("/api/v1/") else {
        return Reply::error(
            404,
            format!("No endpoint at {path}; the API is under /api/v1/"),
        );
    };
    let get = matches!(
        endpoint,
        "vm.info" | "vm.counters" | "vm.iommu-state" | "vmm.ping"
    );
    let put = matches!(
        endpoint,
        "vm.pause"
            | "vm.resume"
            | "vm.shutdown"
            | "vm.add-disk"
            | "vm.add-device"
            | "vm.remove-device"
    );
    match (get, put, method) {
        (false, false, _) => {
            return Reply::error(404, format!("Unknown endpoint '{endpoint}'"));
        }
        (true, _, Method::Get) | (_, true, Method::Put) => {}
        (true, _, _) => return Reply::error(405, format!("{endpoint} takes GET")),
        (_, true, _) => return Reply::error(405, format!("{endpoint} takes PUT")),
    }
    match endpoint {
        "vmm.ping" => Reply::json(200, &json!({ "version": env!("CARGO_PKG_VERSION") })),
        "vm.info" => Reply::json(200, &info(context)),
        "vm.counters" if text => Reply::text(context.counters.summary()),
        "vm.counters" => Reply::json(200, &context.counters.json()),
        "vm.iommu-state" => match &context.iommu {
            None => Reply::error(
                404,
                "This VM has no vIOMMU (start it with --iommu intel,...)",
            ),
            Some(reporter) if text => Reply::text(reporter.text()),
            Some(reporter) => Reply::json(200, &reporter.json()),
        },
        "vm.pause" => control(&context.control, Request::Pause),
        "vm.resume" => control(&context.control, Request::Resume),
        "vm.shutdown" => control(&context.control, Request::Shutdown),
        "vm.add-disk" => add_disk(context, body),
        "vm.add-device" => add_device(context, body),
        _ => remove_device(context, body),
    }
}

fn control(control: &VmControl, request: Request) -> Reply {
    match control.send(request) {
        Ok(()) => Reply::no_content(),
        Err(e @ (ControlError::AlreadyPaused | ControlError::NotPaused)) => {
            Reply::error(409, e.to_string())
        }
        Err(e) => Reply::error(503, e.to_string()),
    }
}

/// The ids of the VM's PCI devices now, as counters and `remove-device` name them.
fn device_ids(context: &ApiContext) -> Vec<String> {
    if let Some(hotplug) = &context.hotplug {
        return hotplug.ids();
    }
    let config = &context.config;
    let disks = (0..config.disks.len()).map(|i| format!("disk{i}"));
    disks
        .chain(config.devices.iter().map(|d| d.id.clone()))
        .collect()
}

fn info(context: &ApiContext) -> Value {
    let c = &context.config;
    let disks: Vec<Value> = c
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({
                "id": format!("disk{i}"),
                "path": d.path.display().to_string(),
                "readonly": d.readonly,
                "iommu": d.iommu,
                "assigned": d.assigned.map(|_| "sim"),
                "indirect_desc": d.indirect_desc,
            })
        })
        .collect();
    let devices: Vec<Value> = c
        .devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "path": d.path.display().to_string(),
                "iommu": d.iommu,
                "backend": format!("{:?}", d.backend).to_ascii_lowercase(),
            })
        })
        .collect();
    json!({
        "state": if context.control.paused() { "Paused" } else { "Running" },
        "config": {
            "kernel": c.kernel.display().to_string(),
            "initrd": c.initrd.as_ref().map(|p| p.display().to_string()),
            "cmdline": c.cmdline,
            "memory": c.memory,
            "cpus": c.cpus,
            "iommu": c.iommu.as_ref().map(|i| {
                if i.options.is_empty() { "intel".to_owned() } else { format!("intel,{}", i.options) }
            }),
            "disks": disks,
            "devices": devices,
        },
    })
}

/// A body `{"key": value, ...}` as the `key=value,...` list `--disk` and `--device` take.
fn option_list(body: &[u8]) -> Result<String, Reply> {
    let bad = |why: String| Reply::error(400, why);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The body is not a JSON object: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(bad("The body is not a JSON object".into()));
    };
    let mut items = Vec::new();
    for (key, value) in fields {
        let value = match value {
            Value::String(s) => s,
            Value::Bool(b) => (if b { "on" } else { "off" }).to_owned(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(bad(format!(
                    "'{key}' must be a string, a boolean or a number"
                )));
            }
        };
        if key.contains([',', '=']) || value.contains(',') {
            return Err(bad(format!("'{key}' or its value contains ',' or '='")));
        }
        items.push(format!("{key}={value}"));
    }
    Ok(items.join(","))
}

/// The answer once a request is valid but this VM's bus cannot change.
fn no_hotplug(what: String) -> Reply {
    Reply::error(
        501,
        format!("PCI hot-plug is not available for this VM, so {what}"),
    )
}

fn hotplug_error(e: &HotplugError) -> Reply {
    let status = match e {
        HotplugError::UnknownId(_) => 404,
        HotplugError::NoFreeSlot | HotplugError::NotReleased { .. } => 409,
        HotplugError::Add(_) => 500,
    };
    Reply::error(status, e.to_string())
}

fn add_disk(context: &ApiContext, body: &[u8]) -> Reply {
    let spec = match option_list(body) {
        Ok(spec) => spec,
        Err(reply) => return reply,
    };
    let disk = match config::parse_disk(&spec) {
        Ok(disk) => disk,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    if (disk.iommu || disk.assigned.is_some()) && context.config.iommu.is_none() {
        return Reply::error(
            400,
            config::ArgError::DiskNeedsIommu(disk.path.display().to_string()).to_string(),
        );
    }
    if let Err(e) = config::check_file("disk image", &disk.path, !disk.readonly) {
        return Reply::error(400, format!("{e}: {}", e.source));
    }
    let Some(hotplug) = &context.hotplug else {
        return no_hotplug(format!("the valid disk '{spec}' was not added"));
    };
    match hotplug.add_disk(&disk) {
        Ok((id, slot)) => {
            if let Some(reporter) = &context.iommu
                && (disk.iommu || disk.assigned.is_some())
            {
                reporter.set_host(hotplug.host_bindings());
                reporter.add_device(&id, crate::iommu::bus0_sid(slot));
            }
            Reply::json(
                200,
                &json!({ "id": id, "bdf": format!("0000:00:{slot:02x}.0") }),
            )
        }
        Err(e) => hotplug_error(&e),
    }
}

fn add_device(context: &ApiContext, body: &[u8]) -> Reply {
    let spec = match option_list(body) {
        Ok(spec) => spec,
        Err(reply) => return reply,
    };
    let device = match config::parse_device(&spec, context.config.devices.len()) {
        Ok(device) => device,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    if device_ids(context).contains(&device.id) {
        return Reply::error(
            409,
            config::ArgError::DuplicateDeviceId(device.id).to_string(),
        );
    }
    if device.iommu && context.config.iommu.is_none() {
        return Reply::error(
            400,
            config::ArgError::DeviceNeedsIommu(device.id).to_string(),
        );
    }
    if !device.path.exists() {
        return Reply::error(
            400,
            format!("Device {} does not exist", device.path.display()),
        );
    }
    let Some(hotplug) = &context.hotplug else {
        return no_hotplug(format!("the valid device '{}' was not added", device.id));
    };
    match hotplug.add_vfio(&device) {
        Ok(slot) => {
            if let Some(reporter) = &context.iommu
                && device.iommu
            {
                reporter.set_host(hotplug.host_bindings());
                reporter.add_device(&device.id, crate::iommu::bus0_sid(slot));
            }
            Reply::json(
                200,
                &json!({ "id": device.id, "bdf": format!("0000:00:{slot:02x}.0") }),
            )
        }
        Err(e) => hotplug_error(&e),
    }
}

fn remove_device(context: &ApiContext, body: &[u8]) -> Reply {
    let id = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
    let Some(id) = id else {
        return Reply::error(400, "The body must be {\"id\": \"DEVICE\"}");
    };
    if !device_ids(context).contains(&id) {
        return Reply::error(404, format!("This VM has no device '{id}'"));
    }
    let Some(hotplug) = &context.hotplug else {
        return no_hotplug(format!("device '{id}' stays in place"));
    };
    match hotplug.remove(&id, EJECT_TIMEOUT) {
        Ok(_) => {
            if let Some(reporter) = &context.iommu {
                reporter.remove_device(&id);
            }
            Reply::no_content()
        }
        Err(e) => hotplug_error(&e),
    }
}
