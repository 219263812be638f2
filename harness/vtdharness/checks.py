"""The scenarios' host-side checks (the functions of e2e/lib/checks.sh), on one job's output.

    scenario's check (bash) ─> checks.sh's function ─> python3 -m vtdharness check NAME ARGS
                               ─> JobOutput($OUT) ─> "" and 0, or one sentence and 1

Each check returns None when it holds, or why it does not. $OUT is the job's output file, $INNER
the VMM the suite ran (vtd-nest or qemu).
"""

from __future__ import annotations

import os
import subprocess
import sys

from .common import l2_dir
from .console import JobOutput, hexnorm

# test(1)'s integer comparisons, as counter_is takes them.
_OPS = {"-eq": int.__eq__, "-ne": int.__ne__, "-gt": int.__gt__, "-ge": int.__ge__,
        "-lt": int.__lt__, "-le": int.__le__}


def _ere_matches(regex: str, text: str) -> bool:
    """Whether a line of TEXT matches REGEX as grep -E reads it (the scenarios' dialect)."""
    return subprocess.run(["grep", "-Eq", "--", regex], input=text.encode(errors="replace"),
                          check=False).returncode == 0


def vmm_said(out: JobOutput) -> str:
    last = out.last_vmm_line()
    return f"; last output: {last}" if last else ""


def guest_ran(out: JobOutput, status: str) -> str | None:
    if status == "timeout":
        return f"the VMM timed out{vmm_said(out)}"
    if status == "missing":
        return "the VMM never reported an exit status (L1 died or timed out)"
    if not out.guest_started:
        return f"the guest never reached its init (VMM exit status {status}{vmm_said(out)})"
    failed = out.check_failure
    if failed is not None:
        return f"guest: {failed}"
    if not out.guest_exited_ok:
        return "the guest's script did not finish (no E2E-GUEST-EXIT 0)"
    if status != "0":
        return f"the VMM exited with status {status} after the guest ran"
    return None


def guest_kernel_is(out: JobOutput, tag: str) -> str | None:
    """The guest's GUEST-KERNEL line names the kernel e2e/prepare unpacked for TAG."""
    try:
        want = (l2_dir(tag) / "kver").read_text().strip()
    except OSError:
        want = ""
    if not want:
        return f"no kver for guest kernel {tag} in {l2_dir(tag).parent}"
    got = out.guest_kernel
    if got != want:
        return f"the guest ran kernel '{got or '?'}', want {want} (guest kernel {tag})"
    return None


def disk_hash_matches(out: JobOutput, name: str) -> str | None:
    guest, host = out.guest_disk(name), out.host_disk(name)
    if not guest:
        return f"the guest printed no hash of disk {name}"
    if not host:
        return f"no host hash of disk {name}"
    if guest != host:
        return f"disk {name}: guest sha256 {guest} != host sha256 {host}"
    return None


def cap_matches(out: JobOutput) -> str | None:
    vmm, guest = out.vmm_cap, out.guest_cap
    if vmm is None:
        return "the VMM printed no 'VTD cap=<hex> ecap=<hex>' line"
    if guest is None:
        return "the guest printed no GUEST-CAP line"
    vcap, vecap = (hexnorm(x) for x in vmm)
    gcap, gecap = (hexnorm(x) for x in guest)
    if (vcap, vecap) != (gcap, gecap):
        return f"guest sees cap={gcap} ecap={gecap}, the VMM reported cap={vcap} ecap={vecap}"
    return None


def counter_is(out: JobOutput, name: str, op: str, value: str) -> str | None:
    v = out.counter(name)
    if v is None:
        return f"the VMM's summary has no 'counter {name} <value>' line"
    if op not in _OPS:
        return f"counter_is: unknown comparison {op}"
    if not _OPS[op](v, int(value)):
        return f"counter {name} is {v}, want {op} {value}"
    return None


def vmm_refused(out: JobOutput, status: str, regex: str, inner: str) -> str | None:
    """The VMM refused to start (non-zero, before any guest), saying something that matches
    REGEX: vtd-nest exits 2 with one sentence; QEMU (--inner qemu) exits 1."""
    if status == "timeout":
        return f"the VMM timed out instead of refusing{vmm_said(out)}"
    if status == "missing":
        return "the VMM never reported an exit status (L1 died or timed out)"
    if status == "0":
        return "the VMM exited with status 0 instead of refusing"
    if out.guest_started:
        return f"a guest started (status {status})"
    said = out.vmm_lines(killed_too=True)
    text = "\n".join(said)
    if not _ere_matches(regex, text):
        return f"the VMM's message does not match /{regex}/: {_head(said)}"
    want = "1" if inner == "qemu" else "2"
    if status != want:
        return f"the VMM exited with status {status}, want {want}"
    if inner != "qemu" and len(said) != 1:
        return f"want one sentence, the VMM printed {len(said)} lines: {_head(said)}"
    return None


def _head(lines: list[str]) -> str:
    return "".join(line + "|" for line in lines).encode()[:200].decode(errors="ignore")


def main(argv: list[str]) -> int:
    """check NAME ARGS...: prints why the check failed and returns 1, or returns 0."""
    if not argv:
        print("usage: python3 -m vtdharness check NAME ARGS...", file=sys.stderr)
        return 2
    name, args = argv[0], argv[1:]
    if not os.environ.get("OUT"):
        print(f"check {name}: no job output ($OUT is not set)", file=sys.stderr)
        return 2
    with open(os.environ["OUT"], encoding="utf-8", errors="replace") as f:
        out = JobOutput.from_text(f.read())
    inner = os.environ.get("INNER", "vtd-nest")
    if name == "counter":
        v = out.counter(args[0])
        if v is not None:
            print(v)
        return 0
    if name == "vmm_said":
        print(vmm_said(out), end="")
        return 0
    checks = {
        "guest_ran": lambda: guest_ran(out, *args),
        "guest_kernel_is": lambda: guest_kernel_is(out, *args),
        "disk_hash_matches": lambda: disk_hash_matches(out, *args),
        "cap_matches": lambda: cap_matches(out),
        "counter_is": lambda: counter_is(out, *args),
        "vmm_refused": lambda: vmm_refused(out, *args, inner),
    }
    if name not in checks:
        print(f"no check {name}", file=sys.stderr)
        return 2
    why = checks[name]()
    if why is None:
        return 0
    print(why)
    return 1
