"""A batch of VMM jobs, each booting one L2 guest: what the jobs are, their disks and real
devices, and the command each one runs.

    Batch.add(...) ─> jobs/NN/ (name, inner, init, timeout, kernel, disks, vfio, vfio-modules,
                                 callargs: the caller's arguments, "@NAME" already a placeholder)
    launch.launch(batch, mode) ─> console.log ─> jobs/NN/{output,status}
    Batch.result(i), Batch.host_disk_lines(i)

"@NAME" in a job's arguments names one of its disks or real devices: it becomes the placeholder
@@E2EDISK<index>@@ or @@E2EVFIO<index>@@, which the launch resolves (a host file in direct mode;
the /dev/vdX with serial e2ed<index>, or /sys/bus/pci/devices/<address>, inside L1).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .common import HarnessError, guest_kernel_tags
from .console import host_disk_line

INNERS = ("vtd-nest", "qemu")
VFIO_MODULE_SETS = ("container", "iommufd")
# The console part of every L2 kernel command line: quiet, because every byte on the emulated
# UART is a VM exit, and a panic ends the run instead of hanging until the timeout.
L2_CONSOLE = "console=ttyS0 quiet panic=-1"
# Real devices sit at fixed slots of L1's bus 0 (so their address is known before boot):
# 0000:00:10.0 for index 0, and so on up to 0000:00:1e.0 (00:1f is q35's ICH9).
L1_VFIO_SLOT0 = 16
L1_VFIO_MAX = 15
# Test disks in L1: virtio-blk functions packed eight to a slot in slots 3..15 (below the real
# devices), so a batch is not bounded by L1's 32 slots.
L1_DISK_SLOT0 = 3
L1_DISK_MAX = (L1_VFIO_SLOT0 - L1_DISK_SLOT0) * 8
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_PLACEHOLDER = re.compile(r"@([A-Za-z0-9_]+)")


@dataclass
class Disk:
    """A fresh sparse image: a virtio-blk disk (in L1, or the file itself in direct mode) or
    the backing image of a real device (an emulated NVMe in L1)."""

    name: str
    index: int  # among the batch's disks (or real devices)
    file: Path
    size: str  # as truncate(1) takes it: 16M


@dataclass
class Job:
    name: str
    inner: str  # vtd-nest | qemu
    dir: Path
    timeout: int
    kernel: str  # the L2 kernel's tag, "" for 6.12
    disks: list[Disk] = field(default_factory=list)
    vfio: list[Disk] = field(default_factory=list)
    vfio_modules: str | None = None  # the VFIO module set L1 loads first, if any real device
    callargs: list[str] = field(default_factory=list)

    @property
    def init(self) -> Path:
        return self.dir / "init"

    @property
    def side(self) -> Path | None:
        """The job's side script (run next to the VMM, given its command), if it has one."""
        path = self.dir / "side"
        return path if path.is_file() else None

    @property
    def output(self) -> Path:
        return self.dir / "output"


def vfio_bdf(index: int) -> str:
    """The PCI address of real device INDEX in L1."""
    return f"0000:00:{L1_VFIO_SLOT0 + index:02x}.0"


def l1_disk_address(index: int) -> str:
    """Disk INDEX's slot.function in L1 (function 0 of each slot is multifunction)."""
    slot, function = divmod(index, 8)
    return f"{L1_DISK_SLOT0 + slot:02x}.{function}"


def substitute_placeholders(arg: str, tokens: dict[str, str]) -> str:
    """"@NAME" -> its token for the names listed, other "@..." left alone."""
    return _PLACEHOLDER.sub(lambda m: tokens.get(m.group(1), m.group(0)), arg)


def parse_disk_spec(spec: str, what: str, example: str) -> tuple[str, str]:
    name, eq, size = spec.partition("=")
    if not eq or not size or not _NAME.match(name):
        raise HarnessError(f"bad {what} '{spec}' (want NAME=SIZE, e.g. {example})")
    return name, size


def render_command(inner: str, vmm: str, kernel: str, initrd: str,
                   callargs: list[str]) -> list[str]:
    """The full VMM command: the runner supplies kernel, initrd and the console part of the
    kernel command line (prepended to --cmdline / -append, or added if absent)."""
    if inner == "qemu":
        flag = "-append"
        cmd = [vmm, "-nographic", "-no-reboot", "-nic", "none", "-kernel", kernel,
               "-initrd", initrd]
    else:
        flag = "--cmdline"
        cmd = [vmm, "run", "--kernel", kernel, "--initrd", initrd]
    seen = pending = False
    for a in callargs:
        if pending:
            cmd.append(f"{L2_CONSOLE} {a}")
            pending = False
        elif a == flag:
            cmd.append(a)
            pending = seen = True
        elif a.startswith(flag + "="):
            cmd.append(f"{flag}={L2_CONSOLE} {a[len(flag) + 1:]}")
            seen = True
        else:
            cmd.append(a)
    if pending:
        raise HarnessError(f"{flag} needs a value")
    if not seen:
        cmd += [flag, L2_CONSOLE]
    return cmd


def host_paths(cmd: list[str], job: Job) -> list[str]:
    """Direct mode: disk placeholders become the host files themselves."""
    out = []
    for a in cmd:
        for d in job.disks:
            a = a.replace(f"@@E2EDISK{d.index}@@", str(d.file))
        out.append(a)
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Batch:
    """The jobs of one run, in WORK/jobs/NN, their disks in WORK/disks.

    pin: CPUs every nested job's VMM runs on (`taskset -c` in L1; bench/compare).
    wrap: an executable put in front of every job's command, copied into L1 when nested: it gets
    the VMM command as its arguments (bench/profile: perf)."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self.jobs: list[Job] = []
        self.ndisks = 0
        self.nvfio = 0
        self.pin: str | None = None
        self.wrap: Path | None = None
        (self.work / "jobs").mkdir(parents=True, exist_ok=True)
        (self.work / "disks").mkdir(parents=True, exist_ok=True)

    @property
    def console(self) -> Path:
        return self.work / "console.log"

    def add(self, name: str, inner: str, init: Path | str, timeout: int, disks: list[str],
            args: list[str], *, vfio: list[str] = (), vfio_modules: str = "container",
            kernel: str | None = None, side: Path | None = None) -> Job:
        """One job: DISKS and VFIO are NAME=SIZE specs, ARGS the caller's VMM arguments,
        KERNEL the L2 kernel's tag (6.12 or empty: the default), SIDE a sh script run next to
        the VMM while the guest runs, given the VMM command as its arguments."""
        init = Path(init)
        if not init.is_file():
            raise HarnessError(f"guest init script {init} does not exist")
        if vfio_modules not in VFIO_MODULE_SETS:
            raise HarnessError(f"unknown VFIO module set {vfio_modules} (container or iommufd)")
        if inner not in INNERS:
            raise HarnessError(f"unknown inner VMM {inner}")
        kernel = "" if kernel in (None, "6.12") else kernel
        if kernel and kernel not in guest_kernel_tags():
            raise HarnessError(f"unknown guest kernel {kernel} "
                               f"(6.12 or one of: {' '.join(guest_kernel_tags())})")
        d = self.work / "jobs" / f"{len(self.jobs):02d}"
        d.mkdir(parents=True, exist_ok=True)
        job = Job(name, inner, d, timeout, kernel)
        shutil.copyfile(init, job.init)
        if side is not None:
            shutil.copyfile(side, d / "side")
        tokens: dict[str, str] = {}
        for spec in disks:
            dname, size = parse_disk_spec(spec, "disk", "d0=64M")
            if self.ndisks >= L1_DISK_MAX:
                raise HarnessError(f"at most {L1_DISK_MAX} disks per batch")
            job.disks.append(Disk(dname, self.ndisks,
                                  self.work / "disks" / f"{d.name}-{dname}.img", size))
            tokens[dname] = f"@@E2EDISK{self.ndisks}@@"
            self.ndisks += 1
        for spec in vfio:
            dname, size = parse_disk_spec(spec, "real device", "vfio0=16M")
            if self.nvfio >= L1_VFIO_MAX:
                raise HarnessError(f"at most {L1_VFIO_MAX} real devices per batch")
            job.vfio.append(Disk(dname, self.nvfio,
                                 self.work / "disks" / f"{d.name}-{dname}.img", size))
            tokens[dname] = f"@@E2EVFIO{self.nvfio}@@"
            self.nvfio += 1
        if job.vfio:
            job.vfio_modules = vfio_modules
        for a in args:
            if "\n" in a:
                raise HarnessError("VMM arguments may not contain newlines")
            job.callargs.append(substitute_placeholders(a, tokens))
        self._write(job)
        self.jobs.append(job)
        return job

    @staticmethod
    def _write(job: Job) -> None:
        """The job's directory, for a reader of a kept work directory."""
        (job.dir / "name").write_text(job.name + "\n")
        (job.dir / "inner").write_text(job.inner + "\n")
        (job.dir / "timeout").write_text(f"{job.timeout}\n")
        (job.dir / "kernel").write_text(job.kernel + "\n")
        for what, disks in (("disks", job.disks), ("vfio", job.vfio)):
            (job.dir / what).write_text(
                "".join(f"{x.name} {x.index} {x.file} {x.size}\n" for x in disks))
        if job.vfio_modules:
            (job.dir / "vfio-modules").write_text(job.vfio_modules + "\n")
        (job.dir / "callargs").write_text("".join(a + "\n" for a in job.callargs))

    def uses(self, inner: str) -> bool:
        return any(j.inner == inner for j in self.jobs)

    def vfio_sets(self) -> list[str]:
        return sorted({j.vfio_modules for j in self.jobs if j.vfio_modules})

    def create_disks(self, jobs: list[Job] | None = None) -> None:
        """Fresh sparse images for every job (or for JOBS)."""
        for job in self.jobs if jobs is None else jobs:
            for d in job.disks + job.vfio:
                d.file.unlink(missing_ok=True)
                if subprocess.run(["truncate", "-s", d.size, str(d.file)],
                                  check=False).returncode != 0:
                    raise HarnessError(f"cannot create disk {d.name} of size {d.size}")

    def result(self, i: int) -> str:
        """Job I's VMM exit status, "timeout" (the job, or L1 before the job finished, ran out of
        time), "l1-stalled" (L1 made no progress and the harness stopped it before the job
        finished: launch's watchdog) or "missing" (no status reported)."""
        path = self.jobs[i].dir / "status"
        status = path.read_text().strip() if path.exists() else "missing"
        if status == "missing" and (self.work / "l1-stalled").exists():
            status = "l1-stalled"
        elif status == "missing" and (self.work / "l1-timed-out").exists():
            status = "timeout"
        return status

    def retried(self, i: int) -> str:
        """Why job I ran twice (L1 failed in its first attempt), or ""."""
        path = self.jobs[i].dir / "retried"
        return path.read_text().strip() if path.exists() else ""

    def host_disk_lines(self, i: int) -> list[str]:
        """"HOST-DISK <name> <sha256>" per disk and per real device (its backing image)."""
        job = self.jobs[i]
        return [host_disk_line(d.name, sha256_of(d.file)) for d in job.disks + job.vfio]
