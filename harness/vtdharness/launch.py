"""Running a batch: directly on this host's /dev/kvm, or all jobs inside one L1 QEMU-TCG machine.

    launch(batch, mode, live)
      e2e/prepare (cached) ─> auto: real devices? nested : probe_direct()? direct : nested
      direct: per job, l2_initrd + the VMM command on this host, markers printed here
      nested: disks as L1 drives, l1_initrd, QEMU TCG (with a QMP socket); e2e/lib/l1-init
              runs the jobs and prints the markers; a console silent too long: l1watch
              says where L1's vCPUs are and stops L1; after a stuck or dead L1 a fresh L1
              runs the job it was in once more (fresh disks; the first attempt kept as
              jobs/NN/first-attempt, the job marked jobs/NN/retried) and the jobs after
              it, at most L1_BOOTS boots; a job L1 fails in twice fails
      ─> console.log (escapes and CRs stripped; also stdout when live)
      ─> console.split_sections ─> jobs/NN/output, jobs/NN/status

A `Runner` holds the one child process running at a time, so an interrupted run stops it
(`Runner.stop`, from the callers' signal handling).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from . import console
from .batch import L1_VFIO_SLOT0, Batch, host_paths, l1_disk_address, render_command
from .common import HarnessError, e2e_cache, l2_dir, log, run_prepare, vmm_binary
from .initramfs import l1_initrd, l2_initrd
from .l1watch import L1_DEBUG_APPEND, Stall, Watchdog, stall_limit

# L1 prints only emergencies (a soft lockup is one): its kernel messages would land in the
# middle of the jobs' lines. L1_DEBUG_APPEND lets the harness read a stuck L1 (l1watch.py).
L1_APPEND = f"console=ttyS0 quiet loglevel=1 panic=-1 {L1_DEBUG_APPEND}"
# EPYC minus the features TCG lacks anyway (naming them keeps QEMU from warning about each).
L1_CPU = "EPYC,fxsr-opt=off,misalignsse=off,osvw=off,topoext=off,nrip-save=off,xsavec=off"
L1_MEMORY_GIB = 2
L1_QEMU = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", L1_CPU, "-m", f"{L1_MEMORY_GIB}G",
           "-smp", "2", "-nographic", "-no-reboot", "-nic", "none"]
# L1's emulated VT-d for real devices (see ../shared/reference/real-vfio-in-l1.md): caching
# mode, so QEMU shadows L1's second-stage tables; interrupt remapping, so VFIO's MSI is isolated.
L1_VIOMMU = "intel-iommu,intremap=on,caching-mode=on"
# Seconds L1 may spend outside the jobs (boot, disk discovery, power-off).
L1_OVERHEAD = 120
# L1 boots per batch at most: the first, and one after each time L1 got stuck in a job.
L1_BOOTS = 3
MODES = ("auto", "direct", "nested")
# Seconds a side script may run after its VMM exited (l1-init's SIDE_GRACE in nested mode).
SIDE_GRACE = 30


def timed_out(rc: int) -> bool:
    """timeout(1)'s statuses for a command it had to stop (TERM, then KILL)."""
    return rc in (124, 137)


class Runner:
    """Runs one command at a time into the batch's console log, and stops it when asked."""

    def __init__(self, batch: Batch, live: bool):
        self.batch = batch
        self.live = live
        self.child: subprocess.Popen | None = None

    def say(self, line: str, *, to_stderr: bool = False) -> None:
        """A harness line in the console, and when live on stdout (or stderr: a complaint)."""
        with open(self.batch.console, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.live:
            stream = sys.stderr if to_stderr else sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def tell(self, line: str) -> None:
        """A harness line the user must see even when not live: in the console and on stderr."""
        self.say(line, to_stderr=True)
        if not self.live:
            print(line, file=sys.stderr, flush=True)

    def run(self, cmd: list[str], watch: Watchdog | None = None) -> int:
        """CMD with no stdin, stdout and stderr together, escapes and CRs stripped, appended to
        the console log (and stdout if live), each chunk reported to WATCH. Its exit status;
        128+N if signal N ended it."""
        self.child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        assert self.child.stdout is not None
        with open(self.batch.console, "a", encoding="utf-8", errors="replace") as log_file:
            pending = b""
            while True:
                chunk = os.read(self.child.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += chunk
                *full, pending = pending.split(b"\n")
                lines = self._emit(log_file, full)
                if watch:
                    watch.progress(lines)
            if pending:
                lines = self._emit(log_file, [pending])
                if watch:
                    watch.progress(lines)
        rc = self.child.wait()
        self.child = None
        return 128 - rc if rc < 0 else rc

    def _emit(self, log_file, raw_lines: list[bytes]) -> list[str]:
        if not raw_lines:
            return []
        lines = [console.clean(r.decode(errors="replace")) for r in raw_lines]
        text = "".join(line + "\n" for line in lines)
        log_file.write(text)
        log_file.flush()
        if self.live:
            sys.stdout.write(text)
            sys.stdout.flush()
        return lines

    def start_side(self, script: Path, cmd: list[str], timeout: int) -> "SideScript":
        """SCRIPT run by sh next to the command CMD (its arguments), bounded by TIMEOUT seconds;
        its lines go to the console as they come."""
        return SideScript(self, script, cmd, timeout)

    def stop(self) -> None:
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


class SideScript:
    """A job's side script on the host (direct mode), as l1-init runs it in L1: started with the
    VMM, given its command; `finish` waits for it and says "VTD-NEST-SIDE-EXIT <status>"."""

    def __init__(self, runner: Runner, script: Path, cmd: list[str], timeout: int):
        self.runner = runner
        self.proc = subprocess.Popen(["timeout", "-k", "5", str(timeout), "sh", str(script)] + cmd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._copy, daemon=True)
        self.reader.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.runner.say(console.clean(raw.decode(errors="replace").rstrip("\n")))

    def finish(self) -> None:
        rc = self.proc.wait()
        self.reader.join()
        self.runner.say(f"VTD-NEST-SIDE-EXIT {128 - rc if rc < 0 else rc}")


def launch_direct(batch: Batch, runner: Runner) -> None:
    if batch.nvfio:
        raise HarnessError("real devices (--vfio) need nested mode: they live in L1")
    vmm = vmm_binary() if batch.uses("vtd-nest") else ""
    batch.create_disks()
    for job in batch.jobs:
        initrd = job.dir / "initrd"
        l2_initrd(job.init, initrd, job.kernel)
        binary = "qemu-system-x86_64" if job.inner == "qemu" else vmm
        cmd = host_paths(render_command(job.inner, binary, str(l2_dir(job.kernel) / "vmlinuz"),
                                        str(initrd), job.callargs), job)
        if batch.wrap:
            cmd = [str(batch.wrap)] + cmd
        runner.say(f"VTD-NEST-JOB {job.name}")
        side = runner.start_side(job.side, cmd, job.timeout + SIDE_GRACE) if job.side else None
        rc = runner.run(["timeout", "-k", "5", str(job.timeout)] + cmd)
        if side:
            side.finish()
        if timed_out(rc):
            runner.say(f"VTD-NEST-TIMEOUT {job.timeout}")
        runner.say(f"VTD-NEST-EXIT {rc}")


def l1_iommu_mode(batch: Batch) -> str:
    """L1's emulated VT-d for this batch: off, legacy or scalable ($VTD_NEST_E2E_L1_IOMMU)."""
    want = os.environ.get("VTD_NEST_E2E_L1_IOMMU") or "auto"
    if want == "auto":
        return "legacy" if batch.nvfio else "off"
    if want == "off":
        if batch.nvfio:
            raise HarnessError("a real device needs L1's IOMMU "
                               "(VTD_NEST_E2E_L1_IOMMU=off was asked for)")
        return "off"
    if want in ("legacy", "scalable"):
        return want
    raise HarnessError(f"VTD_NEST_E2E_L1_IOMMU wants auto, off, legacy or scalable, not {want}")


def l1_machine(batch: Batch, iommu: str) -> tuple[list[str], str]:
    """L1's QEMU command (without kernel and initrd) and kernel command line: the vIOMMU mode,
    the real devices and test disks at their fixed addresses (vfio_bdf, l1_disk_address)."""
    qemu = list(L1_QEMU)
    append = L1_APPEND
    if iommu == "off":
        qemu += ["-M", "q35"]
    elif iommu == "legacy":
        qemu += ["-M", "q35,kernel-irqchip=split", "-device", L1_VIOMMU]
        append += " intel_iommu=on,sm_off"
    else:
        qemu += ["-M", "q35,kernel-irqchip=split", "-device", f"{L1_VIOMMU},x-scalable-mode=on"]
        append += " intel_iommu=on,sm_on"
    for job in batch.jobs:
        for d in job.vfio:
            qemu += ["-drive", f"file={d.file},if=none,id=e2ev{d.index},format=raw,cache=writeback",
                     "-device", f"nvme,drive=e2ev{d.index},serial=e2ev{d.index},"
                     f"addr={L1_VFIO_SLOT0 + d.index:02x}.0"]
    for job in batch.jobs:
        for d in job.disks:
            multi = ",multifunction=on" if d.index % 8 == 0 else ""
            qemu += ["-drive", f"file={d.file},if=none,id=e2ed{d.index},format=raw,cache=writeback",
                     "-device", f"virtio-blk-pci,drive=e2ed{d.index},serial=e2ed{d.index},"
                     f"addr={l1_disk_address(d.index)}{multi}"]
    return qemu, append


def launch_nested(batch: Batch, runner: Runner) -> None:
    """Boots L1 for the jobs; if L1 gets stuck (l1watch) or dies (a panic) in a job, a fresh
    L1 runs that job once more and the jobs after it, up to L1_BOOTS boots.

    A stuck or dead L1 is L1's failure, not the job's: both seen so far were L1's own LAPIC
    with its timer vector in service on an idle vCPU (e2e/README.md). The VMM under test is a
    user process in L1, so one more attempt in a fresh L1 tells the two apart; the retry is
    said on the console and in the job's PASS or FAIL line, and a second stuck L1 fails it."""
    iommu = l1_iommu_mode(batch)
    batch.create_disks()
    vmm = vmm_binary() if batch.uses("vtd-nest") else None
    qemu, append = l1_machine(batch, iommu)
    log(f"L1: vIOMMU {iommu}, {batch.nvfio} real device(s)")
    first = 0
    retried: set[int] = set()
    for boot in range(L1_BOOTS):
        started = boot_l1(batch, runner, qemu, append, vmm, first)
        if started is None:
            return
        if started == 0:
            runner.tell("e2e: L1 got stuck or died before its first job; not booting it again")
            return
        failed_in = first + started - 1
        first = failed_in + 1
        if boot + 1 == L1_BOOTS:
            return
        job = batch.jobs[failed_in]
        if failed_in not in retried:
            retried.add(failed_in)
            first = failed_in
            batch.create_disks([job])
            (job.dir / "retried").write_text(
                f"run again after L1 got stuck or died in its first attempt: "
                f"jobs/{job.dir.name}/first-attempt\n")
            runner.tell(f"e2e: booting L1 again to run {job.name} once more and the "
                        f"{len(batch.jobs) - first - 1} job(s) after it")
        elif first < len(batch.jobs):
            runner.tell(f"e2e: booting L1 again for the {len(batch.jobs) - first} job(s) after "
                        f"{job.name}")
        else:
            return


def boot_l1(batch: Batch, runner: Runner, qemu: list[str], append: str, vmm: str | None,
            first: int) -> int | None:
    """One L1 boot running jobs FIRST onwards. None if L1 finished its jobs or ran out of time;
    if the watchdog stopped it or it died before VTD-NEST-L1-DONE, how many of those jobs had
    started (the last of them is the one L1 got stuck or died in)."""
    jobs = batch.jobs[first:]
    initrd = batch.work / "l1-initrd.cpio"
    l1_initrd(batch, initrd, vmm, first)
    qmp = batch.work / "l1-qmp.sock"
    qmp.unlink(missing_ok=True)
    cmd = qemu + ["-kernel", str(e2e_cache() / "l1" / "vmlinuz"), "-initrd", str(initrd),
                  "-append", append, "-qmp", f"unix:{qmp},server=on,wait=off"]
    total = L1_OVERHEAD + sum(j.timeout for j in jobs)
    limit = stall_limit(max(j.timeout for j in jobs), SIDE_GRACE)
    log(f"booting L1 (QEMU TCG) for {len(jobs)} job(s), limit {total}s, "
        f"{limit}s without console output")

    stall = Stall(batch.work, qmp, L1_QEMU, L1_APPEND, L1_MEMORY_GIB << 30, runner.tell,
                  runner.stop)
    watch = Watchdog(limit, stall.diagnose)
    watch.start()
    try:
        rc = runner.run(["timeout", "-k", "5", str(total)] + cmd, watch)
    finally:
        watch.stop()
    if watch.fired:
        return watch.jobs_started
    if timed_out(rc):
        (batch.work / "l1-timed-out").touch()
        runner.say(f"e2e: L1 timed out after {total}s", to_stderr=True)
        return None
    if rc != 0:
        runner.say(f"e2e: L1 QEMU exited with status {rc}", to_stderr=True)
    if watch.l1_done:
        return None
    during = f"during job {watch.job}" if watch.job else "before its first job"
    runner.tell(f"e2e: L1 ended {during} without finishing its jobs (see the console above)")
    return watch.jobs_started


def probe_direct(batch: Batch) -> bool:
    """A quick boot of the first job's VMM command on this host's /dev/kvm with an init that
    only prints a marker: true only if the guest really reached its init."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    job = batch.jobs[0]
    probe = batch.work / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "init").write_text("echo E2E-PROBE-OK\n")
    l2_initrd(probe / "init", probe / "initrd", job.kernel)
    batch.create_disks()
    binary = "qemu-system-x86_64" if job.inner == "qemu" else vmm_binary()
    cmd = host_paths(render_command(job.inner, binary, str(l2_dir(job.kernel) / "vmlinuz"),
                                    str(probe / "initrd"), job.callargs), job)
    t = os.environ.get("VTD_NEST_E2E_PROBE_TIMEOUT") or "30"
    with open(probe / "log", "wb") as f:
        subprocess.run(["timeout", "-k", "5", t] + cmd, stdin=subprocess.DEVNULL, stdout=f,
                       stderr=subprocess.STDOUT, check=False)
    lines = (probe / "log").read_bytes().split(b"\n")
    return any(line.startswith(b"E2E-PROBE-OK") for line in lines)


def launch(batch: Batch, mode: str, runner: Runner) -> str:
    """Runs every job; returns the mode used (direct or nested)."""
    if not run_prepare():
        raise HarnessError("e2e/prepare failed")
    if not batch.jobs:
        raise HarnessError("no jobs")
    batch.console.write_text("")
    if mode == "auto":
        if batch.nvfio:
            mode = "nested"
            log("mode auto: using nested (real devices live in L1)")
        else:
            mode = "direct" if probe_direct(batch) else "nested"
            works = "works" if mode == "direct" else "does not work here"
            log(f"mode auto: using {mode} (a direct boot on /dev/kvm {works})")
    if mode == "direct":
        launch_direct(batch, runner)
    elif mode == "nested":
        launch_nested(batch, runner)
    else:
        raise HarnessError(f"unknown mode {mode} (auto, direct or nested)")
    split_console(batch)
    return mode


def split_console(batch: Batch) -> None:
    """Cut console.log into each job's output and status (a job run again after L1 failed in
    it: the last attempt; the first goes to jobs/NN/first-attempt)."""
    text = batch.console.read_text(encoding="utf-8", errors="replace")
    final, first_attempts = console.assign_sections([j.name for j in batch.jobs],
                                                    console.split_sections(text))
    for i, job in enumerate(batch.jobs):
        sec = final[i] or console.Section()
        job.output.write_text("\n".join(sec.lines) + "\n", encoding="utf-8")
        (job.dir / "status").write_text(sec.status + "\n")
        if i in first_attempts:
            (job.dir / "first-attempt").write_text(
                "\n".join(first_attempts[i].lines) + "\n", encoding="utf-8")
