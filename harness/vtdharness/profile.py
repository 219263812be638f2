"""Usage: bench/profile/run [--mode nested|direct] [--only qemu|vtd-nest] [--window SECS]
                         [--out DIR] [strict|lazy|off]...
  (default: strict lazy off for both VMMs, a 4 s window; the guests are bench/compare's:
  512 MiB, one vCPU, Debian 6.12, virtio-blk behind the vIOMMU, the VMM pinned to CPU 1)
---
bench/profile/run: where a guest's 4 KiB direct reads spend their time, under vtd-nest and
under QEMU, as L1 sees it (the method: bench/profile/run's header).

    perf + its libraries + vtd-nest with symbols + bench/profile/wrap.sh ─> a self-extracting
    wrapper (bench/lib/pack.sh) every job's VMM command runs through ─> one batch, pinned to
    L1's CPU 1, guests running bench/profile/init.sh ─> OUT/<vmm>-<config>.txt
    ─> bench/profile/report.py
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import cli
from .batch import Batch
from .common import (BENCH_DIR, HarnessError, log, make_dir, run_prepare, usage_of,
                     vmm_binary)
from .launch import Runner, launch

USAGE = usage_of(__doc__)
CMDLINES = {"strict": "intel_iommu=on,sm_on iommu.strict=1",
            "lazy": "intel_iommu=on,sm_on iommu.strict=0", "off": ""}
LOADER = "/lib64/ld-linux-x86-64.so.2"


def pack_wrapper(work: Path, perf: str, vmm: str | None, window: int) -> Path:
    """The wrapper: perf with its libraries and the dynamic loader, vtd-nest with its symbols,
    and wrap.sh, as one self-extracting program."""
    pack = work / "pack"
    (pack / "lib").mkdir(parents=True)
    shutil.copy(perf, pack / "perf")
    ldd = subprocess.run(["ldd", perf], capture_output=True, text=True, check=False).stdout
    for line in ldd.splitlines():
        m = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            shutil.copyfile(os.path.realpath(m.group(1)), pack / "lib" / Path(m.group(1)).name)
    shutil.copyfile(os.path.realpath(LOADER), pack / "lib" / "ld.so")
    (pack / "lib" / "ld.so").chmod(0o755)
    if vmm:
        shutil.copy(vmm, pack / "vtd-nest")
    (pack / "run.sh").write_text(f"WINDOW_S={window}\n"
                                 + (BENCH_DIR / "profile" / "wrap.sh").read_text())
    out = work / "wrap"
    proc = subprocess.run(["bash", "-c", '. "$1"; self_extracting "$2" "$3"', "pack",
                           str(BENCH_DIR / "lib" / "pack.sh"), str(pack), str(out)], check=False)
    if proc.returncode != 0:
        raise HarnessError("packing the perf wrapper failed")
    return out


def main(argv: list[str]) -> int:
    o = {"mode": "nested", "only": "", "window": "4", "out": "", "configs": []}

    def config(word: str) -> None:
        if word not in CMDLINES:
            raise cli.Usage(f"bench/profile: unknown argument {word}")
        o["configs"].append(word)

    def setter(key: str):
        return lambda v: o.__setitem__(key, v)

    try:
        cli.parse(argv, {k: setter(k[2:]) for k in ("--mode", "--only", "--window", "--out")},
                  {}, prog="bench/profile", positional=config)
    except cli.Usage as e:
        cli.usage_exit(USAGE, str(e) if e.args and e.args[0] else None)
    if o["only"] not in ("", "qemu", "vtd-nest"):
        raise HarnessError("--only wants qemu or vtd-nest")
    if not re.fullmatch(r"[1-9][0-9]*", o["window"]):
        raise HarnessError("--window wants whole seconds")
    window = int(o["window"])
    configs = o["configs"] or ["strict", "lazy", "off"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(o["out"] or BENCH_DIR / "out" / f"profile-{stamp}")
    perf = shutil.which("perf")
    if not perf:
        raise HarnessError("bench/profile needs perf on this host (apt-get install linux-perf)")
    make_dir(out, "--out")
    if not run_prepare():
        raise HarnessError("e2e/prepare failed")
    work = Path(tempfile.mkdtemp(prefix="vtd-nest-profile.",
                                 dir=os.environ.get("TMPDIR") or "/tmp"))
    batch = Batch(work)
    runner = Runner(batch, live=False)
    try:
        batch.pin = "1"
        vmm = None
        if o["only"] != "qemu":
            vmm = vmm_binary()
            os.environ["VTD_NEST_BIN"] = vmm
        batch.wrap = pack_wrapper(work, perf, vmm, window)
        init = work / "init.sh"
        init.write_text(f"WINDOW_US={(window + 3) * 1000000}\n"
                        + (BENCH_DIR / "profile" / "init.sh").read_text())
        for config in configs:
            cmdline = CMDLINES[config]
            if o["only"] != "qemu":
                args = ["--memory", "512M", "--cpus", "1"]
                if cmdline:
                    args += ["--cmdline", cmdline, "--iommu", "intel,x-scalable-mode=on,x-flts=on",
                             "--disk", "path=@d,iommu=on"]
                else:
                    args += ["--disk", "path=@d"]
                batch.add(f"vtd-nest-{config}", "vtd-nest", init, 300, ["d=64M"], args)
            if o["only"] != "vtd-nest":
                # bench/compare's QEMU command, plus thread names (debug-threads) for the split.
                args = ["-M", "q35,kernel-irqchip=split", "-accel", "kvm", "-cpu", "host",
                        "-m", "512M", "-smp", "1", "-name", "profile,debug-threads=on"]
                dev = "virtio-blk-pci,drive=d0,disable-legacy=on"
                if cmdline:
                    args += ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on",
                             "-append", cmdline]
                    dev += ",iommu_platform=on"
                args += ["-drive", "file=@d,if=none,id=d0,format=raw,cache=writeback,aio=threads",
                         "-device", dev]
                batch.add(f"qemu-{config}", "qemu", init, 300, ["d=64M"], args)
        log(f"profiling {len(batch.jobs)} guest(s) in mode {o['mode']}")
        launch(batch, o["mode"], runner)
        for job in batch.jobs:
            text = job.output.read_bytes() if job.output.exists() else b""
            (out / f"{job.name}.txt").write_bytes(text)
    finally:
        runner.stop()
        shutil.rmtree(work, ignore_errors=True)
    rc = subprocess.run([sys.executable, str(BENCH_DIR / "profile" / "report.py"), str(out)],
                        check=False).returncode
    log(f"outputs in {out}")
    return rc
