"""The console markers: every line the harness reads back from a run, parsed here and only here.

    console.log ─ split_sections ─> one Section per job ─ JobOutput ─> facts the checks and the
                  (VTD-NEST-JOB / -TIMEOUT / -EXIT)        (+ HOST-DISK)  bench report read

Markers (who prints them):
  VTD-NEST-JOB <name>, VTD-NEST-TIMEOUT <s>, VTD-NEST-EXIT <status>, VTD-NEST-L1-DONE
                                    e2e/lib/l1-init, or launch.py in direct mode
  HOST-DISK <name> <sha256>         the harness, after the run (the host's hash of a disk image)
  E2E-GUEST-START, E2E-GUEST-EXIT <status>     e2e/lib/l2-init
  CHECK-OK <what>, CHECK-FAIL <what>, GUEST-CAP <cap> <ecap>, GUEST-DISK <name> <sha256>,
  GUEST-KERNEL <release>            e2e/guest/lib.sh and the scenarios' guest scripts
  VTD cap=<hex> ecap=<hex>          the VMM, once per vIOMMU before the guest runs
  counter <name> <value>            the VMM's exit summary
  BENCH-* lines                     bench/guest/workload.sh (see `BenchFacts`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
_JOB = re.compile(r"^VTD-NEST-JOB (\S+)\s*$")
L1_DONE = "VTD-NEST-L1-DONE"
_EXIT = re.compile(r"^VTD-NEST-EXIT (\d+)\s*$")
_COUNTER = re.compile(r"^counter (\S+) ([0-9]+)\s*$")
_VMM_CAP = re.compile(r"VTD cap=((?:0x)?[0-9a-fA-F]+) ecap=((?:0x)?[0-9a-fA-F]+)")
# Lines that are the harness's or L1's own, not the VMM's.
_NOT_VMM = re.compile(r"^(VTD-NEST-|HOST-DISK |e2e-l1: |\s*$)")


# Batch.result's statuses of a job that never reported its exit, and what they mean.
NO_EXIT = {
    "missing": "the VMM never reported an exit status (L1 died or timed out)",
    "l1-stalled": "L1 made no progress and was stopped before the job finished (where its "
                  "vCPUs were: l1-stall.txt in the work directory)",
}


def clean(line: str) -> str:
    """A console line without terminal escapes and carriage returns."""
    return _ANSI.sub("", line).rstrip("\r")


@dataclass
class Section:
    """One job's part of the console, from its VTD-NEST-JOB line to its VTD-NEST-EXIT line."""

    lines: list[str] = field(default_factory=list)
    # The VMM's exit status, "timeout" (killed by the job's watchdog) or "missing".
    status: str = "missing"


def split_sections(text: str) -> list[Section]:
    """The console cut at the job markers, in order; lines before the first job are L1's."""
    sections: list[Section] = []
    cur: Section | None = None
    for line in text.split("\n"):
        line = clean(line)
        if _JOB.match(line):
            cur = Section()
            sections.append(cur)
        if cur is None:
            continue
        cur.lines.append(line)
        m = _EXIT.match(line)
        if m:
            cur.status = m.group(1)
            if any(x.startswith("VTD-NEST-TIMEOUT ") for x in cur.lines):
                cur.status = "timeout"
            cur = None
    return sections


def assign_sections(names: list[str], sections: list[Section]
                    ) -> tuple[list[Section | None], dict[int, Section]]:
    """The section of each job (by position in NAMES), in console order. A section for the
    same job as the one before, whose section never finished (L1 got stuck or died in it), is
    that job run again: it takes the job's place and the unfinished one is returned apart."""
    final: list[Section | None] = [None] * len(names)
    first_attempts: dict[int, Section] = {}
    i = 0
    for sec in sections:
        name = job_started(sec.lines[0]) if sec.lines else None
        previous = final[i - 1] if i > 0 else None
        if previous is not None and previous.status == "missing" and name == names[i - 1]:
            first_attempts[i - 1] = previous
            final[i - 1] = sec
            continue
        if i < len(names):
            final[i] = sec
            i += 1
    return final, first_attempts


def job_started(line: str) -> str | None:
    """The name of the job a "VTD-NEST-JOB <name>" line starts; None for any other line."""
    m = _JOB.match(clean(line))
    return m.group(1) if m else None


def l1_done(line: str) -> bool:
    """Whether LINE is l1-init's "VTD-NEST-L1-DONE": it ran every job."""
    return clean(line).strip() == L1_DONE


def host_disk_line(name: str, sha256: str) -> str:
    return f"HOST-DISK {name} {sha256}"


def hexnorm(h: str) -> str:
    """A hex number compared as the guest and the VMM print it: lower case, no 0x, no leading
    zeros."""
    h = h.lower()
    if h.startswith("0x"):
        h = h[2:]
    return h.lstrip("0") or "0"


class JobOutput:
    """What one job's console section (plus its HOST-DISK lines) says."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    @classmethod
    def from_text(cls, text: str) -> "JobOutput":
        return cls(text.splitlines())

    def _last_field(self, prefix: str, name: str) -> str | None:
        """The third field of the last "<prefix> <name> <value>" line."""
        want = f"{prefix} {name} "
        value = None
        for line in self.lines:
            if line.startswith(want):
                parts = line.split(" ")
                value = parts[2] if len(parts) > 2 else ""
        return value

    def host_disk(self, name: str) -> str | None:
        return self._last_field("HOST-DISK", name)

    def guest_disk(self, name: str) -> str | None:
        return self._last_field("GUEST-DISK", name)

    @property
    def counters(self) -> dict[str, int]:
        """The VMM's exit summary: the last value of each `counter <name> <value>` line."""
        out: dict[str, int] = {}
        for line in self.lines:
            m = _COUNTER.match(line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def counter(self, name: str) -> int | None:
        return self.counters.get(name)

    @property
    def vmm_cap(self) -> tuple[str, str] | None:
        """(cap, ecap) of the VMM's first `VTD cap=<hex> ecap=<hex>` line."""
        for line in self.lines:
            m = _VMM_CAP.search(line)
            if m:
                return m.group(1), m.group(2)
        return None

    def _first_args(self, key: str) -> list[str] | None:
        for line in self.lines:
            if line.startswith(key + " "):
                return line.split(" ")[1:]
        return None

    @property
    def guest_cap(self) -> tuple[str, str] | None:
        args = self._first_args("GUEST-CAP")
        if args is None:
            return None
        args += ["", ""]
        return args[0], args[1]

    @property
    def guest_kernel(self) -> str | None:
        args = self._first_args("GUEST-KERNEL")
        return args[0] if args else None

    @property
    def guest_started(self) -> bool:
        return any(line.startswith("E2E-GUEST-START") for line in self.lines)

    @property
    def guest_exited_ok(self) -> bool:
        """The guest's script ended with status 0 (l2-init's E2E-GUEST-EXIT line)."""
        return any(line.startswith("E2E-GUEST-EXIT 0") for line in self.lines)

    @property
    def check_failure(self) -> str | None:
        """What the first failed guest check said (CHECK-FAIL anywhere in a line)."""
        for line in self.lines:
            i = line.find("CHECK-FAIL ")
            if i >= 0:
                return line[i + len("CHECK-FAIL "):]
        return None

    def vmm_lines(self, *, killed_too: bool = False) -> list[str]:
        """The lines the VMM (or the guest through it) printed: not the harness's markers, not
        L1's, not blank; and not the shell's "Killed" unless asked."""
        return [line for line in self.lines if not _NOT_VMM.match(line)
                and (killed_too or line != "Killed")]

    def last_vmm_line(self) -> str:
        """The last thing the VMM said, for failure messages: not its counters, not the guest's
        markers (at most 160 characters)."""
        for line in reversed(self.vmm_lines()):
            if not line.startswith(("counter ", "BENCH-", "E2E-")):
                return line.strip()[:160]
        return ""

    def bench(self) -> "BenchFacts":
        return BenchFacts.parse(self.lines)


@dataclass
class BenchFacts:
    """What bench/guest/workload.sh and the VMM's summary say about one benchmark guest."""

    boot: float | None = None
    ready: float | None = None
    clock: str = "?"
    timer: str = "?"
    domain: str = "?"
    cap: str | None = None
    # name -> one (seconds, requests, interrupts, bytes) per run of the phase
    phases: dict[str, list[tuple[float, int, int, int]]] = field(default_factory=dict)
    # DMA mappings the guest made per phase run (dma:dma_map_page events), when counted.
    maps: dict[str, list[int]] = field(default_factory=dict)
    # The traced DMA-API run (BENCH-DMATIME), one per round: requests, then (calls, µs) for
    # map, unmap and the lazy flush timer.
    dmatime: list[tuple[int, tuple[int, float], tuple[int, float], tuple[int, float]]] = field(
        default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    bench_failure: str | None = None  # BENCH-FAIL <why>
    done: bool = False  # BENCH-DONE
    notes: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, lines: list[str]) -> "BenchFacts":
        b = cls()
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            key, args = parts[0], parts[1:]
            try:
                b._take(key, args, line)
            except ValueError:
                b.notes.append(f"unparsable line: {line[:120]}")
        return b

    def _take(self, key: str, args: list[str], line: str) -> None:
        if key == "BENCH-BOOT" and args and args[0] != "-":
            self.boot = float(args[0])
        elif key == "BENCH-READY" and args:
            self.ready = float(args[0])
        elif key == "BENCH-CLOCK" and args:
            self.clock = args[0]
        elif key == "BENCH-TIMER" and args:
            self.timer = args[0]
        elif key == "BENCH-IOMMU" and args:
            self.domain = args[0]
        elif key == "BENCH-CAP" and len(args) == 2:
            self.cap = f"cap={args[0]} ecap={args[1]}"
        elif key == "BENCH-PHASE" and len(args) in (5, 6):
            run = (float(args[1]), int(args[2]), int(args[3]), int(args[4]))
            self.phases.setdefault(args[0], []).append(run)
            if len(args) == 6 and args[5] != "-":
                self.maps.setdefault(args[0], []).append(int(args[5]))
        elif key == "BENCH-DMATIME" and len(args) == 7:
            self.dmatime.append((int(args[0]), (int(args[1]), float(args[2])),
                                 (int(args[3]), float(args[4])), (int(args[5]), float(args[6]))))
        elif (key == "BENCH-FAIL" and self.bench_failure is None
              and line.startswith("BENCH-FAIL ")):
            self.bench_failure = line[len("BENCH-FAIL "):]
        elif key == "BENCH-DONE" and line.startswith("BENCH-DONE"):
            self.done = True
        elif key == "counter" and len(args) == 2:
            # The vIOMMU's counters were once printed with a vtd_ prefix.
            name = args[0][4:] if args[0].startswith("vtd_") else args[0]
            self.counters[name] = int(args[1])
