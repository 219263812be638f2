"""The suite's scenarios: e2e/scenarios/NAME.sh, bash files read and run through
e2e/lib/scenario.sh, one bash process per action, so their format stays bash.

    Scenario.load(name) ─ bash scenario.sh NAME describe ─> DISKS, ARGS, QEMU_ARGS, ..., guest
    scenario.check(status, out)  ─ bash scenario.sh NAME check STATUS  ─> None or why
                                   (its checks answered by checks.serve)
    scenario.host_check(env)     ─ bash scenario.sh NAME host_check    ─> None or why

A scenario file sets DISKS, ARGS (vtd-nest run arguments), QEMU_ARGS (the same configuration for
--inner qemu, empty if none), QEMU_SKIPS (checks that do not apply to QEMU), optionally
GUEST_KERNEL (the L2 kernel's tag, default 6.12), VFIO and VFIO_MODULES (real devices), and
defines guest (prints the guest script body, run after e2e/guest/lib.sh) and check STATUS
(host-side checks on $OUT), and optionally side (prints a sh script run next to the VMM while
the guest runs, given the VMM command as its arguments: e2e/lib/l1-init, or the host in direct
mode). Or it sets HOST_ONLY=1 and defines host_check. `Scenario.call`
runs any other function a scenario defines, for actions later scenarios need.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .checks import serve
from .common import E2E_DIR, E2E_LIB, HarnessError
from .console import JobOutput

SCENARIO_SH = E2E_LIB / "scenario.sh"


@dataclass
class Scenario:
    name: str
    disks: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    qemu_args: list[str] = field(default_factory=list)
    qemu_skips: str = ""
    host_only: bool = False
    guest_kernel: str = ""
    vfio: list[str] = field(default_factory=list)
    vfio_modules: str = "container"
    guest_script: str | None = None
    side_script: str | None = None

    @classmethod
    def load(cls, name: str) -> "Scenario":
        path = E2E_DIR / "scenarios" / f"{name}.sh"
        if not path.is_file():
            raise HarnessError(f"no scenario {name} (no {path})")
        proc = subprocess.run(["bash", str(SCENARIO_SH), name, "describe"],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise HarnessError(f"scenario {name} does not load: {why[-1] if why else '?'}")
        values = parse_description(proc.stdout)
        return cls(
            name=name,
            disks=str(values.get("DISKS", "")).split(),
            args=list(values.get("ARGS", [])),
            qemu_args=list(values.get("QEMU_ARGS", [])),
            qemu_skips=str(values.get("QEMU_SKIPS", "")),
            host_only=values.get("HOST_ONLY") == "1",
            guest_kernel=str(values.get("GUEST_KERNEL", "")),
            vfio=str(values.get("VFIO", "")).split(),
            vfio_modules=str(values.get("VFIO_MODULES", "") or "container"),
            guest_script=values.get("GUEST_SCRIPT"),  # type: ignore[arg-type]
            side_script=values.get("SIDE_SCRIPT"),  # type: ignore[arg-type]
        )

    def call(self, action: list[str], env: dict[str, str]) -> tuple[int, str]:
        """Runs `scenario.sh NAME ACTION...` with ENV added; its status and stdout."""
        proc = subprocess.run(["bash", str(SCENARIO_SH), self.name] + action,
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              check=False)
        return proc.returncode, proc.stdout.decode(errors="replace")

    def _verdict(self, action: list[str], env: dict[str, str]) -> str | None:
        rc, said = self.call(action, env)
        if rc == 0:
            return None
        return said.rstrip("\n") or "check failed"

    def check(self, status: str, out: Path, inner: str) -> str | None:
        """The scenario's check STATUS on job output OUT; its checks.sh calls are answered here
        (checks.serve) over two pipes."""
        facts = JobOutput.from_text(out.read_text(encoding="utf-8", errors="replace"))
        cmd = ["bash", str(SCENARIO_SH), self.name, "check", status]
        rc, said = run_served(cmd, facts, inner, {"OUT": str(out), "INNER": inner})
        return None if rc == 0 else said.rstrip("\n") or "check failed"

    def host_check(self, vmm: str, work: Path, inner: str) -> str | None:
        return self._verdict(["host_check"], {"VMM_HOST": vmm, "WORK": str(work),
                                              "INNER": inner})


def run_served(cmd: list[str], facts: JobOutput, inner: str,
               env: dict[str, str]) -> tuple[int, str]:
    """Runs CMD (bash sourcing e2e/lib/checks.sh) with the check pipes' descriptors in
    $E2E_CHECK_REQUESTS and $E2E_CHECK_ANSWERS, answering its calls until it exits; its status
    and stdout."""
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    env = {**os.environ, **env, "E2E_CHECK_REQUESTS": str(req_w), "E2E_CHECK_ANSWERS": str(ans_r)}
    with tempfile.TemporaryFile() as said:
        proc = subprocess.Popen(cmd, env=env, stdout=said, pass_fds=(req_w, ans_r))
        os.close(req_w)
        os.close(ans_r)
        with os.fdopen(req_r, "rb") as requests, os.fdopen(ans_w, "wb") as answers:
            try:
                serve(facts, inner, requests, answers)
            except BrokenPipeError:
                pass  # the bash side ended without reading its answer
        rc = proc.wait()
        said.seek(0)
        return rc, said.read().decode(errors="replace")


def parse_description(raw: bytes) -> dict[str, str | list[str]]:
    """scenario.sh's describe records: "S:NAME" value, or "A:NAME" count item..."""
    fields = raw.decode(errors="replace").split("\0")
    out: dict[str, str | list[str]] = {}
    i = 0
    while i + 1 < len(fields):
        key = fields[i]
        if key.startswith("S:"):
            out[key[2:]] = fields[i + 1]
            i += 2
        elif key.startswith("A:"):
            n = int(fields[i + 1])
            out[key[2:]] = fields[i + 2:i + 2 + n]
            i += 2 + n
        else:
            raise HarnessError(f"unexpected scenario record {key!r}")
    return out
