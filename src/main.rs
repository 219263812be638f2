//! The `vtd-nest` command line: parse options, build the VM, run it, report how it ended.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use std::sync::Arc;

use vmm::api::{ApiContext, ApiServer, ApiSocket};
use vmm::config::{Command, LogLevel, USAGE, VmConfig};
use vmm::iommu_state::Reporter;
use vmm::{VmBuilder, VmExit};

/// Logs go to `--log-file` or stderr, filtered by `--log-level`, else RUST_LOG, else warn;
/// each line names its target (`vtd`, `accel::binding`, ...), which the directives select.
fn init_logging(config: &VmConfig) -> Result<(), String> {
    let directives = match (&config.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => level.as_str().to_owned(),
        (None, Ok(env)) if !env.is_empty() => LogLevel::parse(&env)
            .ok_or_else(|| format!("Invalid RUST_LOG '{env}': use directives such as vtd=debug"))?
            .as_str()
            .to_owned(),
        _ => LogLevel::DEFAULT.to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::new(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match &config.log_file {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| format!("Cannot create the log file {}: {e}", path.display()))?;
            builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .try_init()
        }
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    Ok(())
}

/// The counters at exit: JSON to `--counters FILE`, else the summary lines on stderr.
fn write_counters(config_file: Option<&std::path::Path>, counters: &vmm::counters::Counters) {
    match config_file {
        Some(path) => {
            let mut json = counters.json().to_string();
            json.push('\n');
            if let Err(e) = std::fs::write(path, json) {
                eprintln!(
                    "vtd-nest: Cannot write the counters to {}: {e}",
                    path.display()
                );
            }
        }
        None => {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(counters.summary().as_bytes());
            let _ = stderr.flush();
        }
    }
}

/// Prints an error and each of its causes once, as one line: "vtd-nest: X: Y: Z". Every error
/// type in the workspace leaves its `#[source]` out of its own message, so nothing repeats.
fn report(error: &dyn std::error::Error) {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("vtd-nest: {message}");
}

/// Binds the API socket named by `--api-socket`, before anything else is built, so a socket
/// in use is the only thing reported.
fn bind_api_socket(config: &VmConfig) -> Result<Option<ApiSocket>, ExitCode> {
    let Some(path) = &config.api_socket else {
        return Ok(None);
    };
    ApiSocket::bind(path).map(Some).map_err(|e| {
        report(&e);
        ExitCode::FAILURE
    })
}

fn run(config: VmConfig) -> ExitCode {
    if let Err(message) = init_logging(&config) {
        eprintln!("vtd-nest: {message}");
        return ExitCode::from(2);
    }
    let socket = match bind_api_socket(&config) {
        Ok(socket) => socket,
        Err(code) => return code,
    };
    let api_config = config.clone();
    let counters_file = config.counters_file.clone();
    // SIGINT, SIGTERM, SIGHUP: stop the VM cleanly and still print the counters.
    if let Err(e) = vmm::stop_signals::install() {
        eprintln!("vtd-nest: Cannot install the SIGINT/SIGTERM/SIGHUP handlers: {e}");
        return ExitCode::FAILURE;
    }
    // The unit's CAP/ECAP line once the whole machine is built, so that a refusal (of a device,
    // say) is the only thing the VMM prints.
    let built = VmBuilder::new(config).and_then(|builder| {
        let cap_line = builder
            .devices()
            .vtd()
            .map(|unit| vmm::iommu::cap_line(unit));
        builder.build().map(|vm| (vm, cap_line))
    });
    let vm = match built {
        Ok((vm, cap_line)) => {
            if let Some(line) = cap_line {
                eprintln!("{line}");
            }
            vm
        }
        Err(e) => {
            report(&e);
            return ExitCode::from(e.exit_status());
        }
    };
    let counters = vm.counters().clone();
    let reporter = vm.devices().vtd().map(|unit| {
        let host = vm.devices().host_bindings();
        Arc::new(Reporter::new(unit.clone(), &api_config, host))
    });
    let state_text = reporter.clone();
    let installed = vmm::state_signal::install(move || match &state_text {
        Some(reporter) => reporter.text(),
        None => "vtd-nest: this VM has no vIOMMU, so it has no vIOMMU state\n".to_owned(),
    });
    if let Err(e) = installed {
        report(&e);
        return ExitCode::FAILURE;
    }
    let api = match socket {
        None => None,
        Some(socket) => {
            let context = ApiContext {
                config: api_config,
                control: vm.control(),
                counters: counters.clone(),
                iommu: reporter,
                hotplug: Some(vm.hotplug().clone()),
            };
            match ApiServer::start(socket, context) {
                Ok(server) => Some(server),
                Err(e) => {
                    report(&e);
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let result = vm.run();
    drop(api);
    write_counters(counters_file.as_deref(), &counters);
    match result {
        Ok(VmExit::PowerOff) => {
            eprintln!("vtd-nest: the guest powered off");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Reboot(how)) => {
            eprintln!("vtd-nest: the guest requested a reboot ({how}); exiting instead");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Halted(cpu)) => {
            eprintln!("vtd-nest: vCPU {cpu} halted");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Shutdown) => {
            eprintln!("vtd-nest: shut down through the API");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Signal(number)) => {
            eprintln!(
                "vtd-nest: terminating on signal {number} ({})",
                vmm::stop_signals::name(number)
            );
            ExitCode::from(128u8.saturating_add(u8::try_from(number).unwrap_or(0)))
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match vmm::parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(config)) => run(*config),
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Remote(remote)) => match vmm::api::remote::run(&remote) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Ok(Command::Version) => {
            println!(
                "vtd-nest {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("VTD_NEST_GIT_REVISION")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::from(2)
        }
    }
}
