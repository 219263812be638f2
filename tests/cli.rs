//! The built `vtd-nest` binary refuses bad command lines with one sentence, never a panic.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;

fn vtd_nest(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vtd-nest"))
        .args(args)
        .output()
        .expect("run vtd-nest");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_non_utf8_argument_exits_2_with_one_sentence() {
    let bad = std::ffi::OsStr::from_bytes(b"/boot/vmlinuz\xff");
    let (code, stderr) = vtd_nest(&["run".as_ref(), "--kernel".as_ref(), bad]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "vtd-nest: Argument 3 ('/boot/vmlinuz\u{fffd}') is not valid UTF-8\n"
    );
}

#[test]
fn a_directory_as_kernel_is_named_a_directory() {
    let dir = std::env::temp_dir();
    let (code, stderr) = vtd_nest(&["run".as_ref(), "--kernel".as_ref(), dir.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "vtd-nest: Cannot open the kernel {}: is a directory\n",
            dir.display()
        )
    );
}

#[test]
fn help_lists_every_iommu_option_and_version_names_the_revision() {
    let out = Command::new(env!("CARGO_BIN_EXE_vtd-nest"))
        .arg("--help")
        .output()
        .expect("run vtd-nest");
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "x-scalable-mode=",
        "x-flts=",
        "x-ssts=",
        "aw-bits=",
        "caching-mode=",
        "fs1gp=",
        "pt=",
        "snoop-control=",
        "x-pasid-mode=",
        "device-iotlb=",
        "intremap=",
        "eim=",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
        // Every option listed is one the vIOMMU's parser knows.
        let name = option.trim_end_matches('=');
        assert!(
            !matches!(
                vtd::Config::parse(&format!("{name}=bogus")),
                Err(vtd::ConfigError::UnknownOption(_))
            ),
            "{name} is not an option of the vIOMMU"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vtd-nest"))
        .arg("--version")
        .output()
        .expect("run vtd-nest");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("vtd-nest {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(
        version.contains("(git ") || version.contains("(unknown revision)"),
        "{version}"
    );
}

#[test]
fn remote_without_a_vmm_is_one_sentence_and_exit_1() {
    let socket = std::env::temp_dir().join("vtd-nest-cli-no-vmm.sock");
    let (code, stderr) = vtd_nest(&[
        "remote".as_ref(),
        "--api-socket".as_ref(),
        socket.as_os_str(),
        "info".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "vtd-nest: Cannot connect to the API socket {} (is a VMM running with \
             --api-socket?): No such file or directory (os error 2)\n",
            socket.display()
        )
    );
}
