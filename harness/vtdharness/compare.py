"""Usage:
  bench/compare [--mode auto|direct|nested] [--only qemu|vtd-nest] [--timeout SECS]
                [--rounds N] [--repeat N] [--no-baseline] [--out DIR] [--plot FILE.svg] [--doc FILE.md]
                [--keep] [--live] [--indirect default|on|off] [--pin CPUS|none] [--vfio]

  --mode         as e2e/run: direct on this host's /dev/kvm, nested inside one L1 under QEMU
                 TCG, auto (default) probes whether a direct boot works
  --only         run one VMM's rows only (default: both)
  --timeout      seconds each guest may run (default 240)
  --rounds       boot every configuration's guest N times, round after round (strict, lazy,
                 off, ... then again), so that the machine's other load spreads over all
                 configurations; phase times are the median over all rounds (default 1)
  --repeat       run the three disk phases N times in each guest (default 1); the run takes
                 about rounds x repeat times as long
  --no-baseline  skip vtd-nest's boot-only jobs (then no per-I/O counter figures)
  --out          results directory (default bench/out/<UTC date-time>, git-ignored): results.txt
                 (RESULT lines), table.md, counters.md, samples.md, overhead.svg, the console
                 log and every job's output
  --plot         also copy the overhead plot (SVG) to FILE
  --doc          also replace the generated part of FILE (between the markers
                 "<!-- bench:begin -->" and "<!-- bench:end -->") with this run's tables
  --keep         keep the batch work directory (disk images) too
  --live         stream the L1/L2 console while the guests run
  --indirect     virtio indirect descriptors: default = each VMM's default (QEMU offers
                 them, vtd-nest does not), on / off = the same for both VMMs (QEMU's
                 indirect_desc=, vtd-nest's --disk ...,indirect_desc=), for a like-for-like
                 device: with them, the guest maps one buffer more per request
  --pin          nested mode: run each guest's VMM (all its threads) on these L1 CPUs with
                 taskset (default 1: one CPU, the other left to L1; cross-CPU wakeups in the
                 emulated L1 make timings swing by 1.5x), none to let L1 schedule freely
  --vfio         the device-assignment rows instead of the emulated ones: each guest gets a
                 real NVMe (an emulated NVMe in L1 bound to vfio-pci behind L1's emulated
                 VT-d, which would also slow the emulated rows, so they are not mixed) and
                 runs the workload on it, under QEMU's vfio-pci with intel-iommu,caching-mode=on
                 and vtd-nest's --device with --iommu intel,caching-mode=on (scalable
                 second-stage and legacy mode, strict), each through the VFIO container and
                 through iommufd, plus both without vIOMMU (vfio-off); 12 devices, so one
                 round per L1 (--only halves that), no boot-only baselines

Output: the markdown table, then "RESULT vmm=.. config=.. metric=.. value=.." lines (see
docs/benchmarks.md for every metric). Exit status: 0, or 1 if a QEMU configuration failed
(vtd-nest failures are reported, not fatal), 2 on bad usage or if the run could not start.
---
bench/compare: the same guest disk workload under QEMU's intel-iommu and under vtd-nest's
vIOMMU, strict / lazy / off (+ vtd-nest's strict with interrupt remapping, as QEMU's rows have
it, and its assigned=sim disk), all in ONE run.

    e2e/prepare (cached) ─> build the VMM (if vtd-nest rows are wanted; if it does not build,
    its rows are reported failed and QEMU's still run) ─> one batch of jobs, each a fresh
    128 MiB raw disk and one L2 guest running bench/guest/workload.sh:
      qemu-{strict,lazy,off}  vtd-nest-{strict,strict-ir,lazy,off,assigned}  and, unless
      --no-baseline,
      vtd-nest-*-idle (same guest without the disk workload: the baseline for per-I/O counters)
      (--vfio: {qemu,vtd-nest}-vfio-{strict-{scalable,legacy},off}-{container,iommufd})
    ─> OUT/jobs/<job>/{output,status,callargs}, jobs.list ─> report.py: RESULT lines, tables, SVG
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import cli, report
from .batch import L1_VFIO_MAX, Batch
from .common import (BENCH_DIR, REPO_ROOT, HarnessError, log, make_dir, run_prepare, usage_of,
                     vmm_binary)
from .launch import Runner, launch

USAGE = usage_of(__doc__)
DISK_SIZE = "128M"
STRICT = "intel_iommu=on,sm_on iommu.strict=1"
LAZY = "intel_iommu=on,sm_on iommu.strict=0"
QEMU_BASE = ["-M", "q35,kernel-irqchip=split", "-accel", "kvm", "-cpu", "host", "-m", "512M",
             "-smp", "1"]
QEMU_IOMMU = ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]
VTD_IOMMU = "intel,x-scalable-mode=on,x-flts=on"
# --vfio: the guests' config names are vfio-strict:<legacy|scalable>:<backend> and
# vfio-off:none:<backend> (report.py splits them into config=, mode= and backend=).
VFIO_STRICT = "intel_iommu=on,sm_on iommu.strict=1"
VFIO_STRICT_LEGACY = "intel_iommu=on,sm_off iommu.strict=1"


class Options:
    def __init__(self, argv: list[str]):
        self.mode = os.environ.get("VTD_NEST_E2E_MODE") or "auto"
        self.only = ""
        self.timeout, self.repeat, self.rounds = "240", "1", "1"
        self.baseline, self.keep, self.live, self.vfio = True, False, False, False
        self.out = self.plot = self.doc = ""
        self.indirect, self.pin = "default", "1"

        def set_(attr):
            return lambda v: setattr(self, attr, v)

        try:
            cli.parse(argv, {o: set_(o[2:].replace("-", "_")) for o in (
                "--mode", "--only", "--timeout", "--repeat", "--rounds", "--out", "--plot",
                "--doc", "--indirect", "--pin")},
                {"--no-baseline": lambda: setattr(self, "baseline", False),
                 "--keep": lambda: setattr(self, "keep", True),
                 "--live": lambda: setattr(self, "live", True),
                 "--vfio": lambda: setattr(self, "vfio", True)}, prog="bench/compare")
        except cli.Usage as e:
            cli.usage_exit(USAGE, str(e) if e.args and e.args[0] else None)
        if self.only not in ("", "qemu", "vtd-nest"):
            raise HarnessError("--only wants qemu or vtd-nest")
        if self.indirect not in ("default", "on", "off"):
            raise HarnessError("--indirect wants default, on or off")
        if self.pin != "none" and not re.fullmatch(r"[0-9]+([,-][0-9]+)*", self.pin):
            raise HarnessError("--pin wants a CPU list (e.g. 1 or 0-1) or none")
        if not self.timeout.isdigit():
            raise HarnessError("--timeout wants whole seconds")
        if not re.fullmatch(r"[1-9][0-9]*", self.repeat):
            raise HarnessError("--repeat wants a count of at least 1")
        if not re.fullmatch(r"[1-9][0-9]*", self.rounds):
            raise HarnessError("--rounds wants a count of at least 1")
        if self.doc and not Path(self.doc).is_file():
            raise HarnessError(f"--doc: no file {self.doc}")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out = self.out or str(BENCH_DIR / "out" / stamp)
        if self.vfio:
            per_round = 6 if self.only else 12
            if per_round * int(self.rounds) > L1_VFIO_MAX:
                raise HarnessError(
                    f"--vfio: {per_round * int(self.rounds)} guests need more real devices "
                    f"than one L1 holds ({L1_VFIO_MAX}): use fewer --rounds or --only")

    def wants(self, vmm: str) -> bool:
        return not self.only or self.only == vmm


def job_name(vmm: str, config: str, round_: int, idle: bool = False) -> str:
    """qemu-strict, vtd-nest-lazy-r2, vtd-nest-off-idle, ..."""
    name = f"{vmm}-{config}"
    if round_ != 1:
        name += f"-r{round_}"
    return name + ("-idle" if idle else "")


class Compare:
    def __init__(self, o: Options, work: Path):
        self.o, self.work = o, work
        self.batch = Batch(work)
        if o.pin != "none":
            self.batch.pin = o.pin
        self.jobs_list: list[str] = []
        self.vtd_failed = ""
        self.timeout = int(o.timeout)

    def guest_script(self, path: Path, header: str) -> Path:
        """The guest init: the settings, then bench/guest/workload.sh."""
        path.write_text(header + "\n" + (BENCH_DIR / "guest" / "workload.sh").read_text())
        return path

    def build_vmm(self) -> None:
        """If vtd-nest rows are wanted, build the VMM now: a failure must not stop QEMU's rows."""
        if not self.o.wants("vtd-nest"):
            return
        try:
            os.environ["VTD_NEST_BIN"] = vmm_binary()
        except HarnessError as e:
            self.vtd_failed = f"the VMM does not build: {e}"
            log(self.vtd_failed)

    def qemu_job(self, round_: int, config: str, cmdline: str, iommu: bool) -> None:
        name = job_name("qemu", config, round_)
        dev = "virtio-blk-pci,drive=d0,disable-legacy=on"
        if self.o.indirect != "default":
            dev += f",indirect_desc={self.o.indirect}"
        args = list(QEMU_BASE)
        if iommu:
            args += QEMU_IOMMU
            dev += ",iommu_platform=on"
        # cache=writeback (QEMU's default): the same back end as vtd-nest's virtio-blk, which
        # does buffered reads and writes, so both VMMs' "off" rows, and so their ratios, compare.
        args += ["-drive", "file=@d,if=none,id=d0,format=raw,cache=writeback,aio=threads",
                 "-device", dev]
        if cmdline:
            args += ["-append", cmdline]
        self.batch.add(name, "qemu", self.work / "work.sh", self.timeout, [f"d={DISK_SIZE}"],
                       args)
        self.jobs_list.append(f"{name} qemu {config} work {round_}")

    def vtd_job(self, round_: int, config: str, cmdline: str, iommu: str, disk: str) -> None:
        """One vtd-nest row, plus (in round 1) its boot-only baseline."""
        args = []
        if cmdline:
            args += ["--cmdline", cmdline]
        if iommu:
            args += ["--iommu", iommu]
        if self.o.indirect != "default":
            disk += f",indirect_desc={self.o.indirect}"
        args += ["--memory", "512M", "--cpus", "1", "--disk", f"path=@d{disk}"]
        for kind in ("work", "idle"):
            if kind == "idle" and (not self.o.baseline or round_ != 1):
                continue
            name = job_name("vtd-nest", config, round_, kind == "idle")
            self.jobs_list.append(f"{name} vtd-nest {config} {kind} {round_}")
            if self.vtd_failed:
                (self.work / f"failed-{name}").write_text(self.vtd_failed + "\n")
                continue
            self.batch.add(name, "vtd-nest", self.work / f"{kind}.sh", self.timeout,
                           [f"d={DISK_SIZE}"], args)

    def queue_jobs(self) -> None:
        rep = self.o.repeat
        self.guest_script(self.work / "work.sh", f"BENCH_IDLE=0 BENCH_REPEAT={rep}")
        self.guest_script(self.work / "idle.sh", f"BENCH_IDLE=1 BENCH_REPEAT={rep}")
        if self.o.vfio:
            self.queue_vfio_jobs()
            return
        for r in range(1, int(self.o.rounds) + 1):
            if self.o.wants("qemu"):
                self.qemu_job(r, "strict", STRICT, True)
                self.qemu_job(r, "lazy", LAZY, True)
                self.qemu_job(r, "off", "", False)
            if self.o.wants("vtd-nest"):
                self.vtd_job(r, "strict", STRICT, VTD_IOMMU, ",iommu=on")
                # QEMU's rows remap interrupts (intremap defaults on with its split irqchip):
                # the same for vtd-nest (the split irqchip follows).
                self.vtd_job(r, "strict-ir", STRICT, f"{VTD_IOMMU},intremap=on", ",iommu=on")
                self.vtd_job(r, "lazy", LAZY, VTD_IOMMU, ",iommu=on")
                self.vtd_job(r, "off", "", "", "")
                self.vtd_job(r, "assigned", STRICT, f"{VTD_IOMMU},caching-mode=on",
                             ",assigned=sim")

    def vfio_job(self, vmm: str, round_: int, mode: str, backend: str) -> None:
        """MODE: legacy, scalable or none (no vIOMMU); BACKEND: container or iommufd."""
        config = "vfio-off" if mode == "none" else "vfio-strict"
        suffix = "" if mode == "none" else mode
        name = job_name(vmm, f"{config}-{suffix}-{backend}", round_).replace("--", "-", 1)
        if vmm == "qemu":
            args = list(QEMU_BASE)
            iommu = "intel-iommu,intremap=on,caching-mode=on"
            if mode == "scalable":
                args += ["-device", f"{iommu},x-scalable-mode=on,x-flts=off",
                         "-append", VFIO_STRICT]
            elif mode == "legacy":
                args += ["-device", iommu, "-append", VFIO_STRICT_LEGACY]
            if backend == "iommufd":
                args += ["-object", "iommufd,id=fd0",
                         "-device", "vfio-pci,sysfsdev=@vfio0,iommufd=fd0"]
            else:
                args += ["-device", "vfio-pci,sysfsdev=@vfio0"]
        else:
            args = []
            if mode == "scalable":
                args += ["--cmdline", VFIO_STRICT, "--iommu",
                         "intel,caching-mode=on,x-scalable-mode=on,x-flts=off"]
            elif mode == "legacy":
                args += ["--cmdline", VFIO_STRICT_LEGACY, "--iommu", "intel,caching-mode=on"]
            device = f"path=@vfio0,backend={backend}" + ("" if mode == "none" else ",iommu=on")
            args += ["--memory", "512M", "--cpus", "1", "--device", device]
        self.jobs_list.append(f"{name} {vmm} {config}:{mode}:{backend} work {round_}")
        if vmm == "vtd-nest" and self.vtd_failed:
            (self.work / f"failed-{name}").write_text(self.vtd_failed + "\n")
            return
        self.batch.add(name, vmm, self.work / "vfio.sh", self.timeout, [], args,
                       vfio=[f"vfio0={DISK_SIZE}"], vfio_modules=backend)

    def queue_vfio_jobs(self) -> None:
        """The --vfio rows: the workload on the assigned NVMe, round after round."""
        self.guest_script(self.work / "vfio.sh",
                          f"BENCH_IDLE=0 BENCH_REPEAT={self.o.repeat} BENCH_DISK=nvme0n1")
        for r in range(1, int(self.o.rounds) + 1):
            for mode in ("scalable", "legacy", "none"):
                for backend in ("container", "iommufd"):
                    for vmm in ("qemu", "vtd-nest"):
                        if self.o.wants(vmm):
                            self.vfio_job(vmm, r, mode, backend)

    def run_jobs(self, runner: Runner) -> str:
        """Runs the batch; a launch failure is recorded for the report, which then marks every
        job that did not run as failed. The mode used."""
        if not self.batch.jobs:
            return self.o.mode
        log(f"running {len(self.batch.jobs)} guest(s) in mode {self.o.mode} "
            f"(per-guest limit {self.timeout}s)")
        try:
            return launch(self.batch, self.o.mode, runner)
        except HarnessError as e:
            (self.work / "launch-failed").write_text(f"e2e: error: {e}\n")
            log(f"error: {e}")
            return self.o.mode

    def collect(self, out: Path, mode: str) -> None:
        """What the report needs (and what a reader may want to look at), into OUT."""
        (out / "jobs").mkdir(parents=True, exist_ok=True)
        (out / "jobs.list").write_text("".join(line + "\n" for line in self.jobs_list))
        (out / "mode").write_text(mode + "\n")
        for f in list(self.work.glob("failed-*")) + [self.work / "launch-failed"]:
            if f.exists():
                shutil.copyfile(f, out / f.name)
        if self.batch.console.exists():
            shutil.copyfile(self.batch.console, out / "console.log")
        for i, job in enumerate(self.batch.jobs):
            d = out / "jobs" / job.name
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(job.dir / "callargs", d / "callargs")
            (d / "output").write_bytes(job.output.read_bytes() if job.output.exists() else b"")
            (d / "status").write_text(self.batch.result(i) + "\n")
        now = datetime.datetime.now(datetime.timezone.utc)
        (out / "date").write_text(now.strftime("%Y-%m-%d %H:%M UTC") + "\n")
        (out / "machine").write_text(machine() + "\n")


def source_state() -> str:
    """The repository's commit, and whether the working tree differs from it."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT)] + list(args), capture_output=True,
                              text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no") or \
            git("ls-files", "--others", "--exclude-standard", "--", "crates", "src"):
        return f"{rev} + uncommitted changes"
    return rev


def machine() -> str:
    cpu = ""
    mem_kib = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    return f"{os.cpu_count()}-core {cpu}, {int(mem_kib / 1048576 + 0.5)} GiB"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str]) -> int:
    o = Options(argv)
    t0 = time.monotonic()
    out = Path(o.out)
    make_dir(out, "--out")
    (out / "load-before").write_text(loadavg() + "\n")
    if not run_prepare():
        raise HarnessError("e2e/prepare failed")
    work = Path(tempfile.mkdtemp(prefix="vtd-nest-bench.",
                                 dir=os.environ.get("TMPDIR") or "/tmp"))
    cmp = Compare(o, work)
    runner = Runner(cmp.batch, o.live)
    try:
        cmp.build_vmm()
        try:
            cmp.queue_jobs()
        except HarnessError as e:  # every guest has its own disk in L1
            raise HarnessError(f"{e}: use fewer --rounds") from e
        mode = cmp.run_jobs(runner)
        cmp.collect(out, mode)
    finally:
        runner.stop()
        if o.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    seconds = int(time.monotonic() - t0)
    for name, value in (("seconds", seconds), ("repeat", o.repeat), ("indirect", o.indirect),
                        ("pin", o.pin), ("vfio", int(o.vfio)),
                        ("vmm-binary", os.environ.get("VTD_NEST_BIN") or "none"),
                        ("source", source_state()), ("load-after", loadavg())):
        (out / name).write_text(f"{value}\n")
    report_args = [str(out)]
    if o.plot:
        report_args += ["--plot", o.plot]
    if o.doc:
        report_args += ["--doc", o.doc]
    rc = report.main(report_args)
    log(f"results in {out} (run took {int(time.monotonic() - t0)} s)")
    return rc
