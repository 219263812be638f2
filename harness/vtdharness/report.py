"""bench/compare's report: one run's job outputs as RESULT lines, tables and an SVG plot.

Usage: bench/report OUT_DIR [--pool OTHER_OUT_DIR...] [--plot FILE.svg] [--doc FILE.md]
       (bench/compare runs it on its own results directory)

--pool adds the rounds of other runs (same configurations, e.g. three `--rounds 3` runs) as
further rounds, so the medians come from all of them; the tables and RESULT lines are written
into OUT_DIR, and the doc section names every pooled run.

OUT_DIR (written by bench/compare) holds jobs.list ("<job> <vmm> <config> <work|idle>" per
line), jobs/<job>/{output,status}, optional failed-<job> (why a job was never started) and
launch-failed (why the whole batch did not run), plus date, machine, mode and seconds.

Flow: parse every job's console section (console.BenchFacts: the guest's BENCH-* lines, the
VMM's `counter` lines)
-> figures per (vmm, config) -> overhead factors against the same VMM's `off` row -> per-I/O
VMM counters (workload job minus its boot-only baseline, over the guest's block requests) ->
print the markdown table and the RESULT lines, write results.txt, table.md, counters.md and
overhead.svg into OUT_DIR (and the plot / doc section where asked).

Exit status: 1 if a QEMU configuration failed, else 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import os
import re
import shutil
import statistics
import sys
from dataclasses import dataclass, field

from .console import NO_EXIT, BenchFacts, JobOutput

VMMS = ("qemu", "vtd-nest")
CONFIGS = ("strict", "strict-ir", "lazy", "off", "assigned")
# bench/compare --vfio: "<config>:<mode>:<backend>", an assigned NVMe behind a vIOMMU in caching
# mode (strict; scalable second stage or legacy) or without a vIOMMU (off), through the VFIO
# container or iommufd. RESULT lines split them into config=, mode= and backend=.
VFIO_BACKENDS = ("container", "iommufd")
VFIO_CONFIGS = tuple(f"vfio-strict:{mode}:{b}" for mode in ("scalable", "legacy")
                     for b in VFIO_BACKENDS) + tuple(f"vfio-off:none:{b}" for b in VFIO_BACKENDS)
PHASES = {  # name: (requests issued by dd, bytes moved)
    "read4k": (4096, 4096 * 4096),
    "read1m": (64, 64 << 20),
    "write64k": (256, 256 << 16),
}
MIB = float(1 << 20)
DOC_BEGIN = "<!-- bench:begin -->"
DOC_END = "<!-- bench:end -->"
# The doc section of a --vfio run.
VFIO_DOC_BEGIN = "<!-- bench-vfio:begin -->"
VFIO_DOC_END = "<!-- bench-vfio:end -->"


def baseline_config(config: str) -> str:
    """The configuration a row's overheads are taken against: the same VMM without vIOMMU
    (for an assigned device, through the same VFIO back end)."""
    if config.startswith("vfio-"):
        return f"vfio-off:none:{config.rsplit(':', 1)[1]}"
    return "off"


def is_baseline(config: str) -> bool:
    return config == baseline_config(config)


def config_fields(config: str) -> str:
    """A configuration as RESULT fields: "config=strict", or for an assigned device
    "config=vfio-strict mode=scalable backend=iommufd"."""
    if ":" not in config:
        return f"config={config}"
    name, mode, backend = config.split(":")
    return f"config={name} mode={mode} backend={backend}"


def config_label(config: str) -> str:
    """A configuration in tables and sentences: "strict", "vfio-strict scalable iommufd"."""
    return config.replace(":none:", " ").replace(":", " ")


@dataclass(kw_only=True)
class Job(BenchFacts):
    """One guest of the run: what bench/compare ran, how it ended, and (inherited) what its
    console said about the workload."""

    name: str
    vmm: str
    config: str
    kind: str  # work | idle
    round: int = 1
    # After merge_rounds: how many successful rounds this job's figures come from.
    rounds: int = 1
    status: str = "missing"
    lines: list[str] = field(default_factory=list)
    failure: str | None = None  # why the job gave no figures (judge)


def read(path: str, default: str = "") -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return default


def parse_guest(job: Job) -> None:
    b = JobOutput(job.lines).bench()
    notes = job.notes + b.notes
    for f in dataclasses.fields(BenchFacts):
        setattr(job, f.name, getattr(b, f.name))
    job.notes = notes


def judge(job: Job, out: str) -> None:
    """Sets job.failure to one sentence if the job did not produce its figures."""
    said = JobOutput(job.lines).last_vmm_line()
    said = f"; last output: {said}" if said else ""
    out_facts = JobOutput(job.lines)
    if os.path.exists(os.path.join(out, f"failed-{job.name}")):
        job.failure = read(os.path.join(out, f"failed-{job.name}")).strip()
    elif not job.lines and os.path.exists(os.path.join(out, "launch-failed")):
        job.failure = "the batch did not run: " + read(os.path.join(out, "launch-failed")).strip()
    elif job.status == "timeout":
        job.failure = f"the VMM did not finish in time and was killed{said}"
    elif job.status in NO_EXIT or not job.status:
        job.failure = NO_EXIT.get(job.status, NO_EXIT["missing"])
    elif not out_facts.guest_started:
        job.failure = f"the guest never reached its init (VMM exit status {job.status}{said})"
    elif job.bench_failure is not None:
        job.failure = f"the guest workload failed: {job.bench_failure}"
    elif not job.done:
        job.failure = f"the guest workload did not finish (VMM exit status {job.status}{said})"
    elif job.kind == "work" and set(job.phases) != set(PHASES):
        job.failure = "the guest printed no time for some disk phase"
    elif job.status != "0":
        job.notes.append(f"the VMM exited with status {job.status} after the guest finished")
    if job.failure is None and job.boot is None:
        job.notes.append("no 'Run /init' line in dmesg: boot time unknown")


def load_jobs(out: str) -> list[Job]:
    jobs = []
    for line in read(os.path.join(out, "jobs.list")).splitlines():
        if not line.strip():
            continue
        fields = line.split()
        name, vmm, config, kind = fields[:4]
        job = Job(name=name, vmm=vmm, config=config, kind=kind,
                  round=int(fields[4]) if len(fields) > 4 else 1)
        d = os.path.join(out, "jobs", name)
        job.status = read(os.path.join(d, "status"), "missing").strip()
        job.lines = read(os.path.join(d, "output")).splitlines()
        parse_guest(job)
        judge(job, out)
        jobs.append(job)
    return jobs


def fmt(v: float) -> str:
    """Numbers as RESULT values and table cells: enough digits, no exponent."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def merge_rounds(jobs: list[Job]) -> list[Job]:
    """One job per (vmm, config, kind): phase samples and counters of every successful round
    together, the median boot time. Failed if no round succeeded; a note if some failed."""
    groups: dict[tuple[str, str, str], list[Job]] = {}
    for j in jobs:
        groups.setdefault((j.vmm, j.config, j.kind), []).append(j)
    merged = []
    for (vmm, config, kind), js in groups.items():
        ok = [j for j in js if j.failure is None]
        m = Job(name=js[0].name, vmm=vmm, config=config, kind=kind, rounds=len(ok))
        if not ok:
            m.failure, m.boot = js[0].failure, js[0].boot
            merged.append(m)
            continue
        if len(ok) < len(js):
            m.notes.append(f"{len(js) - len(ok)} of {len(js)} rounds failed")
        boots = [j.boot for j in ok if j.boot is not None]
        readies = [j.ready for j in ok if j.ready is not None]
        m.boot = statistics.median(boots) if boots else None
        m.ready = statistics.median(readies) if readies else None
        m.clock, m.timer, m.domain, m.cap = ok[0].clock, ok[0].timer, ok[0].domain, ok[0].cap
        m.status = "0"
        for j in ok:
            for name, runs in j.phases.items():
                m.phases.setdefault(name, []).extend(runs)
            for name, counts in j.maps.items():
                m.maps.setdefault(name, []).extend(counts)
            m.dmatime.extend(j.dmatime)
            for name, value in j.counters.items():
                m.counters[name] = m.counters.get(name, 0) + value
        merged.append(m)
    return merged


class Figures:
    """All figures of the run, keyed by (vmm, config)."""

    def __init__(self, jobs: list[Job]):
        self.work = {(j.vmm, j.config): j for j in jobs if j.kind == "work"}
        self.idle = {(j.vmm, j.config): j for j in jobs if j.kind == "idle"}
        self.metrics: dict[tuple[str, str], dict[str, float]] = {}
        # What a failed configuration still measured (its boot time, if the guest booted).
        self.partial: dict[tuple[str, str], dict[str, float]] = {}
        self.counter_rows: dict[tuple[str, str], list[tuple[str, int, int, int]]] = {}
        for key, job in self.work.items():
            if job.failure is None:
                self.metrics[key] = self.basic(job)
            elif job.boot is not None:
                self.partial[key] = {"boot_s": job.boot}
        for key, m in self.metrics.items():
            self.add_overheads(key, m)
            self.add_counters(key, m)

    @staticmethod
    def basic(job: Job) -> dict[str, float]:
        m: dict[str, float] = {}
        if job.boot is not None:
            m["boot_s"] = job.boot
        if job.ready is not None:
            m["ready_s"] = job.ready
        for name, runs in job.phases.items():
            m[f"{name}_s"] = statistics.median(r[0] for r in runs)
        for name, counts in job.maps.items():
            # The assigned NVMe maps a multi-page request as a scatterlist (dma_map_sg), which
            # the dma_map_page event does not see: only its 4 KiB reads are counted.
            if job.config.startswith("vfio-") and name != "read4k":
                continue
            if name in PHASES and counts:
                # Per dd request of the phase (a 4 KiB read, a 1 MiB read, a 64 KiB write).
                m[f"maps_{name}"] = statistics.median(counts) / PHASES[name][0]
        if m["read4k_s"] > 0:
            m["read4k_iops"] = PHASES["read4k"][0] / m["read4k_s"]
        if m["read1m_s"] > 0:
            m["read1m_mbps"] = PHASES["read1m"][1] / MIB / m["read1m_s"]
        if m["write64k_s"] > 0:
            m["write64k_mbps"] = PHASES["write64k"][1] / MIB / m["write64k_s"]
        runs = [r for rs in job.phases.values() for r in rs]
        reqs = sum(r[1] for r in runs)
        irqs = sum(r[2] for r in runs)
        m["io_requests"] = reqs
        # The VMM's counters also saw the traced DMA-API run's requests.
        m["counted_requests"] = reqs + sum(d[0] for d in job.dmatime)
        traced = [d for d in job.dmatime if d[0] > 0]
        if traced:
            # Guest µs in the DMA API per 4 KiB read (median over rounds): maps, unmaps (in
            # strict mode with the invalidation's exit), the lazy flush timer.
            for i, part in ((1, "map"), (2, "unmap"), (3, "flush")):
                m[f"guest_dma_{part}_us"] = statistics.median(d[i][1] / d[0] for d in traced)
            m["guest_dma_us"] = statistics.median(
                (d[1][1] + d[2][1] + d[3][1]) / d[0] for d in traced)
        if reqs:
            m["irqs_per_io"] = irqs / reqs
        return m

    def add_overheads(self, key: tuple[str, str], m: dict[str, float]) -> None:
        vmm, config = key
        base = self.metrics.get((vmm, baseline_config(config)))
        if is_baseline(config) or base is None:
            return
        for name, (requests, _) in PHASES.items():
            if base.get(f"{name}_s", 0) > 0:
                m[f"overhead_{name}"] = m[f"{name}_s"] / base[f"{name}_s"]
                # Time the vIOMMU adds per dd request, independent of the back end's own cost.
                m[f"added_us_{name}"] = (m[f"{name}_s"] - base[f"{name}_s"]) / requests * 1e6

    def add_counters(self, key: tuple[str, str], m: dict[str, float]) -> None:
        work, idle = self.work[key], self.idle.get(key)
        self.add_shadow_counters(work, m)
        if not work.counters or idle is None or idle.failure is not None or not idle.counters:
            return
        reqs = m.get("counted_requests", m.get("io_requests", 0))
        names = sorted(set(work.counters) | set(idle.counters))
        # Every workload round booted once: subtract one boot-only run per round.
        base = {n: idle.counters.get(n, 0) * work.rounds // idle.rounds for n in names}
        delta = {n: work.counters.get(n, 0) - base[n] for n in names}
        self.counter_rows[key] = [
            (n, work.counters.get(n, 0), base[n], delta[n]) for n in names
        ]
        exits = [n for n in names if n.startswith("exits_") and not n.endswith("_unhandled")]
        m["boot_exits"] = sum(idle.counters.get(n, 0) for n in exits) / idle.rounds
        if reqs <= 0:
            return
        m["exits_per_io"] = sum(delta[n] for n in exits) / reqs
        for n in exits:
            m[f"{n[len('exits_'):]}_exits_per_io"] = delta[n] / reqs
        per_io = {
            "translations": "translations_per_io",
            "walks": "walks_per_io",
            "qi_submissions": "qi_submissions_per_io",
            "accel_invalidations": "accel_invalidations_per_io",
            "accel_forwarded_invalidations": "accel_invalidations_per_io",
        }
        for counter, metric in per_io.items():
            if counter in delta:
                m[metric] = delta[counter] / reqs
        descs = [n for n in names if n.startswith("qi_") and n not in
                 ("qi_submissions", "qi_errors")]
        if descs:
            m["qi_descriptors_per_io"] = sum(delta[n] for n in descs) / reqs
        for suffix, metric in (("_notifications", "notifications_per_io"),
                               ("_interrupts", "device_interrupts_per_io")):
            disk = [n for n in names if re.fullmatch(r"disk\d+" + suffix, n)]
            if disk:
                m[metric] = sum(delta[n] for n in disk) / reqs
        busy = [n for n in names if re.fullmatch(r"disk\d+_busy_us", n)]
        if busy:
            # The device's I/O thread, from wakeup to sleep: emulation, translation, back end.
            m["device_us_per_io"] = sum(delta[n] for n in busy) / reqs
        mmio_exits = delta.get("exits_mmio", 0)
        if "vcpu_mmio_handler_ns" in delta and mmio_exits > 0:
            # The VMM's own share of an MMIO exit (KVM's exit and entry excluded).
            m["mmio_handler_us"] = delta["vcpu_mmio_handler_ns"] / mmio_exits / 1000
        hits, misses = delta.get("iotlb_hits", 0), delta.get("iotlb_misses", 0)
        if hits + misses > 0:
            m["iotlb_hit_pct"] = 100.0 * hits / (hits + misses)
        if delta.get("faults", 0):
            m["faults"] = delta["faults"]


    @staticmethod
    def add_shadow_counters(work: Job, m: dict[str, float]) -> None:
        """vtd-nest's shadow of the guest's second-stage tables (an assigned device behind a
        vIOMMU): host map and unmap calls per block request. There is no boot-only baseline
        for these rows, so the boot's calls (the driver's queues, the partition scan) are in."""
        reqs = m.get("counted_requests", 0)
        if reqs <= 0 or "shadow_maps" not in work.counters:
            return
        for counter in ("maps", "unmaps", "remaps", "walks"):
            # shadow_remaps_per_io: unchanged remainders mapped again after a partial unmap.
            if f"shadow_{counter}" in work.counters:
                m[f"shadow_{counter}_per_io"] = work.counters[f"shadow_{counter}"] / reqs


def ordered_keys(fig: Figures) -> list[tuple[str, str]]:
    keys = set(fig.work)
    return [(v, c) for v in VMMS for c in CONFIGS + VFIO_CONFIGS if (v, c) in keys]


def cell(m: dict[str, float] | None, name: str) -> str:
    if m is None or name not in m:
        return "–"
    suffix = "×" if name.startswith("overhead_") else ""
    return fmt(m[name]) + suffix


def main_table(fig: Figures) -> str:
    cols = [
        ("boot to init (s)", "boot_s"),
        ("4 KiB reads ×4096 (s)", "read4k_s"),
        ("4 KiB IOPS", "read4k_iops"),
        ("1 MiB reads ×64 (s)", "read1m_s"),
        ("1 MiB MiB/s", "read1m_mbps"),
        ("64 KiB writes ×256 (s)", "write64k_s"),
        ("64 KiB MiB/s", "write64k_mbps"),
        ("overhead 4 KiB", "overhead_read4k"),
        ("overhead 1 MiB", "overhead_read1m"),
        ("overhead writes", "overhead_write64k"),
        ("added µs per 4 KiB read", "added_us_read4k"),
        ("added µs per 1 MiB read", "added_us_read1m"),
        ("added µs per 64 KiB write", "added_us_write64k"),
    ]
    if any(c.startswith("vfio-") for _, c in fig.work):
        # The VFIO rows' baselines differ between the VMMs: the added µs come first.
        cols = [c for c in cols if c[1].startswith("added_us_")] + \
            [c for c in cols if not c[1].startswith("added_us_")]
    rows = ["| VMM | configuration | " + " | ".join(c[0] for c in cols) + " |",
            "|---|---|" + "---:|" * len(cols)]
    for key in ordered_keys(fig):
        job, m = fig.work[key], fig.metrics.get(key)
        if m is None:
            boot = cell(fig.partial.get(key), "boot_s")
            rows.append(f"| {key[0]} | {config_label(key[1])} | {boot} | **failed**: "
                        f"{md(job.failure or '')} |"
                        + " |" * (len(cols) - 2))
        else:
            rows.append(f"| {key[0]} | {config_label(key[1])} | "
                        + " | ".join(cell(m, c[1]) for c in cols) + " |")
    return "\n".join(rows)


def counters_table(fig: Figures) -> str:
    cols = [
        ("I/O requests", "io_requests"),
        ("interrupts / I/O", "irqs_per_io"),
        ("queue notifications / I/O", "notifications_per_io"),
        ("disk interrupts / I/O", "device_interrupts_per_io"),
        ("boot exits", "boot_exits"),
        ("exits / I/O", "exits_per_io"),
        ("MMIO exits / I/O", "mmio_exits_per_io"),
        ("PIO exits / I/O", "pio_exits_per_io"),
        ("translations / I/O", "translations_per_io"),
        ("walks / I/O", "walks_per_io"),
        ("IOTLB hit %", "iotlb_hit_pct"),
        ("IQT submissions / I/O", "qi_submissions_per_io"),
        ("QI descriptors / I/O", "qi_descriptors_per_io"),
        ("forwarded invalidations / I/O", "accel_invalidations_per_io"),
        ("DMA maps / 4 KiB read", "maps_read4k"),
        ("DMA maps / 1 MiB read", "maps_read1m"),
        ("DMA maps / 64 KiB write", "maps_write64k"),
        ("device thread µs / I/O", "device_us_per_io"),
        ("guest DMA API µs / 4 KiB read", "guest_dma_us"),
        ("of which unmap", "guest_dma_unmap_us"),
        ("MMIO handler µs / exit", "mmio_handler_us"),
        ("shadow maps / I/O", "shadow_maps_per_io"),
        ("shadow unmaps / I/O", "shadow_unmaps_per_io"),
        ("shadow walks / I/O", "shadow_walks_per_io"),
    ]
    keys = [k for k in ordered_keys(fig) if k in fig.metrics]
    # Only the columns some row has a figure for (the VFIO rows have no boot-only baselines).
    cols = [c for c in cols if any(c[1] in fig.metrics[k] for k in keys)]
    rows = ["| VMM | configuration | " + " | ".join(c[0] for c in cols) + " |",
            "|---|---|" + "---:|" * len(cols)]
    for key in keys:
        m = fig.metrics[key]
        rows.append(f"| {key[0]} | {config_label(key[1])} | "
                    + " | ".join(cell(m, c[1]) for c in cols) + " |")
    return "\n".join(rows)


def raw_counters(fig: Figures) -> str:
    out = []
    for key, rows in fig.counter_rows.items():
        rounds = fig.work[key].rounds
        out.append(f"### {key[0]} {config_label(key[1])} ({rounds} workload round(s))\n")
        out.append("| counter | workload runs | boot-only run × rounds | difference |")
        out.append("|---|---:|---:|---:|")
        out += [f"| {n} | {w} | {i} | {d} |" for n, w, i, d in rows if w or i]
        out.append("")
    return "\n".join(out)


def md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def result_lines(fig: Figures) -> list[str]:
    lines = []
    for key in ordered_keys(fig):
        vmm, config = key[0], config_fields(key[1])
        m = fig.metrics.get(key)
        if m is None:
            lines.append(f"RESULT vmm={vmm} {config} metric=status value=failed")
            for name, value in fig.partial.get(key, {}).items():
                lines.append(f"RESULT vmm={vmm} {config} metric={name} value={fmt(value)}")
            continue
        for name, value in m.items():
            lines.append(f"RESULT vmm={vmm} {config} metric={name} value={fmt(value)}")
    return lines


def failure_sentences(jobs: list[Job]) -> list[str]:
    out = []
    for j in jobs:
        if j.failure:
            what = "run" if j.kind == "work" else "boot-only baseline (per-I/O counters)"
            if j.round > 1:
                what += f" (round {j.round})"
            out.append(f"FAILED {j.vmm} {config_label(j.config)} {what}: {j.failure}")
        for n in j.notes:
            out.append(f"NOTE {j.name}: {n}")
    return out


def details(jobs: list[Job]) -> list[str]:
    out = []
    for j in jobs:
        if j.kind == "work" and j.failure is None:
            cap = f", {j.cap}" if j.cap else ""
            out.append(f"- {j.vmm} {config_label(j.config)}: guest clocksource {j.clock}, phase timer {j.timer}, "
                       f"disk's IOMMU domain {j.domain}{cap}")
    return out


def samples(jobs: list[Job]) -> str:
    """Every phase time of every round, for a reader who wants the spread."""
    out = ["| VMM | configuration | round | " + " | ".join(f"{p} (s)" for p in PHASES) + " | "
           + " | ".join(f"{p} DMA maps" for p in PHASES) + " |",
           "|---|---|---:|" + "---|" * (2 * len(PHASES))]
    for j in jobs:
        if j.kind == "work" and j.phases:
            cells = [", ".join(f"{r[0]:.3f}" for r in j.phases.get(p, [])) for p in PHASES]
            cells += [", ".join(str(c) for c in j.maps.get(p, [])) or "–" for p in PHASES]
            out.append(f"| {j.vmm} | {config_label(j.config)} | {j.round} | "
                       + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- SVG plot

SERIES = [  # (vmm, config, colour)
    ("qemu", "strict", "#1f4e99"),
    ("qemu", "lazy", "#6f9fd8"),
    ("vtd-nest", "strict", "#c4501b"),
    ("vtd-nest", "strict-ir", "#8a2f08"),
    ("vtd-nest", "lazy", "#f0a060"),
    ("vtd-nest", "assigned", "#3a8f3a"),
]
VFIO_SERIES = [  # the assigned NVMe behind each VMM's vIOMMU (strict, caching mode)
    ("qemu", "vfio-strict:scalable:container", "#1f4e99"),
    ("qemu", "vfio-strict:scalable:iommufd", "#4f7fc8"),
    ("qemu", "vfio-strict:legacy:container", "#8fb4e3"),
    ("qemu", "vfio-strict:legacy:iommufd", "#c3d7f0"),
    ("vtd-nest", "vfio-strict:scalable:container", "#a33d10"),
    ("vtd-nest", "vfio-strict:scalable:iommufd", "#d8652e"),
    ("vtd-nest", "vfio-strict:legacy:container", "#f0a060"),
    ("vtd-nest", "vfio-strict:legacy:iommufd", "#f7cfa5"),
]
GROUPS = [("read4k", "4 KiB direct reads ×4096"), ("read1m", "1 MiB direct reads ×64"),
          ("write64k", "64 KiB direct writes ×256")]


def nice_max(v: float) -> float:
    for mag in (1, 10, 100, 1000):
        for step in (1, 2, 2.5, 5):
            if step * mag >= v:
                return step * mag
    return v


def svg_plot(fig: Figures, subtitle: str, series: list[tuple[str, str, str]] | None = None) -> str:
    series = SERIES if series is None else series
    title = "vIOMMU overhead: time with the vIOMMU / time without (same VMM)"
    if series is VFIO_SERIES:
        title = "Assigned NVMe: time with the vIOMMU / time without (same VMM and back end)"
    per_row = 3 if len(series) <= 6 else 2
    legend_rows = (len(series) + per_row - 1) // per_row
    w, h = 900, 460 + 22 * legend_rows
    left, right, top, bottom = 70, 20, 80, 76 + 22 * legend_rows
    pw, ph = w - left - right, h - top - bottom
    vals = [m[f"overhead_{g}"] for m in fig.metrics.values() for g, _ in GROUPS
            if f"overhead_{g}" in m]
    ymax = nice_max(max(vals + [1.0]) * 1.1)
    ticks = [ymax * i / 5 for i in range(6)]

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    e = html.escape
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
         f'viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">'
         f'{title}</text>',
         f'<text x="{w / 2}" y="50" text-anchor="middle" fill="#555">{e(subtitle)}</text>']
    for t in ticks:
        s.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                 'stroke="#ddd"/>')
        s.append(f'<text x="{left - 8}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}×</text>')
    s.append(f'<text transform="translate(20,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
             'overhead factor (1 = no vIOMMU)</text>')
    gw = pw / len(GROUPS)
    bw = gw * 0.8 / len(series)
    for gi, (g, label) in enumerate(GROUPS):
        gx = left + gi * gw + gw * 0.1
        for si, (vmm, config, colour) in enumerate(series):
            x = gx + si * bw
            m = fig.metrics.get((vmm, config))
            v = m.get(f"overhead_{g}") if m else None
            if v is None:
                why = "failed" if (vmm, config) in fig.work and m is None else "n/a"
                s.append(f'<text x="{x + bw / 2:.1f}" y="{y(0) - 6:.1f}" text-anchor="middle" '
                         f'font-size="10" fill="#999">{why}</text>')
                continue
            s.append(f'<rect x="{x + 2:.1f}" y="{y(v):.1f}" width="{bw - 4:.1f}" '
                     f'height="{y(0) - y(v):.1f}" fill="{colour}"/>')
            s.append(f'<text x="{x + bw / 2:.1f}" y="{y(v) - 5:.1f}" text-anchor="middle" '
                     f'font-size="11">{fmt(v)}×</text>')
        s.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + ph + 20}" '
                 f'text-anchor="middle" font-size="13">{e(label)}</text>')
    s.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(1):.1f}" y2="{y(1):.1f}" '
             'stroke="#333" stroke-dasharray="6,4"/>')
    s.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
    s.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    lx, ly = left, top + ph + 52
    for si, (vmm, config, colour) in enumerate(series):
        x = lx + (si % per_row) * (870 // per_row)
        yy = ly + (si // per_row) * 22
        ok = (vmm, config) in fig.metrics
        ran = (vmm, config) in fig.work
        label = f"{vmm} {config_label(config)}" + ("" if ok else (" (failed)" if ran else " (not run)"))
        fade = "" if ok else ' opacity="0.3"'
        s.append(f'<rect x="{x}" y="{yy - 11}" width="14" height="14" fill="{colour}"{fade}/>')
        s.append(f'<text x="{x + 20}" y="{yy}">{e(label)}</text>')
    s.append(f'<text x="{w - right}" y="{h - 8}" text-anchor="end" font-size="10" fill="#777">'
             'dashed line: the same VMM without vIOMMU; generated by bench/compare</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


# ---------------------------------------------------------------------------- output

def doc_section(out: str, fig: Figures, jobs: list[Job], raw: list[Job],
                svg_name: str | None, pooled: list[str] | None = None) -> str:
    date, machine = read(os.path.join(out, "date")).strip(), read(os.path.join(out, "machine")).strip()
    mode, secs = read(os.path.join(out, "mode")).strip(), read(os.path.join(out, "seconds")).strip()
    where = "L2 guests inside one L1 Linux under QEMU TCG" if mode == "nested" else \
        "directly on this host's /dev/kvm"
    load = (f"host load average (1/5/15 min) {read(os.path.join(out, 'load-before')).strip()} "
            f"before, {read(os.path.join(out, 'load-after')).strip()} after")
    repeat = int(read(os.path.join(out, "repeat"), "1").strip() or 1)
    rounds = max(j.round for j in raw) if raw else 1
    n = repeat * rounds
    times = "each phase ran once" if n == 1 else (
        f"phase times are the median of {n} runs ({rounds} interleaved round(s) of guests, "
        f"{repeat} run(s) per guest)")
    # The doc is a reference: it names how the binary was built, not where it lay or which
    # commit it came from (the run directory keeps both, in `vmm-binary` and `source`).
    binary = read(os.path.join(out, "vmm-binary"), "none").strip()
    binary = ("built by the runner" if binary in ("", "none")
              else "a static release build given with VTD_NEST_BIN")
    indirect = read(os.path.join(out, "indirect"), "default").strip()
    pin = read(os.path.join(out, "pin"), "none").strip()
    pinned = ("" if pin == "none" or mode != "nested"
              else f"; each VMM pinned to L1 CPU(s) {pin} (taskset)")
    indirect = ("each VMM's default (QEMU offers them, vtd-nest does not)" if indirect == "default"
                else f"{indirect} for both VMMs")
    device = f"virtio indirect descriptors: {indirect}"
    if vfio_run(out):
        device = ("device: an emulated NVMe in L1 bound to vfio-pci there, assigned to each "
                  "guest (L1's own emulated VT-d in legacy mode with caching mode)")
    parts = [f"Run of {date} on a {machine} host; mode {mode} ({where}); {times}; the whole run "
             f"took {secs} s; {load}. vtd-nest binary: {binary}; "
             f"{device}{pinned}.", "",
             main_table(fig), ""]
    if pooled:
        runs = [f"{read(os.path.join(p, 'date')).strip()} "
                f"({read(os.path.join(p, 'seconds')).strip()} s)" for p in pooled]
        parts[0:0] = [f"**Pooled**: the rounds of this run and of the runs of {', '.join(runs)}, "
                      "same configurations; every median is over all of them.", ""]
    work_failed = {(j.vmm, j.config) for j in jobs if j.kind == "work" and j.failure}
    fails = [f"{j.vmm} {config_label(j.config)}" + ("" if j.kind == "work" else " boot-only baseline")
             + f": {j.failure}" for j in jobs
             if j.failure and (j.kind == "work" or (j.vmm, j.config) not in work_failed)]
    if fails:
        parts += ["Configurations that did not produce figures:", ""]
        parts += [f"- {md(f)}" for f in fails] + [""]
    partly = [f"{j.vmm} {config_label(j.config)} round {j.round}: {j.failure}" for j in raw
              if j.failure and j.kind == "work" and (j.vmm, j.config) not in work_failed]
    if partly:
        parts += ["Rounds that failed (their configuration's figures come from the other "
                  "rounds):", ""]
        parts += [f"- {md(f)}" for f in partly] + [""]
    counters = counters_table(fig)
    if counters.count("\n") > 1:
        how = ("vtd-nest's shadow counters over the whole run, boot included (no boot-only "
               "baseline)" if vfio_run(out) else
               "VMM counters are the workload run minus a boot-only run of the same configuration")
        parts += ["Per-I/O figures (an I/O is one block request the guest completed during the "
                  f"three phases; {how}):", "", counters, ""]
    det = details(jobs)
    if det:
        parts += ["Guest details:", ""] + det + [""]
    if svg_name:
        parts += [f"![overhead factors per VMM and configuration]({svg_name})", ""]
    return "\n".join(parts)


def vfio_run(out: str) -> bool:
    """Whether OUT_DIR holds a bench/compare --vfio run."""
    return read(os.path.join(out, "vfio"), "0").strip() == "1"


def update_doc(path: str, section: str, begin: str = DOC_BEGIN, end: str = DOC_END) -> None:
    text = read(path)
    if begin not in text or end not in text:
        print(f"report: {path} has no {begin} ... {end} markers; not updated",
              file=sys.stderr)
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{section}\n{end}{tail}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench/report")
    ap.add_argument("out")
    ap.add_argument("--plot")
    ap.add_argument("--doc")
    ap.add_argument("--pool", nargs="+", default=[])
    a = ap.parse_args(argv)
    jobs = load_jobs(a.out)
    for other in a.pool:
        # The other run's rounds come after this one's.
        offset = max((j.round for j in jobs), default=0)
        for j in load_jobs(other):
            j.round += offset
            jobs.append(j)
    merged = merge_rounds(jobs)
    fig = Figures(merged)
    subtitle = (f"{read(os.path.join(a.out, 'date')).strip()}, "
                f"{read(os.path.join(a.out, 'machine')).strip()}, "
                f"mode {read(os.path.join(a.out, 'mode')).strip()}: "
                "compare ratios, not absolute times")
    vfio = vfio_run(a.out)
    svg = svg_plot(fig, subtitle, VFIO_SERIES if vfio else SERIES)
    svg_path = os.path.join(a.out, "overhead.svg")
    with open(svg_path, "w") as f:
        f.write(svg)
    if a.plot:
        shutil.copyfile(svg_path, a.plot)
    table = main_table(fig)
    results = result_lines(fig)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n\n" + counters_table(fig) + "\n")
    with open(os.path.join(a.out, "counters.md"), "w") as f:
        f.write(raw_counters(fig))
    with open(os.path.join(a.out, "results.txt"), "w") as f:
        f.write("\n".join(results) + "\n")
    with open(os.path.join(a.out, "samples.md"), "w") as f:
        f.write(samples(jobs))
    if a.doc:
        svg_name = os.path.basename(a.plot) if a.plot else None
        section = doc_section(a.out, fig, merged, jobs, svg_name, a.pool)
        if vfio:
            update_doc(a.doc, section, VFIO_DOC_BEGIN, VFIO_DOC_END)
        else:
            update_doc(a.doc, section)
    print(table)
    print()
    print(counters_table(fig))
    print()
    for s in failure_sentences(jobs):
        print(s)
    for line in results:
        print(line)
    qemu_failed = any(j.failure for j in jobs if j.vmm == "qemu")
    return 1 if qemu_failed else 0

