"""Where L1's vCPUs are: its QEMU's QMP socket, the registers it reports, and L1's symbols.

    Qmp(socket) ─ hmp("info registers -a") ─> parse_registers ─> [Vcpu(index, rip, cpl, gs_base)]
    Symbols.from_kallsyms(L1's /proc/kallsyms) ─ name(rip) ─> "svm_vcpu_run+0x2a [kvm_amd]"
    describe(vcpu, l1_ram, symbols)
      ─> "vCPU 1: L1 kernel, RIP ffffffffc0a1e02a svm_vcpu_run+0x2a [kvm_amd] (GS ...)"
    hmp("info lapic N") ─> parse_lapic ─ stuck(vcpu) ─> "vCPU 1 is halted with vector(s) 236
      in service (no EOI came; ...)"

A vCPU of the L1 machine runs either L1 itself or, inside an SVM guest-mode window that L1's
KVM opened, L2; QEMU reports the registers of whichever runs, and nothing in them names the level
(EFER has SVME in both: VMRUN requires it in the guest's state too). The GS base does, in kernel
mode: L1 boots nokaslr, so its per-CPU areas (GS in its kernel) lie in its direct map at
0xffff888000000000 within its RAM, while L2's kernel randomizes its direct map. So: CPL 0 with
GS there is L1's kernel (symbolized with L1's kallsyms); CPL 0 with GS 0 is a kernel entry or
exit before or after swapgs (still user space's GS), of either level, and gets L1's symbol as
a guess; CPL 0 with any other GS is L2's kernel; CPL 3 is user space of either.
"""

from __future__ import annotations

import bisect
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

# x86-64 Linux's direct map without KASLR (Documentation/arch/x86/x86_64/mm.rst).
DIRECT_MAP = 0xFFFF888000000000
_RIP = re.compile(r"\bRIP=([0-9a-fA-F]+)\b.*\bCPL=(\d+)\b.*\bHLT=(\d)\b")
_GS = re.compile(r"^GS =[0-9a-fA-F]+ ([0-9a-fA-F]+) ", re.M)
_KALLSYMS = re.compile(r"^([0-9a-fA-F]+) ([tTwW]) (\S+)(?:\s+\[(\S+)\])?\s*$")


class QmpError(Exception):
    """The L1 QEMU's monitor did not answer as asked."""


class Qmp:
    """A QMP client on a unix socket: the greeting, capabilities, then one command at a time."""

    def __init__(self, path: Path | str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.file = None
        try:
            self.sock.connect(str(path))
            self.file = self.sock.makefile("rwb")
            greeting = self._message()
            if "QMP" not in greeting:
                raise QmpError(f"not a QMP greeting: {greeting}")
            self.execute("qmp_capabilities")
        except (OSError, ValueError, QmpError) as e:
            self.close()
            raise QmpError(f"cannot talk to {path}: {e}") from e

    def close(self) -> None:
        """The socket and its file (the socket stays open while its file does); a monitor that
        went away meanwhile is no error here."""
        try:
            if self.file is not None:
                self.file.close()
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "Qmp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _message(self) -> dict:
        line = self.file.readline()
        if not line:
            raise QmpError("the monitor closed the connection")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise QmpError(f"not a QMP message: {line[:80]!r}")
        return msg

    def execute(self, command: str, **arguments) -> object:
        """COMMAND's "return" value; its "error" as a QmpError. Events in between are skipped."""
        req = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        try:
            self.file.write(json.dumps(req).encode() + b"\n")
            self.file.flush()
            while True:
                msg = self._message()
                if "return" in msg:
                    return msg["return"]
                if "error" in msg:
                    err = msg["error"]
                    raise QmpError(f"{command}: {err.get('desc', err)}")
        except (OSError, ValueError) as e:
            raise QmpError(f"{command}: {e}") from e

    def hmp(self, command_line: str) -> str:
        """A human monitor command's text (info registers -a, sendkey ...)."""
        out = self.execute("human-monitor-command", **{"command-line": command_line})
        return out if isinstance(out, str) else ""


@dataclass(frozen=True)
class Vcpu:
    index: int
    rip: int
    cpl: int
    halted: bool
    gs_base: int

    def level(self, l1_ram: int) -> str:
        """"L1 kernel", "L2 kernel", "kernel entry" or "user" (the last two of either level),
        as the module doc says; L1_RAM is L1's memory size in bytes."""
        if self.cpl == 3:
            return "user"
        if self.gs_base == 0:
            return "kernel entry"
        return "L1 kernel" if DIRECT_MAP <= self.gs_base < DIRECT_MAP + l1_ram else "L2 kernel"


def parse_registers(text: str) -> list[Vcpu]:
    """`info registers -a` (a "CPU#N" line before each vCPU's registers) -> the vCPUs, in
    order; a block without its RIP or GS line is left out."""
    out: list[Vcpu] = []
    blocks = re.split(r"^\s*CPU#(\d+)\s*$", text, flags=re.M)
    for index, block in zip(blocks[1::2], blocks[2::2]):
        r = _RIP.search(block)
        g = _GS.search(block)
        if r and g:
            out.append(Vcpu(int(index), int(r.group(1), 16), int(r.group(2)),
                            r.group(3) == "1", int(g.group(1), 16)))
    return out


@dataclass(frozen=True)
class Lapic:
    """What `info lapic N` says of the interrupts: vectors in service, requested, and the
    processor priority (a vector is delivered only above PPR's class, bits 7:4)."""

    isr: tuple[int, ...]
    irr: tuple[int, ...]
    ppr: int | None

    def stuck(self, vcpu: Vcpu) -> str | None:
        """A halted vCPU with vectors in service: their handlers ran or were never entered,
        and no EOI came, so every vector up to their priority class stays blocked."""
        if not vcpu.halted or not self.isr:
            return None
        ppr = f", PPR {self.ppr:#04x}" if self.ppr is not None else ""
        irr = " ".join(map(str, self.irr)) or "none"
        return (f"vCPU {vcpu.index} is halted with vector(s) {' '.join(map(str, self.isr))} in "
                f"service (no EOI came; requested: {irr}{ppr})")


def parse_lapic(text: str) -> Lapic:
    def vectors(name: str) -> tuple[int, ...]:
        m = re.search(rf"^{name}\s+(.*)$", text, re.M)
        return tuple(int(v) for v in re.findall(r"\b(\d+)\b", m.group(1))) if m else ()

    ppr = re.search(r"\bPPR 0x([0-9a-fA-F]+)", text)
    return Lapic(vectors("ISR"), vectors("IRR"), int(ppr.group(1), 16) if ppr else None)


class Symbols:
    """Text symbols of L1's kernel and modules, from its /proc/kallsyms."""

    def __init__(self, entries: list[tuple[int, str]]):
        entries = sorted(entries)
        self.addrs = [a for a, _ in entries]
        self.names = [n for _, n in entries]

    @classmethod
    def from_kallsyms(cls, text: str) -> "Symbols":
        entries = []
        for line in text.splitlines():
            m = _KALLSYMS.match(line)
            if m and int(m.group(1), 16):
                name = m.group(3) + (f" [{m.group(4)}]" if m.group(4) else "")
                entries.append((int(m.group(1), 16), name))
        return cls(entries)

    def name(self, addr: int, max_offset: int = 1 << 20) -> str | None:
        """"func+0xoff [module]" for ADDR, or None if no symbol is below it within MAX_OFFSET
        bytes (an address in L2, user space, or outside the text L1 listed)."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or addr - self.addrs[i] > max_offset:
            return None
        func, _, module = self.names[i].partition(" ")
        off = addr - self.addrs[i]
        return f"{func}+{off:#x}" + (f" {module}" if module else "")


def describe(vcpu: Vcpu, l1_ram: int, symbols: Symbols | None) -> str:
    """One line: the level the vCPU runs at, its RIP and (in L1's kernel) the symbol there."""
    level = vcpu.level(l1_ram)
    line = f"vCPU {vcpu.index}: {level}, RIP {vcpu.rip:016x}"
    name = symbols.name(vcpu.rip) if symbols is not None else None
    if name and level == "L1 kernel":
        line += f" {name}"
    elif name and level == "kernel entry":
        line += f" (if L1's: {name})"
    if level != "user":
        line += f" (GS {vcpu.gs_base:x})"
    return line + (", halted" if vcpu.halted else "")
