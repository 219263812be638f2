//! `vtd-nest remote --api-socket FILE COMMAND`: the command line of the API client and what
//! each command sends and prints.
//!
//! ```text
//!  parse(args) ─► Remote { socket, action, json } ─► run ─► client::request ─► Answer
//!     2xx ─► the text to print (JSON, or text/plain for counters and iommu-state)
//!     4xx/5xx ─► RemoteError::Refused(the VMM's sentence)        (main exits 1)
//! ```

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::client::{self, ClientError};
use crate::config::{ArgError, key_values};

/// The usage line of `remote`, for errors and `--help`.
pub const COMMANDS: &str = "info, counters [--json], iommu-state [--json], pause, resume, \
                            shutdown, add-disk KEY=VALUE,..., add-device KEY=VALUE,..., \
                            remove-device ID";

/// What to ask the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `vm.info`.
    Info,
    /// `vm.counters`.
    Counters,
    /// `vm.iommu-state`.
    IommuState,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`.
    Shutdown,
    /// `vm.add-disk` with a `--disk` value.
    AddDisk(String),
    /// `vm.add-device` with a `--device` value.
    AddDevice(String),
    /// `vm.remove-device`.
    RemoveDevice(String),
}

/// A parsed `remote` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The VMM's API socket.
    pub socket: PathBuf,
    /// The request.
    pub action: Action,
    /// JSON instead of text (counters, iommu-state).
    pub json: bool,
}

fn bad(why: impl Into<String>) -> ArgError {
    ArgError::BadRemote(why.into())
}

/// Parses the arguments after `remote`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Remote, ArgError> {
    let mut socket = None;
    let mut json = false;
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--api-socket=") {
            socket = Some(value.to_owned());
        } else if arg == "--api-socket" {
            socket = Some(args.next().ok_or(ArgError::MissingValue("api-socket"))?);
        } else if arg == "--json" {
            json = true;
        } else if arg.starts_with("--") {
            return Err(ArgError::UnknownOption(arg));
        } else {
            words.push(arg);
        }
    }
    let socket = socket.ok_or_else(|| bad("'remote' needs --api-socket FILE"))?;
    let socket = socket.strip_prefix("path=").unwrap_or(&socket).to_owned();
    if socket.is_empty() {
        return Err(ArgError::Empty("api-socket"));
    }
    let mut words = words.into_iter();
    let command = words
        .next()
        .ok_or_else(|| bad(format!("'remote' needs a command: {COMMANDS}")))?;
    let mut argument = |what: &str| {
        words
            .next()
            .ok_or_else(|| bad(format!("'{command}' needs {what}")))
    };
    let action = match command.as_str() {
        "info" => Action::Info,
        "counters" => Action::Counters,
        "iommu-state" => Action::IommuState,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "shutdown" => Action::Shutdown,
        "add-disk" => Action::AddDisk(argument("a disk, e.g. path=FILE,iommu=on")?),
        "add-device" => Action::AddDevice(argument("a device, e.g. path=/sys/bus/pci/...")?),
        "remove-device" => Action::RemoveDevice(argument("a device id")?),
        other => {
            return Err(bad(format!(
                "Unknown remote command '{other}'; use {COMMANDS}"
            )));
        }
    };
    if let Some(extra) = words.next() {
        return Err(ArgError::Unexpected(extra));
    }
    if json && !matches!(action, Action::Counters | Action::IommuState) {
        return Err(bad("--json applies to counters and iommu-state only"));
    }
    Ok(Remote {
        socket: PathBuf::from(socket),
        action,
        json,
    })
}

/// A remote command that failed; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The VMM answered with an error.
    #[error("The VMM refused the request: {0}")]
    Refused(String),
    /// A KEY=VALUE list that does not parse.
    #[error("Invalid device description: {0}")]
    BadSpec(String),
}

/// The JSON object a `KEY=VALUE,...` list stands for.
fn spec_body(spec: &str) -> Result<String, RemoteError> {
    let items = key_values(spec).map_err(RemoteError::BadSpec)?;
    let map: Map<String, Value> = items
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    Ok(Value::Object(map).to_string())
}

/// Sends the request; returns what to print (possibly nothing).
pub fn run(remote: &Remote) -> Result<String, RemoteError> {
    let text = if remote.json {
        "application/json"
    } else {
        "text/plain"
    };
    let (method, endpoint, accept, body) = match &remote.action {
        Action::Info => ("GET", "vm.info", "application/json", None),
        Action::Counters => ("GET", "vm.counters", text, None),
        Action::IommuState => ("GET", "vm.iommu-state", text, None),
        Action::Pause => ("PUT", "vm.pause", "application/json", None),
        Action::Resume => ("PUT", "vm.resume", "application/json", None),
        Action::Shutdown => ("PUT", "vm.shutdown", "application/json", None),
        Action::AddDisk(spec) => (
            "PUT",
            "vm.add-disk",
            "application/json",
            Some(spec_body(spec)?),
        ),
        Action::AddDevice(spec) => (
            "PUT",
            "vm.add-device",
            "application/json",
            Some(spec_body(spec)?),
        ),
        Action::RemoveDevice(id) => (
            "PUT",
            "vm.remove-device",
            "application/json",
            Some(serde_json::json!({ "id": id }).to_string()),
        ),
    };
    let answer = client::request(&remote.socket, method, endpoint, accept, body.as_deref())?;
    if !answer.ok() {
        return Err(RemoteError::Refused(answer.error_message()));
    }
    Ok(answer.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn commands_parse_and_mistakes_are_one_sentence() {
        let r = parse(args(&["--api-socket", "/run/a.sock", "counters", "--json"])).unwrap();
        assert_eq!(r.socket, PathBuf::from("/run/a.sock"));
        assert_eq!(r.action, Action::Counters);
        assert!(r.json);
        let r = parse(args(&["--api-socket=path=/s", "remove-device", "disk1"])).unwrap();
        assert_eq!(r.socket, PathBuf::from("/s"));
        assert_eq!(r.action, Action::RemoveDevice("disk1".into()));
        assert_eq!(
            parse(args(&["info"])).unwrap_err().to_string(),
            "'remote' needs --api-socket FILE (see 'vtd-nest --help')"
        );
        assert_eq!(
            parse(args(&["--api-socket", "/s", "add-disk"]))
                .unwrap_err()
                .to_string(),
            "'add-disk' needs a disk, e.g. path=FILE,iommu=on (see 'vtd-nest --help')"
        );
        assert!(parse(args(&["--api-socket", "/s", "reboot"])).is_err());
        assert!(parse(args(&["--api-socket", "/s", "pause", "--json"])).is_err());
        assert_eq!(
            parse(args(&["--api-socket", "/s", "pause", "now"])).unwrap_err(),
            ArgError::Unexpected("now".into())
        );
    }

    #[test]
    fn a_spec_becomes_a_json_object() {
        assert_eq!(
            spec_body("path=/d,iommu=on").unwrap(),
            r#"{"iommu":"on","path":"/d"}"#
        );
        assert!(matches!(spec_body("path"), Err(RemoteError::BadSpec(_))));
    }
}
