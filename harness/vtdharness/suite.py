"""Usage: e2e/suite [--mode auto|direct|nested] [--inner vtd-nest|qemu] [--timeout SECS]
                 [--l1-iommu auto|off|legacy|scalable] [--keep] [--live] [SCENARIO...]

  SCENARIO  names from e2e/scenarios/ (default: all of ALL_SCENARIOS): sm-strict sm-lazy
            legacy identity assigned dma-fault hostile refused api hotplug hotplug-assigned
            irqchip-split intremap x2apic-many pit-split, and the kernel axis
            kernel-<5.10|6.1|newest>-<emulated|assigned|intremap> (the other guest kernels; 6.12
            is sm-strict, assigned and intremap); "kernels" stands for the nine of them; and the
            real-device scenarios vfio-legacy-iommufd vfio-sm-iommufd vfio-rebind vfio-noiommu
            vfio-flts-refused vfio-legacy-container vfio-sm-container vfio-no-cm-refused
            vfio-intremap vfio-intx vfio-intx-split vfio-intx-split-noir ("vfio": the twelve);
            hotplug-vfio runs only when named
  --mode    as e2e/run (default $VTD_NEST_E2E_MODE or auto)
  --inner   qemu runs the guest-side checks under QEMU's intel-iommu instead of vtd-nest, to
            test the suite itself; VMM-only checks are skipped and said so, and scenarios
            with no QEMU equivalent are reported as skipped
  --timeout seconds each guest may run (default $VTD_NEST_E2E_JOB_TIMEOUT or 90)
  --l1-iommu L1's emulated VT-d (default $VTD_NEST_E2E_L1_IOMMU or auto: legacy mode when a
            scenario has a real device, none otherwise)
  --keep    keep the work directory (console log, per-scenario output, disks)
  --live    stream the console while the guests run

Prints "PASS <name>" or "FAIL <name>: <why>" per scenario and finally "N passed, N failed";
exits 1 if any failed. Scenario files: e2e/README.md and harness/vtdharness/scenarios.py.
---
e2e/suite's flow: e2e/prepare (cached: seconds); every guest scenario becomes one job of a single
batch, so nested mode boots L1 once and runs the guests one after the other inside it; then each
job's console section (plus HOST-DISK hashes) is checked by the scenario's check function.
Host-only scenarios (refused) run the VMM binary directly.

    scenarios ─ Scenario.load ─> Batch.add (guest scenarios) ─> launch ─> per job: HOST-DISK
    lines appended to its output ─> Scenario.check ─> PASS/FAIL
    host-only scenarios ─> vmm_binary ─> Scenario.host_check ─> PASS/FAIL
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import cli
from .batch import Batch
from .common import E2E_DIR, HarnessError, run_prepare, usage_of, vmm_binary
from .launch import Runner, launch
from .scenarios import Scenario

USAGE = usage_of(__doc__)
KERNEL_SCENARIOS = [f"kernel-{k}-{path}" for k in ("5.10", "6.1", "newest")
                    for path in ("emulated", "assigned", "intremap")]
# Real device assignment: an emulated NVMe in L1 bound to vfio-pci and assigned to L2. Grouped
# by VFIO module set, so L1 switches sets (rmmod, insmod, rebind) once.
VFIO_SCENARIOS = ["vfio-legacy-iommufd", "vfio-sm-iommufd", "vfio-rebind", "vfio-noiommu",
                  "vfio-flts-refused", "vfio-legacy-container", "vfio-sm-container",
                  "vfio-no-cm-refused", "vfio-intremap", "vfio-intx", "vfio-intx-split",
                  "vfio-intx-split-noir"]
ALL_SCENARIOS = (["sm-strict", "sm-lazy", "legacy", "identity", "assigned", "dma-fault",
                  "hostile", "refused", "api", "hotplug", "hotplug-assigned", "irqchip-split",
                  "intremap", "x2apic-many", "pit-split"]
                 + KERNEL_SCENARIOS + VFIO_SCENARIOS)
INNERS = ("vtd-nest", "qemu")


class Tally:
    """The PASS / FAIL / SKIP lines, as they happen, and the closing count."""

    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def pass_(self, name: str, note: str = "") -> None:
        print(f"PASS {name}" + (f" ({note})" if note else ""), flush=True)
        self.passed += 1

    def fail(self, name: str, why: str) -> None:
        print(f"FAIL {name}: {why}", flush=True)
        self.failed += 1

    def skip(self, name: str, why: str) -> None:
        print(f"SKIP {name}: {why}", flush=True)
        self.skipped += 1

    def summary(self) -> str:
        s = f"{self.passed} passed, {self.failed} failed"
        return s + (f", {self.skipped} skipped" if self.skipped else "")


class Suite:
    def __init__(self, work: Path, mode: str, inner: str, timeout: int, live: bool):
        self.work, self.mode, self.inner, self.timeout = work, mode, inner, timeout
        self.batch = Batch(work)
        self.runner = Runner(self.batch, live)
        self.tally = Tally()
        self.queued: list[Scenario] = []

    def queue_jobs(self, names: list[str]) -> None:
        (self.work / "scripts").mkdir(exist_ok=True)
        lib = (E2E_DIR / "guest" / "lib.sh").read_text()
        for name in names:
            sc = Scenario.load(name)
            if sc.host_only:
                continue
            if self.inner == "qemu" and not sc.qemu_args:
                self.tally.skip(name, "no QEMU equivalent")
                continue
            script = self.work / "scripts" / f"{name}.sh"
            script.write_text(lib + (sc.guest_script or "") + "\n")
            side = None
            if sc.side_script is not None:
                side = self.work / "scripts" / f"{name}.side.sh"
                side.write_text(sc.side_script + "\n")
            args = sc.qemu_args if self.inner == "qemu" else sc.args
            self.batch.add(name, self.inner, script, self.timeout, sc.disks, args,
                           vfio=sc.vfio, vfio_modules=sc.vfio_modules, kernel=sc.guest_kernel,
                           side=side)
            self.queued.append(sc)

    def run_jobs(self) -> None:
        """Runs the batch; on an infrastructure failure (e.g. the VMM does not build) every job
        fails with that reason."""
        if not self.queued:
            return
        try:
            launch(self.batch, self.mode, self.runner)
        except HarnessError as e:
            for sc in self.queued:
                self.tally.fail(sc.name, f"run failed: error: {e}")
            return
        for i, sc in enumerate(self.queued):
            out = self.batch.jobs[i].output
            with open(out, "a") as f:
                f.write("".join(line + "\n" for line in self.batch.host_disk_lines(i)))
            why = sc.check(self.batch.result(i), out, self.inner)
            retried = self.batch.retried(i)
            notes = [n for n in (retried, self.inner == "qemu" and sc.qemu_skips
                                 and f"inner qemu; not checked: {sc.qemu_skips}") if n]
            if why is not None:
                self.tally.fail(sc.name, why + (f" ({retried})" if retried else ""))
            else:
                self.tally.pass_(sc.name, "; ".join(notes))

    def run_host_checks(self, names: list[str]) -> None:
        for name in names:
            sc = Scenario.load(name)
            if not sc.host_only:
                continue
            if self.inner == "qemu":
                self.tally.skip(name, "checks the VMM's own refusals")
                continue
            try:
                vmm = vmm_binary()
            except HarnessError as e:
                self.tally.fail(name, f"error: {e}")
                continue
            why = sc.host_check(vmm, self.work, self.inner)
            if why is None:
                self.tally.pass_(name)
            else:
                self.tally.fail(name, why)


def parse_args(argv: list[str]) -> dict:
    o = {"mode": os.environ.get("VTD_NEST_E2E_MODE") or "auto", "inner": "vtd-nest",
         "timeout": os.environ.get("VTD_NEST_E2E_JOB_TIMEOUT") or "90",
         "keep": os.environ.get("VTD_NEST_E2E_KEEP") == "1", "live": False, "names": []}

    def word(w: str) -> None:
        groups = {"kernels": KERNEL_SCENARIOS, "vfio": VFIO_SCENARIOS}
        o["names"] += groups.get(w, [w])

    def l1_iommu(v: str) -> None:
        os.environ["VTD_NEST_E2E_L1_IOMMU"] = v

    try:
        cli.parse(argv, {
            "--mode": lambda v: o.__setitem__("mode", v),
            "--inner": lambda v: o.__setitem__("inner", v),
            "--timeout": lambda v: o.__setitem__("timeout", v),
            "--l1-iommu": l1_iommu,
        }, {"--keep": lambda: o.__setitem__("keep", True),
            "--live": lambda: o.__setitem__("live", True)},
            prog="e2e/suite", positional=word)
    except cli.Usage as e:
        cli.usage_exit(USAGE, str(e) if e.args and e.args[0] else None)
    o["names"] = o["names"] or list(ALL_SCENARIOS)
    if o["inner"] not in INNERS:
        raise HarnessError("--inner wants vtd-nest or qemu")
    if not str(o["timeout"]).isdigit():
        raise HarnessError("--timeout wants whole seconds")
    return o


def main(argv: list[str]) -> int:
    o = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vtd-nest-suite.",
                                 dir=os.environ.get("TMPDIR") or "/tmp"))
    suite = Suite(work, o["mode"], o["inner"], int(o["timeout"]), o["live"])
    keep = o["keep"]
    try:
        if run_prepare():
            suite.queue_jobs(o["names"])
            suite.run_jobs()
            suite.run_host_checks(o["names"])
        else:
            for name in o["names"]:
                suite.tally.fail(name, "e2e/prepare failed (see above)")
        keep = o["keep"] or suite.tally.failed > 0
        # Before the summary, which must stay the last line.
        if keep:
            print(f"e2e: logs kept in {work} (console.log, jobs/*/output)", file=sys.stderr,
                  flush=True)
        print(suite.tally.summary(), flush=True)
    finally:
        suite.runner.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if suite.tally.failed == 0 else 1
