"""The initramfs of every guest: L2's (the prepared base plus the wrapper init and the test's
script) and L1's (base, QEMU bundle, VFIO module sets, this batch's jobs, L2 kernels, the VMM).

    l2_initrd:  l2[-<tag>]/base.cpio + { /init = e2e/lib/l2-init, /e2e-init = the job's script,
                /bin/portio = e2e/guest/portio.c built static }
    l1_initrd:  l1/base.cpio [+ l1/qemu.cpio] [+ l1/vfio-<set>.cpio]... + { /init = l1-init,
                /e2e/jobs/NN/{name,timeout,args,initrd,...}, /l2*/vmlinuz, /bin/vtd-nest, ... }

Archives concatenate: the kernel unpacks each in turn.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from .batch import Batch, Job, render_command, vfio_bdf
from .common import E2E_DIR, E2E_LIB, HarnessError, cpio_of_dir, e2e_cache, l2_dir

PORTIO_SOURCE = E2E_DIR / "guest" / "portio.c"


def concat_archives(out: Path, parts: list[Path]) -> None:
    """OUT: the archives PARTS one after the other (the kernel unpacks each in turn)."""
    with open(out, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)


def portio_binary() -> Path:
    """The guests' port I/O tool, built static with the host's C compiler once per version of
    its source (kept in the e2e cache under the source's hash)."""
    digest = hashlib.sha256(PORTIO_SOURCE.read_bytes()).hexdigest()[:16]
    binary = e2e_cache() / "tools" / f"portio-{digest}"
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    try:
        proc = subprocess.run(["cc", "-static", "-nostdlib", "-Os", "-s", "-fno-stack-protector",
                               "-fno-asynchronous-unwind-tables", "-o", str(partial),
                               str(PORTIO_SOURCE)], capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise HarnessError("no C compiler (cc) to build e2e/guest/portio.c") from e
    if proc.returncode != 0:
        raise HarnessError(f"cannot build e2e/guest/portio.c: {proc.stderr.strip()}")
    partial.replace(binary)
    return binary


def l2_initrd(init: Path, out: Path, tag: str = "") -> None:
    base = l2_dir(tag) / "base.cpio"
    if not base.is_file() or base.stat().st_size == 0:
        raise HarnessError(f"no L2 base in {l2_dir(tag)} (run e2e/prepare)")
    with tempfile.TemporaryDirectory() as root:
        r = Path(root)
        shutil.copyfile(E2E_LIB / "l2-init", r / "init")
        shutil.copyfile(init, r / "e2e-init")
        (r / "bin").mkdir()
        shutil.copyfile(portio_binary(), r / "bin" / "portio")
        for tool in ("init", "e2e-init", "bin/portio"):
            (r / tool).chmod(0o755)
        extra = Path(f"{out}.extra")
        cpio_of_dir(r, extra)
    concat_archives(out, [base, extra])
    extra.unlink()


def l1_kernel_path(job: Job) -> str:
    """The L2 kernel of a job, as L1 sees it."""
    return "/l2/vmlinuz" if not job.kernel else f"/l2-{job.kernel}/vmlinuz"


def _needs_shared_libraries(binary: str) -> bool:
    proc = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True,
                          errors="replace", check=False)
    return "(NEEDED)" in proc.stdout


def l1_initrd(batch: Batch, out: Path, vmm: str | None, first: int = 0) -> None:
    """VMM: the vtd-nest binary, if any job runs it (it must be static: L1 has no libraries);
    the jobs from index FIRST on (a later L1 boot runs the rest of a batch)."""
    cache = e2e_cache()
    with tempfile.TemporaryDirectory() as root:
        r = Path(root)
        shutil.copyfile(E2E_LIB / "l1-init", r / "init")
        (r / "init").chmod(0o755)
        (r / "e2e" / "jobs").mkdir(parents=True)
        (r / "bin").mkdir()
        for job in batch.jobs[first:]:  # each L2 kernel the jobs use, once
            k = r / l1_kernel_path(job).lstrip("/")
            if not k.exists():
                k.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(l2_dir(job.kernel) / "vmlinuz", k)
        (r / "e2e" / "ndisks").write_text(f"{batch.ndisks}\n")
        if vmm:
            if _needs_shared_libraries(vmm):
                raise HarnessError(f"{vmm} needs shared libraries; L1 needs a static build")
            target = r / "bin" / "vtd-nest"
            if subprocess.run(["strip", "-o", str(target), vmm], stderr=subprocess.DEVNULL,
                              check=False).returncode != 0:
                shutil.copyfile(vmm, target)
            target.chmod(0o755)
        if batch.wrap:
            shutil.copyfile(batch.wrap, r / "bin" / "e2e-wrap")
            (r / "bin" / "e2e-wrap").chmod(0o755)
        for job in batch.jobs[first:]:
            jd = r / "e2e" / "jobs" / job.dir.name
            jd.mkdir()
            (jd / "name").write_text(job.name + "\n")
            (jd / "timeout").write_text(f"{job.timeout}\n")
            if job.vfio_modules:
                (jd / "vfio-modules").write_text(job.vfio_modules + "\n")
            if job.side:
                shutil.copyfile(job.side, jd / "side")
            if batch.pin:
                (jd / "pin").write_text(batch.pin + "\n")
            if batch.wrap:
                (jd / "wrap").write_text("")
            l2_initrd(job.init, jd / "initrd", job.kernel)
            binary = "/usr/bin/qemu-system-x86_64" if job.inner == "qemu" else "/bin/vtd-nest"
            cmd = render_command(job.inner, binary, l1_kernel_path(job),
                                 f"/e2e/jobs/{jd.name}/initrd", job.callargs)
            (jd / "args").write_text("".join(a + "\n" for a in cmd))
        # The addresses of the batch's real devices, for l1-init to bind them to vfio-pci.
        (r / "e2e" / "vfio").write_text("".join(vfio_bdf(i) + "\n" for i in range(batch.nvfio)))
        parts = [cache / "l1" / "base.cpio"]
        if batch.uses("qemu"):
            parts.append(cache / "l1" / "qemu.cpio")
        parts += [cache / "l1" / f"vfio-{s}.cpio" for s in batch.vfio_sets()]
        extra = Path(f"{out}.extra")
        cpio_of_dir(r, extra)
    concat_archives(out, parts + [extra])
    extra.unlink()
