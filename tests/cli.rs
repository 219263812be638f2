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
