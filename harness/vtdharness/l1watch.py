"""Noticing that L1 makes no progress, and saying where its vCPUs are instead of waiting.

l1-init bounds every job (its watchdog kills the VMM after the job's timeout and the side script
SIDE_GRACE seconds later, then prints VTD-NEST-EXIT), so a console silent for longer than that
means L1 itself is stuck. The harness then looks at L1 from outside, through its QEMU's monitor,
and stops it:

    launch_nested: L1 QEMU with -qmp unix:WORK/l1-qmp.sock; L1 booted nokaslr, sysrq enabled
    Runner.run ─ each console chunk ─> Watchdog.progress(lines)  (and the job it is in)
    Watchdog thread ─ silent > stall_limit ─> on_stall = Stall.diagnose:
        QMP `info registers -a` ×SAMPLES ─> l1state.describe per vCPU (level, RIP, symbol)
        QMP `info pic`, `info lapic` per vCPU (Lapic.stuck: halted with a vector in service),
        COM1's IER and LSR ─> the interrupt controllers' state
        QMP sendkey alt-sysrq-9/-l/-w ─> L1's own backtraces on its console, if it takes the
        keyboard interrupt
        ─> WORK/l1-stall.txt; "e2e: L1 made no progress ..." lines; WORK/l1-stalled
        ─> L1 stopped (Runner.stop)
    symbols: a second L1 boot of the same kernel (nokaslr, the same base modules in the same
    order, so the same addresses) writes its /proc/kallsyms to a disk (l1_kallsyms)

Passing runs pay nothing: the monitor is idle, and the symbol boot happens only after a stall.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from . import console, l1state
from .common import HarnessError, cpio_of_dir, e2e_cache
from .initramfs import concat_archives

# Seconds of silence beyond the longest job's bound (timeout + side grace) before L1 counts as
# stuck: room for l1-init's own bookkeeping (sync, VFIO module switches).
STALL_MARGIN = 60
# Register samples taken, and the seconds between them (a vCPU that stays put vs. one that moves).
SAMPLES = 3
SAMPLE_GAP = 2.0
# Seconds left to L1 to print its sysrq backtraces before it is stopped.
SYSRQ_WAIT = 10.0
# L1 kernel arguments that make a stuck L1 readable from outside: fixed kernel addresses (so a
# RIP maps to /proc/kallsyms of another boot) and every sysrq function (backtraces on request).
L1_DEBUG_APPEND = "nokaslr sysrq_always_enabled"


def stall_limit(max_job_timeout: int, side_grace: int) -> int:
    """Seconds of console silence after which L1 is stuck: $VTD_NEST_E2E_L1_STALL, or the longest
    job's bound plus STALL_MARGIN."""
    env = os.environ.get("VTD_NEST_E2E_L1_STALL")
    if env:
        if not env.isdigit() or int(env) == 0:
            raise HarnessError(f"VTD_NEST_E2E_L1_STALL wants whole seconds above 0, not {env}")
        return int(env)
    return max_job_timeout + side_grace + STALL_MARGIN


class Watchdog:
    """Calls ON_STALL(silent_seconds, job) once, from its own thread, when no console line came
    for LIMIT seconds. CLOCK is injectable so `check` can be driven by a test."""

    def __init__(self, limit: float, on_stall: Callable[[float, str | None], None],
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.on_stall = on_stall
        self.clock = clock
        self.last = clock()
        self.job: str | None = None
        self.jobs_started = 0
        self.l1_done = False  # VTD-NEST-L1-DONE seen: l1-init ran every job
        self.fired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def progress(self, lines: list[str]) -> None:
        self.last = self.clock()
        for line in lines:
            name = console.job_started(line)
            if name:
                self.job = name
                self.jobs_started += 1
            elif console.l1_done(line):
                self.l1_done = True

    def check(self) -> bool:
        """Fires ON_STALL if the silence exceeds the limit and it has not fired yet."""
        silent = self.clock() - self.last
        if self.fired or silent <= self.limit:
            return False
        self.fired = True
        self.on_stall(silent, self.job)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self.check():
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join()


def l1_kallsyms(work: Path, qemu_base: list[str], append: str,
                timeout: int = 120) -> str | None:
    """L1's /proc/kallsyms from a boot of the same kernel with L1's command line APPEND (so
    nokaslr) and l1/base.cpio's modules loaded in l1-init's order (load.list): the addresses of
    the stuck L1's kernel and base modules. None if that boot did not write it."""
    cache = e2e_cache()
    d = work / "l1-kallsyms"
    d.mkdir(exist_ok=True)
    root = d / "root"
    root.mkdir(exist_ok=True)
    (root / "init").write_text(
        "#!/bin/sh\n"
        "/bin/busybox --install -s\n"
        "mount -t proc proc /proc\n"
        "mount -t devtmpfs devtmpfs /dev\n"
        "while read -r m; do insmod \"/lib/modules/$m\"; done </lib/modules/load.list\n"
        "cat /proc/kallsyms >/dev/vda\n"
        "sync\n"
        "poweroff -f\n")
    (root / "init").chmod(0o755)
    extra = d / "init.cpio"
    cpio_of_dir(root, extra)
    initrd = d / "initrd.cpio"
    concat_archives(initrd, [cache / "l1" / "base.cpio", extra])
    disk = d / "kallsyms.img"
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    cmd = ["timeout", "-k", "5", str(timeout)] + qemu_base + [
        "-M", "q35", "-drive", f"file={disk},if=none,id=syms,format=raw",
        "-device", "virtio-blk-pci,drive=syms",
        "-kernel", str(cache / "l1" / "vmlinuz"), "-initrd", str(initrd),
        "-append", append]
    with open(d / "console.log", "wb") as log_file:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                       stderr=subprocess.STDOUT, check=False)
    text = disk.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    return text if text.strip() else None


class Stall:
    """What the watchdog does when it fires: look at L1 through QMP, write WORK/l1-stall.txt,
    say where L1 was, mark the batch (WORK/l1-stalled) and stop L1."""

    def __init__(self, work: Path, qmp_path: Path, qemu_base: list[str], append: str,
                 l1_ram: int, say: Callable[[str], None], stop: Callable[[], None]):
        """QEMU_BASE and APPEND: L1's QEMU command and kernel command line, for the kallsyms
        boot; L1_RAM: its memory in bytes."""
        self.work, self.qmp_path, self.qemu_base = work, qmp_path, qemu_base
        self.append, self.l1_ram = append, l1_ram
        self.say, self.stop = say, stop

    @property
    def report(self) -> Path:
        return self.work / "l1-stall.txt"

    @staticmethod
    def _look(qmp: l1state.Qmp, samples: list[list[l1state.Vcpu]],
              lapics: dict[int, l1state.Lapic], raw: list[str]) -> None:
        """Register samples, the interrupt controllers, COM1, then sysrq: into the lists given
        (kept as far as they got if the monitor stops answering)."""
        for i in range(SAMPLES):
            if i:
                time.sleep(SAMPLE_GAP)
            text = qmp.hmp("info registers -a")
            raw.append(f"== info registers -a (sample {i + 1})\n{text}")
            samples.append(l1state.parse_registers(text))
        raw.append("== info pic\n" + qmp.hmp("info pic"))
        for v in samples[-1]:
            text = qmp.hmp(f"info lapic {v.index}")
            raw.append(f"== info lapic {v.index}\n{text}")
            lapics[v.index] = l1state.parse_lapic(text)
        # COM1 (L1's console): IER and LSR, registers a read leaves as they are. An enabled
        # THR-empty interrupt with the holding register empty while L1 still has output waiting
        # is a lost interrupt: L1's tty then blocks every writer.
        for name, port in (("IER", 0x3F9), ("LSR", 0x3FD)):
            raw.append(f"== COM1 {name}: " + qmp.hmp(f"i /b {port:#x}"))
        for key in ("9", "l", "w"):
            qmp.hmp(f"sendkey alt-sysrq-{key}")
            time.sleep(0.5)

    def diagnose(self, silent: float, job: str | None) -> None:
        """Looks, reports and stops L1; stops it even if the look fails in a way not foreseen."""
        try:
            self._diagnose(silent, job)
        finally:
            self.stop()

    def _diagnose(self, silent: float, job: str | None) -> None:
        during = f"during job {job}" if job else "before its first job"
        self.say(f"e2e: L1 made no progress for {silent:.0f} s (its console silent) {during}; "
                 f"looking at its vCPUs")
        (self.work / "l1-stalled").write_text(f"{silent:.0f} {job or ''}\n")
        samples: list[list[l1state.Vcpu]] = []
        lapics: dict[int, l1state.Lapic] = {}
        raw: list[str] = []
        try:
            with l1state.Qmp(self.qmp_path) as qmp:
                self._look(qmp, samples, lapics, raw)
        except l1state.QmpError as e:
            self.say(f"e2e: L1's monitor did not answer ({e})")
        symbols = None
        if samples:
            self.say(f"e2e: L1 asked for its backtraces (sysrq l, w); waiting {SYSRQ_WAIT:.0f} s "
                     "for them on its console")
            time.sleep(SYSRQ_WAIT)
            self.stop()
            saved = self.work / "l1-kallsyms.txt"
            kallsyms = (saved.read_text() if saved.exists()
                        else l1_kallsyms(self.work, self.qemu_base, self.append))
            if kallsyms:
                saved.write_text(kallsyms)
                symbols = l1state.Symbols.from_kallsyms(kallsyms)
            else:
                self.say("e2e: no symbols for L1's RIPs (the kallsyms boot wrote nothing)")
        else:
            self.stop()
        lines = [f"sample {i + 1}: " + l1state.describe(v, self.l1_ram, symbols)
                 for i, vcpus in enumerate(samples) for v in vcpus]
        for v in samples[-1] if samples else []:
            stuck = lapics[v.index].stuck(v) if v.index in lapics else None
            if stuck:
                lines.append(stuck)
        with open(self.report, "a", encoding="utf-8") as f:
            f.write("\n".join([f"=== L1 stuck {during}"] + lines + [""] + raw) + "\n")
        for line in lines:
            self.say(f"e2e: L1 {line}")
        self.say(f"e2e: L1 stopped; its registers, interrupt controllers and the samples: "
                 f"{self.report}")
