"""The scenarios' host-side checks (the functions of e2e/lib/checks.sh), on one job's output.

    suite ─ Scenario.check ─ bash: the scenario's check ─ checks.sh's function ─┐ request
        └─ serve(JobOutput, ...) <──────────────────────────────────────────────┘ (a pipe)
                 └─ answer: 0 and nothing, or 1 and one sentence ─> back to bash

The job's output is parsed once, in the suite's process; the bash side asks over two pipes
(no process per check). Each check returns None when it holds, or why it does not.
"""

from __future__ import annotations

import subprocess
from typing import BinaryIO

from .common import l2_dir
from .console import NO_EXIT, JobOutput, hexnorm

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
    if status in NO_EXIT:
        return NO_EXIT[status]
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
    if status in NO_EXIT:
        return NO_EXIT[status]
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


def answer(out: JobOutput, inner: str, request: list[str]) -> tuple[int, str]:
    """One check function's call, REQUEST = [name, args...]: its status and what it prints."""
    if not request:
        return 2, "an empty check request"
    name, args = request[0], request[1:]
    try:
        if name == "counter":
            v = out.counter(args[0])
            return 0, "" if v is None else str(v)
        if name == "vmm_said":
            return 0, vmm_said(out)
        checks = {
            "guest_ran": lambda: guest_ran(out, *args),
            "guest_kernel_is": lambda: guest_kernel_is(out, *args),
            "disk_hash_matches": lambda: disk_hash_matches(out, *args),
            "cap_matches": lambda: cap_matches(out, *args),
            "counter_is": lambda: counter_is(out, *args),
            "vmm_refused": lambda: vmm_refused(out, *args, inner),
        }
        if name not in checks:
            return 2, f"no check {name}"
        why = checks[name]()
    except (TypeError, IndexError, ValueError) as e:
        return 2, f"{name} {' '.join(args)}: bad arguments ({e})"
    return (0, "") if why is None else (1, why)


# The protocol between e2e/lib/checks.sh and `serve`: one request per line, the function's name
# and arguments separated by SEP; one answer per line, the status, SEP and what it prints (one
# line, possibly empty).
SEP = "\x1f"


def serve(out: JobOutput, inner: str, requests: BinaryIO, answers: BinaryIO) -> None:
    """Answers a scenario's check calls until the bash side closes its end."""
    for raw in requests:
        request = raw.decode(errors="replace").rstrip("\n").split(SEP)
        rc, said = answer(out, inner, request)
        said = said.replace("\n", "|")
        answers.write(f"{rc}{SEP}{said}\n".encode())
        answers.flush()
