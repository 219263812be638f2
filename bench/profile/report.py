#!/usr/bin/env python3
"""bench/profile/report.py: turns bench/profile/run's job outputs into µs per 4 KiB read by part.

Usage: report.py DIR [DIR...]   (DIR/<vmm>-<config>.txt: a job's console section)

With several directories (runs), every figure of the table is the median over them; the top
symbols are the first directory's.

Each job's output holds (from the wrapper in bench/profile/run):
  PROFILE-READS <reads> <µs per read>          the guest's own count and timing
  PROFILE-WINDOW <s>                           how long perf recorded
  PROFILE-THREAD;<pct>;<samples>;<cpu>;<comm>;<dso>    (pct of all samples, the guest's included)
  PROFILE-SYMBOL;<pct>;<samples>;<comm>;<dso>;<symbol>   (CPU 1 only)
At 1 kHz a sample is 1 ms of one CPU. The VMM runs on CPU 1: the window's CPU-1 time not in
the host samples is the guest's.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

VMM_CPU = 1
TOP_SYMBOLS = 12


def kind_of(dso):
    return "kernel" if dso.startswith("[kernel") else "user"


def thread_role(comm):
    """What a thread is, by its name: the vCPU (it runs the guest), the disk's I/O thread, the
    VMM's main thread (QEMU's main loop runs the device), the idle task, or something else."""
    if comm.startswith("vcpu") or comm.startswith("CPU "):
        return "vCPU thread"
    if comm in ("virtio-blk", "worker") or comm.startswith("iou-"):
        return "I/O thread"
    if comm in ("vtd-nest", "qemu-system-x86"):
        return "main thread"
    if comm == "swapper":
        return "idle"
    return "other"


def parse(path):
    job = {"threads": [], "symbols": []}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("PROFILE-READS "):
            _, reads, us = line.split()[:3]
            job["reads"], job["us_per_read"] = int(reads), float(us)
        elif line.startswith("PROFILE-WINDOW "):
            job["window_ms"] = float(line.split()[1]) * 1000
        elif line.startswith("PROFILE-THREAD;"):
            f = line.split(";")
            try:
                pct, samples, cpu = float(f[1].strip().rstrip("%")), int(f[2]), int(f[3])
                comm, dso = f[4].strip(), f[5].strip()
            except (IndexError, ValueError):
                continue  # not a report row
            job["threads"].append((samples, cpu, comm, dso))
            if pct > 0 and samples > job.get("top", (0, 0))[0]:
                job["top"] = (samples, pct)
        elif line.startswith("PROFILE-SYMBOL;"):
            f = line.split(";")
            try:
                samples, comm, dso, sym = int(f[2]), f[3].strip(), f[4].strip(), ";".join(f[5:]).strip()
            except (IndexError, ValueError):
                continue
            job["symbols"].append((samples, comm, dso, sym))
    return job


def split(job):
    """µs per read by part, or None if the job gave no profile."""
    if not job.get("threads") or not job.get("us_per_read") or "window_ms" not in job:
        return None
    reads = job["window_ms"] * 1000 / job["us_per_read"]
    parts = defaultdict(float)
    on_cpu = 0
    for samples, cpu, comm, dso in job["threads"]:
        if cpu != VMM_CPU:
            continue
        on_cpu += samples
        role = thread_role(comm)
        key = role if role in ("idle", "other") else f"{role}, {kind_of(dso)}"
        parts[key] += samples
    parts["guest (L2)"] = max(job["window_ms"] - on_cpu, 0)
    per_read = {k: v * 1000 / reads for k, v in parts.items()}
    return reads, per_read


COLUMNS = [
    "guest (L2)",
    "vCPU thread, kernel",
    "vCPU thread, user",
    "I/O thread, kernel",
    "I/O thread, user",
    "main thread, kernel",
    "main thread, user",
    "idle",
    "other",
]


CONFIG_ORDER = {"strict": 0, "lazy": 1, "off": 2}


def job_names(directory):
    names = [p.stem for p in directory.glob("*.txt")]
    return sorted(names, key=lambda n: (CONFIG_ORDER.get(n.rpartition("-")[2], 9), n))


def main():
    dirs = [Path(d) for d in sys.argv[1:]]
    if not dirs:
        sys.exit("usage: report.py DIR [DIR...]")
    names = job_names(dirs[0])
    print("| VMM | config | µs per read | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---:|" + "---:|" * len(COLUMNS))
    for name in names:
        vmm, _, config = name.rpartition("-")
        runs = []
        for d in dirs:
            job = parse(d / f"{name}.txt") if (d / f"{name}.txt").exists() else {}
            s = split(job)
            if s is not None:
                runs.append((job["us_per_read"], s[1]))
        if not runs:
            print(f"| {vmm} | {config} | no profile (see {dirs[0]}/{name}.txt) |")
            continue
        total = statistics.median(r[0] for r in runs)
        cells = " | ".join(
            f"{statistics.median(r[1].get(c, 0) for r in runs):.0f}" for c in COLUMNS
        )
        print(f"| {vmm} | {config} | {total:.0f} | {cells} |")
    print()
    runs_note = f"median of {len(dirs)} runs; " if len(dirs) > 1 else ""
    print(f"({runs_note}µs per 4 KiB read over the perf window; the VMM's threads on L1's CPU 1;")
    print("kernel = L1's kernel on that thread, user = the VMM's own code; guest = CPU 1's time not")
    print("in host samples)")
    for name in names:
        job = parse(dirs[0] / f"{name}.txt")
        s = split(job)
        if s is None:
            continue
        reads, _ = s
        print()
        print(f"{name}: top symbols on CPU 1, µs per read ({reads:.0f} reads in the window)")
        print()
        for samples, comm, dso, sym in sorted(job["symbols"], reverse=True)[:TOP_SYMBOLS]:
            print(f"    {samples * 1000 / reads:7.1f}  {comm:<16} {dso:<20} {sym}")
        if "top" in job:
            samples, pct = job["top"]
            host = sum(t[0] for t in job["threads"])
            print(
                f"    (check: perf took {samples * 100 / pct:.0f} samples, the guest's included,"
                f" {samples * 100 / pct - host:.0f} of them the guest's; the window holds"
                f" {2 * job['window_ms']:.0f} CPU-ms on L1's 2 CPUs)"
            )


if __name__ == "__main__":
    main()
