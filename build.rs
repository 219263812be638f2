//! Puts the git revision the binary is built from into `VTD_NEST_GIT_REVISION` for
//! `vtd-nest --version`: `git describe --always --dirty`, or "unknown revision" outside a git
//! checkout (a source archive) or without git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    let revision = git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .map(|r| format!("git {r}"))
        .unwrap_or_else(|| "unknown revision".to_owned());
    println!("cargo:rustc-env=VTD_NEST_GIT_REVISION={revision}");
    // Rebuilt when HEAD moves (a commit, a checkout); a worktree has a git directory of its own.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for file in ["HEAD", "logs/HEAD", "index"] {
            let path = std::path::Path::new(&dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
