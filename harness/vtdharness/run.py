"""Usage:
  e2e/run [--mode auto|direct|nested] --init GUEST_INIT [--disk NAME=SIZE]... \\
          [--vfio NAME=SIZE]... [--vfio-modules container|iommufd] \\
          [--timeout SECS] [--inner vtd-nest|qemu] [--guest-kernel TAG] [--keep] -- VMM_RUN_ARGS...

  --init     busybox sh script run as the guest's init, after proc, sys, devtmpfs, debugfs,
             tracefs are mounted and virtio_blk is loaded; the guest powers off when it ends
  --disk     a fresh sparse raw image of SIZE (e.g. 64M); "@NAME" in VMM_RUN_ARGS becomes the
             path the VMM sees (a host file directly, /dev/vdX inside L1 when nested)
  --vfio     a real PCI device for the VMM to assign: an emulated NVMe disk of SIZE in L1
             (nested mode only), bound to vfio-pci behind L1's emulated VT-d; "@NAME" becomes
             its /sys/bus/pci/devices/DDDD:BB:DD.F path, and its backing image is hashed on the
             host like a disk ($VTD_NEST_E2E_L1_IOMMU: legacy (default) or scalable)
  --vfio-modules  the VFIO modules L1 loads: container (default; the kernel's vfio and
             vfio_iommu_type1) or iommufd (the out-of-tree iommufd set e2e/prepare builds)
  --mode     direct: the VMM on this host's /dev/kvm; nested: inside an L1 Linux under QEMU TCG
             (e2e/prepare runs first, cached); auto (default, or $VTD_NEST_E2E_MODE): direct if a
             quick probe boot on /dev/kvm reaches the guest's init
  --timeout  seconds the VMM may run (default $VTD_NEST_E2E_TIMEOUT or 300)
  --inner    the VMM: vtd-nest (default; `vtd-nest run ...` from this repository, built here, or
             $VTD_NEST_BIN) or qemu (qemu-system-x86_64; VMM_RUN_ARGS are then QEMU options)
  --guest-kernel  the L2 kernel: 6.12 (default), 5.10 (bullseye), 6.1 (bookworm) or newest (the
             newest Debian cloud kernel); all prepared by e2e/prepare
  --keep     keep the work directory (disks, logs) and print where it is (or VTD_NEST_E2E_KEEP=1)

The runner supplies the VMM's kernel (--kernel / -kernel: the prepared Debian cloud kernel, 6.12
unless --guest-kernel says otherwise), initrd (--initrd / -initrd) and the console part of the
kernel command line (prepended to --cmdline / -append, or added if absent); for QEMU also
-nographic -no-reboot -nic none. Everything else comes from the caller.

Output: the guest console, live; then "VTD-NEST-EXIT <status>" (the VMM's exit status, after
whatever the VMM prints on exit) and one "HOST-DISK <name> <sha256>" per disk, hashed on the
host. Exit status: the VMM's; 124 if it timed out; 125 if it never reported a status.
---
e2e/run: one guest, one job of a batch (batch.py), launched live (launch.py).

    options ─> Batch.add("run", ...) ─> launch(live) ─> HOST-DISK lines ─> exit status
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import cli
from .batch import Batch
from .common import HarnessError, log, usage_of
from .launch import Runner, launch

USAGE = usage_of(__doc__)


def main(argv: list[str]) -> int:
    o = {"mode": os.environ.get("VTD_NEST_E2E_MODE") or "auto", "init": "", "disks": [],
         "vfio": [], "vfio_modules": "container",
         "timeout": os.environ.get("VTD_NEST_E2E_TIMEOUT") or "300", "inner": "vtd-nest",
         "keep": os.environ.get("VTD_NEST_E2E_KEEP") == "1", "kernel": "", "args": []}

    def setter(key):
        return lambda v: o.__setitem__(key, v)

    try:
        cli.parse(argv, {
            "--mode": setter("mode"), "--init": setter("init"),
            "--disk": o["disks"].append, "--vfio": o["vfio"].append,
            "--vfio-modules": setter("vfio_modules"), "--timeout": setter("timeout"),
            "--inner": setter("inner"), "--guest-kernel": setter("kernel"),
        }, {"--keep": lambda: o.__setitem__("keep", True)}, prog="e2e/run", equals=True,
            rest=lambda r: o.__setitem__("args", r))
        if not o["init"]:
            raise cli.Usage("e2e/run: --init is required")
    except cli.Usage as e:
        cli.usage_exit(USAGE, str(e) if e.args and e.args[0] else None)
    if not o["timeout"].isdigit():
        raise HarnessError("--timeout wants whole seconds")
    work = Path(tempfile.mkdtemp(prefix="vtd-nest-e2e.", dir=os.environ.get("TMPDIR") or "/tmp"))
    batch = Batch(work)
    runner = Runner(batch, live=True)
    try:
        batch.add("run", o["inner"], o["init"], int(o["timeout"]), o["disks"], o["args"],
                  vfio=o["vfio"], vfio_modules=o["vfio_modules"], kernel=o["kernel"])
        launch(batch, o["mode"], runner)
        for line in batch.host_disk_lines(0):
            print(line, flush=True)
        status = batch.result(0)
    finally:
        runner.stop()
        if o["keep"]:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if status == "timeout":
        print(f"e2e/run: the VMM did not finish within {o['timeout']}s and was killed",
              file=sys.stderr)
        return 124
    if status in ("missing", "l1-stalled"):
        print("e2e/run: the VMM never reported an exit status (see the console above)",
              file=sys.stderr)
        return 125
    return int(status)
