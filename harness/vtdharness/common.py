"""Paths, logging and the small helpers every part of the harness shares.

Errors the user must act on are `HarnessError`s: one sentence, printed as "e2e: error: ..." and
exit status 2 by `__main__`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = REPO_ROOT / "e2e"
E2E_LIB = E2E_DIR / "lib"
BENCH_DIR = REPO_ROOT / "bench"
HARNESS_DIR = REPO_ROOT / "harness"


class HarnessError(Exception):
    """A run that cannot go on, with the one sentence that says why."""


def e2e_cache() -> Path:
    return Path(os.environ.get("VTD_NEST_E2E_CACHE", "/var/cache/vtd-nest/e2e"))


def log(msg: str) -> None:
    print(f"e2e: {msg}", file=sys.stderr, flush=True)


def guest_kernel_tags() -> list[str]:
    """The guest kernels besides 6.12, as e2e/lib/common.sh (shared with e2e/prepare) names them."""
    text = (E2E_LIB / "common.sh").read_text()
    m = re.search(r'^GUEST_KERNEL_TAGS="([^"]*)"', text, re.M)
    if not m:
        raise HarnessError("e2e/lib/common.sh does not define GUEST_KERNEL_TAGS")
    return m.group(1).split()


def l2_dir(tag: str | None) -> Path:
    """The cache directory of an L2 kernel (vmlinuz, base.cpio, kver) by its tag."""
    if not tag or tag == "6.12":
        return e2e_cache() / "l2"
    return e2e_cache() / f"l2-{tag}"


def cpio_of_dir(root: Path, out: Path) -> None:
    """An uncompressed newc archive of ROOT's contents, owned by root: e2e/lib/common.sh's
    cpio_of_dir, which e2e/prepare builds the bases with. Archives concatenate: the kernel
    unpacks each in turn, so a base plus extra pieces is a valid initramfs."""
    proc = subprocess.run(["bash", "-c", '. "$1"; cpio_of_dir "$2" "$3"', "cpio_of_dir",
                           str(E2E_LIB / "common.sh"), str(root), str(out)], check=False)
    if proc.returncode != 0:
        raise HarnessError(f"cpio of {root} failed")


def run_prepare() -> bool:
    """e2e/prepare (cached after the first time: milliseconds), its output on stderr."""
    return subprocess.run([str(E2E_DIR / "prepare")], stdout=sys.stderr,
                          check=False).returncode == 0


def vmm_binary() -> str:
    """The vtd-nest binary: $VTD_NEST_BIN, or a static release build of this repository in
    target-static/. One static build serves every place the VMM runs: directly on this host,
    in the probe, and inside L1 (which has no shared libraries)."""
    if os.environ.get("VTD_NEST_BIN"):
        return os.environ["VTD_NEST_BIN"]
    log("building the VMM (static cargo build --release, target-static/)")
    env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static")
    proc = subprocess.run(
        ["cargo", "build", "-q", "--release", "--target", "x86_64-unknown-linux-gnu",
         "--target-dir", "target-static"],
        cwd=REPO_ROOT, env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True,
        errors="replace", check=False)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        first = next((line for line in proc.stderr.splitlines() if "error" in line), "")
        raise HarnessError("cargo build of the static VMM failed" + (f": {first}" if first else ""))
    binary = REPO_ROOT / "target-static/x86_64-unknown-linux-gnu/release/vtd-nest"
    if not os.access(binary, os.X_OK):
        raise HarnessError(f"no VMM binary at {binary}")
    return str(binary)


def make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"{what}: cannot create directory {path}: {e.strerror}") from e


def usage_of(doc: str | None) -> str:
    """A module docstring's usage part: everything up to the first line that is only '---'."""
    return (doc or "").split("\n---\n")[0].strip() + "\n"
